//! Everything qed-grpc decodes from a gRPC client: the 5-byte message
//! framing over arbitrary DATA-frame splits, then every method's protobuf
//! request and its translation to wire types. None may panic, and a decoded
//! `TxnRequest` (the deepest, recursive message) must re-encode to bytes
//! that decode to the same value. The HPACK `:authority` fix-up
//! (`grpc::authority`) parses arbitrary header blocks; what it rewrites
//! needs no second rewrite.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use qed::grpc::codec::Decoder;
use qed::grpc::convert::{self, Unary};
use qed::grpc::pb;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    // Framing: small limit so the over-limit path is reached too.
    let mut decoder = Decoder::new(64 + usize::from(selector) * 64);
    let chunk = usize::from(selector % 13) + 1;
    for piece in body.chunks(chunk) {
        decoder.push(piece);
        loop {
            match decoder.next_message() {
                Ok(Some(message)) => {
                    let _ = convert::watch_request_bytes(&message);
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
    // Every request decoder and translation.
    for method in Unary::all() {
        let _ = method.decode_request(body);
    }
    let _ = convert::watch_request_bytes(body);
    let _ = qed::grpc::authority::huffman_decode(body);
    if let Some(Some(fixed)) = qed::grpc::authority::fix_block(body) {
        assert_eq!(qed::grpc::authority::fix_block(&fixed), Some(None));
    }
    let _ = convert::keep_alive_request_bytes(body);
    if let Ok(txn) = pb::TxnRequest::decode(body) {
        let again = txn.encode_to_vec();
        assert_eq!(pb::TxnRequest::decode(&again[..]).ok(), Some(txn));
    }
});
