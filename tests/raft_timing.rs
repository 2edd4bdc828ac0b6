//! `--heartbeat-interval` and `--election-timeout`: numbers or `auto`.
//!
//! - `bad_timing_flags_are_refused`: a value that is neither milliseconds
//!   nor `auto`, and fixed values with fewer than 5 heartbeats per election
//!   timeout, stop the node with exit code 2 and say why.
//! - `auto_timing_cluster_serves`: three members with both flags `auto`
//!   elect a leader and take writes through a follower (the derivation
//!   itself is unit-tested in `server/timing.rs`; how it reacts to loss is
//!   measured by `bench/peer_loss.sh`, which needs root).
//!
//! Every wait polls with a deadline; processes are killed by their PID.

mod common;

use common::{TempDir, TestCluster};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn bad_timing_flags_are_refused() {
    let dir = TempDir::new("timing-flags");
    for (flags, says) in [
        (
            ["--heartbeat-interval", "fast", "--election-timeout", "1000"],
            "auto",
        ),
        (
            ["--heartbeat-interval", "100", "--election-timeout", "soon"],
            "auto",
        ),
        (
            ["--heartbeat-interval", "300", "--election-timeout", "1000"],
            "at least 5 times",
        ),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_qed"))
            .arg("--data-dir")
            .arg(dir.0.join("data"))
            .args(flags)
            .stdin(Stdio::null())
            .output()
            .expect("run qed");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{flags:?}: {stderr}");
        assert!(stderr.contains(says), "{flags:?}: {stderr}");
    }
}

#[test]
fn auto_timing_cluster_serves() {
    let cluster = TestCluster::start(
        3,
        &["--heartbeat-interval", "auto", "--election-timeout", "auto"],
    );
    qed::runtime::block_on(async {
        let mut clients = Vec::new();
        for i in 0..3 {
            clients.push(Some(cluster.client(i).await));
        }
        let leader = cluster
            .wait_for_leader(&clients, Duration::from_secs(30))
            .await;
        let follower = clients[(leader + 1) % 3].as_ref().expect("client");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match follower.put("k", "v", None).await {
                Ok(_) => break,
                Err(e) => assert!(
                    Instant::now() < deadline,
                    "a put through a follower never succeeded: {e}"
                ),
            }
            qed::runtime::sleep(Duration::from_millis(50)).await;
        }
    });
}
