//! Leases, shaped like clientv3's `Lease`: grant, revoke, time-to-live,
//! list, and [`Client::lease_keep_alive`], which keeps a lease alive from a
//! background task until the returned [`KeepAlive`] is dropped.
//!
//! The keepalive task refreshes at a third of the TTL (as clientv3 does),
//! re-opening its stream after a broken connection or a leader change; it
//! stops for good when the node answers TTL 0 (the lease is gone), which
//! [`KeepAlive::is_lost`] then reports.

use super::{unexpected, Client, ClientError, StreamReceiver, StreamSender};
use crate::runtime::{self, channel};
use qed_wire::lease::{
    LeaseGrantRequest, LeaseGrantResponse, LeaseKeepAliveRequest, LeaseKeepAliveResponse,
    LeaseLeasesRequest, LeaseRevokeRequest, LeaseRevokeResponse, LeaseTimeToLiveRequest,
    LeaseTimeToLiveResponse,
};
use qed_wire::{Call, Request, Response};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

impl Client {
    /// Grants a lease of `ttl` seconds; the node picks the ID.
    pub async fn lease_grant(&self, ttl: i64) -> Result<LeaseGrantResponse, ClientError> {
        self.lease_grant_with_id(ttl, 0).await
    }

    /// Grants a lease with a chosen ID (0: the node picks).
    pub async fn lease_grant_with_id(
        &self,
        ttl: i64,
        id: i64,
    ) -> Result<LeaseGrantResponse, ClientError> {
        match self
            .call(Request::LeaseGrant(LeaseGrantRequest { ttl, id }))
            .await?
        {
            Response::LeaseGrant(r) => Ok(r),
            other => Err(unexpected("lease grant", &other)),
        }
    }

    /// Revokes a lease, deleting every key attached to it (in one revision).
    pub async fn lease_revoke(&self, id: i64) -> Result<LeaseRevokeResponse, ClientError> {
        match self
            .call(Request::LeaseRevoke(LeaseRevokeRequest { id }))
            .await?
        {
            Response::LeaseRevoke(r) => Ok(r),
            other => Err(unexpected("lease revoke", &other)),
        }
    }

    /// Remaining and granted TTL, and with `keys` the attached keys. A lease
    /// that does not exist answers TTL -1.
    pub async fn lease_time_to_live(
        &self,
        id: i64,
        keys: bool,
    ) -> Result<LeaseTimeToLiveResponse, ClientError> {
        match self
            .call(Request::LeaseTimeToLive(LeaseTimeToLiveRequest {
                id,
                keys,
            }))
            .await?
        {
            Response::LeaseTimeToLive(r) => Ok(r),
            other => Err(unexpected("lease time-to-live", &other)),
        }
    }

    /// Every lease ID.
    pub async fn leases(&self) -> Result<Vec<i64>, ClientError> {
        match self
            .call(Request::LeaseLeases(LeaseLeasesRequest {}))
            .await?
        {
            Response::LeaseLeases(r) => Ok(r.leases),
            other => Err(unexpected("lease leases", &other)),
        }
    }

    /// One keepalive on a fresh stream; TTL 0 means the lease is gone.
    pub async fn lease_keep_alive_once(
        &self,
        id: i64,
    ) -> Result<LeaseKeepAliveResponse, ClientError> {
        let (mut send, mut recv) = self.open_stream(self.token(), Call::LeaseKeepAlive).await?;
        let resp = refresh(self, &mut send, &mut recv, id).await;
        let _ = send.finish().await;
        resp
    }

    /// Keeps lease `id` alive in the background until the returned handle is
    /// dropped. Fails at once if the lease does not exist.
    pub async fn lease_keep_alive(&self, id: i64) -> Result<KeepAlive, ClientError> {
        let (mut send, mut recv) = self.open_stream(self.token(), Call::LeaseKeepAlive).await?;
        let first = refresh(self, &mut send, &mut recv, id).await?;
        if first.ttl <= 0 {
            return Err(ClientError::Server(qed_wire::Error::LeaseNotFound));
        }
        let shared = Arc::new(Shared {
            ttl: AtomicI64::new(first.ttl),
            lost: AtomicBool::new(false),
        });
        let (stop, stopped) = channel::bounded::<()>(1);
        runtime::spawn(keep_alive_task(
            self.clone(),
            id,
            Some((send, recv)),
            shared.clone(),
            stopped,
        ));
        Ok(KeepAlive {
            id,
            shared,
            _stop: stop,
        })
    }
}

/// Sends one keepalive and reads its answer, within the request timeout.
async fn refresh(
    client: &Client,
    send: &mut StreamSender,
    recv: &mut StreamReceiver,
    id: i64,
) -> Result<LeaseKeepAliveResponse, ClientError> {
    send.send(&LeaseKeepAliveRequest { id }).await?;
    runtime::timeout(client.request_timeout(), recv.recv())
        .await
        .map_err(|_| ClientError::Timeout)??
        .ok_or(ClientError::Closed)
}

struct Shared {
    ttl: AtomicI64,
    lost: AtomicBool,
}

/// A lease kept alive in the background; dropping it stops the refreshes
/// (the lease then expires after its TTL unless revoked first).
pub struct KeepAlive {
    id: i64,
    shared: Arc<Shared>,
    /// Dropped with the handle, which closes the task's stop channel.
    _stop: channel::Sender<()>,
}

impl KeepAlive {
    pub fn id(&self) -> i64 {
        self.id
    }

    /// The TTL the node last granted, in seconds.
    pub fn ttl(&self) -> i64 {
        self.shared.ttl.load(Ordering::Relaxed)
    }

    /// Whether the node said the lease is gone (expired or revoked).
    pub fn is_lost(&self) -> bool {
        self.shared.lost.load(Ordering::Relaxed)
    }
}

async fn keep_alive_task(
    client: Client,
    id: i64,
    mut stream: Option<(StreamSender, StreamReceiver)>,
    shared: Arc<Shared>,
    stopped: channel::Receiver<()>,
) {
    let mut wait = interval(shared.ttl.load(Ordering::Relaxed));
    loop {
        // Sleep until the next refresh; a closed channel means the handle
        // was dropped.
        if runtime::timeout(wait, stopped.recv()).await.is_ok() {
            break;
        }
        if stream.is_none() {
            stream = client
                .open_stream(client.token(), Call::LeaseKeepAlive)
                .await
                .ok();
        }
        let Some((send, recv)) = stream.as_mut() else {
            wait = Duration::from_millis(500);
            continue;
        };
        match refresh(&client, send, recv, id).await {
            Ok(resp) if resp.ttl <= 0 => {
                shared.lost.store(true, Ordering::Relaxed);
                break;
            }
            Ok(resp) => {
                shared.ttl.store(resp.ttl, Ordering::Relaxed);
                wait = interval(resp.ttl);
            }
            Err(_) => {
                // Broken stream or a leader change: retry soon on a new one.
                stream = None;
                wait = Duration::from_millis(500);
            }
        }
    }
    if let Some((mut send, _)) = stream {
        let _ = send.finish().await;
    }
}

/// A third of the TTL, at least half a second (clientv3 refreshes at TTL/3).
fn interval(ttl_secs: i64) -> Duration {
    let ms = u64::try_from(ttl_secs).unwrap_or(0).saturating_mul(1000) / 3;
    Duration::from_millis(ms.max(500))
}
