//! The client listeners: QUIC connections in, one task per call stream;
//! Unix-socket connections in (`unix://` client URLs), each either one
//! streaming call's or multiplexed: a reader task, a task per call, a
//! writer task sending replies as they finish ([`serve_mux`]). A QUIC
//! stream opened with `Call::Mux` is multiplexed the same way.
//!
//! Each stream carries one call (see `qed_wire::call`), or numbered unary
//! calls (a `Call::Mux` stream); a Unix connection carries the same
//! frames, numbered (`transport::stream`). Whatever
//! arrives is bounded and checked before it reaches the node: an oversized
//! frame is refused with `RequestTooLarge` (on a multiplexed connection
//! read past and answered under its number), a frame that does not decode
//! gets `InvalidArgument`, and either way only that call ends; the
//! connection and every other client carry on.
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
use crate::watch::{self, BatchRef, ForWatch};
use qed_wire::frame::{FrameError, MAX_CLIENT_FRAME, MAX_SERVER_FRAME};
use qed_wire::kv::RangeRequest;
use qed_wire::lease::LeaseKeepAliveRequest;
use qed_wire::maintenance::SnapshotResponse;
use qed_wire::watch::WatchRequest;
use qed_wire::{
    Call, ClientRequest, Error, Reply, ResponseHeader, StreamAccept, UnixReply, UnixRequest,
};
use quinn::VarInt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
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
                    RecvHalf::quic(recv),
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

/// Serves one Unix connection. Its first frame decides what it carries:
/// one streaming call (the connection is that call's, as a QUIC stream
/// is), or unary calls multiplexed ([`serve_mux`]).
async fn serve_unix_connection(conn: UnixStream, node: Arc<Node>, budget: Arc<ConnBudget>) {
    let send = SendHalf::Unix(conn.clone());
    let mut recv = RecvHalf::unix(conn);
    let cap = node.client_limits().frame_cap();
    let first = match runtime::timeout(
        REQUEST_READ_TIMEOUT,
        read_mux_frame(&mut recv, &budget, cap),
    )
    .await
    {
        Ok(Ok(Some(frame))) => frame,
        Ok(Ok(None)) => return,
        Ok(Err(e)) => return log::debug!("unix client failed: {e}"),
        Err(_) => return log::debug!("unix client sent nothing in time"),
    };
    if let MuxFrame::Whole(raw, _) = &first {
        if let Ok(UnixRequest { request, .. }) = raw.decode::<UnixRequest>() {
            if !matches!(request.call, Call::Unary(_)) {
                let creds = Credentials {
                    token: request.token,
                    cert_user: None,
                };
                return serve_streaming(send, recv, node, creds, budget, request.call).await;
            }
        }
    }
    serve_mux(Some(first), send, recv, node, budget, None).await
}

/// Calls one multiplexed Unix connection or QUIC stream may have in flight (read and not
/// yet answered), as a QUIC connection may have streams; past it the node
/// reads no more from the connection until replies have gone out.
const MAX_MUX_CALLS: usize = crate::transport::endpoint::MAX_STREAMS as usize;

/// Replies gathered into one write on a multiplexed connection at most.
const MUX_WRITE_BATCH: usize = 256 * 1024;

/// Serves unary calls on a multiplexed Unix connection or `Call::Mux`
/// QUIC stream, `first` being a frame already read. This task reads frames (all that one read brings,
/// out of the connection's buffer) and starts a task per call; a writer
/// task sends replies as they come, everything waiting in one write. The
/// connection ends when the client shuts its side (after the replies owed),
/// when a frame breaks the framing, when it idles [`REQUEST_READ_TIMEOUT`]
/// with nothing in flight, or when a reply is not taken within
/// [`REPLY_WRITE_TIMEOUT`]. A call that is too large, over budget or does
/// not decode is answered with its error under its number; only a frame
/// whose number cannot be read ends the connection.
async fn serve_mux(
    first: Option<MuxFrame>,
    send: SendHalf,
    mut recv: RecvHalf,
    node: Arc<Node>,
    budget: Arc<ConnBudget>,
    cert_user: Option<String>,
) {
    let in_flight = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (room_tx, room) = runtime::channel::bounded::<()>(1);
    let (replies, queued) = runtime::channel::unbounded::<Vec<u8>>();
    runtime::spawn(write_replies(send, queued, in_flight.clone(), room_tx));
    let cap = node.client_limits().frame_cap();
    let mut next = first;
    loop {
        let frame = match next.take() {
            Some(frame) => frame,
            None => {
                while in_flight.load(Ordering::Acquire) >= MAX_MUX_CALLS {
                    if room.recv().await.is_err() {
                        return;
                    }
                }
                match next_mux_frame(&mut recv, &budget, cap, &in_flight).await {
                    Ok(Some(frame)) => frame,
                    Ok(None) => return,
                    Err(e) => {
                        recv.stop(FRAME_VIOLATION);
                        return log::debug!("multiplexed client failed: {e}");
                    }
                }
            }
        };
        let limit = node.client_limits().max_request_bytes;
        let Some((id, answer)) = mux_call(frame, limit, &cert_user) else {
            recv.stop(FRAME_VIOLATION);
            return log::debug!("multiplexed client sent a frame without a call number");
        };
        in_flight.fetch_add(1, Ordering::AcqRel);
        let replies = replies.clone();
        let node = node.clone();
        runtime::spawn(async move {
            let answer = match answer {
                MuxAnswer::Now(error) => Err(error),
                MuxAnswer::Handle(request, creds, charge) => {
                    let answer = node.handle(request, &creds).await;
                    drop(charge);
                    answer
                }
            };
            let _ = replies.send(unix_reply_frame(id, answer)).await;
        });
    }
}

/// What a multiplexed frame asks for: an error answered at once, or a
/// call for the node (with the bytes it holds until answered).
enum MuxAnswer {
    Now(Error),
    Handle(qed_wire::Request, Credentials, Charge),
}

/// A frame's call number and what to do with it; `None` when not even
/// the number can be read.
fn mux_call(
    frame: MuxFrame,
    max_request_bytes: usize,
    cert_user: &Option<String>,
) -> Option<(u64, MuxAnswer)> {
    match frame {
        MuxFrame::Dropped { head, error } => Some((frame_id(&head)?, MuxAnswer::Now(error))),
        MuxFrame::Whole(raw, charge) => match raw.decode::<UnixRequest>() {
            Ok(UnixRequest { id, request }) => {
                let answer = match request.call {
                    Call::Unary(_) if raw.0.len() > max_request_bytes => {
                        MuxAnswer::Now(Error::RequestTooLarge)
                    }
                    Call::Unary(req) => {
                        let creds = Credentials {
                            token: request.token,
                            cert_user: cert_user.clone(),
                        };
                        MuxAnswer::Handle(req, creds, charge)
                    }
                    _ => MuxAnswer::Now(Error::InvalidArgument(
                        "a streaming call needs a stream of its own".into(),
                    )),
                };
                Some((id, answer))
            }
            Err(e) => Some((
                frame_id(&raw.0)?,
                MuxAnswer::Now(Error::InvalidArgument(format!("malformed request: {e}"))),
            )),
        },
    }
}

/// The call number a frame body starts with.
fn frame_id(body: &[u8]) -> Option<u64> {
    postcard::take_from_bytes::<u64>(body)
        .ok()
        .map(|(id, _)| id)
}

/// Waits for the next frame of a multiplexed connection and reads it:
/// `None` when the client shut its side, or when the connection idled
/// [`REQUEST_READ_TIMEOUT`] with no call in flight (a connection with
/// calls in flight may stay quiet while it waits for them). Once a frame
/// starts, it must arrive whole within [`REQUEST_READ_TIMEOUT`].
async fn next_mux_frame(
    recv: &mut RecvHalf,
    budget: &Arc<ConnBudget>,
    cap: usize,
    in_flight: &std::sync::atomic::AtomicUsize,
) -> Result<Option<MuxFrame>, TransportError> {
    loop {
        match runtime::timeout(REQUEST_READ_TIMEOUT, recv.readable()).await {
            Ok(Ok(true)) => break,
            Ok(Ok(false)) => return Ok(None),
            Ok(Err(e)) => return Err(e),
            Err(_) if in_flight.load(Ordering::Acquire) == 0 => return Ok(None),
            Err(_) => {}
        }
    }
    runtime::timeout(REQUEST_READ_TIMEOUT, read_mux_frame(recv, budget, cap))
        .await
        .map_err(|_| TransportError::Stream("the request did not arrive in time".into()))?
}

/// One frame as read off a multiplexed connection or stream.
enum MuxFrame {
    /// Read whole, its bytes charged to the connection until answered.
    Whole(stream::RawFrame, Charge),
    /// Read past and not kept (over the size limit, or over budget): its
    /// first bytes, which hold the call number, and the call's error.
    Dropped { head: Vec<u8>, error: Error },
}

/// Bytes of a dropped frame kept: a call number's varint fits.
const FRAME_HEAD: usize = 16;

/// Reads one frame, charging its body to `budget` as it arrives (never
/// from the declared length). A frame over `cap`, or one the budget cannot
/// hold, is read to its end without being kept, so the framing holds and
/// its call can be answered. `None` when the client shut its side between
/// frames.
async fn read_mux_frame(
    recv: &mut RecvHalf,
    budget: &Arc<ConnBudget>,
    cap: usize,
) -> Result<Option<MuxFrame>, TransportError> {
    use stream::ReadBytes;
    let mut prefix = [0u8; qed_wire::frame::PREFIX_LEN];
    let mut got = 0;
    while got < prefix.len() {
        match recv.read_some(&mut prefix[got..]).await? {
            0 if got == 0 => return Ok(None),
            0 => return Err(TransportError::Stream("stream ended inside a frame".into())),
            n => got += n,
        }
    }
    let len = u32::from_be_bytes(prefix) as usize;
    let mut charge = budget.charge();
    let mut error = (len > cap).then_some(Error::RequestTooLarge);
    let mut body: Vec<u8> = Vec::with_capacity(len.min(MUX_FIRST_ALLOCATION));
    let mut scratch = [0u8; 4096];
    let mut left = len;
    while left > 0 {
        let n = if error.is_none() {
            if body.capacity() == body.len() {
                body.reserve_exact(body.len().max(MUX_FIRST_ALLOCATION).min(left));
            }
            let filled = body.len();
            let room = (body.capacity() - filled).min(left);
            body.resize(filled + room, 0);
            let n = recv.read_some(&mut body[filled..]).await?;
            body.truncate(filled + n);
            if n > 0 && !charge.add(n as u64) {
                error = Some(Error::TooManyRequests);
                body.truncate(FRAME_HEAD);
                body.shrink_to_fit();
                drop(std::mem::replace(&mut charge, budget.charge()));
            }
            n
        } else {
            let want = left.min(scratch.len());
            let n = recv.read_some(&mut scratch[..want]).await?;
            let keep = FRAME_HEAD.saturating_sub(body.len()).min(n);
            body.extend_from_slice(&scratch[..keep]);
            n
        };
        if n == 0 {
            return Err(TransportError::Stream("stream ended inside a frame".into()));
        }
        left -= n;
    }
    Ok(Some(match error {
        None => MuxFrame::Whole(stream::RawFrame(body), charge),
        Some(error) => MuxFrame::Dropped { head: body, error },
    }))
}

/// Bytes of a body allocated before any of it arrived.
const MUX_FIRST_ALLOCATION: usize = 16 * 1024;

/// A multiplexed connection's writer: replies as they come, all that wait
/// in one write; each written (or dropped) reply frees a call's place.
async fn write_replies(
    mut send: SendHalf,
    queued: runtime::channel::Receiver<Vec<u8>>,
    in_flight: Arc<std::sync::atomic::AtomicUsize>,
    room: runtime::channel::Sender<()>,
) {
    while let Ok(mut batch) = queued.recv().await {
        let mut replies = 1;
        while batch.len() < MUX_WRITE_BATCH {
            match queued.try_recv() {
                Ok(more) => {
                    batch.extend_from_slice(&more);
                    replies += 1;
                }
                Err(_) => break,
            }
        }
        let written = runtime::timeout(
            REPLY_WRITE_TIMEOUT,
            stream::WriteBytes::write_bytes(&mut send, &batch),
        )
        .await;
        in_flight.fetch_sub(replies, Ordering::AcqRel);
        let _ = room.try_send(());
        match written {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return log::debug!("replies not delivered: {e}"),
            Err(_) => {
                log::debug!("replies not taken in time; connection closed");
                return send.reset(TIMED_OUT);
            }
        }
    }
    send.finish();
}

/// The frame of a [`UnixReply`]; a reply too large to frame becomes an
/// error the client can read.
fn unix_reply_frame(id: u64, reply: Reply) -> Vec<u8> {
    let frame = qed_wire::frame::encode(&UnixReply { id, reply }, MAX_SERVER_FRAME);
    frame
        .or_else(|e| {
            let reply: Reply = Err(Error::Internal(format!("response cannot be sent: {e}")));
            qed_wire::frame::encode(&UnixReply { id, reply }, MAX_SERVER_FRAME)
        })
        .unwrap_or_default()
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
    mut send: SendHalf,
    mut recv: RecvHalf,
    node: Arc<Node>,
    cert_user: Option<Arc<str>>,
    budget: Arc<ConnBudget>,
) {
    // Held until the call is answered: what it read, and what it became.
    let mut charge = budget.charge();
    let refuse = |mut send: SendHalf, mut recv: RecvHalf, error: Error| async move {
        recv.stop(FRAME_VIOLATION);
        reply(&mut send, Err(error)).await;
        send.finish();
    };
    let limits = node.client_limits();
    let raw = match read_charged(&mut recv, &mut charge, limits.frame_cap()).await {
        Ok(Some(raw)) => raw,
        Ok(None) => return,
        Err(TransportError::Frame(FrameError::TooLarge { .. })) => {
            return refuse(send, recv, Error::RequestTooLarge).await;
        }
        Err(TransportError::Busy) => return refuse(send, recv, Error::TooManyRequests).await,
        Err(e) => {
            recv.stop(TIMED_OUT);
            return log::debug!("client stream failed: {e}");
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
            if reply(&mut send, answer).await {
                send.finish();
            }
        }
        call => {
            drop(charge);
            serve_streaming(send, recv, node, creds, budget, call).await;
        }
    }
}

/// Serves a streaming call (`call` is not unary) to its end.
async fn serve_streaming(
    mut send: SendHalf,
    recv: RecvHalf,
    node: Arc<Node>,
    creds: Credentials,
    budget: Arc<ConnBudget>,
    call: Call,
) {
    match call {
        Call::Snapshot => send_snapshot(&mut send, &node, &creds).await,
        Call::Watch => serve_watch(send, recv, node, creds, budget, false).await,
        Call::WatchBatched => serve_watch(send, recv, node, creds, budget, true).await,
        Call::LeaseKeepAlive => serve_keep_alive(send, recv, node, budget).await,
        Call::Mux => {
            let accepted: StreamAccept = Ok(());
            if stream::write(&mut send, &accepted, MAX_SERVER_FRAME)
                .await
                .is_err()
            {
                return;
            }
            serve_mux(None, send, recv, node, budget, creds.cert_user).await
        }
        Call::Unary(_) => {
            let answer: StreamAccept = Err(Error::InvalidArgument("not a streaming call".into()));
            send_last(&mut send, &answer).await;
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
            // One response per watch, each response's watches in order.
            let each: Vec<ForWatch<'_>> = batch
                .iter()
                .flat_map(|r| r.watch_ids().map(|id| r.for_watch(id)))
                .collect();
            stream::write_all_of(&mut send, &each, MAX_SERVER_FRAME).await
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
