//! A load driver shaped like etcd's `benchmark` tool, for a qed node over
//! the native QUIC SDK (`--target native`) or for any etcd v3 gRPC endpoint
//! (`--target grpc`: real etcd, or qed-grpc) with the same workload
//! definitions: `clients` requests in flight, `total` requests (or
//! `duration` seconds), at most `rate` requests/s, keys of `key-size` bytes
//! from `key-space`, values of `val-size` bytes.
//!
//! ```sh
//! cargo run --release --example bench -- put --clients 128 --total 100000
//! cargo run --release --example bench -- range --target grpc --endpoints http://127.0.0.1:2379
//! cargo run --release --example bench -- mixed --read-ratio 0.9 --duration 10 --rate 5000
//! # 1,000 watchers on one key, 1,000 puts; 10,000 watchers over 100 prefixes
//! cargo run --release --example bench -- watch --watchers 1000 --total 1000
//! cargo run --release --example bench -- watch --watchers 10000 --prefixes 100 --conns 4
//! # the catch-up path: puts first, then watchers replaying them from history
//! cargo run --release --example bench -- watch --from-history
//! cargo run --release --example bench -- lease-keepalive --leases 10000 --clients 8
//! ```
//! Prints one result line (throughput, latency percentiles, errors); a
//! progress line goes to stderr. `bench/compare.sh` (`make bench`) runs it
//! against etcd and qed side by side.

use bytes::Bytes;
use clap::{Parser, ValueEnum};
use qed::client::{
    Client, Compare, CompareOp, ConnectOptions, GetOptions, StreamReceiver, StreamSender, Txn,
    TxnOp, WatchOptions,
};
use qed::grpc::{codec, pb};
use qed::runtime::{self, TcpStream};
use qed::wire::lease::{LeaseKeepAliveRequest, LeaseKeepAliveResponse};
use qed::wire::Call;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::compat::FuturesAsyncReadCompatExt;

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type H2 = h2::client::SendRequest<Bytes>;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Workload {
    /// Puts to random keys (or 0..total with --sequential).
    Put,
    /// Linearizable gets of random keys (prefilled).
    Range,
    /// Serializable gets of random keys (prefilled).
    RangeSerializable,
    /// Txn compare-and-swap: if value(key) == v then put(key, v) else get(key).
    Txn,
    /// Linearizable gets (a --read-ratio share) and puts over the key space.
    Mixed,
    /// Watch fan-out: --watchers watchers (one key, or spread over
    /// --prefixes prefixes), then --total puts; events/s until every
    /// watcher has every event, latency = put sent to event received.
    Watch,
    /// Grant --leases leases, then keepalives over --clients keepalive
    /// streams, one in flight per stream, round-robin over the leases.
    LeaseKeepalive,
    /// No server: `pwrite` of one put's bytes + `fdatasync` into a
    /// preallocated file, one at a time: the floor a durable put sits on.
    FsyncFloor,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Target {
    /// qed over QUIC with the SDK.
    Native,
    /// etcd's v3 gRPC API over h2c (etcd itself or qed-grpc).
    Grpc,
}

#[derive(Parser, Debug)]
struct Flags {
    #[arg(value_enum)]
    workload: Workload,
    #[arg(long, value_enum, default_value = "native")]
    target: Target,
    /// Server URLs, comma-separated [native: https://127.0.0.1:2379; grpc:
    /// http://127.0.0.1:2379]. The SDK spreads calls over them; gRPC connections
    /// go round-robin over them.
    #[arg(long)]
    endpoints: Option<String>,
    /// CA for --target native [default: default.qed/certs/ca.crt].
    #[arg(long)]
    cacert: Option<PathBuf>,
    /// Requests in flight at once (watch: puts in flight; lease-keepalive:
    /// keepalive streams).
    #[arg(long, default_value_t = 16)]
    clients: usize,
    /// Connections the clients share (gRPC; native: the SDK multiplexes one
    /// connection, except for watch, whose watchers are spread over this
    /// many, each QUIC connection carrying at most 4096 streams).
    #[arg(long, default_value_t = 8)]
    conns: usize,
    /// Requests in all (watch: puts) [default: 20000, or unbounded with --duration].
    #[arg(long)]
    total: Option<u64>,
    /// Stop after this many seconds (also after --total); 0: no time limit.
    #[arg(long, default_value_t = 0.0)]
    duration: f64,
    /// At most this many requests/s across all clients; 0: unlimited.
    /// Latency is timed from when a request is sent, not from its slot.
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    #[arg(long, default_value_t = 8)]
    key_size: usize,
    #[arg(long, default_value_t = 256)]
    val_size: usize,
    /// Distinct keys.
    #[arg(long, default_value_t = 10_000)]
    key_space: u64,
    /// Keys 0, 1, 2, ... instead of random ones (to load a key space).
    #[arg(long)]
    sequential: bool,
    /// mixed: the share of requests that are reads.
    #[arg(long, default_value_t = 0.9)]
    read_ratio: f64,
    /// watch: watchers in all.
    #[arg(long, default_value_t = 1000)]
    watchers: usize,
    /// watch: 1, every watcher watches one key; more, prefix watchers
    /// spread evenly over this many prefixes, and the puts round-robin.
    #[arg(long, default_value_t = 1)]
    prefixes: usize,
    /// watch, gRPC: Watch streams the watchers are spread over (one gRPC
    /// stream carries many watches); the streams are spread over --conns.
    #[arg(long, default_value_t = 10)]
    streams: usize,
    /// watch: put first, then create the watchers from the first put's
    /// revision (history replay); the clock starts with the first watch,
    /// and delivery latency includes the wait before the watch existed.
    #[arg(long)]
    from_history: bool,
    /// lease-keepalive: leases granted before the clock starts.
    #[arg(long, default_value_t = 10_000)]
    leases: usize,
    /// Authenticate as USER:PASSWORD (a server with auth on): the SDK with
    /// `ConnectOptions::user`, gRPC with one `Authenticate` and the token in
    /// every call's `token` metadata, as etcd clients do.
    #[arg(long)]
    user: Option<String>,
    /// Directory for fsync-floor's scratch file (put it on the server's disk).
    #[arg(long, default_value = ".")]
    dir: PathBuf,
}

impl Flags {
    fn total(&self) -> u64 {
        match self.total {
            Some(total) => total,
            None if self.duration > 0.0 => u64::MAX,
            None => 20_000,
        }
    }
}

/// How long a watch run waits, after its last put, for events still on
/// their way before it counts the missing ones as errors.
const WATCH_DRAIN: Duration = Duration::from_secs(60);
/// A request not answered by then counts as an error, so that one lost
/// reply cannot hang a run.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Leases outlive any run: a lease expiring mid-run would turn keepalives
/// into errors for a reason that is not the server's speed.
const LEASE_TTL: i64 = 3600;

fn key(i: u64, size: usize) -> Vec<u8> {
    let mut k = format!("{i:0width$}", width = size).into_bytes();
    k.truncate(size.max(1));
    k
}

/// A connected server, either way.
/// `true` on success; the first few errors are printed, so a run full of
/// errors says what they were.
fn succeeded<T>(result: Result<T, qed::client::ClientError>) -> bool {
    match result {
        Ok(_) => true,
        Err(e) => {
            show_error(&e.to_string());
            false
        }
    }
}

/// Prints the first few errors of a run (native or gRPC).
fn show_error(text: &str) {
    static SHOWN: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    if SHOWN.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < 3 {
        eprintln!("error: {text}");
    }
}

/// Comma-separated endpoints (at least one entry).
fn split(endpoints: &str) -> Vec<String> {
    endpoints.split(',').map(str::to_string).collect()
}

#[derive(Clone)]
enum Server {
    Native(Arc<Vec<Client>>),
    Grpc(Arc<Vec<H2>>),
}

impl Server {
    async fn connect(flags: &Flags) -> Result<Server, BoxError> {
        match flags.target {
            Target::Native => {
                let urls = split(
                    flags
                        .endpoints
                        .as_deref()
                        .unwrap_or("https://127.0.0.1:2379"),
                );
                let (user, password) = split_user(flags.user.as_deref());
                let options = ConnectOptions {
                    ca_file: Some(
                        flags
                            .cacert
                            .clone()
                            .unwrap_or_else(|| "default.qed/certs/ca.crt".into()),
                    ),
                    user,
                    password,
                    ..Default::default()
                };
                // Only watchers need more than one connection.
                let n = if flags.workload == Workload::Watch {
                    flags.conns.max(1)
                } else {
                    1
                };
                let mut clients = Vec::new();
                for _ in 0..n {
                    clients.push(Client::connect(&urls, options.clone()).await?);
                }
                Ok(Server::Native(Arc::new(clients)))
            }
            Target::Grpc => {
                // Connections go round-robin over the endpoints.
                let urls = split(
                    flags
                        .endpoints
                        .as_deref()
                        .unwrap_or("http://127.0.0.1:2379"),
                );
                let mut conns = Vec::new();
                for i in 0..flags.conns.max(1) {
                    let addr = urls[i % urls.len()]
                        .trim_start_matches("http://")
                        .trim_end_matches('/');
                    conns.push(h2_connect(addr).await?);
                }
                let (user, password) = split_user(flags.user.as_deref());
                if let (Some(name), Some(password), Some(conn)) = (user, password, conns.first()) {
                    let body = codec::encode(&pb::AuthenticateRequest { name, password });
                    let reply = h2_unary(conn, "/etcdserverpb.Auth/Authenticate", body)
                        .await
                        .ok_or("Authenticate failed")?;
                    let resp = <pb::AuthenticateResponse as prost::Message>::decode(reply)?;
                    let _ = GRPC_TOKEN.set(resp.token);
                }
                Ok(Server::Grpc(Arc::new(conns)))
            }
        }
    }

    fn native(&self, i: usize) -> Option<&Client> {
        match self {
            Server::Native(clients) => clients.get(i % clients.len().max(1)),
            Server::Grpc(_) => None,
        }
    }

    fn grpc(&self, i: usize) -> Option<&H2> {
        match self {
            Server::Grpc(conns) => conns.get(i % conns.len().max(1)),
            Server::Native(_) => None,
        }
    }

    /// One unary request of `op`; `false` on any error.
    async fn unary(&self, worker: usize, op: Unary, key: Vec<u8>, value: &[u8]) -> bool {
        match self {
            Server::Native(clients) => {
                let Some(c) = clients.first() else {
                    return false;
                };
                match op {
                    Unary::Put => succeeded(c.put(key, value.to_vec(), None).await),
                    Unary::Get { serializable } => {
                        let options = serializable.then(|| GetOptions::new().with_serializable());
                        succeeded(c.get(key, options).await)
                    }
                    Unary::Cas => {
                        let txn = Txn::new()
                            .when([Compare::value(
                                key.clone(),
                                CompareOp::Equal,
                                value.to_vec(),
                            )])
                            .and_then([TxnOp::put(key.clone(), value.to_vec(), None)])
                            .or_else([TxnOp::get(key, None)]);
                        succeeded(c.txn(txn).await)
                    }
                }
            }
            Server::Grpc(conns) => {
                let conn = &conns[worker % conns.len()];
                let (path, body) = grpc_request(op, key, value);
                h2_unary(conn, path, body).await.is_some()
            }
        }
    }

    /// Grants one lease of `LEASE_TTL`; its ID.
    async fn lease_grant(&self, worker: usize) -> Option<i64> {
        match self {
            Server::Native(clients) => {
                let c = clients.first()?;
                c.lease_grant(LEASE_TTL).await.ok().map(|r| r.id)
            }
            Server::Grpc(conns) => {
                let conn = &conns[worker % conns.len()];
                let body = codec::encode(&pb::LeaseGrantRequest {
                    ttl: LEASE_TTL,
                    id: 0,
                });
                let reply = h2_unary(conn, "/etcdserverpb.Lease/LeaseGrant", body).await?;
                let grant: pb::LeaseGrantResponse = codec::decode(&reply).ok()?;
                grant.error.is_empty().then_some(grant.id)
            }
        }
    }
}

/// The unary requests the workloads are made of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Unary {
    Put,
    Get { serializable: bool },
    Cas,
}

fn grpc_request(op: Unary, key: Vec<u8>, value: &[u8]) -> (&'static str, Bytes) {
    match op {
        Unary::Put => (
            "/etcdserverpb.KV/Put",
            codec::encode(&pb::PutRequest {
                key,
                value: value.to_vec(),
                ..Default::default()
            }),
        ),
        Unary::Get { serializable } => (
            "/etcdserverpb.KV/Range",
            codec::encode(&pb::RangeRequest {
                key,
                serializable,
                ..Default::default()
            }),
        ),
        Unary::Cas => {
            let compare = pb::Compare {
                result: pb::CompareResult::Equal as i32,
                target: pb::CompareTarget::Value as i32,
                key: key.clone(),
                target_union: Some(pb::compare::TargetUnion::Value(value.to_vec())),
                ..Default::default()
            };
            let put = pb::RequestOp {
                request: Some(pb::request_op::Request::RequestPut(pb::PutRequest {
                    key: key.clone(),
                    value: value.to_vec(),
                    ..Default::default()
                })),
            };
            let get = pb::RequestOp {
                request: Some(pb::request_op::Request::RequestRange(pb::RangeRequest {
                    key,
                    ..Default::default()
                })),
            };
            (
                "/etcdserverpb.KV/Txn",
                codec::encode(&pb::TxnRequest {
                    compare: vec![compare],
                    success: vec![put],
                    failure: vec![get],
                }),
            )
        }
    }
}

/// The auth token every gRPC call carries (`--user`), once authenticated.
static GRPC_TOKEN: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// `USER:PASSWORD` into its halves.
fn split_user(user: Option<&str>) -> (Option<String>, Option<String>) {
    match user.map(|u| u.split_once(':').unwrap_or((u, ""))) {
        Some((u, p)) => (Some(u.to_string()), Some(p.to_string())),
        None => (None, None),
    }
}

async fn h2_connect(addr: &str) -> Result<H2, BoxError> {
    let tcp = TcpStream::connect(addr).await?;
    let _ = tcp.set_nodelay(true);
    let (client, conn) = h2::client::Builder::new()
        // Many small responses in flight exceed h2's default window budget.
        .initial_window_size(1 << 20)
        .initial_connection_window_size(4 << 20)
        .handshake(tcp.compat())
        .await?;
    runtime::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

/// One gRPC unary call: its reply message when it ends with grpc-status 0.
async fn h2_unary(conn: &H2, path: &str, body: Bytes) -> Option<Bytes> {
    let mut stream = GrpcStream::open(conn, path).await?;
    stream.send(body, true)?;
    let reply = stream.next_message().await.ok()?;
    let body = stream.body.as_mut()?;
    let trailers = body.trailers().await.ok().flatten();
    let field = |name: &str| {
        trailers
            .as_ref()
            .and_then(|t| t.get(name))
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    let status = field("grpc-status");
    if status == "0" {
        return Some(reply.unwrap_or_default());
    }
    let (status, message) = match stream.head_status.take() {
        // A trailers-only reply: the status came with the headers.
        Some(head) if status.is_empty() => head,
        _ => (status, field("grpc-message")),
    };
    show_error(&format!("gRPC status {status}: {message}"));
    None
}

/// One gRPC call's HTTP/2 stream, unary or bidirectional.
struct GrpcStream {
    send: h2::SendStream<Bytes>,
    /// The response headers, until they arrive: etcd sends a streaming
    /// call's headers with its first message, so requests go out first.
    response: Option<h2::client::ResponseFuture>,
    body: Option<h2::RecvStream>,
    decoder: codec::Decoder,
    /// A trailers-only reply's `grpc-status` and `grpc-message`, which
    /// come in the response headers.
    head_status: Option<(String, String)>,
}

impl GrpcStream {
    async fn open(conn: &H2, path: &str) -> Option<GrpcStream> {
        let mut request = http::Request::builder()
            .method("POST")
            .uri(format!("http://localhost{path}"))
            .header("content-type", "application/grpc")
            .header("te", "trailers");
        if let Some(token) = GRPC_TOKEN.get() {
            request = request.header("token", token.as_str());
        }
        let request = request.body(()).ok()?;
        let mut conn = conn.clone().ready().await.ok()?;
        let (response, send) = conn.send_request(request, false).ok()?;
        Some(GrpcStream {
            send,
            response: Some(response),
            body: None,
            // A watch response batches many events: well past a request's limit.
            decoder: codec::Decoder::new(64 << 20),
            head_status: None,
        })
    }

    fn send(&mut self, message: Bytes, end: bool) -> Option<()> {
        self.send.send_data(message, end).ok()
    }

    /// The next whole message; `None` once the server ended the stream.
    /// Cancel-safe: a timeout around it loses nothing.
    async fn next_message(&mut self) -> Result<Option<Bytes>, BoxError> {
        loop {
            if let Some(message) = self.decoder.next_message().map_err(|s| s.message)? {
                return Ok(Some(message));
            }
            if let Some(response) = self.response.as_mut() {
                let response = response.await?;
                self.response = None;
                if response.status() != http::StatusCode::OK {
                    return Err(format!("HTTP status {}", response.status()).into());
                }
                let header = |name: &str| {
                    response
                        .headers()
                        .get(name)
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_string)
                };
                if let Some(status) = header("grpc-status") {
                    self.head_status = Some((status, header("grpc-message").unwrap_or_default()));
                }
                self.body = Some(response.into_body());
            }
            let Some(body) = self.body.as_mut() else {
                return Ok(None);
            };
            match body.data().await {
                Some(chunk) => {
                    let chunk = chunk?;
                    let _ = body.flow_control().release_capacity(chunk.len());
                    self.decoder.push(&chunk);
                }
                None => return Ok(None),
            }
        }
    }

    async fn recv<M: prost::Message + Default>(&mut self) -> Result<M, BoxError> {
        let message = self.next_message().await?.ok_or("stream ended")?;
        Ok(codec::decode(&message).map_err(|s| s.message)?)
    }
}

/// Hands out request numbers: none after `total` or past the deadline, and
/// request n not before `start + n / rate`.
struct Pacer {
    next: AtomicU64,
    total: u64,
    start: Instant,
    deadline: Option<Instant>,
    rate: f64,
}

impl Pacer {
    fn new(flags: &Flags, start: Instant) -> Pacer {
        Pacer {
            next: AtomicU64::new(0),
            total: flags.total(),
            start,
            deadline: (flags.duration > 0.0)
                .then(|| start + Duration::from_secs_f64(flags.duration)),
            rate: flags.rate,
        }
    }

    async fn next(&self) -> Option<u64> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        if n >= self.total {
            return None;
        }
        if self.rate > 0.0 {
            let at = self.start + Duration::from_secs_f64(n as f64 / self.rate);
            if self.deadline.is_some_and(|d| at >= d) {
                return None;
            }
            let now = Instant::now();
            if at > now {
                runtime::sleep(at - now).await;
            }
        }
        if self.deadline.is_some_and(|d| Instant::now() >= d) {
            return None;
        }
        Some(n)
    }

    fn issued(&self) -> u64 {
        self.next.load(Ordering::Relaxed).min(self.total)
    }
}

/// What one timed request was, for the per-kind percentiles.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Read,
    Write,
}

/// One client's connection state for the timed requests.
enum Session {
    Unary(Server),
    NativeKeepAlive(StreamSender, StreamReceiver),
    GrpcKeepAlive(GrpcStream),
}

impl Session {
    async fn open(flags: &Flags, server: &Server, worker: usize) -> Option<Session> {
        if flags.workload != Workload::LeaseKeepalive {
            return Some(Session::Unary(server.clone()));
        }
        if let Some(client) = server.native(worker) {
            let (send, recv) = client.open_stream(None, Call::LeaseKeepAlive).await.ok()?;
            return Some(Session::NativeKeepAlive(send, recv));
        }
        let conn = server.grpc(worker)?;
        let stream = GrpcStream::open(conn, "/etcdserverpb.Lease/LeaseKeepAlive").await?;
        Some(Session::GrpcKeepAlive(stream))
    }
}

/// What the timed requests need besides their session.
struct Plan {
    flags: Arc<Flags>,
    pacer: Pacer,
    /// watch: what put values are stamped against.
    epoch: Instant,
    value: Vec<u8>,
    /// lease-keepalive: the granted leases.
    leases: Vec<i64>,
    /// watch: successful puts per prefix (what each watcher must receive).
    puts_per_prefix: Vec<AtomicU64>,
}

impl Plan {
    /// Request `n` of the workload on `session`: its kind and whether it succeeded.
    async fn request(
        &self,
        session: &mut Session,
        worker: usize,
        n: u64,
        rng: u64,
    ) -> (Kind, bool) {
        let flags = &self.flags;
        let random_key = || {
            let i = if flags.sequential {
                n
            } else {
                rng % flags.key_space.max(1)
            };
            key(i, flags.key_size)
        };
        let server = match session {
            Session::Unary(server) => server,
            Session::NativeKeepAlive(send, recv) => {
                let id = self.lease(n);
                let ok = async {
                    send.send(&LeaseKeepAliveRequest { id }).await.ok()?;
                    let resp: LeaseKeepAliveResponse = recv.recv().await.ok()??;
                    // Another lease's answer: a timed-out request's, late.
                    Some(resp.id == id && resp.ttl > 0)
                };
                return (Kind::Write, ok.await.unwrap_or(false));
            }
            Session::GrpcKeepAlive(stream) => {
                let id = self.lease(n);
                let ok = async {
                    stream.send(codec::encode(&pb::LeaseKeepAliveRequest { id }), false)?;
                    let resp: pb::LeaseKeepAliveResponse = stream.recv().await.ok()?;
                    // Another lease's answer: a timed-out request's, late.
                    Some(resp.id == id && resp.ttl > 0)
                };
                return (Kind::Write, ok.await.unwrap_or(false));
            }
        };
        let (kind, op, key, value) = match flags.workload {
            Workload::Put => (Kind::Write, Unary::Put, random_key(), &self.value[..]),
            Workload::Range | Workload::RangeSerializable => {
                let serializable = flags.workload == Workload::RangeSerializable;
                let op = Unary::Get { serializable };
                (Kind::Read, op, random_key(), &[][..])
            }
            Workload::Txn => (Kind::Write, Unary::Cas, random_key(), &self.value[..]),
            Workload::Mixed => {
                // The top bits: the low ones also pick the key.
                let read = ((rng >> 40) as f64 / (1u64 << 24) as f64) < flags.read_ratio;
                if read {
                    let op = Unary::Get {
                        serializable: false,
                    };
                    (Kind::Read, op, random_key(), &[][..])
                } else {
                    (Kind::Write, Unary::Put, random_key(), &self.value[..])
                }
            }
            Workload::Watch => {
                let prefix = (n % self.puts_per_prefix.len() as u64) as usize;
                let value = stamp(self.epoch, flags.val_size);
                let ok = server
                    .unary(worker, Unary::Put, watch_key(flags, prefix), &value)
                    .await;
                if ok {
                    self.puts_per_prefix[prefix].fetch_add(1, Ordering::Relaxed);
                }
                return (Kind::Write, ok);
            }
            // Keepalives have their own sessions; the fsync floor has no server.
            Workload::LeaseKeepalive | Workload::FsyncFloor => return (Kind::Write, false),
        };
        (kind, server.unary(worker, op, key, value).await)
    }

    fn lease(&self, n: u64) -> i64 {
        self.leases
            .get((n % self.leases.len().max(1) as u64) as usize)
            .copied()
            .unwrap_or_default()
    }
}

/// Runs the timed requests: one task per session, each taking request
/// numbers from the pacer until it runs out. The samples, the error count
/// and the time from the pacer's start until the last request ended.
async fn drive(plan: Arc<Plan>, sessions: Vec<Session>) -> (Vec<(Duration, Kind)>, u64, Duration) {
    let errors = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();
    for (w, mut session) in sessions.into_iter().enumerate() {
        let (plan, errors) = (plan.clone(), errors.clone());
        workers.push(runtime::spawn(async move {
            let mut samples = Vec::new();
            let mut rng = 0x9e37_79b9_7f4a_7c15u64 ^ (w as u64 + 1);
            while let Some(n) = plan.pacer.next().await {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                let t = Instant::now();
                let request = plan.request(&mut session, w, n, rng);
                let (kind, ok) = runtime::timeout(REQUEST_TIMEOUT, request)
                    .await
                    .unwrap_or((Kind::Write, false));
                if !ok {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
                samples.push((t.elapsed(), kind));
            }
            samples
        }));
    }
    let stop = Arc::new(AtomicBool::new(false));
    let progress = {
        let (plan, stop) = (plan.clone(), stop.clone());
        runtime::spawn(async move {
            loop {
                runtime::sleep(Duration::from_secs(1)).await;
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                eprint!("\r{} requests", plan.pacer.issued());
            }
        })
    };
    let mut all = Vec::new();
    for w in workers {
        all.extend(w.await);
    }
    let elapsed = plan.pacer.start.elapsed();
    // Not awaited: it sees `stop` within its second and ends.
    stop.store(true, Ordering::Relaxed);
    drop(progress);
    eprintln!();
    (all, errors.load(Ordering::Relaxed), elapsed)
}

/// A put's value for the watch workload: the microseconds since `start`
/// it was sent at, padded to `size`, so a watcher can time its delivery.
fn stamp(start: Instant, size: usize) -> Vec<u8> {
    let mut value = format!("{:016}", start.elapsed().as_micros()).into_bytes();
    value.resize(size.max(16), b'v');
    value
}

/// How long ago the put that wrote `value` was sent.
fn since_stamp(start: Instant, value: &[u8]) -> Option<Duration> {
    let micros: u64 = std::str::from_utf8(value.get(..16)?).ok()?.parse().ok()?;
    start.elapsed().checked_sub(Duration::from_micros(micros))
}

/// The watch workload's keys live under one prefix per run, so a rerun
/// against the same server sees none of an earlier run's events.
fn watch_base() -> String {
    format!("bench/watch/{}/", std::process::id())
}

fn watch_key(flags: &Flags, prefix: usize) -> Vec<u8> {
    if flags.prefixes <= 1 {
        format!("{}key", watch_base()).into_bytes()
    } else {
        format!("{}{prefix}/k", watch_base()).into_bytes()
    }
}

/// What watcher `w` watches: (key, range end) as etcd's Watch takes them.
fn watch_range(flags: &Flags, w: usize) -> (Vec<u8>, Vec<u8>) {
    if flags.prefixes <= 1 {
        return (watch_key(flags, 0), Vec::new());
    }
    let key = format!("{}{}/", watch_base(), w % flags.prefixes).into_bytes();
    let mut end = key.clone();
    // The prefix ends in '/': bumping the last byte cannot overflow.
    if let Some(last) = end.last_mut() {
        *last += 1;
    }
    (key, end)
}

/// One watcher's tally, shared between the task receiving its events and
/// the main task waiting for them.
#[derive(Default)]
struct Tally {
    events: AtomicU64,
    /// Nanoseconds since the start of the puts at which the last event came.
    last_at: AtomicU64,
}

impl Tally {
    fn record(&self, start: Instant, events: usize) {
        self.events.fetch_add(events as u64, Ordering::Relaxed);
        let at = start.elapsed().as_nanos() as u64;
        self.last_at.fetch_max(at, Ordering::Relaxed);
    }
}

/// The tasks receiving watch events; each returns its delivery latencies
/// and its errors once `stop` is dropped.
struct Watchers {
    tallies: Arc<Vec<Tally>>,
    tasks: Vec<runtime::JoinHandle<(Vec<Duration>, u64)>>,
    /// Dropped to stop the tasks: it closes the channel they wait on.
    stop: runtime::channel::Sender<()>,
    /// Watches the server refused or never confirmed.
    failed: u64,
}

/// Creates every watcher, returning once all are confirmed (or failed).
async fn start_watchers(
    flags: &Arc<Flags>,
    server: &Server,
    start: Instant,
    start_rev: i64,
) -> Watchers {
    let (stop, stopped) = runtime::channel::bounded::<()>(1);
    let tallies: Arc<Vec<Tally>> =
        Arc::new((0..flags.watchers).map(|_| Tally::default()).collect());
    let mut tasks = Vec::new();
    let mut failed = 0;
    match server {
        // The SDK shares its watch streams (up to 256 watches each); every
        // watcher has its own task, as an application's would.
        Server::Native(clients) => {
            for w in 0..flags.watchers {
                let client = &clients[w % clients.len()];
                let (key, end) = watch_range(flags, w);
                let mut options = WatchOptions::new().with_start_revision(start_rev);
                if !end.is_empty() {
                    options = options.with_range(end);
                }
                let mut watcher = match client.watch(key, options).await {
                    Ok(watcher) => watcher,
                    Err(e) => {
                        if failed == 0 {
                            eprintln!("watch {w}: {e}");
                        }
                        failed += 1;
                        continue;
                    }
                };
                let (tallies, stopped) = (tallies.clone(), stopped.clone());
                tasks.push(runtime::spawn(async move {
                    let mut latencies = Vec::new();
                    loop {
                        // `next` is not cancel-safe, but a cancelled one is
                        // never called again.
                        let next = async { Some(watcher.next().await) };
                        let stop = async {
                            let _ = stopped.recv().await;
                            None
                        };
                        match futures_lite::future::or(next, stop).await {
                            Some(Some(Ok(resp))) => {
                                latencies.extend(
                                    resp.events
                                        .iter()
                                        .filter_map(|e| since_stamp(start, &e.kv.value)),
                                );
                                tallies[w].record(start, resp.events.len());
                            }
                            Some(Some(Err(e))) => {
                                eprintln!("watcher {w}: {e}");
                                return (latencies, 1);
                            }
                            Some(None) => return (latencies, 1),
                            None => break,
                        }
                    }
                    (latencies, 0)
                }));
            }
        }
        // Like etcd's benchmark: many watches per gRPC stream, the streams
        // spread over the connections.
        Server::Grpc(conns) => {
            let streams = flags.streams.clamp(1, flags.watchers.max(1));
            let mut ready = Vec::new();
            for s in 0..streams {
                let mine: Vec<usize> = (s..flags.watchers).step_by(streams).collect();
                let conn = conns[s % conns.len()].clone();
                let (flags, tallies, stopped) = (flags.clone(), tallies.clone(), stopped.clone());
                let (created_tx, created_rx) = runtime::channel::bounded::<u64>(1);
                ready.push(created_rx);
                tasks.push(runtime::spawn(async move {
                    grpc_watch_stream(
                        &flags, &conn, mine, start, start_rev, tallies, stopped, created_tx,
                    )
                    .await
                }));
            }
            for r in ready {
                // A stream that never reports counts its watchers as failed itself.
                failed += r.recv().await.unwrap_or(0);
            }
        }
    }
    Watchers {
        tallies,
        tasks,
        stop,
        failed,
    }
}

/// One gRPC Watch stream carrying the watchers `mine`: creates them (and
/// reports how many failed on `created`), then tallies events until
/// `stopped` closes.
#[allow(clippy::too_many_arguments)]
async fn grpc_watch_stream(
    flags: &Flags,
    conn: &H2,
    mine: Vec<usize>,
    start: Instant,
    start_rev: i64,
    tallies: Arc<Vec<Tally>>,
    stopped: runtime::channel::Receiver<()>,
    created: runtime::channel::Sender<u64>,
) -> (Vec<Duration>, u64) {
    let all_failed = mine.len() as u64;
    let Some(mut stream) = GrpcStream::open(conn, "/etcdserverpb.Watch/Watch").await else {
        let _ = created.send(all_failed).await;
        return (Vec::new(), 0);
    };
    for &w in &mine {
        let (key, range_end) = watch_range(flags, w);
        let create = pb::WatchRequest {
            request_union: Some(pb::watch_request::RequestUnion::CreateRequest(
                pb::WatchCreateRequest {
                    key,
                    range_end,
                    start_revision: start_rev,
                    ..Default::default()
                },
            )),
        };
        if stream.send(codec::encode(&create), false).is_none() {
            let _ = created.send(all_failed).await;
            return (Vec::new(), 0);
        }
    }
    // The server confirms creates in the order sent; its watch IDs map back
    // to our watchers. Events can come between confirmations (history).
    let mut watcher_of = std::collections::HashMap::new();
    let mut confirmed = 0;
    let mut failed = 0;
    let mut creating = Some(created);
    let create_deadline = Instant::now() + Duration::from_secs(30);
    let mut latencies = Vec::new();
    let mut errors = 0;
    loop {
        if confirmed == mine.len() || Instant::now() >= create_deadline {
            if let Some(created) = creating.take() {
                let _ = created.send(failed + (mine.len() - confirmed) as u64).await;
            }
        }
        // Short waits, to see the create deadline; `recv` is cancel-safe.
        let next = async {
            let next = runtime::timeout(
                Duration::from_millis(100),
                stream.recv::<pb::WatchResponse>(),
            );
            Some(next.await)
        };
        let stop = async {
            let _ = stopped.recv().await;
            None
        };
        let Some(next) = futures_lite::future::or(next, stop).await else {
            break;
        };
        match next {
            Ok(Ok(resp)) if resp.created => {
                if creating.is_some() && confirmed < mine.len() {
                    if resp.canceled {
                        failed += 1;
                    } else {
                        watcher_of.insert(resp.watch_id, mine[confirmed]);
                    }
                    confirmed += 1;
                }
            }
            Ok(Ok(resp)) => {
                let Some(&w) = watcher_of.get(&resp.watch_id) else {
                    continue;
                };
                latencies.extend(
                    resp.events
                        .iter()
                        .filter_map(|e| since_stamp(start, &e.kv.as_ref()?.value)),
                );
                tallies[w].record(start, resp.events.len());
            }
            Ok(Err(_)) => {
                errors += 1;
                break;
            }
            Err(_) => {}
        }
    }
    if let Some(created) = creating {
        let _ = created.send(failed + (mine.len() - confirmed) as u64).await;
    }
    (latencies, errors)
}

/// The watch workload: watchers, puts, and the wait for every event.
async fn watch(flags: Arc<Flags>, server: Server) -> Result<(), BoxError> {
    let prefixes = flags.prefixes.max(1);
    // Stamps in put values and the watchers' tallies count from here.
    let epoch = Instant::now();
    let new_plan = || {
        Arc::new(Plan {
            flags: flags.clone(),
            pacer: Pacer::new(&flags, Instant::now()),
            epoch,
            value: Vec::new(),
            leases: Vec::new(),
            puts_per_prefix: (0..prefixes).map(|_| AtomicU64::new(0)).collect(),
        })
    };
    let sessions = || {
        (0..flags.clients.max(1))
            .map(|_| Session::Unary(server.clone()))
            .collect::<Vec<_>>()
    };
    if flags.from_history {
        let first_rev = current_revision(&flags, &server).await? + 1;
        let plan = new_plan();
        let (_, put_errors, _) = drive(plan.clone(), sessions()).await;
        // The clock starts with the first watch.
        let clock = Instant::now();
        let watchers = start_watchers(&flags, &server, epoch, first_rev).await;
        finish_watch(&flags, watchers, &plan, put_errors, clock).await;
    } else {
        let watchers = start_watchers(&flags, &server, epoch, 0).await;
        eprintln!("{} watchers created", flags.watchers);
        // The clock starts with the puts.
        let plan = new_plan();
        let (_, put_errors, _) = drive(plan.clone(), sessions()).await;
        finish_watch(&flags, watchers, &plan, put_errors, plan.pacer.start).await;
    }
    Ok(())
}

/// The server's current revision (a range answers with it).
async fn current_revision(flags: &Flags, server: &Server) -> Result<i64, BoxError> {
    match server {
        Server::Native(clients) => {
            let c = clients.first().ok_or("no connection")?;
            Ok(c.get(watch_key(flags, 0), None).await?.header.revision)
        }
        Server::Grpc(conns) => {
            let conn = conns.first().ok_or("no connection")?;
            let probe = codec::encode(&pb::RangeRequest {
                key: watch_key(flags, 0),
                ..Default::default()
            });
            let reply = h2_unary(conn, "/etcdserverpb.KV/Range", probe)
                .await
                .ok_or("range failed")?;
            let range: pb::RangeResponse = codec::decode(&reply).map_err(|s| s.message)?;
            Ok(range.header.map(|h| h.revision).unwrap_or_default())
        }
    }
}

/// Waits (boundedly) for every watcher to have its prefix's puts, then
/// stops the watchers and reports, timing from `clock`.
async fn finish_watch(
    flags: &Flags,
    watchers: Watchers,
    plan: &Plan,
    put_errors: u64,
    clock: Instant,
) {
    let prefixes = flags.prefixes.max(1);
    let want = |w: usize| plan.puts_per_prefix[w % prefixes].load(Ordering::Relaxed);
    let deadline = Instant::now() + WATCH_DRAIN;
    let all_in = || {
        watchers
            .tallies
            .iter()
            .enumerate()
            .all(|(w, t)| t.events.load(Ordering::Relaxed) >= want(w))
    };
    while !all_in() && Instant::now() < deadline {
        runtime::sleep(Duration::from_millis(5)).await;
    }
    drop(watchers.stop);
    let mut latencies = Vec::new();
    let mut errors = put_errors + watchers.failed;
    for t in watchers.tasks {
        let (l, e) = t.await;
        latencies.extend(l);
        errors += e;
    }
    let mut delivered = 0;
    let mut last_at = 0;
    for (w, t) in watchers.tallies.iter().enumerate() {
        let got = t.events.load(Ordering::Relaxed);
        // Exactly every put: fewer is a lost event, more a duplicate.
        errors += u64::from(got != want(w));
        delivered += got;
        last_at = last_at.max(t.last_at.load(Ordering::Relaxed));
    }
    let took = (plan.epoch + Duration::from_nanos(last_at)).saturating_duration_since(clock);
    let puts: u64 = plan
        .puts_per_prefix
        .iter()
        .map(|p| p.load(Ordering::Relaxed))
        .sum();
    let samples = latencies.into_iter().map(|l| (l, Kind::Read)).collect();
    let extra = format!(
        " watchers={} prefixes={prefixes} puts={puts} delivered={delivered} took={:.0}ms",
        flags.watchers,
        took.as_secs_f64() * 1e3
    );
    report(flags, samples, errors, delivered, took, &extra);
}

/// The lease-keepalive workload: grants, then timed keepalives.
async fn lease_keepalive(flags: Arc<Flags>, server: Server) -> Result<(), BoxError> {
    let granted = Instant::now();
    let granters = flags.clients.max(1);
    let mut tasks = Vec::new();
    for g in 0..granters {
        let server = server.clone();
        let n = (g..flags.leases).step_by(granters).count();
        tasks.push(runtime::spawn(async move {
            let mut ids = Vec::with_capacity(n);
            for _ in 0..n {
                ids.extend(server.lease_grant(g).await);
            }
            ids
        }));
    }
    let mut leases = Vec::new();
    for t in tasks {
        leases.extend(t.await);
    }
    eprintln!(
        "granted {} of {} leases in {:?}",
        leases.len(),
        flags.leases,
        granted.elapsed()
    );
    let grant_errors = (flags.leases - leases.len()) as u64;
    let mut sessions = Vec::new();
    let mut open_errors = 0;
    for w in 0..flags.clients.max(1) {
        match Session::open(&flags, &server, w).await {
            Some(s) => sessions.push(s),
            None => open_errors += 1,
        }
    }
    let plan = Arc::new(Plan {
        flags: flags.clone(),
        pacer: Pacer::new(&flags, Instant::now()),
        epoch: Instant::now(),
        value: Vec::new(),
        leases,
        puts_per_prefix: Vec::new(),
    });
    let (samples, errors, elapsed) = drive(plan, sessions).await;
    let extra = format!(" leases={}", flags.leases);
    let n = samples.len() as u64;
    report(
        &flags,
        samples,
        errors + grant_errors + open_errors,
        n,
        elapsed,
        &extra,
    );
    Ok(())
}

/// pwrite + fdatasync, `total` times, in a preallocated scratch file.
fn fsync_floor(flags: &Flags) -> std::io::Result<Vec<Duration>> {
    use std::os::unix::fs::FileExt;
    let path = flags.dir.join("qed-bench-fsync-floor.tmp");
    let file = std::fs::File::create(&path)?;
    let record = vec![b'v'; flags.key_size + flags.val_size + 32];
    // --duration alone would leave the file unsized: the default count.
    let total = flags.total.unwrap_or(20_000);
    file.set_len(record.len() as u64 * total)?;
    file.sync_all()?;
    let deadline =
        (flags.duration > 0.0).then(|| Instant::now() + Duration::from_secs_f64(flags.duration));
    let mut latencies = Vec::new();
    for i in 0..total {
        if deadline.is_some_and(|d| Instant::now() >= d) {
            break;
        }
        let t = Instant::now();
        file.write_all_at(&record, i * record.len() as u64)?;
        file.sync_data()?;
        latencies.push(t.elapsed());
    }
    std::fs::remove_file(&path)?;
    Ok(latencies)
}

/// Latency percentiles, each field's name prefixed with `name`.
fn percentiles(name: &str, mut all: Vec<Duration>) -> String {
    all.sort();
    let pct = |p: f64| {
        all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    format!(
        "{name}p50={:.2}ms {name}p90={:.2}ms {name}p99={:.2}ms {name}max={:.2}ms",
        ms(pct(0.50)),
        ms(pct(0.90)),
        ms(pct(0.99)),
        ms(all.last().copied().unwrap_or_default()),
    )
}

/// The result line: `done` operations (requests; watch: events delivered)
/// in `elapsed`, latency percentiles over `samples`, and for the mixed
/// workload the reads' and writes' own percentiles.
fn report(
    flags: &Flags,
    samples: Vec<(Duration, Kind)>,
    errors: u64,
    done: u64,
    elapsed: Duration,
    extra: &str,
) {
    if errors > 0 {
        FAILED.store(true, std::sync::atomic::Ordering::Relaxed);
    }
    let mut by_kind = String::new();
    if flags.workload == Workload::Mixed {
        for (kind, name) in [(Kind::Read, "read"), (Kind::Write, "write")] {
            let mine: Vec<Duration> = samples
                .iter()
                .filter(|s| s.1 == kind)
                .map(|s| s.0)
                .collect();
            let n = mine.len();
            by_kind += &format!(" {name}s={n} {}", percentiles(&format!("{name}_"), mine));
        }
    }
    println!(
        "{:?} target={:?} clients={} total={done} errors={errors} throughput={:.0}/s {}{by_kind}{extra}",
        flags.workload,
        flags.target,
        flags.clients,
        done as f64 / elapsed.as_secs_f64().max(1e-9),
        percentiles("", samples.into_iter().map(|s| s.0).collect()),
    );
}

fn main() -> Result<(), BoxError> {
    let flags = Arc::new(Flags::parse());
    if flags.workload == Workload::FsyncFloor {
        let start = Instant::now();
        let latencies = fsync_floor(&flags)?;
        let n = latencies.len() as u64;
        let samples = latencies.into_iter().map(|l| (l, Kind::Write)).collect();
        report(&flags, samples, 0, n, start.elapsed(), "");
        return Ok(());
    }
    runtime::block_on(async move {
        let server = Server::connect(&flags).await?;
        match flags.workload {
            Workload::Watch => return watch(flags, server).await,
            Workload::LeaseKeepalive => return lease_keepalive(flags, server).await,
            _ => {}
        }
        let value = vec![b'v'; flags.val_size];
        if !matches!(flags.workload, Workload::Put) {
            for i in 0..flags.key_space.min(flags.total()) {
                server
                    .unary(0, Unary::Put, key(i, flags.key_size), &value)
                    .await;
            }
        }
        let sessions = (0..flags.clients.max(1))
            .map(|_| Session::Unary(server.clone()))
            .collect();
        let plan = Arc::new(Plan {
            flags: flags.clone(),
            pacer: Pacer::new(&flags, Instant::now()),
            epoch: Instant::now(),
            value,
            leases: Vec::new(),
            puts_per_prefix: Vec::new(),
        });
        let (samples, errors, elapsed) = drive(plan, sessions).await;
        let n = samples.len() as u64;
        report(&flags, samples, errors, n, elapsed, "");
        Ok(())
    })?;
    if FAILED.load(std::sync::atomic::Ordering::Relaxed) {
        // After the report line: scripts (and readiness polls) see it.
        return Err("some requests failed (errors= above)".into());
    }
    Ok(())
}

/// Set when a report counted errors, so the exit status says so.
static FAILED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
