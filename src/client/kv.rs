//! etcd clientv3-style KV calls: get/put/delete with options, a txn builder
//! with if/then/else, and compact.
//!
//! Options are plain builders that fill the wire request; prefix and
//! from-key are resolved against the key at call time exactly as clientv3
//! does (`GetPrefixRangeEnd`), so the node only ever sees a range end.

use super::{Client, ClientError};
use qed_wire::kv::{
    self, CompactionRequest, CompactionResponse, CompareResult, CompareTarget, DeleteRangeRequest,
    DeleteRangeResponse, PutRequest, PutResponse, RangeRequest, RangeResponse, RequestOp,
    TxnRequest, TxnResponse,
};
pub use qed_wire::kv::{SortOrder, SortTarget};
use qed_wire::{Request, Response};

/// The end of the range holding every key that starts with `prefix`: the
/// prefix with its last byte below 0xff incremented; `\0` (every key) when
/// there is none.
pub fn prefix_range_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// Which keys an operation covers beyond its key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) enum Span {
    #[default]
    Key,
    Prefix,
    FromKey,
    RangeEnd(Vec<u8>),
}

impl Span {
    /// The key and range end to send. As clientv3 does, an empty key with a
    /// prefix or from-key means every key: `["\0", "\0")`.
    pub(super) fn resolve(&self, key: Vec<u8>) -> (Vec<u8>, Vec<u8>) {
        match self {
            Span::Prefix | Span::FromKey if key.is_empty() => (vec![0], vec![0]),
            Span::Key => (key, Vec::new()),
            Span::Prefix => {
                let end = prefix_range_end(&key);
                (key, end)
            }
            Span::FromKey => (key, vec![0]),
            Span::RangeEnd(end) => (key, end.clone()),
        }
    }
}

/// `with_prefix`, `with_from_key` and `with_range` for every option type
/// that covers a span of keys (a `span: Span` field).
macro_rules! span_builders {
    ($($ty:ty),*) => {$(
        impl $ty {
            /// Every key with the given key as prefix.
            pub fn with_prefix(mut self) -> Self {
                self.span = Span::Prefix;
                self
            }
            /// Every key greater than or equal to the given key.
            pub fn with_from_key(mut self) -> Self {
                self.span = Span::FromKey;
                self
            }
            /// Keys in `[key, end)`.
            pub fn with_range(mut self, end: impl Into<Vec<u8>>) -> Self {
                self.span = Span::RangeEnd(end.into());
                self
            }
        }
    )*};
}

span_builders!(GetOptions, DeleteOptions, Compare);
pub(super) use span_builders;

/// Options of [`Client::get`].
#[derive(Debug, Clone, Default)]
pub struct GetOptions {
    span: Span,
    req: RangeRequest,
}

impl GetOptions {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn with_limit(mut self, limit: i64) -> Self {
        self.req.limit = limit;
        self
    }
    /// Read as of this revision.
    pub fn with_revision(mut self, revision: i64) -> Self {
        self.req.revision = revision;
        self
    }
    pub fn with_sort(mut self, target: SortTarget, order: SortOrder) -> Self {
        self.req.sort_target = target;
        self.req.sort_order = order;
        self
    }
    /// Serve from the contacted node's state without a quorum round.
    pub fn with_serializable(mut self) -> Self {
        self.req.serializable = true;
        self
    }
    pub fn with_keys_only(mut self) -> Self {
        self.req.keys_only = true;
        self
    }
    pub fn with_count_only(mut self) -> Self {
        self.req.count_only = true;
        self
    }
    pub fn with_min_mod_revision(mut self, rev: i64) -> Self {
        self.req.min_mod_revision = rev;
        self
    }
    pub fn with_max_mod_revision(mut self, rev: i64) -> Self {
        self.req.max_mod_revision = rev;
        self
    }
    pub fn with_min_create_revision(mut self, rev: i64) -> Self {
        self.req.min_create_revision = rev;
        self
    }
    pub fn with_max_create_revision(mut self, rev: i64) -> Self {
        self.req.max_create_revision = rev;
        self
    }

    fn build(self, key: Vec<u8>) -> RangeRequest {
        let (key, range_end) = self.span.resolve(key);
        RangeRequest {
            key,
            range_end,
            ..self.req
        }
    }
}

/// Options of [`Client::put`].
#[derive(Debug, Clone, Default)]
pub struct PutOptions {
    req: PutRequest,
}

impl PutOptions {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn with_lease(mut self, lease: i64) -> Self {
        self.req.lease = lease;
        self
    }
    /// Return the key-value pair as it was before the put.
    pub fn with_prev_kv(mut self) -> Self {
        self.req.prev_kv = true;
        self
    }
    /// Keep the current value; the key must exist.
    pub fn with_ignore_value(mut self) -> Self {
        self.req.ignore_value = true;
        self
    }
    /// Keep the current lease; the key must exist.
    pub fn with_ignore_lease(mut self) -> Self {
        self.req.ignore_lease = true;
        self
    }

    fn build(self, key: Vec<u8>, value: Vec<u8>) -> PutRequest {
        PutRequest {
            key,
            value,
            ..self.req
        }
    }
}

/// Options of [`Client::delete`].
#[derive(Debug, Clone, Default)]
pub struct DeleteOptions {
    span: Span,
    prev_kv: bool,
}

impl DeleteOptions {
    pub fn new() -> Self {
        Self::default()
    }
    /// Return the deleted key-value pairs.
    pub fn with_prev_kv(mut self) -> Self {
        self.prev_kv = true;
        self
    }

    fn build(self, key: Vec<u8>) -> DeleteRangeRequest {
        let (key, range_end) = self.span.resolve(key);
        DeleteRangeRequest {
            key,
            range_end,
            prev_kv: self.prev_kv,
        }
    }
}

/// The comparison of a [`Compare`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompareOp {
    Equal,
    NotEqual,
    Greater,
    Less,
}

impl From<CompareOp> for CompareResult {
    fn from(op: CompareOp) -> Self {
        match op {
            CompareOp::Equal => CompareResult::Equal,
            CompareOp::NotEqual => CompareResult::NotEqual,
            CompareOp::Greater => CompareResult::Greater,
            CompareOp::Less => CompareResult::Less,
        }
    }
}

/// A txn guard: `target(key) op operand`.
#[derive(Debug, Clone)]
pub struct Compare {
    cmp: kv::Compare,
    span: Span,
}

impl Compare {
    fn new(key: impl Into<Vec<u8>>, op: CompareOp, target: CompareTarget) -> Self {
        Compare {
            cmp: kv::Compare {
                result: op.into(),
                target,
                key: key.into(),
                range_end: Vec::new(),
            },
            span: Span::Key,
        }
    }
    pub fn version(key: impl Into<Vec<u8>>, op: CompareOp, version: i64) -> Self {
        Self::new(key, op, CompareTarget::Version(version))
    }
    pub fn create_revision(key: impl Into<Vec<u8>>, op: CompareOp, rev: i64) -> Self {
        Self::new(key, op, CompareTarget::Create(rev))
    }
    pub fn mod_revision(key: impl Into<Vec<u8>>, op: CompareOp, rev: i64) -> Self {
        Self::new(key, op, CompareTarget::Mod(rev))
    }
    pub fn value(key: impl Into<Vec<u8>>, op: CompareOp, value: impl Into<Vec<u8>>) -> Self {
        Self::new(key, op, CompareTarget::Value(value.into()))
    }
    pub fn lease(key: impl Into<Vec<u8>>, op: CompareOp, lease: i64) -> Self {
        Self::new(key, op, CompareTarget::Lease(lease))
    }

    fn build(self) -> kv::Compare {
        let (key, range_end) = self.span.resolve(self.cmp.key);
        kv::Compare {
            key,
            range_end,
            ..self.cmp
        }
    }
}

/// One operation of a txn branch.
#[derive(Debug, Clone)]
pub struct TxnOp(RequestOp);

impl TxnOp {
    pub fn get(key: impl Into<Vec<u8>>, options: Option<GetOptions>) -> Self {
        TxnOp(RequestOp::Range(
            options.unwrap_or_default().build(key.into()),
        ))
    }
    pub fn put(
        key: impl Into<Vec<u8>>,
        value: impl Into<Vec<u8>>,
        options: Option<PutOptions>,
    ) -> Self {
        TxnOp(RequestOp::Put(
            options.unwrap_or_default().build(key.into(), value.into()),
        ))
    }
    pub fn delete(key: impl Into<Vec<u8>>, options: Option<DeleteOptions>) -> Self {
        TxnOp(RequestOp::DeleteRange(
            options.unwrap_or_default().build(key.into()),
        ))
    }
    /// A nested txn.
    pub fn txn(txn: Txn) -> Self {
        TxnOp(RequestOp::Txn(txn.0))
    }
}

/// `if compares then success else failure`, applied atomically at one revision.
#[derive(Debug, Clone, Default)]
pub struct Txn(TxnRequest);

impl Txn {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn when(mut self, compares: impl IntoIterator<Item = Compare>) -> Self {
        self.0
            .compare
            .extend(compares.into_iter().map(Compare::build));
        self
    }
    pub fn and_then(mut self, ops: impl IntoIterator<Item = TxnOp>) -> Self {
        self.0.success.extend(ops.into_iter().map(|op| op.0));
        self
    }
    pub fn or_else(mut self, ops: impl IntoIterator<Item = TxnOp>) -> Self {
        self.0.failure.extend(ops.into_iter().map(|op| op.0));
        self
    }
}

pub(super) fn unexpected(what: &str, got: &Response) -> ClientError {
    ClientError::Protocol(format!("expected a {what} response, got {got:?}"))
}

impl Client {
    pub async fn get(
        &self,
        key: impl Into<Vec<u8>>,
        options: Option<GetOptions>,
    ) -> Result<RangeResponse, ClientError> {
        let req = options.unwrap_or_default().build(key.into());
        match self.call(Request::Range(req)).await? {
            Response::Range(r) => Ok(r),
            other => Err(unexpected("range", &other)),
        }
    }

    pub async fn put(
        &self,
        key: impl Into<Vec<u8>>,
        value: impl Into<Vec<u8>>,
        options: Option<PutOptions>,
    ) -> Result<PutResponse, ClientError> {
        let req = options.unwrap_or_default().build(key.into(), value.into());
        match self.call(Request::Put(req)).await? {
            Response::Put(r) => Ok(r),
            other => Err(unexpected("put", &other)),
        }
    }

    pub async fn delete(
        &self,
        key: impl Into<Vec<u8>>,
        options: Option<DeleteOptions>,
    ) -> Result<DeleteRangeResponse, ClientError> {
        let req = options.unwrap_or_default().build(key.into());
        match self.call(Request::DeleteRange(req)).await? {
            Response::DeleteRange(r) => Ok(r),
            other => Err(unexpected("delete", &other)),
        }
    }

    pub async fn txn(&self, txn: Txn) -> Result<TxnResponse, ClientError> {
        match self.call(Request::Txn(txn.0)).await? {
            Response::Txn(r) => Ok(r),
            other => Err(unexpected("txn", &other)),
        }
    }

    /// Discards history before `revision`; `physical` waits until it is done.
    pub async fn compact(
        &self,
        revision: i64,
        physical: bool,
    ) -> Result<CompactionResponse, ClientError> {
        match self
            .call(Request::Compact(CompactionRequest { revision, physical }))
            .await?
        {
            Response::Compact(r) => Ok(r),
            other => Err(unexpected("compact", &other)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_matches_clientv3() {
        assert_eq!(prefix_range_end(b"a"), b"b");
        assert_eq!(prefix_range_end(b"a\xff"), b"b");
        assert_eq!(prefix_range_end(b"\xff\xff"), b"\0");
        assert_eq!(prefix_range_end(b""), b"\0");
    }

    #[test]
    fn builders_fill_requests() {
        let r = GetOptions::new()
            .with_prefix()
            .with_limit(3)
            .build(b"foo".to_vec());
        assert_eq!((r.range_end.as_slice(), r.limit), (&b"fop"[..], 3));
        let d = DeleteOptions::new().with_from_key().build(b"k".to_vec());
        assert_eq!(d.range_end, vec![0]);
        let all = GetOptions::new().with_prefix().build(Vec::new());
        assert_eq!((all.key, all.range_end), (vec![0], vec![0]));
        let t = Txn::new()
            .when([Compare::value("k", CompareOp::Equal, "v").with_prefix()])
            .and_then([TxnOp::put("k", "w", None)])
            .or_else([TxnOp::get("k", None)]);
        assert_eq!(t.0.compare[0].range_end, b"l");
        assert_eq!((t.0.success.len(), t.0.failure.len()), (1, 1));
    }
}
