//! A distributed lock: run several copies at once and the increments never
//! collide. `cargo run --example lock`.

mod common;

use qed::client::concurrency::{Mutex, Session};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    qed::runtime::block_on(async {
        let client = common::connect().await?;
        // The lock is tied to the session's lease: if this process dies,
        // the lock is released when the lease expires (10 s).
        let session = Session::new(&client, 10).await?;
        let mut lock = Mutex::new(&session, "demo/lock");
        for _ in 0..5 {
            lock.lock().await?;
            let current = client.get("demo/lock-counter", None).await?;
            let n: u64 = current
                .kvs
                .first()
                .and_then(|kv| std::str::from_utf8(&kv.value).ok()?.parse().ok())
                .unwrap_or(0);
            client
                .put("demo/lock-counter", (n + 1).to_string(), None)
                .await?;
            println!("counter {n} -> {} under the lock", n + 1);
            lock.unlock().await?;
        }
        session.close().await?;
        Ok(())
    })
}
