//! Revisions: the (main, sub) pair that orders every change to the key space.
//!
//! `main` is bumped once per write request or txn that changes something;
//! `sub` counts the changes inside that one main revision, from 0. Ordering is
//! lexicographic on (main, sub), which is exactly the order changes were
//! applied in. `sub` is a `u32`: one request cannot make four billion changes
//! in a memory-resident store, and the narrower field keeps the per-revision
//! footprint small.

use serde::{Deserialize, Serialize};

#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Revision {
    pub main: i64,
    pub sub: u32,
}

impl Revision {
    pub fn new(main: i64, sub: u32) -> Revision {
        Revision { main, sub }
    }

    /// Big-endian bytes (main then sub), so byte order equals revision order;
    /// used where a revision is hashed.
    pub fn to_bytes(self) -> [u8; 12] {
        let mut out = [0u8; 12];
        out[..8].copy_from_slice(&self.main.to_be_bytes());
        out[8..].copy_from_slice(&self.sub.to_be_bytes());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_is_main_then_sub() {
        assert!(Revision::new(1, 5) < Revision::new(2, 0));
        assert!(Revision::new(2, 0) < Revision::new(2, 1));
        assert_eq!(Revision::new(3, 3), Revision::new(3, 3));
    }

    #[test]
    fn byte_order_matches_revision_order() {
        let revs = [
            Revision::new(0, 0),
            Revision::new(1, 0),
            Revision::new(1, 1),
            Revision::new(1, 256),
            Revision::new(256, 0),
        ];
        for pair in revs.windows(2) {
            assert!(pair[0].to_bytes() < pair[1].to_bytes());
        }
    }
}
