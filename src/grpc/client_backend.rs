//! The real [`Backend`]: the QUIC client SDK.
//!
//! Role: unary calls go straight to [`Client::call_with_token`]; each
//! streaming call opens one QUIC stream and runs two small pump tasks
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
        open_pair(self, token, wire::Call::Watch).await
    }

    async fn lease_keep_alive(&self, token: Option<String>) -> Result<KeepAliveStream, Status> {
        open_pair(self, token, wire::Call::LeaseKeepAlive).await
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

async fn open_pair<Req, Resp>(
    client: &Client,
    token: Option<String>,
    call: wire::Call,
) -> Result<StreamPair<Req, Resp>, Status>
where
    Req: Serialize + Send + Sync + 'static,
    Resp: DeserializeOwned + Send + 'static,
{
    let (sender, receiver) = client
        .open_stream(token, call)
        .await
        .map_err(|e| Status::from_client(&e))?;
    let (pair, requests, responses, gone) = StreamPair::channels(STREAM_BUFFER);
    runtime::spawn(async move {
        // Both directions run until the node finishes, the stream breaks,
        // or the server lets go of the call; then the QUIC stream is dropped
        // (finished and stopped), which ends the call on the node.
        let both = async {
            future::zip(
                pump_requests(sender, requests),
                pump_responses(receiver, responses),
            )
            .await;
        };
        future::or(both, async {
            let _ = gone.recv().await;
        })
        .await;
    });
    Ok(pair)
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

async fn pump_responses<Resp: DeserializeOwned>(
    mut receiver: StreamReceiver,
    responses: channel::Sender<Result<Resp, Status>>,
) {
    loop {
        let item = match receiver.recv::<Resp>().await {
            Ok(Some(response)) => Ok(response),
            Ok(None) => return,
            Err(e) => Err(Status::from_client(&e)),
        };
        let last = item.is_err();
        if responses.send(item).await.is_err() || last {
            return;
        }
    }
}
