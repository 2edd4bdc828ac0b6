//! Leases against the real `qed` binary: grant, time-to-live with keys,
//! keepalive, revoke deleting every attached key in one revision (seen by
//! watchers), expiry decided by the leader, and leases surviving a restart
//! with their TTL extended.

mod common;

use common::TestNode;
use qed::client::{ClientError, EventType, PutOptions, WatchOptions};
use qed::wire::Error;
use std::time::{Duration, Instant};

fn server_error(r: Result<impl std::fmt::Debug, ClientError>) -> Error {
    match r {
        Err(ClientError::Server(e)) => e,
        other => panic!("expected a server error, got {other:?}"),
    }
}

#[test]
fn lease_lifecycle_matches_etcd() {
    let node = TestNode::start(&[]);
    qed::runtime::block_on(async {
        let c = node.client().await;
        let grant = c.lease_grant(60).await.unwrap();
        assert!(grant.id > 0);
        assert_eq!(grant.ttl, 60);
        // A chosen ID, and the same one again.
        let chosen = c.lease_grant_with_id(30, 0x1234).await.unwrap();
        assert_eq!(chosen.id, 0x1234);
        assert_eq!(
            server_error(c.lease_grant_with_id(30, 0x1234).await),
            Error::LeaseExist
        );
        // Below the minimum (1.5 election timeouts: 2 s here) is raised.
        let short = c.lease_grant(1).await.unwrap();
        assert_eq!(short.ttl, 2);
        let mut ids = c.leases().await.unwrap();
        ids.sort_unstable();
        let mut want = vec![grant.id, chosen.id, short.id];
        want.sort_unstable();
        assert_eq!(ids, want);

        // Keys attach with a put; moving a key detaches it.
        let lease = PutOptions::new().with_lease(grant.id);
        for k in ["l/1", "l/2", "l/3"] {
            c.put(k, "v", Some(lease.clone())).await.unwrap();
        }
        c.put("l/3", "v", Some(PutOptions::new().with_lease(chosen.id)))
            .await
            .unwrap();
        assert_eq!(
            server_error(
                c.put("x", "v", Some(PutOptions::new().with_lease(77)))
                    .await
            ),
            Error::LeaseNotFound
        );
        let ttl = c.lease_time_to_live(grant.id, true).await.unwrap();
        assert_eq!(ttl.granted_ttl, 60);
        assert!(ttl.ttl > 0 && ttl.ttl <= 60, "{ttl:?}");
        assert_eq!(ttl.keys, vec![b"l/1".to_vec(), b"l/2".to_vec()]);
        let ka = c.lease_keep_alive_once(grant.id).await.unwrap();
        assert_eq!((ka.id, ka.ttl), (grant.id, 60));
        assert_ne!(ka.header.member_id, 0);

        // Revoke: both keys go in one revision, and a watcher sees it.
        let mut w = c
            .watch("l/", WatchOptions::new().with_prefix())
            .await
            .unwrap();
        let before = c.get("l/", None).await.unwrap().header.revision;
        let revoked = c.lease_revoke(grant.id).await.unwrap();
        assert_eq!(revoked.header.revision, before + 1);
        let resp = qed::runtime::timeout(Duration::from_secs(20), w.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let deletes: Vec<(Vec<u8>, i64)> = resp
            .events
            .iter()
            .map(|e| {
                assert_eq!(e.kind, EventType::Delete);
                (e.kv.key.clone(), e.kv.mod_revision)
            })
            .collect();
        assert_eq!(
            deletes,
            vec![(b"l/1".to_vec(), before + 1), (b"l/2".to_vec(), before + 1)]
        );
        let left = c
            .get("l/", Some(qed::client::GetOptions::new().with_prefix()))
            .await
            .unwrap();
        assert_eq!(left.kvs.len(), 1, "l/3 moved to another lease");
        assert_eq!(
            server_error(c.lease_revoke(grant.id).await),
            Error::LeaseNotFound
        );
        let gone = c.lease_time_to_live(grant.id, false).await.unwrap();
        assert_eq!(gone.ttl, -1);
        assert_eq!(c.lease_keep_alive_once(grant.id).await.unwrap().ttl, 0);
        assert!(matches!(
            c.lease_keep_alive(grant.id).await,
            Err(ClientError::Server(Error::LeaseNotFound))
        ));

        // Expiry: the leader revokes the 2 s lease and its key goes, as
        // a delete watchers see.
        c.put("e", "v", Some(PutOptions::new().with_lease(short.id)))
            .await
            .unwrap();
        let mut we = c.watch("e", WatchOptions::new()).await.unwrap();
        let resp = qed::runtime::timeout(Duration::from_secs(30), we.next())
            .await
            .expect("the lease expires")
            .unwrap()
            .unwrap();
        assert_eq!(resp.events[0].kind, EventType::Delete);
        assert!(!c.leases().await.unwrap().contains(&short.id));

        // A kept-alive 2 s lease outlives several TTLs.
        let kept = c.lease_grant(2).await.unwrap();
        let handle = c.lease_keep_alive(kept.id).await.unwrap();
        let until = Instant::now() + Duration::from_secs(7);
        while Instant::now() < until {
            let ttl = c.lease_time_to_live(kept.id, false).await.unwrap();
            assert!(ttl.ttl >= 0, "a kept-alive lease expired: {ttl:?}");
            qed::runtime::sleep(Duration::from_millis(200)).await;
        }
        assert!(!handle.is_lost());
        drop(handle);
    });
}

#[test]
fn leases_survive_a_restart_with_ttl_extended() {
    // Snapshots every few entries, so the leases come back from a
    // snapshot and not only from the log.
    let mut node = TestNode::start(&["--snapshot-count", "3"]);
    let (id, rev) = qed::runtime::block_on(async {
        let c = node.client().await;
        let id = c.lease_grant(20).await.unwrap().id;
        for i in 0..10 {
            c.put(format!("filler/{i}"), "x", None).await.unwrap();
        }
        c.put("k", "v", Some(PutOptions::new().with_lease(id)))
            .await
            .unwrap();
        let rev = c.get("k", None).await.unwrap().header.revision;
        (id, rev)
    });
    node.restart();
    qed::runtime::block_on(async {
        let c = node.client().await;
        // The new leader gives every lease a full TTL (plus an election).
        let deadline = Instant::now() + Duration::from_secs(20);
        let ttl = loop {
            match c.lease_time_to_live(id, true).await {
                Ok(t) => break t,
                Err(_) if Instant::now() < deadline => {
                    qed::runtime::sleep(Duration::from_millis(50)).await
                }
                Err(e) => panic!("time-to-live after restart: {e}"),
            }
        };
        assert_eq!(ttl.granted_ttl, 20);
        assert!(ttl.ttl >= 19, "TTL extended on the new leader: {ttl:?}");
        assert_eq!(ttl.keys, vec![b"k".to_vec()]);
        assert_eq!(c.get("k", None).await.unwrap().kvs.len(), 1);
        let revoked = c.lease_revoke(id).await.unwrap();
        assert_eq!(revoked.header.revision, rev + 1);
        assert!(c.get("k", None).await.unwrap().kvs.is_empty());
    });
}
