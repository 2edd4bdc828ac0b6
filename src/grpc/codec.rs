//! gRPC message framing: the 5-byte prefix (compressed flag, big-endian
//! length) in front of every protobuf message on an HTTP/2 stream.
//!
//! Role: turn the DATA frames of a request body into whole messages and
//! back. Invariants: a message's announced length is checked against the
//! receive limit as soon as its prefix has arrived, before its body is
//! buffered, so a client cannot make the shim hold more than one limit's
//! worth of bytes per stream; a set compressed flag is refused (the shim
//! advertises no compression); nothing here panics on any input.

use super::status::{Code, Status};
use bytes::{Buf, Bytes, BytesMut};

/// Bytes in the gRPC message prefix.
pub const PREFIX_LEN: usize = 5;

/// etcd's receive limit: `--max-request-bytes` (1.5 MiB) plus 512 KiB of
/// gRPC overhead (`grpcOverheadBytes` in etcd's `v3rpc/grpc.go`).
pub const MAX_RECV_BYTES: usize = 1536 * 1024 + 512 * 1024;

/// Splits a byte stream into gRPC messages.
#[derive(Debug)]
pub struct Decoder {
    buf: BytesMut,
    max: usize,
}

impl Decoder {
    pub fn new(max: usize) -> Decoder {
        Decoder {
            buf: BytesMut::new(),
            max,
        }
    }

    /// Appends bytes from a DATA frame.
    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// Bytes buffered but not yet returned as a message.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// The next whole message, `Ok(None)` if more bytes are needed, or the
    /// status gRPC-go answers with for a bad prefix.
    pub fn next_message(&mut self) -> Result<Option<Bytes>, Status> {
        if self.buf.len() < PREFIX_LEN {
            return Ok(None);
        }
        let flag = self.buf[0];
        let len = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]) as usize;
        match flag {
            0 => {}
            1 => {
                return Err(Status::internal(
                    "grpc: compressed flag set with identity or empty encoding",
                ))
            }
            other => {
                return Err(Status::internal(format!(
                    "grpc: received unexpected payload format {other}"
                )))
            }
        }
        if len > self.max {
            return Err(Status::new(
                Code::ResourceExhausted,
                format!(
                    "grpc: received message larger than max ({len} vs. {})",
                    self.max
                ),
            ));
        }
        if self.buf.len() < PREFIX_LEN + len {
            self.buf.reserve(PREFIX_LEN + len - self.buf.len());
            return Ok(None);
        }
        self.buf.advance(PREFIX_LEN);
        Ok(Some(self.buf.split_to(len).freeze()))
    }
}

/// Frames one protobuf message.
pub fn encode<M: prost::Message>(message: &M) -> Bytes {
    let len = message.encoded_len();
    let mut out = Vec::with_capacity(PREFIX_LEN + len);
    out.push(0);
    out.extend_from_slice(&(len as u32).to_be_bytes());
    // Encoding into a Vec cannot run out of space.
    let _ = message.encode(&mut out);
    Bytes::from(out)
}

/// Frames one protobuf message at the end of `out`.
pub fn encode_into<M: prost::Message>(message: &M, out: &mut BytesMut) {
    use bytes::BufMut;
    let len = message.encoded_len();
    out.reserve(PREFIX_LEN + len);
    out.put_u8(0);
    out.put_u32(len as u32);
    // Room was reserved: encoding cannot run out of space.
    let _ = message.encode(out);
}

/// Decodes one protobuf message, with gRPC-go's status for a bad body.
pub fn decode<M: prost::Message + Default>(body: &[u8]) -> Result<M, Status> {
    M::decode(body).map_err(|e| Status::internal(format!("grpc: error unmarshalling request: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::grpc::pb;

    #[test]
    fn splits_messages_across_arbitrary_chunks() {
        let a = encode(&pb::PutRequest {
            key: b"a".to_vec(),
            value: b"1".to_vec(),
            ..Default::default()
        });
        let b = encode(&pb::Empty {});
        let all: Vec<u8> = a.iter().chain(b.iter()).copied().collect();
        for split in 0..all.len() {
            let mut d = Decoder::new(MAX_RECV_BYTES);
            d.push(&all[..split]);
            let mut got = Vec::new();
            while let Some(m) = d.next_message().unwrap() {
                got.push(m);
            }
            d.push(&all[split..]);
            while let Some(m) = d.next_message().unwrap() {
                got.push(m);
            }
            assert_eq!(got.len(), 2, "split at {split}");
            assert_eq!(&got[0][..], &a[PREFIX_LEN..]);
            assert!(got[1].is_empty());
            assert_eq!(d.buffered(), 0);
        }
    }

    #[test]
    fn refuses_oversized_before_buffering() {
        let mut d = Decoder::new(10);
        d.push(&[0, 0, 0, 0, 11]);
        let err = d.next_message().unwrap_err();
        assert_eq!(err.code, Code::ResourceExhausted);
        assert_eq!(
            err.message,
            "grpc: received message larger than max (11 vs. 10)"
        );
    }

    #[test]
    fn refuses_compressed() {
        let mut d = Decoder::new(10);
        d.push(&[1, 0, 0, 0, 1, 0]);
        assert_eq!(d.next_message().unwrap_err().code, Code::Internal);
    }

    #[test]
    fn malformed_protobuf_is_internal() {
        let err = decode::<pb::RangeRequest>(&[0x0a, 0xff]).unwrap_err();
        assert_eq!(err.code, Code::Internal);
        assert!(err
            .message
            .starts_with("grpc: error unmarshalling request:"));
    }
}
