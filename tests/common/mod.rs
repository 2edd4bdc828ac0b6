//! Starting and stopping real `qed` processes for integration tests.
//!
//! Each node gets a fresh data directory under the system temp dir and a
//! free loopback UDP port; it is killed by its own PID when dropped. Waiting
//! is polling with a deadline, never a fixed sleep.

#![allow(dead_code)]

use qed::client::{Client, ConnectOptions};
use qed::wire::{Request, Response};
use std::net::{TcpListener, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Whether a program is on PATH (tests that need etcd skip without it).
pub fn on_path(name: &str) -> bool {
    std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|dir| dir.join(name).is_file()))
        .unwrap_or(false)
}

/// A loopback TCP port nobody was using a moment ago, and not one handed
/// out before in this test process (see [`unused_before`]).
pub fn free_tcp_port() -> u16 {
    unused_before(|| {
        TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("free TCP port")
    })
}

/// Ports handed out by `free_tcp_port` / `free_udp_port` in this process.
static HANDED_OUT: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());

/// A port from `pick` that this process has not handed out before. The
/// kernel may give a port just released again, and tests of one binary run
/// at once: two of them each starting an etcd on "a free port" once got
/// the same one, and one test's etcdctl read the other's etcd.
fn unused_before(pick: impl Fn() -> u16) -> u16 {
    let mut seen = HANDED_OUT.lock().unwrap_or_else(|p| p.into_inner());
    for _ in 0..1000 {
        let port = pick();
        if !seen.contains(&port) {
            seen.push(port);
            return port;
        }
    }
    panic!("no port this process has not used in 1000 tries");
}

/// A child process killed (by its PID) when dropped.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

static NEXT_DIR: AtomicUsize = AtomicUsize::new(0);

/// A fresh, empty directory that is removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let n = NEXT_DIR.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("qed-test-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create temp dir");
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A loopback UDP port nobody was using a moment ago, and not one handed
/// out before in this test process (see [`unused_before`]).
pub fn free_udp_port() -> u16 {
    unused_before(|| {
        let socket = UdpSocket::bind("127.0.0.1:0").expect("bind ephemeral UDP port");
        socket.local_addr().expect("local addr").port()
    })
}

pub struct TestNode {
    pub child: Child,
    pub dir: TempDir,
    pub url: String,
    extra: Vec<String>,
}

impl TestNode {
    /// Starts `qed` with extra flags; [`TestNode::client`] waits for it.
    pub fn start(extra: &[&str]) -> TestNode {
        let dir = TempDir::new("node");
        let url = format!("https://127.0.0.1:{}", free_udp_port());
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let child = spawn(&dir, &url, &extra);
        TestNode {
            child,
            dir,
            url,
            extra,
        }
    }

    /// SIGKILL: no chance to flush or clean up anything.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts the node again on the same data directory and port.
    pub fn restart(&mut self) {
        self.kill();
        self.child = spawn(&self.dir, &self.url, &self.extra);
    }

    pub fn ca_file(&self) -> PathBuf {
        self.dir.0.join("data/certs/ca.crt")
    }

    /// A client, retried until the node answers (it may still be creating
    /// its certificates or binding).
    pub async fn client(&self) -> Client {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let options = ConnectOptions {
                ca_file: Some(self.ca_file()),
                request_timeout: Duration::from_secs(5),
                ..Default::default()
            };
            match Client::connect(std::slice::from_ref(&self.url), options).await {
                // Ready means serving *and* led: a lone member starts
                // listening before its own vote is durable, and a write in
                // that window gets `NoLeader`.
                Ok(c) if has_leader(&c).await => return c,
                Ok(_) if Instant::now() < deadline => {
                    qed::runtime::sleep(Duration::from_millis(20)).await;
                }
                Ok(_) => panic!("the test node never elected a leader"),
                Err(_) if Instant::now() < deadline => {
                    qed::runtime::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("cannot connect to the test node: {e}"),
            }
        }
    }
}

/// Whether the node answering `c` knows a leader (so writes and
/// linearizable reads will not fail with `NoLeader`).
pub async fn has_leader(c: &Client) -> bool {
    match c.call(Request::Status(Default::default())).await {
        Ok(Response::Status(s)) => s.leader != 0,
        _ => false,
    }
}

fn spawn(dir: &TempDir, url: &str, extra: &[String]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_qed"))
        .arg("--data-dir")
        .arg(dir.0.join("data"))
        .args(["--listen-client-urls", url, "--log-level", "warn"])
        .args(extra)
        .stdin(Stdio::null())
        .spawn()
        .expect("spawn qed")
}

impl Drop for TestNode {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One member of a [`TestCluster`]: its own data directory, client and peer
/// ports, and a log file (stderr, appended across restarts).
pub struct ClusterMember {
    pub name: String,
    pub child: Option<Child>,
    pub data_dir: PathBuf,
    pub client_url: String,
    pub peer_url: String,
    pub log_file: PathBuf,
    args: Vec<String>,
}

impl ClusterMember {
    pub fn ca_file(&self) -> PathBuf {
        self.data_dir.join("certs/ca.crt")
    }

    /// Everything the member logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_file).unwrap_or_default()
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_file)
            .expect("open member log");
        let child = Command::new(env!("CARGO_BIN_EXE_qed"))
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn qed");
        self.child = Some(child);
    }

    /// SIGKILL, by this child's PID.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `n` real `qed` processes on loopback forming one cluster, killed by PID
/// when dropped.
pub struct TestCluster {
    pub dir: TempDir,
    pub members: Vec<ClusterMember>,
    pub token: String,
    /// `--initial-cluster`, as every member was given it.
    pub initial_cluster: String,
}

impl TestCluster {
    pub fn start(n: usize, extra: &[&str]) -> TestCluster {
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        Self::start_each(n, |_| extra.clone())
    }

    /// Like [`TestCluster::start`], with flags per member (by index).
    pub fn start_each(n: usize, extra: impl Fn(usize) -> Vec<String>) -> TestCluster {
        Self::start_prepared(n, extra, |_, _, _| {})
    }

    /// Like [`TestCluster::start_each`], calling `prepare(member,
    /// initial_cluster, token)` on each member before it first starts (to
    /// fill its data directory, say by a snapshot restore).
    pub fn start_prepared(
        n: usize,
        extra: impl Fn(usize) -> Vec<String>,
        prepare: impl Fn(&ClusterMember, &str, &str),
    ) -> TestCluster {
        let dir = TempDir::new("cluster");
        let token = format!("test-{}", std::process::id());
        let ports: Vec<(u16, u16)> = (0..n).map(|_| (free_udp_port(), free_udp_port())).collect();
        let initial_cluster = ports
            .iter()
            .enumerate()
            .map(|(i, (_, peer))| format!("n{}=http://127.0.0.1:{peer}", i + 1))
            .collect::<Vec<_>>()
            .join(",");
        let mut members = Vec::new();
        for (i, (client, peer)) in ports.iter().enumerate() {
            let name = format!("n{}", i + 1);
            let client_url = format!("https://127.0.0.1:{client}");
            let peer_url = format!("http://127.0.0.1:{peer}");
            let data_dir = dir.0.join(&name);
            let mut args: Vec<String> = vec![
                "--name".into(),
                name.clone(),
                "--data-dir".into(),
                data_dir.display().to_string(),
                "--listen-client-urls".into(),
                client_url.clone(),
                "--listen-peer-urls".into(),
                peer_url.clone(),
                "--initial-advertise-peer-urls".into(),
                peer_url.clone(),
                "--initial-cluster".into(),
                initial_cluster.clone(),
                "--initial-cluster-token".into(),
                token.clone(),
                "--log-level".into(),
                "info".into(),
            ];
            args.extend(extra(i));
            members.push(ClusterMember {
                log_file: dir.0.join(format!("{name}.log")),
                name,
                child: None,
                data_dir,
                client_url,
                peer_url,
                args,
            });
        }
        for m in &mut members {
            prepare(m, &initial_cluster, &token);
            m.spawn();
        }
        TestCluster {
            dir,
            members,
            token,
            initial_cluster,
        }
    }

    /// Starts a new member that joins the running cluster (after a member
    /// add for `peer_url`), as etcd users do: `--initial-cluster` with every
    /// member and `--initial-cluster-state existing`. Returns its index.
    pub fn start_joining(&mut self, peer_url: &str, extra: &[&str]) -> usize {
        let i = self.members.len();
        let name = format!("n{}", i + 1);
        let client_url = format!("https://127.0.0.1:{}", free_udp_port());
        let data_dir = self.dir.0.join(&name);
        let initial_cluster = format!("{},{name}={peer_url}", self.initial_cluster);
        let mut args: Vec<String> = [
            "--name",
            &name,
            "--data-dir",
            &data_dir.display().to_string(),
            "--listen-client-urls",
            &client_url,
            "--listen-peer-urls",
            peer_url,
            "--initial-advertise-peer-urls",
            peer_url,
            "--initial-cluster",
            &initial_cluster,
            "--initial-cluster-token",
            &self.token,
            "--initial-cluster-state",
            "existing",
            "--log-level",
            "info",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut member = ClusterMember {
            log_file: self.dir.0.join(format!("{name}.log")),
            name,
            child: None,
            data_dir,
            client_url,
            peer_url: peer_url.to_string(),
            args,
        };
        member.spawn();
        self.members.push(member);
        i
    }

    pub fn kill(&mut self, i: usize) {
        self.members[i].kill();
    }

    /// Starts member `i` again with the same flags and data directory.
    pub fn restart(&mut self, i: usize) {
        self.members[i].kill();
        self.members[i].spawn();
    }

    /// Every member's CA in one PEM file (each member generated its own),
    /// for a client that talks to several members.
    pub fn ca_bundle(&self) -> PathBuf {
        let deadline = Instant::now() + Duration::from_secs(30);
        let path = self.dir.0.join("ca-bundle.crt");
        loop {
            let pems: Vec<String> = self
                .members
                .iter()
                .filter_map(|m| std::fs::read_to_string(m.ca_file()).ok())
                .collect();
            if pems.len() == self.members.len() {
                std::fs::write(&path, pems.concat()).expect("write CA bundle");
                return path;
            }
            assert!(Instant::now() < deadline, "members never wrote their CAs");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A client of member `i` alone, retried until the member answers.
    pub async fn client(&self, i: usize) -> Client {
        let member = &self.members[i];
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let options = ConnectOptions {
                ca_file: Some(member.ca_file()),
                request_timeout: Duration::from_secs(5),
                dial_timeout: Duration::from_secs(1),
                ..Default::default()
            };
            match Client::connect(std::slice::from_ref(&member.client_url), options).await {
                Ok(c) => return c,
                Err(e) => {
                    assert!(
                        Instant::now() < deadline,
                        "cannot connect to {}: {e}",
                        member.name
                    );
                    qed::runtime::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    /// Every member's client URL, in member order.
    pub fn client_urls(&self) -> Vec<String> {
        self.members.iter().map(|m| m.client_url.clone()).collect()
    }

    /// A client of every member (round-robin, failover before send).
    pub async fn client_of_all(&self) -> Client {
        let urls = self.client_urls();
        let options = ConnectOptions {
            ca_file: Some(self.ca_bundle()),
            request_timeout: Duration::from_secs(5),
            dial_timeout: Duration::from_secs(1),
            ..Default::default()
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match Client::connect(&urls, options.clone()).await {
                Ok(c) => return c,
                Err(e) => {
                    assert!(
                        Instant::now() < deadline,
                        "cannot connect to the cluster: {e}"
                    );
                    qed::runtime::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    /// The index of the member that every running member names as leader,
    /// once they agree (polled until `within`).
    pub async fn wait_for_leader(&self, clients: &[Option<Client>], within: Duration) -> usize {
        let deadline = Instant::now() + within;
        loop {
            let mut seen = Vec::new();
            let mut ids = Vec::new();
            for c in clients.iter().flatten() {
                if let Ok(Response::Status(s)) = c.call(Request::Status(Default::default())).await {
                    seen.push(s.leader);
                    ids.push(s.header.member_id);
                } else {
                    seen.push(0);
                    ids.push(0);
                }
            }
            let first = seen.first().copied().unwrap_or(0);
            if first != 0 && seen.iter().all(|l| *l == first) {
                if let Some(i) = ids.iter().position(|id| *id == first) {
                    // Map the position among running members back to an index.
                    let running: Vec<usize> = clients
                        .iter()
                        .enumerate()
                        .filter(|(_, c)| c.is_some())
                        .map(|(i, _)| i)
                        .collect();
                    return running[i];
                }
            }
            assert!(
                Instant::now() < deadline,
                "members never agreed on a leader they can reach (saw {seen:x?})"
            );
            qed::runtime::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        for m in &mut self.members {
            m.kill();
        }
    }
}

/// Runs `cmd` to its end: whether it succeeded, and its stdout and stderr
/// as text.
pub fn run(cmd: &mut Command) -> (bool, String, String) {
    let out = cmd.output().expect("run a command");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `callers` tasks at once, each putting `each` keys `k/{t}/{i}` through
/// `client` and reading every one back (panics with the first error).
pub async fn concurrent_puts_and_gets(client: &Client, callers: usize, each: usize) {
    let mut tasks = Vec::new();
    for t in 0..callers {
        let c = client.clone();
        tasks.push(qed::runtime::spawn(async move {
            for i in 0..each {
                let key = format!("k/{t}/{i}");
                c.put(key.clone(), format!("v{t}.{i}"), None).await?;
                let got = c.get(key, None).await?;
                assert_eq!(got.kvs[0].value, format!("v{t}.{i}").into_bytes());
            }
            Ok::<(), qed::client::ClientError>(())
        }));
    }
    for (t, task) in tasks.into_iter().enumerate() {
        if let Err(e) = task.await {
            panic!("caller {t} of {callers}: {e}");
        }
    }
}

/// The replies, by call number, to the raw mux exchange the Unix and QUIC
/// mux tests send: calls 7 and 10 read the key holding `9`, call 8 is over
/// the size limit, and each call in `invalid` does not decode.
pub fn assert_raw_mux_replies(
    replies: &std::collections::BTreeMap<u64, qed::wire::Reply>,
    invalid: &[u64],
) {
    for id in [7, 10] {
        match &replies[&id] {
            Ok(Response::Range(r)) => assert_eq!(r.kvs[0].value, b"9"),
            other => panic!("call {id}: unexpected {other:?}"),
        }
    }
    assert!(
        matches!(replies[&8], Err(qed::wire::Error::RequestTooLarge)),
        "{:?}",
        replies[&8]
    );
    for id in invalid {
        assert!(
            matches!(replies[id], Err(qed::wire::Error::InvalidArgument(_))),
            "call {id}: {:?}",
            replies[id]
        );
    }
}

/// The value of `key` read through `client`, retried until a read
/// succeeds (a client whose connection died with its node reconnects), for
/// at most 30 s.
pub async fn value_once_readable(client: &Client, key: &str) -> Vec<u8> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match client.get(key, None).await {
            Ok(got) => {
                return got
                    .kvs
                    .first()
                    .map(|kv| kv.value.clone())
                    .unwrap_or_default()
            }
            Err(e) => assert!(Instant::now() < deadline, "never readable again: {e}"),
        }
        qed::runtime::sleep(Duration::from_millis(50)).await;
    }
}

/// A size field of `/proc/PID/status` (`VmRSS`, `VmHWM`, `RssAnon`,
/// `RssFile`...), in bytes; `None` if the process or the field is gone.
pub fn proc_status_bytes(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kib| kib * 1024)
}
