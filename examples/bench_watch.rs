//! Watch fan-out: `watchers` watchers on one key (each on its own stream),
//! `puts` puts to that key, and the time until every watcher has every
//! event. Prints delivered events per second.
//!
//! ```sh
//! cargo run --release --example bench_watch -- --watchers 1000 --puts 1000
//! ```

mod common;

use clap::Parser;
use qed::client::WatchOptions;
use std::time::Instant;

#[derive(Parser, Debug)]
struct Flags {
    #[arg(long, default_value_t = 1000)]
    watchers: usize,
    #[arg(long, default_value_t = 1000)]
    puts: usize,
    /// Puts in flight at once.
    #[arg(long, default_value_t = 16)]
    clients: usize,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let flags = Flags::parse();
    qed::runtime::block_on(async {
        let client = common::connect().await?;
        let key = format!("bench/watch/{}", std::process::id());
        let mut tasks = Vec::new();
        for _ in 0..flags.watchers {
            let mut w = client.watch(key.clone(), WatchOptions::new()).await?;
            let want = flags.puts;
            tasks.push(qed::runtime::spawn(async move {
                let mut got = 0;
                while got < want {
                    match w.next().await {
                        Some(Ok(resp)) => got += resp.events.len(),
                        _ => break,
                    }
                }
                (got, Instant::now())
            }));
        }
        let start = Instant::now();
        let per_client = flags.puts.div_ceil(flags.clients.max(1));
        let writers: Vec<_> = (0..flags.clients.max(1))
            .map(|c| {
                let client = client.clone();
                let key = key.clone();
                let n = per_client.min(flags.puts.saturating_sub(c * per_client));
                qed::runtime::spawn(async move {
                    for i in 0..n {
                        client.put(key.clone(), i.to_string(), None).await?;
                    }
                    Ok::<_, qed::client::ClientError>(())
                })
            })
            .collect();
        for w in writers {
            w.await?;
        }
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
            "{} watchers x {} puts: puts done in {puts_done:?}, all {delivered} events delivered \
             in {all:?} ({:.0} events/s)",
            flags.watchers,
            flags.puts,
            delivered as f64 / all.as_secs_f64()
        );
        Ok(())
    })
}
