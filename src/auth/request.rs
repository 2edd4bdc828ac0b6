//! Which permission each call needs, exactly where etcd 3.4 checks it
//! (`etcdserver/apply_auth.go`, `v3_server.go`, `api/v3rpc/maintenance.go`,
//! `checkMembershipOperationPermission`), with two deliberate differences
//! that only refuse more: ops of a nested txn are checked like top-level
//! ones (etcd 3.4 skips them), and TimeToLive needs read access to the
//! lease's keys (etcd 3.5's rule).
//!
//! The same function serves the member that receives a call (before it is
//! proposed or read) and apply (against the auth revision the proposal was
//! checked at), so both always agree on what a call needs.

use super::perms::Access;
use super::store::{AuthInfo, AuthStore};
use super::AuthError;
use qed_wire::kv::{RequestOp, TxnRequest};
use qed_wire::Request;

/// The keys attached to a lease (empty when it does not exist).
pub type LeaseKeys<'a> = &'a dyn Fn(i64) -> Vec<Vec<u8>>;

/// Whether `info` may make call `req`.
pub fn check_request(
    store: &AuthStore,
    info: &AuthInfo,
    req: &Request,
    lease_keys: LeaseKeys,
) -> Result<(), AuthError> {
    if !store.is_enabled() {
        return Ok(());
    }
    let read = |key: &[u8], end: &[u8]| store.check(info, Access::Read, key, end);
    let write = |key: &[u8], end: &[u8]| store.check(info, Access::Write, key, end);
    let lease_writes = |id: i64| -> Result<(), AuthError> {
        lease_keys(id).iter().try_for_each(|k| write(k, b""))
    };
    match req {
        Request::Range(r) => read(&r.key, &r.range_end),
        Request::Put(p) => {
            write(&p.key, b"")?;
            if p.lease != 0 {
                lease_writes(p.lease)?;
            }
            if p.prev_kv {
                read(&p.key, b"")?;
            }
            Ok(())
        }
        Request::DeleteRange(d) => {
            write(&d.key, &d.range_end)?;
            if d.prev_kv {
                read(&d.key, &d.range_end)?;
            }
            Ok(())
        }
        Request::Txn(t) => check_txn(store, info, t),
        Request::LeaseRevoke(r) => lease_writes(r.id),
        Request::LeaseTimeToLive(r) => lease_keys(r.id).iter().try_for_each(|k| read(k, b"")),
        Request::UserGet { name } => match store.check_admin(info) {
            Err(_) if *name == info.user => Ok(()),
            other => other,
        },
        Request::RoleGet { role } => match store.check_admin(info) {
            Err(_) if store.has_role(&info.user, role) => Ok(()),
            other => other,
        },
        req if needs_admin(req) => store.check_admin(info),
        _ => Ok(()),
    }
}

/// The calls only a user with the root role may make when auth is on.
pub fn needs_admin(req: &Request) -> bool {
    use Request::*;
    matches!(
        req,
        // Cluster (checkMembershipOperationPermission)
        MemberAdd(_) | MemberRemove(_) | MemberUpdate(_) | MemberPromote(_)
        // Maintenance (authMaintenanceServer)
        | Defragment(_) | Hash(_) | HashKv(_)
        // Auth management (needAdminPermission)
        | AuthEnable | AuthDisable | UserAdd(_) | UserDelete { .. } | UserChangePassword(_)
        | UserGrantRole(_) | UserRevokeRole(_) | RoleAdd { .. } | RoleGrantPermission(_)
        | RoleRevokePermission(_) | RoleDelete { .. } | UserList | RoleList
    )
}

/// etcd's `checkTxnAuth`: every compare needs read access, then every op of
/// the success branch and of the failure branch (whichever runs).
fn check_txn(store: &AuthStore, info: &AuthInfo, t: &TxnRequest) -> Result<(), AuthError> {
    for c in &t.compare {
        store.check(info, Access::Read, &c.key, &c.range_end)?;
    }
    for op in t.success.iter().chain(&t.failure) {
        match op {
            RequestOp::Range(r) => store.check(info, Access::Read, &r.key, &r.range_end)?,
            RequestOp::Put(p) => store.check(info, Access::Write, &p.key, b"")?,
            RequestOp::DeleteRange(d) => {
                if d.prev_kv {
                    store.check(info, Access::Read, &d.key, &d.range_end)?;
                }
                store.check(info, Access::Write, &d.key, &d.range_end)?;
            }
            RequestOp::Txn(inner) => check_txn(store, info, inner)?,
        }
    }
    Ok(())
}
