//! Unix-socket client URLs end to end: a real `qed` listening on QUIC and
//! on `unix://…/qed.sock`, the SDK and `qed-grpc` (driven by etcdctl, when
//! installed) reaching it through the socket.
//!
//! What must hold: every call kind works over the socket (unary calls
//! multiplexed on one connection, watch, lease keepalive), what one path
//! writes the other reads; on a multiplexed connection replies carry their
//! call's number, a call too large or that does not decode gets its own
//! error and the connection carries on, and only a frame without a
//! readable number ends the connection; auth applies to a socket client
//! as to any other (no token, no access); a live socket is not taken over
//! by a second node, a stale one (after SIGKILL) is.

mod common;

use common::{free_tcp_port, free_udp_port, on_path, Proc, TempDir};
use qed::client::{Client, ClientError, ConnectOptions, EventType, GetOptions, WatchOptions};
use qed::wire::{self, frame, ClientRequest, UnixReply, UnixRequest};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

struct Node {
    proc: Proc,
    dir: TempDir,
    quic: String,
    socket: PathBuf,
}

fn start_node(tag: &str) -> Node {
    let dir = TempDir::new(tag);
    let quic = format!("https://127.0.0.1:{}", free_udp_port());
    let socket = dir.0.join("qed.sock");
    let proc = spawn_node(&dir.0, &quic, &socket);
    Node {
        proc,
        dir,
        quic,
        socket,
    }
}

fn spawn_node(dir: &Path, quic: &str, socket: &Path) -> Proc {
    let listen = format!("{quic},unix://{}", socket.display());
    Proc(
        Command::new(env!("CARGO_BIN_EXE_qed"))
            .arg("--data-dir")
            .arg(dir.join("data"))
            .args(["--listen-client-urls", &listen, "--log-level", "warn"])
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn qed"),
    )
}

fn unix_url(socket: &Path) -> String {
    format!("unix://{}", socket.display())
}

/// A client of `url` once the node answers and has a leader.
async fn client(url: &str, options: ConnectOptions) -> Client {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match Client::connect(&[url.to_string()], options.clone()).await {
            Ok(c) if common::has_leader(&c).await => return c,
            Ok(_) | Err(_) if Instant::now() < deadline => {
                qed::runtime::sleep(Duration::from_millis(50)).await;
            }
            Ok(_) => panic!("no leader on {url}"),
            Err(e) => panic!("cannot connect to {url}: {e}"),
        }
    }
}

fn options() -> ConnectOptions {
    ConnectOptions {
        request_timeout: Duration::from_secs(10),
        ..Default::default()
    }
}

#[test]
fn sdk_calls_over_a_unix_socket() {
    let node = start_node("unix-sdk");
    qed::runtime::block_on(async {
        let local = client(&unix_url(&node.socket), options()).await;
        let quic = client(
            &node.quic,
            ConnectOptions {
                ca_file: Some(node.dir.0.join("data/certs/ca.crt")),
                ..options()
            },
        )
        .await;

        // Concurrent unary calls share one connection: the node holds no
        // more sockets for 32 callers than for one.
        let sockets_before = open_sockets(&node);
        common::concurrent_puts_and_gets(&local, 32, 20).await;
        let sockets_after = open_sockets(&node);
        assert!(
            sockets_after <= sockets_before + 1,
            "{sockets_before} sockets before 32 concurrent callers, {sockets_after} after"
        );
        // What went in through the socket is what QUIC clients read.
        let all = quic
            .get(
                "k/",
                Some(GetOptions::new().with_prefix().with_count_only()),
            )
            .await
            .expect("count over QUIC");
        assert_eq!(all.count, 32 * 20);

        // Watch over the socket sees writes made over QUIC, in order.
        let mut watcher = local
            .watch("w", WatchOptions::default())
            .await
            .expect("watch over the socket");
        for i in 0..10 {
            quic.put("w", format!("{i}"), None).await.expect("put");
        }
        let mut seen = Vec::new();
        while seen.len() < 10 {
            let resp = qed::runtime::timeout(Duration::from_secs(10), watcher.next())
                .await
                .expect("events in time")
                .expect("stream open")
                .expect("watch response");
            for event in resp.events {
                assert_eq!(event.kind, EventType::Put);
                seen.push(String::from_utf8(event.kv.value).expect("utf8"));
            }
        }
        let want: Vec<String> = (0..10).map(|i| i.to_string()).collect();
        assert_eq!(seen, want);

        // A lease kept alive over the socket.
        let lease = local.lease_grant(30).await.expect("grant");
        let alive = local
            .lease_keep_alive_once(lease.id)
            .await
            .expect("keepalive over the socket");
        assert_eq!(alive.id, lease.id);
        assert!(alive.ttl > 0);

        // One raw connection, calls pipelined: each reply carries its
        // call's number. A call over the size limit and one that does not
        // decode get their own errors; the others on the connection are
        // answered as usual.
        let mut raw = std::os::unix::net::UnixStream::connect(&node.socket).expect("connect");
        let range = |id| UnixRequest {
            id,
            request: ClientRequest {
                token: None,
                call: wire::Call::Unary(wire::Request::Range(wire::kv::RangeRequest {
                    key: b"w".to_vec(),
                    ..Default::default()
                })),
            },
        };
        let mut bytes = frame::encode(&range(7), frame::MAX_CLIENT_FRAME).expect("encode");
        // Number 8: 3 MiB, over the node's limit (read past, not kept).
        let big = 3 << 20;
        bytes.extend_from_slice(&(big as u32).to_be_bytes());
        bytes.push(8);
        bytes.resize(bytes.len() + big - 1, 0);
        // Number 9: a body that is not a request.
        bytes.extend_from_slice(&[0, 0, 0, 3, 9, 0xff, 0xff]);
        bytes = frame::encode_into(&range(10), frame::MAX_CLIENT_FRAME, bytes).expect("encode");
        let writer = {
            let mut raw = raw.try_clone().expect("clone");
            std::thread::spawn(move || raw.write_all(&bytes))
        };
        let mut replies = std::collections::BTreeMap::new();
        for _ in 0..4 {
            let reply: UnixReply = read_frame(&mut raw);
            replies.insert(reply.id, reply.reply);
        }
        writer.join().expect("writer").expect("write requests");
        common::assert_raw_mux_replies(&replies, &[9]);
        // A frame whose number cannot be read ends its connection (and
        // only it).
        raw.write_all(&[0, 0, 0, 3, 0xff, 0xff, 0xff])
            .expect("write junk");
        raw.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let mut rest = Vec::new();
        raw.read_to_end(&mut rest).expect("the node closes");
        assert!(rest.is_empty(), "{} bytes after the junk", rest.len());
        local
            .put("after", "bad frames", None)
            .await
            .expect("still served");
    });
}

/// Sockets the node process holds open (its QUIC and Unix ones).
fn open_sockets(node: &Node) -> usize {
    let fds = format!("/proc/{}/fd", node.proc.0.id());
    std::fs::read_dir(fds)
        .expect("list fds")
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|target| target.to_string_lossy().starts_with("socket:"))
        .count()
}

fn read_frame<T: serde::de::DeserializeOwned>(raw: &mut std::os::unix::net::UnixStream) -> T {
    raw.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut prefix = [0u8; frame::PREFIX_LEN];
    raw.read_exact(&mut prefix).expect("reply prefix");
    let len = frame::body_len(prefix, frame::MAX_SERVER_FRAME).expect("reply length");
    let mut body = vec![0u8; len];
    raw.read_exact(&mut body).expect("reply body");
    frame::decode(&body).expect("reply decodes")
}

#[test]
fn auth_applies_over_a_unix_socket() {
    let node = start_node("unix-auth");
    let url = unix_url(&node.socket);
    qed::runtime::block_on(async {
        let admin = client(&url, options()).await;
        admin.user_add("root", Some("rootpw")).await.expect("root");
        admin.user_grant_role("root", "root").await.expect("grant");
        admin.auth_enable().await.expect("auth on");

        // No token: refused as any client without one is.
        let anonymous = Client::connect(std::slice::from_ref(&url), options())
            .await
            .expect("connect");
        assert_eq!(
            anonymous.put("x", "y", None).await.map(|_| ()),
            Err(ClientError::Server(wire::Error::UserEmpty))
        );
        // A wrong password is refused; the right one works.
        let wrong = Client::connect(
            std::slice::from_ref(&url),
            ConnectOptions {
                user: Some("root".into()),
                password: Some("nope".into()),
                ..options()
            },
        )
        .await;
        assert_eq!(
            wrong.err(),
            Some(ClientError::Server(wire::Error::AuthFailed))
        );
        let root = Client::connect(
            std::slice::from_ref(&url),
            ConnectOptions {
                user: Some("root".into()),
                password: Some("rootpw".into()),
                ..options()
            },
        )
        .await
        .expect("root over the socket");
        root.put("x", "y", None).await.expect("root may write");
    });
}

#[test]
fn a_live_socket_is_kept_and_a_stale_one_replaced() {
    let mut node = start_node("unix-bind");
    let url = unix_url(&node.socket);
    let kept = qed::runtime::block_on(async {
        let c = client(&url, options()).await;
        c.put("k", "1", None).await.expect("put");
        c
    });
    // A second node on the same socket refuses to start.
    let other = TempDir::new("unix-bind-other");
    let quic = format!("https://127.0.0.1:{}", free_udp_port());
    let mut second = spawn_node(&other.0, &quic, &node.socket);
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = second.0.try_wait().expect("wait") {
            break status;
        }
        assert!(Instant::now() < deadline, "the second node kept running");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(!status.success());
    // SIGKILL leaves the socket file behind; a restart takes it over.
    let _ = node.proc.0.kill();
    let _ = node.proc.0.wait();
    assert!(node.socket.exists());
    node.proc = spawn_node(&node.dir.0, &node.quic, &node.socket);
    qed::runtime::block_on(async {
        let c = client(&url, options()).await;
        assert_eq!(c.get("k", None).await.expect("get").kvs[0].value, b"1");
        // The client from before the restart: its shared connection died
        // with the node; a later call goes on a new one.
        assert_eq!(common::value_once_readable(&kept, "k").await, b"1");
    });
}

#[test]
fn etcdctl_through_qed_grpc_over_a_unix_socket() {
    if !on_path("etcdctl") {
        println!("skipping: etcdctl is not installed (make deps-etcd)");
        return;
    }
    let node = start_node("unix-grpc");
    qed::runtime::block_on(async {
        client(&unix_url(&node.socket), options()).await;
    });
    let grpc = format!("127.0.0.1:{}", free_tcp_port());
    let _shim = Proc(
        Command::new(env!("CARGO_BIN_EXE_qed-grpc"))
            .args(["--endpoints", &unix_url(&node.socket)])
            .args(["--listen-client-urls", &format!("http://{grpc}")])
            .args(["--log-level", "warn"])
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn qed-grpc"),
    );
    let etcdctl = |args: &[&str]| {
        Command::new("etcdctl")
            .args(["--endpoints", &grpc, "--command-timeout", "5s"])
            .args(args)
            .env("ETCDCTL_API", "3")
            .output()
            .expect("run etcdctl")
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !etcdctl(&["put", "a", "1"]).status.success() {
        assert!(Instant::now() < deadline, "qed-grpc never answered");
        std::thread::sleep(Duration::from_millis(100));
    }
    let got = etcdctl(&["get", "a", "--print-value-only"]);
    assert!(got.status.success());
    assert_eq!(String::from_utf8_lossy(&got.stdout).trim(), "1");
    let deleted = etcdctl(&["del", "a"]);
    assert_eq!(String::from_utf8_lossy(&deleted.stdout).trim(), "1");
}
