//! The real `qed` binary on a loopback port, driven through the SDK over
//! QUIC: etcd's KV results (revisions, versions, errors) end to end, and bad
//! input that gets typed errors while the node keeps serving.

mod common;

use common::TestNode;
use qed::client::{
    ClientError, Compare, CompareOp, DeleteOptions, GetOptions, PutOptions, Txn, TxnOp,
};
use qed::wire::kv::ResponseOp;
use qed::wire::Error;

fn server_error(r: Result<impl std::fmt::Debug, ClientError>) -> Error {
    match r {
        Err(ClientError::Server(e)) => e,
        other => panic!("expected a server error, got {other:?}"),
    }
}

#[test]
fn kv_semantics_match_etcd() {
    let node = TestNode::start(&[]);
    qed::runtime::block_on(async {
        let c = node.client().await;

        // A fresh store is at revision 1; each put bumps it by one.
        let put = c.put("a", "1", None).await.unwrap();
        assert_eq!(put.header.revision, 2);
        assert_ne!(put.header.member_id, 0);
        assert_ne!(put.header.cluster_id, 0);
        let put = c
            .put("a", "2", Some(PutOptions::new().with_prev_kv()))
            .await
            .unwrap();
        assert_eq!(put.header.revision, 3);
        let prev = put.prev_kv.expect("prev_kv requested");
        assert_eq!((prev.value.as_slice(), prev.version), (&b"1"[..], 1));

        let got = c.get("a", None).await.unwrap();
        let kv = &got.kvs[0];
        assert_eq!((kv.create_revision, kv.mod_revision, kv.version), (2, 3, 2));
        assert_eq!(got.count, 1);

        c.put("b", "b", None).await.unwrap();
        c.put("c", "c", None).await.unwrap();
        let range = c
            .get("a", Some(GetOptions::new().with_range("c")))
            .await
            .unwrap();
        assert_eq!(
            range
                .kvs
                .iter()
                .map(|kv| kv.key.clone())
                .collect::<Vec<_>>(),
            vec![b"a".to_vec(), b"b".to_vec()]
        );
        let limited = c
            .get("", Some(GetOptions::new().with_from_key().with_limit(1)))
            .await
            .unwrap();
        assert_eq!(
            (limited.kvs.len(), limited.count, limited.more),
            (1, 3, true)
        );
        let count = c
            .get(
                "",
                Some(GetOptions::new().with_from_key().with_count_only()),
            )
            .await
            .unwrap();
        assert_eq!((count.kvs.len(), count.count), (0, 3));

        // Delete leaves history readable at older revisions.
        let del = c
            .delete("a", Some(DeleteOptions::new().with_prev_kv()))
            .await
            .unwrap();
        assert_eq!(
            (del.deleted, del.header.revision, del.prev_kvs.len()),
            (1, 6, 1)
        );
        assert!(c.get("a", None).await.unwrap().kvs.is_empty());
        let old = c
            .get("a", Some(GetOptions::new().with_revision(3)))
            .await
            .unwrap();
        assert_eq!(old.kvs[0].value, b"2");
        // Deleting nothing does not bump the revision.
        let none = c.delete("nothing", None).await.unwrap();
        assert_eq!((none.deleted, none.header.revision), (0, 6));

        // A txn takes one revision for all its writes.
        let txn = Txn::new()
            .when([Compare::value("b", CompareOp::Equal, "b")])
            .and_then([
                TxnOp::put("b", "bb", None),
                TxnOp::put("d", "d", None),
                TxnOp::get("b", None),
            ])
            .or_else([TxnOp::get("b", None)]);
        let resp = c.txn(txn).await.unwrap();
        assert!(resp.succeeded);
        assert_eq!(resp.header.revision, 7);
        match &resp.responses[2] {
            ResponseOp::Range(r) => assert_eq!(r.kvs[0].value, b"bb"),
            other => panic!("expected a range response, got {other:?}"),
        }
        let d = c.get("d", None).await.unwrap();
        assert_eq!(d.kvs[0].mod_revision, 7);
        let failed = c
            .txn(
                Txn::new()
                    .when([Compare::version("b", CompareOp::Greater, 5)])
                    .or_else([TxnOp::get("b", None)]),
            )
            .await
            .unwrap();
        assert!(!failed.succeeded);
        assert_eq!(failed.header.revision, 7);

        // Txn validation, as etcd.
        let dup = Txn::new().and_then([TxnOp::put("x", "1", None), TxnOp::put("x", "2", None)]);
        assert_eq!(server_error(c.txn(dup).await), Error::DuplicateKey);
        let many = Txn::new().and_then((0..129).map(|i| TxnOp::put(format!("k{i}"), "v", None)));
        assert_eq!(server_error(c.txn(many).await), Error::TooManyOps);

        // Compaction.
        c.compact(3, true).await.unwrap();
        let e = server_error(c.get("a", Some(GetOptions::new().with_revision(2))).await);
        assert_eq!(
            e.to_string(),
            "etcdserver: mvcc: required revision has been compacted"
        );
        assert_eq!(server_error(c.compact(3, false).await), Error::Compacted);
        let e = server_error(c.compact(100, false).await);
        assert_eq!(
            e.to_string(),
            "etcdserver: mvcc: required revision is a future revision"
        );
        assert_eq!(
            server_error(c.get("b", Some(GetOptions::new().with_revision(100))).await),
            Error::FutureRev
        );

        // Bad requests change nothing.
        assert_eq!(server_error(c.put("", "v", None).await), Error::EmptyKey);
        assert_eq!(
            server_error(
                c.put("missing", "", Some(PutOptions::new().with_ignore_value()))
                    .await
            ),
            Error::KeyNotFound
        );
        assert_eq!(
            server_error(
                c.put("k", "v", Some(PutOptions::new().with_lease(42)))
                    .await
            ),
            Error::LeaseNotFound
        );
        assert_eq!(c.get("b", None).await.unwrap().header.revision, 7);
    });
}

#[test]
fn oversized_and_malformed_requests_get_typed_errors() {
    let node = TestNode::start(&[]);
    qed::runtime::block_on(async {
        let c = node.client().await;
        let big = vec![b'x'; 1536 * 1024 + 1];
        assert_eq!(
            server_error(c.put("big", big, None).await),
            Error::RequestTooLarge
        );

        // Raw garbage on a stream: a typed error back, the connection lives.
        let conn = raw_connection(&node).await;
        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        let garbage = [0u8, 0, 0, 3, 0xff, 0xff, 0xff];
        send.write_all(&garbage).await.unwrap();
        let _ = send.finish();
        let reply: qed::wire::Reply = qed::transport::stream::read(&mut recv, 1 << 20)
            .await
            .unwrap()
            .unwrap();
        assert!(
            matches!(reply, Err(Error::InvalidArgument(ref m)) if m.starts_with("malformed request"))
        );

        // A length prefix far over the limit is refused before allocation.
        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        send.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
        let reply: qed::wire::Reply = qed::transport::stream::read(&mut recv, 1 << 20)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(reply, Err(Error::RequestTooLarge));

        // A truncated frame (stream finished mid-body) ends only that stream.
        let (mut send, _recv) = conn.open_bi().await.unwrap();
        send.write_all(&[0, 0, 0, 100, 1, 2]).await.unwrap();
        let _ = send.finish();

        // Everyone, this connection included, is still served.
        c.put("after", "ok", None).await.unwrap();
        assert_eq!(c.get("after", None).await.unwrap().kvs[0].value, b"ok");
        assert!(conn.close_reason().is_none());
        assert!(c.get("big", None).await.unwrap().kvs.is_empty());
    });
}

#[test]
fn wrong_alpn_fails_at_the_handshake() {
    let node = TestNode::start(&[]);
    qed::runtime::block_on(async {
        let _ready = node.client().await;
        let files = qed::transport::tls::TlsFiles {
            ca: Some(node.ca_file()),
            ..Default::default()
        };
        let config = qed::transport::tls::client_config(&files, b"qed-client/0").unwrap();
        let url = qed::transport::url::parse(&node.url).unwrap();
        let endpoint = qed::transport::endpoint::client(url.addr, config).unwrap();
        let result = endpoint.connect(url.addr, "127.0.0.1").unwrap().await;
        assert!(
            result.is_err(),
            "a client speaking another protocol version must be refused"
        );
    });
}

async fn raw_connection(node: &TestNode) -> quinn::Connection {
    let files = qed::transport::tls::TlsFiles {
        ca: Some(node.ca_file()),
        ..Default::default()
    };
    let config = qed::transport::tls::client_config(&files, qed::wire::CLIENT_ALPN).unwrap();
    let url = qed::transport::url::parse(&node.url).unwrap();
    let endpoint = qed::transport::endpoint::client(url.addr, config).unwrap();
    endpoint
        .connect(url.addr, "127.0.0.1")
        .unwrap()
        .await
        .unwrap()
}

#[test]
fn client_fails_over_from_a_dead_endpoint() {
    let node = TestNode::start(&[]);
    qed::runtime::block_on(async {
        let _ready = node.client().await;
        let dead = format!("https://127.0.0.1:{}", common::free_udp_port());
        let options = qed::client::ConnectOptions {
            ca_file: Some(node.ca_file()),
            dial_timeout: std::time::Duration::from_millis(300),
            ..Default::default()
        };
        let c = qed::client::Client::connect(&[dead, node.url.clone()], options)
            .await
            .unwrap();
        // Round-robin sends every other call towards the dead endpoint; each
        // must still succeed on the live one.
        for i in 0..6 {
            c.put(format!("k{i}"), "v", None).await.unwrap();
        }
        assert_eq!(c.get("k5", None).await.unwrap().kvs.len(), 1);
    });
}

#[test]
fn client_cert_auth_refuses_clients_without_a_certificate() {
    let certs = common::TempDir::new("certs");
    let dir = certs.0.join("c");
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_qed"))
        .args(["certs", "--dir"])
        .arg(&dir)
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    let path = |f: &str| dir.join(f).display().to_string();
    let (cert, key, ca) = (path("node.crt"), path("node.key"), path("ca.crt"));
    let node = TestNode::start(&[
        "--cert-file",
        &cert,
        "--key-file",
        &key,
        "--trusted-ca-file",
        &ca,
        "--client-cert-auth",
    ]);
    qed::runtime::block_on(async {
        let options = |with_cert: bool| qed::client::ConnectOptions {
            ca_file: Some(dir.join("ca.crt")),
            cert_file: with_cert.then(|| dir.join("client.crt")),
            key_file: with_cert.then(|| dir.join("client.key")),
            dial_timeout: std::time::Duration::from_secs(5),
            ..Default::default()
        };
        // The node may still be binding: poll with the certificate first.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        let c = loop {
            match qed::client::Client::connect(std::slice::from_ref(&node.url), options(true)).await
            {
                Ok(c) => break c,
                Err(e) => {
                    assert!(std::time::Instant::now() < deadline, "{e}");
                    qed::runtime::sleep(std::time::Duration::from_millis(50)).await;
                }
            }
        };
        c.put("mtls", "ok", None).await.unwrap();
        let anonymous =
            match qed::client::Client::connect(std::slice::from_ref(&node.url), options(false))
                .await
            {
                Ok(c) => c.put("anon", "x", None).await.map(|_| ()),
                Err(e) => Err(e),
            };
        assert!(
            anonymous.is_err(),
            "a client without a certificate must be refused"
        );
        assert!(c.get("anon", None).await.unwrap().kvs.is_empty());
    });
}
