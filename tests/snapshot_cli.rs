//! `qed snapshot save | status | restore` end to end, as an operator runs
//! them: save from a live node, inspect, restore into a new data directory,
//! start a node on it and find the same keys, revision and hash.

mod common;

use common::{TempDir, TestCluster, TestNode};
use qed::client::GetOptions;
use std::process::Command;

fn qed(args: &[&str]) -> (bool, String, String) {
    common::run(Command::new(env!("CARGO_BIN_EXE_qed")).args(args))
}

#[test]
fn save_status_restore_round_trip() {
    let node = TestNode::start(&["--snapshot-count", "25"]);
    let work = TempDir::new("snapcli");
    let file = work.0.join("backup.snap");
    let file_s = file.display().to_string();
    let (revision, hash) = qed::runtime::block_on(async {
        let c = node.client().await;
        for i in 0..60 {
            c.put(format!("key{i:02}"), format!("value{i}"), None)
                .await
                .unwrap();
        }
        c.delete("key00", None).await.unwrap();
        let hash = match c
            .call(qed::wire::Request::HashKv(Default::default()))
            .await
            .unwrap()
        {
            qed::wire::Response::HashKv(h) => h.hash,
            other => panic!("{other:?}"),
        };
        (c.get("key01", None).await.unwrap().header.revision, hash)
    });

    let ca = node.ca_file().display().to_string();
    let (ok, stdout, stderr) = qed(&[
        "snapshot",
        "save",
        &file_s,
        "--endpoints",
        &node.url,
        "--cacert",
        &ca,
    ]);
    assert!(ok, "save failed: {stderr}");
    assert_eq!(stdout.trim(), format!("Snapshot saved at {file_s}"));

    let (ok, stdout, stderr) = qed(&["snapshot", "status", &file_s]);
    assert!(ok, "status failed: {stderr}");
    let fields: Vec<&str> = stdout.trim().split(", ").collect();
    assert_eq!(
        fields[0],
        format!("{hash:x}"),
        "status hash is the node's HashKV"
    );
    assert_eq!(fields[1], revision.to_string());
    assert_eq!(fields[2], "59");

    let restored = work.0.join("restored");
    let restored_s = restored.display().to_string();
    let (ok, _, stderr) = qed(&["snapshot", "restore", &file_s, "--data-dir", &restored_s]);
    assert!(ok, "restore failed: {stderr}");
    let (ok, _, stderr) = qed(&["snapshot", "restore", &file_s, "--data-dir", &restored_s]);
    assert!(
        !ok && stderr.contains("exists"),
        "restore must not overwrite: {stderr}"
    );

    // A damaged file is refused with its name.
    let mut bytes = std::fs::read(&file).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    let bad = work.0.join("bad.snap");
    std::fs::write(&bad, &bytes).unwrap();
    let (ok, _, stderr) = qed(&["snapshot", "status", &bad.display().to_string()]);
    assert!(
        !ok && stderr.contains("bad.snap") && stderr.contains("checksum"),
        "{stderr}"
    );

    drop(node);
    let url = format!("https://127.0.0.1:{}", common::free_udp_port());
    let mut child = Command::new(env!("CARGO_BIN_EXE_qed"))
        .args([
            "--data-dir",
            &restored_s,
            "--listen-client-urls",
            &url,
            "--log-level",
            "warn",
        ])
        .spawn()
        .unwrap();
    let ca = restored.join("certs/ca.crt");
    let result = std::panic::catch_unwind(|| {
        qed::runtime::block_on(async {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
            let c = loop {
                let options = qed::client::ConnectOptions {
                    ca_file: Some(ca.clone()),
                    ..Default::default()
                };
                match qed::client::Client::connect(std::slice::from_ref(&url), options).await {
                    Ok(c) if common::has_leader(&c).await => break c,
                    Ok(_) => {
                        assert!(std::time::Instant::now() < deadline, "no leader");
                        qed::runtime::sleep(std::time::Duration::from_millis(20)).await;
                    }
                    Err(e) => {
                        assert!(std::time::Instant::now() < deadline, "{e}");
                        qed::runtime::sleep(std::time::Duration::from_millis(50)).await;
                    }
                }
            };
            let all = c
                .get("key", Some(GetOptions::new().with_prefix()))
                .await
                .unwrap();
            assert_eq!(all.count, 59);
            assert_eq!(all.header.revision, revision);
            assert!(c.get("key00", None).await.unwrap().kvs.is_empty());
            // The restored member takes writes.
            let put = c.put("after-restore", "ok", None).await.unwrap();
            assert_eq!(put.header.revision, revision + 1);
        })
    });
    let _ = child.kill();
    let _ = child.wait();
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}

/// A snapshot restored into every member of a new three-member cluster
/// (`--initial-cluster`, as etcd's restore): they elect a leader among
/// themselves and all serve the data and take writes.
#[test]
fn restore_into_a_three_member_cluster() {
    let node = TestNode::start(&[]);
    let work = TempDir::new("snapcluster");
    let file = work.0.join("backup.snap");
    let file_s = file.display().to_string();
    let revision = qed::runtime::block_on(async {
        let c = node.client().await;
        for i in 0..20 {
            c.put(format!("key{i:02}"), "v", None).await.unwrap();
        }
        c.get("key00", None).await.unwrap().header.revision
    });
    let ca = node.ca_file().display().to_string();
    let (ok, _, stderr) = qed(&[
        "snapshot",
        "save",
        &file_s,
        "--endpoints",
        &node.url,
        "--cacert",
        &ca,
    ]);
    assert!(ok, "save failed: {stderr}");
    drop(node);

    let cluster = TestCluster::start_prepared(
        3,
        |_| Vec::new(),
        |member, initial_cluster, token| {
            let dir = member.data_dir.display().to_string();
            let (ok, stdout, stderr) = qed(&[
                "snapshot",
                "restore",
                &file_s,
                "--data-dir",
                &dir,
                "--name",
                &member.name,
                "--initial-advertise-peer-urls",
                &member.peer_url,
                "--initial-cluster",
                initial_cluster,
                "--initial-cluster-token",
                token,
            ]);
            assert!(ok, "restore of {}: {stderr}", member.name);
            assert!(stdout.contains("20 keys"), "{stdout}");
        },
    );
    qed::runtime::block_on(async {
        let clients = vec![
            Some(cluster.client(0).await),
            Some(cluster.client(1).await),
            Some(cluster.client(2).await),
        ];
        cluster
            .wait_for_leader(&clients, std::time::Duration::from_secs(30))
            .await;
        for c in clients.iter().flatten() {
            let all = c
                .get("key", Some(GetOptions::new().with_prefix()))
                .await
                .unwrap();
            assert_eq!(all.count, 20);
            assert_eq!(all.header.revision, revision);
        }
        let c = cluster.client_of_all().await;
        let put = c.put("after-restore", "ok", None).await.unwrap();
        assert_eq!(put.header.revision, revision + 1);
    });
    // A member whose name is not in --initial-cluster is refused.
    let (ok, _, stderr) = qed(&[
        "snapshot",
        "restore",
        &file_s,
        "--data-dir",
        &work.0.join("stray").display().to_string(),
        "--name",
        "stray",
        "--initial-cluster",
        "n1=http://127.0.0.1:1",
    ]);
    assert!(!ok && stderr.contains("stray"), "{stderr}");
}

/// Snapshots saved before saves became etcd backends (qed's own framing
/// plus the sha256 trailer) are still read by status and restore.
#[test]
fn qed_format_snapshots_still_read() {
    use qed::server::state_machine::{Limits, StateMachine};
    let work = TempDir::new("snapold");
    let mut state = StateMachine::new(
        Limits {
            lease: Default::default(),
        },
        Default::default(),
    );
    let put = qed::wire::Request::Put(qed::wire::kv::PutRequest {
        key: b"old".to_vec(),
        value: b"format".to_vec(),
        ..Default::default()
    });
    let _ = state.apply_entry(1, &put, None, 0, &mut Vec::new());
    let image = state.to_snapshot().unwrap();
    let file = work.0.join("old.snap");
    std::fs::write(
        &file,
        qed::server::snapshot_file::seal(qed::storage::snapshot::encode(&image)),
    )
    .unwrap();
    let file_s = file.display().to_string();
    let (ok, stdout, stderr) = qed(&["snapshot", "status", &file_s]);
    assert!(ok, "status failed: {stderr}");
    let fields: Vec<&str> = stdout.trim().split(", ").collect();
    assert_eq!(&fields[1..3], ["2", "1"], "{stdout}");
    let restored = work.0.join("restored").display().to_string();
    let (ok, stdout, stderr) = qed(&["snapshot", "restore", &file_s, "--data-dir", &restored]);
    assert!(ok, "restore failed: {stderr}");
    assert!(stdout.contains("restored qed snapshot"), "{stdout}");
}
