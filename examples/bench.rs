//! A load driver for a qed node through the native SDK, shaped like etcd's
//! `benchmark` tool: `clients` requests in flight, `total` requests, keys of
//! `key-size` bytes drawn from `key-space`, values of `val-size` bytes.
//!
//! ```sh
//! cargo run --release --example bench -- put --clients 128 --total 100000
//! cargo run --release --example bench -- range --clients 16
//! ```
//! Prints throughput and latency percentiles, with a progress line on stderr.

mod common;

use clap::{Parser, ValueEnum};
use qed::client::{Client, GetOptions};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Workload {
    /// Puts to random keys.
    Put,
    /// Linearizable gets of random keys (prefilled).
    Range,
    /// Serializable gets of random keys (prefilled).
    RangeSerializable,
    /// No node: `pwrite` of one put's bytes + `fdatasync` into a
    /// preallocated file, one at a time: the floor a durable put sits on.
    FsyncFloor,
}

#[derive(Parser, Debug)]
struct Flags {
    #[arg(value_enum)]
    workload: Workload,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 16)]
    clients: usize,
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
    /// Directory for fsync-floor's scratch file (put it on the node's disk).
    #[arg(long, default_value = ".")]
    dir: std::path::PathBuf,
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

fn report(
    workload: Workload,
    clients: usize,
    mut all: Vec<Duration>,
    errors: u64,
    elapsed: Duration,
) {
    all.sort();
    let pct = |p: f64| {
        all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    println!(
        "{:?} clients={} total={} errors={} throughput={:.0}/s p50={:.2}ms p90={:.2}ms p99={:.2}ms max={:.2}ms",
        workload,
        clients,
        all.len(),
        errors,
        all.len() as f64 / elapsed.as_secs_f64(),
        pct(0.50).as_secs_f64() * 1e3,
        pct(0.90).as_secs_f64() * 1e3,
        pct(0.99).as_secs_f64() * 1e3,
        all.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
    );
}

fn key(i: u64, size: usize) -> Vec<u8> {
    let mut k = format!("{i:0width$}", width = size).into_bytes();
    k.truncate(size.max(1));
    k
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let flags = Flags::parse();
    if let Workload::FsyncFloor = flags.workload {
        let start = Instant::now();
        let latencies = fsync_floor(&flags)?;
        report(flags.workload, 1, latencies, 0, start.elapsed());
        return Ok(());
    }
    qed::runtime::block_on(async move {
        let client = common::connect().await?;
        let value = vec![b'v'; flags.val_size];
        if !matches!(flags.workload, Workload::Put) {
            for i in 0..flags.key_space.min(flags.total) {
                client
                    .put(key(i, flags.key_size), value.clone(), None)
                    .await?;
            }
        }
        let next = Arc::new(AtomicU64::new(0));
        let errors = Arc::new(AtomicU64::new(0));
        let start = Instant::now();
        let mut workers = Vec::new();
        for w in 0..flags.clients {
            let (client, next, errors, value) =
                (client.clone(), next.clone(), errors.clone(), value.clone());
            let (workload, key_size, key_space, total) =
                (flags.workload, flags.key_size, flags.key_space, flags.total);
            workers.push(qed::runtime::spawn(async move {
                let mut latencies = Vec::new();
                let mut rng = 0x9e37_79b9_7f4a_7c15u64 ^ (w as u64);
                while next.fetch_add(1, Ordering::Relaxed) < total {
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    let k = key(rng % key_space, key_size);
                    let t = Instant::now();
                    let ok = run_one(&client, workload, k, &value).await;
                    latencies.push(t.elapsed());
                    if !ok {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
                latencies
            }));
        }
        let progress = {
            let next = next.clone();
            qed::runtime::spawn(async move {
                loop {
                    qed::runtime::sleep(Duration::from_secs(1)).await;
                    eprint!(
                        "\r{} / {} requests",
                        next.load(Ordering::Relaxed).min(flags.total),
                        flags.total
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
        report(
            flags.workload,
            flags.clients,
            all,
            errors.load(Ordering::Relaxed),
            elapsed,
        );
        Ok(())
    })
}

async fn run_one(client: &Client, workload: Workload, key: Vec<u8>, value: &[u8]) -> bool {
    match workload {
        Workload::Put => client.put(key, value.to_vec(), None).await.is_ok(),
        Workload::Range => client.get(key, None).await.is_ok(),
        Workload::RangeSerializable => client
            .get(key, Some(GetOptions::new().with_serializable()))
            .await
            .is_ok(),
        // Measured without a node, in main.
        Workload::FsyncFloor => false,
    }
}
