//! A key that lives only as long as its lease: grant, attach, keep alive,
//! inspect, revoke. `cargo run --example lease`.

mod common;

use qed::client::PutOptions;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    qed::runtime::block_on(async {
        let client = common::connect().await?;
        let lease = client.lease_grant(5).await?;
        println!("granted lease {:x} for {} s", lease.id, lease.ttl);
        let attached = PutOptions::new().with_lease(lease.id);
        client
            .put("demo/lease/alive", "yes", Some(attached))
            .await?;

        // Refreshed in the background until `keep_alive` is dropped.
        let keep_alive = client.lease_keep_alive(lease.id).await?;
        let ttl = client.lease_time_to_live(lease.id, true).await?;
        let keys: Vec<String> = ttl
            .keys
            .iter()
            .map(|k| String::from_utf8_lossy(k).into_owned())
            .collect();
        println!("{} s left of {}, keys {keys:?}", ttl.ttl, ttl.granted_ttl);
        drop(keep_alive);

        client.lease_revoke(lease.id).await?;
        let gone = client.get("demo/lease/alive", None).await?;
        println!("after revoke the key is gone: {}", gone.kvs.is_empty());
        Ok(())
    })
}
