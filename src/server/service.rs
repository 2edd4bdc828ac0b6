//! The client listeners: QUIC connections in, one task per call stream;
//! Unix-socket connections in (`unix://` client URLs), one task per
//! connection carrying its calls one after another.
//!
//! Each stream carries one call (see `qed_wire::call`); a Unix connection
//! carries the same frames, a unary call after another or one streaming
//! call (`transport::stream`). Whatever arrives is
//! bounded and checked before it reaches the node: an oversized frame is
//! refused with `RequestTooLarge` and its stream stopped, a frame that does
//! not decode gets `InvalidArgument`, and either way only that stream ends;
//! the connection and every other client carry on.
//!
//! Streaming calls: a watch stream has a reader task (requests into the
//! hub) and a writer (the hub's queued responses out, woken through the
//! stream's channel); either side ending drops the stream's watches. A
//! keepalive stream answers each request in turn from the leader's lessor.
//!
//! A Unix-socket client is a client like any other: no certificate, so
//! with auth on it proves who it is with a token; who may open the socket
//! at all is the socket file's mode (0660, owner and group).
//!
//! Memory: request bytes are charged to the connection's [`budget`] as they
//! arrive and held until the call is answered; a call over budget gets
//! `too many requests`. A request must arrive within
//! [`REQUEST_READ_TIMEOUT`] and a reply be taken within
//! [`REPLY_WRITE_TIMEOUT`], so a stalled client cannot hold either forever.

use super::auth::{cert_common_name, Credentials};
use super::budget::{self, Charge, ConnBudget, NodeBudget};
use super::node::Node;
use crate::runtime;
use crate::runtime::{UnixListener, UnixStream};
use crate::transport::stream::{self, RecvHalf, SendHalf};
use crate::transport::TransportError;
use crate::watch::{self, BatchRef};
use qed_wire::frame::{FrameError, MAX_CLIENT_FRAME, MAX_SERVER_FRAME};
use qed_wire::kv::RangeRequest;
use qed_wire::lease::LeaseKeepAliveRequest;
use qed_wire::maintenance::SnapshotResponse;
use qed_wire::watch::WatchRequest;
use qed_wire::{Call, ClientRequest, Error, Reply, ResponseHeader, StreamAccept};
use quinn::VarInt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// QUIC application error code on a stream the node stops reading because
/// the client broke the framing rules.
const FRAME_VIOLATION: VarInt = VarInt::from_u32(1);
/// QUIC application error code on a stream the node gave up on: its
/// request did not arrive, or its reply was not taken, in time.
const TIMED_OUT: VarInt = VarInt::from_u32(2);

/// How long a call's request frame may take to arrive once its stream is
/// open (a slow link moves 1.5 MiB well within it; a stalled sender is cut
/// off and its bytes released).
pub const REQUEST_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a reply may wait for the client to take it.
pub const REPLY_WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// Accepts connections until the endpoint is closed.
pub async fn serve(endpoint: quinn::Endpoint, node: Arc<Node>) {
    let pool = NodeBudget::new(budget::NODE_POOL);
    let conn_cap = conn_cap(&node);
    while let Some(incoming) = endpoint.accept().await {
        let node = node.clone();
        let budget = ConnBudget::with_limits(pool.clone(), budget::CONN_SHARE, conn_cap);
        runtime::spawn(async move {
            match incoming.await {
                Ok(conn) => serve_connection(conn, node, budget).await,
                Err(e) => log::debug!("client handshake failed: {e}"),
            }
        });
    }
}

/// What one client connection may hold at once: two of the largest
/// requests.
fn conn_cap(node: &Node) -> u64 {
    budget::CONN_CAP.max(2 * node.client_limits().frame_cap() as u64)
}

/// The user a verified client certificate names (`--client-cert-auth`:
/// a connection carries a certificate only when the node asked for one and
/// verified it against its trusted CA).
fn certificate_user(conn: &quinn::Connection) -> Option<String> {
    let chain = conn
        .peer_identity()?
        .downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
        .ok()?;
    cert_common_name(chain.first()?.as_ref())
}

async fn serve_connection(conn: quinn::Connection, node: Arc<Node>, budget: Arc<ConnBudget>) {
    let peer = conn.remote_address();
    let cert_user: Option<Arc<str>> = certificate_user(&conn).map(Arc::from);
    loop {
        match conn.accept_bi().await {
            Ok((send, recv)) => {
                runtime::spawn(serve_stream(
                    SendHalf::Quic(send),
                    RecvHalf::Quic(recv),
                    node.clone(),
                    cert_user.clone(),
                    budget.clone(),
                ));
            }
            Err(e) => {
                log::debug!("client {peer} gone: {e}");
                return;
            }
        }
    }
}

/// Binds a Unix socket for a `unix://` client URL: a stale socket file
/// (nobody answers on it) is replaced, a live one is refused.
pub fn bind_unix(path: &Path) -> std::io::Result<UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                "another process serves this socket",
            ));
        }
        std::fs::remove_file(path)?;
    }
    let listener = std::os::unix::net::UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))?;
    Ok(UnixListener::from(listener))
}

/// Accepts Unix-socket connections until the process ends; each is a
/// client connection of its own (its own budget share).
pub async fn serve_unix(listener: UnixListener, path: PathBuf, node: Arc<Node>) {
    let pool = NodeBudget::new(budget::NODE_POOL);
    let conn_cap = conn_cap(&node);
    loop {
        match listener.accept().await {
            Ok((conn, _)) => {
                let budget = ConnBudget::with_limits(pool.clone(), budget::CONN_SHARE, conn_cap);
                runtime::spawn(serve_unix_connection(conn, node.clone(), budget));
            }
            Err(e) => {
                // Out of descriptors and the like: the listener stays.
                log::warn!("accept on {}: {e}", path.display());
                runtime::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Serves the calls of one Unix connection in turn, until the client
/// closes it or a call leaves it unusable (a streaming call, a bad frame).
async fn serve_unix_connection(conn: UnixStream, node: Arc<Node>, budget: Arc<ConnBudget>) {
    let mut halves = (SendHalf::Unix(conn.clone()), RecvHalf::unix(conn));
    while let Some(next) = serve_call(halves.0, halves.1, node.clone(), None, budget.clone()).await
    {
        halves = next;
    }
}

/// Reads one frame, charging its bytes to `charge` as they arrive.
async fn read_charged(
    recv: &mut RecvHalf,
    charge: &mut Charge,
    frame_cap: usize,
) -> Result<Option<stream::RawFrame>, TransportError> {
    let read = stream::read_raw_charged(recv, frame_cap, |n| charge.add(n as u64));
    runtime::timeout(REQUEST_READ_TIMEOUT, read)
        .await
        .map_err(|_| TransportError::Stream("the request did not arrive in time".into()))?
}

/// Reads and decodes one frame of a streaming call (its bytes are held
/// only until decoded).
async fn read_request<T: serde::de::DeserializeOwned>(
    recv: &mut RecvHalf,
    budget: &Arc<ConnBudget>,
) -> Result<Option<T>, TransportError> {
    let mut charge = budget.charge();
    let read = stream::read_raw_charged(recv, MAX_CLIENT_FRAME, |n| charge.add(n as u64)).await;
    match read? {
        Some(raw) => raw.decode().map(Some),
        None => Ok(None),
    }
}

/// One call on its own QUIC stream.
async fn serve_stream(
    send: SendHalf,
    recv: RecvHalf,
    node: Arc<Node>,
    cert_user: Option<Arc<str>>,
    budget: Arc<ConnBudget>,
) {
    if let Some((mut send, _)) = serve_call(send, recv, node, cert_user, budget).await {
        send.finish();
    }
}

/// Serves one call. A unary call answered in full hands the halves back,
/// ready for another call (a Unix connection's next one); anything else
/// ends with them finished, stopped or dropped.
async fn serve_call(
    mut send: SendHalf,
    mut recv: RecvHalf,
    node: Arc<Node>,
    cert_user: Option<Arc<str>>,
    budget: Arc<ConnBudget>,
) -> Option<(SendHalf, RecvHalf)> {
    // Held until the call is answered: what it read, and what it became.
    let mut charge = budget.charge();
    let refuse = |mut send: SendHalf, mut recv: RecvHalf, error: Error| async move {
        recv.stop(FRAME_VIOLATION);
        reply(&mut send, Err(error)).await;
        send.finish();
        None
    };
    let limits = node.client_limits();
    let raw = match read_charged(&mut recv, &mut charge, limits.frame_cap()).await {
        Ok(Some(raw)) => raw,
        Ok(None) => return None,
        Err(TransportError::Frame(FrameError::TooLarge { .. })) => {
            return refuse(send, recv, Error::RequestTooLarge).await;
        }
        Err(TransportError::Busy) => return refuse(send, recv, Error::TooManyRequests).await,
        Err(e) => {
            recv.stop(TIMED_OUT);
            log::debug!("client stream failed: {e}");
            return None;
        }
    };
    let request: ClientRequest = match raw.decode() {
        Ok(r) => r,
        Err(e) => {
            let error = Error::InvalidArgument(format!("malformed request: {e}"));
            return refuse(send, recv, error).await;
        }
    };
    let creds = Credentials {
        token: request.token,
        cert_user: cert_user.map(|u| u.to_string()),
    };
    match request.call {
        Call::Unary(req) => {
            let too_large = raw.0.len() > limits.max_request_bytes;
            drop(raw);
            let answer = if too_large {
                Err(Error::RequestTooLarge)
            } else {
                node.handle(req, &creds).await
            };
            drop(charge);
            reply(&mut send, answer).await.then_some((send, recv))
        }
        Call::Snapshot => {
            drop(charge);
            send_snapshot(&mut send, &node, &creds).await;
            None
        }
        Call::Watch => {
            drop(charge);
            serve_watch(send, recv, node, creds, budget, false).await;
            None
        }
        Call::WatchBatched => {
            drop(charge);
            serve_watch(send, recv, node, creds, budget, true).await;
            None
        }
        Call::LeaseKeepAlive => {
            drop(charge);
            serve_keep_alive(send, recv, node, budget).await;
            None
        }
    }
}

/// A watch stream: requests feed the hub; the hub's responses go out in
/// queue order, stamped with this member's header fields. A `batched`
/// stream sends them as `WatchBatch`es (`watch::batch`): a response a
/// thousand watches share is encoded and sent once.
async fn serve_watch(
    mut send: SendHalf,
    mut recv: RecvHalf,
    node: Arc<Node>,
    creds: Credentials,
    budget: Arc<ConnBudget>,
    batched: bool,
) {
    let accepted: StreamAccept = Ok(());
    if stream::write(&mut send, &accepted, MAX_SERVER_FRAME)
        .await
        .is_err()
    {
        return;
    }
    let watchers = node.watchers().clone();
    let slot = watchers.open();
    let stream_id = slot.id;
    let reader_watchers = watchers.clone();
    let reader_node = node.clone();
    runtime::spawn(async move {
        loop {
            match read_request::<WatchRequest>(&mut recv, &budget).await {
                Ok(Some(WatchRequest::Create(create))) => {
                    match watch_permitted(&reader_node, &creds, &create) {
                        Ok(()) => reader_watchers.request(stream_id, WatchRequest::Create(create)),
                        Err(e) => reader_watchers.refuse(stream_id, watch_cancel_reason(&e)),
                    }
                }
                Ok(Some(req)) => reader_watchers.request(stream_id, req),
                Ok(None) => break,
                Err(e) => {
                    log::debug!("watch stream {stream_id} read failed: {e}");
                    recv.stop(FRAME_VIOLATION);
                    break;
                }
            }
        }
        // Dropping the wake-up sender ends the writer below.
        reader_watchers.close(stream_id);
    });
    while slot.wake.recv().await.is_ok() {
        let mut batch = watchers.take(stream_id);
        for resp in &mut batch {
            node.stamp(resp.header_mut());
        }
        let written = if batched {
            let groups = watch::batch(&batch);
            let messages: Vec<BatchRef<'_>> = groups
                .iter()
                .filter_map(|b| {
                    Some(BatchRef {
                        response: batch.get(b.first)?,
                        more_ids: &b.more,
                    })
                })
                .collect();
            stream::write_all_of(&mut send, &messages, MAX_SERVER_FRAME).await
        } else {
            stream::write_all_of(&mut send, &batch, MAX_SERVER_FRAME).await
        };
        if let Err(e) = written {
            log::debug!("watch stream {stream_id} write failed: {e}");
            watchers.close(stream_id);
            return;
        }
    }
    send.finish();
}

/// etcd's `isWatchPermitted`: a watch needs read access to what it watches
/// (an empty key is the smallest key, as the hub takes it).
fn watch_permitted(
    node: &Node,
    creds: &Credentials,
    create: &qed_wire::watch::WatchCreateRequest,
) -> Result<(), Error> {
    let info = node.caller(creds)?;
    let key = if create.key.is_empty() {
        vec![0]
    } else {
        create.key.clone()
    };
    let range = qed_wire::Request::Range(RangeRequest {
        key,
        range_end: create.range_end.clone(),
        ..Default::default()
    });
    node.check(&info, &range)
}

/// etcd's cancel reason for a refused watch: the gRPC error's own text
/// (`rpc error: code = ... desc = ...`), as its v3rpc layer writes it.
fn watch_cancel_reason(e: &Error) -> String {
    let code = match e {
        Error::InvalidAuthToken => "Unauthenticated",
        Error::AuthOldRevision | Error::UserEmpty => "InvalidArgument",
        _ => {
            return format!(
                "rpc error: code = PermissionDenied desc = {}",
                Error::PermissionDenied
            )
        }
    };
    format!("rpc error: code = {code} desc = {e}")
}

/// A keepalive stream: one response per request, from the leader.
async fn serve_keep_alive(
    mut send: SendHalf,
    mut recv: RecvHalf,
    node: Arc<Node>,
    budget: Arc<ConnBudget>,
) {
    let accepted: StreamAccept = Ok(());
    if stream::write(&mut send, &accepted, MAX_SERVER_FRAME)
        .await
        .is_err()
    {
        return;
    }
    loop {
        let req = match read_request::<LeaseKeepAliveRequest>(&mut recv, &budget).await {
            Ok(Some(req)) => req,
            Ok(None) => break,
            Err(e) => {
                log::debug!("keepalive stream read failed: {e}");
                recv.stop(FRAME_VIOLATION);
                break;
            }
        };
        match node.lease_keep_alive(req.id).await {
            Ok(resp) => {
                if stream::write(&mut send, &resp, MAX_SERVER_FRAME)
                    .await
                    .is_err()
                {
                    return;
                }
            }
            // Not the leader (or stopped): end the stream so the client
            // reconnects, as etcd's keepalive stream errors out.
            Err(e) => {
                log::debug!("keepalive refused: {e}");
                break;
            }
        }
    }
    send.finish();
}

/// Bytes per snapshot chunk (etcd sends 32 KiB).
const SNAPSHOT_CHUNK: usize = 64 * 1024;

/// Streams the node's state as `Result<SnapshotResponse, Error>` frames; the
/// last has `remaining_bytes == 0`.
async fn send_snapshot(send: &mut SendHalf, node: &Node, creds: &Credentials) {
    // etcd's authMaintenanceServer: only root may download the database.
    let accepted: StreamAccept = node.caller(creds).and_then(|info| node.check_admin(&info));
    let refused = accepted.is_err();
    if stream::write(send, &accepted, MAX_SERVER_FRAME)
        .await
        .is_err()
        || refused
    {
        send.finish();
        return;
    }
    let bytes = match node.snapshot_file().await {
        Ok(b) => b,
        Err(e) => return send_last(send, &Err::<SnapshotResponse, _>(e)).await,
    };
    let header = ResponseHeader {
        cluster_id: node.cluster_id(),
        member_id: node.identity().member_id,
        ..Default::default()
    };
    let mut remaining = bytes.len();
    for chunk in bytes.chunks(SNAPSHOT_CHUNK) {
        remaining -= chunk.len();
        let frame: Result<SnapshotResponse, Error> = Ok(SnapshotResponse {
            header,
            remaining_bytes: remaining as u64,
            blob: chunk.to_vec(),
        });
        if let Err(e) = stream::write(send, &frame, MAX_SERVER_FRAME).await {
            return log::debug!("snapshot stream broken: {e}");
        }
    }
    send.finish();
}

/// Sends the reply to a unary call (not finishing the stream); a reply
/// too large to frame becomes an error the client can read rather than a
/// dropped stream. A client that does not take it within
/// [`REPLY_WRITE_TIMEOUT`] gets its stream reset, which frees the reply.
/// True when the reply went out whole.
async fn reply(send: &mut SendHalf, answer: Reply) -> bool {
    let frame = match qed_wire::frame::encode(&answer, MAX_SERVER_FRAME) {
        Ok(frame) => frame,
        Err(e) => {
            let answer: Reply = Err(Error::Internal(format!("response cannot be sent: {e}")));
            match qed_wire::frame::encode(&answer, MAX_SERVER_FRAME) {
                Ok(frame) => frame,
                Err(_) => return false,
            }
        }
    };
    drop(answer);
    match runtime::timeout(
        REPLY_WRITE_TIMEOUT,
        stream::WriteBytes::write_bytes(send, &frame),
    )
    .await
    {
        Ok(Ok(())) => true,
        Ok(Err(e)) => {
            log::debug!("reply not delivered: {e}");
            false
        }
        Err(_) => {
            log::debug!("reply not taken in time; stream reset");
            send.reset(TIMED_OUT);
            false
        }
    }
}

async fn send_last<T: serde::Serialize>(send: &mut SendHalf, msg: &T) {
    if let Err(e) = stream::write(send, msg, MAX_SERVER_FRAME).await {
        log::debug!("reply not delivered: {e}");
    }
    send.finish();
}
