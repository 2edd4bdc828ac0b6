//! Leader election: campaign, proclaim a new value, then resign. Run two
//! copies to see the second take over when the first resigns.
//! `cargo run --example election`.

mod common;

use qed::client::concurrency::{Election, Session};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    qed::runtime::block_on(async {
        let client = common::connect().await?;
        let session = Session::new(&client, 10).await?;
        let mut election = Election::new(&session, "demo/election");
        let me = format!("pid {}", std::process::id());
        println!("{me}: campaigning");
        election.campaign(me.clone()).await?;
        println!("{me}: leading");
        election.proclaim(format!("{me}, still leading")).await?;
        let leader = election.leader().await?;
        println!("leader says {:?}", String::from_utf8_lossy(&leader.value));
        qed::runtime::sleep(std::time::Duration::from_secs(2)).await;
        election.resign().await?;
        println!("{me}: resigned");
        session.close().await?;
        Ok(())
    })
}
