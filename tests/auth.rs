//! Auth end to end on real processes: a 3-member cluster where a revoke on
//! the leader holds on every member and auth survives snapshots, a member
//! catching up by snapshot and restarts; tokens that die with their user
//! or password; bad input that changes nothing; JWT tokens; no plaintext
//! password on disk.

mod common;

use common::{TestCluster, TestNode};
use qed::client::{Client, ClientError, ConnectOptions};
use qed::wire::auth::{
    Permission, PermissionType, RoleGrantPermissionRequest, UserAddRequest,
    UserChangePasswordRequest, UserRoleRequest,
};
use qed::wire::kv::{PutRequest, RangeRequest};
use qed::wire::watch::{WatchCreateRequest, WatchRequest, WatchResponse};
use qed::wire::{Call, Error, Request, Response};
use std::path::Path;
use std::time::{Duration, Instant};

/// bcrypt's cheapest cost keeps the debug-build tests quick; the hashing
/// and checks are the same.
const FAST_BCRYPT: &[&str] = &["--bcrypt-cost", "4"];

async fn ok(c: &Client, req: Request) -> Response {
    let what = format!("{req:?}");
    c.call(req)
        .await
        .unwrap_or_else(|e| panic!("{}: {e}", &what[..what.len().min(80)]))
}

async fn err(c: &Client, req: Request) -> Error {
    match c.call(req).await {
        Err(ClientError::Server(e)) => e,
        other => panic!("expected an error, got {other:?}"),
    }
}

fn put(key: &str) -> Request {
    Request::Put(PutRequest {
        key: key.into(),
        value: b"v".to_vec(),
        ..Default::default()
    })
}

fn get(key: &str, serializable: bool) -> Request {
    Request::Range(RangeRequest {
        key: key.into(),
        serializable,
        ..Default::default()
    })
}

fn user_add(name: &str, password: &str) -> Request {
    Request::UserAdd(UserAddRequest {
        name: name.into(),
        password: password.into(),
        no_password: false,
    })
}

fn grant_role(user: &str, role: &str) -> Request {
    Request::UserGrantRole(UserRoleRequest {
        user: user.into(),
        role: role.into(),
    })
}

fn prefix_perm(role: &str, prefix: &str, t: PermissionType) -> Request {
    let mut end = prefix.as_bytes().to_vec();
    if let Some(last) = end.last_mut() {
        *last += 1;
    }
    Request::RoleGrantPermission(RoleGrantPermissionRequest {
        role: role.into(),
        perm: Permission {
            perm_type: t,
            key: prefix.into(),
            range_end: end,
        },
    })
}

/// root (root role), alice (role `r`: read-write on `a/`), auth on.
async fn set_up(c: &Client) {
    ok(c, user_add("root", "rootpw")).await;
    ok(c, grant_role("root", "root")).await;
    ok(c, user_add("alice", "alicepw")).await;
    ok(c, Request::RoleAdd { name: "r".into() }).await;
    ok(c, prefix_perm("r", "a/", PermissionType::ReadWrite)).await;
    ok(c, grant_role("alice", "r")).await;
    ok(c, Request::AuthEnable).await;
}

async fn connect_as(urls: &[String], ca: &Path, user: &str, password: &str) -> Client {
    let options = ConnectOptions {
        ca_file: Some(ca.to_path_buf()),
        request_timeout: Duration::from_secs(5),
        dial_timeout: Duration::from_secs(1),
        user: Some(user.into()),
        password: Some(password.into()),
        ..Default::default()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match Client::connect(urls, options.clone()).await {
            Ok(c) => return c,
            Err(e) => {
                assert!(Instant::now() < deadline, "cannot connect as {user}: {e}");
                qed::runtime::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn auth_revision(c: &Client) -> u64 {
    match ok(c, Request::AuthStatus).await {
        Response::AuthStatus { auth_revision, .. } => auth_revision,
        other => panic!("AuthStatus answered {other:?}"),
    }
}

/// Polls `f` until it holds, for at most 10 s.
async fn eventually<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f().await {
        assert!(Instant::now() < deadline, "never: {what}");
        qed::runtime::sleep(Duration::from_millis(20)).await;
    }
}

#[test]
fn a_revoke_holds_on_every_member_and_auth_survives_snapshots_and_restarts() {
    qed::runtime::block_on(async {
        let mut extra = vec![
            "--snapshot-count",
            "20",
            "--experimental-snapshot-catchup-entries",
            "5",
        ];
        extra.extend_from_slice(FAST_BCRYPT);
        let mut cluster = TestCluster::start(3, &extra);
        let anon: Vec<Option<Client>> = vec![
            Some(cluster.client(0).await),
            Some(cluster.client(1).await),
            Some(cluster.client(2).await),
        ];
        let leader = cluster
            .wait_for_leader(&anon, Duration::from_secs(30))
            .await;
        let c0 = anon[0].as_ref().unwrap();
        set_up(c0).await;
        assert_eq!(err(c0, put("a/x")).await, Error::UserEmpty);

        let ca = cluster.ca_bundle();
        let urls: Vec<String> = cluster.client_urls();
        let url = |i: usize| vec![urls[i].clone()];
        let mut alice = Vec::new();
        for i in 0..3 {
            alice.push(connect_as(&url(i), &ca, "alice", "alicepw").await);
        }
        let root = connect_as(&url(leader), &ca, "root", "rootpw").await;
        ok(&alice[0], put("a/1")).await;
        assert_eq!(err(&alice[0], put("b/1")).await, Error::PermissionDenied);
        // A simple token issued through one member works on the others.
        let token = alice[0].token();
        for a in &alice {
            assert!(a
                .call_with_token(token.clone(), get("a/1", false))
                .await
                .is_ok());
        }

        // Revoke on the leader: every member refuses at once (linearizable),
        // and a follower's serializable read as soon as it applied it.
        let revoke = Request::RoleRevokePermission(qed::wire::auth::RoleRevokePermissionRequest {
            role: "r".into(),
            key: b"a/".to_vec(),
            range_end: b"a0".to_vec(),
        });
        ok(&root, revoke).await;
        for a in &alice {
            assert_eq!(err(a, get("a/1", false)).await, Error::PermissionDenied);
            assert_eq!(err(a, put("a/2")).await, Error::PermissionDenied);
        }
        for a in &alice {
            eventually("a follower's serializable read is refused", || async {
                matches!(
                    a.call(get("a/1", true)).await,
                    Err(ClientError::Server(Error::PermissionDenied))
                )
            })
            .await;
        }

        // Enough writes for several snapshots while a follower is down, so
        // it catches up by snapshot; auth must come with it.
        let down = (leader + 1) % 3;
        cluster.kill(down);
        ok(&root, prefix_perm("r", "c/", PermissionType::Read)).await;
        for i in 0..80 {
            ok(&root, put(&format!("k/{i}"))).await;
        }
        cluster.restart(down);
        let back = connect_as(&url(down), &ca, "alice", "alicepw").await;
        eventually("the restarted member caught up", || async {
            matches!(
                back.call(get("k/79", true)).await,
                Err(ClientError::Server(Error::PermissionDenied))
            ) && back.call(get("c/x", true)).await.is_ok()
        })
        .await;
        assert_eq!(err(&back, get("a/1", true)).await, Error::PermissionDenied);
        assert!(
            cluster.members[down]
                .log()
                .contains("installed the leader's snapshot"),
            "the restarted member caught up by snapshot"
        );

        // A full restart: users, roles, the enabled flag and the revision stay.
        let revision = auth_revision(&root).await;
        for i in 0..3 {
            cluster.kill(i);
        }
        for i in 0..3 {
            cluster.restart(i);
        }
        let all: Vec<String> = cluster.client_urls();
        let root = connect_as(&all, &ca, "root", "rootpw").await;
        eventually("the restarted cluster answers", || async {
            root.call(get("k/1", false)).await.is_ok()
        })
        .await;
        assert_eq!(auth_revision(&root).await, revision);
        match ok(&root, Request::UserList).await {
            Response::Names(n) => assert_eq!(n.names, vec!["alice", "root"]),
            other => panic!("{other:?}"),
        }
        let alice = connect_as(&all, &ca, "alice", "alicepw").await;
        assert_eq!(
            err(&alice, get("a/1", false)).await,
            Error::PermissionDenied
        );
        assert!(alice.call(get("c/1", false)).await.is_ok());
        let anon = cluster.client(0).await;
        assert_eq!(err(&anon, get("c/1", false)).await, Error::UserEmpty);
    });
}

#[test]
fn tokens_die_with_their_user_and_password_and_bad_input_changes_nothing() {
    qed::runtime::block_on(async {
        let node = TestNode::start(FAST_BCRYPT);
        let anon = node.client().await;
        set_up(&anon).await;
        let urls = vec![node.url.clone()];
        let root = connect_as(&urls, &node.ca_file(), "root", "rootpw").await;

        // Bad input: etcd's error, and the auth revision does not move.
        let before = auth_revision(&root).await;
        assert_eq!(err(&root, user_add("", "x")).await, Error::UserEmpty);
        assert_eq!(
            err(&root, Request::RoleAdd { name: "".into() }).await,
            Error::RoleEmpty
        );
        assert_eq!(
            err(&root, user_add("alice", "x")).await,
            Error::UserAlreadyExist
        );
        assert_eq!(
            err(&root, grant_role("alice", "nosuch")).await,
            Error::RoleNotFound
        );
        assert_eq!(
            err(&root, grant_role("nobody", "r")).await,
            Error::UserNotFound
        );
        assert_eq!(
            err(&root, prefix_perm("nosuch", "x/", PermissionType::Read)).await,
            Error::RoleNotFound
        );
        assert_eq!(
            err(
                &root,
                Request::UserDelete {
                    name: "root".into()
                }
            )
            .await,
            Error::InvalidAuthMgmt
        );
        assert_eq!(
            err(
                &root,
                Request::RoleDelete {
                    role: "root".into()
                }
            )
            .await,
            Error::InvalidAuthMgmt
        );
        assert_eq!(auth_revision(&root).await, before);
        // A 64 KiB name is a name, as in etcd.
        let long = "u".repeat(64 * 1024);
        ok(&root, user_add(&long, "pw")).await;
        assert!(matches!(
            ok(&root, Request::UserGet { name: long.clone() }).await,
            Response::UserGet(_)
        ));
        // A token that was never issued, or issued by another cluster.
        let other = TestNode::start(FAST_BCRYPT);
        let other_anon = other.client().await;
        set_up(&other_anon).await;
        let foreign = connect_as(
            std::slice::from_ref(&other.url),
            &other.ca_file(),
            "root",
            "rootpw",
        )
        .await;
        for bogus in [
            foreign.token(),
            Some("forged.1".to_string()),
            Some(String::new()),
        ] {
            let refused = root.call_with_token(bogus, get("a/1", false)).await;
            assert_eq!(refused, Err(ClientError::Server(Error::InvalidAuthToken)));
        }

        // Deleting a user kills its live token; so does a password change.
        let alice = connect_as(&urls, &node.ca_file(), "alice", "alicepw").await;
        let token = alice.token();
        ok(&alice, put("a/1")).await;
        ok(&root, user_add("bob", "bobpw")).await;
        ok(&root, grant_role("bob", "r")).await;
        let bob = connect_as(&urls, &node.ca_file(), "bob", "bobpw").await;
        let bob_token = bob.token();
        ok(
            &root,
            Request::UserDelete {
                name: "alice".into(),
            },
        )
        .await;
        let refused = alice.call_with_token(token, get("a/1", false)).await;
        assert_eq!(refused, Err(ClientError::Server(Error::InvalidAuthToken)));
        // ... and the client cannot get a new one.
        assert_eq!(err(&alice, get("a/1", false)).await, Error::AuthFailed);
        ok(
            &root,
            Request::UserChangePassword(UserChangePasswordRequest {
                name: "bob".into(),
                password: "newpw".into(),
            }),
        )
        .await;
        let refused = bob
            .call_with_token(bob_token.clone(), get("a/1", false))
            .await;
        assert_eq!(refused, Err(ClientError::Server(Error::InvalidAuthToken)));
        let bob = connect_as(&urls, &node.ca_file(), "bob", "newpw").await;

        // A watch is checked when created: removing the role refuses the
        // next one with etcd's cancel reason.
        let first = create_watch(&bob, "a/").await;
        assert!(first.created && !first.canceled, "{first:?}");
        ok(&root, Request::RoleDelete { role: "r".into() }).await;
        let second = create_watch(&bob, "a/").await;
        assert!(second.canceled, "{second:?}");
        assert_eq!(
            second.cancel_reason,
            "rpc error: code = PermissionDenied desc = etcdserver: permission denied"
        );

        // Only root may download the database.
        let mut sink = Vec::new();
        let refused = bob.snapshot(&mut sink, |_, _| {}).await;
        assert_eq!(
            refused,
            Err(ClientError::Server(Error::Unknown(
                "auth: permission denied".into()
            )))
        );
        assert!(root.snapshot(&mut sink, |_, _| {}).await.is_ok());

        // No password ever reaches the disk in plaintext.
        for pw in ["rootpw", "alicepw", "bobpw", "newpw"] {
            assert!(
                !dir_contains(&node.dir.0, pw.as_bytes()),
                "{pw} found on disk"
            );
        }
    });
}

async fn create_watch(c: &Client, prefix: &str) -> WatchResponse {
    let (mut send, mut recv) = c
        .open_stream(c.token(), Call::Watch)
        .await
        .expect("watch stream");
    let mut end = prefix.as_bytes().to_vec();
    if let Some(last) = end.last_mut() {
        *last += 1;
    }
    send.send(&WatchRequest::Create(WatchCreateRequest {
        key: prefix.into(),
        range_end: end,
        ..Default::default()
    }))
    .await
    .expect("send create");
    recv.recv::<WatchResponse>()
        .await
        .expect("watch response")
        .expect("a response before the stream ends")
}

fn dir_contains(dir: &Path, needle: &[u8]) -> bool {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return false;
    };
    entries.flatten().any(|e| {
        let path = e.path();
        if path.is_dir() {
            dir_contains(&path, needle)
        } else {
            std::fs::read(&path)
                .map(|bytes| bytes.windows(needle.len()).any(|w| w == needle))
                .unwrap_or(false)
        }
    })
}

#[test]
fn jwt_tokens_verify_expire_with_the_auth_revision_and_are_renewed_by_the_sdk() {
    qed::runtime::block_on(async {
        let dir = common::TempDir::new("jwt");
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = ring::signature::EcdsaKeyPair::generate_pkcs8(
            &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            &rng,
        )
        .expect("key");
        let key = dir.0.join("jwt.key");
        let pem = {
            use base64::Engine;
            let b64 = base64::engine::general_purpose::STANDARD.encode(pkcs8.as_ref());
            format!("-----BEGIN PRIVATE KEY-----\n{b64}\n-----END PRIVATE KEY-----\n")
        };
        std::fs::write(&key, pem).expect("write key");
        let option = format!("jwt,priv-key={},sign-method=ES256,ttl=10m", key.display());
        let mut flags = vec!["--auth-token", option.as_str()];
        flags.extend_from_slice(FAST_BCRYPT);
        let node = TestNode::start(&flags);
        let anon = node.client().await;
        set_up(&anon).await;
        let urls = vec![node.url.clone()];
        let alice = connect_as(&urls, &node.ca_file(), "alice", "alicepw").await;
        let token = alice.token().expect("a token");
        assert_eq!(token.matches('.').count(), 2, "a JWT: {token}");
        ok(&alice, put("a/1")).await;
        // A tampered signature is refused.
        let mut forged = token.clone();
        forged.pop();
        forged.push(if token.ends_with('A') { 'B' } else { 'A' });
        let refused = alice.call_with_token(Some(forged), get("a/1", false)).await;
        assert_eq!(refused, Err(ClientError::Server(Error::InvalidAuthToken)));
        // Any auth change makes the token old; the SDK authenticates again.
        let root = connect_as(&urls, &node.ca_file(), "root", "rootpw").await;
        ok(
            &root,
            Request::RoleAdd {
                name: "other".into(),
            },
        )
        .await;
        let stale = alice
            .call_with_token(Some(token.clone()), get("a/1", false))
            .await;
        assert_eq!(stale, Err(ClientError::Server(Error::AuthOldRevision)));
        ok(&alice, get("a/1", false)).await;
        assert_ne!(alice.token(), Some(token));
    });
}

#[test]
fn a_verified_client_certificate_names_the_user_when_no_token_is_sent() {
    qed::runtime::block_on(async {
        let mut flags = vec!["--client-cert-auth"];
        flags.extend_from_slice(FAST_BCRYPT);
        let node = TestNode::start(&flags);
        // The node's generated client certificate says CN=root.
        let certs = node.dir.0.join("data/certs");
        let options = ConnectOptions {
            ca_file: Some(node.ca_file()),
            cert_file: Some(certs.join("client.crt")),
            key_file: Some(certs.join("client.key")),
            request_timeout: Duration::from_secs(5),
            ..Default::default()
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        let by_cert = loop {
            match Client::connect(std::slice::from_ref(&node.url), options.clone()).await {
                Ok(c) if common::has_leader(&c).await => break c,
                _ => {
                    assert!(Instant::now() < deadline, "the node never answered");
                    qed::runtime::sleep(Duration::from_millis(50)).await;
                }
            }
        };
        set_up(&by_cert).await;
        // No token: the certificate's user (root) may do anything.
        ok(&by_cert, put("anything")).await;
        ok(&by_cert, Request::UserList).await;
        // A token wins over the certificate: alice's own permissions.
        let login = Request::Authenticate(qed::wire::auth::AuthenticateRequest {
            name: "alice".into(),
            password: "alicepw".into(),
        });
        let token = match ok(&by_cert, login).await {
            Response::Authenticate(r) => r.token,
            other => panic!("{other:?}"),
        };
        let as_alice = by_cert.call_with_token(Some(token), put("anything")).await;
        assert_eq!(as_alice, Err(ClientError::Server(Error::PermissionDenied)));
    });
}

#[test]
fn an_unused_simple_token_expires_and_the_sdk_logs_in_again() {
    qed::runtime::block_on(async {
        let mut flags = vec!["--auth-token-ttl", "1"];
        flags.extend_from_slice(FAST_BCRYPT);
        let node = TestNode::start(&flags);
        let anon = node.client().await;
        set_up(&anon).await;
        let alice = connect_as(
            std::slice::from_ref(&node.url),
            &node.ca_file(),
            "alice",
            "alicepw",
        )
        .await;
        let token = alice.token();
        // Unused for longer than the TTL, it is gone (renewal on use is
        // unit-tested in auth::tokens, where time is an argument).
        qed::runtime::sleep(Duration::from_millis(1500)).await;
        let expired = alice.call_with_token(token.clone(), get("a/1", true)).await;
        assert_eq!(expired, Err(ClientError::Server(Error::InvalidAuthToken)));
        ok(&alice, get("a/1", true)).await;
        assert_ne!(alice.token(), token);
    });
}
