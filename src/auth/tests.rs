//! The auth store against etcd's behaviour (tables) and against a naive
//! reference model (random grants and revokes, every check compared).

use super::request::check_request;
use super::store::{AuthInfo, AuthStore};
use super::{Access, AuthError};
use qed_wire::auth::{Permission, PermissionType};
use qed_wire::kv::{PutRequest, RangeRequest};
use qed_wire::Request;

fn perm(t: PermissionType, key: &[u8], end: &[u8]) -> Permission {
    Permission {
        perm_type: t,
        key: key.to_vec(),
        range_end: end.to_vec(),
    }
}

fn with_root() -> AuthStore {
    let mut s = AuthStore::new();
    s.user_add("root", Some("h".into())).unwrap();
    s.user_grant_role("root", "root").unwrap();
    s
}

fn info(s: &AuthStore, user: &str) -> AuthInfo {
    AuthInfo {
        user: user.into(),
        revision: s.revision(),
    }
}

#[test]
fn enabling_needs_root_with_the_root_role() {
    let mut s = AuthStore::new();
    assert_eq!(s.revision(), 1);
    assert_eq!(s.enable(), Err(AuthError::RootUserNotExist));
    s.user_add("root", None).unwrap();
    assert_eq!(s.enable(), Err(AuthError::RootRoleNotExist));
    s.user_grant_role("root", "root").unwrap();
    let rev = s.revision();
    s.enable().unwrap();
    assert_eq!(s.revision(), rev, "enabling bumps nothing");
    s.enable().unwrap();
    assert_eq!(s.user_delete("root"), Err(AuthError::InvalidAuthMgmt));
    assert_eq!(
        s.user_revoke_role("root", "root"),
        Err(AuthError::InvalidAuthMgmt)
    );
    assert_eq!(s.role_delete("root"), Err(AuthError::InvalidAuthMgmt));
    assert!(s.disable());
    assert_eq!(s.revision(), rev + 1);
    assert!(!s.disable());
}

#[test]
fn management_errors_are_etcds() {
    let mut s = with_root();
    assert_eq!(s.user_add("", None), Err(AuthError::UserEmpty));
    assert_eq!(s.user_add("root", None), Err(AuthError::UserAlreadyExist));
    assert_eq!(s.role_add(""), Err(AuthError::RoleEmpty));
    s.role_add("r").unwrap();
    assert_eq!(s.role_add("r"), Err(AuthError::RoleAlreadyExist));
    assert_eq!(
        s.user_grant_role("nobody", "r"),
        Err(AuthError::UserNotFound)
    );
    assert_eq!(
        s.user_grant_role("root", "nope"),
        Err(AuthError::RoleNotFound)
    );
    assert_eq!(
        s.user_revoke_role("root", "r"),
        Err(AuthError::RoleNotGranted)
    );
    assert_eq!(s.user_delete("nobody"), Err(AuthError::UserNotFound));
    assert_eq!(s.role_delete("nope"), Err(AuthError::RoleNotFound));
    assert_eq!(
        s.role_revoke_permission("r", b"k", b""),
        Err(AuthError::PermissionNotGranted)
    );
    assert_eq!(
        s.role_grant_permission("nope", &perm(PermissionType::Read, b"k", b"")),
        Err(AuthError::RoleNotFound)
    );
    assert_eq!(
        s.user_change_password("nobody", "h".into()),
        Err(AuthError::UserNotFound)
    );
    // Granting a role twice is a success that changes nothing.
    s.user_add("u", None).unwrap();
    s.user_grant_role("u", "r").unwrap();
    let rev = s.revision();
    s.user_grant_role("u", "r").unwrap();
    assert_eq!(s.revision(), rev);
    // Deleting a role takes it from its users.
    s.role_delete("r").unwrap();
    assert!(s.user_get("u").unwrap().roles.is_empty());
}

#[test]
fn permissions_stay_sorted_and_a_grant_updates_in_place() {
    let mut s = with_root();
    s.role_add("r").unwrap();
    for (k, e) in [(b"m".as_ref(), b"".as_ref()), (b"a", b"b"), (b"z", b"\0")] {
        s.role_grant_permission("r", &perm(PermissionType::Read, k, e))
            .unwrap();
    }
    s.role_grant_permission("r", &perm(PermissionType::Write, b"a", b"b"))
        .unwrap();
    let keys: Vec<(&[u8], PermissionType)> = s
        .role_get("r")
        .unwrap()
        .perms
        .iter()
        .map(|p| (p.key.as_slice(), p.perm_type))
        .collect();
    assert_eq!(
        keys,
        vec![
            (b"a".as_ref(), PermissionType::Write),
            (b"m", PermissionType::Read),
            (b"z", PermissionType::Read)
        ]
    );
}

#[test]
fn checks_follow_etcd() {
    let mut s = with_root();
    s.user_add("alice", Some("h".into())).unwrap();
    s.role_add("reader").unwrap();
    s.role_grant_permission("reader", &perm(PermissionType::Read, b"foo", b""))
        .unwrap();
    s.user_grant_role("alice", "reader").unwrap();
    // Off: everything is allowed, credentials or not.
    assert_eq!(
        s.check(&AuthInfo::default(), Access::Write, b"x", b""),
        Ok(())
    );
    s.enable().unwrap();
    let alice = info(&s, "alice");
    let root = info(&s, "root");
    assert_eq!(
        s.check(&AuthInfo::default(), Access::Read, b"foo", b""),
        Err(AuthError::UserEmpty)
    );
    assert_eq!(s.check(&alice, Access::Read, b"foo", b""), Ok(()));
    assert_eq!(
        s.check(&alice, Access::Write, b"foo", b""),
        Err(AuthError::PermissionDenied)
    );
    assert_eq!(s.check(&root, Access::Write, b"anything", b"\0"), Ok(()));
    let ghost = AuthInfo {
        user: "ghost".into(),
        revision: s.revision(),
    };
    assert_eq!(
        s.check(&ghost, Access::Read, b"foo", b""),
        Err(AuthError::PermissionDenied)
    );
    assert_eq!(s.check_admin(&ghost), Err(AuthError::UserNotFound));
    assert_eq!(s.check_admin(&alice), Err(AuthError::PermissionDenied));
    assert_eq!(
        s.check_admin(&AuthInfo::default()),
        Err(AuthError::UserEmpty)
    );
    assert_eq!(s.check_admin(&root), Ok(()));
    // A change after the caller was checked makes its revision old.
    s.role_add("other").unwrap();
    assert_eq!(
        s.check(&alice, Access::Read, b"foo", b""),
        Err(AuthError::AuthOldRevision)
    );
}

#[test]
fn requests_need_what_etcd_makes_them_need() {
    let mut s = with_root();
    s.user_add("alice", Some("h".into())).unwrap();
    s.role_add("rw").unwrap();
    s.role_grant_permission("rw", &perm(PermissionType::ReadWrite, b"a", b"b"))
        .unwrap();
    s.role_grant_permission("rw", &perm(PermissionType::Write, b"w", b""))
        .unwrap();
    s.user_grant_role("alice", "rw").unwrap();
    s.enable().unwrap();
    let alice = info(&s, "alice");
    let no_leases = |_: i64| Vec::new();
    let put = |key: &[u8], prev_kv: bool, lease: i64| {
        Request::Put(PutRequest {
            key: key.to_vec(),
            value: b"v".to_vec(),
            prev_kv,
            lease,
            ..Default::default()
        })
    };
    let check = |req: &Request, leases: &dyn Fn(i64) -> Vec<Vec<u8>>| {
        check_request(&s, &alice, req, leases)
    };
    assert_eq!(check(&put(b"a1", true, 0), &no_leases), Ok(()));
    assert_eq!(check(&put(b"w", false, 0), &no_leases), Ok(()));
    // prev_kv needs read access too.
    assert_eq!(
        check(&put(b"w", true, 0), &no_leases),
        Err(AuthError::PermissionDenied)
    );
    // A lease's attached keys need write access.
    let leases = |_: i64| vec![b"zzz".to_vec()];
    assert_eq!(
        check(&put(b"a1", false, 5), &leases),
        Err(AuthError::PermissionDenied)
    );
    let range = |key: &[u8], end: &[u8]| {
        Request::Range(RangeRequest {
            key: key.to_vec(),
            range_end: end.to_vec(),
            ..Default::default()
        })
    };
    assert_eq!(check(&range(b"a", b"b"), &no_leases), Ok(()));
    assert_eq!(
        check(&range(b"a", b"c"), &no_leases),
        Err(AuthError::PermissionDenied)
    );
    assert_eq!(
        check(&Request::UserList, &no_leases),
        Err(AuthError::PermissionDenied)
    );
    assert_eq!(
        check(
            &Request::UserGet {
                name: "alice".into()
            },
            &no_leases
        ),
        Ok(())
    );
    assert_eq!(
        check(&Request::RoleGet { role: "rw".into() }, &no_leases),
        Ok(())
    );
    assert_eq!(
        check(
            &Request::RoleGet {
                role: "root".into()
            },
            &no_leases
        ),
        Err(AuthError::PermissionDenied)
    );
    assert_eq!(check(&Request::AuthStatus, &no_leases), Ok(()));
    assert_eq!(
        check(&Request::Defragment(Default::default()), &no_leases),
        Err(AuthError::PermissionDenied)
    );
}

#[test]
fn snapshots_keep_everything() {
    let mut s = with_root();
    s.role_add("r").unwrap();
    s.role_grant_permission("r", &perm(PermissionType::Read, b"k", b"\0"))
        .unwrap();
    s.user_add("u", None).unwrap();
    s.user_grant_role("u", "r").unwrap();
    s.enable().unwrap();
    let back = AuthStore::from_snapshot(s.snapshot());
    assert_eq!(back.snapshot(), s.snapshot());
    let u = info(&back, "u");
    assert_eq!(back.check(&u, Access::Read, b"kz", b""), Ok(()));
    assert_eq!(
        back.check(&u, Access::Read, b"a", b""),
        Err(AuthError::PermissionDenied)
    );
}

use crate::test_rng::Rng;

/// The naive reference: a key is readable when some permission of some role
/// of the user names it; a range when every key in it (over a small
/// alphabet, so every key can be enumerated) is readable.
fn model_permits(
    perms: &[Permission],
    access: Access,
    key: &[u8],
    end: &[u8],
    universe: &[Vec<u8>],
) -> bool {
    let grants = |k: &[u8]| {
        perms.iter().any(|p| {
            let kind_ok = match access {
                Access::Read => p.perm_type != PermissionType::Write,
                Access::Write => p.perm_type != PermissionType::Read,
            };
            let contains = match p.range_end.as_slice() {
                [] => k == p.key.as_slice(),
                [0] => k >= p.key.as_slice(),
                e => k >= p.key.as_slice() && k < e,
            };
            kind_ok && contains
        })
    };
    if end.is_empty() {
        return grants(key);
    }
    let in_range = |k: &[u8]| match end {
        [0] => k >= key,
        e => k >= key && k < e,
    };
    let keys: Vec<&Vec<u8>> = universe.iter().filter(|k| in_range(k)).collect();
    // An empty range is covered by nothing in etcd's interval tree.
    !keys.is_empty() && keys.iter().all(|k| grants(k))
}

#[test]
fn random_grants_and_revokes_answer_as_the_model_does() {
    // Keys over {a, b} up to length 3: ranges between them are finite and
    // every key a range can hold is in the universe... except keys beyond
    // the alphabet, so ranges are drawn only from ends inside it and the
    // model's universe includes each key plus "\0" successors.
    let alphabet = [b'a', b'b'];
    let mut keys: Vec<Vec<u8>> = vec![vec![]];
    for len in 1..=3 {
        let mut next = Vec::new();
        for k in keys.iter().filter(|k| k.len() == len - 1) {
            for c in alphabet {
                let mut n = k.clone();
                n.push(c);
                next.push(n);
            }
        }
        keys.extend(next);
    }
    keys.retain(|k| !k.is_empty());
    keys.sort();
    for seed in 1..=40u64 {
        let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
        let mut s = with_root();
        s.user_add("u", None).unwrap();
        let roles = ["r0", "r1", "r2"];
        for r in roles {
            s.role_add(r).unwrap();
        }
        s.enable().unwrap();
        let pick = |rng: &mut Rng| keys[rng.below(keys.len() as u64) as usize].clone();
        for step in 0..200 {
            let role = roles[rng.below(3) as usize];
            match rng.below(5) {
                0 | 1 => {
                    let key = pick(&mut rng);
                    let end = match rng.below(3) {
                        0 => Vec::new(),
                        1 => vec![0],
                        _ => {
                            let e = pick(&mut rng);
                            if e > key {
                                e
                            } else {
                                Vec::new()
                            }
                        }
                    };
                    let t = [
                        PermissionType::Read,
                        PermissionType::Write,
                        PermissionType::ReadWrite,
                    ][rng.below(3) as usize];
                    s.role_grant_permission(role, &perm(t, &key, &end)).unwrap();
                }
                2 => {
                    let perms = s.role_get(role).unwrap().perms.clone();
                    if !perms.is_empty() {
                        let p = &perms[rng.below(perms.len() as u64) as usize];
                        s.role_revoke_permission(role, &p.key.clone(), &p.range_end.clone())
                            .unwrap();
                    }
                }
                3 => {
                    let _ = s.user_grant_role("u", role);
                }
                _ => {
                    let _ = s.user_revoke_role("u", role);
                }
            }
            let user = s.user_get("u").unwrap().clone();
            let perms: Vec<Permission> = user
                .roles
                .iter()
                .flat_map(|r| s.role_get(r).unwrap().perms.clone())
                .collect();
            let who = info(&s, "u");
            for _ in 0..20 {
                let key = pick(&mut rng);
                let end = match rng.below(3) {
                    0 => Vec::new(),
                    1 => vec![0],
                    _ => pick(&mut rng),
                };
                if !end.is_empty() && end != [0] && end <= key {
                    continue;
                }
                // The model's universe holds only keys of the alphabet, so a
                // range check is compared only where no other key can fall in
                // the range unnoticed: the store sees intervals, the model
                // sees enumerated keys; both agree on coverage when every
                // permission boundary is itself a universe key.
                for access in [Access::Read, Access::Write] {
                    let got = s.check(&who, access, &key, &end).is_ok();
                    let want = model_permits(&perms, access, &key, &end, &keys);
                    if end.is_empty() {
                        assert_eq!(got, want, "seed {seed} step {step}: {access:?} {key:?}");
                    } else if got {
                        // Interval coverage implies every key is granted.
                        assert!(want, "seed {seed} step {step}: {access:?} {key:?}..{end:?}");
                    }
                }
            }
        }
    }
}
