//! Unary calls multiplexed on one long-lived transport: a Unix-socket
//! connection (a `unix://` endpoint) or a QUIC stream opened with
//! `Call::Mux`.
//!
//! Role: every unary call of a [`super::Client`] to a `unix://` endpoint
//! shares one connection, and with `ConnectOptions::mux_streams` the
//! unary calls to a QUIC endpoint share that many QUIC streams of its
//! connection instead of opening a stream each. Each call numbers its
//! frame (`qed_wire::UnixRequest`) and waits for the reply with that
//! number; a writer task sends every frame queued since its last write in
//! one write, and a reader task hands each reply to its caller, all that
//! one read brings. Under load, a burst of calls costs a few system calls
//! (or one pass through QUIC's stream state) on either side instead of
//! several per call.
//!
//! Invariants: a call whose frame was queued before the transport died
//! gets [`MuxError::Closed`] (it may have been read and applied); one that
//! found it dead gets [`MuxError::NotSent`], and may go on a new one. A
//! call that gives up (its deadline) leaves nothing behind. A mux idle for
//! [`IDLE_LIMIT`] is retired rather than used (the node closes one idle
//! 30 s). Dropping the client ends every mux: its tasks end and release
//! the transport.

use crate::runtime::{self, channel, UnixStream};
use crate::transport::stream::{FrameReader, RecvHalf, SendHalf, WriteBytes};
use qed_wire::frame::MAX_SERVER_FRAME;
use qed_wire::{Reply, UnixReply};
use quinn::VarInt;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// A mux with nothing in flight for this long is retired, well inside the
/// node's 30 s limit for an idle one.
pub const IDLE_LIMIT: Duration = Duration::from_secs(10);

/// Bytes of frames a mux queues unwritten at most (a node that stopped
/// reading holds the writer): beyond it calls are refused, not queued.
pub const MAX_QUEUED: usize = 16 * 1024 * 1024;

/// QUIC application error code on a mux stream the client abandons (the
/// client was dropped, or the stream broke).
const ABANDONED: VarInt = VarInt::from_u32(0);

/// Why a multiplexed call got no reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MuxError {
    /// The mux was dead before the call's frame was queued.
    NotSent,
    /// [`MAX_QUEUED`] bytes wait to be written already; nothing was sent.
    Busy,
    /// The mux died after the frame was queued.
    Closed,
}

/// One multiplexed transport; cheap to clone.
#[derive(Clone)]
pub struct Mux {
    shared: Arc<Shared>,
}

struct Shared {
    /// Frames queued and not yet written.
    out: Mutex<Vec<u8>>,
    /// Wakes the writer (`try_send`: one wake-up covers any number of frames).
    wake: channel::Sender<()>,
    /// Closed when the mux dies, which ends the reader.
    halt: channel::Sender<()>,
    calls: Mutex<Calls>,
    next_id: AtomicU64,
}

struct Calls {
    waiting: HashMap<u64, channel::Sender<Reply>>,
    /// Set once the mux is broken or retired; nothing is queued after.
    dead: bool,
    /// Set by [`Mux::retire`]: the writer finishes its side once it has
    /// written what was queued.
    retired: bool,
    /// When the last call in flight finished (`None` while calls are).
    idle_since: Option<Instant>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Mux {
    /// Connects to the socket at `path` and starts the connection's reader
    /// and writer; `dropped` errors out when the client is dropped.
    pub async fn connect_unix(
        path: &std::path::Path,
        dropped: channel::Receiver<()>,
    ) -> std::io::Result<Mux> {
        let stream = UnixStream::connect(path).await?;
        Ok(Mux::start(
            SendHalf::Unix(stream.clone()),
            RecvHalf::unix(stream),
            dropped,
        ))
    }

    /// Starts the reader and writer of a transport that now carries
    /// numbered unary calls (a Unix connection, or a QUIC stream the node
    /// accepted as `Call::Mux`).
    pub fn start(send: SendHalf, recv: RecvHalf, dropped: channel::Receiver<()>) -> Mux {
        let (wake, woken) = channel::bounded(1);
        let (halt, halted) = channel::bounded(1);
        let shared = Arc::new(Shared {
            out: Mutex::new(Vec::new()),
            wake,
            halt,
            calls: Mutex::new(Calls {
                waiting: HashMap::new(),
                dead: false,
                retired: false,
                idle_since: Some(Instant::now()),
            }),
            next_id: AtomicU64::new(1),
        });
        runtime::spawn(write_frames(shared.clone(), send, woken, dropped));
        runtime::spawn(read_replies(shared.clone(), FrameReader::new(recv), halted));
        Mux { shared }
    }

    /// Alive, and not idle so long that the node may be closing it.
    pub fn usable(&self, now: Instant) -> bool {
        let calls = lock(&self.shared.calls);
        !calls.dead
            && calls
                .idle_since
                .is_none_or(|since| now.duration_since(since) < IDLE_LIMIT)
    }

    /// Takes no more calls and finishes the transport once what is queued
    /// is written (the node answers what it has read, then finishes its
    /// side).
    pub fn retire(&self) {
        let mut calls = lock(&self.shared.calls);
        calls.dead = true;
        calls.retired = true;
        drop(calls);
        let _ = self.shared.wake.try_send(());
    }

    /// One unary call: `envelope` is the encoded `ClientRequest` frame.
    pub async fn call(
        &self,
        envelope: &[u8],
        max: usize,
    ) -> Result<Result<Reply, MuxError>, qed_wire::frame::FrameError> {
        let shared = &self.shared;
        let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
        let frame = qed_wire::UnixRequest::frame_from(id, envelope, max)?;
        let (tx, rx) = channel::bounded(1);
        {
            let mut calls = lock(&shared.calls);
            if calls.dead {
                return Ok(Err(MuxError::NotSent));
            }
            calls.waiting.insert(id, tx);
            calls.idle_since = None;
        }
        // From here on the call is in flight: forgotten when it ends,
        // however it ends (a deadline drops this future).
        let _in_flight = InFlight { shared, id };
        {
            let mut out = lock(&shared.out);
            if !out.is_empty() && out.len() + frame.len() > MAX_QUEUED {
                return Ok(Err(MuxError::Busy));
            }
            out.extend_from_slice(&frame);
        }
        let _ = shared.wake.try_send(());
        Ok(rx.recv().await.map_err(|_| MuxError::Closed))
    }
}

/// A call in flight; forgets it when dropped.
struct InFlight<'a> {
    shared: &'a Shared,
    id: u64,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        let mut calls = lock(&self.shared.calls);
        calls.waiting.remove(&self.id);
        if calls.waiting.is_empty() {
            calls.idle_since = Some(Instant::now());
        }
    }
}

/// Marks the mux dead, fails every call in flight and ends both tasks.
fn kill(shared: &Shared) {
    let mut calls = lock(&shared.calls);
    calls.dead = true;
    calls.waiting.clear();
    drop(calls);
    shared.wake.close();
    shared.halt.close();
}

/// Writes what callers queued, everything queued in one write, until the
/// transport breaks, the mux is retired or the client is dropped.
async fn write_frames(
    shared: Arc<Shared>,
    mut send: SendHalf,
    woken: channel::Receiver<()>,
    dropped: channel::Receiver<()>,
) {
    let mut buf = Vec::new();
    loop {
        let woke = futures_lite::future::or(async { woken.recv().await.is_ok() }, async {
            let _ = dropped.recv().await;
            false
        })
        .await;
        if !woke {
            kill(&shared);
            return send.reset(ABANDONED);
        }
        std::mem::swap(&mut buf, &mut *lock(&shared.out));
        if !buf.is_empty() {
            if let Err(e) = send.write_bytes(&buf).await {
                log::debug!("multiplexed transport broken: {e}");
                kill(&shared);
                return send.reset(ABANDONED);
            }
            buf.clear();
        }
        if lock(&shared.calls).retired {
            return send.finish();
        }
    }
}

/// Hands each reply to its caller until the transport ends or the mux dies.
async fn read_replies(shared: Arc<Shared>, mut frames: FrameReader, halted: channel::Receiver<()>) {
    loop {
        let read = futures_lite::future::or(
            async { Some(frames.read::<UnixReply>(MAX_SERVER_FRAME).await) },
            async {
                let _ = halted.recv().await;
                None
            },
        )
        .await;
        match read {
            Some(Ok(Some(UnixReply { id, reply }))) => {
                if let Some(waiter) = lock(&shared.calls).waiting.remove(&id) {
                    let _ = waiter.try_send(reply);
                }
            }
            Some(Ok(None)) | None => break,
            Some(Err(e)) => {
                log::debug!("multiplexed transport: {e}");
                break;
            }
        }
    }
    kill(&shared);
}
