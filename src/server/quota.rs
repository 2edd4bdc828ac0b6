//! The space quota, checked by the member a write arrives at, before it is
//! proposed (etcd's `quotaKVServer` / `backendQuota`).
//!
//! `--quota-backend-bytes` is a local flag, so it must never decide what a
//! member applies: members with different flags (or a member that crosses
//! its quota a moment before another) would then apply the same log
//! differently. Instead, a write that would take this member's state past
//! its quota is refused here with `NOSPACE`, and the member proposes an
//! Alarm entry raising NOSPACE under its own ID. That entry is applied by
//! every member, and apply refuses space-taking writes only while the
//! *replicated* alarm set holds NOSPACE (etcd's capped applier), so every
//! member refuses the same entries. Disarming is an Alarm entry too.
//!
//! Invariant: nothing here changes state; [`cost`] is a pure function of
//! the request, so apply may use `cost > 0` to pick what an alarm refuses.

use qed_wire::kv::{RequestOp, TxnRequest};
use qed_wire::Request;

/// etcd's `kvOverhead`: bytes a put costs beyond its key and value.
const KV_OVERHEAD: u64 = 256;
/// etcd's `leaseOverhead`: bytes a lease grant costs.
const LEASE_OVERHEAD: u64 = 64;

/// Bytes a write may add (etcd's `backendQuota.Cost`); 0 for requests that
/// add nothing (deletes, compactions, alarms), which a NOSPACE alarm lets
/// through so operators can free room.
pub fn cost(req: &Request) -> u64 {
    match req {
        Request::Put(p) => KV_OVERHEAD + (p.key.len() + p.value.len()) as u64,
        Request::Txn(t) => txn_cost(t),
        Request::LeaseGrant(_) => LEASE_OVERHEAD,
        _ => 0,
    }
}

/// The costlier branch of a txn (only one runs), nested txns included.
fn txn_cost(t: &TxnRequest) -> u64 {
    let branch = |ops: &[RequestOp]| -> u64 {
        ops.iter()
            .map(|op| match op {
                RequestOp::Put(p) => KV_OVERHEAD + (p.key.len() + p.value.len()) as u64,
                RequestOp::Txn(inner) => txn_cost(inner),
                _ => 0,
            })
            .sum()
    };
    branch(&t.success).max(branch(&t.failure))
}

/// This member's `--quota-backend-bytes`.
#[derive(Debug, Clone, Copy)]
pub struct Quota {
    pub bytes: u64,
}

impl Quota {
    /// Whether `req` fits when the state takes `used` bytes (etcd's
    /// `Available`: a request that costs nothing always fits).
    pub fn available(&self, used: u64, req: &Request) -> bool {
        let cost = cost(req);
        cost == 0 || used.saturating_add(cost) < self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use qed_wire::kv::{DeleteRangeRequest, PutRequest};

    fn put(len: usize) -> PutRequest {
        PutRequest {
            key: b"k".to_vec(),
            value: vec![0; len],
            ..Default::default()
        }
    }

    #[test]
    fn costs_are_etcds() {
        assert_eq!(cost(&Request::Put(put(10))), 256 + 11);
        let txn = TxnRequest {
            success: vec![RequestOp::Put(put(10)), RequestOp::Put(put(10))],
            failure: vec![RequestOp::Put(put(100))],
            ..Default::default()
        };
        assert_eq!(cost(&Request::Txn(txn)), 2 * (256 + 11));
        let deletes = TxnRequest {
            success: vec![RequestOp::DeleteRange(DeleteRangeRequest::default())],
            ..Default::default()
        };
        assert_eq!(cost(&Request::Txn(deletes)), 0);
        assert_eq!(cost(&Request::LeaseGrant(Default::default())), 64);
        assert_eq!(cost(&Request::DeleteRange(Default::default())), 0);

        let quota = Quota { bytes: 1000 };
        assert!(quota.available(0, &Request::Put(put(10))));
        assert!(!quota.available(1000 - 267, &Request::Put(put(10))));
        assert!(quota.available(u64::MAX, &Request::DeleteRange(Default::default())));
    }
}
