//! What a restart decodes from a snapshot file: the key space, either
//! copied onto the heap (`Store::from_bytes`) or with its values left in
//! the mapped file (`Store::decode_backed`). Any bytes give a store or an
//! error, never a panic, and both decoders give the same outcome.
#![no_main]

use libfuzzer_sys::fuzz_target;
use qed::mvcc::{Backing, Store};

fuzz_target!(|data: &[u8]| {
    let held = Store::from_bytes(data);
    let backed = Store::decode_backed(Backing::new(data.to_vec()), 0..data.len());
    match (held, backed) {
        (Ok(a), Ok(b)) => assert_eq!(a.to_bytes().ok(), b.to_bytes().ok()),
        (Err(_), Err(_)) => {}
        (a, b) => panic!("from_bytes {:?} but decode_backed {:?}", a.is_ok(), b.is_ok()),
    }
});
