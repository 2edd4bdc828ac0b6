//! Put, get, range and delete with the SDK. Start a node with `make run`,
//! then `cargo run --example kv`.

mod common;

use qed::client::{DeleteOptions, GetOptions, PutOptions};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    qed::runtime::block_on(async {
        let client = common::connect().await?;

        let put = client.put("greeting", "hello", None).await?;
        println!("put greeting at revision {}", put.header.revision);

        let put = client
            .put(
                "greeting",
                "hello again",
                Some(PutOptions::new().with_prev_kv()),
            )
            .await?;
        if let Some(prev) = put.prev_kv {
            println!("replaced {:?}", String::from_utf8_lossy(&prev.value));
        }

        for (k, v) in [
            ("fruit/apple", "red"),
            ("fruit/banana", "yellow"),
            ("fruit/cherry", "dark red"),
        ] {
            client.put(k, v, None).await?;
        }
        let fruits = client
            .get(
                "fruit/",
                Some(GetOptions::new().with_prefix().with_limit(2)),
            )
            .await?;
        println!("{} fruits, first {}:", fruits.count, fruits.kvs.len());
        for kv in &fruits.kvs {
            println!(
                "  {} = {} (version {})",
                String::from_utf8_lossy(&kv.key),
                String::from_utf8_lossy(&kv.value),
                kv.version
            );
        }

        let deleted = client
            .delete("fruit/", Some(DeleteOptions::new().with_prefix()))
            .await?;
        println!("deleted {} keys", deleted.deleted);
        Ok(())
    })
}
