//! Watch a prefix while writing to it: the watcher sees each put and delete
//! in revision order, with the previous value. `cargo run --example watch`.

mod common;

use qed::client::{DeleteOptions, WatchOptions};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    qed::runtime::block_on(async {
        let client = common::connect().await?;
        let options = WatchOptions::new().with_prefix().with_prev_kv();
        let mut watcher = client.watch("demo/watch/", options).await?;
        client.put("demo/watch/a", "1", None).await?;
        client.put("demo/watch/a", "2", None).await?;
        let all = DeleteOptions::new().with_prefix();
        client.delete("demo/watch/", Some(all)).await?;
        let mut seen = 0;
        while seen < 3 {
            let Some(resp) = watcher.next().await else {
                break;
            };
            for ev in resp?.events {
                let prev = ev
                    .prev_kv
                    .map(|p| String::from_utf8_lossy(&p.value).into_owned());
                println!(
                    "{:?} {} = {:?} (was {:?}) at revision {}",
                    ev.kind,
                    String::from_utf8_lossy(&ev.kv.key),
                    String::from_utf8_lossy(&ev.kv.value),
                    prev,
                    ev.kv.mod_revision
                );
                seen += 1;
            }
        }
        watcher.cancel().await?;
        Ok(())
    })
}
