//! Differential test: the same script of etcdctl 3.4 commands against a
//! fresh etcd 3.4 and against a fresh qed node behind `qed-grpc`.
//!
//! Each command's stdout, stderr and exit status are compared after
//! normalizing only what legitimately differs between two clusters: cluster,
//! member and lease IDs, raft terms and indexes, versions, sizes, hashes,
//! timings, ports and etcdctl's client-side retry log lines. Every command
//! must match, auth included (users, roles, permissions on keys, ranges,
//! prefixes and from-key, `--user u:p` and `--user u --password p`, wrong
//! passwords, a reader denied on get/put/del/txn/watch/lock/lease/
//! maintenance/user/role calls, revokes taking effect at once). The test
//! prints every mismatch and the counts.
//!
//! Skips, with the reason printed, when `etcd` or `etcdctl` is not on PATH
//! (`make deps-etcd` installs Debian's). `QED_ETCDCTL_DIFF_REPORT_ONLY=1`
//! prints the report without failing; `QED_ETCDCTL_DIFF_VERBOSE=1` prints
//! etcd's normalized output of every command. Throughput against etcd is
//! `make bench`'s job (`bench/compare.sh`).

#![cfg(feature = "grpc")]

mod common;

use common::{free_tcp_port, free_udp_port, on_path, Proc};

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// etcdctl's credentials flags for the auth steps.
const ROOT: &str = "--user=root:rootpw";
const ALICE: &str = "--user=alice:alicepw";

struct Step {
    args: &'static [&'static str],
    stdin: Option<&'static str>,
    /// Kill the command after this long (watch, elect run forever).
    run_for: Option<Duration>,
}

const fn cmd(args: &'static [&'static str]) -> Step {
    Step {
        args,
        stdin: None,
        run_for: None,
    }
}

const fn txn(stdin: &'static str, args: &'static [&'static str]) -> Step {
    Step {
        args,
        stdin: Some(stdin),
        run_for: None,
    }
}

const fn timed(args: &'static [&'static str], secs: u64) -> Step {
    Step {
        args,
        stdin: None,
        run_for: Some(Duration::from_secs(secs)),
    }
}

fn script() -> Vec<Step> {
    vec![
        // ---- put / get and their flags
        cmd(&["put", "foo", "bar"]),
        cmd(&["get", "foo"]),
        cmd(&["get", "foo", "-w", "json"]),
        cmd(&["get", "foo", "-w", "fields"]),
        cmd(&["put", "foo", "baz", "--prev-kv"]),
        cmd(&["put", "foo", "qux", "--prev-kv", "-w", "json"]),
        cmd(&["put", "foo2", "bar2"]),
        cmd(&["put", "foo3", "bar3"]),
        cmd(&["put", "zoo", "animal"]),
        cmd(&["put", "a", "1"]),
        cmd(&["get", "foo", "--prefix"]),
        cmd(&["get", "foo", "--prefix", "--keys-only"]),
        cmd(&["get", "foo", "--prefix", "--print-value-only"]),
        cmd(&["get", "foo", "--prefix", "--count-only", "-w", "json"]),
        cmd(&["get", "foo", "--prefix", "--count-only", "-w", "fields"]),
        cmd(&["get", "foo", "--prefix", "--limit", "2"]),
        cmd(&["get", "foo", "--prefix", "--limit", "2", "-w", "json"]),
        cmd(&["get", "foo", "--from-key"]),
        cmd(&["get", "b", "--from-key", "--keys-only"]),
        cmd(&["get", "foo", "foo3"]),
        cmd(&["get", "", "--prefix"]),
        cmd(&["get", "foo", "--prefix", "--sort-by=MODIFY", "--order=DESCEND"]),
        cmd(&["get", "foo", "--prefix", "--sort-by=VALUE", "--order=ASCEND"]),
        cmd(&["get", "foo", "--prefix", "--sort-by=CREATE", "--order=DESCEND"]),
        cmd(&["get", "foo", "--prefix", "--sort-by=VERSION", "--order=DESCEND"]),
        cmd(&["get", "foo", "--prefix", "--order=DESCEND"]),
        cmd(&["get", "foo", "--rev=2"]),
        cmd(&["get", "foo", "--rev=3", "-w", "json"]),
        cmd(&["get", "foo", "--rev=100"]),
        cmd(&["get", "nosuchkey"]),
        cmd(&["get", "nosuchkey", "-w", "json"]),
        cmd(&["get", "foo", "--consistency=s"]),
        cmd(&["put", "zoo", "--ignore-value"]),
        cmd(&["put", "newkey", "--ignore-value"]),
        cmd(&["put", "", "x"]),
        cmd(&["put", "foo", "x", "--lease=1234"]),
        // ---- delete
        cmd(&["del", "foo3", "--prev-kv"]),
        cmd(&["del", "nothing"]),
        cmd(&["del", "foo", "--prefix", "-w", "json"]),
        cmd(&["get", "foo", "--prefix", "-w", "json"]),
        cmd(&["put", "foo", "again"]),
        cmd(&["get", "foo", "-w", "json"]),
        // ---- txn via stdin
        txn("mod(\"zoo\") > \"0\"\n\nput zoo lion\n\nput zoo tiger\n\n", &["txn"]),
        txn(
            "value(\"zoo\") = \"lion\"\n\nget zoo\nput zoo cat\n\ndel zoo\n\n",
            &["txn", "-w", "json"],
        ),
        txn(
            "version(\"nokey\") = \"0\"\ncreate(\"zoo\") > \"1\"\n\nput nokey v\nget nokey\n\nget zoo\n\n",
            &["txn"],
        ),
        txn("value(\"zoo\") != \"cat\"\n\nput t1 x\n\nput t2 y\n\n", &["txn"]),
        txn("\n\nput dup 1\nput dup 2\n\n\n", &["txn"]),
        txn("\n\nget zoo --prefix\ndel nokey\n\n\n", &["txn", "-w", "fields"]),
        cmd(&["get", "", "--prefix", "-w", "json"]),
        txn(too_many_ops(), &["txn"]),
        // ---- limits: etcd's 1.5 MiB request and 2 MiB gRPC message caps
        txn(leak("v".repeat(1024 * 1024)), &["put", "big"]),
        txn(leak("v".repeat(1600 * 1024)), &["put", "big"]),
        txn(leak("v".repeat(2200 * 1024)), &["put", "big"]),
        cmd(&["get", "big", "--keys-only"]),
        cmd(&["del", "big"]),
        // ---- more output formats and flags
        cmd(&["get", "foo", "--hex"]),
        cmd(&["put", "dash", "--", "-v"]),
        cmd(&["get", "dash", "-w", "fields"]),
        cmd(&["get", "", "--prefix", "--keys-only", "--limit", "1", "-w", "json"]),
        cmd(&["get", "", "--prefix", "--sort-by=KEY", "--order=DESCEND", "--limit", "2"]),
        cmd(&["put", "foo", "bar", "-w", "json"]),
        cmd(&["del", "dash", "-w", "fields"]),
        cmd(&["del", "t", "--from-key", "--prev-kv"]),
        // ---- compaction and revision errors
        cmd(&["compaction", "3"]),
        cmd(&["get", "foo", "--rev=2"]),
        cmd(&["compaction", "2"]),
        cmd(&["compaction", "--physical", "5"]),
        cmd(&["get", "foo", "--rev=5"]),
        cmd(&["compaction", "1000"]),
        cmd(&["get", "zoo", "-w", "json"]),
        // ---- maintenance
        cmd(&["endpoint", "health"]),
        cmd(&["endpoint", "status"]),
        cmd(&["endpoint", "status", "-w", "json"]),
        cmd(&["endpoint", "hashkv"]),
        cmd(&["alarm", "list"]),
        cmd(&["defrag"]),
        cmd(&["snapshot", "save", "SNAPSHOT"]),
        // ---- membership and leadership errors
        cmd(&["move-leader", "1234"]),
        cmd(&["member", "update", "1234", "--peer-urls=http://127.0.0.1:1"]),
        cmd(&["member", "update", "1234", "--peer-urls=not-a-url"]),
        // ---- watch
        timed(&["watch", "foo", "--rev=1"], 2),
        timed(&["watch", "--prefix", "foo", "--rev=1", "--prev-kv"], 2),
        // ---- lease
        cmd(&["lease", "grant", "60"]),
        cmd(&["lease", "list"]),
        cmd(&["lease", "timetolive", "1234"]),
        cmd(&["lease", "keep-alive", "--once", "1234"]),
        cmd(&["lease", "revoke", "1234"]),
        // ---- cluster
        cmd(&["member", "list"]),
        cmd(&["member", "list", "-w", "json"]),
        // ---- auth: users, roles, permissions on a key, a range, a prefix
        // and from a key; then the same calls as root, as a reader, with a
        // wrong password, without credentials; revokes take effect at once.
        cmd(&["auth", "enable"]),
        cmd(&["user", "add", "root", "--new-user-password=rootpw"]),
        cmd(&["user", "add", "alice", "--new-user-password=alicepw"]),
        cmd(&["user", "add", "alice", "--new-user-password=again"]),
        cmd(&["user", "add", "bob", "--no-password"]),
        cmd(&["role", "add", "reader"]),
        cmd(&["role", "add", "reader"]),
        cmd(&["role", "grant-permission", "reader", "read", "foo"]),
        cmd(&["role", "grant-permission", "reader", "readwrite", "--prefix", "pre/"]),
        cmd(&["role", "grant-permission", "reader", "write", "range1", "range5"]),
        cmd(&["role", "grant-permission", "reader", "read", "--from-key", "zz"]),
        cmd(&["role", "grant-permission", "reader", "write", "foo"]),
        cmd(&["role", "grant-permission", "nosuchrole", "read", "foo"]),
        cmd(&["role", "get", "reader"]),
        cmd(&["role", "get", "nosuchrole"]),
        cmd(&["user", "grant-role", "alice", "reader"]),
        cmd(&["user", "grant-role", "alice", "nosuchrole"]),
        cmd(&["user", "grant-role", "nobody", "reader"]),
        cmd(&["user", "get", "alice"]),
        cmd(&["user", "get", "nobody"]),
        cmd(&["user", "list"]),
        cmd(&["role", "list"]),
        cmd(&["user", "revoke-role", "alice", "nosuchrole"]),
        cmd(&["role", "revoke-permission", "reader", "nokey"]),
        // etcdctl adds the root role and grants it to root when enabling
        // finds it missing.
        cmd(&["auth", "enable"]),
        cmd(&["auth", "enable"]),
        cmd(&["put", "foo", "denied"]),
        cmd(&["get", "foo"]),
        cmd(&[ROOT, "put", "foo", "root"]),
        cmd(&[ROOT, "put", "secret", "s"]),
        cmd(&[ALICE, "get", "foo"]),
        cmd(&[ALICE, "put", "foo", "x"]),
        cmd(&[ALICE, "put", "pre/a", "1"]),
        cmd(&["--user=alice", "--password=alicepw", "put", "pre/b", "2", "--prev-kv"]),
        cmd(&[ALICE, "get", "pre/", "--prefix"]),
        cmd(&[ALICE, "get", "pre/", "--from-key"]),
        cmd(&[ALICE, "get", "zz", "--from-key"]),
        cmd(&[ALICE, "get", "zzz"]),
        cmd(&[ALICE, "get", "secret"]),
        cmd(&[ALICE, "get", "", "--prefix"]),
        cmd(&[ALICE, "put", "range2", "w"]),
        cmd(&[ALICE, "put", "range2", "w", "--prev-kv"]),
        cmd(&[ALICE, "del", "range1", "range5"]),
        cmd(&[ALICE, "del", "range1", "range6"]),
        cmd(&[ALICE, "del", "foo"]),
        txn("\n\nput pre/t 1\n\n\n", &[ALICE, "txn"]),
        txn("value(\"secret\") = \"s\"\n\nput pre/t 2\n\n\n", &[ALICE, "txn"]),
        txn("\n\nget pre/t\n\nput secret x\n\n", &[ALICE, "txn"]),
        cmd(&["--user=alice:wrong", "get", "foo"]),
        cmd(&["--user=nobody:pw", "get", "foo"]),
        cmd(&["--user=bob:anything", "get", "foo"]),
        cmd(&[ALICE, "user", "list"]),
        cmd(&[ALICE, "role", "list"]),
        cmd(&[ALICE, "user", "get", "alice"]),
        cmd(&[ALICE, "user", "get", "root"]),
        cmd(&[ALICE, "role", "get", "reader"]),
        cmd(&[ALICE, "role", "get", "root"]),
        cmd(&[ALICE, "user", "add", "mallory", "--new-user-password=m"]),
        cmd(&[ALICE, "role", "grant-permission", "reader", "readwrite", "secret"]),
        cmd(&[ALICE, "auth", "disable"]),
        cmd(&[ALICE, "endpoint", "hashkv"]),
        cmd(&[ALICE, "defrag"]),
        cmd(&[ALICE, "snapshot", "save", "SNAPSHOT"]),
        cmd(&[ALICE, "member", "list"]),
        cmd(&[ALICE, "member", "remove", "1234"]),
        cmd(&[ALICE, "alarm", "list"]),
        cmd(&[ALICE, "lease", "grant", "60"]),
        cmd(&[ALICE, "lease", "revoke", "1234"]),
        cmd(&[ALICE, "lock", "pre/lock", "echo", "locked"]),
        cmd(&[ALICE, "lock", "mylock", "echo", "locked"]),
        timed(&[ALICE, "watch", "foo", "--rev=1"], 2),
        timed(&[ALICE, "watch", "secret"], 2),
        cmd(&[ROOT, "role", "revoke-permission", "reader", "foo"]),
        cmd(&[ALICE, "get", "foo"]),
        cmd(&[ROOT, "role", "revoke-permission", "reader", "pre/", "pre0"]),
        cmd(&[ALICE, "get", "pre/a"]),
        cmd(&[ROOT, "user", "revoke-role", "root", "root"]),
        cmd(&[ROOT, "role", "delete", "root"]),
        cmd(&[ROOT, "user", "change-password", "alice", "--new-user-password=newpw"]),
        cmd(&[ALICE, "get", "zzz"]),
        cmd(&["--user=alice:newpw", "get", "zzz"]),
        cmd(&[ROOT, "role", "delete", "reader"]),
        cmd(&[ROOT, "user", "get", "alice"]),
        cmd(&[ROOT, "user", "delete", "alice"]),
        cmd(&["--user=alice:newpw", "get", "zzz"]),
        cmd(&[ROOT, "user", "delete", "nobody"]),
        cmd(&[ROOT, "role", "delete", "nosuchrole"]),
        cmd(&[ROOT, "auth", "disable"]),
        cmd(&["auth", "disable"]),
        cmd(&["get", "secret"]),
        cmd(&["user", "list"]),
        cmd(&["user", "delete", "root"]),
        cmd(&["user", "delete", "bob"]),
        // ---- still consistent at the end
        cmd(&["get", "", "--prefix", "-w", "json"]),
        // ---- concurrency recipes (last: on etcd they write lock keys)
        cmd(&["lock", "mylock", "echo", "locked"]),
        timed(&["elect", "myelection", "proposal"], 2),
    ]
}

/// A txn with 129 puts: one over etcd's --max-txn-ops.
fn too_many_ops() -> &'static str {
    let mut text = String::from("\n");
    for i in 0..129 {
        text.push_str(&format!("put many{i} v\n"));
    }
    text.push_str("\n\n");
    leak(text)
}

fn leak(text: String) -> &'static str {
    Box::leak(text.into_boxed_str())
}

// ------------------------------------------------------------ processes

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let path = std::env::temp_dir().join(format!("qed-etcdctl-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("temp dir");
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
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

/// One etcdctl run: (exit code, stdout, stderr).
fn etcdctl(endpoint: &str, step: &Step, workdir: &Path) -> (i32, String, String) {
    let limit = step.run_for.unwrap_or(Duration::from_secs(20));
    let mut command = Command::new("timeout");
    command
        .arg(format!("{}", limit.as_secs()))
        .arg("etcdctl")
        .arg(format!("--endpoints={endpoint}"))
        .args(["--dial-timeout=3s", "--command-timeout=5s"])
        .args(step.args)
        .env("ETCDCTL_API", "3")
        .current_dir(workdir)
        .stdin(if step.stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().expect("spawn etcdctl");
    if let (Some(input), Some(mut stdin)) = (step.stdin, child.stdin.take()) {
        use std::io::Write;
        let _ = stdin.write_all(input.as_bytes());
    }
    let out = child.wait_with_output().expect("etcdctl output");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn wait_ready(endpoint: &str, what: &str, workdir: &Path) {
    let probe = cmd(&["get", "readiness-probe"]);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (code, _, err) = etcdctl(endpoint, &probe, workdir);
        if code == 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what} did not become ready: {err}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

// ------------------------------------------------------------ normalizing

/// Replaces the digits following each occurrence of `key` with `<n>`.
fn mask_number_after(text: &str, key: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find(key) {
        out.push_str(&rest[..i + key.len()]);
        rest = &rest[i + key.len()..];
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '-'))
            .unwrap_or(rest.len());
        if digits > 0 {
            out.push_str("<n>");
            rest = &rest[digits..];
        }
    }
    out.push_str(rest);
    out
}

/// Masks hex tokens of 12+ characters with a digit in them (member and
/// lease IDs as etcdctl prints them).
fn mask_hex_ids(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut token = String::new();
    let flush = |token: &mut String, out: &mut String| {
        let is_id = token.len() >= 12
            && token.chars().all(|c| c.is_ascii_hexdigit())
            && token.chars().any(|c| c.is_ascii_digit());
        out.push_str(if is_id { "<id>" } else { token });
        token.clear();
    };
    for c in line.chars() {
        if c.is_ascii_alphanumeric() {
            token.push(c);
        } else {
            flush(&mut token, &mut out);
            out.push(c);
        }
    }
    flush(&mut token, &mut out);
    out
}

/// Masks every `http://` or `https://` URL (member peer and client URLs:
/// qed's are QUIC, advertised as https, on other ports).
fn mask_urls(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut rest = line;
    while let Some(i) = rest.find("http") {
        let tail = &rest[i..];
        let scheme = ["https://", "http://"]
            .into_iter()
            .find(|p| tail.starts_with(p));
        match scheme {
            Some(p) => {
                out.push_str(&rest[..i]);
                out.push_str("<url>");
                let end = tail[p.len()..]
                    .find([',', '"', ' ', ']'])
                    .map(|e| p.len() + e)
                    .unwrap_or(tail.len());
                rest = &tail[end..];
            }
            None => {
                out.push_str(&rest[..i + 4]);
                rest = &rest[i + 4..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// `endpoint status` table rows: keep endpoint, leader and learner flags
/// and errors; mask id, version, db size, raft term and indexes.
fn mask_status_row(line: &str) -> String {
    let cols: Vec<&str> = line.split(", ").collect();
    if cols.len() < 9 {
        return line.to_string();
    }
    let keep = [0usize, 4, 5];
    cols.iter()
        .enumerate()
        .map(|(i, c)| {
            if keep.contains(&i) || i >= 9 {
                c.to_string()
            } else {
                "<x>".into()
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn normalize(step: &Step, endpoint: &str, (code, out, err): (i32, String, String)) -> String {
    let mut text = format!("exit {code}\n{out}\n--- stderr\n{err}");
    text = text.replace(endpoint, "<endpoint>");
    for key in [
        "\"cluster_id\":",
        "\"member_id\":",
        "\"raft_term\":",
        "\"ClusterID\" : ",
        "\"MemberID\" : ",
        "\"RaftTerm\" : ",
        "\"ID\":",
        "\"leader\":",
        "\"raftIndex\":",
        "\"raftTerm\":",
        "\"raftAppliedIndex\":",
        "\"dbSize\":",
        "\"dbSizeInUse\":",
        "\"hash\":",
    ] {
        text = mask_number_after(&text, key);
    }
    // The command, past etcdctl's credential flags.
    let args: Vec<&str> = step
        .args
        .iter()
        .copied()
        .skip_while(|a| a.starts_with("--user") || a.starts_with("--password"))
        .collect();
    let is_status = args.starts_with(&["endpoint", "status"]);
    let is_hash = args.starts_with(&["endpoint", "hashkv"]);
    let is_member = args.first() == Some(&"member");
    text.lines()
        // etcdctl's client-side retry logs: timestamps and random client ids.
        .filter(|l| !l.starts_with("{\"level\":"))
        .map(|l| {
            let l = mask_hex_ids(l);
            let l = match l.find("took = ") {
                Some(i) => format!("{}took = <t>", &l[..i]),
                None => l,
            };
            let l = match l.find("\"version\":\"") {
                Some(i) if is_status => {
                    let end = l[i + 11..].find('"').map(|e| i + 11 + e).unwrap_or(l.len());
                    format!("{}<v>{}", &l[..i + 11], &l[end..])
                }
                _ => l,
            };
            if is_status {
                mask_status_row(&l)
            } else if is_hash {
                // Each store hashes its own encoding of the same key space.
                match l.rsplit_once(", ") {
                    Some((endpoint, _)) => format!("{endpoint}, <hash>"),
                    None => l,
                }
            } else if is_member {
                mask_urls(&l)
            } else {
                l
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

// ------------------------------------------------------------ the tests

/// Starts a qed node and a qed-grpc in front of it serving `listen`; the
/// node's generated certificates are in `dir/data/certs`.
fn start_qed(dir: &TempDir, listen: &str, shim_args: &[String]) -> (Proc, Proc) {
    let quic_url = format!("https://127.0.0.1:{}", free_udp_port());
    let node = spawn(
        Command::new(env!("CARGO_BIN_EXE_qed"))
            .arg("--data-dir")
            .arg(dir.0.join("data"))
            .args(["--name", "diff"])
            .args(["--listen-client-urls", &quic_url, "--log-level", "warn"]),
        &dir.0.join("qed.log"),
    );
    let ca = dir.0.join("data/certs/ca.crt");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ca.exists() {
        assert!(Instant::now() < deadline, "qed did not create its CA");
        std::thread::sleep(Duration::from_millis(20));
    }
    let shim = spawn(
        Command::new(env!("CARGO_BIN_EXE_qed-grpc"))
            .args(["--endpoints", &quic_url])
            .arg("--cacert")
            .arg(&ca)
            .args(["--listen-client-urls", listen])
            .args(["--log-level", "warn"])
            .args(shim_args),
        &dir.0.join("qed-grpc.log"),
    );
    (node, shim)
}

fn have_tools() -> bool {
    for tool in ["etcd", "etcdctl", "timeout"] {
        if !on_path(tool) {
            println!("skipping etcdctl test: `{tool}` is not installed (make deps-etcd)");
            return false;
        }
    }
    true
}

/// TLS on the gRPC side: server certificate, and client certificates
/// required by --trusted-ca-file.
#[test]
fn etcdctl_over_tls_with_client_certs() {
    if !have_tools() {
        return;
    }
    let dir = TempDir::new("tls");
    let port = free_tcp_port();
    let certs = dir.0.join("data/certs");
    let path = |f: &str| certs.join(f).display().to_string();
    let shim_args = [
        "--cert-file".to_string(),
        path("node.crt"),
        "--key-file".into(),
        path("node.key"),
        "--trusted-ca-file".into(),
        path("ca.crt"),
    ];
    // The certificates exist only once the node started: start the node,
    // then the shim reads them (start_qed waits for ca.crt, written last).
    let _qed = start_qed(&dir, &format!("https://127.0.0.1:{port}"), &shim_args);
    let endpoint = format!("https://127.0.0.1:{port}");
    let with_cert = [
        "--cacert".to_string(),
        path("ca.crt"),
        "--cert".into(),
        path("client.crt"),
        "--key".into(),
        path("client.key"),
    ];
    let run = |args: &[String]| {
        let out = Command::new("timeout")
            .args([
                "20",
                "etcdctl",
                &format!("--endpoints={endpoint}"),
                "--dial-timeout=3s",
            ])
            .args(args)
            .env("ETCDCTL_API", "3")
            .output()
            .expect("etcdctl");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut put = with_cert.to_vec();
    put.extend(["put".to_string(), "tls".into(), "yes".into()]);
    while !run(&put).0 {
        assert!(
            Instant::now() < deadline,
            "etcdctl over TLS never succeeded"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let mut get = with_cert.to_vec();
    get.extend(["get".to_string(), "tls".into()]);
    assert_eq!(run(&get), (true, "tls\nyes\n".to_string()));
    // The per-endpoint calls dial `passthrough:///https://...`.
    for command in PER_ENDPOINT {
        let mut args = with_cert.to_vec();
        args.extend(command.iter().map(|a| a.to_string()));
        let (ok, out) = run(&args);
        assert!(ok, "etcdctl {command:?} over https failed: {out}");
    }
    // Without a client certificate the handshake is refused.
    let no_cert = [
        "--cacert".to_string(),
        path("ca.crt"),
        "get".into(),
        "tls".into(),
    ];
    assert!(!run(&no_cert).0);
}

/// The etcdctl commands that dial each endpoint on its own (through
/// `passthrough:///` + the endpoint as written, scheme included, so the
/// HTTP/2 `:authority` carries the scheme).
const PER_ENDPOINT: [&[&str]; 5] = [
    &["endpoint", "status"],
    &["endpoint", "health"],
    &["endpoint", "hashkv"],
    &["defrag"],
    &["alarm", "list"],
];

/// Every per-endpoint command works whether the endpoint is written
/// `host:port` or `http://host:port` (etcd accepts any `:authority`).
#[test]
fn per_endpoint_commands_accept_a_scheme() {
    if !have_tools() {
        return;
    }
    let dir = TempDir::new("scheme");
    let port = free_tcp_port();
    let _qed = start_qed(&dir, &format!("http://127.0.0.1:{port}"), &[]);
    let plain = format!("127.0.0.1:{port}");
    wait_ready(&plain, "qed-grpc", &dir.0);
    for endpoint in [plain.clone(), format!("http://{plain}")] {
        for command in PER_ENDPOINT {
            let (code, out, err) = etcdctl(&endpoint, &cmd(command), &dir.0);
            assert_eq!(
                code, 0,
                "etcdctl --endpoints={endpoint} {command:?}: {out}{err}"
            );
            assert!(!err.contains("PROTOCOL_ERROR"), "{command:?}: {err}");
        }
        let (code, out, _) = etcdctl(&endpoint, &cmd(&["endpoint", "status"]), &dir.0);
        assert_eq!(code, 0);
        assert!(out.starts_with(&endpoint), "{out}");
    }
}

#[test]
fn etcdctl_outputs_match_etcd() {
    if !have_tools() {
        return;
    }
    let report_only = std::env::var_os("QED_ETCDCTL_DIFF_REPORT_ONLY").is_some();
    let verbose = std::env::var_os("QED_ETCDCTL_DIFF_VERBOSE").is_some();

    // etcd 3.4, fresh.
    let etcd_dir = TempDir::new("etcd");
    let (client_port, peer_port) = (free_tcp_port(), free_tcp_port());
    let etcd_url = format!("http://127.0.0.1:{client_port}");
    let peer_url = format!("http://127.0.0.1:{peer_port}");
    let _etcd = spawn(
        Command::new("etcd")
            .args(["--name", "diff"])
            .arg("--data-dir")
            .arg(etcd_dir.0.join("data"))
            .args(["--listen-client-urls", &etcd_url])
            .args(["--advertise-client-urls", &etcd_url])
            .args(["--listen-peer-urls", &peer_url])
            .args(["--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &format!("diff={peer_url}")]),
        &etcd_dir.0.join("etcd.log"),
    );
    let etcd_endpoint = format!("127.0.0.1:{client_port}");

    // qed + qed-grpc, fresh.
    let qed_dir = TempDir::new("qed");
    let shim_port = free_tcp_port();
    let _qed = start_qed(&qed_dir, &format!("http://127.0.0.1:{shim_port}"), &[]);
    let qed_endpoint = format!("127.0.0.1:{shim_port}");

    wait_ready(&etcd_endpoint, "etcd", &etcd_dir.0);
    wait_ready(&qed_endpoint, "qed-grpc", &qed_dir.0);

    let (mut matching, mut unexpected) = (0, Vec::new());
    for step in script() {
        let name = format!(
            "etcdctl {}{}",
            step.args.join(" "),
            if step.stdin.is_some() { " <<txn" } else { "" }
        );
        let want = normalize(
            &step,
            &etcd_endpoint,
            etcdctl(&etcd_endpoint, &step, &etcd_dir.0),
        );
        let got = normalize(
            &step,
            &qed_endpoint,
            etcdctl(&qed_endpoint, &step, &qed_dir.0),
        );
        if verbose {
            println!("=== {name}\n{want}");
        }
        if want == got {
            matching += 1;
        } else {
            println!("UNEXPECTED mismatch: {name}\n--- etcd\n{want}\n--- qed\n{got}\n---");
            unexpected.push(name);
        }
    }
    println!(
        "etcdctl differential: {matching} matching, {} unexpected",
        unexpected.len()
    );
    if !report_only {
        assert!(
            unexpected.is_empty(),
            "unexpected mismatches: {unexpected:#?}"
        );
    }
}
