//! Watch fan-out: `watchers` watchers spread over `prefixes` key prefixes
//! (each watcher on its own stream, spread over `connections` client
//! connections), `puts` puts spread round-robin over the prefixes, and the
//! time until every watcher has every event. Prints delivered events/s.
//!
//! ```sh
//! # 1,000 watchers on one key, 1,000 puts
//! cargo run --release --example bench_watch -- --watchers 1000 --puts 1000
//! # 10,000 watchers across 100 prefixes
//! cargo run --release --example bench_watch -- --watchers 10000 --prefixes 100 --connections 4
//! # the catch-up path: puts first, then watchers replaying them
//! cargo run --release --example bench_watch -- --from-history
//! ```

mod common;

use clap::Parser;
use qed::client::{Client, WatchOptions};
use std::time::Instant;

#[derive(Parser, Debug)]
struct Flags {
    #[arg(long, default_value_t = 1000)]
    watchers: usize,
    #[arg(long, default_value_t = 1000)]
    puts: usize,
    /// 1: every watcher watches one key; more: prefix watchers, spread.
    #[arg(long, default_value_t = 1)]
    prefixes: usize,
    /// Client connections the watchers are spread over (a connection
    /// carries at most 4096 streams at once).
    #[arg(long, default_value_t = 1)]
    connections: usize,
    /// Puts in flight at once.
    #[arg(long, default_value_t = 16)]
    clients: usize,
    /// Write first, then start the watchers from the first put's revision
    /// (history replay); the clock starts with the first watch.
    #[arg(long)]
    from_history: bool,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let flags = Flags::parse();
    let prefixes = flags.prefixes.max(1);
    qed::runtime::block_on(async {
        let mut conns: Vec<Client> = Vec::new();
        for _ in 0..flags.connections.max(1) {
            conns.push(common::connect().await?);
        }
        let base = format!("bench/watch/{}/", std::process::id());
        let key_of = |i: usize| {
            if prefixes == 1 {
                format!("{base}key")
            } else {
                format!("{base}{}/k", i % prefixes)
            }
        };
        let first_rev = conns[0].get(key_of(0), None).await?.header.revision + 1;
        let writers = flags.clients.max(1);
        let write_all = || async {
            let handles: Vec<_> = (0..writers)
                .map(|c| {
                    let client = conns[c % conns.len()].clone();
                    let keys: Vec<String> = (c..flags.puts).step_by(writers).map(key_of).collect();
                    qed::runtime::spawn(async move {
                        for (i, key) in keys.into_iter().enumerate() {
                            client.put(key, i.to_string(), None).await?;
                        }
                        Ok::<_, qed::client::ClientError>(())
                    })
                })
                .collect();
            for h in handles {
                h.await?;
            }
            Ok::<_, qed::client::ClientError>(())
        };
        if flags.from_history {
            write_all().await?;
        }
        let history_start = Instant::now();
        let start_rev = if flags.from_history { first_rev } else { 0 };
        let mut tasks = Vec::new();
        for w in 0..flags.watchers {
            let client = &conns[w % conns.len()];
            let p = w % prefixes;
            let want = (0..flags.puts).filter(|i| i % prefixes == p).count();
            let mut watcher = if prefixes == 1 {
                let options = WatchOptions::new().with_start_revision(start_rev);
                client.watch(key_of(0), options).await?
            } else {
                let options = WatchOptions::new()
                    .with_prefix()
                    .with_start_revision(start_rev);
                client.watch(format!("{base}{p}/"), options).await?
            };
            tasks.push(qed::runtime::spawn(async move {
                let mut got = 0;
                while got < want {
                    match watcher.next().await {
                        Some(Ok(resp)) => got += resp.events.len(),
                        _ => break,
                    }
                }
                (got, Instant::now())
            }));
        }
        let start = if flags.from_history {
            history_start
        } else {
            let now = Instant::now();
            write_all().await?;
            now
        };
        let puts_done = start.elapsed();
        let mut delivered = 0;
        let mut last = start;
        for t in tasks {
            let (got, at) = t.await;
            delivered += got;
            last = last.max(at);
        }
        let all = last - start;
        println!(
            "{} watchers over {prefixes} prefix(es), {} puts: puts done in {puts_done:?}, \
             {delivered} events delivered in {all:?} ({:.0} events/s)",
            flags.watchers,
            flags.puts,
            delivered as f64 / all.as_secs_f64()
        );
        Ok(())
    })
}
