//! Migration both ways against Debian's etcd 3.4, as an operator does it.
//!
//! etcd → qed: fill etcd (puts, overwrites, deletes, a compaction, leases
//! with keys, users and roles, auth enabled), `etcdctl snapshot save`, `qed
//! snapshot restore`, start qed behind `qed-grpc`: every read etcdctl makes
//! of both matches (all keys at every revision since the compaction, with
//! values, create/mod revisions, versions and leases; the compacted
//! revisions refused alike; lease IDs, granted TTLs and attached keys; users
//! and roles; a user's password and permissions work the same).
//!
//! qed → etcd: the same fill of qed, `etcdctl snapshot save` through the
//! shim, `etcdctl snapshot status` (revision and key count), `etcdctl
//! snapshot restore`, start etcd on it: the same comparison.
//!
//! Skips, with the reason printed, when `etcd` or `etcdctl` is missing.

#![cfg(feature = "grpc")]

mod common;

use common::{free_tcp_port, free_udp_port, on_path, Proc, TempDir};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn have_tools() -> bool {
    for tool in ["etcd", "etcdctl"] {
        if !on_path(tool) {
            println!("skipping etcd migration test: `{tool}` is not installed (make deps-etcd)");
            return false;
        }
    }
    true
}

fn spawn(cmd: &mut Command, log: &Path) -> Proc {
    let log = std::fs::File::create(log).expect("log file");
    let err = log.try_clone().expect("log file");
    Proc(
        cmd.stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .expect("spawn"),
    )
}

/// etcdctl aimed at one endpoint, as one user (once auth is on).
#[derive(Clone)]
struct Ctl {
    endpoint: String,
    user: Option<String>,
}

impl Ctl {
    fn new(endpoint: String) -> Ctl {
        Ctl {
            endpoint,
            user: None,
        }
    }

    fn as_user(&self, user: &str) -> Ctl {
        Ctl {
            endpoint: self.endpoint.clone(),
            user: Some(user.to_string()),
        }
    }

    /// One etcdctl run: (success, stdout, stderr).
    fn run(&self, args: &[&str]) -> (bool, String, String) {
        let mut cmd = Command::new("etcdctl");
        cmd.arg(format!("--endpoints={}", self.endpoint))
            .args(["--dial-timeout=3s", "--command-timeout=20s"]);
        if let Some(user) = &self.user {
            cmd.arg(format!("--user={user}"));
        }
        common::run(cmd.args(args).env("ETCDCTL_API", "3").stdin(Stdio::null()))
    }

    fn ok(&self, args: &[&str]) -> String {
        let (success, out, err) = self.run(args);
        assert!(success, "etcdctl {args:?} at {}: {err}", self.endpoint);
        out
    }

    /// The last line etcdctl wrote to stderr for a call that must fail.
    fn fails(&self, args: &[&str]) -> String {
        let (success, _, err) = self.run(args);
        assert!(!success, "etcdctl {args:?} at {} succeeded", self.endpoint);
        err.lines().last().unwrap_or_default().to_string()
    }
}

fn wait_ready(endpoint: &str, what: &str, log: &Path) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        // Any answer from the server counts: with auth on, an anonymous
        // get is refused, but by a server that is up.
        let (success, _, err) = Ctl::new(endpoint.to_string()).run(&["get", "readiness-probe"]);
        let success = success || err.contains("user name is empty");
        if success {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what} did not become ready: {err}\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn start_etcd(data_dir: &Path, log: &Path) -> (Proc, String) {
    let (client, peer) = (free_tcp_port(), free_tcp_port());
    let client_url = format!("http://127.0.0.1:{client}");
    let peer_url = format!("http://127.0.0.1:{peer}");
    let proc = spawn(
        Command::new("etcd")
            .args(["--name", "mig"])
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--listen-client-urls", &client_url])
            .args(["--advertise-client-urls", &client_url])
            .args(["--listen-peer-urls", &peer_url])
            .args(["--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &format!("mig={peer_url}")]),
        log,
    );
    let endpoint = format!("127.0.0.1:{client}");
    wait_ready(&endpoint, "etcd", log);
    (proc, endpoint)
}

/// A qed node on `data_dir` and its gRPC shim: (node, shim, endpoint).
fn start_qed(data_dir: &Path, logs: &Path) -> (Proc, Proc, String) {
    let quic_url = format!("https://127.0.0.1:{}", free_udp_port());
    let node_log = logs.join("qed.log");
    let node = spawn(
        Command::new(env!("CARGO_BIN_EXE_qed"))
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--listen-client-urls", &quic_url, "--log-level", "warn"]),
        &node_log,
    );
    let ca = data_dir.join("certs/ca.crt");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ca.exists() {
        assert!(Instant::now() < deadline, "qed did not create its CA");
        std::thread::sleep(Duration::from_millis(20));
    }
    let port = free_tcp_port();
    let shim = spawn(
        Command::new(env!("CARGO_BIN_EXE_qed-grpc"))
            .args(["--endpoints", &quic_url])
            .arg("--cacert")
            .arg(&ca)
            .args(["--listen-client-urls", &format!("http://127.0.0.1:{port}")])
            .args(["--log-level", "warn"]),
        &logs.join("qed-grpc.log"),
    );
    let endpoint = format!("127.0.0.1:{port}");
    wait_ready(&endpoint, "qed", &node_log);
    (node, shim, endpoint)
}

/// The same history on either store: overwrites, deletes, a compaction,
/// more history after it, two leases (one with keys, one without), users
/// and roles, then auth enabled. Returns the compaction revision and the
/// root user's etcdctl.
fn fill(c: &Ctl) -> (i64, Ctl) {
    for i in 0..12 {
        c.ok(&["put", &format!("key{i:02}"), &format!("v{i}")]);
    }
    c.ok(&["put", "key01", "v1-second"]);
    c.ok(&["put", "key02", "v2-second"]);
    c.ok(&["del", "key03"]);
    c.ok(&["del", "key04"]);
    c.ok(&["put", "key04", "reborn"]);
    let compact_at = revision(c) - 2;
    c.ok(&["compact", &compact_at.to_string()]);
    c.ok(&["put", "key01", "v1-third"]);
    c.ok(&["del", "key05", "key07"]);
    c.ok(&["put", "big", &"x".repeat(10_000)]);
    let lease = lease_id(&c.ok(&["lease", "grant", "600"]));
    c.ok(&["put", "leased/a", "1", &format!("--lease={lease}")]);
    c.ok(&["put", "leased/b", "2", &format!("--lease={lease}")]);
    c.ok(&["put", "leased/a", "1b", &format!("--lease={lease}")]);
    lease_id(&c.ok(&["lease", "grant", "900"]));
    c.ok(&["user", "add", "root:rootpw"]);
    c.ok(&["user", "add", "alice:secret"]);
    c.ok(&["role", "add", "readers"]);
    c.ok(&[
        "role",
        "grant-permission",
        "readers",
        "read",
        "key",
        "--prefix",
    ]);
    c.ok(&[
        "role",
        "grant-permission",
        "readers",
        "readwrite",
        "leased/a",
    ]);
    c.ok(&["user", "grant-role", "alice", "readers"]);
    c.ok(&["auth", "enable"]);
    (compact_at, c.as_user("root:rootpw"))
}

/// "lease 694d77aa9d6e8d0b granted with TTL(600s)" → the hex ID.
fn lease_id(grant: &str) -> String {
    grant
        .split_whitespace()
        .nth(1)
        .unwrap_or_else(|| panic!("lease grant said {grant:?}"))
        .to_string()
}

/// The integer after `"name":` in etcdctl's JSON.
fn json_int(json: &str, name: &str) -> i64 {
    let pat = format!("\"{name}\":");
    let at = json
        .find(&pat)
        .unwrap_or_else(|| panic!("no {name} in {json}"))
        + pat.len();
    json[at..]
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '-')
        .collect::<String>()
        .parse()
        .unwrap_or_else(|_| panic!("bad {name} in {json}"))
}

fn revision(c: &Ctl) -> i64 {
    json_int(&c.ok(&["get", "x", "-w", "json"]), "revision")
}

/// A range answer without its header (cluster and member IDs, raft term).
fn body(json: &str) -> String {
    let header_end = json.find("},").map(|i| i + 2).unwrap_or(json.len());
    let mut out = json[header_end..].trim().to_string();
    out.insert_str(0, &format!("revision={} ", json_int(json, "revision")));
    out
}

/// What etcdctl says about every lease: ID, granted TTL, attached keys.
fn leases(c: &Ctl) -> Vec<String> {
    let list = c.ok(&["lease", "list"]);
    let mut ids: Vec<String> = list
        .lines()
        .skip(1)
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
        .collect();
    ids.sort();
    ids.iter()
        .map(|id| {
            let ttl = c.ok(&["lease", "timetolive", id, "--keys", "-w", "json"]);
            // etcd lists attached keys in map order: compare them sorted.
            let mut keys: Vec<&str> = ttl
                .split("\"keys\":[")
                .nth(1)
                .and_then(|rest| rest.split(']').next())
                .map(|list| list.split(',').collect())
                .unwrap_or_default();
            keys.sort();
            format!(
                "{id} granted {} keys {keys:?}",
                json_int(&ttl, "granted-ttl")
            )
        })
        .collect()
}

/// Asserts that `got` answers every read as `want` does (both as root).
fn compare(want: &Ctl, got: &Ctl, compact_at: i64, what: &str) {
    let current = revision(want);
    assert_eq!(revision(got), current, "{what}: current revision");
    for rev in compact_at..=current {
        let args = ["get", "", "--prefix", "-w", "json", &format!("--rev={rev}")];
        let (w, g) = (want.ok(&args), got.ok(&args));
        assert_eq!(body(&g), body(&w), "{what}: everything at revision {rev}");
    }
    let below = ["get", "", "--prefix", &format!("--rev={}", compact_at - 1)];
    assert_eq!(
        got.fails(&below),
        want.fails(&below),
        "{what}: compacted read"
    );
    assert_eq!(leases(got), leases(want), "{what}: leases");
    for args in [
        &["user", "list"][..],
        &["role", "list"],
        &["user", "get", "alice"],
        &["user", "get", "root"],
        &["role", "get", "readers"],
        &["auth", "status"],
    ] {
        assert_eq!(got.ok(args), want.ok(args), "{what}: etcdctl {args:?}");
    }
    // alice's password and permissions came along.
    let (w, g) = (want.as_user("alice:secret"), got.as_user("alice:secret"));
    let read = ["get", "key", "--prefix", "--keys-only"];
    assert_eq!(g.ok(&read), w.ok(&read), "{what}: alice reads");
    let write = ["put", "key01", "nope"];
    assert_eq!(
        g.fails(&write),
        w.fails(&write),
        "{what}: alice may not write"
    );
    let wrong = want.as_user("alice:wrong");
    assert_eq!(
        got.as_user("alice:wrong").fails(&read),
        wrong.fails(&read),
        "{what}: wrong password"
    );
}

#[test]
fn etcd_snapshot_restores_into_qed() {
    if !have_tools() {
        return;
    }
    let work = TempDir::new("etcd-to-qed");
    let (_etcd, etcd) = start_etcd(&work.0.join("etcd"), &work.0.join("etcd.log"));
    let (compact_at, etcd) = fill(&Ctl::new(etcd));
    let snap = work.0.join("etcd.snap");
    etcd.ok(&["snapshot", "save", &snap.display().to_string()]);

    let data = work.0.join("qed");
    let out = Command::new(env!("CARGO_BIN_EXE_qed"))
        .args(["snapshot", "restore"])
        .arg(&snap)
        .arg("--data-dir")
        .arg(&data)
        .output()
        .expect("run qed snapshot restore");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "restore: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("etcd v3") && stdout.contains("2 leases, 2 users"),
        "restore summary: {stdout}"
    );
    let (_node, _shim, qed) = start_qed(&data, &work.0);
    compare(
        &etcd,
        &Ctl::new(qed).as_user("root:rootpw"),
        compact_at,
        "qed restored from etcd",
    );
}

#[test]
fn qed_snapshot_restores_into_etcd() {
    if !have_tools() {
        return;
    }
    let work = TempDir::new("qed-to-etcd");
    let (_node, _shim, qed) = start_qed(&work.0.join("qed"), &work.0);
    let (compact_at, qed) = fill(&Ctl::new(qed));
    let snap = work.0.join("qed.snap");
    let snap_s = snap.display().to_string();
    qed.ok(&["snapshot", "save", &snap_s]);

    let status = qed.ok(&["snapshot", "status", &snap_s, "-w", "json"]);
    assert_eq!(json_int(&status, "revision"), revision(&qed), "{status}");
    let bytes = std::fs::read(&snap).unwrap();
    let imported = qed::etcd_db::import(&bytes).unwrap();
    // Every entry of every bucket: the key bucket's changes, the leases,
    // users and roles, three meta entries (consistent index, finished and
    // scheduled compaction) and two auth entries (enabled flag, revision).
    let c = imported.counts;
    let entries = c.revisions + c.leases + c.users + c.roles + 3 + 2;
    assert_eq!(json_int(&status, "totalKey"), entries as i64, "{status}");

    let etcd_data = work.0.join("etcd");
    let peer = format!("http://127.0.0.1:{}", free_tcp_port());
    qed.ok(&[
        "snapshot",
        "restore",
        &snap_s,
        "--data-dir",
        &etcd_data.display().to_string(),
        "--name",
        "mig",
        "--initial-cluster",
        &format!("mig={peer}"),
        "--initial-advertise-peer-urls",
        &peer,
    ]);
    let client = format!("http://127.0.0.1:{}", free_tcp_port());
    let log = work.0.join("etcd.log");
    let _etcd = spawn(
        Command::new("etcd")
            .args(["--name", "mig"])
            .arg("--data-dir")
            .arg(&etcd_data)
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("mig={peer}")]),
        &log,
    );
    let etcd = client.trim_start_matches("http://").to_string();
    wait_ready(&etcd, "etcd restored from qed", &log);
    let etcd = Ctl::new(etcd).as_user("root:rootpw");
    compare(&qed, &etcd, compact_at, "etcd restored from qed");
    // etcd writes into the tree we wrote, and defrag rewrites all of it
    // through bbolt's own cursor.
    etcd.ok(&["put", "after-restore", "ok"]);
    etcd.ok(&["defrag"]);
    let got = etcd.ok(&["get", "after-restore", "--print-value-only"]);
    assert_eq!(got.trim(), "ok");
    let all = ["get", "", "--prefix", "--keys-only", "-w", "json"];
    let (before, after) = (qed.ok(&all), etcd.ok(&all));
    assert_eq!(json_int(&after, "count"), json_int(&before, "count") + 1);
}
