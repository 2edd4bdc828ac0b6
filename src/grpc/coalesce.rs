//! Write coalescing under an HTTP/2 connection: the frames `h2` writes in
//! one turn of its connection task leave in one socket write.
//!
//! Role: `h2` writes every DATA frame of 16 KiB or more (the client's frame
//! size limit) with its own write and flush, so a watch fan-out that
//! queues a megabyte costs a send syscall (and, with `TCP_NODELAY`, a
//! loopback packet) per frame, and without vectored I/O one more for each
//! 9-byte frame header. [`Coalesce`] copies what `h2` writes into one
//! buffer and sends it when the turn is over, as grpc-go's writer does
//! (it flushes when its frame queue runs empty).
//!
//! A turn is one poll of the task that drives the connection: that task
//! wraps each poll in [`Turns::run`], which counts it. A flush asked for
//! during turn `t` (what `h2` does after every frame and at the end of a
//! poll) with at least [`DEFER_MIN`] bytes buffered is deferred: the task
//! wakes itself, so that it is polled again (turn `t + 1`), and the first
//! flush asked for in a later turn writes everything buffered.
//!
//! Invariants: a flush in a later turn, a shutdown, or a buffer holding
//! [`LIMIT`] bytes writes everything buffered before anything else
//! happens; bytes are never reordered; a write returns `Pending` only while
//! the buffer is full and the socket takes nothing (back-pressure as
//! before); before the first counted turn (the HTTP/2 handshake) and with
//! no [`Turns`] counting, every flush goes to the socket at once.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Bytes buffered at most before a write goes to the socket in any case.
pub const LIMIT: usize = 256 * 1024;

/// Fewer bytes than this are written at once, not deferred: h2 flushes
/// in the middle of a turn only after a DATA payload it did not copy into
/// its own buffer (256 bytes or more), so only turns with such frames
/// gain from waiting, and a small reply is not held back for a poll.
pub const DEFER_MIN: usize = 1024;

/// Counts the turns (polls) of the task that drives a connection.
#[derive(Clone, Debug, Default)]
pub struct Turns(Arc<AtomicU64>);

impl Turns {
    pub fn new() -> Turns {
        Turns::default()
    }

    /// `future`, each of its polls counted as a turn.
    pub async fn run<F: Future>(&self, future: F) -> F::Output {
        let mut future = std::pin::pin!(future);
        std::future::poll_fn(|cx| {
            self.0.fetch_add(1, Ordering::Relaxed);
            future.as_mut().poll(cx)
        })
        .await
    }

    fn now(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// An I/O object whose writes are buffered until the end of a turn.
pub struct Coalesce<IO> {
    io: IO,
    turns: Turns,
    /// What was written and not yet sent: `buf[sent..]`. The allocation is
    /// kept (at most [`LIMIT`] plus one write), so a busy connection
    /// copies each byte once and never moves it.
    buf: Vec<u8>,
    sent: usize,
    /// The turn in which a flush was deferred, while one is.
    deferred: Option<u64>,
}

impl<IO> Coalesce<IO> {
    pub fn new(io: IO, turns: Turns) -> Coalesce<IO> {
        Coalesce {
            io,
            turns,
            buf: Vec::new(),
            sent: 0,
            deferred: None,
        }
    }
}

impl<IO: AsyncWrite + Unpin> Coalesce<IO> {
    /// Writes out everything buffered.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.sent < self.buf.len() {
            match Pin::new(&mut self.io).poll_write(cx, &self.buf[self.sent..]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => self.sent += n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        // All sent: the next writes start at the front of the allocation.
        self.buf.clear();
        self.sent = 0;
        self.deferred = None;
        Poll::Ready(Ok(()))
    }

    /// Makes room for more bytes: drains a full buffer first.
    fn poll_room(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.buf.len() >= LIMIT {
            return self.poll_drain(cx);
        }
        Poll::Ready(Ok(()))
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Coalesce<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Coalesce<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        std::task::ready!(this.poll_room(cx))?;
        this.buf.extend_from_slice(data);
        Poll::Ready(Ok(data.len()))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        slices: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        std::task::ready!(this.poll_room(cx))?;
        let mut n = 0;
        for slice in slices {
            this.buf.extend_from_slice(slice);
            n += slice.len();
        }
        Poll::Ready(Ok(n))
    }

    /// Copying is all a write does, so `h2` hands over a frame's header
    /// and payload in one call.
    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.buf.is_empty() {
            let now = this.turns.now();
            match this.deferred {
                // Not in a counted turn: no later poll is sure to come.
                _ if now == 0 => {}
                // A few small frames (a unary reply, a keepalive): h2 wrote
                // them in one go, nothing is gained by waiting.
                None if this.buf.len() - this.sent < DEFER_MIN => {}
                None => {
                    this.deferred = Some(now);
                    cx.waker().wake_by_ref();
                    return Poll::Ready(Ok(()));
                }
                Some(turn) if turn == now => return Poll::Ready(Ok(())),
                Some(_) => {}
            }
            std::task::ready!(this.poll_drain(cx))?;
        }
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        std::task::ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::task::Wake;

    /// A socket that takes at most `room` bytes in all, counting writes.
    #[derive(Default)]
    struct Sink {
        got: Vec<u8>,
        writes: usize,
        room: usize,
    }

    impl AsyncWrite for Sink {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            data: &[u8],
        ) -> Poll<io::Result<usize>> {
            let this = self.get_mut();
            let n = data.len().min(this.room - this.got.len());
            if n == 0 {
                return Poll::Pending;
            }
            this.writes += 1;
            this.got.extend_from_slice(&data[..n]);
            Poll::Ready(Ok(n))
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    /// Counts the wake-ups a deferred flush asks for.
    #[derive(Default)]
    struct Wakes(AtomicUsize);

    impl Wake for Wakes {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn sink(room: usize) -> Sink {
        Sink {
            room,
            ..Sink::default()
        }
    }

    fn write(c: &mut Coalesce<Sink>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(c).poll_write(cx, data)
    }

    fn flush(c: &mut Coalesce<Sink>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(c).poll_flush(cx)
    }

    /// Stands for one poll of the connection's task.
    fn turn(turns: &Turns) {
        turns.0.fetch_add(1, Ordering::Relaxed);
    }

    #[test]
    fn one_turn_leaves_in_one_write_at_the_next_turn() {
        let wakes = Arc::new(Wakes::default());
        let waker = wakes.clone().into();
        let mut cx = Context::from_waker(&waker);
        let turns = Turns::new();
        let mut c = Coalesce::new(sink(usize::MAX), turns.clone());
        turn(&turns);
        let mut want = Vec::new();
        for byte in [b'a', b'b', b'c'] {
            let frame = vec![byte; DEFER_MIN];
            assert!(matches!(write(&mut c, &mut cx, &frame), Poll::Ready(Ok(n)) if n == DEFER_MIN));
            assert!(flush(&mut c, &mut cx).is_ready());
            want.extend_from_slice(&frame);
        }
        // Deferred, and the task asked to be polled again (once).
        assert!(c.io.got.is_empty());
        assert_eq!(wakes.0.load(Ordering::SeqCst), 1);
        turn(&turns);
        assert!(matches!(flush(&mut c, &mut cx), Poll::Ready(Ok(()))));
        assert!(c.io.got == want);
        assert_eq!(c.io.writes, 1);
        // Nothing buffered: a flush is just the socket's.
        assert!(flush(&mut c, &mut cx).is_ready());
        assert_eq!(c.io.writes, 1);
    }

    #[test]
    fn a_small_reply_is_written_at_once() {
        let wakes = Arc::new(Wakes::default());
        let waker = wakes.clone().into();
        let mut cx = Context::from_waker(&waker);
        let turns = Turns::new();
        turn(&turns);
        let mut c = Coalesce::new(sink(usize::MAX), turns);
        assert!(write(&mut c, &mut cx, &[1; DEFER_MIN - 1]).is_ready());
        assert!(flush(&mut c, &mut cx).is_ready());
        assert_eq!(c.io.got.len(), DEFER_MIN - 1);
        assert_eq!(wakes.0.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn without_counted_turns_every_flush_writes() {
        let waker = Arc::new(Wakes::default()).into();
        let mut cx = Context::from_waker(&waker);
        let mut c = Coalesce::new(sink(usize::MAX), Turns::new());
        assert!(write(&mut c, &mut cx, b"preface").is_ready());
        assert!(flush(&mut c, &mut cx).is_ready());
        assert_eq!(c.io.got, b"preface");
    }

    #[test]
    fn a_full_buffer_is_written_before_more_and_shutdown_writes_the_rest() {
        let waker = Arc::new(Wakes::default()).into();
        let mut cx = Context::from_waker(&waker);
        let turns = Turns::new();
        turn(&turns);
        let mut c = Coalesce::new(sink(usize::MAX), turns);
        let frame = vec![7u8; 16 * 1024];
        let mut want = Vec::new();
        while want.len() < LIMIT {
            assert!(write(&mut c, &mut cx, &frame).is_ready());
            want.extend_from_slice(&frame);
        }
        assert!(c.io.got.is_empty());
        assert!(write(&mut c, &mut cx, b"tail").is_ready());
        assert!(c.io.got == want);
        want.extend_from_slice(b"tail");
        assert!(Pin::new(&mut c).poll_shutdown(&mut cx).is_ready());
        assert!(c.io.got == want);
    }

    #[test]
    fn a_socket_that_takes_nothing_pushes_back_and_keeps_the_order() {
        let waker = Arc::new(Wakes::default()).into();
        let mut cx = Context::from_waker(&waker);
        let turns = Turns::new();
        turn(&turns);
        let room = LIMIT / 2;
        let mut c = Coalesce::new(sink(room), turns.clone());
        let frame: Vec<u8> = (0..16 * 1024).map(|i| i as u8).collect();
        let mut want = Vec::new();
        while want.len() < LIMIT {
            assert!(write(&mut c, &mut cx, &frame).is_ready());
            want.extend_from_slice(&frame);
        }
        // Half goes out, then the socket is full: the write waits.
        assert!(write(&mut c, &mut cx, b"next").is_pending());
        assert!(c.io.got == want[..room]);
        // A flush is deferred to the next turn, which finds the socket full.
        assert!(flush(&mut c, &mut cx).is_ready());
        turn(&turns);
        assert!(flush(&mut c, &mut cx).is_pending());
        assert_eq!(c.io.got.len(), room);
        // The socket drains: everything leaves in order.
        c.io.room = usize::MAX;
        assert!(write(&mut c, &mut cx, b"next").is_ready());
        want.extend_from_slice(b"next");
        assert!(flush(&mut c, &mut cx).is_ready());
        turn(&turns);
        assert!(flush(&mut c, &mut cx).is_ready());
        assert!(c.io.got == want);
    }
}
