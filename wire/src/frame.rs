//! Length-prefixed framing of postcard messages.
//!
//! A frame is a 4-byte big-endian body length followed by the postcard body.
//! The length is checked against the caller's limit before a single byte of
//! the body is allocated, and a body must decode exactly (no trailing bytes),
//! so a malicious or buggy peer can neither make us allocate unbounded memory
//! nor smuggle data past the decoder.

use serde::{de::DeserializeOwned, Serialize};
use std::fmt;

/// Bytes in the length prefix.
pub const PREFIX_LEN: usize = 4;

/// etcd's default `--max-request-bytes` (1.5 MiB).
pub const MAX_REQUEST_BYTES: usize = 1536 * 1024;

/// The largest frame a node accepts from a client: a maximal request plus
/// the envelope around it (etcd allows the same 512 KiB of gRPC overhead).
pub const MAX_CLIENT_FRAME: usize = MAX_REQUEST_BYTES + 512 * 1024;

/// The largest frame a client accepts from a node. Responses (a large range,
/// a snapshot chunk) may legitimately exceed the request limit; etcd's
/// clients default to accepting 2 GiB, we cap lower to bound memory on small
/// devices.
pub const MAX_SERVER_FRAME: usize = 512 * 1024 * 1024;

/// Why a frame could not be encoded or decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameError {
    /// The announced (or encoded) body length is over the limit.
    TooLarge { len: usize, max: usize },
    /// The body is not a valid postcard encoding of the expected message.
    Malformed(String),
    /// The body decoded, but bytes were left over.
    TrailingBytes(usize),
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::TooLarge { len, max } => {
                write!(f, "frame of {len} bytes exceeds the limit of {max} bytes")
            }
            FrameError::Malformed(why) => write!(f, "malformed frame: {why}"),
            FrameError::TrailingBytes(n) => write!(f, "malformed frame: {n} trailing bytes"),
        }
    }
}

impl std::error::Error for FrameError {}

/// Encodes `msg` as a complete frame (prefix + body), refusing bodies over `max`.
pub fn encode<T: Serialize>(msg: &T, max: usize) -> Result<Vec<u8>, FrameError> {
    encode_into(msg, max, Vec::new())
}

/// Appends one frame to `out` (so many frames can leave in one write).
/// On error `out` is lost; callers drop the whole batch anyway.
pub fn encode_into<T: Serialize>(
    msg: &T,
    max: usize,
    mut out: Vec<u8>,
) -> Result<Vec<u8>, FrameError> {
    let start = out.len();
    out.extend_from_slice(&[0u8; PREFIX_LEN]);
    out = postcard::to_extend(msg, out).map_err(|e| FrameError::Malformed(e.to_string()))?;
    let len = out.len() - start - PREFIX_LEN;
    if len > max {
        return Err(FrameError::TooLarge { len, max });
    }
    let len32 = u32::try_from(len).map_err(|_| FrameError::TooLarge { len, max })?;
    out[start..start + PREFIX_LEN].copy_from_slice(&len32.to_be_bytes());
    Ok(out)
}

/// Encodes into a vector of exactly the encoding's size. `to_allocvec`
/// grows by doubling, which for encodings that stay in memory (Raft
/// entries, snapshot images) wastes up to half of what they hold.
pub fn encode_exact<T: Serialize + ?Sized>(msg: &T) -> postcard::Result<Vec<u8>> {
    postcard::to_extend(msg, Vec::with_capacity(encoded_len(msg)?))
}

/// The length of `msg`'s encoding, measured without writing it.
pub fn encoded_len<T: Serialize + ?Sized>(msg: &T) -> postcard::Result<usize> {
    postcard::serialize_with_flavor(msg, postcard::ser_flavors::Size::default())
}

/// Reads the body length from a prefix, refusing lengths over `max`.
pub fn body_len(prefix: [u8; PREFIX_LEN], max: usize) -> Result<usize, FrameError> {
    let len = u32::from_be_bytes(prefix) as usize;
    if len > max {
        return Err(FrameError::TooLarge { len, max });
    }
    Ok(len)
}

/// Decodes one message from a complete frame body.
pub fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, FrameError> {
    let (msg, rest) =
        postcard::take_from_bytes(body).map_err(|e| FrameError::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(FrameError::TrailingBytes(rest.len()));
    }
    Ok(msg)
}

/// Decodes a whole buffer holding exactly one frame (prefix + body); used by
/// tests and fuzzers that have the bytes in hand rather than on a stream.
pub fn decode_frame<T: DeserializeOwned>(buf: &[u8], max: usize) -> Result<T, FrameError> {
    let Some((prefix, body)) = buf.split_first_chunk::<PREFIX_LEN>() else {
        return Err(FrameError::Malformed(
            "shorter than the length prefix".into(),
        ));
    };
    let len = body_len(*prefix, max)?;
    if body.len() != len {
        return Err(FrameError::Malformed(format!(
            "prefix announces {len} bytes, {} present",
            body.len()
        )));
    }
    decode(body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::PutRequest;

    #[test]
    fn round_trips() {
        let put = PutRequest {
            key: b"k".to_vec(),
            value: b"v".to_vec(),
            ..Default::default()
        };
        let buf = encode(&put, MAX_CLIENT_FRAME).unwrap();
        assert_eq!(
            decode_frame::<PutRequest>(&buf, MAX_CLIENT_FRAME).unwrap(),
            put
        );
    }

    #[test]
    fn refuses_oversized_prefix_before_reading_body() {
        let prefix = u32::MAX.to_be_bytes();
        assert!(matches!(
            body_len(prefix, MAX_CLIENT_FRAME),
            Err(FrameError::TooLarge { .. })
        ));
    }

    #[test]
    fn refuses_oversized_body_on_encode() {
        let put = PutRequest {
            key: b"k".to_vec(),
            value: vec![0; 100],
            ..Default::default()
        };
        assert!(matches!(encode(&put, 10), Err(FrameError::TooLarge { .. })));
    }

    #[test]
    fn deeply_nested_txns_are_refused_not_a_stack_overflow() {
        use crate::kv::{RequestOp, TxnRequest, MAX_TXN_DEPTH};
        // Hand-built bytes for 500,000 nested txns, each level being
        // RequestOp::Txn (tag 3) of a TxnRequest with no compares, one
        // success op and (after the nest) no failures: what an attacker
        // can fit in one frame.
        let levels = 500_000;
        let mut body = Vec::with_capacity(levels * 4);
        for _ in 0..levels {
            body.extend_from_slice(&[3, 0, 1]);
        }
        body.extend_from_slice(&[3, 0, 0, 0]);
        body.extend(std::iter::repeat_n(0u8, levels));
        // (postcard reports custom errors without their text.)
        assert!(matches!(
            decode::<RequestOp>(&body),
            Err(FrameError::Malformed(_))
        ));
        // The bound leaves legitimate nesting alone.
        let mut txn = TxnRequest::default();
        for _ in 1..MAX_TXN_DEPTH {
            txn = TxnRequest {
                success: vec![RequestOp::Txn(txn)],
                ..Default::default()
            };
        }
        let buf = encode(&txn, MAX_CLIENT_FRAME).unwrap();
        assert_eq!(
            decode_frame::<TxnRequest>(&buf, MAX_CLIENT_FRAME).unwrap(),
            txn
        );
    }

    #[test]
    fn refuses_trailing_and_truncated_bytes() {
        let put = PutRequest::default();
        let mut buf = encode(&put, 1024).unwrap();
        buf.push(0);
        buf[3] += 1;
        assert!(matches!(
            decode_frame::<PutRequest>(&buf, 1024),
            Err(FrameError::TrailingBytes(1))
        ));
        assert!(decode_frame::<PutRequest>(&buf[..2], 1024).is_err());
        assert!(decode_frame::<PutRequest>(&buf[..buf.len() - 2], 1024).is_err());
    }
}
