//! KV service messages (etcd's `etcdserverpb.KV` and `mvccpb.KeyValue`).
//!
//! Field meanings and defaults follow etcd's `rpc.proto` exactly: zero means
//! "unset" wherever etcd treats it so (revision 0 is "latest", limit 0 is "no
//! limit", lease 0 is "no lease"), so the gRPC shim copies fields across
//! without interpretation.

use serde::{Deserialize, Serialize};

/// Carried by every response: who answered and at what state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResponseHeader {
    pub cluster_id: u64,
    pub member_id: u64,
    /// The key space revision when the request was applied or served.
    pub revision: i64,
    pub raft_term: u64,
}

/// One version of one key.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct KeyValue {
    #[serde(with = "crate::bytes")]
    pub key: Vec<u8>,
    /// Revision of the put that created the key's current generation.
    pub create_revision: i64,
    /// Revision of the last modification.
    pub mod_revision: i64,
    /// Modifications since creation; 1 for a fresh key, reset on delete.
    pub version: i64,
    #[serde(with = "crate::bytes")]
    pub value: Vec<u8>,
    /// Attached lease ID, 0 for none.
    pub lease: i64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum SortOrder {
    #[default]
    None,
    Ascend,
    Descend,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum SortTarget {
    #[default]
    Key,
    Version,
    Create,
    Mod,
    Value,
}

/// Reads `[key, range_end)`. An empty `range_end` means just `key`; `range_end`
/// of `[0]` means every key `>= key`; prefix reads use `key` + 1 as the end.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangeRequest {
    #[serde(with = "crate::bytes")]
    pub key: Vec<u8>,
    #[serde(with = "crate::bytes")]
    pub range_end: Vec<u8>,
    /// At most this many keys; 0 is no limit.
    pub limit: i64,
    /// Read at this revision; 0 (or below) is the latest.
    pub revision: i64,
    pub sort_order: SortOrder,
    pub sort_target: SortTarget,
    /// Serve from local state without a ReadIndex round.
    pub serializable: bool,
    pub keys_only: bool,
    pub count_only: bool,
    pub min_mod_revision: i64,
    pub max_mod_revision: i64,
    pub min_create_revision: i64,
    pub max_create_revision: i64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangeResponse {
    pub header: ResponseHeader,
    pub kvs: Vec<KeyValue>,
    /// More keys matched than `limit` allowed.
    pub more: bool,
    /// Keys matched in total, before `limit`.
    pub count: i64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PutRequest {
    #[serde(with = "crate::bytes")]
    pub key: Vec<u8>,
    #[serde(with = "crate::bytes")]
    pub value: Vec<u8>,
    pub lease: i64,
    pub prev_kv: bool,
    /// Keep the current value (error if the key does not exist).
    pub ignore_value: bool,
    /// Keep the current lease (error if the key does not exist).
    pub ignore_lease: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PutResponse {
    pub header: ResponseHeader,
    pub prev_kv: Option<KeyValue>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeleteRangeRequest {
    #[serde(with = "crate::bytes")]
    pub key: Vec<u8>,
    #[serde(with = "crate::bytes")]
    pub range_end: Vec<u8>,
    pub prev_kv: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeleteRangeResponse {
    pub header: ResponseHeader,
    pub deleted: i64,
    pub prev_kvs: Vec<KeyValue>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RequestOp {
    Range(RangeRequest),
    Put(PutRequest),
    DeleteRange(DeleteRangeRequest),
    Txn(TxnRequest),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ResponseOp {
    Range(RangeResponse),
    Put(PutResponse),
    DeleteRange(DeleteRangeResponse),
    Txn(TxnResponse),
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum CompareResult {
    #[default]
    Equal,
    Greater,
    Less,
    NotEqual,
}

/// What a compare looks at, with the operand to compare against.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CompareTarget {
    Version(i64),
    Create(i64),
    Mod(i64),
    Value(#[serde(with = "crate::bytes")] Vec<u8>),
    Lease(i64),
}

impl Default for CompareTarget {
    fn default() -> Self {
        CompareTarget::Version(0)
    }
}

/// `target(key) <result> operand`, over `[key, range_end)` when `range_end`
/// is set (every key in the range must satisfy it).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Compare {
    pub result: CompareResult,
    pub target: CompareTarget,
    #[serde(with = "crate::bytes")]
    pub key: Vec<u8>,
    #[serde(with = "crate::bytes")]
    pub range_end: Vec<u8>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct TxnRequest {
    pub compare: Vec<Compare>,
    pub success: Vec<RequestOp>,
    pub failure: Vec<RequestOp>,
}

/// How deeply txns may nest in one request. Decoding recurses once per
/// level, so without a bound a 2 MiB frame of nested txns would overflow the
/// stack; etcd's 128-op budget caps real nesting well below this anyway.
pub const MAX_TXN_DEPTH: u32 = 128;

thread_local! {
    static TXN_DEPTH: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

/// Undoes one level of [`TXN_DEPTH`] however decoding of that level ends.
struct DepthGuard;

impl Drop for DepthGuard {
    fn drop(&mut self) {
        TXN_DEPTH.with(|d| d.set(d.get().saturating_sub(1)));
    }
}

/// The encoded shape of [`TxnRequest`] (postcard is positional, so it is
/// byte-for-byte the same); decoding goes through it under a depth bound.
#[derive(Deserialize)]
struct TxnRequestFields {
    compare: Vec<Compare>,
    success: Vec<RequestOp>,
    failure: Vec<RequestOp>,
}

impl<'de> Deserialize<'de> for TxnRequest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let depth = TXN_DEPTH.with(|c| {
            c.set(c.get() + 1);
            c.get()
        });
        let _guard = DepthGuard;
        if depth > MAX_TXN_DEPTH {
            return Err(serde::de::Error::custom(format!(
                "txn nested more than {MAX_TXN_DEPTH} levels deep"
            )));
        }
        let f = TxnRequestFields::deserialize(d)?;
        Ok(TxnRequest {
            compare: f.compare,
            success: f.success,
            failure: f.failure,
        })
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxnResponse {
    pub header: ResponseHeader,
    pub succeeded: bool,
    pub responses: Vec<ResponseOp>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompactionRequest {
    pub revision: i64,
    /// Reply only once the compaction is physically applied.
    pub physical: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompactionResponse {
    pub header: ResponseHeader,
}

/// A change to one key, as watchers see it (etcd's `mvccpb.Event`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventType {
    #[default]
    Put,
    Delete,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub kind: EventType,
    /// For a delete: the key with `mod_revision` set to the delete's revision.
    pub kv: KeyValue,
    pub prev_kv: Option<KeyValue>,
}
