//! Leases across a leaderless spell, on a real 3-member cluster.
//!
//! Only the leader expires leases, and a member that becomes leader gives
//! every lease a full TTL (plus an election timeout) before it starts
//! expiring them (etcd's `promote`), so no lease expires because the cluster
//! had no leader for a while, however long. Here two of three members are
//! killed for longer than a lease's TTL with no keepalive possible; once
//! one of them is back and a leader is elected, the lease and its key are
//! still there, and the lease still expires afterwards as usual.

mod common;

use common::TestCluster;
use qed::client::{Client, PutOptions};
use std::time::{Duration, Instant};

/// Whether `key` exists (linearizable read), `None` while the read fails.
async fn exists(c: &Client, key: &str) -> Option<bool> {
    c.get(key, None).await.ok().map(|r| !r.kvs.is_empty())
}

#[test]
fn leases_outlive_a_quorum_loss_longer_than_their_ttl() {
    let mut cluster = TestCluster::start(3, &[]);
    qed::runtime::block_on(async {
        let mut members = Vec::new();
        for i in 0..3 {
            members.push(Some(cluster.client(i).await));
        }
        cluster
            .wait_for_leader(&members, Duration::from_secs(30))
            .await;
        let c = cluster.client_of_all().await;
        let ttl = 3;
        let lease = c.lease_grant(ttl).await.expect("grant").id;
        c.put("held", "v", Some(PutOptions::new().with_lease(lease)))
            .await
            .expect("put with the lease");

        // No quorum, so no leader, for longer than the TTL. (Time passing is
        // the condition here: there is nothing to poll for.)
        cluster.kill(1);
        cluster.kill(2);
        let down = Instant::now();
        qed::runtime::sleep(Duration::from_secs(ttl as u64 + 2)).await;
        cluster.restart(1);

        // A leader again: the lease was extended on promotion, not expired.
        let deadline = Instant::now() + Duration::from_secs(30);
        let present = loop {
            if let Some(present) = exists(&c, "held").await {
                break present;
            }
            assert!(Instant::now() < deadline, "no leader after the restart");
            qed::runtime::sleep(Duration::from_millis(50)).await;
        };
        assert!(
            down.elapsed() > Duration::from_secs(ttl as u64),
            "the outage must outlast the TTL for this test to mean anything"
        );
        assert!(present, "the lease's key expired while there was no leader");
        let left = c
            .lease_time_to_live(lease, false)
            .await
            .expect("time to live")
            .ttl;
        assert!(
            left > 0,
            "lease {lease:x} gone after the election (ttl {left})"
        );

        // And it still expires when nobody keeps it alive.
        let deadline = Instant::now() + Duration::from_secs(30);
        while exists(&c, "held").await != Some(false) {
            assert!(Instant::now() < deadline, "the lease never expired");
            qed::runtime::sleep(Duration::from_millis(100)).await;
        }
    });
}
