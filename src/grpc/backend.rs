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
    pub tx: Sender<Req>,
    pub rx: Receiver<Result<Resp, Status>>,
}

pub type WatchStream = StreamPair<wire::watch::WatchRequest, wire::watch::WatchResponse>;
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
