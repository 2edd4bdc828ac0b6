//! etcd v3's revisioned key space as a pure state machine: no I/O, no
//! clock, no locks. The server applies committed Raft entries to a
//! [`Store`] in log order and gets back responses plus the [`Event`]s that
//! watchers need; reads are served from the same `Store` (or an O(1) clone
//! of it).
//!
//! ```
//! use qed::mvcc::Store;
//! use qed::wire::kv::{Compare, CompareResult, CompareTarget, PutRequest, RangeRequest,
//!                     RequestOp, TxnRequest};
//!
//! let mut store = Store::new();                  // revision 1, like etcd
//! let no_leases = |_lease: i64| false;           // the lessor answers this
//! let put = PutRequest { key: b"k".to_vec(), value: b"v1".to_vec(), ..Default::default() };
//! let (resp, events) = store.put(&put, &no_leases).unwrap();
//! assert_eq!(resp.header.revision, 2);
//! assert_eq!(events.len(), 1);                   // for watchers and the lessor
//!
//! // Compare-and-swap: one revision for the whole txn.
//! let cas = TxnRequest {
//!     compare: vec![Compare {
//!         result: CompareResult::Equal,
//!         target: CompareTarget::Value(b"v1".to_vec()),
//!         key: b"k".to_vec(),
//!         range_end: vec![],
//!     }],
//!     success: vec![RequestOp::Put(PutRequest {
//!         key: b"k".to_vec(), value: b"v2".to_vec(), ..Default::default()
//!     })],
//!     failure: vec![],
//! };
//! let (resp, _) = store.txn(&cas, &no_leases).unwrap();
//! assert!(resp.succeeded);
//!
//! // Reads at any revision not yet compacted.
//! let old = RangeRequest { key: b"k".to_vec(), revision: 2, ..Default::default() };
//! assert_eq!(store.range(&old).unwrap().kvs[0].value, b"v1");
//! store.compact(3).unwrap();
//! assert!(store.range(&old).is_err());
//! ```
//!
//! Modules, from the bottom up:
//! - `revision`: the (main, sub) pair ordering all changes;
//! - `block`: a thin shared byte string, the unit of the key space's memory;
//! - `key_index`: one key's history across generations (each change one
//!   block), and its compaction;
//! - `key_map`: the persistent B+ tree of key indexes;
//! - `store`: the ordered key index plus a revision-ordered change log;
//!   range, put, delete, compaction, watch replay, snapshot encoding;
//! - `txn`: txn validation, compares and nested execution;
//! - `hash`: HashKV.
//!
//! Semantics are etcd 3.4's, including where each error is raised; the
//! request and response types are the wire's (`qed_wire::kv`). Writes that
//! change nothing (deleting a missing key, a txn of reads) do not bump the
//! revision. Events returned by writes always carry `prev_kv`.
//!
//! Two etcd facts callers tend to get wrong, both checked on etcd 3.4.23:
//! a range at an old revision answers with the *current* revision in its
//! header; and a watch may start exactly at the compaction revision
//! ([`Store::events_since`] fails only below it), getting what compaction
//! kept of that revision.
//!
//! Where qed differs from etcd, deliberately:
//! - A txn that etcd would panic on while applying (possible only through
//!   etcd's from-key-delete overlap quirk, see `txn`) is undone and refused
//!   with the error etcd panicked with.
//! - An event's `prev_kv` is the value just before that change. etcd's
//!   watch reads it at the previous revision, which differs only when one
//!   txn changes a key twice (again only through that quirk).
//! - Equal sort keys keep key order; etcd's unstable sort may not.
//! - HashKV values are qed's own (etcd hashes its bolt encoding), stable
//!   across qed members with the same history.

pub mod auto_compact;
mod backing;
mod block;
mod changes;
mod hash;
mod key_index;
mod key_map;
mod revision;
mod store;
mod txn;

#[cfg(test)]
mod tests;

use std::fmt;

pub(crate) use backing::BackedSource;
pub use backing::{Backing, Mapped};
pub use hash::HashKv;
/// One kept change of one key, for `crate::etcd_db`'s import and export.
pub(crate) use key_index::{Change, ChangeRef};
pub use revision::Revision;
pub(crate) use store::ValueSource;
pub use store::{Histories, HistoryRead, KeySpaceImage, Store};
pub use txn::DEFAULT_MAX_TXN_OPS;

pub use qed_wire::kv::Event;

use qed_wire::kv::{DeleteRangeRequest, PutRequest, RangeRequest, TxnRequest};

// The checks etcd makes in its API layer, before a request enters Raft.
// The store makes them again when applying (so a log entry that skipped
// them is still refused the same way); a server calls these first so bad
// requests never take up log space.

/// etcd's `checkRangeRequest`.
pub fn validate_range(req: &RangeRequest) -> Result<(), MvccError> {
    if req.key.is_empty() {
        return Err(MvccError::EmptyKey);
    }
    Ok(())
}

/// etcd's `checkPutRequest`.
pub fn validate_put(req: &PutRequest) -> Result<(), MvccError> {
    txn::check_put(req)
}

/// etcd's `checkDeleteRequest`.
pub fn validate_delete_range(req: &DeleteRangeRequest) -> Result<(), MvccError> {
    if req.key.is_empty() {
        return Err(MvccError::EmptyKey);
    }
    Ok(())
}

/// etcd's `checkTxnRequest` and `checkIntervals`, with `--max-txn-ops`.
pub fn validate_txn(req: &TxnRequest, max_txn_ops: usize) -> Result<(), MvccError> {
    txn::check_txn(req, max_txn_ops)
}

/// etcd's `isTxnReadonly`: such a txn may be served like a range (and by
/// [`Store::txn_read_only`]) instead of going through Raft.
pub fn is_read_only_txn(req: &TxnRequest) -> bool {
    txn::is_read_only(req)
}

/// Every way a key space operation can fail. Each maps onto one wire error
/// (and so onto one etcd gRPC error) in `From<MvccError> for
/// qed_wire::Error`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MvccError {
    /// A request, or a compare or op in a txn, has an empty key.
    EmptyKey,
    /// `ignore_value` / `ignore_lease` on a key that does not exist.
    KeyNotFound,
    /// `ignore_value` together with a value.
    ValueProvided,
    /// `ignore_lease` together with a lease.
    LeaseProvided,
    /// A put names a lease that is not granted.
    LeaseNotFound,
    /// More compares, or ops in one branch, than `--max-txn-ops`.
    TooManyOps,
    /// A txn writes one key twice (or puts and deletes it) on one path.
    DuplicateKey,
    /// The revision asked for has been compacted.
    Compacted,
    /// The revision asked for is newer than the store.
    FutureRev,
    /// [`Store::txn_read_only`] was given a txn that could write: a bug in
    /// the caller, which should have sent it through Raft.
    NotReadOnly,
    /// Snapshot bytes that do not decode into a valid store, or a broken
    /// internal invariant; the text says what.
    Corrupt(String),
}

impl fmt::Display for MvccError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MvccError::EmptyKey => f.write_str("key is not provided"),
            MvccError::KeyNotFound => f.write_str("key not found"),
            MvccError::ValueProvided => f.write_str("value is provided"),
            MvccError::LeaseProvided => f.write_str("lease is provided"),
            MvccError::LeaseNotFound => f.write_str("lease not found"),
            MvccError::TooManyOps => f.write_str("too many operations in txn request"),
            MvccError::DuplicateKey => f.write_str("duplicate key given in txn request"),
            MvccError::Compacted => f.write_str("mvcc: required revision has been compacted"),
            MvccError::FutureRev => f.write_str("mvcc: required revision is a future revision"),
            MvccError::NotReadOnly => f.write_str("mvcc: read-only txn path given a write txn"),
            MvccError::Corrupt(why) => write!(f, "mvcc: corrupt state: {why}"),
        }
    }
}

impl std::error::Error for MvccError {}

impl From<MvccError> for qed_wire::Error {
    fn from(e: MvccError) -> Self {
        use qed_wire::Error as W;
        match e {
            MvccError::EmptyKey => W::EmptyKey,
            MvccError::KeyNotFound => W::KeyNotFound,
            MvccError::ValueProvided => W::ValueProvided,
            MvccError::LeaseProvided => W::LeaseProvided,
            MvccError::LeaseNotFound => W::LeaseNotFound,
            MvccError::TooManyOps => W::TooManyOps,
            MvccError::DuplicateKey => W::DuplicateKey,
            MvccError::Compacted => W::Compacted,
            MvccError::FutureRev => W::FutureRev,
            MvccError::NotReadOnly => W::Internal(MvccError::NotReadOnly.to_string()),
            MvccError::Corrupt(why) => W::Internal(format!("mvcc: corrupt state: {why}")),
        }
    }
}
