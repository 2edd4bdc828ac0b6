//! The h2 server end to end over loopback TCP, against a stub backend,
//! driven by an in-process `h2` client: framing, trailers, status codes,
//! streaming, concurrency and graceful shutdown.

use super::backend::{Backend, KeepAliveStream, SnapshotStream, StreamPair, WatchStream};
use super::codec::{self, Decoder};
use super::convert;
use super::pb;
use super::server::{serve, ServerConfig, Shutdown};
use super::status::{decode_message, Code, Status};
use crate::runtime::{self, channel, TcpListener, TcpStream};
use crate::wire;
use crate::wire::kv as wk;
use bytes::Bytes;
use futures_lite::FutureExt;
use h2::client::SendRequest;
use http::{HeaderMap, Request};
use prost::Message;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio_util::compat::FuturesAsyncReadCompatExt;

fn header() -> wire::ResponseHeader {
    wire::ResponseHeader {
        cluster_id: 7,
        member_id: 8,
        revision: 9,
        raft_term: 10,
    }
}

/// Calls for key "cancelled" that ran to the end (a reset must stop them).
static CANCELLED_FINISHED: AtomicUsize = AtomicUsize::new(0);

/// Watches on key "idle" the server let go of (see `StreamPair::alive`).
static WATCHES_RELEASED: AtomicUsize = AtomicUsize::new(0);

#[derive(Clone)]
struct Stub;

impl Backend for Stub {
    async fn unary(
        &self,
        token: Option<String>,
        request: wire::Request,
    ) -> Result<wire::Response, Status> {
        match request {
            wire::Request::Range(r) => {
                if r.key == b"slow" || r.key == b"cancelled" {
                    runtime::sleep(Duration::from_millis(300)).await;
                }
                if r.key == b"cancelled" {
                    CANCELLED_FINISHED.fetch_add(1, Ordering::SeqCst);
                }
                Ok(wire::Response::Range(wk::RangeResponse {
                    header: header(),
                    kvs: vec![wk::KeyValue {
                        key: r.key,
                        value: token.unwrap_or_default().into_bytes(),
                        create_revision: 2,
                        mod_revision: 3,
                        version: 2,
                        lease: 0,
                    }],
                    more: false,
                    count: 1,
                }))
            }
            wire::Request::Status(_) if token.is_none() => {
                Ok(wire::Response::Status(Default::default()))
            }
            wire::Request::Put(p) if p.key == b"compacted" => {
                Err(Status::from_wire(&wire::Error::Compacted))
            }
            // A wrong kind of answer: the server must report, not panic.
            wire::Request::Put(_) => Ok(wire::Response::Hash(Default::default())),
            other => Err(Status::from_wire(&wire::Error::Unimplemented(
                other.method().into(),
            ))),
        }
    }

    async fn watch(&self, _token: Option<String>) -> Result<WatchStream, Status> {
        let (pair, req_rx, resp_tx, gone) = StreamPair::channels(8);
        let idle = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let seen_idle = idle.clone();
        runtime::spawn(async move {
            let _ = gone.recv().await;
            if seen_idle.load(Ordering::SeqCst) {
                WATCHES_RELEASED.fetch_add(1, Ordering::SeqCst);
            }
        });
        runtime::spawn(async move {
            while let Ok(request) = req_rx.recv().await {
                if let wire::watch::WatchRequest::Create(c) = request {
                    if c.key == b"idle" {
                        idle.store(true, Ordering::SeqCst);
                    }
                    let created = wire::watch::WatchResponse {
                        header: header(),
                        watch_id: c.watch_id,
                        created: true,
                        events: vec![wk::Event {
                            kind: wk::EventType::Delete,
                            kv: wk::KeyValue {
                                key: c.key,
                                ..Default::default()
                            },
                            prev_kv: None,
                        }]
                        .into(),
                        ..Default::default()
                    };
                    let batch = wire::watch::WatchBatch {
                        response: created,
                        more_ids: Vec::new(),
                    };
                    if resp_tx.send(Ok(batch)).await.is_err() {
                        return;
                    }
                }
            }
            // Client half-closed: end the call with an error, as a node would
            // for a lost stream.
            let _ = resp_tx
                .send(Err(Status::from_wire(&wire::Error::Stopped)))
                .await;
        });
        Ok(pair)
    }

    async fn lease_keep_alive(&self, token: Option<String>) -> Result<KeepAliveStream, Status> {
        if token.as_deref() != Some("secret") {
            return Err(Status::from_wire(&wire::Error::Unimplemented(
                "Lease/LeaseKeepAlive".into(),
            )));
        }
        let (pair, requests, responses, _gone): (KeepAliveStream, _, _, _) =
            StreamPair::channels(8);
        runtime::spawn(async move {
            while let Ok(request) = requests.recv().await {
                let refreshed = wire::lease::LeaseKeepAliveResponse {
                    header: header(),
                    id: request.id,
                    ttl: if request.id == 404 { 0 } else { 60 },
                };
                if responses.send(Ok(refreshed)).await.is_err() {
                    return;
                }
            }
            // Half-closed by the client: the call ends with OK.
        });
        Ok(pair)
    }

    async fn snapshot(&self, _token: Option<String>) -> Result<SnapshotStream, Status> {
        let (tx, rx) = channel::bounded(4);
        runtime::spawn(async move {
            for (i, remaining) in [(0u8, 100_000u64), (1, 0)] {
                let chunk = wire::maintenance::SnapshotResponse {
                    header: header(),
                    remaining_bytes: remaining,
                    blob: vec![i; 100_000],
                };
                let _ = tx.send(Ok(chunk)).await;
            }
        });
        Ok(rx)
    }
}

async fn start(config: ServerConfig) -> (String, Shutdown, runtime::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let shutdown = Shutdown::new();
    let handle = runtime::spawn(serve(listener, Stub, config, shutdown.clone()));
    (addr, shutdown, handle)
}

async fn connect(addr: &str) -> SendRequest<Bytes> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (client, conn) = h2::client::Builder::new()
        // A large window also raises h2's budget for buffered small DATA
        // frames (one per gRPC response), which 200 concurrent calls exceed
        // at the 64 KiB default.
        .initial_window_size(1 << 20)
        .initial_connection_window_size(4 << 20)
        .handshake(tcp.compat())
        .await
        .unwrap();
    runtime::spawn(async move {
        let _ = conn.await;
    });
    client
}

/// What came back: HTTP status, response messages, grpc-status and message.
struct Reply {
    http: u16,
    messages: Vec<Bytes>,
    code: Option<u8>,
    message: String,
}

async fn call_raw(
    client: &SendRequest<Bytes>,
    path: &str,
    content_type: &str,
    bodies: Vec<Bytes>,
) -> Reply {
    let request = Request::builder()
        .method("POST")
        .uri(format!("http://localhost{path}"))
        .header("content-type", content_type)
        .header("te", "trailers")
        .header("token", "secret")
        .body(())
        .unwrap();
    let mut client = client.clone().ready().await.unwrap();
    let (response, mut send) = client.send_request(request, false).unwrap();
    let n = bodies.len();
    for (i, body) in bodies.into_iter().enumerate() {
        send.send_data(body, i + 1 == n).unwrap();
    }
    if n == 0 {
        send.send_data(Bytes::new(), true).unwrap();
    }
    let response = response.await.unwrap();
    let (parts, mut body) = response.into_parts();
    let mut decoder = Decoder::new(usize::MAX >> 1);
    let mut messages = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.unwrap();
        let _ = body.flow_control().release_capacity(chunk.len());
        decoder.push(&chunk);
        while let Some(m) = decoder.next_message().unwrap() {
            messages.push(m);
        }
    }
    let trailers = body.trailers().await.unwrap().unwrap_or_default();
    let status_from = |h: &HeaderMap| {
        h.get("grpc-status")
            .map(|v| v.to_str().unwrap().parse::<u8>().unwrap())
    };
    let message_from = |h: &HeaderMap| {
        h.get("grpc-message")
            .map(|v| decode_message(v.to_str().unwrap()))
            .unwrap_or_default()
    };
    let (code, message) = match status_from(&trailers) {
        Some(code) => (Some(code), message_from(&trailers)),
        None => (status_from(&parts.headers), message_from(&parts.headers)),
    };
    Reply {
        http: parts.status.as_u16(),
        messages,
        code,
        message,
    }
}

async fn call(client: &SendRequest<Bytes>, path: &str, bodies: Vec<Bytes>) -> Reply {
    call_raw(client, path, "application/grpc", bodies).await
}

fn range(key: &str) -> Bytes {
    codec::encode(&pb::RangeRequest {
        key: key.as_bytes().to_vec(),
        ..Default::default()
    })
}

#[test]
fn unary_round_trip_with_header_and_token() {
    runtime::block_on(async {
        let (addr, _shutdown, _h) = start(ServerConfig::default()).await;
        let client = connect(&addr).await;
        let reply = call(&client, "/etcdserverpb.KV/Range", vec![range("foo")]).await;
        assert_eq!((reply.http, reply.code), (200, Some(0)));
        assert_eq!(reply.messages.len(), 1);
        let response = pb::RangeResponse::decode(reply.messages[0].clone()).unwrap();
        assert_eq!(
            response.header,
            Some(pb::ResponseHeader {
                cluster_id: 7,
                member_id: 8,
                revision: 9,
                raft_term: 10
            })
        );
        assert_eq!(response.kvs[0].key, b"foo");
        assert_eq!(response.kvs[0].value, b"secret");
        assert_eq!(response.count, 1);
    });
}

#[test]
fn errors_carry_etcd_status() {
    runtime::block_on(async {
        let (addr, _shutdown, _h) = start(ServerConfig::default()).await;
        let client = connect(&addr).await;
        let put = codec::encode(&pb::PutRequest {
            key: b"compacted".to_vec(),
            ..Default::default()
        });
        let reply = call(&client, "/etcdserverpb.KV/Put", vec![put]).await;
        assert_eq!(reply.code, Some(Code::OutOfRange as u8));
        assert_eq!(
            reply.message,
            "etcdserver: mvcc: required revision has been compacted"
        );
        assert!(reply.messages.is_empty());

        let reply = call(
            &client,
            "/etcdserverpb.Lease/LeaseGrant",
            vec![codec::encode(&pb::LeaseGrantRequest { ttl: 5, id: 0 })],
        )
        .await;
        assert_eq!(reply.code, Some(Code::Unimplemented as u8));
        assert!(
            reply.message.contains("Lease/LeaseGrant"),
            "{}",
            reply.message
        );

        let wrong = codec::encode(&pb::PutRequest::default());
        let reply = call(&client, "/etcdserverpb.KV/Put", vec![wrong]).await;
        assert_eq!(reply.code, Some(Code::Internal as u8));

        let reply = call(&client, "/etcdserverpb.KV/Nope", vec![range("a")]).await;
        assert_eq!(reply.code, Some(Code::Unimplemented as u8));
        assert_eq!(
            reply.message,
            "unknown method Nope for service etcdserverpb.KV"
        );
        let reply = call(&client, "/foo.Bar/Baz", vec![range("a")]).await;
        assert_eq!(reply.message, "unknown service foo.Bar");
    });
}

#[test]
fn malformed_and_oversized_requests() {
    runtime::block_on(async {
        let config = ServerConfig {
            max_recv_bytes: 1024,
            ..Default::default()
        };
        let (addr, _shutdown, _h) = start(config).await;
        let client = connect(&addr).await;
        // A length-delimited field running past the end.
        let bad = Bytes::from_static(&[0, 0, 0, 0, 2, 0x0a, 0x05]);
        let reply = call(&client, "/etcdserverpb.KV/Range", vec![bad]).await;
        assert_eq!(reply.code, Some(Code::Internal as u8));
        assert!(reply
            .message
            .starts_with("grpc: error unmarshalling request"));

        let big = codec::encode(&pb::RangeRequest {
            key: vec![b'x'; 2000],
            ..Default::default()
        });
        let reply = call(&client, "/etcdserverpb.KV/Range", vec![big]).await;
        assert_eq!(reply.code, Some(Code::ResourceExhausted as u8));

        let compressed = Bytes::from_static(&[1, 0, 0, 0, 0]);
        let reply = call(&client, "/etcdserverpb.KV/Range", vec![compressed]).await;
        assert_eq!(reply.code, Some(Code::Internal as u8));

        let reply = call(&client, "/etcdserverpb.KV/Range", vec![]).await;
        assert_eq!(reply.code, Some(Code::Internal as u8));

        // A message split across many DATA frames still decodes.
        let whole = range("split");
        let pieces: Vec<Bytes> = whole.chunks(3).map(Bytes::copy_from_slice).collect();
        let reply = call(&client, "/etcdserverpb.KV/Range", pieces).await;
        assert_eq!(reply.code, Some(0));

        let reply = call_raw(
            &client,
            "/etcdserverpb.KV/Range",
            "text/plain",
            vec![range("a")],
        )
        .await;
        assert_eq!(reply.http, 415);

        // The connection survived all of it.
        let reply = call(&client, "/etcdserverpb.KV/Range", vec![range("a")]).await;
        assert_eq!(reply.code, Some(0));
    });
}

#[test]
fn many_concurrent_streams_on_one_connection() {
    runtime::block_on(async {
        let (addr, _shutdown, _h) = start(ServerConfig::default()).await;
        let client = connect(&addr).await;
        let calls: Vec<_> = (0..200)
            .map(|i| {
                let client = client.clone();
                let one = async move {
                    let key = format!("k{i}");
                    let reply = call(&client, "/etcdserverpb.KV/Range", vec![range(&key)]).await;
                    let response = pb::RangeResponse::decode(reply.messages[0].clone()).unwrap();
                    assert_eq!(response.kvs[0].key, key.as_bytes());
                };
                // Panics in spawned tasks print on another test's output;
                // bring them back to this one.
                runtime::spawn(std::panic::AssertUnwindSafe(one).catch_unwind())
            })
            .collect();
        for c in calls {
            if let Err(panic) = c.await {
                let text = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                panic!("a concurrent call failed: {text}");
            }
        }
    });
}

#[test]
fn watch_stream_both_ways() {
    runtime::block_on(async {
        let (addr, _shutdown, _h) = start(ServerConfig::default()).await;
        let client = connect(&addr).await;
        let create = |id: i64, key: &str| {
            codec::encode(&pb::WatchRequest {
                request_union: Some(pb::watch_request::RequestUnion::CreateRequest(
                    pb::WatchCreateRequest {
                        key: key.as_bytes().to_vec(),
                        watch_id: id,
                        ..Default::default()
                    },
                )),
            })
        };
        let reply = call(
            &client,
            "/etcdserverpb.Watch/Watch",
            vec![create(1, "a"), create(2, "b")],
        )
        .await;
        assert_eq!(reply.messages.len(), 2);
        let first = pb::WatchResponse::decode(reply.messages[0].clone()).unwrap();
        assert!(first.created);
        assert_eq!(first.watch_id, 1);
        assert_eq!(first.events[0].r#type, pb::mvccpb::EventType::Delete as i32);
        assert_eq!(first.events[0].kv.as_ref().unwrap().key, b"a");
        let second = pb::WatchResponse::decode(reply.messages[1].clone()).unwrap();
        assert_eq!(second.watch_id, 2);
        // The stub ends the stream with an error after the half-close.
        assert_eq!(reply.code, Some(Code::Unavailable as u8));
        assert_eq!(reply.message, "etcdserver: server stopped");

        let keep_alive = |id| codec::encode(&pb::LeaseKeepAliveRequest { id });
        let reply = call(
            &client,
            "/etcdserverpb.Lease/LeaseKeepAlive",
            vec![keep_alive(7), keep_alive(404)],
        )
        .await;
        assert_eq!(reply.code, Some(0));
        let ttls: Vec<(i64, i64)> = reply
            .messages
            .iter()
            .map(|m| {
                let r = pb::LeaseKeepAliveResponse::decode(m.clone()).unwrap();
                assert_eq!(r.header.unwrap().revision, 9);
                (r.id, r.ttl)
            })
            .collect();
        assert_eq!(ttls, [(7, 60), (404, 0)]);
    });
}

#[test]
fn snapshot_streams_chunks_under_flow_control() {
    runtime::block_on(async {
        let (addr, _shutdown, _h) = start(ServerConfig::default()).await;
        let client = connect(&addr).await;
        let reply = call(
            &client,
            "/etcdserverpb.Maintenance/Snapshot",
            vec![codec::encode(&pb::SnapshotRequest {})],
        )
        .await;
        assert_eq!(reply.code, Some(0));
        assert_eq!(reply.messages.len(), 2);
        let last = pb::SnapshotResponse::decode(reply.messages[1].clone()).unwrap();
        assert_eq!((last.remaining_bytes, last.blob.len()), (0, 100_000));
    });
}

#[test]
fn graceful_shutdown_lets_in_flight_calls_finish() {
    runtime::block_on(async {
        let (addr, shutdown, handle) = start(ServerConfig::default()).await;
        let client = connect(&addr).await;
        let slow = {
            let client = client.clone();
            runtime::spawn(async move {
                call(&client, "/etcdserverpb.KV/Range", vec![range("slow")]).await
            })
        };
        runtime::sleep(Duration::from_millis(100)).await;
        shutdown.trigger();
        let reply = slow.await;
        assert_eq!(reply.code, Some(0));
        runtime::timeout(Duration::from_secs(5), handle)
            .await
            .expect("server stops after draining");
        assert!(TcpStream::connect(&addr).await.is_err());
    });
}

#[test]
fn a_reset_cancels_the_backend_call() {
    runtime::block_on(async {
        let (addr, _shutdown, _h) = start(ServerConfig::default()).await;
        let client = connect(&addr).await;
        let request = Request::builder()
            .method("POST")
            .uri("http://localhost/etcdserverpb.KV/Range")
            .header("content-type", "application/grpc")
            .body(())
            .unwrap();
        let mut ready = client.clone().ready().await.unwrap();
        let (_response, mut send) = ready.send_request(request, false).unwrap();
        send.send_data(range("cancelled"), true).unwrap();
        runtime::sleep(Duration::from_millis(50)).await;
        send.send_reset(h2::Reason::CANCEL);
        runtime::sleep(Duration::from_millis(500)).await;
        assert_eq!(CANCELLED_FINISHED.load(Ordering::SeqCst), 0);
        // The connection is still good.
        let reply = call(&client, "/etcdserverpb.KV/Range", vec![range("a")]).await;
        assert_eq!(reply.code, Some(0));
    });
}

#[test]
fn a_reset_idle_watch_is_released_to_the_backend() {
    runtime::block_on(async {
        let (addr, _shutdown, _h) = start(ServerConfig::default()).await;
        let client = connect(&addr).await;
        let request = Request::builder()
            .method("POST")
            .uri("http://localhost/etcdserverpb.Watch/Watch")
            .header("content-type", "application/grpc")
            .body(())
            .unwrap();
        let mut ready = client.clone().ready().await.unwrap();
        let (response, mut send) = ready.send_request(request, false).unwrap();
        let create = codec::encode(&pb::WatchRequest {
            request_union: Some(pb::watch_request::RequestUnion::CreateRequest(
                pb::WatchCreateRequest {
                    key: b"idle".to_vec(),
                    ..Default::default()
                },
            )),
        });
        send.send_data(create, false).unwrap();
        let mut body = response.await.unwrap().into_body();
        // The created response arrives; then the watch sits idle.
        let first = body.data().await.unwrap().unwrap();
        assert!(first.len() > codec::PREFIX_LEN);
        runtime::sleep(Duration::from_millis(100)).await;
        send.send_reset(h2::Reason::CANCEL);
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while WATCHES_RELEASED.load(Ordering::SeqCst) == 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "backend never released"
            );
            runtime::sleep(Duration::from_millis(20)).await;
        }
    });
}

#[test]
fn answers_client_keepalive_pings() {
    runtime::block_on(async {
        let (addr, _shutdown, _h) = start(ServerConfig::default()).await;
        let tcp = TcpStream::connect(&addr).await.unwrap();
        let (client, mut conn) = h2::client::handshake(tcp.compat()).await.unwrap();
        let mut ping_pong = conn.ping_pong().expect("ping_pong taken once");
        runtime::spawn(async move {
            let _ = conn.await;
        });
        // gRPC clients (etcdctl: every 2 s) ping idle connections.
        for _ in 0..3 {
            runtime::timeout(Duration::from_secs(5), ping_pong.ping(h2::Ping::opaque()))
                .await
                .expect("pong in time")
                .expect("pong");
        }
        let reply = call(&client, "/etcdserverpb.KV/Range", vec![range("a")]).await;
        assert_eq!(reply.code, Some(0));
    });
}

#[test]
fn a_client_that_stops_answering_pings_is_dropped() {
    runtime::block_on(async {
        use futures_lite::{AsyncReadExt, AsyncWriteExt};
        let config = ServerConfig {
            keepalive_interval: Duration::from_millis(100),
            keepalive_timeout: Duration::from_millis(100),
            ..Default::default()
        };
        let (addr, _shutdown, _h) = start(config).await;
        // A client that says hello (preface and empty SETTINGS), then
        // never reads or answers anything.
        let mut tcp = TcpStream::connect(&addr).await.unwrap();
        tcp.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            .await
            .unwrap();
        tcp.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0]).await.unwrap();
        runtime::sleep(Duration::from_millis(500)).await;
        // The server has closed: reading drains to EOF (or a reset).
        let drained = runtime::timeout(Duration::from_secs(5), async {
            let mut buf = [0u8; 4096];
            loop {
                match tcp.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await;
        assert!(drained.is_ok(), "the silent connection was not closed");
    });
}

#[test]
fn health_check_reflects_the_cluster() {
    runtime::block_on(async {
        let (addr, _shutdown, _h) = start(ServerConfig::default()).await;
        let client = connect(&addr).await;
        let check = |service: &str| {
            codec::encode(&pb::HealthCheckRequest {
                service: service.into(),
            })
        };
        let reply = call(&client, "/grpc.health.v1.Health/Check", vec![check("")]).await;
        assert_eq!(reply.code, Some(0));
        let response = pb::HealthCheckResponse::decode(reply.messages[0].clone()).unwrap();
        assert_eq!(response.status, pb::ServingStatus::Serving as i32);
        let reply = call(&client, "/grpc.health.v1.Health/Check", vec![check("nope")]).await;
        assert_eq!(reply.code, Some(Code::NotFound as u8));
    });
}

/// A node's batch becomes one gRPC message per watch, each byte for byte
/// what encoding that watch's own response gives (watch ID 0 included,
/// which proto3 leaves out).
#[test]
fn a_watch_batch_encodes_as_its_responses_one_by_one() {
    let response = wire::watch::WatchResponse {
        header: header(),
        watch_id: 7,
        fragment: true,
        events: vec![wk::Event {
            kind: wk::EventType::Put,
            kv: wk::KeyValue {
                key: b"k".to_vec(),
                value: vec![b'v'; 300],
                create_revision: 2,
                mod_revision: 9,
                version: 3,
                lease: 0,
            },
            prev_kv: None,
        }]
        .into(),
        ..Default::default()
    };
    for more_ids in [vec![], vec![0, 1, -1, 300, i64::MAX]] {
        let batch = wire::watch::WatchBatch {
            response: response.clone(),
            more_ids,
        };
        let want: Vec<u8> = batch
            .clone()
            .into_responses()
            .into_iter()
            .flat_map(|r| codec::encode(&convert::watch_response(r)).to_vec())
            .collect();
        // Appended after what the buffer already holds.
        let mut out = bytes::BytesMut::from(&b"xy"[..]);
        convert::watch_batch_into(batch, &mut out);
        assert_eq!(&out[..2], b"xy");
        assert_eq!(out[2..].to_vec(), want);
    }
}
