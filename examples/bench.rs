//! A load driver shaped like etcd's `benchmark` tool, for a qed node over
//! the native QUIC SDK (`--target native`) or for any etcd v3 gRPC endpoint
//! (`--target grpc`: real etcd, or qed-grpc) with the same workload
//! definitions: `clients` requests in flight, `total` requests, keys of
//! `key-size` bytes from `key-space`, values of `val-size` bytes.
//!
//! ```sh
//! cargo run --release --example bench -- put --clients 128 --total 100000
//! cargo run --release --example bench -- range --target grpc --endpoints http://127.0.0.1:2379
//! ```
//! Prints one result line (throughput, latency percentiles, errors); a
//! progress line goes to stderr. `bench/compare.sh` (`make bench`) runs it
//! against etcd and qed side by side.

use bytes::Bytes;
use clap::{Parser, ValueEnum};
use qed::client::{Client, Compare, CompareOp, ConnectOptions, GetOptions, Txn, TxnOp};
use qed::grpc::{codec, pb};
use qed::runtime::{self, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::compat::FuturesAsyncReadCompatExt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Workload {
    /// Puts to random keys (or 0..total with --sequential).
    Put,
    /// Linearizable gets of random keys (prefilled).
    Range,
    /// Serializable gets of random keys (prefilled).
    RangeSerializable,
    /// Txn compare-and-swap: if value(key) == v then put(key, v) else get(key).
    Txn,
    /// No server: `pwrite` of one put's bytes + `fdatasync` into a
    /// preallocated file, one at a time: the floor a durable put sits on.
    FsyncFloor,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Target {
    /// qed over QUIC with the SDK.
    Native,
    /// etcd's v3 gRPC API over h2c (etcd itself or qed-grpc).
    Grpc,
}

#[derive(Parser, Debug)]
struct Flags {
    #[arg(value_enum)]
    workload: Workload,
    #[arg(long, value_enum, default_value = "native")]
    target: Target,
    /// Server URL [native: https://127.0.0.1:2379; grpc: http://127.0.0.1:2379].
    #[arg(long)]
    endpoints: Option<String>,
    /// CA for --target native [default: default.qed/certs/ca.crt].
    #[arg(long)]
    cacert: Option<PathBuf>,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 16)]
    clients: usize,
    /// Connections the clients share (gRPC; the SDK multiplexes one per node).
    #[arg(long, default_value_t = 8)]
    conns: usize,
    /// Requests in all.
    #[arg(long, default_value_t = 20_000)]
    total: u64,
    #[arg(long, default_value_t = 8)]
    key_size: usize,
    #[arg(long, default_value_t = 256)]
    val_size: usize,
    /// Distinct keys.
    #[arg(long, default_value_t = 10_000)]
    key_space: u64,
    /// Keys 0, 1, 2, ... instead of random ones (to load a key space).
    #[arg(long)]
    sequential: bool,
    /// Directory for fsync-floor's scratch file (put it on the server's disk).
    #[arg(long, default_value = ".")]
    dir: PathBuf,
}

fn key(i: u64, size: usize) -> Vec<u8> {
    let mut k = format!("{i:0width$}", width = size).into_bytes();
    k.truncate(size.max(1));
    k
}

/// A connected server, either way.
#[derive(Clone)]
enum Server {
    Native(Client),
    Grpc(Arc<Vec<h2::client::SendRequest<Bytes>>>),
}

impl Server {
    async fn connect(flags: &Flags) -> Result<Server, Box<dyn std::error::Error>> {
        match flags.target {
            Target::Native => {
                let url = flags
                    .endpoints
                    .clone()
                    .unwrap_or_else(|| "https://127.0.0.1:2379".into());
                let options = ConnectOptions {
                    ca_file: Some(
                        flags
                            .cacert
                            .clone()
                            .unwrap_or_else(|| "default.qed/certs/ca.crt".into()),
                    ),
                    ..Default::default()
                };
                Ok(Server::Native(Client::connect(&[url], options).await?))
            }
            Target::Grpc => {
                let url = flags
                    .endpoints
                    .clone()
                    .unwrap_or_else(|| "http://127.0.0.1:2379".into());
                let addr = url
                    .trim_start_matches("http://")
                    .trim_end_matches('/')
                    .to_string();
                let mut conns = Vec::new();
                for _ in 0..flags.conns.max(1) {
                    conns.push(h2_connect(&addr).await?);
                }
                Ok(Server::Grpc(Arc::new(conns)))
            }
        }
    }

    /// One request of `workload`; `false` on any error.
    async fn run(&self, worker: usize, workload: Workload, key: Vec<u8>, value: &[u8]) -> bool {
        match self {
            Server::Native(c) => match workload {
                Workload::Put => c.put(key, value.to_vec(), None).await.is_ok(),
                Workload::Range => c.get(key, None).await.is_ok(),
                Workload::RangeSerializable => c
                    .get(key, Some(GetOptions::new().with_serializable()))
                    .await
                    .is_ok(),
                Workload::Txn => {
                    let txn = Txn::new()
                        .when([Compare::value(
                            key.clone(),
                            CompareOp::Equal,
                            value.to_vec(),
                        )])
                        .and_then([TxnOp::put(key.clone(), value.to_vec(), None)])
                        .or_else([TxnOp::get(key, None)]);
                    c.txn(txn).await.is_ok()
                }
                Workload::FsyncFloor => false,
            },
            Server::Grpc(conns) => {
                let conn = &conns[worker % conns.len()];
                let (path, body) = grpc_request(workload, key, value);
                h2_unary(conn, path, body).await
            }
        }
    }
}

fn grpc_request(workload: Workload, key: Vec<u8>, value: &[u8]) -> (&'static str, Bytes) {
    match workload {
        Workload::Put => (
            "/etcdserverpb.KV/Put",
            codec::encode(&pb::PutRequest {
                key,
                value: value.to_vec(),
                ..Default::default()
            }),
        ),
        Workload::Range | Workload::RangeSerializable | Workload::FsyncFloor => (
            "/etcdserverpb.KV/Range",
            codec::encode(&pb::RangeRequest {
                key,
                serializable: workload == Workload::RangeSerializable,
                ..Default::default()
            }),
        ),
        Workload::Txn => {
            let compare = pb::Compare {
                result: pb::CompareResult::Equal as i32,
                target: pb::CompareTarget::Value as i32,
                key: key.clone(),
                target_union: Some(pb::compare::TargetUnion::Value(value.to_vec())),
                ..Default::default()
            };
            let put = pb::RequestOp {
                request: Some(pb::request_op::Request::RequestPut(pb::PutRequest {
                    key: key.clone(),
                    value: value.to_vec(),
                    ..Default::default()
                })),
            };
            let get = pb::RequestOp {
                request: Some(pb::request_op::Request::RequestRange(pb::RangeRequest {
                    key,
                    ..Default::default()
                })),
            };
            (
                "/etcdserverpb.KV/Txn",
                codec::encode(&pb::TxnRequest {
                    compare: vec![compare],
                    success: vec![put],
                    failure: vec![get],
                }),
            )
        }
    }
}

async fn h2_connect(
    addr: &str,
) -> Result<h2::client::SendRequest<Bytes>, Box<dyn std::error::Error>> {
    let tcp = TcpStream::connect(addr).await?;
    let _ = tcp.set_nodelay(true);
    let (client, conn) = h2::client::Builder::new()
        // Many small responses in flight exceed h2's default window budget.
        .initial_window_size(1 << 20)
        .initial_connection_window_size(4 << 20)
        .handshake(tcp.compat())
        .await?;
    runtime::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

/// One gRPC unary call; `true` when it ends with grpc-status 0.
async fn h2_unary(client: &h2::client::SendRequest<Bytes>, path: &str, body: Bytes) -> bool {
    let Ok(request) = http::Request::builder()
        .method("POST")
        .uri(format!("http://localhost{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
    else {
        return false;
    };
    let Ok(mut client) = client.clone().ready().await else {
        return false;
    };
    let Ok((response, mut send)) = client.send_request(request, false) else {
        return false;
    };
    if send.send_data(body, true).is_err() {
        return false;
    }
    let Ok(response) = response.await else {
        return false;
    };
    let mut body = response.into_body();
    while let Some(Ok(chunk)) = body.data().await {
        let _ = body.flow_control().release_capacity(chunk.len());
    }
    matches!(body.trailers().await, Ok(Some(t)) if t.get("grpc-status").is_some_and(|s| s == "0"))
}

/// pwrite + fdatasync, `total` times, in a preallocated scratch file.
fn fsync_floor(flags: &Flags) -> std::io::Result<Vec<Duration>> {
    use std::os::unix::fs::FileExt;
    let path = flags.dir.join("qed-bench-fsync-floor.tmp");
    let file = std::fs::File::create(&path)?;
    let record = vec![b'v'; flags.key_size + flags.val_size + 32];
    file.set_len(record.len() as u64 * flags.total)?;
    file.sync_all()?;
    let mut latencies = Vec::new();
    for i in 0..flags.total {
        let t = Instant::now();
        file.write_all_at(&record, i * record.len() as u64)?;
        file.sync_data()?;
        latencies.push(t.elapsed());
    }
    std::fs::remove_file(&path)?;
    Ok(latencies)
}

fn report(flags: &Flags, mut all: Vec<Duration>, errors: u64, elapsed: Duration) {
    all.sort();
    let pct = |p: f64| {
        all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "{:?} target={:?} clients={} total={} errors={} throughput={:.0}/s p50={:.2}ms p90={:.2}ms p99={:.2}ms max={:.2}ms",
        flags.workload,
        flags.target,
        flags.clients,
        all.len(),
        errors,
        all.len() as f64 / elapsed.as_secs_f64(),
        ms(pct(0.50)),
        ms(pct(0.90)),
        ms(pct(0.99)),
        ms(all.last().copied().unwrap_or_default()),
    );
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let flags = Arc::new(Flags::parse());
    if flags.workload == Workload::FsyncFloor {
        let start = Instant::now();
        let latencies = fsync_floor(&flags)?;
        report(&flags, latencies, 0, start.elapsed());
        return Ok(());
    }
    runtime::block_on(async move {
        let server = Server::connect(&flags).await?;
        let value = vec![b'v'; flags.val_size];
        if !matches!(flags.workload, Workload::Put) {
            for i in 0..flags.key_space.min(flags.total) {
                server
                    .run(0, Workload::Put, key(i, flags.key_size), &value)
                    .await;
            }
        }
        let next = Arc::new(AtomicU64::new(0));
        let errors = Arc::new(AtomicU64::new(0));
        let start = Instant::now();
        let mut workers = Vec::new();
        for w in 0..flags.clients {
            let (server, next, errors, value, flags) = (
                server.clone(),
                next.clone(),
                errors.clone(),
                value.clone(),
                flags.clone(),
            );
            workers.push(runtime::spawn(async move {
                let mut latencies = Vec::new();
                let mut rng = 0x9e37_79b9_7f4a_7c15u64 ^ (w as u64 + 1);
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    if n >= flags.total {
                        break;
                    }
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    let i = if flags.sequential {
                        n
                    } else {
                        rng % flags.key_space.max(1)
                    };
                    let t = Instant::now();
                    if !server
                        .run(w, flags.workload, key(i, flags.key_size), &value)
                        .await
                    {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                    latencies.push(t.elapsed());
                }
                latencies
            }));
        }
        let progress = {
            let (next, total) = (next.clone(), flags.total);
            runtime::spawn(async move {
                loop {
                    runtime::sleep(Duration::from_secs(1)).await;
                    eprint!(
                        "\r{} / {total} requests",
                        next.load(Ordering::Relaxed).min(total)
                    );
                }
            })
        };
        let mut all = Vec::new();
        for w in workers {
            all.extend(w.await);
        }
        let elapsed = start.elapsed();
        drop(progress);
        eprintln!();
        report(&flags, all, errors.load(Ordering::Relaxed), elapsed);
        Ok(())
    })
}
