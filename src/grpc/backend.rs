//! What the shim forwards calls to.
//!
//! Role: the h2 server speaks only in wire types through [`Backend`]; the
//! QUIC client SDK is the real implementation, and tests plug in a stub to
//! exercise the server without a cluster. Streaming calls are channel pairs
//! so that the server's flow-controlled HTTP/2 stream and the backend's
//! stream run as independent pumps: closing [`StreamPair::tx`] half-closes
//! the call, and [`StreamPair::rx`] ending (or yielding an error) ends it.
//!
//! Invariant: a backend never reports success for a call it did not make;
//! an engine the node lacks comes back as `Unimplemented`.

use super::status::Status;
use crate::runtime::channel::{Receiver, Sender};
use crate::wire;
use std::future::Future;

/// One streaming call in flight: requests in, responses (or a final error) out.
pub struct StreamPair<Req, Resp> {
    /// Dropping it half-closes the call (the client sent END_STREAM).
    pub tx: Sender<Req>,
    pub rx: Receiver<Result<Resp, Status>>,
    /// Held by the server for as long as it serves the call; its channel
    /// closes when the call is over (finished, failed or reset by the
    /// client), which tells the backend to drop its stream even while
    /// nothing is flowing (an idle watch).
    pub alive: Sender<()>,
}

impl<Req, Resp> StreamPair<Req, Resp> {
    /// A pair of channels for a backend, plus the receiver that errors out
    /// once the server lets go of the call (see [`StreamPair::alive`]).
    #[allow(clippy::type_complexity)]
    pub fn channels(
        buffer: usize,
    ) -> (
        StreamPair<Req, Resp>,
        Receiver<Req>,
        Sender<Result<Resp, Status>>,
        Receiver<()>,
    ) {
        let (tx, requests) = crate::runtime::channel::bounded(buffer);
        let (responses, rx) = crate::runtime::channel::bounded(buffer);
        let (alive, gone) = crate::runtime::channel::bounded(1);
        (StreamPair { tx, rx, alive }, requests, responses, gone)
    }
}

/// A watch stream's responses come as the node batches them (a response
/// for every watch it is identical for); the server encodes each batch
/// once for all its watches.
pub type WatchStream = StreamPair<wire::watch::WatchRequest, wire::watch::WatchBatch>;
pub type KeepAliveStream =
    StreamPair<wire::lease::LeaseKeepAliveRequest, wire::lease::LeaseKeepAliveResponse>;
pub type SnapshotStream = Receiver<Result<wire::maintenance::SnapshotResponse, Status>>;

/// A qed cluster, as the gRPC server sees it. `token` is the caller's auth
/// token from the gRPC metadata, if any.
pub trait Backend: Clone + Send + Sync + 'static {
    fn unary(
        &self,
        token: Option<String>,
        request: wire::Request,
    ) -> impl Future<Output = Result<wire::Response, Status>> + Send;

    fn watch(
        &self,
        token: Option<String>,
    ) -> impl Future<Output = Result<WatchStream, Status>> + Send;

    fn lease_keep_alive(
        &self,
        token: Option<String>,
    ) -> impl Future<Output = Result<KeepAliveStream, Status>> + Send;

    fn snapshot(
        &self,
        token: Option<String>,
    ) -> impl Future<Output = Result<SnapshotStream, Status>> + Send;
}
