//! Unary calls multiplexed on QUIC streams (`Call::Mux`) end to end: a
//! real `qed`, the SDK with `ConnectOptions::mux_streams`, raw mux
//! streams, and a stand-in for a node from before `Call::Mux`.
//!
//! What must hold: many concurrent SDK calls over a few mux streams all
//! get their own replies; on a raw mux stream replies carry their call's
//! number, a call too large or that does not decode gets its own error and
//! the stream carries on, and only a frame without a readable number ends
//! the stream (not the connection); a node that refuses `Call::Mux` as
//! malformed is asked once per connection and every call still succeeds on
//! a stream of its own; after a node restart the same client serves again.

mod common;

use common::{TempDir, TestNode};
use qed::client::{Client, ClientError, ConnectOptions};
use qed::transport::stream::{self, RecvHalf, SendHalf};
use qed::wire::{self, frame, Call, ClientRequest, Reply, UnixReply, UnixRequest};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn mux_options(ca: std::path::PathBuf) -> ConnectOptions {
    ConnectOptions {
        ca_file: Some(ca),
        request_timeout: Duration::from_secs(10),
        mux_streams: 4,
        ..Default::default()
    }
}

/// A mux client of `node` once it answers and has a leader.
async fn mux_client(node: &TestNode) -> Client {
    let _ready = node.client().await;
    Client::connect(std::slice::from_ref(&node.url), mux_options(node.ca_file()))
        .await
        .expect("connect")
}

async fn raw_connection(url: &str, ca: std::path::PathBuf) -> quinn::Connection {
    let files = qed::transport::tls::TlsFiles {
        ca: Some(ca),
        ..Default::default()
    };
    let config = qed::transport::tls::client_config(&files, wire::CLIENT_ALPN).expect("tls");
    let url = qed::transport::url::parse(url).expect("url");
    let endpoint = qed::transport::endpoint::client(url.addr, config).expect("endpoint");
    endpoint
        .connect(url.addr, "127.0.0.1")
        .expect("connect")
        .await
        .expect("handshake")
}

fn range(id: u64, key: &[u8]) -> UnixRequest {
    UnixRequest {
        id,
        request: ClientRequest {
            token: None,
            call: Call::Unary(wire::Request::Range(wire::kv::RangeRequest {
                key: key.to_vec(),
                ..Default::default()
            })),
        },
    }
}

#[test]
fn concurrent_sdk_calls_share_mux_streams() {
    let node = TestNode::start(&[]);
    qed::runtime::block_on(async {
        let c = mux_client(&node).await;
        common::concurrent_puts_and_gets(&c, 32, 20).await;
        let all = c
            .get(
                "k/",
                Some(
                    qed::client::GetOptions::new()
                        .with_prefix()
                        .with_count_only(),
                ),
            )
            .await
            .expect("count");
        assert_eq!(all.count, 32 * 20);
        // A request over the size limit is refused without being sent; one
        // within the client's limit but over the node's gets the node's
        // error; the mux serves on.
        let big = vec![b'x'; 1536 * 1024 + 1];
        assert!(matches!(
            c.put("big", big, None).await,
            Err(ClientError::Server(wire::Error::RequestTooLarge))
        ));
        // Streaming calls keep streams of their own beside the mux.
        let lease = c.lease_grant(30).await.expect("grant");
        let alive = c.lease_keep_alive_once(lease.id).await.expect("keepalive");
        assert_eq!(alive.id, lease.id);
        c.put("after", "big", None).await.expect("still served");
    });
}

#[test]
fn a_raw_mux_stream_answers_each_call_by_number() {
    let node = TestNode::start(&[]);
    qed::runtime::block_on(async {
        let c = node.client().await;
        c.put("w", "9", None).await.expect("put");
        let conn = raw_connection(&node.url, node.ca_file()).await;
        let (send, recv) = conn.open_bi().await.expect("open");
        let (mut send, mut recv) = (SendHalf::Quic(send), RecvHalf::quic(recv));
        let open = ClientRequest {
            token: None,
            call: Call::Mux,
        };
        stream::write(&mut send, &open, frame::MAX_CLIENT_FRAME)
            .await
            .expect("open mux");
        let accepted: wire::StreamAccept = stream::read(&mut recv, frame::MAX_SERVER_FRAME)
            .await
            .expect("read")
            .expect("accept");
        assert_eq!(accepted, Ok(()));

        let mut bytes = frame::encode(&range(7, b"w"), frame::MAX_CLIENT_FRAME).expect("encode");
        // Number 8: 3 MiB, over the node's limit (read past, not kept).
        let big = 3 << 20;
        bytes.extend_from_slice(&(big as u32).to_be_bytes());
        bytes.push(8);
        bytes.resize(bytes.len() + big - 1, 0);
        // Number 9: a body that is not a request.
        bytes.extend_from_slice(&[0, 0, 0, 3, 9, 0xff, 0xff]);
        // Number 11: a streaming call, which needs a stream of its own.
        let watch = UnixRequest {
            id: 11,
            request: ClientRequest {
                token: None,
                call: Call::Watch,
            },
        };
        bytes = frame::encode_into(&watch, frame::MAX_CLIENT_FRAME, bytes).expect("encode");
        bytes =
            frame::encode_into(&range(10, b"w"), frame::MAX_CLIENT_FRAME, bytes).expect("encode");
        let writer = qed::runtime::spawn(async move {
            stream::WriteBytes::write_bytes(&mut send, &bytes)
                .await
                .expect("write requests");
            send
        });
        let mut frames = stream::FrameReader::new(recv);
        let mut replies = std::collections::BTreeMap::new();
        for _ in 0..5 {
            let reply: UnixReply = qed::runtime::timeout(
                Duration::from_secs(10),
                frames.read(frame::MAX_SERVER_FRAME),
            )
            .await
            .expect("a reply in time")
            .expect("read")
            .expect("a reply");
            replies.insert(reply.id, reply.reply);
        }
        let mut send = writer.await;
        common::assert_raw_mux_replies(&replies, &[9, 11]);
        // A frame whose number cannot be read ends the stream (and only
        // it): the node stops reading and finishes its side.
        stream::WriteBytes::write_bytes(&mut send, &[0, 0, 0, 3, 0xff, 0xff, 0xff])
            .await
            .expect("write junk");
        let end = qed::runtime::timeout(
            Duration::from_secs(10),
            frames.read::<UnixReply>(frame::MAX_SERVER_FRAME),
        )
        .await
        .expect("the node ends the stream in time");
        assert!(matches!(end, Ok(None)), "{end:?}");
        // The connection serves other streams.
        let (send, recv) = conn.open_bi().await.expect("open");
        let (mut send, mut recv) = (SendHalf::Quic(send), RecvHalf::quic(recv));
        stream::write(&mut send, &range(0, b"w").request, frame::MAX_CLIENT_FRAME)
            .await
            .expect("write");
        send.finish();
        let reply: Reply = stream::read(&mut recv, frame::MAX_SERVER_FRAME)
            .await
            .expect("read")
            .expect("reply");
        assert!(matches!(reply, Ok(wire::Response::Range(_))), "{reply:?}");
    });
}

/// A node from before `Call::Mux`, as far as a client can tell: every
/// stream's first frame is a call; `Call::Mux` is refused as an older
/// node's decoder refuses an unknown variant, unary calls are answered.
struct OldNode {
    url: String,
    ca: std::path::PathBuf,
    mux_asked: Arc<AtomicUsize>,
    calls: Arc<AtomicUsize>,
    _dir: TempDir,
}

fn start_old_node() -> OldNode {
    let dir = TempDir::new("old-node");
    let certs = qed::transport::tls::ensure_self_signed(&dir.0, &["127.0.0.1".into()])
        .expect("certificates");
    let files = qed::transport::tls::TlsFiles {
        ca: None,
        ..certs.node.clone()
    };
    let config = qed::transport::tls::server_config(&files, wire::CLIENT_ALPN).expect("tls");
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    let endpoint = qed::transport::endpoint::server(addr, config, None).expect("bind");
    let url = format!(
        "https://127.0.0.1:{}",
        endpoint.local_addr().expect("addr").port()
    );
    let mux_asked = Arc::new(AtomicUsize::new(0));
    let calls = Arc::new(AtomicUsize::new(0));
    let (asked, answered) = (mux_asked.clone(), calls.clone());
    qed::runtime::spawn(async move {
        while let Some(incoming) = endpoint.accept().await {
            let Ok(conn) = incoming.await else { continue };
            let (asked, answered) = (asked.clone(), answered.clone());
            qed::runtime::spawn(async move {
                while let Ok((send, recv)) = conn.accept_bi().await {
                    let (asked, answered) = (asked.clone(), answered.clone());
                    qed::runtime::spawn(async move {
                        let (mut send, mut recv) = (SendHalf::Quic(send), RecvHalf::quic(recv));
                        let Ok(Some(request)) =
                            stream::read::<ClientRequest>(&mut recv, frame::MAX_CLIENT_FRAME).await
                        else {
                            return;
                        };
                        let reply: Reply = match request.call {
                            Call::Mux => {
                                asked.fetch_add(1, Ordering::SeqCst);
                                Err(wire::Error::InvalidArgument(
                                    "malformed request: Found an enum discriminant that was not in the valid range".into(),
                                ))
                            }
                            Call::Unary(wire::Request::Put(_)) => {
                                answered.fetch_add(1, Ordering::SeqCst);
                                Ok(wire::Response::Put(Default::default()))
                            }
                            _ => Err(wire::Error::InvalidArgument("not here".into())),
                        };
                        let _ = stream::write(&mut send, &reply, frame::MAX_SERVER_FRAME).await;
                        send.finish();
                    });
                }
            });
        }
    });
    OldNode {
        url,
        ca: certs.ca,
        mux_asked,
        calls,
        _dir: dir,
    }
}

#[test]
fn a_node_without_mux_streams_gets_a_stream_per_call() {
    qed::runtime::block_on(async {
        let old = start_old_node();
        let c = Client::connect(std::slice::from_ref(&old.url), mux_options(old.ca.clone()))
            .await
            .expect("connect");
        let mut tasks = Vec::new();
        for t in 0..8 {
            let c = c.clone();
            tasks.push(qed::runtime::spawn(async move {
                for i in 0..5 {
                    c.put(format!("k/{t}/{i}"), "v", None).await?;
                }
                Ok::<(), ClientError>(())
            }));
        }
        for task in tasks {
            task.await.expect("puts on streams of their own");
        }
        assert_eq!(old.calls.load(Ordering::SeqCst), 40);
        // Asked once on its connection, not once per call.
        assert_eq!(old.mux_asked.load(Ordering::SeqCst), 1);
    });
}

#[test]
fn a_mux_client_serves_again_after_its_node_restarts() {
    let mut node = TestNode::start(&[]);
    qed::runtime::block_on(async {
        let c = mux_client(&node).await;
        c.put("k", "1", None).await.expect("put");
        // Calls in flight when the node dies get an error, not a hang:
        // each writer stops at its first error (or its deadline).
        let writers: Vec<_> = (0..8)
            .map(|t| {
                let c = c.clone();
                qed::runtime::spawn(async move {
                    let until = Instant::now() + Duration::from_secs(30);
                    let mut last = Ok(());
                    for i in 0..100_000 {
                        last = c.put(format!("w/{t}/{i}"), "v", None).await.map(|_| ());
                        if last.is_err() || Instant::now() > until {
                            break;
                        }
                    }
                    last
                })
            })
            .collect();
        qed::runtime::sleep(Duration::from_millis(200)).await;
        node.restart();
        let mut failed = 0;
        for w in writers {
            failed += usize::from(w.await.is_err());
        }
        assert!(failed > 0, "no writer saw the node die");
        assert_eq!(common::value_once_readable(&c, "k").await, b"1");
        c.put("k", "2", None).await.expect("put after the restart");
    });
}
