//! A node under hostile and heavy client load keeps its memory bounded and
//! keeps answering.
//!
//! - `stalled_senders_and_a_put_flood_leave_memory_bounded`: 50 clients
//!   each open 16 streams, declare the largest request frame, send half a
//!   MiB of it and stall (400 MiB offered in all), while 64 writers flood
//!   the node with puts and one ordinary client reads and writes every
//!   100 ms. Every ordinary call must succeed, every flood put succeed or
//!   be refused with `too many requests`, and the node's resident memory
//!   (`VmRSS` from `/proc/PID/status`, sampled throughout) must stay under
//!   [`RSS_BOUND_MIB`]. Before the request budget, the node read every
//!   stalled byte into memory.

mod common;

use common::{proc_status_bytes, TestNode};
use qed::client::ClientError;
use qed::transport::tls::TlsFiles;
use qed::wire::frame::MAX_CLIENT_FRAME;
use qed::wire::Error;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const STALLED_CLIENTS: usize = 50;
const STREAMS_EACH: usize = 16;
/// Body bytes each stalled stream sends before it stalls.
const SENT_EACH: usize = 512 * 1024;
/// The node's resident memory must stay below this. The bound it is built
/// from: 50 connections × (1 MiB receive window + 256 KiB share) + the
/// 64 MiB pool ≈ 127 MiB, plus a debug build's baseline and the flood's
/// keys; the 400 MiB the stalled clients offer do not fit in it.
const RSS_BOUND_MIB: u64 = 256;
/// How long the flood and the ordinary client run.
const LOAD_FOR: Duration = Duration::from_secs(10);

fn rss_mib(pid: u32) -> u64 {
    proc_status_bytes(pid, "VmRSS").map_or(0, |b| b / (1024 * 1024))
}

/// Opens a raw QUIC connection and stalls `STREAMS_EACH` requests on it;
/// the returned connection keeps them open while held.
async fn stall(node: &TestNode) -> quinn::Connection {
    let files = TlsFiles {
        ca: Some(node.ca_file()),
        ..Default::default()
    };
    let config = qed::transport::tls::client_config(&files, qed::wire::CLIENT_ALPN)
        .expect("client TLS config");
    let url = qed::transport::url::parse(&node.url).expect("node URL");
    let endpoint = qed::transport::endpoint::client(url.addr, config).expect("client endpoint");
    let conn = endpoint
        .connect(url.addr, "localhost")
        .expect("connect")
        .await
        .expect("handshake");
    let body = vec![b'x'; SENT_EACH];
    for _ in 0..STREAMS_EACH {
        let (mut send, recv) = conn.open_bi().await.expect("open stream");
        let body = body.clone();
        qed::runtime::spawn(async move {
            let declared = u32::try_from(MAX_CLIENT_FRAME).unwrap_or(u32::MAX);
            let _recv = recv;
            // Blocks once the node stops taking bytes; never finished.
            if send.write_all(&declared.to_be_bytes()).await.is_ok() {
                let _ = send.write_all(&body).await;
            }
            qed::runtime::sleep(Duration::from_secs(600)).await;
            drop(send);
        });
    }
    conn
}

#[test]
fn stalled_senders_and_a_put_flood_leave_memory_bounded() {
    // The flood's own data must not be what the bound measures: small
    // values, and a Raft log tail of at most 10k entries in memory (how
    // many puts complete in LOAD_FOR depends on the machine).
    let node = TestNode::start(&["--snapshot-count", "10000"]);
    let pid = node.child.id();
    qed::runtime::block_on(async {
        let ordinary = node.client().await;
        let flood_client = node.client().await;
        let peak = Arc::new(AtomicU64::new(rss_mib(pid)));
        let done = Arc::new(AtomicBool::new(false));
        {
            let (peak, done) = (peak.clone(), done.clone());
            qed::runtime::spawn(async move {
                while !done.load(Ordering::Relaxed) {
                    peak.fetch_max(rss_mib(pid), Ordering::Relaxed);
                    qed::runtime::sleep(Duration::from_millis(100)).await;
                }
            });
        }
        let mut stalled = Vec::new();
        for _ in 0..STALLED_CLIENTS {
            stalled.push(stall(&node).await);
        }

        let refused = Arc::new(AtomicU64::new(0));
        let flood_ok = Arc::new(AtomicU64::new(0));
        let mut writers = Vec::new();
        for w in 0..64 {
            let (c, done) = (flood_client.clone(), done.clone());
            let (refused, ok) = (refused.clone(), flood_ok.clone());
            writers.push(qed::runtime::spawn(async move {
                let mut n = 0u64;
                while !done.load(Ordering::Relaxed) {
                    let key = format!("flood/{}", (w * 7 + n) % 100);
                    match c.put(key, vec![b'f'; 64], None).await {
                        Ok(_) => ok.fetch_add(1, Ordering::Relaxed),
                        Err(ClientError::Server(Error::TooManyRequests)) => {
                            refused.fetch_add(1, Ordering::Relaxed)
                        }
                        Err(e) => panic!("flood put: {e}"),
                    };
                    n += 1;
                }
            }));
        }

        let started = Instant::now();
        let mut answered = 0;
        while started.elapsed() < LOAD_FOR {
            let t = Instant::now();
            ordinary
                .put("ordinary", format!("{answered}"), None)
                .await
                .expect("an ordinary put under load");
            let got = ordinary
                .get("ordinary", None)
                .await
                .expect("an ordinary get");
            assert_eq!(got.kvs[0].value, format!("{answered}").into_bytes());
            answered += 1;
            assert!(
                t.elapsed() < Duration::from_secs(5),
                "an ordinary put and get took {:?}",
                t.elapsed()
            );
            qed::runtime::sleep(Duration::from_millis(100)).await;
        }
        done.store(true, Ordering::Relaxed);
        for w in writers {
            w.await;
        }
        let peak = peak.load(Ordering::Relaxed).max(rss_mib(pid));
        eprintln!(
            "peak RSS {peak} MiB; {answered} ordinary rounds; flood: {} ok, {} refused",
            flood_ok.load(Ordering::Relaxed),
            refused.load(Ordering::Relaxed)
        );
        assert!(answered > 0);
        assert!(
            peak < RSS_BOUND_MIB,
            "the node's RSS reached {peak} MiB (bound {RSS_BOUND_MIB} MiB)"
        );
        drop(stalled);
    });
}
