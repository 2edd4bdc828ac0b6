//! An etcd operator's paths, driven with etcdctl 3.4 through `qed-grpc`
//! (one shim per member, as every etcd box serves 2379): growing a cluster
//! of one with `member add` and the `ETCD_*` lines it prints, moving
//! leadership, and `--cluster` commands.
//!
//! Skips, with the reason printed, when `etcdctl` is not on PATH
//! (`make deps-etcd` installs Debian's). Every wait polls with a deadline.

#![cfg(feature = "grpc")]

mod common;

use common::{free_tcp_port, free_udp_port, on_path, Proc, TempDir};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// One qed member and the qed-grpc in front of it, on the same port
/// number (the node on UDP, the shim on TCP, as `make run` does), so the
/// client URL the member advertises is also its shim's: what `etcdctl
/// --cluster` dials.
struct Member {
    dir: PathBuf,
    /// The client URL: QUIC on UDP, gRPC on TCP.
    client_url: String,
    peer_url: String,
    /// The shim's TCP endpoint, `127.0.0.1:port`.
    endpoint: String,
    node: Option<Proc>,
    shim: Option<Proc>,
}

impl Member {
    fn new(root: &Path, name: &str) -> Member {
        let port = free_tcp_and_udp_port();
        Member {
            dir: root.join(name),
            client_url: format!("http://127.0.0.1:{port}"),
            peer_url: format!("http://127.0.0.1:{}", free_udp_port()),
            endpoint: format!("127.0.0.1:{port}"),
            node: None,
            shim: None,
        }
    }

    /// Starts the node with `args` and `env`, then its shim (once the
    /// node has written its CA).
    fn start(&mut self, args: &[String], env: &[(String, String)]) {
        std::fs::create_dir_all(&self.dir).expect("member dir");
        let log = std::fs::File::create(self.dir.join("qed.log")).expect("log");
        let mut node = Command::new(env!("CARGO_BIN_EXE_qed"));
        node.arg("--data-dir")
            .arg(self.dir.join("data"))
            .args(["--listen-client-urls", &self.client_url])
            .args(["--listen-peer-urls", &self.peer_url])
            .args(["--log-level", "info"])
            .args(args)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log);
        self.node = Some(Proc(node.spawn().expect("spawn qed")));
        let ca = self.dir.join("data/certs/ca.crt");
        wait_until("the node's CA", || ca.exists());
        let log = std::fs::File::create(self.dir.join("qed-grpc.log")).expect("log");
        let shim = Command::new(env!("CARGO_BIN_EXE_qed-grpc"))
            .args(["--endpoints", &self.client_url])
            .arg("--cacert")
            .arg(&ca)
            .args(["--listen-client-urls", &format!("http://{}", self.endpoint)])
            .args(["--log-level", "warn"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn qed-grpc");
        self.shim = Some(Proc(shim));
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("qed.log")).unwrap_or_default()
    }
}

/// A loopback port free for TCP and for UDP a moment ago.
fn free_tcp_and_udp_port() -> u16 {
    for _ in 0..100 {
        let port = free_tcp_port();
        if std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no port free for both TCP and UDP");
}

/// One etcdctl run against `endpoints`: (success, stdout, stderr).
fn etcdctl(endpoints: &str, args: &[&str]) -> (bool, String, String) {
    common::run(
        Command::new("timeout")
            .args(["20", "etcdctl"])
            .arg(format!("--endpoints={endpoints}"))
            .args(["--dial-timeout=3s", "--command-timeout=5s"])
            .args(args)
            .env("ETCDCTL_API", "3")
            .stdin(Stdio::null()),
    )
}

/// Polls `ready` every 100 ms for up to 60 s.
fn wait_until(what: &str, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !ready() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn have_etcdctl() -> bool {
    for tool in ["etcdctl", "timeout"] {
        if !on_path(tool) {
            println!("skipping: `{tool}` is not installed (make deps-etcd)");
            return false;
        }
    }
    true
}

/// `KEY="value"` lines as `etcdctl member add` prints them.
fn etcd_env_lines(out: &str) -> Vec<(String, String)> {
    out.lines()
        .filter_map(|l| l.trim().split_once('='))
        .filter(|(k, _)| k.starts_with("ETCD_"))
        .map(|(k, v)| (k.to_string(), v.trim_matches('"').to_string()))
        .collect()
}

/// `member list` rows: (hex ID, status, name, peer URLs, client URLs).
fn member_rows(endpoint: &str) -> Vec<Vec<String>> {
    let (ok, out, _) = etcdctl(endpoint, &["member", "list"]);
    if !ok {
        return Vec::new();
    }
    out.lines()
        .map(|l| l.split(", ").map(str::to_string).collect())
        .collect()
}

/// `make run`, then `member add n2`, then n2 started with nothing but the
/// lines etcdctl printed (as environment variables) and its listen URLs:
/// two started members that replicate both ways.
#[test]
fn a_cluster_grows_from_one_with_member_add() {
    if !have_etcdctl() {
        return;
    }
    let root = TempDir::new("grow");
    let mut n1 = Member::new(&root.0, "n1");
    let advertise = vec![
        "--initial-advertise-peer-urls".to_string(),
        n1.peer_url.clone(),
    ];
    n1.start(&advertise, &[]);
    wait_until("the first member", || {
        etcdctl(&n1.endpoint, &["put", "before", "1"]).0
    });

    let mut n2 = Member::new(&root.0, "n2");
    let (ok, out, err) = etcdctl(
        &n1.endpoint,
        &[
            "member",
            "add",
            "n2",
            &format!("--peer-urls={}", n2.peer_url),
        ],
    );
    assert!(ok, "member add: {out}{err}");
    let env = etcd_env_lines(&out);
    let names: Vec<&str> = env.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        names,
        [
            "ETCD_NAME",
            "ETCD_INITIAL_CLUSTER",
            "ETCD_INITIAL_ADVERTISE_PEER_URLS",
            "ETCD_INITIAL_CLUSTER_STATE"
        ],
        "{out}"
    );
    n2.start(&[], &env);

    wait_until("two started members", || {
        let rows = member_rows(&n1.endpoint);
        rows.len() == 2
            && rows
                .iter()
                .all(|r| r.get(1).map(String::as_str) == Some("started"))
    });
    let rows = member_rows(&n1.endpoint);
    assert!(
        rows.iter().any(|r| r[2] == "n2" && r[3] == n2.peer_url),
        "{rows:?}\n{}",
        n2.log()
    );
    // A write on the first is read on the second, and the other way.
    wait_until("n2 to serve", || {
        etcdctl(&n2.endpoint, &["get", "before"]).1 == "before\n1\n"
    });
    let (ok, _, err) = etcdctl(&n2.endpoint, &["put", "after", "2"]);
    assert!(ok, "put on n2: {err}");
    assert_eq!(etcdctl(&n1.endpoint, &["get", "after"]).1, "after\n2\n");
}

/// Starts `n` members as one cluster (`--initial-cluster`), a shim each.
fn start_cluster(root: &Path, n: usize) -> Vec<Member> {
    let mut members: Vec<Member> = (1..=n)
        .map(|i| Member::new(root, &format!("n{i}")))
        .collect();
    let initial: Vec<String> = members
        .iter()
        .enumerate()
        .map(|(i, m)| format!("n{}={}", i + 1, m.peer_url))
        .collect();
    let initial = initial.join(",");
    for (i, m) in members.iter_mut().enumerate() {
        let args = [
            "--name".to_string(),
            format!("n{}", i + 1),
            "--initial-advertise-peer-urls".into(),
            m.peer_url.clone(),
            "--initial-cluster".into(),
            initial.clone(),
            "--initial-cluster-token".into(),
            "operator-test".into(),
        ];
        m.start(&args, &[]);
    }
    members
}

/// `endpoint status` rows: (endpoint, member ID, is leader).
fn status_rows(endpoints: &str, cluster: bool) -> Vec<(String, String, bool)> {
    let mut args = vec!["endpoint", "status"];
    if cluster {
        args.push("--cluster");
    }
    let (ok, out, _) = etcdctl(endpoints, &args);
    if !ok {
        return Vec::new();
    }
    out.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(", ").collect();
            Some((
                f.first()?.to_string(),
                f.get(1)?.to_string(),
                *f.get(4)? == "true",
            ))
        })
        .collect()
}

/// A shim per member and each member advertising its shim's URL:
/// `--cluster` reaches every member, and `move-leader` moves leadership
/// to the member named, with etcd's errors for a bad transferee.
#[test]
fn cluster_commands_and_move_leader_through_a_shim_per_member() {
    if !have_etcdctl() {
        return;
    }
    let root = TempDir::new("ops3");
    let members = start_cluster(&root.0, 3);
    let first = members[0].endpoint.clone();
    wait_until("a leader and three members in status --cluster", || {
        let rows = status_rows(&first, true);
        rows.len() == 3 && rows.iter().filter(|r| r.2).count() == 1
    });
    let (ok, table, err) = etcdctl(&first, &["endpoint", "status", "--cluster", "-w", "table"]);
    assert!(ok, "{err}");
    for m in &members {
        assert!(table.contains(&m.client_url), "{table}");
    }
    // The etcd API version, as etcd 3.4 reports it.
    assert_eq!(table.matches(" 3.4.23 |").count(), 3, "{table}");
    for command in [
        &["endpoint", "health", "--cluster"][..],
        &["endpoint", "hashkv", "--cluster"],
        &["defrag", "--cluster"],
    ] {
        let (ok, out, err) = etcdctl(&first, command);
        assert!(ok, "etcdctl {command:?}: {out}{err}");
        // endpoint health reports on stderr.
        let lines = out.lines().chain(err.lines());
        let reached = lines.filter(|l| members.iter().any(|m| l.contains(&m.client_url)));
        assert_eq!(reached.count(), 3, "etcdctl {command:?}: {out}{err}");
    }

    let all: Vec<&str> = members.iter().map(|m| m.endpoint.as_str()).collect();
    let all = all.join(",");
    let rows = status_rows(&all, false);
    let leader = rows.iter().find(|r| r.2).expect("a leader").1.clone();
    let target = rows.iter().find(|r| !r.2).expect("a follower").1.clone();
    let (ok, out, err) = etcdctl(&all, &["move-leader", &target]);
    assert!(ok, "move-leader: {out}{err}");
    assert_eq!(
        out.trim(),
        format!("Leadership transferred from {leader} to {target}")
    );
    wait_until("the new leader in endpoint status", || {
        status_rows(&all, false)
            .iter()
            .any(|r| r.2 && r.1 == target)
    });
    // etcd's errors: an unknown member; a call that reaches no leader.
    let (ok, _, err) = etcdctl(&all, &["move-leader", "1234"]);
    assert!(!ok);
    assert!(err.contains("etcdserver: bad leader transferee"), "{err}");
    let follower = status_rows(&all, false)
        .into_iter()
        .find(|r| !r.2)
        .expect("a follower");
    let (ok, _, err) = etcdctl(&follower.0, &["move-leader", &leader]);
    assert!(!ok);
    assert!(err.contains("no leader endpoint given"), "{err}");
    // Asked of a follower directly: etcd's `not leader`.
    let follower = members
        .iter()
        .find(|m| m.endpoint == follower.0)
        .expect("the follower's member");
    let target_id = u64::from_str_radix(&target, 16).expect("hex id");
    let answer = qed::runtime::block_on(async {
        let options = qed::client::ConnectOptions {
            ca_file: Some(follower.dir.join("data/certs/ca.crt")),
            ..Default::default()
        };
        let c = qed::client::Client::connect(std::slice::from_ref(&follower.client_url), options)
            .await
            .expect("connect to the follower");
        c.call(qed::wire::Request::MoveLeader(
            qed::wire::maintenance::MoveLeaderRequest { target_id },
        ))
        .await
    });
    match answer {
        Err(qed::client::ClientError::Server(e)) => {
            assert_eq!(e.to_string(), "etcdserver: not leader")
        }
        other => panic!("MoveLeader at a follower answered {other:?}"),
    }
    // A learner cannot lead.
    let learner_url = format!("http://127.0.0.1:{}", free_udp_port());
    let (ok, out, err) = etcdctl(
        &all,
        &[
            "member",
            "add",
            "l1",
            "--learner",
            &format!("--peer-urls={learner_url}"),
        ],
    );
    assert!(ok, "member add --learner: {out}{err}");
    let learner = member_rows(&all)
        .into_iter()
        .find(|r| r.last().map(String::as_str) == Some("true"))
        .expect("the learner in member list")[0]
        .clone();
    let (ok, _, err) = etcdctl(&all, &["move-leader", &learner]);
    assert!(!ok);
    assert!(err.contains("etcdserver: bad leader transferee"), "{err}");
}

/// MemberUpdate moves a member to another peer URL under the same ID:
/// restarted there (its other flags as before, `--initial-cluster`
/// included, which a restart does not read for its ID), it is the same
/// member with the same data, and replication goes on.
#[test]
fn member_update_then_restart_on_the_new_address_keeps_id_and_data() {
    if !have_etcdctl() {
        return;
    }
    let root = TempDir::new("update");
    let mut members = start_cluster(&root.0, 3);
    let first = members[0].endpoint.clone();
    wait_until("the cluster", || etcdctl(&first, &["put", "before", "1"]).0);
    let rows = member_rows(&first);
    let n3 = rows
        .iter()
        .find(|r| r.get(2).map(String::as_str) == Some("n3"))
        .expect("n3 in member list")[0]
        .clone();
    let new_url = format!("http://127.0.0.1:{}", free_udp_port());
    let (ok, out, err) = etcdctl(
        &first,
        &["member", "update", &n3, &format!("--peer-urls={new_url}")],
    );
    assert!(ok, "member update: {out}{err}");
    // etcdctl pads IDs to 16 columns (`%16x`).
    let words: Vec<&str> = out.split_whitespace().collect();
    assert_eq!(
        words.join(" "),
        format!("Member {n3} updated in cluster {}", {
            let (_, status, _) = etcdctl(&first, &["endpoint", "status", "-w", "json"]);
            let at = status.find("\"cluster_id\":").expect("cluster_id") + 13;
            let digits: String = status[at..]
                .chars()
                .take_while(char::is_ascii_digit)
                .collect();
            format!("{:x}", digits.parse::<u64>().expect("cluster id"))
        })
    );
    // etcd's errors: an unknown member, a URL another member has.
    let (ok, _, err) = etcdctl(
        &first,
        &["member", "update", "1234", "--peer-urls=http://127.0.0.1:1"],
    );
    assert!(!ok && err.contains("etcdserver: member not found"), "{err}");
    let taken = format!("--peer-urls={}", members[0].peer_url);
    let (ok, _, err) = etcdctl(&first, &["member", "update", &n3, &taken]);
    assert!(
        !ok && err.contains("etcdserver: Peer URLs already exists"),
        "{err}"
    );

    // Restart n3 on the new address.
    let m3 = &mut members[2];
    m3.shim = None;
    m3.node = None;
    let initial: Vec<String> = rows.iter().map(|r| format!("{}={}", r[2], r[3])).collect();
    m3.peer_url = new_url.clone();
    let args = [
        "--name".to_string(),
        "n3".into(),
        "--initial-advertise-peer-urls".into(),
        new_url.clone(),
        "--initial-cluster".into(),
        initial.join(","),
        "--initial-cluster-token".into(),
        "operator-test".into(),
    ];
    m3.start(&args, &[]);
    let n3_endpoint = m3.endpoint.clone();
    wait_until("n3 started at its new URL under its old ID", || {
        member_rows(&first)
            .iter()
            .any(|r| r[0] == n3 && r[1] == "started" && r[3] == new_url)
    });
    wait_until("n3 to serve its old data", || {
        etcdctl(&n3_endpoint, &["get", "before"]).1 == "before\n1\n"
    });
    let (ok, _, err) = etcdctl(&first, &["put", "after", "2"]);
    assert!(ok, "{err}");
    wait_until("n3 to replicate a new write", || {
        etcdctl(&n3_endpoint, &["get", "after", "--consistency=s"]).1 == "after\n2\n"
    });
    assert_eq!(member_rows(&first).len(), 3);
}

/// etcd's `--max-request-bytes` and `--max-txn-ops` on the node, with
/// etcd's errors; raised, a txn past etcd's default of 128 ops applies.
#[test]
fn request_limits_are_the_nodes_flags() {
    use qed::wire::kv::{PutRequest, RequestOp, TxnRequest};
    use qed::wire::{Error, Request};
    let put = |key: String, size: usize| PutRequest {
        key: key.into_bytes(),
        value: vec![b'v'; size],
        ..Default::default()
    };
    let txn = |n: usize| {
        Request::Txn(TxnRequest {
            success: (0..n)
                .map(|i| RequestOp::Put(put(format!("t{i}"), 1)))
                .collect(),
            ..Default::default()
        })
    };
    let server_error = |r: Result<qed::wire::Response, qed::client::ClientError>| match r {
        Err(qed::client::ClientError::Server(e)) => Some(e),
        _ => None,
    };
    let small = common::TestNode::start(&["--max-request-bytes", "4096", "--max-txn-ops", "3"]);
    qed::runtime::block_on(async {
        let c = small.client().await;
        assert!(c.call(txn(3)).await.is_ok());
        assert_eq!(server_error(c.call(txn(4)).await), Some(Error::TooManyOps));
        assert_eq!(
            Error::TooManyOps.to_string(),
            "etcdserver: too many operations in txn request"
        );
        assert!(c.call(Request::Put(put("a".into(), 1000))).await.is_ok());
        let big = c.call(Request::Put(put("a".into(), 5000))).await;
        assert_eq!(server_error(big), Some(Error::RequestTooLarge));
        assert_eq!(
            Error::RequestTooLarge.to_string(),
            "etcdserver: request is too large"
        );
    });
    let large = common::TestNode::start(&["--max-txn-ops", "500"]);
    qed::runtime::block_on(async {
        let c = large.client().await;
        assert!(c.call(txn(300)).await.is_ok());
        assert_eq!(
            server_error(c.call(txn(501)).await),
            Some(Error::TooManyOps)
        );
    });
    // Above the 2 MiB a client sends by default: the node's flag and the
    // client's max_call_send_bytes are raised together, as with etcd's
    // --max-request-bytes and clientv3's MaxCallSendMsgSize.
    let roomy = common::TestNode::start(&["--max-request-bytes", "4194304"]);
    qed::runtime::block_on(async {
        let default_client = roomy.client().await;
        let three_mib = Request::Put(put("b".into(), 3 << 20));
        assert_eq!(
            server_error(default_client.call(three_mib.clone()).await),
            Some(Error::RequestTooLarge)
        );
        let options = qed::client::ConnectOptions {
            ca_file: Some(roomy.ca_file()),
            max_call_send_bytes: 5 << 20,
            ..Default::default()
        };
        let c = qed::client::Client::connect(std::slice::from_ref(&roomy.url), options)
            .await
            .expect("connect with a larger send limit");
        assert!(c.call(three_mib).await.is_ok());
        let over = Request::Put(put("b".into(), (4 << 20) + 1000));
        assert_eq!(
            server_error(c.call(over).await),
            Some(Error::RequestTooLarge)
        );
    });
}
