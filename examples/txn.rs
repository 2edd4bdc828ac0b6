//! Compare-and-swap with a txn: move a counter from its current value to the
//! next only if nobody changed it meanwhile. `cargo run --example txn`.

mod common;

use qed::client::{Compare, CompareOp, Txn, TxnOp};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    qed::runtime::block_on(async {
        let client = common::connect().await?;
        for _ in 0..10 {
            let current = client.get("counter", None).await?;
            let (value, mod_rev) = match current.kvs.first() {
                Some(kv) => (
                    String::from_utf8_lossy(&kv.value)
                        .parse::<u64>()
                        .unwrap_or(0),
                    kv.mod_revision,
                ),
                None => (0, 0),
            };
            let txn = Txn::new()
                .when([Compare::mod_revision("counter", CompareOp::Equal, mod_rev)])
                .and_then([TxnOp::put("counter", (value + 1).to_string(), None)])
                .or_else([TxnOp::get("counter", None)]);
            let resp = client.txn(txn).await?;
            if resp.succeeded {
                println!(
                    "counter {value} -> {} at revision {}",
                    value + 1,
                    resp.header.revision
                );
                return Ok(());
            }
            println!("counter changed under us, retrying");
        }
        Err("gave up after 10 attempts".into())
    })
}
