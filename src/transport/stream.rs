//! Typed frames over QUIC streams.
//!
//! The length prefix is read and checked against the caller's limit before
//! the body is allocated; a stream that ends cleanly between frames yields
//! `None`, one that ends inside a frame is an error.

use super::TransportError;
use qed_wire::frame::{self, PREFIX_LEN};
use quinn::{ReadExactError, RecvStream, SendStream};
use serde::{de::DeserializeOwned, Serialize};

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
    recv: &mut RecvStream,
    max: usize,
) -> Result<Option<RawFrame>, TransportError> {
    read_raw_charged(recv, max, |_| true).await
}

/// Bytes of a body allocated before any of it arrived: a declared length
/// costs nothing until the bytes come.
const FIRST_ALLOCATION: usize = 16 * 1024;

/// [`read_raw`], with each chunk of the body passed to `charge` (its
/// length) before it is kept: the body grows as bytes arrive, and a
/// `false` from `charge` ends the read with [`TransportError::Busy`].
pub async fn read_raw_charged(
    recv: &mut RecvStream,
    max: usize,
    mut charge: impl FnMut(usize) -> bool,
) -> Result<Option<RawFrame>, TransportError> {
    let mut prefix = [0u8; PREFIX_LEN];
    match recv.read_exact(&mut prefix).await {
        Ok(()) => {}
        Err(ReadExactError::FinishedEarly(0)) => return Ok(None),
        Err(e) => return Err(TransportError::Stream(e.to_string())),
    }
    let len = frame::body_len(prefix, max)?;
    let mut body = Vec::with_capacity(len.min(FIRST_ALLOCATION));
    while body.len() < len {
        let chunk = match recv.read_chunk(len - body.len(), true).await {
            Ok(Some(chunk)) => chunk.bytes,
            Ok(None) => return Err(TransportError::Stream("stream ended inside a frame".into())),
            Err(e) => return Err(TransportError::Stream(e.to_string())),
        };
        if !charge(chunk.len()) {
            return Err(TransportError::Busy);
        }
        if body.capacity() - body.len() < chunk.len() {
            // Doubling, but never past the declared length.
            let grow = chunk.len().max(body.len()).min(len - body.len());
            body.reserve_exact(grow);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Some(RawFrame(body)))
}

/// Reads and decodes one frame; `None` when the peer finished the stream.
pub async fn read<T: DeserializeOwned>(
    recv: &mut RecvStream,
    max: usize,
) -> Result<Option<T>, TransportError> {
    match read_raw(recv, max).await? {
        Some(raw) => raw.decode().map(Some),
        None => Ok(None),
    }
}

/// Reads frames through a buffer, for streams that carry many: one read
/// from QUIC yields every frame that has arrived (a watch stream's
/// responses come in bursts), instead of two reads per frame. A frame's
/// length is checked against the limit before its body is buffered.
pub struct FrameReader {
    recv: RecvStream,
    buf: Vec<u8>,
    /// Where the unread bytes of `buf` start.
    start: usize,
}

impl FrameReader {
    pub fn new(recv: RecvStream) -> FrameReader {
        FrameReader {
            recv,
            buf: Vec::new(),
            start: 0,
        }
    }

    /// The next frame, decoded; `None` when the peer finished the stream
    /// between frames.
    pub async fn read<T: DeserializeOwned>(
        &mut self,
        max: usize,
    ) -> Result<Option<T>, TransportError> {
        loop {
            let unread = &self.buf[self.start..];
            if let Some(prefix) = unread.first_chunk::<PREFIX_LEN>() {
                let len = frame::body_len(*prefix, max)?;
                if let Some(body) = unread.get(PREFIX_LEN..PREFIX_LEN + len) {
                    let msg = frame::decode(body)?;
                    self.start += PREFIX_LEN + len;
                    return Ok(Some(msg));
                }
            }
            if self.start == self.buf.len() {
                self.buf.clear();
                self.start = 0;
            } else if self.start > 0 {
                self.buf.drain(..self.start);
                self.start = 0;
            }
            match self.recv.read_chunk(usize::MAX, true).await {
                Ok(Some(chunk)) => self.buf.extend_from_slice(&chunk.bytes),
                Ok(None) if self.buf.is_empty() => return Ok(None),
                Ok(None) => {
                    return Err(TransportError::Stream("stream ended inside a frame".into()))
                }
                Err(e) => return Err(TransportError::Stream(e.to_string())),
            }
        }
    }
}

/// Encodes and writes one frame.
pub async fn write<T: Serialize>(
    send: &mut SendStream,
    msg: &T,
    max: usize,
) -> Result<(), TransportError> {
    write_bytes(send, &frame::encode(msg, max)?).await
}

/// Encodes several messages and writes them in as few writes as fit in
/// [`BATCH_BYTES`]: one pass through QUIC's stream state per batch instead
/// of one per message.
pub async fn write_all_of<T: Serialize>(
    send: &mut SendStream,
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

async fn write_bytes(send: &mut SendStream, buf: &[u8]) -> Result<(), TransportError> {
    send.write_all(buf)
        .await
        .map_err(|e| TransportError::Stream(e.to_string()))
}
