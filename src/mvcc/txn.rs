//! Txn: request validation, compare evaluation, and nested execution, in
//! the order and with the error placement of etcd 3.4.
//!
//! etcd checks a txn in three places, and so do we, in the same order:
//! 1. the API layer (`v3rpc/key.go`): op counts ([`check_txn`], etcd's
//!    `checkTxnRequest`, whose budget for a nested txn is what its parent
//!    left over), empty keys, `ignore_*` conflicts, then overlapping writes
//!    ([`check_intervals`], etcd's `checkIntervals`);
//! 2. apply, before any write ([`prepare`]): every compare, nested ones
//!    included, is evaluated against the state *before* the txn (etcd's
//!    `compareToPath`), fixing the branch taken at every level; then puts on
//!    that path are checked for missing keys (`ignore_*`) and unknown leases,
//!    then ranges for future or compacted revisions;
//! 3. execution ([`apply`]): ops run in order under one main revision, and
//!    reads see the txn's earlier writes.
//!
//! Execution cannot fail for a txn that passed 1 and 2, with one exception
//! etcd shares: a from-key delete (`range_end` = `\0`) escapes the
//! overlap check (etcd builds an empty interval for it), so it can delete a
//! key that a later `ignore_value` put then finds missing. etcd panics
//! there; we undo the whole txn and answer `KeyNotFound`.

use std::collections::BTreeSet;

use super::store::{PendingRevision, Store};
use super::MvccError;
use qed_wire::kv::{
    Compare, CompareResult, CompareTarget, KeyValue, PutRequest, RangeRequest, RequestOp,
    ResponseOp, TxnRequest, TxnResponse,
};

/// etcd's `--max-txn-ops` default.
pub const DEFAULT_MAX_TXN_OPS: usize = 128;

/// etcd's `checkPutRequest`.
pub(crate) fn check_put(req: &PutRequest) -> Result<(), MvccError> {
    if req.key.is_empty() {
        return Err(MvccError::EmptyKey);
    }
    if req.ignore_value && !req.value.is_empty() {
        return Err(MvccError::ValueProvided);
    }
    if req.ignore_lease && req.lease != 0 {
        return Err(MvccError::LeaseProvided);
    }
    Ok(())
}

/// etcd's `isTxnReadonly`: only range ops in both branches (a nested txn
/// counts as a write).
pub(crate) fn is_read_only(req: &TxnRequest) -> bool {
    req.success
        .iter()
        .chain(&req.failure)
        .all(|op| matches!(op, RequestOp::Range(_)))
}

/// API-layer validation: etcd's `checkTxnRequest` then `checkIntervals` on
/// each branch.
pub(crate) fn check_txn(req: &TxnRequest, max_ops: usize) -> Result<(), MvccError> {
    check_txn_request(req, max_ops)?;
    check_intervals(&req.success)?;
    check_intervals(&req.failure)?;
    Ok(())
}

fn check_txn_request(req: &TxnRequest, max_ops: usize) -> Result<(), MvccError> {
    let opc = req
        .compare
        .len()
        .max(req.success.len())
        .max(req.failure.len());
    if opc > max_ops {
        return Err(MvccError::TooManyOps);
    }
    if req.compare.iter().any(|c| c.key.is_empty()) {
        return Err(MvccError::EmptyKey);
    }
    for op in req.success.iter().chain(&req.failure) {
        match op {
            RequestOp::Range(r) if r.key.is_empty() => return Err(MvccError::EmptyKey),
            RequestOp::DeleteRange(d) if d.key.is_empty() => return Err(MvccError::EmptyKey),
            RequestOp::Put(p) => check_put(p)?,
            // A nested txn gets what this level left of the budget.
            RequestOp::Txn(t) => check_txn_request(t, max_ops - opc)?,
            _ => {}
        }
    }
    Ok(())
}

/// A deleted interval as etcd's `checkIntervals` builds it.
enum Deleted<'a> {
    Key(&'a [u8]),
    /// `[begin, end)` with `end` taken literally: etcd does not translate
    /// the from-key end `\0` here, so such a delete is an empty interval
    /// that overlaps nothing.
    Span(&'a [u8], &'a [u8]),
}

impl Deleted<'_> {
    fn covers(&self, key: &[u8]) -> bool {
        match self {
            Deleted::Key(k) => *k == key,
            Deleted::Span(begin, end) => *begin <= key && key < *end,
        }
    }
}

type Writes<'a> = (BTreeSet<&'a [u8]>, Vec<Deleted<'a>>);

/// etcd's `checkIntervals`: a key may not be put twice, nor put and deleted,
/// along one path through the txn. Then/else branches of a nested txn may
/// put the same key, since only one runs. Mirrors etcd's checks exactly,
/// including which pairs it does not compare (a nested txn's deletes are
/// checked only against puts seen after it).
fn check_intervals(ops: &[RequestOp]) -> Result<Writes<'_>, MvccError> {
    let mut dels: Vec<Deleted<'_>> = ops
        .iter()
        .filter_map(|op| match op {
            RequestOp::DeleteRange(d) if d.range_end.is_empty() => Some(Deleted::Key(&d.key)),
            RequestOp::DeleteRange(d) => Some(Deleted::Span(&d.key, &d.range_end)),
            _ => None,
        })
        .collect();
    let covered = |dels: &[Deleted<'_>], key: &[u8]| dels.iter().any(|d| d.covers(key));

    let mut puts: BTreeSet<&[u8]> = BTreeSet::new();
    for op in ops {
        let RequestOp::Txn(t) = op else {
            continue;
        };
        let (puts_then, dels_then) = check_intervals(&t.success)?;
        let (puts_else, dels_else) = check_intervals(&t.failure)?;
        for k in &puts_then {
            if puts.contains(k) || covered(&dels, k) {
                return Err(MvccError::DuplicateKey);
            }
            puts.insert(k);
        }
        for k in &puts_else {
            if puts.contains(k) && !puts_then.contains(k) {
                return Err(MvccError::DuplicateKey);
            }
            if covered(&dels, k) {
                return Err(MvccError::DuplicateKey);
            }
            puts.insert(k);
        }
        dels.extend(dels_then);
        dels.extend(dels_else);
    }
    for op in ops {
        let RequestOp::Put(p) = op else {
            continue;
        };
        let k = p.key.as_slice();
        if puts.contains(k) || covered(&dels, k) {
            return Err(MvccError::DuplicateKey);
        }
        puts.insert(k);
    }
    Ok((puts, dels))
}

/// The branch every (nested) txn takes, decided before any write.
#[derive(Debug)]
pub(crate) struct Path {
    succeeded: bool,
    /// One per nested txn op of the taken branch, in op order.
    nested: Vec<Path>,
}

impl Path {
    fn ops<'a>(&self, req: &'a TxnRequest) -> &'a [RequestOp] {
        if self.succeeded {
            &req.success
        } else {
            &req.failure
        }
    }
}

/// Apply-time checks before any write; returns the path to execute.
pub(crate) fn prepare(
    store: &Store,
    req: &TxnRequest,
    lease_exists: &dyn Fn(i64) -> bool,
) -> Result<Path, MvccError> {
    let path = compare_path(store, req);
    // etcd runs the put checks only on txns that are not read-only; a
    // read-only txn has no puts, so running them always is equivalent.
    check_path(req, &path, &mut |op| match op {
        RequestOp::Put(p) => {
            if (p.ignore_value || p.ignore_lease) && store.latest(&p.key).is_none() {
                return Err(MvccError::KeyNotFound);
            }
            if p.lease != 0 && !lease_exists(p.lease) {
                return Err(MvccError::LeaseNotFound);
            }
            Ok(())
        }
        _ => Ok(()),
    })?;
    check_path(req, &path, &mut |op| match op {
        RequestOp::Range(r) => check_range_revision(store, r),
        _ => Ok(()),
    })?;
    Ok(path)
}

/// etcd's `checkRequestRange`, against the state before the txn. Unlike a
/// plain range, a negative revision counts as below the first revision
/// (-1 before any compaction), as in etcd.
fn check_range_revision(store: &Store, r: &RangeRequest) -> Result<(), MvccError> {
    if r.revision == 0 {
        Ok(())
    } else if r.revision > store.current {
        Err(MvccError::FutureRev)
    } else if r.revision < store.compacted {
        Err(MvccError::Compacted)
    } else {
        Ok(())
    }
}

/// etcd's `checkRequests`: `check` every non-txn op along the path.
fn check_path(
    req: &TxnRequest,
    path: &Path,
    check: &mut dyn FnMut(&RequestOp) -> Result<(), MvccError>,
) -> Result<(), MvccError> {
    let mut nested = path.nested.iter();
    for op in path.ops(req) {
        match op {
            RequestOp::Txn(t) => {
                if let Some(p) = nested.next() {
                    check_path(t, p, check)?;
                }
            }
            other => check(other)?,
        }
    }
    Ok(())
}

fn compare_path(store: &Store, req: &TxnRequest) -> Path {
    let succeeded = req.compare.iter().all(|c| evaluate(store, c));
    let ops = if succeeded {
        &req.success
    } else {
        &req.failure
    };
    let nested = ops
        .iter()
        .filter_map(|op| match op {
            RequestOp::Txn(t) => Some(compare_path(store, t)),
            _ => None,
        })
        .collect();
    Path { succeeded, nested }
}

/// etcd's `applyCompare`: every key in the range must satisfy the compare.
/// Over no keys, a value compare fails (there is no value to compare) and
/// the others compare against zero (version, revisions, lease all 0).
pub(crate) fn evaluate(store: &Store, cmp: &Compare) -> bool {
    let rev = store.current;
    let mut any = false;
    for index in store.scan(&cmp.key, &cmp.range_end) {
        let Some(change) = index.at(rev) else {
            continue;
        };
        any = true;
        if !compare_kv(cmp, &change.to_kv()) {
            return false;
        }
    }
    if any {
        return true;
    }
    match cmp.target {
        CompareTarget::Value(_) => false,
        _ => compare_kv(cmp, &KeyValue::default()),
    }
}

fn compare_kv(cmp: &Compare, kv: &KeyValue) -> bool {
    let ord = match &cmp.target {
        CompareTarget::Version(v) => kv.version.cmp(v),
        CompareTarget::Create(v) => kv.create_revision.cmp(v),
        CompareTarget::Mod(v) => kv.mod_revision.cmp(v),
        CompareTarget::Lease(v) => kv.lease.cmp(v),
        CompareTarget::Value(v) => kv.value.as_slice().cmp(v.as_slice()),
    };
    match cmp.result {
        CompareResult::Equal => ord.is_eq(),
        CompareResult::NotEqual => ord.is_ne(),
        CompareResult::Greater => ord.is_gt(),
        CompareResult::Less => ord.is_lt(),
    }
}

/// Executes the taken branch. Nested txn responses carry a zero header
/// revision, as etcd's do; the caller sets the outer one.
pub(crate) fn apply(
    store: &mut Store,
    pending: &mut PendingRevision,
    req: &TxnRequest,
    path: &Path,
) -> Result<TxnResponse, MvccError> {
    let mut nested = path.nested.iter();
    let ops = path.ops(req);
    let mut responses = Vec::with_capacity(ops.len());
    for op in ops {
        let resp = match op {
            RequestOp::Range(r) => ResponseOp::Range(store.range_at(r, pending.read_rev())?),
            RequestOp::Put(p) => ResponseOp::Put(store.apply_put(pending, p)?),
            RequestOp::DeleteRange(d) => ResponseOp::DeleteRange(store.apply_delete(pending, d)),
            RequestOp::Txn(t) => {
                let Some(p) = nested.next() else {
                    return Err(MvccError::Corrupt("txn path out of step".into()));
                };
                ResponseOp::Txn(apply(store, pending, t, p)?)
            }
        };
        responses.push(resp);
    }
    Ok(TxnResponse {
        header: Default::default(),
        succeeded: path.succeeded,
        responses,
    })
}
