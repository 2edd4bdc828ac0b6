//! The QUIC client SDK, shaped like etcd's clientv3.
//!
//! A [`Client`] holds one lazily opened QUIC connection per endpoint and
//! sends each call on its own stream, round-robin over the endpoints; with
//! [`ConnectOptions::mux_streams`] its unary calls share that many
//! long-lived streams of the connection instead (`Call::Mux`, numbered and
//! answered in any order: `mux`), falling back to a stream per call with a
//! node that refuses them. A `unix://` endpoint (a node on the same
//! machine) is reached over Unix sockets instead, with the same frames:
//! unary calls share one connection per endpoint (`mux` too), and each
//! streaming call has a connection of its own. A call
//! fails over to the next endpoint only when it could not be sent (connect or
//! stream-open failure): once a request has left, retrying could apply a
//! write twice, so the error goes to the caller instead.
//!
//! Liveness: connections ping (QUIC keep-alive) and die after
//! `keep_alive_timeout` of silence, so calls waiting on a dead node fail
//! with [`ClientError::Closed`] in about that time instead of at their
//! deadline. An endpoint whose connection died or whose handshake failed
//! is *down*: calls skip it, or fail at once with [`ClientError::Connect`]
//! when no endpoint is left, while a background probe re-dials it and
//! hands the next call a ready connection once the node is back.
//!
//! [`Client::call`] and [`Client::open_stream`] speak raw `qed_wire` messages
//! (the gRPC shim uses them); `kv` adds etcd-style typed methods and a txn
//! builder; `watch` ([`Client::watch`], resumed across reconnects without
//! gaps or duplicates) and `lease` (grant, revoke, keepalive in the
//! background) follow clientv3 too, and `concurrency` builds sessions,
//! locks and elections on them as clientv3/concurrency does.

mod auth;
pub mod concurrency;
mod kv;
mod lease;
mod mux;
mod watch;
mod watch_stream;

use kv::unexpected;
pub use kv::{
    prefix_range_end, Compare, CompareOp, DeleteOptions, GetOptions, PutOptions, SortOrder,
    SortTarget, Txn, TxnOp,
};
pub use lease::KeepAlive;
pub use qed_wire::kv::{Event, EventType, KeyValue};
pub use qed_wire::watch::WatchResponse;
pub use watch::{WatchOptions, Watcher};

use crate::runtime::{self, Mutex, UnixStream};
use crate::transport::stream::{self, RecvHalf, SendHalf};
use crate::transport::url::{ClientUrl, Endpoint};
use crate::transport::{self, tls::TlsFiles, TransportError};
use qed_wire::frame::{MAX_CLIENT_FRAME, MAX_SERVER_FRAME};
use qed_wire::maintenance::SnapshotResponse;
use qed_wire::{Call, ClientRequest, Reply, Request, Response};
use serde::{de::DeserializeOwned, Serialize};
use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How to reach and authenticate to the cluster.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// CA that the nodes' certificates chain to (a node's `certs/ca.crt`
    /// when it generated its own).
    pub ca_file: Option<PathBuf>,
    /// Client certificate, for nodes that require one.
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    /// Deadline for each call, connecting included. etcdctl's default
    /// `--command-timeout` is 5 s; on lossy links a little more is kinder.
    pub request_timeout: Duration,
    /// Deadline for one QUIC handshake (etcd's `--dial-timeout`, 2 s). A
    /// node that does not answer in time is *down*: calls skip it (or fail
    /// at once when it is the only endpoint) while a background probe
    /// re-dials it, so one dead endpoint does not cost every call that
    /// round-robin sends its way.
    pub dial_timeout: Duration,
    /// How often the client pings each connection when it has nothing
    /// else to send (QUIC keep-alive), so a dead node is noticed even
    /// while a call waits for its reply. etcd's `DialKeepAliveTime`.
    pub keep_alive_interval: Duration,
    /// A connection that has heard nothing from its node for this long is
    /// dead (QUIC's idle timeout, the shorter of both sides' wins): calls
    /// in flight on it fail with [`ClientError::Closed`], new ones go to
    /// another endpoint or fail at once with [`ClientError::Connect`]
    /// while the endpoint is re-dialled in the background. A call issued
    /// just after its node died returns within about this plus one
    /// keep-alive interval. etcd's `DialKeepAliveTimeout`; raise it on a
    /// lossy client link (every ping and its ack lost for this long).
    pub keep_alive_timeout: Duration,
    /// Auth token sent with every call, from `Authenticate`.
    pub token: Option<String>,
    /// With auth enabled on the cluster: the client authenticates as this
    /// user on connect, and again when its token expires or is
    /// invalidated (one retry of the call). The password only ever travels
    /// inside TLS to a verified node (QUIC is always encrypted, and the
    /// client always checks the node's certificate against `ca_file`).
    pub user: Option<String>,
    pub password: Option<String>,
    /// The largest request frame this client sends; a larger request
    /// fails with `etcdserver: request is too large` without being sent.
    /// etcd's clientv3 `MaxCallSendMsgSize` (2 MiB: a request at etcd's
    /// default `--max-request-bytes` plus its envelope); raise both
    /// together.
    pub max_call_send_bytes: usize,
    /// Unary calls to a QUIC endpoint share this many long-lived streams
    /// of its connection (`Call::Mux`: numbered calls, answered in any
    /// order), spread round-robin, instead of opening a stream each. It
    /// saves the node and the client the work of opening and closing a
    /// stream per call (about a fifth of a small put's CPU on both sides),
    /// but a lost packet stalls every call on its stream until it is
    /// resent (head-of-line blocking), which a stream per call confines to
    /// that call. 0 (the default): a stream per call, the better choice on
    /// a lossy link; `qed-grpc` uses 4 (`--mux-streams`). A node that does
    /// not know `Call::Mux` gets a stream per call. Watches, keepalives and
    /// snapshots always have streams of their own.
    pub mux_streams: usize,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions {
            ca_file: None,
            cert_file: None,
            key_file: None,
            request_timeout: Duration::from_secs(10),
            dial_timeout: Duration::from_secs(2),
            keep_alive_interval: Duration::from_millis(250),
            keep_alive_timeout: Duration::from_millis(1500),
            token: None,
            user: None,
            password: None,
            max_call_send_bytes: MAX_CLIENT_FRAME,
            mux_streams: 0,
        }
    }
}

/// Why a call failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientError {
    /// The node answered with an error (etcd's error, text included).
    Server(qed_wire::Error),
    /// No endpoint could be reached; the last one's reason.
    Connect { endpoint: String, reason: String },
    /// The call did not finish within the request timeout.
    Timeout,
    /// The node sent something this client does not understand.
    Protocol(String),
    /// The connection or stream broke after the request was sent; the call
    /// may or may not have taken effect.
    Closed,
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::Server(e) => write!(f, "{e}"),
            ClientError::Connect { endpoint, reason } => {
                write!(f, "cannot connect to {endpoint}: {reason}")
            }
            ClientError::Timeout => f.write_str("request timed out"),
            ClientError::Protocol(why) => write!(f, "protocol error: {why}"),
            ClientError::Closed => f.write_str("connection closed before the reply arrived"),
        }
    }
}

impl std::error::Error for ClientError {}

impl From<qed_wire::Error> for ClientError {
    fn from(e: qed_wire::Error) -> Self {
        ClientError::Server(e)
    }
}

fn after_send(e: TransportError) -> ClientError {
    match e {
        TransportError::Frame(f) => ClientError::Protocol(f.to_string()),
        _ => ClientError::Closed,
    }
}

#[derive(Default)]
struct Slot {
    conn: Option<quinn::Connection>,
    /// Set while the endpoint is known to be down (a handshake failed, or
    /// its connection went silent or was closed by the node). Calls then
    /// skip it, or fail at once when no other endpoint is left, and a
    /// probe task re-dials it in the background. Invariant: `down` is set
    /// exactly while a probe task for this slot runs.
    down: bool,
}

/// A connection to a qed cluster. Cheap to clone; clones share connections.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    endpoints: Vec<ClientUrl>,
    /// Present when some endpoint is reached over QUIC.
    quic: Option<quinn::Endpoint>,
    /// One slot per endpoint; the async lock makes concurrent first calls
    /// share one handshake instead of racing to open many.
    connections: Vec<Mutex<Slot>>,
    /// Per endpoint, the multiplexed Unix connection unary calls share
    /// (always empty for QUIC endpoints); the async lock makes concurrent
    /// first calls share one connection.
    unix: Vec<Mutex<Option<mux::Mux>>>,
    /// Per endpoint, the multiplexed streams unary calls share on its QUIC
    /// connection (with `mux_streams` > 0); the async lock makes
    /// concurrent first calls share the streams they open.
    quic_mux: Vec<Mutex<QuicMuxes>>,
    next: AtomicUsize,
    options: ConnectOptions,
    /// The token calls carry: `options.token`, or the one `Authenticate`
    /// gave for `options.user`.
    token: std::sync::RwLock<Option<String>>,
    watch_streams: watch_stream::WatchStreams,
    /// Never sent on: dropped with the client, which ends the tasks that
    /// watch its connections (they hold the connections open otherwise).
    _dropped: runtime::channel::Sender<()>,
    on_drop: runtime::channel::Receiver<()>,
}

impl Client {
    /// Connects to the first reachable of `endpoints` (etcd URLs or
    /// `host:port`); others are connected on first use.
    pub async fn connect(
        endpoints: &[String],
        options: ConnectOptions,
    ) -> Result<Client, ClientError> {
        let config_error = |e: TransportError| ClientError::Connect {
            endpoint: endpoints.join(","),
            reason: e.to_string(),
        };
        let parsed = endpoints
            .iter()
            .map(|e| transport::url::parse_client(e))
            .collect::<Result<Vec<_>, _>>()
            .map_err(config_error)?;
        if parsed.is_empty() {
            return Err(ClientError::Connect {
                endpoint: String::new(),
                reason: "no endpoints given".into(),
            });
        }
        let first_quic = parsed.iter().find_map(|url| match url {
            ClientUrl::Quic(endpoint) => Some(endpoint.addr),
            ClientUrl::Unix(_) => None,
        });
        // TLS only for QUIC: a Unix socket stays on this machine.
        let quic = match first_quic {
            Some(addr) => {
                let files = TlsFiles {
                    cert: options.cert_file.clone(),
                    key: options.key_file.clone(),
                    ca: options.ca_file.clone(),
                };
                let mut config = transport::tls::client_config(&files, qed_wire::CLIENT_ALPN)
                    .map_err(config_error)?;
                config.transport_config(transport::endpoint::client_transport_config(
                    options.keep_alive_interval,
                    options.keep_alive_timeout,
                ));
                Some(transport::endpoint::client(addr, config).map_err(config_error)?)
            }
            None => None,
        };
        let (dropped, on_drop) = runtime::channel::bounded(1);
        let client = Client {
            inner: Arc::new(Inner {
                connections: parsed.iter().map(|_| Mutex::new(Slot::default())).collect(),
                unix: parsed.iter().map(|_| Mutex::new(None)).collect(),
                quic_mux: parsed
                    .iter()
                    .map(|_| Mutex::new(QuicMuxes::default()))
                    .collect(),
                endpoints: parsed,
                quic,
                next: AtomicUsize::new(0),
                token: std::sync::RwLock::new(options.token.clone()),
                options,
                watch_streams: Default::default(),
                _dropped: dropped,
                on_drop,
            }),
        };
        let timeout = client.inner.options.request_timeout;
        runtime::timeout(timeout, client.any_connection())
            .await
            .map_err(|_| ClientError::Timeout)??;
        client.authenticate().await?;
        Ok(client)
    }

    /// The token this client sends with its calls.
    pub fn token(&self) -> Option<String> {
        self.inner
            .token
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Authenticates as `ConnectOptions::user` (nothing to do without
    /// one) and keeps the token for later calls.
    pub async fn authenticate(&self) -> Result<(), ClientError> {
        let (Some(user), password) = (&self.inner.options.user, &self.inner.options.password)
        else {
            return Ok(());
        };
        let request = Request::Authenticate(qed_wire::auth::AuthenticateRequest {
            name: user.clone(),
            password: password.clone().unwrap_or_default(),
        });
        let token = match self.call_with_token(None, request).await {
            Ok(Response::Authenticate(r)) => Some(r.token),
            // Auth is off: calls go without a token (as clientv3 does).
            Err(ClientError::Server(qed_wire::Error::AuthNotEnabled)) => None,
            Ok(other) => {
                return Err(ClientError::Protocol(format!(
                    "Authenticate answered with {other:?}"
                )))
            }
            Err(e) => return Err(e),
        };
        *self.inner.token.write().unwrap_or_else(|p| p.into_inner()) = token;
        Ok(())
    }

    fn watch_streams(&self) -> &watch_stream::WatchStreams {
        &self.inner.watch_streams
    }

    /// The per-call deadline from [`ConnectOptions`].
    pub fn request_timeout(&self) -> Duration {
        self.inner.options.request_timeout
    }

    /// One unary call with the client's own token. A client with a user
    /// whose token expired or went stale authenticates again and retries
    /// once (etcd's clientv3 does the same).
    ///
    /// `etcdserver: no leader` proves the call was never proposed (the node
    /// held it while it waited for a leader), so with several endpoints it
    /// is tried on each of the others before the error is returned.
    pub async fn call(&self, request: Request) -> Result<Response, ClientError> {
        let mut first = self.call_with_token(self.token(), request.clone()).await;
        for _ in 1..self.inner.endpoints.len() {
            if first != Err(ClientError::Server(qed_wire::Error::NoLeader)) {
                break;
            }
            first = self.call_with_token(self.token(), request.clone()).await;
        }
        match first {
            Err(ClientError::Server(
                qed_wire::Error::InvalidAuthToken | qed_wire::Error::AuthOldRevision,
            )) if self.inner.options.user.is_some() => {
                self.authenticate().await?;
                self.call_with_token(self.token(), request).await
            }
            other => other,
        }
    }

    /// One unary call; `token` replaces the client's token for this call.
    pub async fn call_with_token(
        &self,
        token: Option<String>,
        request: Request,
    ) -> Result<Response, ClientError> {
        let timeout = self.inner.options.request_timeout;
        let envelope = ClientRequest {
            token,
            call: Call::Unary(request),
        };
        let frame = qed_wire::frame::encode(&envelope, self.inner.options.max_call_send_bytes)
            .map_err(|_| ClientError::Server(qed_wire::Error::RequestTooLarge))?;
        drop(envelope);
        // Boxed: the spawned tasks that make calls (the gRPC shim's) stay
        // small, rather than carrying every state of a handshake.
        let call = Box::pin(async {
            let max = self.inner.options.max_call_send_bytes;
            let too_large = |_| ClientError::Server(qed_wire::Error::RequestTooLarge);
            let mut opened = self.open_bi(true).await?;
            let mut retried = false;
            let (mut send, mut recv) = loop {
                match opened {
                    Opened::Own { send, recv, .. } => break (send, recv),
                    Opened::Mux(mux, idx) => {
                        match mux.call(&frame, max).await.map_err(too_large)? {
                            Ok(reply) => return reply.map_err(ClientError::Server),
                            // It died before this call was queued: a new mux
                            // may carry it (nothing was sent), once.
                            Err(mux::MuxError::NotSent) if !retried => {
                                retried = true;
                                opened = self.reopen_unary(idx).await?;
                            }
                            Err(mux::MuxError::NotSent) => {
                                return Err(self.connect_error(idx, "connection closed"))
                            }
                            Err(mux::MuxError::Busy) => {
                                return Err(ClientError::Server(qed_wire::Error::TooManyRequests))
                            }
                            Err(mux::MuxError::Closed) => return Err(ClientError::Closed),
                        }
                    }
                }
            };
            stream::WriteBytes::write_bytes(&mut send, &frame)
                .await
                .map_err(after_send)?;
            send.finish();
            let reply: Reply = stream::read(&mut recv, MAX_SERVER_FRAME)
                .await
                .map_err(after_send)?
                .ok_or(ClientError::Closed)?;
            reply.map_err(ClientError::Server)
        });
        runtime::timeout(timeout, call)
            .await
            .map_err(|_| ClientError::Timeout)?
    }

    /// Opens a streaming call (watch, lease keep-alive, snapshot). The node
    /// first accepts or refuses the call; a refusal is returned here.
    pub async fn open_stream(
        &self,
        token: Option<String>,
        call: Call,
    ) -> Result<(StreamSender, StreamReceiver), ClientError> {
        let timeout = self.inner.options.request_timeout;
        let max_send = self.inner.options.max_call_send_bytes;
        let open = async {
            let Opened::Own {
                mut send, mut recv, ..
            } = self.open_bi(false).await?
            else {
                return Err(ClientError::Closed);
            };
            let request = ClientRequest { token, call };
            let written = match send {
                // A Unix connection's frames carry a call number (unused
                // on a streaming call's own connection).
                SendHalf::Unix(_) => {
                    let request = qed_wire::UnixRequest { id: 0, request };
                    stream::write(&mut send, &request, max_send).await
                }
                SendHalf::Quic(_) => stream::write(&mut send, &request, max_send).await,
            };
            written.map_err(after_send)?;
            let accepted: qed_wire::StreamAccept = stream::read(&mut recv, MAX_SERVER_FRAME)
                .await
                .map_err(after_send)?
                .ok_or(ClientError::Closed)?;
            accepted?;
            Ok((
                StreamSender {
                    send,
                    max: max_send,
                },
                StreamReceiver {
                    frames: stream::FrameReader::new(recv),
                },
            ))
        };
        runtime::timeout(timeout, open)
            .await
            .map_err(|_| ClientError::Timeout)?
    }

    /// Opens a watch stream, batched (`Call::WatchBatched`: the node sends
    /// `WatchBatch`es) when the node knows it, else a plain one (a node
    /// from before batching refuses the call as malformed). The flag says
    /// which it is.
    pub async fn open_watch_stream(
        &self,
        token: Option<String>,
    ) -> Result<(StreamSender, StreamReceiver, bool), ClientError> {
        match self.open_stream(token.clone(), Call::WatchBatched).await {
            Ok((send, recv)) => Ok((send, recv, true)),
            Err(ClientError::Server(qed_wire::Error::InvalidArgument(why)))
                if why.starts_with("malformed request") =>
            {
                let (send, recv) = self.open_stream(token, Call::Watch).await?;
                Ok((send, recv, false))
            }
            Err(e) => Err(e),
        }
    }

    /// Streams a snapshot of the contacted node's state into `out` (the file
    /// `qed snapshot save` writes), calling `progress(received, total)` after
    /// each chunk. Returns the bytes written.
    pub async fn snapshot(
        &self,
        out: &mut impl std::io::Write,
        mut progress: impl FnMut(u64, u64),
    ) -> Result<u64, ClientError> {
        let (_send, mut recv) = self.open_stream(self.token(), Call::Snapshot).await?;
        let mut received = 0u64;
        loop {
            let chunk: Result<SnapshotResponse, qed_wire::Error> =
                recv.recv().await?.ok_or(ClientError::Closed)?;
            let chunk = chunk?;
            out.write_all(&chunk.blob)
                .map_err(|e| ClientError::Protocol(format!("cannot write the snapshot: {e}")))?;
            received += chunk.blob.len() as u64;
            progress(received, received + chunk.remaining_bytes);
            if chunk.remaining_bytes == 0 {
                return Ok(received);
            }
        }
    }

    /// Opens a stream on the next endpoint in turn, failing over to the
    /// others when one cannot be reached. Down endpoints are looked at only
    /// when no other is left (and then fail at once). For a `unary` call,
    /// a Unix endpoint gives its shared connection; for a streaming call, a
    /// connection of its own.
    async fn open_bi(&self, unary: bool) -> Result<Opened, ClientError> {
        let n = self.inner.endpoints.len();
        let start = self.inner.next.fetch_add(1, Ordering::Relaxed);
        let mut last = None;
        for pass in [Pass::Healthy, Pass::Down] {
            for i in 0..n {
                let idx = (start + i) % n;
                if let Some(ClientUrl::Unix(path)) = self.inner.endpoints.get(idx) {
                    if pass == Pass::Down {
                        continue;
                    }
                    let opened = if unary {
                        self.unix_mux(idx).await.map(|mux| Opened::Mux(mux, idx))
                    } else {
                        self.connect_unix(idx, path).await
                    };
                    match opened {
                        Ok(opened) => return Ok(opened),
                        Err(e) => last = Some(e),
                    }
                    continue;
                }
                match self.connection(idx, pass).await {
                    Ok(Some(conn)) => match self.open_on(idx, &conn, unary).await {
                        Ok(opened) => return Ok(opened),
                        Err(e) => {
                            self.forget(idx, &conn).await;
                            last = Some(e);
                        }
                    },
                    Ok(None) => {}
                    Err(e) => last = Some(e),
                }
            }
        }
        Err(last.unwrap_or(ClientError::Closed))
    }

    /// A unary call's transport on endpoint `idx` again, for a call whose
    /// mux died before it was queued (nothing was sent).
    async fn reopen_unary(&self, idx: usize) -> Result<Opened, ClientError> {
        if let Some(ClientUrl::Unix(_)) = self.inner.endpoints.get(idx) {
            return Ok(Opened::Mux(self.unix_mux(idx).await?, idx));
        }
        let conn = self
            .connection(idx, Pass::Down)
            .await?
            .ok_or_else(|| self.connect_error(idx, "unreachable; reconnecting"))?;
        let opened = self.open_on(idx, &conn, true).await;
        if opened.is_err() {
            self.forget(idx, &conn).await;
        }
        opened
    }

    /// A call's transport on `conn`, endpoint `idx`'s QUIC connection: one
    /// of its multiplexed streams for a `unary` call when the client uses
    /// them and the node takes them, else a stream of its own.
    async fn open_on(
        &self,
        idx: usize,
        conn: &quinn::Connection,
        unary: bool,
    ) -> Result<Opened, ClientError> {
        if unary && self.inner.options.mux_streams > 0 {
            if let Some(mux) = self.quic_mux(idx, conn).await? {
                return Ok(Opened::Mux(mux, idx));
            }
        }
        let (send, recv) = conn
            .open_bi()
            .await
            .map_err(|e| self.connect_error(idx, e))?;
        Ok(Opened::Own {
            send: SendHalf::Quic(send),
            recv: RecvHalf::quic(recv),
        })
    }

    /// One of `conn`'s multiplexed streams, round-robin, opening one while
    /// fewer than `mux_streams` live; `None` when the node refused
    /// `Call::Mux` on this connection (a node from before it: the call
    /// gets a stream of its own).
    async fn quic_mux(
        &self,
        idx: usize,
        conn: &quinn::Connection,
    ) -> Result<Option<mux::Mux>, ClientError> {
        let Some(set) = self.inner.quic_mux.get(idx) else {
            return Err(ClientError::Closed);
        };
        let mut set = set.lock().await;
        if set.conn != Some(conn.stable_id()) {
            // A new connection: the old one's streams die with it.
            for old in set.streams.drain(..) {
                old.retire();
            }
            *set = QuicMuxes {
                conn: Some(conn.stable_id()),
                ..QuicMuxes::default()
            };
        }
        if set.refused {
            return Ok(None);
        }
        let now = Instant::now();
        set.streams.retain(|m| {
            let usable = m.usable(now);
            if !usable {
                m.retire();
            }
            usable
        });
        if set.streams.len() < self.inner.options.mux_streams {
            match self.open_mux_stream(idx, conn).await {
                Ok(mux) => {
                    set.streams.push(mux.clone());
                    return Ok(Some(mux));
                }
                Err(ClientError::Server(qed_wire::Error::InvalidArgument(why)))
                    if why.starts_with("malformed request") =>
                {
                    set.refused = true;
                    return Ok(None);
                }
                // Those already open still serve.
                Err(e) if set.streams.is_empty() => return Err(e),
                Err(e) => log::debug!("mux stream not opened: {e}"),
            }
        }
        set.next = set.next.wrapping_add(1);
        let pick = set.next % set.streams.len().max(1);
        Ok(set.streams.get(pick).cloned())
    }

    /// Opens a QUIC stream for multiplexed unary calls: `Call::Mux`, then
    /// the node's acceptance (a node that does not know the call refuses
    /// it as malformed).
    async fn open_mux_stream(
        &self,
        idx: usize,
        conn: &quinn::Connection,
    ) -> Result<mux::Mux, ClientError> {
        let (send, recv) = conn
            .open_bi()
            .await
            .map_err(|e| self.connect_error(idx, e))?;
        let (mut send, mut recv) = (SendHalf::Quic(send), RecvHalf::quic(recv));
        let open = ClientRequest {
            token: None,
            call: Call::Mux,
        };
        stream::write(&mut send, &open, MAX_CLIENT_FRAME)
            .await
            .map_err(after_send)?;
        let accepted: qed_wire::StreamAccept = stream::read(&mut recv, MAX_SERVER_FRAME)
            .await
            .map_err(after_send)?
            .ok_or(ClientError::Closed)?;
        accepted?;
        Ok(mux::Mux::start(send, recv, self.inner.on_drop.clone()))
    }

    /// A Unix connection of its own (a streaming call's) to endpoint `idx`.
    async fn connect_unix(
        &self,
        idx: usize,
        path: &std::path::Path,
    ) -> Result<Opened, ClientError> {
        let conn = UnixStream::connect(path)
            .await
            .map_err(|e| self.connect_error(idx, e))?;
        Ok(Opened::Own {
            send: SendHalf::Unix(conn.clone()),
            recv: RecvHalf::unix(conn),
        })
    }

    /// Endpoint `idx`'s shared Unix connection: the live one, or a new one
    /// in place of one that died or idled too long.
    async fn unix_mux(&self, idx: usize) -> Result<mux::Mux, ClientError> {
        let (Some(slot), Some(ClientUrl::Unix(path))) =
            (self.inner.unix.get(idx), self.inner.endpoints.get(idx))
        else {
            return Err(ClientError::Closed);
        };
        let mut slot = slot.lock().await;
        if let Some(mux) = slot.as_ref() {
            if mux.usable(Instant::now()) {
                return Ok(mux.clone());
            }
            mux.retire();
            *slot = None;
        }
        let mux = mux::Mux::connect_unix(path, self.inner.on_drop.clone())
            .await
            .map_err(|e| self.connect_error(idx, e))?;
        *slot = Some(mux.clone());
        Ok(mux)
    }

    async fn any_connection(&self) -> Result<(), ClientError> {
        let mut last = None;
        for idx in 0..self.inner.endpoints.len() {
            if let Some(ClientUrl::Unix(_)) = self.inner.endpoints.get(idx) {
                match self.unix_mux(idx).await {
                    Ok(_) => return Ok(()),
                    Err(e) => last = Some(e),
                }
                continue;
            }
            match self.connection(idx, Pass::Down).await {
                Ok(Some(_)) => return Ok(()),
                Ok(None) => {}
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or(ClientError::Closed))
    }

    /// The live connection to endpoint `idx`, opening one if needed; `None`
    /// when the endpoint is down and `pass` says to skip those. A down
    /// endpoint is never dialled here (its probe is dialling it): the call
    /// fails at once instead of waiting out a handshake.
    async fn connection(
        &self,
        idx: usize,
        pass: Pass,
    ) -> Result<Option<quinn::Connection>, ClientError> {
        let (Some(slot), Some(ClientUrl::Quic(endpoint))) = (
            self.inner.connections.get(idx),
            self.inner.endpoints.get(idx),
        ) else {
            return Err(ClientError::Closed);
        };
        let mut slot = slot.lock().await;
        if let Some(conn) = slot.conn.take() {
            match conn.close_reason() {
                None => {
                    slot.conn = Some(conn.clone());
                    return Ok(Some(conn));
                }
                // Its watcher has not run yet: the same verdict, here.
                Some(reason) => self.note_lost(&mut slot, idx, &reason),
            }
        }
        if slot.down {
            return match pass {
                Pass::Healthy => Ok(None),
                Pass::Down => Err(self.connect_error(idx, "unreachable; reconnecting")),
            };
        }
        match self.dial(idx, endpoint).await {
            Ok(conn) => {
                self.adopt(&mut slot, idx, conn.clone());
                Ok(Some(conn))
            }
            Err(e) => {
                self.mark_down(&mut slot, idx);
                Err(e)
            }
        }
    }

    /// One handshake with endpoint `idx`, bounded by the dial timeout.
    async fn dial(
        &self,
        idx: usize,
        endpoint: &Endpoint,
    ) -> Result<quinn::Connection, ClientError> {
        let dial = async {
            let Some(quic) = self.inner.quic.as_ref() else {
                return Err(ClientError::Closed);
            };
            let connecting = quic
                .connect(endpoint.addr, &endpoint.host)
                .map_err(|e| self.connect_error(idx, e))?;
            connecting.await.map_err(|e| self.connect_error(idx, e))
        };
        runtime::timeout(self.inner.options.dial_timeout, dial)
            .await
            .unwrap_or_else(|_| Err(self.connect_error(idx, "handshake timed out")))
    }

    /// Makes `conn` the endpoint's connection and watches it: the moment
    /// it closes, the slot learns why (see [`Client::note_lost`]).
    fn adopt(&self, slot: &mut Slot, idx: usize, conn: quinn::Connection) {
        slot.conn = Some(conn.clone());
        slot.down = false;
        let client = Arc::downgrade(&self.inner);
        let on_drop = self.inner.on_drop.clone();
        runtime::spawn(async move {
            let closed = async { Some(conn.closed().await) };
            let dropped = async {
                let _ = on_drop.recv().await;
                None
            };
            let Some(reason) = futures_lite::future::or(closed, dropped).await else {
                return;
            };
            let Some(inner) = client.upgrade() else {
                return;
            };
            let client = Client { inner };
            if let Some(slot) = client.inner.connections.get(idx) {
                let mut slot = slot.lock().await;
                if slot
                    .conn
                    .as_ref()
                    .is_some_and(|c| c.stable_id() == conn.stable_id())
                {
                    slot.conn = None;
                    client.note_lost(&mut slot, idx, &reason);
                }
            }
        });
    }

    /// A connection of endpoint `idx` closed for `reason`. A stateless
    /// reset means the node is back after a restart (the next call dials
    /// it at once); silence past the keep-alive timeout, or a close by the
    /// node, means it is gone: the endpoint is down until a probe reaches
    /// it again.
    fn note_lost(&self, slot: &mut Slot, idx: usize, reason: &quinn::ConnectionError) {
        use quinn::ConnectionError as E;
        match reason {
            E::Reset | E::LocallyClosed => {}
            E::TimedOut
            | E::ConnectionClosed(_)
            | E::ApplicationClosed(_)
            | E::TransportError(_)
            | E::VersionMismatch
            | E::CidsExhausted => {
                log::debug!(
                    "connection to {} lost ({reason}); reconnecting",
                    self.endpoint_name(idx)
                );
                self.mark_down(slot, idx);
            }
        }
    }

    /// Marks endpoint `idx` down and starts its probe (unless one runs).
    fn mark_down(&self, slot: &mut Slot, idx: usize) {
        if slot.down {
            return;
        }
        slot.down = true;
        runtime::spawn(probe(Arc::downgrade(&self.inner), idx));
    }
    async fn forget(&self, idx: usize, broken: &quinn::Connection) {
        if let Some(slot) = self.inner.connections.get(idx) {
            let mut slot = slot.lock().await;
            if slot
                .conn
                .as_ref()
                .is_some_and(|c| c.stable_id() == broken.stable_id())
            {
                slot.conn = None;
                if let Some(reason) = broken.close_reason() {
                    self.note_lost(&mut slot, idx, &reason);
                }
            }
        }
    }

    fn connect_error(&self, idx: usize, e: impl fmt::Display) -> ClientError {
        ClientError::Connect {
            endpoint: self.endpoint_name(idx),
            reason: e.to_string(),
        }
    }

    fn endpoint_name(&self, idx: usize) -> String {
        match self.inner.endpoints.get(idx) {
            Some(ClientUrl::Quic(e)) => e.addr.to_string(),
            Some(ClientUrl::Unix(path)) => format!("unix://{}", path.display()),
            None => String::new(),
        }
    }
}

/// Pause between a probe's handshakes with a down endpoint.
const PROBE_PAUSE: Duration = Duration::from_millis(100);
/// Handshakes a probe tries before it gives up; the next call that picks
/// the endpoint then dials it itself (and starts a new probe if that
/// fails). With a 2 s dial timeout, about ten minutes.
const PROBE_ATTEMPTS: u32 = 300;

/// Re-dials a down endpoint until it answers, the client is dropped, or
/// [`PROBE_ATTEMPTS`] handshakes failed. A handshake sent while the node
/// is down is retransmitted within about a second (QUIC's first PTO), so a
/// node that comes back is reconnected about that fast, and the next call
/// finds the connection ready.
async fn probe(client: std::sync::Weak<Inner>, idx: usize) {
    for _ in 0..PROBE_ATTEMPTS {
        let Some(inner) = client.upgrade() else {
            return;
        };
        let client = Client { inner };
        let Some(ClientUrl::Quic(endpoint)) = client.inner.endpoints.get(idx) else {
            return;
        };
        if let Ok(conn) = client.dial(idx, endpoint).await {
            if let Some(slot) = client.inner.connections.get(idx) {
                let mut slot = slot.lock().await;
                client.adopt(&mut slot, idx, conn);
            }
            return;
        }
        drop(client);
        runtime::sleep(PROBE_PAUSE).await;
    }
    if let Some(inner) = client.upgrade() {
        if let Some(slot) = inner.connections.get(idx) {
            slot.lock().await.down = false;
        }
    }
}

/// A call's transport, as [`Client::open_bi`] hands it out.
enum Opened {
    /// A stream of its own: a QUIC stream, or a Unix connection of its own.
    Own { send: SendHalf, recv: RecvHalf },
    /// One of endpoint `.1`'s multiplexed transports (its Unix connection,
    /// or a `Call::Mux` stream), for a unary call.
    Mux(mux::Mux, usize),
}

/// An endpoint's multiplexed QUIC streams.
#[derive(Default)]
struct QuicMuxes {
    /// The connection (`stable_id`) they are streams of.
    conn: Option<usize>,
    streams: Vec<mux::Mux>,
    /// Round-robin position.
    next: usize,
    /// The node refused `Call::Mux` on this connection.
    refused: bool,
}

/// Whether a failover pass may use endpoints that recently failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pass {
    Healthy,
    Down,
}

/// The sending half of a streaming call.
pub struct StreamSender {
    send: SendHalf,
    /// [`ConnectOptions::max_call_send_bytes`].
    max: usize,
}

impl StreamSender {
    pub async fn send<T: Serialize>(&mut self, msg: &T) -> Result<(), ClientError> {
        stream::write(&mut self.send, msg, self.max)
            .await
            .map_err(after_send)
    }

    /// Tells the node no more messages follow.
    pub async fn finish(&mut self) -> Result<(), ClientError> {
        self.send.finish();
        Ok(())
    }
}

/// The receiving half of a streaming call.
pub struct StreamReceiver {
    frames: stream::FrameReader,
}

impl StreamReceiver {
    /// The next message; `None` once the node finished the stream.
    pub async fn recv<T: DeserializeOwned>(&mut self) -> Result<Option<T>, ClientError> {
        self.frames.read(MAX_SERVER_FRAME).await.map_err(after_send)
    }
}
