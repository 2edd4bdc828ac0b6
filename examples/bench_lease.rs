//! Keepalive throughput: grant `leases` leases, then refresh each of them
//! `rounds` times over `streams` keepalive streams (requests pipelined).
//! Prints keepalives per second.
//!
//! ```sh
//! cargo run --release --example bench_lease -- --leases 10000 --streams 8
//! ```

mod common;

use clap::Parser;
use qed::wire::lease::{LeaseKeepAliveRequest, LeaseKeepAliveResponse};
use qed::wire::Call;
use std::time::Instant;

#[derive(Parser, Debug)]
struct Flags {
    #[arg(long, default_value_t = 10_000)]
    leases: usize,
    #[arg(long, default_value_t = 8)]
    streams: usize,
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Grants in flight at once.
    #[arg(long, default_value_t = 64)]
    clients: usize,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let flags = Flags::parse();
    qed::runtime::block_on(async {
        let client = common::connect().await?;
        let started = Instant::now();
        let per = flags.leases.div_ceil(flags.clients.max(1));
        let granters: Vec<_> = (0..flags.clients.max(1))
            .map(|c| {
                let client = client.clone();
                let n = per.min(flags.leases.saturating_sub(c * per));
                qed::runtime::spawn(async move {
                    let mut ids = Vec::with_capacity(n);
                    for _ in 0..n {
                        ids.push(client.lease_grant(600).await?.id);
                    }
                    Ok::<_, qed::client::ClientError>(ids)
                })
            })
            .collect();
        let mut ids = Vec::new();
        for g in granters {
            ids.extend(g.await?);
        }
        println!("granted {} leases in {:?}", ids.len(), started.elapsed());

        let started = Instant::now();
        let streams = flags.streams.max(1);
        let mut readers = Vec::new();
        for s in 0..streams {
            let mine: Vec<i64> = ids.iter().skip(s).step_by(streams).copied().collect();
            let (mut send, mut recv) = client.open_stream(None, Call::LeaseKeepAlive).await?;
            let rounds = flags.rounds;
            let count = mine.len() * rounds;
            qed::runtime::spawn(async move {
                for _ in 0..rounds {
                    for id in &mine {
                        send.send(&LeaseKeepAliveRequest { id: *id }).await?;
                    }
                }
                Ok::<_, qed::client::ClientError>(send)
            });
            readers.push(qed::runtime::spawn(async move {
                let mut alive = 0usize;
                for _ in 0..count {
                    let resp: LeaseKeepAliveResponse =
                        recv.recv().await?.ok_or(qed::client::ClientError::Closed)?;
                    alive += usize::from(resp.ttl > 0);
                }
                Ok::<_, qed::client::ClientError>(alive)
            }));
        }
        let mut alive = 0;
        for r in readers {
            alive += r.await?;
        }
        let took = started.elapsed();
        println!(
            "{alive} keepalives over {streams} streams in {took:?} ({:.0} keepalives/s)",
            alive as f64 / took.as_secs_f64()
        );
        Ok(())
    })
}
