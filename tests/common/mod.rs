//! Starting and stopping real `qed` processes for integration tests.
//!
//! Each node gets a fresh data directory under the system temp dir and a
//! free loopback UDP port; it is killed by its own PID when dropped. Waiting
//! is polling with a deadline, never a fixed sleep.

#![allow(dead_code)]

use qed::client::{Client, ConnectOptions};
use qed::wire::{Request, Response};
use std::net::UdpSocket;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

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

/// A loopback UDP port nobody was using a moment ago.
pub fn free_udp_port() -> u16 {
    let socket = UdpSocket::bind("127.0.0.1:0").expect("bind ephemeral UDP port");
    socket.local_addr().expect("local addr").port()
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
