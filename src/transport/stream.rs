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
    let mut prefix = [0u8; PREFIX_LEN];
    match recv.read_exact(&mut prefix).await {
        Ok(()) => {}
        Err(ReadExactError::FinishedEarly(0)) => return Ok(None),
        Err(e) => return Err(TransportError::Stream(e.to_string())),
    }
    let len = frame::body_len(prefix, max)?;
    let mut body = vec![0u8; len];
    recv.read_exact(&mut body)
        .await
        .map_err(|e| TransportError::Stream(e.to_string()))?;
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
