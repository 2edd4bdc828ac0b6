//! Three real `qed` processes on loopback as one cluster.
//!
//! - `three_members_serve_as_one`: one leader is elected; a put through a
//!   follower is readable (linearizable) on every member and serializable
//!   reads on followers converge; member list names every member with its
//!   client URL; a lease granted, kept alive and inspected through a
//!   follower (forwarded to the leader); a member started with another
//!   `--initial-cluster-token` is refused by the others, with a log line.
//! - `leader_kill_loses_no_acknowledged_write`: 4 writers through one SDK
//!   client of all three members; the leader is SIGKILLed mid-writes; a new
//!   leader is elected, every acknowledged write is on both survivors with
//!   its value, the client keeps writing; the killed member is restarted
//!   after the log was compacted past it and catches up by snapshot.
//!
//! - `peers_verify_each_other_with_a_shared_ca`: with `--peer-cert-file`
//!   and `--peer-trusted-ca-file` (no `--peer-client-cert-auth`: a CA means
//!   both directions are verified), two members with certificates of one CA
//!   form a quorum; a third with a certificate of another CA cannot talk to
//!   them, and both sides log the TLS failure.
//! - `peer_port_refuses_strangers_and_survives_bad_frames`: a forged peer
//!   with a member's own certificate: bad frames end only their stream; a
//!   "removed" close from a member that does not lead is ignored; the same
//!   claim with another certificate is refused (pinned on first contact), a
//!   peer without a certificate gets no handshake, an unknown ID is refused.
//! - `shrunk_to_one_voter_grows_again`: 3 members, two removed, the lone
//!   voter snapshots; re-adding a removed member's URLs is refused; etcd's
//!   strict reconfiguration checks refuse a change that breaks quorum; a
//!   new voter joins (by a snapshot with its image) and serves the data.
//!
//! - `member_add_learner_promote`: a member added (through a follower) as a
//!   learner and started with `--initial-cluster-state existing` joins,
//!   catches up, is promoted to voter, serves, and survives a restart.
//! - `a_read_waiting_on_a_paused_leader_is_answered_by_the_next`: the
//!   leader is SIGSTOPped, then a linearizable get is made at a follower
//!   (it forwards the ReadIndex to the paused leader, which never answers);
//!   once a new leader is elected the follower asks it again and the get
//!   returns the value, instead of waiting out its 7 s answer deadline.
//! - `member_remove_through_a_follower`: removing a member (asked of a
//!   follower, forwarded to the leader) shrinks the member list everywhere,
//!   the removed member stops, and the other two go on serving.
//!
//! Every wait polls with a deadline; processes are killed by their PID.

mod common;

use common::{free_udp_port, TestCluster};
use qed::client::{Client, ClientError, GetOptions};
use qed::wire::{Error, Request, Response};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

async fn clients_of(cluster: &TestCluster) -> Vec<Option<Client>> {
    let mut out = Vec::new();
    for i in 0..cluster.members.len() {
        out.push(Some(cluster.client(i).await));
    }
    out
}

/// A client per member, and the index of the member that leads (waited
/// for up to 30 s).
async fn clients_and_leader(cluster: &TestCluster) -> (Vec<Option<Client>>, usize) {
    let clients = clients_of(cluster).await;
    let leader = cluster
        .wait_for_leader(&clients, Duration::from_secs(30))
        .await;
    (clients, leader)
}

/// Polls `check` until it holds or `within` passes; the message says what
/// never happened.
async fn eventually<F, Fut>(within: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    loop {
        if check().await {
            return;
        }
        assert!(Instant::now() < deadline, "never happened: {what}");
        qed::runtime::sleep(Duration::from_millis(20)).await;
    }
}

async fn value_of(client: &Client, key: &str, serializable: bool) -> Option<String> {
    let options = if serializable {
        GetOptions::new().with_serializable()
    } else {
        GetOptions::new()
    };
    let resp = client.get(key, Some(options)).await.ok()?;
    resp.kvs
        .first()
        .map(|kv| String::from_utf8_lossy(&kv.value).into_owned())
}

#[test]
fn three_members_serve_as_one() {
    let cluster = TestCluster::start(3, &[]);
    qed::runtime::block_on(async {
        let started = Instant::now();
        let (clients, leader) = clients_and_leader(&cluster).await;
        println!(
            "leader n{} elected {:?} after start",
            leader + 1,
            started.elapsed()
        );
        let follower = (leader + 1) % 3;
        let other = (leader + 2) % 3;
        let c = |i: usize| clients[i].as_ref().expect("client");

        // A write through a follower, read linearizably everywhere.
        let put = c(follower)
            .put("k", "v1", None)
            .await
            .expect("put through a follower");
        let ids: Vec<u64> = {
            let mut ids = Vec::new();
            for i in 0..3 {
                let got = c(i).get("k", None).await.expect("linearizable get");
                assert_eq!(
                    got.kvs.first().map(|kv| kv.value.clone()),
                    Some(b"v1".to_vec()),
                    "n{} does not see the write linearizably",
                    i + 1
                );
                assert!(got.header.revision >= put.header.revision);
                assert!(got.header.raft_term >= 2);
                ids.push(got.header.member_id);
            }
            ids
        };
        ids.iter().for_each(|id| assert_ne!(*id, 0));
        assert!(
            ids[0] != ids[1] && ids[1] != ids[2] && ids[0] != ids[2],
            "every member answers with its own member ID: {ids:x?}"
        );

        // Serializable reads on the followers converge, and a watch on a
        // follower sees a write made through the leader.
        let mut watcher = c(other)
            .watch("s", qed::client::WatchOptions::new())
            .await
            .expect("watch on a follower");
        c(leader).put("s", "v2", None).await.expect("put on leader");
        let event = qed::runtime::timeout(Duration::from_secs(10), watcher.next())
            .await
            .expect("the follower's watch fires")
            .expect("watch stream open")
            .expect("watch response");
        assert_eq!(
            event.events.first().map(|e| e.kv.value.clone()),
            Some(b"v2".to_vec())
        );
        for i in [follower, other] {
            eventually(
                Duration::from_secs(10),
                "serializable read converges",
                || {
                    let client = c(i);
                    async move { value_of(client, "s", true).await.as_deref() == Some("v2") }
                },
            )
            .await;
        }

        // Member list: every member, with peer and client URLs (learned
        // from each other's hellos).
        for i in 0..3 {
            eventually(Duration::from_secs(10), "member list is complete", || {
                let client = c(i);
                let cluster = &cluster;
                async move {
                    let Ok(Response::Members(list)) =
                        client.call(Request::MemberList(Default::default())).await
                    else {
                        return false;
                    };
                    list.members.len() == 3
                        && cluster.members.iter().all(|m| {
                            list.members.iter().any(|l| {
                                l.name == m.name
                                    && l.peer_urls == [m.peer_url.clone()]
                                    && l.client_urls == [m.client_url.clone()]
                            })
                        })
                }
            })
            .await;
        }

        // Status names the leader everywhere.
        for i in 0..3 {
            match c(i).call(Request::Status(Default::default())).await {
                Ok(Response::Status(s)) => {
                    assert_eq!(s.leader, ids[leader]);
                    assert!(s.raft_index >= put.header.revision as u64);
                }
                other => panic!("status: {other:?}"),
            }
        }

        // Leases through a follower: keepalives and TimeToLive are
        // forwarded to the leader.
        let lease = c(follower).lease_grant(30).await.expect("grant").id;
        let ttl = c(follower)
            .lease_keep_alive_once(lease)
            .await
            .expect("keepalive via follower");
        assert_eq!(ttl.ttl, 30);
        let keep = c(other)
            .lease_keep_alive(lease)
            .await
            .expect("keepalive stream via follower");
        assert_eq!(keep.ttl(), 30);
        assert!(!keep.is_lost());
        drop(keep);
        let ttl = c(other)
            .lease_time_to_live(lease, false)
            .await
            .expect("time to live via follower");
        assert_eq!(ttl.granted_ttl, 30);
        assert!(ttl.ttl > 0);

        // A lease left to expire: the leader revokes it, and its key is
        // gone on every member.
        let short = c(follower).lease_grant(3).await.expect("grant").id;
        c(follower)
            .put(
                "ephemeral",
                "x",
                Some(qed::client::PutOptions::new().with_lease(short)),
            )
            .await
            .expect("put with lease");
        for i in 0..3 {
            eventually(
                Duration::from_secs(30),
                "the expired lease's key is deleted",
                || {
                    let client = c(i);
                    async move { value_of(client, "ephemeral", true).await.is_none() }
                },
            )
            .await;
        }

        // A member of another cluster (other token) is refused.
        let stranger_dir = common::TempDir::new("stranger");
        let stranger_peer = format!("http://127.0.0.1:{}", free_udp_port());
        let mut initial: Vec<String> = cluster
            .initial_cluster
            .split(',')
            .map(String::from)
            .collect();
        initial[other] = format!("n{}={stranger_peer}", other + 1);
        let log_path = stranger_dir.0.join("stranger.log");
        let log = std::fs::File::create(&log_path).expect("stranger log");
        let mut stranger = std::process::Command::new(env!("CARGO_BIN_EXE_qed"))
            .args(["--name", &format!("n{}", other + 1)])
            .arg("--data-dir")
            .arg(stranger_dir.0.join("data"))
            .args([
                "--listen-client-urls",
                &format!("https://127.0.0.1:{}", free_udp_port()),
                "--listen-peer-urls",
                &stranger_peer,
                "--initial-advertise-peer-urls",
                &stranger_peer,
                "--initial-cluster",
                &initial.join(","),
                "--initial-cluster-token",
                "some-other-token",
            ])
            .stdin(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn the stranger");
        let refused_line = |log: &str| {
            log.lines()
                .any(|l| l.contains("refused peer") && l.contains("belongs to cluster"))
        };
        let told = |log: &str| log.contains("refused this member");
        let deadline = Instant::now() + Duration::from_secs(20);
        let (refused, learned) = loop {
            let refused = [leader, follower]
                .iter()
                .any(|i| refused_line(&cluster.members[*i].log()));
            let learned = told(&std::fs::read_to_string(&log_path).unwrap_or_default());
            if (refused && learned) || Instant::now() > deadline {
                break (refused, learned);
            }
            qed::runtime::sleep(Duration::from_millis(50)).await;
        };
        let _ = stranger.kill();
        let _ = stranger.wait();
        assert!(
            refused,
            "no member logged refusing the stranger; logs:\n{}\n{}",
            cluster.members[leader].log(),
            cluster.members[follower].log()
        );
        assert!(
            learned,
            "the stranger did not log why it was refused:\n{}",
            std::fs::read_to_string(&log_path).unwrap_or_default()
        );
        // And the cluster is unharmed.
        c(follower).put("after", "x", None).await.expect("put");
    });
}

const WRITERS: usize = 4;

#[test]
fn leader_kill_loses_no_acknowledged_write() {
    let mut cluster = TestCluster::start(
        3,
        &[
            "--snapshot-count",
            "20",
            "--experimental-snapshot-catchup-entries",
            "5",
        ],
    );
    qed::runtime::block_on(async {
        let (mut clients, leader) = clients_and_leader(&cluster).await;
        let all = cluster.client_of_all().await;
        let acked: Arc<Mutex<BTreeMap<String, String>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let count = Arc::new(AtomicUsize::new(0));
        let mut writers = Vec::new();
        for w in 0..WRITERS {
            let (client, stop, count, acked) =
                (all.clone(), stop.clone(), count.clone(), acked.clone());
            writers.push(qed::runtime::spawn(async move {
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) && i < 100_000 {
                    let key = format!("w{w}-{i:06}");
                    let value = format!("v{w}-{i}");
                    if client.put(key.clone(), value.clone(), None).await.is_ok() {
                        acked.lock().unwrap().insert(key, value);
                        count.fetch_add(1, Ordering::Relaxed);
                    }
                    i += 1;
                }
            }));
        }
        let wait_for_count = |target: usize, what: &'static str| {
            let count = count.clone();
            async move {
                let deadline = Instant::now() + Duration::from_secs(60);
                while count.load(Ordering::Relaxed) < target {
                    assert!(Instant::now() < deadline, "writes stalled {what}");
                    qed::runtime::sleep(Duration::from_millis(5)).await;
                }
            }
        };
        wait_for_count(150, "before the kill").await;
        let killed_at = Instant::now();
        cluster.kill(leader);
        clients[leader] = None;
        let new_leader = cluster
            .wait_for_leader(&clients, Duration::from_secs(30))
            .await;
        assert_ne!(new_leader, leader);
        println!(
            "n{} took over {:?} after n{} was killed",
            new_leader + 1,
            killed_at.elapsed(),
            leader + 1
        );
        // The same client goes on writing through the survivors, long
        // enough for the survivors' logs to be compacted past the killed
        // member (snapshot every 20 entries).
        let before = count.load(Ordering::Relaxed);
        wait_for_count(before + 200, "after the leader was killed").await;
        stop.store(true, Ordering::Relaxed);
        for w in writers {
            w.await;
        }
        let acked = acked.lock().unwrap().clone();
        println!("{} writes acknowledged", acked.len());

        // Every acknowledged write is on both survivors.
        for i in (0..3).filter(|i| *i != leader) {
            let c = clients[i].as_ref().expect("survivor client");
            let got = c
                .get("w", Some(GetOptions::new().with_prefix()))
                .await
                .expect("read from a survivor");
            let present: BTreeMap<String, String> = got
                .kvs
                .iter()
                .map(|kv| {
                    (
                        String::from_utf8_lossy(&kv.key).into_owned(),
                        String::from_utf8_lossy(&kv.value).into_owned(),
                    )
                })
                .collect();
            for (key, value) in &acked {
                assert_eq!(
                    present.get(key),
                    Some(value),
                    "n{}: acknowledged write {key} lost or changed",
                    i + 1
                );
            }
        }

        // The killed member comes back and catches up, by snapshot: the
        // survivors compacted their logs past what it has.
        cluster.restart(leader);
        let back = cluster.client(leader).await;
        // Every acknowledged write, with its value (writes in flight at the
        // kill may have committed too, so a count says nothing).
        eventually(
            Duration::from_secs(60),
            "the restarted member catches up",
            || {
                let (back, acked) = (&back, &acked);
                async move {
                    let options = GetOptions::new().with_prefix().with_serializable();
                    let Ok(got) = back.get("w", Some(options)).await else {
                        return false;
                    };
                    let present: BTreeMap<&[u8], &[u8]> = got
                        .kvs
                        .iter()
                        .map(|kv| (kv.key.as_slice(), kv.value.as_slice()))
                        .collect();
                    acked
                        .iter()
                        .all(|(k, v)| present.get(k.as_bytes()) == Some(&v.as_bytes()))
                }
            },
        )
        .await;
        let got = back
            .get(
                "w",
                Some(GetOptions::new().with_prefix().with_serializable()),
            )
            .await
            .expect("read from the restarted member");
        let present: BTreeMap<String, Vec<u8>> = got
            .kvs
            .iter()
            .map(|kv| {
                (
                    String::from_utf8_lossy(&kv.key).into_owned(),
                    kv.value.clone(),
                )
            })
            .collect();
        for (key, value) in &acked {
            assert_eq!(
                present.get(key).map(Vec::as_slice),
                Some(value.as_bytes()),
                "restarted member: acknowledged write {key} missing or changed"
            );
        }
        let log = cluster.members[leader].log();
        assert!(
            log.contains("installed the leader's snapshot"),
            "the restarted member did not catch up by snapshot:\n{log}"
        );
        // A linearizable read through it works too.
        back.get("w", None).await.expect("linearizable get");
        drop(back);

        // The whole cluster stopped and started again with the same flags:
        // a leader, and the data is all there.
        for i in 0..3 {
            cluster.kill(i);
        }
        for i in 0..3 {
            cluster.restart(i);
        }
        let restarted = clients_of(&cluster).await;
        cluster
            .wait_for_leader(&restarted, Duration::from_secs(30))
            .await;
        let got = restarted[0]
            .as_ref()
            .expect("client")
            .get("w", Some(GetOptions::new().with_prefix().with_count_only()))
            .await
            .expect("read after a full restart");
        assert!(got.count as usize >= acked.len());
    });
}

/// `qed certs --dir <dir>`: a CA and a node certificate for loopback.
fn make_certs(dir: &std::path::Path) {
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_qed"))
        .args(["certs", "--dir"])
        .arg(dir)
        .stdout(std::process::Stdio::null())
        .status()
        .expect("run qed certs");
    assert!(status.success(), "qed certs failed");
}

#[test]
fn peers_verify_each_other_with_a_shared_ca() {
    let certs = common::TempDir::new("peer-ca");
    let other = common::TempDir::new("other-ca");
    make_certs(&certs.0.join("ca"));
    make_certs(&other.0.join("ca"));
    let flags = |dir: &std::path::Path| -> Vec<String> {
        let f = |name: &str| dir.join("ca").join(name).display().to_string();
        vec![
            "--peer-cert-file".into(),
            f("node.crt"),
            "--peer-key-file".into(),
            f("node.key"),
            "--peer-trusted-ca-file".into(),
            f("ca.crt"),
        ]
    };
    let cluster = TestCluster::start_each(3, |i| {
        if i < 2 {
            flags(&certs.0)
        } else {
            flags(&other.0)
        }
    });
    qed::runtime::block_on(async {
        let clients = vec![
            Some(cluster.client(0).await),
            Some(cluster.client(1).await),
            None,
        ];
        cluster
            .wait_for_leader(&clients, Duration::from_secs(30))
            .await;
        let c = |i: usize| clients[i].as_ref().expect("client");
        c(0).put("tls", "yes", None).await.expect("put");
        assert_eq!(value_of(c(1), "tls", false).await.as_deref(), Some("yes"));
        for m in &cluster.members {
            assert!(
                !m.log().contains("peers are not verified"),
                "{} runs unverified peers",
                m.name
            );
        }
        // A peer with a certificate of another CA gets no connection, even
        // without --peer-client-cert-auth (nor does one with none).
        {
            use qed::transport::{endpoint, tls, url};
            let target = url::parse(&cluster.members[0].peer_url).expect("peer url");
            for cert in [Some(other.0.join("ca")), None] {
                let files = tls::TlsFiles {
                    cert: cert.as_ref().map(|d| d.join("node.crt")),
                    key: cert.as_ref().map(|d| d.join("node.key")),
                    ca: Some(certs.0.join("ca").join("ca.crt")),
                };
                let config = tls::peer_client_config(&files).expect("tls");
                let ep = endpoint::client(target.addr, config).expect("endpoint");
                let connected = ep
                    .connect(target.addr, &target.host)
                    .expect("connect")
                    .await;
                let refused = match connected {
                    Err(_) => true,
                    // The client may finish its side first; the server
                    // then closes the connection.
                    Ok(conn) => qed::runtime::timeout(Duration::from_secs(10), conn.closed())
                        .await
                        .is_ok(),
                };
                assert!(refused, "a peer with certificate {cert:?} was let in");
            }
        }
        // The member with the other CA is kept out, and says why.
        eventually(
            Duration::from_secs(20),
            "both sides log the TLS failure",
            || {
                let cluster = &cluster;
                async move {
                    let outsider = cluster.members[2].log();
                    let insiders = cluster.members[0].log() + &cluster.members[1].log();
                    outsider.contains("cannot reach member")
                        && insiders.contains("rejected a peer connection")
                }
            },
        )
        .await;
    });
}

/// Talks to a member's peer port directly, as a forged or broken peer would.
#[test]
fn peer_port_refuses_strangers_and_survives_bad_frames() {
    use qed::server::members::{parse_initial_cluster, Members};
    use qed::transport::{endpoint, stream, tls, url};
    use qed::wire::peer::PeerHello;

    let cluster = TestCluster::start(3, &[]);
    qed::runtime::block_on(async {
        let (clients, leader) = clients_and_leader(&cluster).await;
        // The forged peer talks to member 0 claiming to be a member that
        // does not lead (so it cannot vouch for a removal).
        let claimed = if leader == 1 { 2 } else { 1 };
        let initial = parse_initial_cluster(&cluster.initial_cluster).expect("initial cluster");
        let table = |i: usize| {
            Members::from_initial_cluster(
                &initial,
                &cluster.members[i].name,
                &[cluster.members[i].peer_url.clone()],
                &[],
                &cluster.token,
            )
            .expect("member table")
        };
        let (n1, n2) = (table(0), table(claimed));
        let target = url::parse(&cluster.members[0].peer_url).expect("peer url");
        // The forged peer holds the claimed member's own (generated)
        // certificate and key, which member 0 pins on first contact.
        let certs_of = |i: usize| {
            let dir = cluster.members[i].data_dir.join("certs");
            tls::TlsFiles {
                cert: Some(dir.join("node.crt")),
                key: Some(dir.join("node.key")),
                ca: None,
            }
        };
        let config = tls::peer_client_config(&certs_of(claimed)).expect("tls");
        let ep = endpoint::client(target.addr, config).expect("endpoint");
        let connect = || async {
            ep.connect(target.addr, &target.host)
                .expect("connect")
                .await
                .expect("handshake with the peer port")
        };
        let hello = PeerHello {
            cluster_id: n1.cluster_id(),
            from: n2.local,
            to: n1.local,
            ..Default::default()
        };

        // A frame that does not decode, then one over the size limit: each
        // ends its own stream, the connection stays.
        let conn = connect().await;
        for bad in [
            vec![0, 0, 0, 3, 0xff, 0xff, 0xff],
            u32::MAX.to_be_bytes().to_vec(),
        ] {
            let mut send = conn.open_uni().await.expect("open stream");
            stream::write(&mut send, &hello, 1024).await.expect("hello");
            send.write_all(&bad).await.expect("bad frame");
            let stopped = qed::runtime::timeout(Duration::from_secs(10), send.stopped())
                .await
                .expect("the member stops the stream");
            assert!(
                stopped.is_ok(),
                "stream stopped, not the connection: {stopped:?}"
            );
        }
        assert!(
            conn.close_reason().is_none(),
            "the connection survives bad frames"
        );
        eventually(Duration::from_secs(10), "the bad frames are logged", || {
            let log = cluster.members[0].log();
            async move { log.matches("sent a bad frame").count() >= 2 }
        })
        .await;

        // An unknown member ID: the connection is closed, with the reason.
        let conn = connect().await;
        let mut send = conn.open_uni().await.expect("open stream");
        let stranger = PeerHello {
            from: 42,
            ..hello.clone()
        };
        stream::write(&mut send, &stranger, 1024)
            .await
            .expect("hello");
        let closed = qed::runtime::timeout(Duration::from_secs(10), conn.closed())
            .await
            .expect("the member closes the connection");
        let reason = closed.to_string();
        assert!(
            reason.contains("is not in this cluster's member table"),
            "closed with: {reason}"
        );

        // A peer that passes the hello and then closes its connection with
        // the "removed" code: it does not lead, so the member does not
        // believe it and keeps running.
        let conn = connect().await;
        let (mut send, mut recv) = conn.open_bi().await.expect("open call stream");
        stream::write(&mut send, &hello, 1024).await.expect("hello");
        let call = qed::wire::peer::PeerCall::Request(Request::MemberList(Default::default()));
        stream::write(&mut send, &call, 1024).await.expect("call");
        // An answer means the hello was accepted.
        let answer = stream::read::<qed::wire::peer::PeerReply>(&mut recv, 1 << 20)
            .await
            .expect("the member answers the call");
        assert!(answer.is_some(), "the hello was accepted");
        conn.close(3u32.into(), b"removed from the cluster");
        eventually(
            Duration::from_secs(10),
            "the forged removal is logged as ignored",
            || {
                let log = cluster.members[0].log();
                assert!(
                    !log.contains("raft loop stopped"),
                    "the member stopped on a forged removal:\n{log}"
                );
                async move { log.contains("removal not confirmed; ignored") }
            },
        )
        .await;
        for _ in 0..3 {
            clients[0]
                .as_ref()
                .expect("client")
                .put("alive", "yes", None)
                .await
                .expect("the member still serves after a forged removal");
        }
        assert!(
            !cluster.members[0].log().contains("raft loop stopped"),
            "the member stopped on a forged removal:\n{}",
            cluster.members[0].log()
        );

        // The same claim with another member's certificate: refused, with
        // the reason (trust on first use).
        let third = 3 - claimed;
        let config = tls::peer_client_config(&certs_of(third)).expect("tls");
        let conn = ep
            .connect_with(config, target.addr, &target.host)
            .expect("connect")
            .await
            .expect("handshake with the peer port");
        let mut send = conn.open_uni().await.expect("open stream");
        stream::write(&mut send, &hello, 1024).await.expect("hello");
        let closed = qed::runtime::timeout(Duration::from_secs(10), conn.closed())
            .await
            .expect("the member closes the connection");
        let reason = closed.to_string();
        assert!(
            reason.contains("is not the one pinned on first contact"),
            "closed with: {reason}"
        );
        // And a peer with no certificate at all does not get a handshake.
        let config = tls::peer_client_config(&tls::TlsFiles::default()).expect("tls");
        let anonymous = ep
            .connect_with(config, target.addr, &target.host)
            .expect("connect")
            .await;
        let refused = match anonymous {
            Err(_) => true,
            // The client may finish its side first; the server then closes.
            Ok(conn) => qed::runtime::timeout(Duration::from_secs(10), conn.closed())
                .await
                .is_ok(),
        };
        assert!(refused, "a peer without a certificate was let in");

        // The cluster is unharmed.
        let c = clients[1].as_ref().expect("client");
        c.put("still", "fine", None)
            .await
            .expect("put after the abuse");
        assert_eq!(
            value_of(clients[0].as_ref().expect("client"), "still", false)
                .await
                .as_deref(),
            Some("fine")
        );
    });
}

/// A ReadIndex forwarded to a leader that then stops answering (paused,
/// partitioned, killed) is lost with it; a read round is safe to ask
/// again, so the follower asks the next leader instead of letting its
/// caller wait out the answer deadline (5 s + two election timeouts).
#[test]
fn a_read_waiting_on_a_paused_leader_is_answered_by_the_next() {
    let cluster = TestCluster::start(3, &[]);
    qed::runtime::block_on(async {
        let (clients, leader) = clients_and_leader(&cluster).await;
        let follower = (leader + 1) % 3;
        let c = clients[follower].as_ref().expect("client");
        c.put("k", "v", None)
            .await
            .expect("put through the follower");
        // A client whose own deadline is far beyond the member's answer
        // deadline, so what the member answers is what the test sees.
        let patient = Client::connect(
            std::slice::from_ref(&cluster.members[follower].client_url),
            qed::client::ConnectOptions {
                ca_file: Some(cluster.members[follower].ca_file()),
                request_timeout: Duration::from_secs(30),
                dial_timeout: Duration::from_secs(1),
                ..Default::default()
            },
        )
        .await
        .expect("connect to the follower");
        let pid = cluster.members[leader]
            .child
            .as_ref()
            .expect("leader runs")
            .id();
        let paused = std::process::Command::new("kill")
            .args(["-STOP", &pid.to_string()])
            .status()
            .expect("run kill");
        assert!(paused.success(), "could not pause the leader");
        let got = patient.get("k", None).await;
        // The paused leader is killed by PID when the cluster drops.
        let resp = got.expect("a linearizable get at a follower across a leader change");
        assert_eq!(
            resp.kvs.first().map(|kv| kv.value.as_slice()),
            Some(&b"v"[..])
        );
    });
}

#[test]
fn member_remove_through_a_follower() {
    let mut cluster = TestCluster::start(3, &[]);
    qed::runtime::block_on(async {
        let (clients, leader) = clients_and_leader(&cluster).await;
        let (asker, gone) = ((leader + 1) % 3, (leader + 2) % 3);
        let c = |i: usize| clients[i].as_ref().expect("client");
        let member_id = |i: usize| async move {
            match c(i).call(Request::Status(Default::default())).await {
                Ok(Response::Status(s)) => s.header.member_id,
                other => panic!("status: {other:?}"),
            }
        };
        let gone_id = member_id(gone).await;
        let removed = c(asker)
            .call(Request::MemberRemove(
                qed::wire::cluster::MemberRemoveRequest { id: gone_id },
            ))
            .await
            .expect("member remove via a follower");
        let Response::Members(after) = removed else {
            panic!("member remove answered {removed:?}");
        };
        assert_eq!(after.members.len(), 2, "{after:?}");
        assert!(after.members.iter().all(|m| m.id != gone_id));
        // Again: that member is not there any more.
        let again = c(asker)
            .call(Request::MemberRemove(
                qed::wire::cluster::MemberRemoveRequest { id: gone_id },
            ))
            .await;
        assert!(again.is_err(), "removed twice: {again:?}");

        // The removed member stops, saying why.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let exited = cluster.members[gone]
                .child
                .as_mut()
                .and_then(|child| child.try_wait().ok().flatten());
            if exited.is_some() {
                break;
            }
            assert!(Instant::now() < deadline, "the removed member kept running");
            qed::runtime::sleep(Duration::from_millis(50)).await;
        }
        assert!(cluster.members[gone]
            .log()
            .contains("was removed from the cluster"));

        // The two left agree on the membership and still take writes.
        for i in [leader, asker] {
            eventually(Duration::from_secs(10), "member list shrinks", || {
                let client = c(i);
                async move {
                    matches!(
                        client.call(Request::MemberList(Default::default())).await,
                        Ok(Response::Members(list)) if list.members.len() == 2
                    )
                }
            })
            .await;
        }
        c(asker).put("two", "left", None).await.expect("put");
        assert_eq!(
            value_of(c(leader), "two", false).await.as_deref(),
            Some("left")
        );
        cluster.kill(gone);
    });
}

#[test]
fn member_add_learner_promote() {
    use qed::wire::cluster::{MemberAddRequest, MemberPromoteRequest};
    // Snapshots every few entries, so the member-add entry ends up inside
    // one and a restarted member must take the membership from there.
    let mut cluster = TestCluster::start(
        3,
        &[
            "--snapshot-count",
            "5",
            "--experimental-snapshot-catchup-entries",
            "5",
        ],
    );
    qed::runtime::block_on(async {
        let (mut clients, leader) = clients_and_leader(&cluster).await;
        let follower = (leader + 1) % 3;
        let c = |i: usize| clients[i].as_ref().expect("client");
        c(leader).put("before", "join", None).await.expect("put");

        let peer_url = format!("http://127.0.0.1:{}", free_udp_port());
        let added = c(follower)
            .call(Request::MemberAdd(MemberAddRequest {
                peer_urls: vec![peer_url.clone()],
                is_learner: true,
            }))
            .await
            .expect("member add via a follower");
        let Response::MemberAdd(added) = added else {
            panic!("member add answered {added:?}");
        };
        assert_eq!(added.members.len(), 4);
        assert!(added.member.is_learner);
        assert_eq!(added.member.peer_urls, std::slice::from_ref(&peer_url));
        let new_id = added.member.id;

        let (n4, joined) = join_and_catch_up(&mut cluster, &peer_url, leader, "join").await;
        let learner_status = |client: &Client| {
            let client = client.clone();
            async move {
                match client.call(Request::Status(Default::default())).await {
                    Ok(Response::Status(s)) => Some(s.is_learner),
                    _ => None,
                }
            }
        };
        // Seeing the data does not mean it has applied its own add yet (a
        // snapshot from before the add can carry it): wait for that.
        eventually(
            Duration::from_secs(10),
            "the joined member reports itself a learner",
            || {
                let status = learner_status(&joined);
                async move { status.await == Some(true) }
            },
        )
        .await;
        // etcd refuses a promote until the learner's log is within 90% of
        // the leader's (LearnerNotReady, retryable); under load that can
        // take a moment after the learner applied its own add.
        let deadline = Instant::now() + Duration::from_secs(20);
        let promoted = loop {
            match c(follower)
                .call(Request::MemberPromote(MemberPromoteRequest { id: new_id }))
                .await
            {
                Err(ClientError::Server(Error::LearnerNotReady)) if Instant::now() < deadline => {
                    qed::runtime::sleep(Duration::from_millis(100)).await;
                }
                other => break other.expect("promote"),
            }
        };
        let Response::Members(list) = promoted else {
            panic!("promote answered {promoted:?}");
        };
        assert!(list.members.iter().all(|m| !m.is_learner), "{list:?}");
        eventually(
            Duration::from_secs(10),
            "the promoted member is a voter",
            || {
                let status = learner_status(&joined);
                async move { status.await == Some(false) }
            },
        )
        .await;

        // Every member lists the new one with its name and client URL, and
        // it serves linearizable reads and writes.
        for i in 0..3 {
            let n4_client_url = cluster.members[n4].client_url.clone();
            eventually(Duration::from_secs(15), "the new member is listed", || {
                let client = c(i);
                let url = n4_client_url.clone();
                async move {
                    matches!(
                        client.call(Request::MemberList(Default::default())).await,
                        Ok(Response::Members(list)) if list.members.len() == 4
                            && list.members.iter().any(|m| m.id == new_id
                                && m.name == "n4"
                                && m.client_urls == [url.clone()])
                    )
                }
            })
            .await;
        }
        joined
            .put("from", "n4", None)
            .await
            .expect("put through the new member");
        assert_eq!(
            value_of(c(leader), "from", false).await.as_deref(),
            Some("n4")
        );
        assert_eq!(
            value_of(&joined, "before", false).await.as_deref(),
            Some("join")
        );

        // It restarts on its data directory (same flags) and is still in.
        drop(joined);
        cluster.restart(n4);
        let again = cluster.client(n4).await;
        eventually(
            Duration::from_secs(30),
            "the restarted new member serves",
            || {
                let again = &again;
                async move { again.get("from", None).await.is_ok() }
            },
        )
        .await;
        assert_eq!(value_of(&again, "from", false).await.as_deref(), Some("n4"));

        // An initial member restarted after the add was compacted into a
        // snapshot still counts the new member in (from the snapshot's
        // configuration; its URLs come back with its hello).
        for i in 0..10 {
            again
                .put(format!("fill{i}"), "x", None)
                .await
                .expect("fill");
        }
        let other = (leader + 2) % 3;
        clients[other] = None;
        cluster.restart(other);
        let back = cluster.client(other).await;
        eventually(
            Duration::from_secs(30),
            "the restarted member lists n4",
            || {
                let (back, url) = (&back, &peer_url);
                async move {
                    matches!(
                        back.call(Request::MemberList(Default::default())).await,
                        Ok(Response::Members(list)) if list.members.len() == 4
                            && list.members.iter().any(|m| m.id == new_id
                                && m.peer_urls == std::slice::from_ref(url))
                    )
                }
            },
        )
        .await;
        let log = cluster.members[other].log();
        assert!(log.contains("recovered") && log.contains("snapshot at index"));
        back.put("after", "restart", None).await.expect("put");
        eventually(
            Duration::from_secs(10),
            "n4 sees writes after the restart",
            || {
                let again = &again;
                async move { value_of(again, "after", true).await.as_deref() == Some("restart") }
            },
        )
        .await;
    });
}

/// A cluster shrunk to one voter takes snapshots as a lone voter; a voter
/// added afterwards needs a real image of them to join (it got an empty
/// one and stopped). A removed member's URLs cannot be added back under its
/// old ID.
#[test]
fn shrunk_to_one_voter_grows_again() {
    use qed::wire::cluster::{MemberAddRequest, MemberRemoveRequest};
    let mut cluster = TestCluster::start(
        3,
        &[
            "--snapshot-count",
            "5",
            "--experimental-snapshot-catchup-entries",
            "5",
        ],
    );
    qed::runtime::block_on(async {
        let (clients, leader) = clients_and_leader(&cluster).await;
        let c = |i: usize| clients[i].as_ref().expect("client");
        c(leader).put("before", "shrink", None).await.expect("put");
        let member_id = |i: usize| async move {
            match c(i).call(Request::Status(Default::default())).await {
                Ok(Response::Status(s)) => s.header.member_id,
                other => panic!("status: {other:?}"),
            }
        };
        for gone in [(leader + 1) % 3, (leader + 2) % 3] {
            let id = member_id(gone).await;
            c(leader)
                .call(Request::MemberRemove(MemberRemoveRequest { id }))
                .await
                .expect("member remove");
        }
        // Alone now: enough writes for a few snapshots of its own.
        for i in 0..20 {
            c(leader)
                .put(format!("alone{i}"), "x", None)
                .await
                .expect("put as the lone voter");
        }
        eventually(Duration::from_secs(20), "the lone voter snapshots", || {
            let log = cluster.members[leader].log();
            async move { log.matches("saved snapshot at index").count() >= 2 }
        })
        .await;

        // A removed member cannot come back under its old ID.
        let removed_url = cluster.members[(leader + 1) % 3].peer_url.clone();
        let again = c(leader)
            .call(Request::MemberAdd(MemberAddRequest {
                peer_urls: vec![removed_url],
                is_learner: false,
            }))
            .await;
        let refused = format!("{again:?}");
        assert!(
            refused.contains("was removed from the cluster"),
            "re-adding a removed member's URLs answered {refused}"
        );

        let peer_url = format!("http://127.0.0.1:{}", free_udp_port());
        c(leader)
            .call(Request::MemberAdd(MemberAddRequest {
                peer_urls: vec![peer_url.clone()],
                is_learner: false,
            }))
            .await
            .expect("member add to a cluster of one");
        // etcd's strict reconfiguration checks: with the new voter not
        // started, a third voter would leave one started voter of three,
        // and a learner is refused while a voter is unreachable.
        let third = c(leader)
            .call(Request::MemberAdd(MemberAddRequest {
                peer_urls: vec![format!("http://127.0.0.1:{}", free_udp_port())],
                is_learner: false,
            }))
            .await;
        assert_eq!(
            third.err().map(|e| e.to_string()).as_deref(),
            Some("etcdserver: re-configuration failed due to not enough started members")
        );
        let learner = c(leader)
            .call(Request::MemberAdd(MemberAddRequest {
                peer_urls: vec![format!("http://127.0.0.1:{}", free_udp_port())],
                is_learner: true,
            }))
            .await;
        assert_eq!(
            learner.err().map(|e| e.to_string()).as_deref(),
            Some("etcdserver: unhealthy cluster")
        );

        let (_, joined) = join_and_catch_up(&mut cluster, &peer_url, leader, "shrink").await;
        // Two voters now: writes need both.
        c(leader).put("after", "grow", None).await.expect("put");
        assert_eq!(
            value_of(&joined, "after", false).await.as_deref(),
            Some("grow")
        );
        assert_eq!(
            value_of(&joined, "alone19", false).await.as_deref(),
            Some("x")
        );
        for i in 0..3 {
            cluster.kill(i);
        }
    });
}

/// Starts the member added at `peer_url` (a small snapshot count and log
/// tail, so it catches up by snapshot) and waits until it reads `before`
/// as `want`: its index and a client of it.
async fn join_and_catch_up(
    cluster: &mut TestCluster,
    peer_url: &str,
    leader: usize,
    want: &str,
) -> (usize, Client) {
    let n4 = cluster.start_joining(
        peer_url,
        &[
            "--snapshot-count",
            "5",
            "--experimental-snapshot-catchup-entries",
            "5",
        ],
    );
    let joined = cluster.client(n4).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while value_of(&joined, "before", true).await.as_deref() != Some(want) {
        assert!(
            Instant::now() < deadline,
            "the new member never caught up; its log:\n{}\nthe leader's:\n{}",
            cluster.members[n4].log(),
            cluster.members[leader].log()
        );
        qed::runtime::sleep(Duration::from_millis(20)).await;
    }
    (n4, joined)
}
