//! Everything a node decodes from a client: a frame holding a
//! `ClientRequest` (or, on a Unix connection or a `Call::Mux` stream, a
//! numbered `UnixRequest`),
//! then the messages of streaming calls. None may panic,
//! and whatever decodes must re-encode to a frame that decodes the same.
#![no_main]

use libfuzzer_sys::fuzz_target;
use qed_wire::frame::{self, MAX_CLIENT_FRAME};
use qed_wire::lease::LeaseKeepAliveRequest;
use qed_wire::watch::WatchRequest;
use qed_wire::{ClientRequest, UnixRequest};

fuzz_target!(|data: &[u8]| {
    if let Ok(req) = frame::decode_frame::<ClientRequest>(data, MAX_CLIENT_FRAME) {
        let again = frame::encode(&req, MAX_CLIENT_FRAME).expect("a decoded request re-encodes");
        assert_eq!(frame::decode_frame::<ClientRequest>(&again, MAX_CLIENT_FRAME).ok(), Some(req));
    }
    if let Ok(req) = frame::decode_frame::<UnixRequest>(data, MAX_CLIENT_FRAME) {
        let again = frame::encode(&req, MAX_CLIENT_FRAME).expect("a decoded request re-encodes");
        assert_eq!(frame::decode_frame::<UnixRequest>(&again, MAX_CLIENT_FRAME).ok(), Some(req));
    }
    let _ = frame::decode::<ClientRequest>(data);
    let _ = frame::decode::<UnixRequest>(data);
    let _ = frame::decode::<WatchRequest>(data);
    let _ = frame::decode::<LeaseKeepAliveRequest>(data);
});
