//! The HTTP/2 gRPC server: listener, connections, one task per stream.
//!
//! Role: accept TCP connections (cleartext h2 with prior knowledge, or TLS
//! with ALPN `h2`), run an `h2` server connection on each, and answer every
//! stream: check it is a gRPC call, route its path ([`Method`]), read and
//! decode the request message(s), call the [`Backend`], and write the
//! response message(s) and the `grpc-status` trailers.
//!
//! Invariants:
//! - Flow control: request bytes are released to the peer as soon as they
//!   are moved into the message decoder, and the decoder refuses a message
//!   larger than the receive limit before buffering it, so one stream holds
//!   at most one limit's worth of memory. Responses are written only as the
//!   peer grants send capacity, so a slow watcher exerts back-pressure on its
//!   backend stream instead of growing a buffer.
//! - Every stream ends with a gRPC status (trailers) or an HTTP/2 reset;
//!   nothing read from the socket can panic a task.
//! - Keepalive: each connection is pinged after `keepalive_interval` and
//!   dropped if the pong does not come within `keepalive_timeout` (etcd's
//!   server keepalive), so vanished clients do not hold watches forever.
//!   Client pings are answered by `h2` itself.
//! - Shutdown: when [`Shutdown::trigger`] fires, the listener stops
//!   accepting, each connection sends GOAWAY and keeps serving the streams
//!   it already has; [`serve`] returns when they have all finished or the
//!   grace period is over.

use super::backend::{Backend, StreamPair};
use super::coalesce::{Coalesce, Turns};
use super::codec::{self, Decoder};
use super::convert::{self, Method, Streaming, Unary};
use super::pb;
use super::status::{encode_message, Code, Status};
use crate::metrics::GRPC;
use crate::runtime::{self, channel, TcpListener};
use bytes::{Bytes, BytesMut};
use futures_lite::future;
use h2::server::SendResponse;
use h2::{RecvStream, SendStream};
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::compat::FuturesAsyncReadCompatExt;

/// How the server runs.
#[derive(Clone)]
pub struct ServerConfig {
    /// Largest request message accepted (etcd: 1.5 MiB + 512 KiB).
    pub max_recv_bytes: usize,
    /// HTTP/2 `SETTINGS_MAX_CONCURRENT_STREAMS` per connection.
    pub max_concurrent_streams: u32,
    /// TLS for the listener; `None` serves h2c (prior knowledge).
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// How long in-flight calls may run after shutdown begins.
    pub shutdown_grace: Duration,
    /// Ping a connection after this long (etcd's
    /// `--grpc-keepalive-interval`, 2 h), to find clients that vanished
    /// without closing their socket (and their idle watches with them).
    pub keepalive_interval: Duration,
    /// Close the connection when a ping is not answered within this
    /// (etcd's `--grpc-keepalive-timeout`, 20 s).
    pub keepalive_timeout: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            max_recv_bytes: codec::MAX_RECV_BYTES,
            // etcd's default --max-concurrent-streams is math.MaxUint32.
            max_concurrent_streams: u32::MAX,
            tls: None,
            shutdown_grace: Duration::from_secs(10),
            keepalive_interval: Duration::from_secs(2 * 60 * 60),
            keepalive_timeout: Duration::from_secs(20),
        }
    }
}

/// A shutdown signal shared by the listener and every connection: it fires
/// once, when [`Shutdown::trigger`] is called (closing the channel wakes
/// every waiter at once).
#[derive(Clone)]
pub struct Shutdown {
    tx: channel::Sender<()>,
    rx: channel::Receiver<()>,
}

impl Default for Shutdown {
    fn default() -> Self {
        let (tx, rx) = channel::bounded(1);
        Shutdown { tx, rx }
    }
}

impl Shutdown {
    pub fn new() -> Shutdown {
        Shutdown::default()
    }

    pub fn trigger(&self) {
        self.tx.close();
    }

    pub fn is_triggered(&self) -> bool {
        self.tx.is_closed()
    }

    /// Resolves once the shutdown has been triggered.
    pub async fn wait(&self) {
        // Nothing is ever sent: recv only returns when the channel closes.
        let _ = self.rx.recv().await;
    }
}

/// Serves gRPC on `listener` until `shutdown` fires and in-flight calls end.
pub async fn serve<B: Backend>(
    listener: TcpListener,
    backend: B,
    config: ServerConfig,
    shutdown: Shutdown,
) {
    let config = Arc::new(config);
    let active = Arc::new(AtomicUsize::new(0));
    init_metrics();
    loop {
        enum Next {
            Conn(std::io::Result<(runtime::TcpStream, std::net::SocketAddr)>),
            Stop,
        }
        let next = future::or(async { Next::Conn(listener.accept().await) }, async {
            shutdown.wait().await;
            Next::Stop
        })
        .await;
        let (stream, peer) = match next {
            Next::Stop => break,
            Next::Conn(Ok(conn)) => conn,
            Next::Conn(Err(e)) => {
                // EMFILE and friends: back off instead of spinning.
                log::warn!("accept: {e}");
                runtime::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let backend = backend.clone();
        let config = config.clone();
        let shutdown = shutdown.clone();
        let guard = ActiveGuard::new(active.clone());
        runtime::spawn(async move {
            let _guard = guard;
            // Cleartext: curl and Prometheus speak HTTP/1.1 to this port
            // (etcd answers /health and /metrics there); gRPC clients open
            // with the HTTP/2 preface.
            if config.tls.is_none() && starts_with_http1(&stream).await {
                let backend = backend.clone();
                crate::http1::serve_connection(stream, move |req| {
                    let backend = backend.clone();
                    async move { super::probes::respond(&backend, req).await }
                })
                .await;
                return;
            }
            let io = stream.compat();
            match config.tls.clone() {
                None => serve_connection(io, backend, config, shutdown).await,
                Some(tls) => {
                    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
                    match runtime::timeout(Duration::from_secs(10), acceptor.accept(io)).await {
                        // A probe over TLS without HTTP/2 (ALPN http/1.1).
                        Ok(Ok(tls_stream))
                            if tls_stream.get_ref().1.alpn_protocol() == Some(b"http/1.1") =>
                        {
                            use tokio_util::compat::TokioAsyncReadCompatExt;
                            crate::http1::serve_connection(tls_stream.compat(), move |req| {
                                let backend = backend.clone();
                                async move { super::probes::respond(&backend, req).await }
                            })
                            .await
                        }
                        Ok(Ok(tls_stream)) => {
                            serve_connection(tls_stream, backend, config, shutdown).await
                        }
                        Ok(Err(e)) => log::debug!("{peer}: TLS handshake: {e}"),
                        Err(_) => log::debug!("{peer}: TLS handshake timed out"),
                    }
                }
            }
        });
    }
    drop(listener);
    let deadline = std::time::Instant::now() + config.shutdown_grace;
    while active.load(Ordering::SeqCst) > 0 && std::time::Instant::now() < deadline {
        runtime::sleep(Duration::from_millis(20)).await;
    }
}

/// Whether the client's first bytes are an HTTP/1.x request line. Peeks
/// (nothing is consumed) until four bytes have arrived, for at most about
/// a second; a client that sends less is handed to the h2 server, which
/// times its handshake out.
async fn starts_with_http1(stream: &runtime::TcpStream) -> bool {
    let mut first = [0u8; 4];
    for _ in 0..100 {
        match runtime::timeout(Duration::from_secs(1), stream.peek(&mut first)).await {
            Ok(Ok(n)) if n >= first.len() => return crate::http1::looks_like_http1(&first),
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return false,
            Ok(Ok(_)) => runtime::sleep(Duration::from_millis(10)).await,
        }
    }
    false
}

/// Counts a live connection for the shutdown wait.
struct ActiveGuard(Arc<AtomicUsize>);

impl ActiveGuard {
    fn new(count: Arc<AtomicUsize>) -> ActiveGuard {
        count.fetch_add(1, Ordering::SeqCst);
        ActiveGuard(count)
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Runs one HTTP/2 connection until the peer leaves or shutdown drains it.
pub async fn serve_connection<IO, B>(
    io: IO,
    backend: B,
    config: Arc<ServerConfig>,
    shutdown: Shutdown,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    B: Backend,
{
    // etcdctl may send `:authority: http://host:port`, which h2 refuses.
    let io = super::authority::AuthorityFix::new(io);
    // What h2 writes in one turn of this task leaves in one socket write.
    let turns = Turns::new();
    let io = Coalesce::new(io, turns.clone());
    let handshake = h2::server::Builder::new()
        .initial_window_size(1 << 20)
        .initial_connection_window_size(4 << 20)
        .max_concurrent_streams(config.max_concurrent_streams)
        .max_header_list_size(64 << 10)
        .max_send_buffer_size(1 << 20)
        .handshake::<_, Bytes>(io);
    let mut conn = match runtime::timeout(Duration::from_secs(10), handshake).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => {
            log::debug!("h2 handshake: {e}");
            return;
        }
        Err(_) => {
            log::debug!("h2 handshake timed out");
            return;
        }
    };
    // Keepalive: a task pings the peer every interval; an unanswered ping
    // closes `dead`, which drops the connection below.
    let (dead_tx, dead) = channel::bounded::<()>(1);
    let keepalive = conn.ping_pong().map(|mut ping_pong| {
        let (interval, timeout) = (config.keepalive_interval, config.keepalive_timeout);
        let dead_tx = dead_tx.clone();
        runtime::spawn(async move {
            loop {
                runtime::sleep(interval).await;
                match runtime::timeout(timeout, ping_pong.ping(h2::Ping::opaque())).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(_)) => return,
                    Err(_) => {
                        log::debug!("keepalive ping unanswered in {timeout:?}: closing");
                        dead_tx.close();
                        return;
                    }
                }
            }
        })
    });
    let mut draining = false;
    loop {
        enum Next<T> {
            Stream(Option<Result<T, h2::Error>>),
            Drain,
            Dead,
        }
        let accept = async { Next::Stream(conn.accept().await) };
        let dead = async {
            let _ = dead.recv().await;
            Next::Dead
        };
        let next = if draining {
            turns.run(future::or(accept, dead)).await
        } else {
            let drain = async {
                shutdown.wait().await;
                Next::Drain
            };
            turns.run(future::or(accept, future::or(dead, drain))).await
        };
        match next {
            Next::Drain => {
                conn.graceful_shutdown();
                draining = true;
            }
            Next::Dead => break,
            Next::Stream(Some(Ok((request, respond)))) => {
                let backend = backend.clone();
                let config = config.clone();
                runtime::spawn(async move {
                    handle_stream(request, respond, backend, &config).await;
                });
            }
            Next::Stream(Some(Err(e))) => {
                log::debug!("h2 connection: {e}");
                break;
            }
            Next::Stream(None) => break,
        }
    }
    if let Some(task) = keepalive {
        task.cancel().await;
    }
    drop(dead_tx);
}

/// Answers one HTTP/2 stream.
async fn handle_stream<B: Backend>(
    request: Request<RecvStream>,
    mut respond: SendResponse<Bytes>,
    backend: B,
    config: &ServerConfig,
) {
    let (parts, body) = request.into_parts();
    if parts.method == http::Method::GET || parts.method == http::Method::HEAD {
        // etcd serves /health, /metrics and friends on its gRPC port, over
        // HTTP/2 as well as HTTP/1.1.
        let path = parts.uri.path();
        let query = parts.uri.query().unwrap_or("");
        let answer = super::probes::respond(
            &backend,
            crate::http1::Request {
                method: parts.method.to_string(),
                path: path.to_owned(),
                query: query.to_owned(),
            },
        )
        .await;
        send_plain(&mut respond, answer, parts.method == http::Method::HEAD).await;
        return;
    }
    if parts.method != http::Method::POST {
        send_http_error(&mut respond, StatusCode::METHOD_NOT_ALLOWED);
        return;
    }
    let content_type = parts
        .headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let is_grpc = content_type == "application/grpc"
        || content_type.starts_with("application/grpc+")
        || content_type.starts_with("application/grpc;");
    if !is_grpc {
        send_http_error(&mut respond, StatusCode::UNSUPPORTED_MEDIA_TYPE);
        return;
    }
    if let Some(encoding) = parts.headers.get("grpc-encoding") {
        let encoding = String::from_utf8_lossy(encoding.as_bytes());
        if encoding != "identity" {
            send_status(
                &mut respond,
                &Status::unimplemented(format!(
                    "grpc: Decompressor is not installed for grpc-encoding {encoding:?}"
                )),
            );
            return;
        }
    }
    let token = parts
        .headers
        .get("token")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let deadline = parts
        .headers
        .get("grpc-timeout")
        .and_then(|v| parse_timeout(v.as_bytes()));
    let path = parts.uri.path();
    let method = Method::from_path(path);
    let labels = match method {
        Some(m) => Some(CallLabels::new(path, m.grpc_type())),
        None if path == HEALTH_CHECK => Some(CallLabels::new(path, "unary")),
        None => None,
    };
    if let Some(labels) = &labels {
        labels.started();
    }
    let handled = |code: Code| {
        if let Some(labels) = &labels {
            labels.handled(code);
        }
    };
    if path == HEALTH_CHECK {
        match health_check(body, &backend, config).await {
            Ok(message) => {
                let _ = send_unary(&mut respond, message).await;
                handled(Code::Ok);
            }
            Err(status) => {
                send_status(&mut respond, &status);
                handled(status.code);
            }
        }
        return;
    }
    match method {
        None => send_status(&mut respond, &convert::unknown_method(path)),
        Some(Method::Unary(method)) => {
            let call = async {
                match deadline {
                    None => unary(method, body, &backend, token, config).await,
                    Some(d) => runtime::timeout(d, unary(method, body, &backend, token, config))
                        .await
                        .unwrap_or_else(|_| {
                            Err(Status::new(
                                Code::DeadlineExceeded,
                                "context deadline exceeded",
                            ))
                        }),
                }
            };
            // A client that resets the stream (cancels) stops waiting; the
            // call to the node is dropped with it.
            let reset = async {
                let _ = future::poll_fn(|cx| respond.poll_reset(cx)).await;
                None
            };
            let Some(outcome) = future::or(async { Some(call.await) }, reset).await else {
                handled(Code::Canceled);
                return;
            };
            match outcome {
                Ok(message) => {
                    let _ = send_unary(&mut respond, message).await;
                    handled(Code::Ok);
                }
                Err(status) => {
                    send_status(&mut respond, &status);
                    handled(status.code);
                }
            }
        }
        Some(Method::Streaming(kind)) => {
            // Boxed: a stream's state is large, and every unary call's task
            // (this future, moved into the executor at spawn) would carry it.
            let code = Box::pin(streaming(kind, body, respond, backend, token, config)).await;
            handled(code);
        }
    }
}

/// Every method's gRPC counters at zero, for every code, as
/// go-grpc-prometheus' `Register` does for etcd (dashboards see 0, not
/// nothing). Idempotent.
fn init_metrics() {
    let paths = Method::all()
        .map(|(m, p)| (p, m.grpc_type()))
        .chain(std::iter::once((HEALTH_CHECK, "unary")));
    for (path, kind) in paths {
        let labels = CallLabels::new(path, kind);
        GRPC.started
            .with(&[labels.kind, &labels.service, &labels.method]);
        for code in Code::ALL {
            GRPC.handled
                .with(&[labels.kind, &labels.service, &labels.method, code.name()]);
        }
    }
}

impl Method {
    /// go-grpc-prometheus' `grpc_type` label.
    fn grpc_type(self) -> &'static str {
        match self {
            Method::Unary(_) => "unary",
            Method::Streaming(Streaming::Snapshot) => "server_stream",
            Method::Streaming(_) => "bidi_stream",
        }
    }
}

/// go-grpc-prometheus' labels of one call: type, service, method.
struct CallLabels {
    kind: &'static str,
    service: String,
    method: String,
}

impl CallLabels {
    fn new(path: &str, kind: &'static str) -> CallLabels {
        let (service, name) = path
            .trim_start_matches('/')
            .split_once('/')
            .unwrap_or(("", path));
        CallLabels {
            kind,
            service: service.to_owned(),
            method: name.to_owned(),
        }
    }

    fn started(&self) {
        GRPC.started
            .with(&[self.kind, &self.service, &self.method])
            .inc();
    }

    fn handled(&self, code: Code) {
        GRPC.handled
            .with(&[self.kind, &self.service, &self.method, code.name()])
            .inc();
    }
}

/// An HTTP/2 answer for a probe (`GET /health` over h2).
async fn send_plain(respond: &mut SendResponse<Bytes>, answer: crate::http1::Response, head: bool) {
    let mut response = Response::new(());
    *response.status_mut() = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::OK);
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static(answer.content_type),
    );
    let Ok(mut send) = respond.send_response(response, head || answer.body.is_empty()) else {
        return;
    };
    if !head
        && !answer.body.is_empty()
        && send_data(&mut send, Bytes::from(answer.body)).await.is_ok()
    {
        let _ = send.send_data(Bytes::new(), true);
    }
}

/// gRPC's standard health check, which etcd serves too.
const HEALTH_CHECK: &str = "/grpc.health.v1.Health/Check";

/// Answers a health check for the whole server (service ""), as etcd
/// registers it: SERVING when the cluster answers a Status call through
/// this shim, NOT_SERVING when it does not, so a load balancer in front of
/// several shims skips one that cannot reach the cluster.
async fn health_check<B: Backend>(
    mut body: RecvStream,
    backend: &B,
    config: &ServerConfig,
) -> Result<Bytes, Status> {
    let mut decoder = Decoder::new(config.max_recv_bytes);
    let message = next_message(&mut body, &mut decoder)
        .await?
        .ok_or_else(|| Status::internal("grpc: unary call ended before its request message"))?;
    let request: pb::HealthCheckRequest = codec::decode(&message)?;
    if !request.service.is_empty() {
        return Err(Status::new(Code::NotFound, "unknown service"));
    }
    let status = match backend
        .unary(None, crate::wire::Request::Status(Default::default()))
        .await
    {
        Ok(_) => pb::ServingStatus::Serving,
        Err(_) => pb::ServingStatus::NotServing,
    };
    Ok(codec::encode(&pb::HealthCheckResponse {
        status: status as i32,
    }))
}

/// Reads the one request message, calls the backend, encodes the answer.
async fn unary<B: Backend>(
    method: Unary,
    mut body: RecvStream,
    backend: &B,
    token: Option<String>,
    config: &ServerConfig,
) -> Result<Bytes, Status> {
    let mut decoder = Decoder::new(config.max_recv_bytes);
    let message = match next_message(&mut body, &mut decoder).await? {
        Some(message) => message,
        None => {
            return Err(Status::internal(
                "grpc: unary call ended before its request message",
            ))
        }
    };
    let request = method.decode_request(&message)?;
    log::debug!("{}: {request:?}", method.path());
    let response = backend.unary(token, request).await?;
    Ok(Bytes::from(convert::encode_response(method, response)?))
}

/// Pulls DATA frames into `decoder` until it yields a message; `Ok(None)` at
/// the end of the request body. Capacity is released as bytes are consumed.
async fn next_message(
    body: &mut RecvStream,
    decoder: &mut Decoder,
) -> Result<Option<Bytes>, Status> {
    loop {
        if let Some(message) = decoder.next_message()? {
            return Ok(Some(message));
        }
        match body.data().await {
            None => {
                return if decoder.buffered() == 0 {
                    Ok(None)
                } else {
                    Err(Status::internal(
                        "grpc: request body ended inside a message",
                    ))
                }
            }
            Some(Err(e)) => return Err(Status::new(Code::Canceled, format!("stream: {e}"))),
            Some(Ok(chunk)) => {
                let _ = body.flow_control().release_capacity(chunk.len());
                decoder.push(&chunk);
            }
        }
    }
}

/// Dispatches one of the streaming methods.
async fn streaming<B: Backend>(
    kind: Streaming,
    mut body: RecvStream,
    mut respond: SendResponse<Bytes>,
    backend: B,
    token: Option<String>,
    config: &ServerConfig,
) -> Code {
    match kind {
        Streaming::Watch => match backend.watch(token).await {
            Err(status) => {
                send_status(&mut respond, &status);
                status.code
            }
            Ok(pair) => {
                pump(
                    body,
                    respond,
                    pair,
                    config,
                    convert::watch_request_bytes,
                    convert::watch_batch_into,
                )
                .await
            }
        },
        Streaming::LeaseKeepAlive => match backend.lease_keep_alive(token).await {
            Err(status) => {
                send_status(&mut respond, &status);
                status.code
            }
            Ok(pair) => {
                pump(
                    body,
                    respond,
                    pair,
                    config,
                    convert::keep_alive_request_bytes,
                    |r, out| codec::encode_into(&convert::lease_keep_alive_response(r), out),
                )
                .await
            }
        },
        Streaming::Snapshot => {
            let mut decoder = Decoder::new(config.max_recv_bytes);
            let first = match next_message(&mut body, &mut decoder).await {
                Ok(Some(m)) => m,
                Ok(None) => {
                    send_status(
                        &mut respond,
                        &Status::internal("grpc: snapshot call ended before its request message"),
                    );
                    return Code::Internal;
                }
                Err(status) => {
                    send_status(&mut respond, &status);
                    return status.code;
                }
            };
            if let Err(status) = codec::decode::<pb::SnapshotRequest>(&first) {
                send_status(&mut respond, &status);
                return status.code;
            }
            let rx = match backend.snapshot(token).await {
                Ok(rx) => rx,
                Err(status) => {
                    send_status(&mut respond, &status);
                    return status.code;
                }
            };
            // No more requests are expected; the sender half stays unused,
            // and dropping `rx` is what stops the backend.
            let (tx, _unused) = channel::bounded::<()>(1);
            let (alive, _gone) = channel::bounded(1);
            pump(
                body,
                respond,
                StreamPair { tx, rx, alive },
                config,
                |_| Ok(None),
                |r, out| codec::encode_into(&convert::snapshot_response(r), out),
            )
            .await
        }
    }
}

/// Runs a streaming call: client messages are decoded and fed to `pair.tx`
/// by a helper task; backend responses are encoded (appended to the
/// buffer `encode` is given) and written as capacity allows. Ends with the
/// backend's status, or OK when its stream finishes.
async fn pump<Req, Resp>(
    mut body: RecvStream,
    mut respond: SendResponse<Bytes>,
    pair: StreamPair<Req, Resp>,
    config: &ServerConfig,
    decode: fn(&[u8]) -> Result<Option<Req>, Status>,
    encode: impl Fn(Resp, &mut BytesMut),
) -> Code
where
    Req: Send + 'static,
    Resp: Send + 'static,
{
    let StreamPair { tx, rx, alive } = pair;
    let mut send = match respond.send_response(grpc_response(), false) {
        Ok(send) => send,
        Err(_) => return Code::Canceled,
    };
    // The inbound half: a failure to decode ends the call with its status;
    // the client half-closing just closes `tx`.
    let (fail_tx, fail_rx) = channel::bounded::<Option<Status>>(1);
    let max = config.max_recv_bytes;
    let inbound = runtime::spawn(async move {
        let mut decoder = Decoder::new(max);
        loop {
            match next_message(&mut body, &mut decoder).await {
                Ok(None) => return,
                Ok(Some(message)) => match decode(&message) {
                    Ok(Some(request)) => {
                        if tx.send(request).await.is_err() {
                            return;
                        }
                    }
                    Ok(None) => {}
                    Err(status) => {
                        let _ = fail_tx.send(Some(status)).await;
                        return;
                    }
                },
                Err(status) if status.code == Code::Canceled => {
                    // Reset by the client: nothing more can be sent.
                    let _ = fail_tx.send(None).await;
                    return;
                }
                Err(status) => {
                    let _ = fail_tx.send(Some(status)).await;
                    return;
                }
            }
        }
    });
    enum Next<R> {
        Response(Result<Result<R, Status>, channel::RecvError>),
        Failed(Option<Status>),
    }
    let mut inbound_done = false;
    // Responses are encoded into this buffer and sent as slices of it; once
    // h2 has written and dropped them, the buffer takes its memory back
    // (`BytesMut::reserve`), so a busy stream reuses one allocation.
    let mut out = BytesMut::new();
    let outcome: Option<Status> = loop {
        let next = if inbound_done {
            Next::Response(rx.recv().await)
        } else {
            future::or(async { Next::Response(rx.recv().await) }, async {
                match fail_rx.recv().await {
                    Ok(failure) => Next::Failed(failure),
                    // The inbound task ended cleanly (half-close).
                    Err(_) => Next::Failed(Some(Status::new(Code::Ok, ""))),
                }
            })
            .await
        };
        match next {
            Next::Response(Ok(Ok(response))) => {
                // Responses already waiting leave in the same DATA frames
                // (a watch fan-out delivers them in bursts).
                if out.capacity() < GATHER_BYTES / 4 {
                    out.reserve(GATHER_BYTES);
                }
                encode(response, &mut out);
                let end = gather(&mut out, &rx, &encode);
                if send_data(&mut send, out.split().freeze()).await.is_err() {
                    break None;
                }
                if let Some(status) = end {
                    break Some(status);
                }
            }
            Next::Response(Ok(Err(status))) => break Some(status),
            Next::Response(Err(_)) => break Some(Status::new(Code::Ok, "")),
            Next::Failed(Some(status)) if status.code == Code::Ok => inbound_done = true,
            Next::Failed(Some(status)) => break Some(status),
            Next::Failed(None) => break None,
        }
    };
    drop(rx);
    drop(alive);
    inbound.cancel().await;
    match outcome {
        Some(status) => {
            let _ = send.send_trailers(status_trailers(&status));
            status.code
        }
        None => Code::Canceled,
    }
}

/// What [`gather`] puts in one write at most (and what the send buffer
/// is sized for: below the allocator's mmap threshold, so a buffer that
/// cannot be taken back yet is a heap block, not a fresh mapping whose
/// pages fault in on every write).
const GATHER_BYTES: usize = 64 * 1024;

/// Appends to `out` the encodings of the responses already queued on `rx`,
/// while it holds less than [`GATHER_BYTES`]; returns how the call ends,
/// if the queue said so.
fn gather<R>(
    out: &mut BytesMut,
    rx: &channel::Receiver<Result<R, Status>>,
    encode: &impl Fn(R, &mut BytesMut),
) -> Option<Status> {
    while out.len() < GATHER_BYTES {
        match rx.try_recv() {
            Ok(Ok(next)) => encode(next, out),
            Ok(Err(status)) => return Some(status),
            Err(channel::TryRecvError::Empty) => return None,
            Err(channel::TryRecvError::Closed) => return Some(Status::new(Code::Ok, "")),
        }
    }
    None
}

/// Writes `data` as the peer grants send capacity.
async fn send_data(send: &mut SendStream<Bytes>, mut data: Bytes) -> Result<(), h2::Error> {
    while !data.is_empty() {
        send.reserve_capacity(data.len());
        let granted = match future::poll_fn(|cx| send.poll_capacity(cx)).await {
            Some(Ok(n)) => n,
            Some(Err(e)) => return Err(e),
            None => return Err(h2::Error::from(h2::Reason::CANCEL)),
        };
        if granted == 0 {
            continue;
        }
        let chunk = data.split_to(granted.min(data.len()));
        send.send_data(chunk, false)?;
    }
    Ok(())
}

/// Sends a unary response: headers, the message, OK trailers.
async fn send_unary(respond: &mut SendResponse<Bytes>, message: Bytes) -> Result<(), h2::Error> {
    let mut send = respond.send_response(grpc_response(), false)?;
    send_data(&mut send, message).await?;
    send.send_trailers(status_trailers(&Status::new(Code::Ok, "")))
}

fn grpc_response() -> Response<()> {
    let mut response = Response::new(());
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    response
}

fn status_trailers(status: &Status) -> HeaderMap {
    let mut trailers = HeaderMap::new();
    trailers.insert(
        "grpc-status",
        HeaderValue::from(u16::from(status.code_value())),
    );
    if !status.message.is_empty() {
        if let Ok(value) = HeaderValue::from_str(&encode_message(&status.message)) {
            trailers.insert("grpc-message", value);
        }
    }
    trailers
}

/// A trailers-only response: the status in the one HEADERS frame.
fn send_status(respond: &mut SendResponse<Bytes>, status: &Status) {
    let mut response = grpc_response();
    response.headers_mut().extend(status_trailers(status));
    let _ = respond.send_response(response, true);
}

/// A plain HTTP error for requests that are not gRPC at all.
fn send_http_error(respond: &mut SendResponse<Bytes>, code: StatusCode) {
    let mut response = Response::new(());
    *response.status_mut() = code;
    let _ = respond.send_response(response, true);
}

/// Parses a `grpc-timeout` value: up to 8 digits and a unit (H M S m u n).
pub fn parse_timeout(value: &[u8]) -> Option<Duration> {
    let (unit, digits) = value.split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(match unit {
        b'H' => Duration::from_secs(n * 3600),
        b'M' => Duration::from_secs(n * 60),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts() {
        assert_eq!(parse_timeout(b"5S"), Some(Duration::from_secs(5)));
        assert_eq!(parse_timeout(b"4999m"), Some(Duration::from_millis(4999)));
        assert_eq!(parse_timeout(b"1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_timeout(b"S"), None);
        assert_eq!(parse_timeout(b"123456789S"), None);
        assert_eq!(parse_timeout(b"12x"), None);
        assert_eq!(parse_timeout(b""), None);
    }
}
