//! The SDK's concurrency helpers against the real binary: a `Mutex` keeps
//! a non-atomic read-modify-write exact under contention, and an
//! `Election` hands leadership over in campaign order while an observer
//! follows it.

mod common;

use common::TestNode;
use qed::client::concurrency::{ConcurrencyError, Election, Mutex, Session};
use std::time::Duration;

const CONTENDERS: usize = 8;
const ROUNDS: usize = 10;

#[test]
fn mutex_makes_increments_exact() {
    let node = TestNode::start(&[]);
    qed::runtime::block_on(async {
        let c = node.client().await;
        c.put("counter", "0", None).await.unwrap();
        let tasks: Vec<_> = (0..CONTENDERS)
            .map(|_| {
                let c = c.clone();
                qed::runtime::spawn(async move {
                    let session = Session::new(&c, 10).await.unwrap();
                    let mut lock = Mutex::new(&session, "locks/counter");
                    for _ in 0..ROUNDS {
                        lock.lock().await.unwrap();
                        // Read, then write: only exclusion keeps this exact.
                        let got = c.get("counter", None).await.unwrap();
                        let n: u64 = std::str::from_utf8(&got.kvs[0].value)
                            .unwrap()
                            .parse()
                            .unwrap();
                        c.put("counter", (n + 1).to_string(), None).await.unwrap();
                        lock.unlock().await.unwrap();
                    }
                    session.close().await.unwrap();
                })
            })
            .collect();
        for t in tasks {
            qed::runtime::timeout(Duration::from_secs(120), t)
                .await
                .expect("contender finished");
        }
        let got = c.get("counter", None).await.unwrap();
        assert_eq!(
            got.kvs[0].value,
            (CONTENDERS * ROUNDS).to_string().as_bytes()
        );
        // Every session closed: nothing left under the lock prefix.
        let left = c
            .get("locks/", Some(qed::client::GetOptions::new().with_prefix()))
            .await
            .unwrap();
        assert!(left.kvs.is_empty());
    });
}

#[test]
fn election_hands_over_in_order() {
    let node = TestNode::start(&[]);
    qed::runtime::block_on(async {
        let c = node.client().await;
        let s1 = Session::new(&c, 10).await.unwrap();
        let s2 = Session::new(&c, 10).await.unwrap();
        let mut e1 = Election::new(&s1, "elect/svc");
        let mut e2 = Election::new(&s2, "elect/svc");
        assert_eq!(e1.leader().await, Err(ConcurrencyError::NoLeader));
        assert_eq!(e2.proclaim("x").await, Err(ConcurrencyError::NotLeader));

        let mut observer = e1.observe();
        e1.campaign("one").await.unwrap();
        let seen = observer.next().await.unwrap();
        assert_eq!(seen.value, b"one");

        // The second candidate waits behind the first.
        let waiting = qed::runtime::spawn(async move {
            e2.campaign("two").await.unwrap();
            e2
        });
        e1.proclaim("one again").await.unwrap();
        assert_eq!(observer.next().await.unwrap().value, b"one again");
        assert_eq!(e1.leader().await.unwrap().value, b"one again");

        e1.resign().await.unwrap();
        let mut e2 = qed::runtime::timeout(Duration::from_secs(30), waiting)
            .await
            .expect("the second candidate leads after the first resigns");
        assert_eq!(observer.next().await.unwrap().value, b"two");
        assert_eq!(e2.leader().await.unwrap().value, b"two");
        e2.resign().await.unwrap();
        s1.close().await.unwrap();
        s2.close().await.unwrap();
    });
}
