//! The NOSPACE alarm in a three-member cluster: the quota is a local flag,
//! but what members apply must not depend on it.
//!
//! - `members_with_different_quotas_apply_alike`: members started with
//!   quotas of 64, 128 and 256 KiB. Writes through the member with the
//!   largest quota fill the key space past the smaller quotas (the others
//!   must apply them anyway) until that member refuses with NOSPACE; the
//!   alarm list is the same on every member; the room is freed (delete,
//!   compact), the alarm disarmed through another member, and writes
//!   through the smallest-quota member fill it up again.
//! - `members_with_equal_quotas_apply_alike`: the same with one quota on
//!   every member, writes through every member in turn, and a disarm
//!   through a single member that must clear the alarm everywhere.
//!
//! After every write (and every disarm) the members must reach the same
//! revision with the same `HashKV` at it (polled with a deadline): a member
//! that refused an entry the others applied never does.

mod common;

use common::TestCluster;
use qed::client::{Client, ClientError};
use qed::wire::kv::DeleteRangeRequest;
use qed::wire::maintenance::{AlarmAction, AlarmMember, AlarmRequest, AlarmType, HashKvRequest};
use qed::wire::{Error, Request, Response};
use std::time::{Duration, Instant};

const KIB: u64 = 1024;
/// Value size of each put; a few dozen fill the smallest quota.
const VALUE: usize = 2000;
/// Puts tried before giving up on ever seeing NOSPACE.
const MAX_PUTS: usize = 400;

async fn clients_of(cluster: &TestCluster) -> Vec<Client> {
    let mut out = Vec::new();
    for i in 0..cluster.members.len() {
        out.push(cluster.client(i).await);
    }
    out
}

/// Waits until every member is at the same revision and checks that their
/// `HashKV` at it is equal; returns that revision.
async fn assert_converged(clients: &[Client], after: &str) -> i64 {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut revisions = Vec::new();
        for c in clients {
            match c.call(Request::Status(Default::default())).await {
                Ok(Response::Status(s)) => revisions.push(s.header.revision),
                other => revisions.push(-1 - i64::from(other.is_err())),
            }
        }
        let rev = revisions[0];
        if rev > 0 && revisions.iter().all(|r| *r == rev) {
            // The latest revision (a compaction may have made `rev` itself
            // unhashable), checked to be `rev` on every member.
            let mut hashes = Vec::new();
            for c in clients {
                let req = Request::HashKv(HashKvRequest { revision: 0 });
                match c.call(req).await {
                    Ok(Response::HashKv(h)) if h.header.revision == rev => hashes.push(h.hash),
                    Ok(Response::HashKv(_)) => break,
                    other => panic!("HashKV after {after}: {other:?}"),
                }
            }
            if hashes.len() == clients.len() {
                assert!(
                    hashes.iter().all(|h| *h == hashes[0]),
                    "members hash revision {rev} differently after {after}: {hashes:x?}"
                );
                return rev;
            }
        }
        assert!(
            Instant::now() < deadline,
            "members never reached one revision after {after}: {revisions:?}"
        );
        qed::runtime::sleep(Duration::from_millis(20)).await;
    }
}

async fn alarms(client: &Client) -> Vec<AlarmMember> {
    let req = Request::Alarm(AlarmRequest {
        action: AlarmAction::Get,
        member_id: 0,
        alarm: AlarmType::None,
    });
    match client.call(req).await {
        Ok(Response::Alarm(a)) => a.alarms,
        other => panic!("alarm list: {other:?}"),
    }
}

/// Puts through `writers` in turn until one answers NOSPACE, checking
/// convergence after each; returns how many puts were acknowledged.
async fn fill(clients: &[Client], writers: &[usize], tag: &str) -> usize {
    for n in 0..MAX_PUTS {
        let writer = writers[n % writers.len()];
        let key = format!("{tag}/{n:04}");
        match clients[writer].put(key, vec![b'v'; VALUE], None).await {
            Ok(_) => {}
            Err(ClientError::Server(Error::NoSpace)) => {
                assert_converged(clients, &format!("NOSPACE on put {n} of {tag}")).await;
                return n;
            }
            Err(e) => panic!("put {n} of {tag} through member {writer}: {e}"),
        }
        assert_converged(clients, &format!("put {n} of {tag}")).await;
    }
    panic!("{MAX_PUTS} puts of {VALUE} bytes never hit the quota")
}

/// The alarm list is the same on every member (read linearizably).
async fn assert_same_alarms(clients: &[Client], what: &str) -> Vec<AlarmMember> {
    let first = alarms(&clients[0]).await;
    for (i, c) in clients.iter().enumerate().skip(1) {
        assert_eq!(alarms(c).await, first, "member {i}'s alarms {what}");
    }
    first
}

/// etcdctl's `alarm disarm`: list the alarms and deactivate each, all
/// through one member.
async fn disarm_through(client: &Client) {
    for alarm in alarms(client).await {
        let req = Request::Alarm(AlarmRequest {
            action: AlarmAction::Deactivate,
            member_id: alarm.member_id,
            alarm: alarm.alarm,
        });
        client.call(req).await.expect("disarm");
    }
}

/// Frees the room: deletes everything (allowed under NOSPACE) and compacts
/// the history away.
async fn free_room(clients: &[Client], through: usize) {
    let delete = Request::DeleteRange(DeleteRangeRequest {
        key: vec![0],
        range_end: vec![0],
        ..Default::default()
    });
    clients[through].call(delete).await.expect("delete all");
    let rev = assert_converged(clients, "delete all").await;
    clients[through].compact(rev, true).await.expect("compact");
    assert_converged(clients, "compaction").await;
}

async fn scenario(
    cluster: &TestCluster,
    fill_through: &[usize],
    disarm_at: usize,
    refill: &[usize],
) {
    let clients = clients_of(cluster).await;
    cluster
        .wait_for_leader(
            &clients.iter().cloned().map(Some).collect::<Vec<_>>(),
            Duration::from_secs(30),
        )
        .await;
    assert_converged(&clients, "start").await;
    let puts = fill(&clients, fill_through, "first").await;
    assert!(puts > 0, "the first put already hit the quota");
    let raised = assert_same_alarms(&clients, "after filling up").await;
    assert!(
        raised.iter().any(|a| a.alarm == AlarmType::Nospace),
        "NOSPACE refused a put but no alarm is listed: {raised:?}"
    );
    // Status lists it as etcd does (`etcdctl endpoint status`'s ERRORS).
    match clients[0].call(Request::Status(Default::default())).await {
        Ok(Response::Status(s)) => {
            let want: Vec<String> = raised
                .iter()
                .map(|a| format!("memberID:{} alarm:NOSPACE ", a.member_id))
                .collect();
            assert_eq!(s.errors, want);
        }
        other => panic!("status: {other:?}"),
    }
    // Refused on every member while the alarm stands.
    for (i, c) in clients.iter().enumerate() {
        let refused = c.put("refused", "v", None).await;
        assert!(
            matches!(refused, Err(ClientError::Server(Error::NoSpace))),
            "member {i} took a put under NOSPACE: {refused:?}"
        );
    }
    free_room(&clients, disarm_at).await;
    disarm_through(&clients[disarm_at]).await;
    assert_converged(&clients, "disarm").await;
    assert_eq!(assert_same_alarms(&clients, "after disarm").await, vec![]);
    let again = fill(&clients, refill, "second").await;
    assert!(again > 0, "no put went in after the disarm");
    assert_same_alarms(&clients, "after filling up again").await;
}

#[test]
fn members_with_different_quotas_apply_alike() {
    let quotas = [64 * KIB, 128 * KIB, 256 * KIB];
    let cluster = TestCluster::start_each(3, |i| {
        vec!["--quota-backend-bytes".into(), quotas[i].to_string()]
    });
    qed::runtime::block_on(scenario(&cluster, &[2], 1, &[0]));
}

#[test]
fn members_with_equal_quotas_apply_alike() {
    let cluster = TestCluster::start(3, &["--quota-backend-bytes", "131072"]);
    qed::runtime::block_on(scenario(&cluster, &[0, 1, 2], 0, &[0, 1, 2]));
}
