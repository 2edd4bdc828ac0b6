//! etcd v3's watch engine (its `watchableStore`) as a pure state machine:
//! no I/O, no clock, no tasks, no locks. The server owns one [`WatchHub`]
//! beside its `mvcc::Store`, feeds it every applied revision's events, and
//! drains per-stream queues of ready-made [`WatchResponse`]s.
//!
//! Watchers are keyed by `(stream, watch id)`. A *synced* watcher has seen
//! every revision up to the hub's and receives new events as they are
//! applied ([`WatchHub::on_apply`]); an *unsynced* one (a watch from an old
//! revision, or a slow consumer that was demoted) catches up from the
//! store's history in batches ([`WatchHub::catch_up`]) and turns synced when
//! it reaches the store's revision. Single-key watchers are found by a map
//! lookup and range watchers by an interval tree, so routing an event costs
//! O(log n + matches), not a scan of every watcher; the watches of a
//! stream that are handed the same events at once share one queued
//! response, so a thousand watchers of a stream on one key cost one
//! response per revision (per drain), not a thousand.
//!
//! Invariants, each pinned by a test:
//! - every watcher has a `next_rev`: it has been handed every matching event
//!   below it and none at or above it, so events reach it in revision
//!   order, with no gap and no duplicate, whichever path (apply or
//!   catch-up) delivered them;
//! - a revision's events for one watcher are never split across responses
//!   unless the watch asked for `fragment`, and then all parts but the last
//!   carry `fragment = true` (etcd's `sendFragments`); revisions handed to
//!   a watcher before its stream drains join its last queued response
//!   (whole revisions, under the response size limit, never across another
//!   response of the stream), as etcd's catch-up responses carry many;
//! - a stream's queue is bounded: a watcher that would push it past the
//!   bound is demoted to unsynced and its queued events are dropped, its
//!   `next_rev` rewound to the first one dropped, so a slow client costs
//!   bounded memory and later resumes from history exactly where it left;
//! - a watcher whose `next_rev` falls below the compaction point gets one
//!   response with `compact_revision` set and `canceled = true`, and is
//!   removed.
//!
//! One inherited etcd limit: a watch resuming at exactly the compaction
//! revision is served (etcd says `compact_revision` is the lowest revision a
//! watch may start from), but history at that revision holds only what
//! compaction kept: its puts, without deletes and possibly without
//! `prev_kv`.

mod hub;
mod interval;
mod pending;

#[cfg(test)]
mod tests;

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};

pub use hub::{StreamId, WatchConfig, WatchHub, WatchId};
pub use pending::{batch, BatchRef, Batched, ForWatch, PendingResponse};
pub use qed_wire::watch::{WatchCreateRequest, WatchResponse};

/// A hasher for the hub's integer keys (watch IDs): one multiply per
/// word (the FxHash scheme). The keys are IDs within one stream, which
/// only that stream's client chooses, so crowding one bucket costs that
/// client only its own stream's time; SipHash's protection is not needed
/// here, and it showed in the fan-out's profile (one lookup per watcher
/// per revision).
#[derive(Default, Clone, Copy)]
pub(crate) struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.write_u64(u64::from(*b));
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }

    fn write_i64(&mut self, n: i64) {
        self.write_u64(n as u64);
    }
}

/// Maps and sets keyed by watch ID.
pub(crate) type IdMap<V> = HashMap<WatchId, V, BuildHasherDefault<IdHasher>>;
pub(crate) type IdSet = HashSet<WatchId, BuildHasherDefault<IdHasher>>;

/// Why a watch request was refused. `Display` is etcd's text, which is also
/// what goes into a refused create's `cancel_reason`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchError {
    /// A client-chosen watch ID already in use on the stream.
    IdExists,
    /// `key >= range_end` (and `range_end` is not the from-key `[0]`).
    EmptyRange,
    /// Cancel of a watch the stream does not have.
    NotFound,
}

impl fmt::Display for WatchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            WatchError::IdExists => "mvcc: duplicate watch ID provided on the WatchStream",
            WatchError::EmptyRange => "mvcc: watcher range is empty",
            WatchError::NotFound => "mvcc: watcher does not exist",
        })
    }
}

impl std::error::Error for WatchError {}

impl From<WatchError> for qed_wire::Error {
    fn from(e: WatchError) -> Self {
        match e {
            WatchError::IdExists => qed_wire::Error::WatchIdExists,
            other => qed_wire::Error::InvalidArgument(other.to_string()),
        }
    }
}
