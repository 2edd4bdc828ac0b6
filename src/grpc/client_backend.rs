//! The real [`Backend`]: the QUIC client SDK.
//!
//! Role: unary calls go straight to [`Client::call_with_token`]; each
//! streaming call opens one QUIC stream (a watch a batched one, see
//! `Client::open_watch_stream`) and runs two small pump tasks
//! between it and the channel pair the h2 server holds. Invariants: when the
//! server drops its request sender the QUIC send side is finished (a
//! half-close, as in gRPC); when the server lets go of the call
//! ([`StreamPair::alive`]) the pumps stop at once, even on an idle stream,
//! and the QUIC stream is dropped; every client error becomes a status
//! through [`Status::from_client`].

use super::backend::{Backend, KeepAliveStream, SnapshotStream, StreamPair, WatchStream};
use super::status::Status;
use crate::client::{Client, StreamReceiver, StreamSender};
use crate::runtime::{self, channel};
use crate::wire;
use futures_lite::future;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// Messages buffered between the h2 stream and the QUIC stream, each way.
const STREAM_BUFFER: usize = 64;

impl Backend for Client {
    async fn unary(
        &self,
        token: Option<String>,
        request: wire::Request,
    ) -> Result<wire::Response, Status> {
        self.call_with_token(token, request)
            .await
            .map_err(|e| Status::from_client(&e))
    }

    async fn watch(&self, token: Option<String>) -> Result<WatchStream, Status> {
        let (sender, receiver, batched) = self
            .open_watch_stream(token)
            .await
            .map_err(|e| Status::from_client(&e))?;
        if batched {
            return Ok(pair(sender, receiver, |batch| batch));
        }
        // A node from before batching: each response is a batch of one.
        Ok(pair(sender, receiver, |response| wire::watch::WatchBatch {
            response,
            more_ids: Vec::new(),
        }))
    }

    async fn lease_keep_alive(&self, token: Option<String>) -> Result<KeepAliveStream, Status> {
        let (sender, receiver) = self
            .open_stream(token, wire::Call::LeaseKeepAlive)
            .await
            .map_err(|e| Status::from_client(&e))?;
        Ok(pair(sender, receiver, |response| response))
    }

    async fn snapshot(&self, token: Option<String>) -> Result<SnapshotStream, Status> {
        let (mut sender, mut receiver) = self
            .open_stream(token, wire::Call::Snapshot)
            .await
            .map_err(|e| Status::from_client(&e))?;
        let _ = sender.finish().await;
        let (tx, rx) = channel::bounded(STREAM_BUFFER);
        runtime::spawn(async move {
            let _sender = sender;
            loop {
                let item = match receiver
                    .recv::<Result<wire::maintenance::SnapshotResponse, wire::Error>>()
                    .await
                {
                    Ok(Some(Ok(chunk))) => Ok(chunk),
                    Ok(Some(Err(e))) => Err(Status::from_wire(&e)),
                    Ok(None) => return,
                    Err(e) => Err(Status::from_client(&e)),
                };
                let last = item.is_err();
                if tx.send(item).await.is_err() || last {
                    return;
                }
            }
        });
        Ok(rx)
    }
}

/// Pumps an opened stream: requests from the server to the node, the
/// node's messages (`Wire`, made a `Resp` by `lift`) back.
fn pair<Req, Wire, Resp>(
    sender: StreamSender,
    receiver: StreamReceiver,
    lift: fn(Wire) -> Resp,
) -> StreamPair<Req, Resp>
where
    Req: Serialize + Send + Sync + 'static,
    Wire: DeserializeOwned + Send + 'static,
    Resp: Send + 'static,
{
    let (pair, requests, responses, gone) = StreamPair::channels(STREAM_BUFFER);
    runtime::spawn(async move {
        // Both directions run until the node finishes, the stream breaks,
        // or the server lets go of the call; then the QUIC stream is dropped
        // (finished and stopped), which ends the call on the node.
        let both = async {
            future::zip(
                pump_requests(sender, requests),
                pump_responses(receiver, responses, lift),
            )
            .await;
        };
        future::or(both, async {
            let _ = gone.recv().await;
        })
        .await;
    });
    pair
}

async fn pump_requests<Req: Serialize + Sync>(
    mut sender: StreamSender,
    requests: channel::Receiver<Req>,
) {
    while let Ok(request) = requests.recv().await {
        if sender.send(&request).await.is_err() {
            return;
        }
    }
    let _ = sender.finish().await;
}

async fn pump_responses<Wire: DeserializeOwned, Resp>(
    mut receiver: StreamReceiver,
    responses: channel::Sender<Result<Resp, Status>>,
    lift: fn(Wire) -> Resp,
) {
    loop {
        let item = match receiver.recv::<Wire>().await {
            Ok(Some(response)) => Ok(lift(response)),
            Ok(None) => return,
            Err(e) => Err(Status::from_client(&e)),
        };
        let last = item.is_err();
        if responses.send(item).await.is_err() || last {
            return;
        }
    }
}
