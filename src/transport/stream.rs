//! Typed frames over QUIC streams and Unix-socket connections.
//!
//! The length prefix is read and checked against the caller's limit before
//! the body is allocated; a stream that ends cleanly between frames yields
//! `None`, one that ends inside a frame is an error.
//!
//! A call travels either on its own QUIC stream or on a Unix-socket
//! connection ([`SendHalf`], [`RecvHalf`]) with the same frames. A Unix
//! connection carries either many unary calls at once, each frame
//! numbered (`qed_wire::UnixRequest`), or one streaming call to its end;
//! "finish" is a write shutdown, as a QUIC stream's FIN. A QUIC stream
//! opened with `Call::Mux` carries numbered unary calls as a Unix
//! connection does.

use super::TransportError;
use crate::runtime::UnixStream;
use futures_lite::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use qed_wire::frame::{self, PREFIX_LEN};
use quinn::{RecvStream, SendStream, VarInt};
use serde::{de::DeserializeOwned, Serialize};
use std::future::Future;
use std::net::Shutdown;

/// Where frames are read from: a QUIC receive stream or a [`RecvHalf`].
pub trait ReadBytes: Send {
    /// Reads some bytes into `buf`; 0 once the peer finished sending.
    fn read_some(
        &mut self,
        buf: &mut [u8],
    ) -> impl Future<Output = Result<usize, TransportError>> + Send;
}

/// Where frames are written to: a QUIC send stream or a [`SendHalf`].
pub trait WriteBytes: Send {
    fn write_bytes(
        &mut self,
        buf: &[u8],
    ) -> impl Future<Output = Result<(), TransportError>> + Send;
}

fn stream_error(e: impl std::fmt::Display) -> TransportError {
    TransportError::Stream(e.to_string())
}

impl ReadBytes for RecvStream {
    async fn read_some(&mut self, buf: &mut [u8]) -> Result<usize, TransportError> {
        Ok(self.read(buf).await.map_err(stream_error)?.unwrap_or(0))
    }
}

impl WriteBytes for SendStream {
    async fn write_bytes(&mut self, buf: &[u8]) -> Result<(), TransportError> {
        self.write_all(buf).await.map_err(stream_error)
    }
}

/// Bytes a Unix-socket reader takes from the kernel at once: the frames
/// of many small calls in one read.
const UNIX_READ_BUFFER: usize = 64 * 1024;

/// The receiving half of one call's transport.
pub enum RecvHalf {
    Quic(QuicRecv),
    Unix(BufReader<UnixStream>),
}

/// A QUIC receive stream and the chunk [`RecvHalf::readable`] took from it
/// and reads have not used up yet (quinn hands out whatever arrived as one
/// chunk, so a stream of many small frames is read a chunk, not a frame,
/// at a time).
pub struct QuicRecv {
    stream: RecvStream,
    pending: Option<quinn::Chunk>,
}

impl RecvHalf {
    pub fn unix(stream: UnixStream) -> RecvHalf {
        RecvHalf::Unix(BufReader::with_capacity(UNIX_READ_BUFFER, stream))
    }

    pub fn quic(stream: RecvStream) -> RecvHalf {
        RecvHalf::Quic(QuicRecv {
            stream,
            pending: None,
        })
    }

    /// Waits until bytes are there to read: `true` then, `false` once the
    /// peer finished sending. Takes nothing from the caller's point of
    /// view (what it took is kept for the next reads), so it may be
    /// abandoned (a timeout) without losing a byte.
    pub async fn readable(&mut self) -> Result<bool, TransportError> {
        use futures_lite::io::AsyncBufReadExt;
        match self {
            RecvHalf::Quic(q) => {
                if q.pending.as_ref().is_some_and(|c| !c.bytes.is_empty()) {
                    return Ok(true);
                }
                // Cancel-safe: quinn hands a chunk over only when the
                // future completes.
                q.pending = q
                    .stream
                    .read_chunk(usize::MAX, true)
                    .await
                    .map_err(stream_error)?;
                Ok(q.pending.is_some())
            }
            RecvHalf::Unix(r) => Ok(!r.fill_buf().await.map_err(stream_error)?.is_empty()),
        }
    }

    /// Tells the peer nothing more will be read (QUIC `STOP_SENDING` with
    /// `code`; a Unix socket's read shutdown: the peer's further writes
    /// fail, and the connection is not used for another call, as what is
    /// unread leaves its framing unknown).
    pub fn stop(&mut self, code: VarInt) {
        match self {
            RecvHalf::Quic(q) => {
                q.pending = None;
                let _ = q.stream.stop(code);
            }
            RecvHalf::Unix(r) => {
                let _ = r.get_ref().shutdown(Shutdown::Read);
            }
        }
    }
}

impl QuicRecv {
    /// The chunk `readable` kept, if it has bytes left.
    fn take_pending(&mut self) -> Option<quinn::Chunk> {
        self.pending.take().filter(|c| !c.bytes.is_empty())
    }

    /// The chunk `readable` kept, else the next one from the stream.
    async fn pending_or_read(&mut self) -> Result<Option<quinn::Chunk>, quinn::ReadError> {
        match self.take_pending() {
            Some(chunk) => Ok(Some(chunk)),
            None => self.stream.read_chunk(usize::MAX, true).await,
        }
    }
}

impl ReadBytes for RecvHalf {
    async fn read_some(&mut self, buf: &mut [u8]) -> Result<usize, TransportError> {
        match self {
            RecvHalf::Quic(q) => match q.take_pending() {
                Some(mut chunk) => {
                    let n = buf.len().min(chunk.bytes.len());
                    buf[..n].copy_from_slice(&chunk.bytes.split_to(n));
                    q.pending = Some(chunk);
                    Ok(n)
                }
                None => q.stream.read_some(buf).await,
            },
            RecvHalf::Unix(r) => r.read(buf).await.map_err(stream_error),
        }
    }
}

/// The sending half of one call's transport.
pub enum SendHalf {
    Quic(SendStream),
    Unix(UnixStream),
}

impl SendHalf {
    /// No more frames follow (QUIC FIN; a Unix socket's write shutdown).
    pub fn finish(&mut self) {
        match self {
            SendHalf::Quic(s) => {
                let _ = s.finish();
            }
            SendHalf::Unix(s) => {
                let _ = s.shutdown(Shutdown::Write);
            }
        }
    }

    /// Abandons what is unsent (QUIC `RESET_STREAM` with `code`; a Unix
    /// socket is shut down both ways).
    pub fn reset(&mut self, code: VarInt) {
        match self {
            SendHalf::Quic(s) => {
                let _ = s.reset(code);
            }
            SendHalf::Unix(s) => {
                let _ = s.shutdown(Shutdown::Both);
            }
        }
    }
}

impl WriteBytes for SendHalf {
    async fn write_bytes(&mut self, buf: &[u8]) -> Result<(), TransportError> {
        match self {
            SendHalf::Quic(s) => s.write_bytes(buf).await,
            SendHalf::Unix(s) => s.write_all(buf).await.map_err(stream_error),
        }
    }
}

/// A frame as read off the wire, not yet decoded: the caller can then decide
/// how to answer a body that does not decode (a typed error, not a dropped
/// connection).
pub struct RawFrame(pub Vec<u8>);

impl RawFrame {
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T, TransportError> {
        Ok(frame::decode(&self.0)?)
    }
}

/// Reads one raw frame; `None` when the peer finished the stream cleanly.
pub async fn read_raw(
    recv: &mut impl ReadBytes,
    max: usize,
) -> Result<Option<RawFrame>, TransportError> {
    read_raw_charged(recv, max, |_| true).await
}

/// Bytes of a body allocated before any of it arrived: a declared length
/// costs nothing until the bytes come.
const FIRST_ALLOCATION: usize = 16 * 1024;

fn ended_inside() -> TransportError {
    TransportError::Stream("stream ended inside a frame".into())
}

/// [`read_raw`], with each chunk of the body passed to `charge` (its
/// length) before it is kept: the body grows as bytes arrive, and a
/// `false` from `charge` ends the read with [`TransportError::Busy`].
pub async fn read_raw_charged(
    recv: &mut impl ReadBytes,
    max: usize,
    mut charge: impl FnMut(usize) -> bool + Send,
) -> Result<Option<RawFrame>, TransportError> {
    let mut prefix = [0u8; PREFIX_LEN];
    let mut got = 0;
    while got < PREFIX_LEN {
        match recv.read_some(&mut prefix[got..]).await? {
            0 if got == 0 => return Ok(None),
            0 => return Err(ended_inside()),
            n => got += n,
        }
    }
    let len = frame::body_len(prefix, max)?;
    let mut body = Vec::with_capacity(len.min(FIRST_ALLOCATION));
    while body.len() < len {
        if body.capacity() == body.len() {
            // Doubling, but never past the declared length.
            let grow = body.len().max(FIRST_ALLOCATION).min(len - body.len());
            body.reserve_exact(grow);
        }
        let filled = body.len();
        let room = (body.capacity() - filled).min(len - filled);
        body.resize(filled + room, 0);
        let n = recv.read_some(&mut body[filled..]).await?;
        body.truncate(filled + n);
        if n == 0 {
            return Err(ended_inside());
        }
        if !charge(n) {
            return Err(TransportError::Busy);
        }
    }
    Ok(Some(RawFrame(body)))
}

/// Reads and decodes one frame; `None` when the peer finished the stream.
pub async fn read<T: DeserializeOwned>(
    recv: &mut impl ReadBytes,
    max: usize,
) -> Result<Option<T>, TransportError> {
    match read_raw(recv, max).await? {
        Some(raw) => raw.decode().map(Some),
        None => Ok(None),
    }
}

/// Reads frames through a buffer, for streams that carry many: one read
/// yields every frame that has arrived (a watch stream's responses come in
/// bursts), instead of two reads per frame. A frame's length is checked
/// against the limit before its body is buffered.
pub struct FrameReader {
    recv: RecvHalf,
    /// `buf[start..end]` is read and not yet decoded; the rest is room.
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

/// What a [`FrameReader`] asks the transport for at least, per read.
const FRAME_READ_CHUNK: usize = 64 * 1024;

impl FrameReader {
    pub fn new(recv: RecvHalf) -> FrameReader {
        FrameReader {
            recv,
            buf: Vec::new(),
            start: 0,
            end: 0,
        }
    }

    /// The next frame, decoded; `None` when the peer finished the stream
    /// between frames.
    pub async fn read<T: DeserializeOwned>(
        &mut self,
        max: usize,
    ) -> Result<Option<T>, TransportError> {
        loop {
            let unread = &self.buf[self.start..self.end];
            let mut need = PREFIX_LEN;
            if let Some(prefix) = unread.first_chunk::<PREFIX_LEN>() {
                let len = frame::body_len(*prefix, max)?;
                if let Some(body) = unread.get(PREFIX_LEN..PREFIX_LEN + len) {
                    let msg = frame::decode(body)?;
                    self.start += PREFIX_LEN + len;
                    return Ok(Some(msg));
                }
                need = PREFIX_LEN + len;
            }
            // Move what is unread to the front, then make room for at least
            // the rest of this frame.
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
            let want = need.max(self.end + FRAME_READ_CHUNK);
            if self.buf.len() < want {
                self.buf.resize(want, 0);
            }
            let n = match &mut self.recv {
                // QUIC: quinn's chunk as it is (no copy inside quinn).
                RecvHalf::Quic(q) => match q.pending_or_read().await {
                    Ok(Some(chunk)) => {
                        let len = chunk.bytes.len();
                        if self.buf.len() < self.end + len {
                            self.buf.resize(self.end + len, 0);
                        }
                        self.buf[self.end..self.end + len].copy_from_slice(&chunk.bytes);
                        len
                    }
                    Ok(None) => 0,
                    Err(e) => return Err(stream_error(e)),
                },
                recv => recv.read_some(&mut self.buf[self.end..]).await?,
            };
            match n {
                0 if self.end == 0 => return Ok(None),
                0 => return Err(ended_inside()),
                n => self.end += n,
            }
        }
    }
}

/// Encodes and writes one frame.
pub async fn write<T: Serialize>(
    send: &mut impl WriteBytes,
    msg: &T,
    max: usize,
) -> Result<(), TransportError> {
    write_bytes(send, &frame::encode(msg, max)?).await
}

/// Encodes several messages and writes them in as few writes as fit in
/// [`BATCH_BYTES`]: one pass through QUIC's stream state per batch instead
/// of one per message.
pub async fn write_all_of<T: Serialize>(
    send: &mut impl WriteBytes,
    msgs: &[T],
    max: usize,
) -> Result<(), TransportError> {
    let mut buf = Vec::new();
    for msg in msgs {
        buf = frame::encode_into(msg, max, buf)?;
        if buf.len() >= BATCH_BYTES {
            write_bytes(send, &buf).await?;
            buf.clear();
        }
    }
    write_bytes(send, &buf).await
}

/// What [`write_all_of`] gathers before writing.
const BATCH_BYTES: usize = 256 * 1024;

async fn write_bytes(send: &mut impl WriteBytes, buf: &[u8]) -> Result<(), TransportError> {
    send.write_bytes(buf).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime;

    fn pair() -> (SendHalf, RecvHalf) {
        let (a, b) = UnixStream::pair().expect("socket pair");
        (SendHalf::Unix(a), RecvHalf::unix(b))
    }

    #[test]
    fn frames_split_and_joined_arrive_whole() {
        runtime::block_on(async {
            let (mut send, recv) = pair();
            let msgs: Vec<Vec<u8>> = (0..50).map(|i| vec![i as u8; i * 1000]).collect();
            let mut bytes = Vec::new();
            for m in &msgs {
                bytes = frame::encode_into(m, usize::MAX, bytes).expect("encode");
            }
            let writer = runtime::spawn(async move {
                // Odd-sized pieces: prefixes and bodies split anywhere.
                for piece in bytes.chunks(777) {
                    send.write_bytes(piece).await.expect("write");
                }
                send.finish();
            });
            let mut reader = FrameReader::new(recv);
            for m in &msgs {
                let got: Vec<u8> = reader.read(usize::MAX).await.expect("read").expect("frame");
                assert_eq!(&got, m);
            }
            assert!(reader
                .read::<Vec<u8>>(usize::MAX)
                .await
                .expect("end")
                .is_none());
            writer.await;
        });
    }

    #[test]
    fn raw_reads_charge_what_arrives_and_stop_at_the_limit() {
        runtime::block_on(async {
            let (mut send, mut recv) = pair();
            let body = vec![7u8; 100_000];
            let framed = frame::encode(&body, usize::MAX).expect("encode");
            let sent = framed.clone();
            let writer = runtime::spawn(async move {
                // The second frame is refused part-way: its reader stops
                // reading, so the rest of the writes may fail.
                let _ = send.write_bytes(&sent).await;
                let _ = send.write_bytes(&sent).await;
                send.finish();
            });
            let mut charged = 0;
            let raw = read_raw_charged(&mut recv, usize::MAX, |n| {
                charged += n;
                true
            })
            .await
            .expect("read")
            .expect("frame");
            assert_eq!(raw.decode::<Vec<u8>>().expect("decode"), body);
            assert_eq!(charged, framed.len() - PREFIX_LEN);
            // Over budget: refused as Busy.
            let busy = read_raw_charged(&mut recv, usize::MAX, |_| false).await;
            assert!(matches!(busy, Err(TransportError::Busy)));
            drop(recv);
            writer.await;
            // Over the size limit: refused before the body is read.
            let (mut send2, mut recv2) = pair();
            send2
                .write_bytes(&framed[..PREFIX_LEN])
                .await
                .expect("write");
            let too_large = read_raw(&mut recv2, 1000).await;
            assert!(matches!(too_large, Err(TransportError::Frame(_))));
            // A stream that ends inside a frame is an error, between frames None.
            let (mut send3, mut recv3) = pair();
            send3.write_bytes(&framed[..10]).await.expect("write");
            send3.finish();
            assert!(read_raw(&mut recv3, usize::MAX).await.is_err());
            let (mut send4, mut recv4) = pair();
            send4.finish();
            assert!(read_raw(&mut recv4, usize::MAX)
                .await
                .expect("clean end")
                .is_none());
        });
    }
}
