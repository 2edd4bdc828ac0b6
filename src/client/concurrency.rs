//! Sessions, locks and elections, as etcd's clientv3/concurrency builds
//! them from leases, txns and watches (same key layout, so qed and etcd
//! clients interoperate through the gRPC shim).
//!
//! - [`Session`]: a lease kept alive in the background. Keys a session
//!   writes are attached to its lease, so they vanish if the holder dies.
//! - [`Mutex`]: each contender puts `prefix/<lease hex>` with its session's
//!   lease; the key's create revision is its place in line. The holder is
//!   the key with the lowest create revision; every other contender waits
//!   (by watch) for the deletion of the key just ahead of it, so the lock
//!   is fair (first come, first served) and a release wakes one waiter.
//! - [`Election`]: the same queue; the leader is the first key, its value
//!   the proclaimed value. [`Election::observe`] follows leader changes.

use super::{
    Client, ClientError, Compare, CompareOp, GetOptions, KeyValue, PutOptions, SortOrder,
    SortTarget, Txn, TxnOp, WatchOptions,
};
use super::{EventType, KeepAlive};
use qed_wire::kv::{ResponseOp, TxnResponse};
use std::fmt;

/// TTL of a session's lease when not chosen (clientv3's default, 60 s).
pub const DEFAULT_SESSION_TTL: i64 = 60;

/// Why a lock or election call failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConcurrencyError {
    /// A call to the cluster failed.
    Client(ClientError),
    /// The session's key vanished while waiting (its lease expired).
    SessionExpired,
    /// Proclaim or resign by a member that is not (or no longer) leader.
    NotLeader,
    /// No one is campaigning.
    NoLeader,
}

impl fmt::Display for ConcurrencyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConcurrencyError::Client(e) => write!(f, "{e}"),
            ConcurrencyError::SessionExpired => f.write_str("session: expired"),
            ConcurrencyError::NotLeader => f.write_str("election: not leader"),
            ConcurrencyError::NoLeader => f.write_str("election: no leader"),
        }
    }
}

impl std::error::Error for ConcurrencyError {}

impl From<ClientError> for ConcurrencyError {
    fn from(e: ClientError) -> Self {
        ConcurrencyError::Client(e)
    }
}

/// A lease kept alive until the session is closed or dropped.
pub struct Session {
    client: Client,
    keep_alive: KeepAlive,
}

impl Session {
    /// Grants a lease of `ttl` seconds and keeps it alive.
    pub async fn new(client: &Client, ttl: i64) -> Result<Session, ClientError> {
        let lease = client.lease_grant(ttl).await?.id;
        let keep_alive = client.lease_keep_alive(lease).await?;
        Ok(Session {
            client: client.clone(),
            keep_alive,
        })
    }

    pub fn lease(&self) -> i64 {
        self.keep_alive.id()
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Whether the lease is known to be gone.
    pub fn is_lost(&self) -> bool {
        self.keep_alive.is_lost()
    }

    /// Stops the keepalives and revokes the lease, deleting every key the
    /// session holds (its locks and candidacies) at once.
    pub async fn close(self) -> Result<(), ClientError> {
        let lease = self.lease();
        drop(self.keep_alive);
        self.client.lease_revoke(lease).await.map(|_| ())
    }
}

/// The first range result of a txn branch, by position.
fn range_kvs(resp: &TxnResponse, index: usize) -> Vec<KeyValue> {
    match resp.responses.get(index) {
        Some(ResponseOp::Range(r)) => r.kvs.clone(),
        _ => Vec::new(),
    }
}

fn first_created() -> GetOptions {
    GetOptions::new()
        .with_prefix()
        .with_sort(SortTarget::Create, SortOrder::Ascend)
        .with_limit(1)
}

/// Puts `key` (with the lease) unless it exists; returns its create
/// revision, its current value and the queue's first key.
async fn enqueue(
    client: &Client,
    prefix: &[u8],
    key: &[u8],
    value: &[u8],
    lease: i64,
) -> Result<(i64, Vec<u8>, Option<KeyValue>), ClientError> {
    let resp = client
        .txn(
            Txn::new()
                .when([Compare::create_revision(key, CompareOp::Equal, 0)])
                .and_then([
                    TxnOp::put(key, value, Some(PutOptions::new().with_lease(lease))),
                    TxnOp::get(prefix, Some(first_created())),
                ])
                .or_else([
                    TxnOp::get(key, None),
                    TxnOp::get(prefix, Some(first_created())),
                ]),
        )
        .await?;
    let owner = range_kvs(&resp, 1).into_iter().next();
    if resp.succeeded {
        return Ok((resp.header.revision, value.to_vec(), owner));
    }
    let mine = range_kvs(&resp, 0)
        .into_iter()
        .next()
        .ok_or(ClientError::Protocol("own key vanished in a txn".into()))?;
    Ok((mine.create_revision, mine.value, owner))
}

/// etcd's `waitDeletes`: waits until no key under `prefix` has a create
/// revision at or below `max_create_rev`, watching the newest such key
/// each time.
async fn wait_deletes(
    client: &Client,
    prefix: &[u8],
    max_create_rev: i64,
) -> Result<(), ClientError> {
    loop {
        let ahead = client
            .get(
                prefix,
                Some(
                    GetOptions::new()
                        .with_prefix()
                        .with_sort(SortTarget::Create, SortOrder::Descend)
                        .with_max_create_revision(max_create_rev)
                        .with_limit(1),
                ),
            )
            .await?;
        let Some(last) = ahead.kvs.into_iter().next() else {
            return Ok(());
        };
        wait_delete(client, &last.key, ahead.header.revision).await?;
    }
}

/// Waits for a delete of `key` after revision `rev`.
async fn wait_delete(client: &Client, key: &[u8], rev: i64) -> Result<(), ClientError> {
    let options = WatchOptions::new().with_start_revision(rev + 1);
    let mut watcher = client.watch(key.to_vec(), options).await?;
    while let Some(resp) = watcher.next().await {
        let resp = resp?;
        if resp.canceled || resp.events.iter().any(|e| e.kind == EventType::Delete) {
            // A compacted watch cannot tell; the caller looks again.
            return Ok(());
        }
    }
    Ok(())
}

/// Checks that `key` still exists (the session did not expire meanwhile).
async fn still_held(client: &Client, key: &[u8]) -> Result<(), ConcurrencyError> {
    if client.get(key.to_vec(), None).await?.kvs.is_empty() {
        return Err(ConcurrencyError::SessionExpired);
    }
    Ok(())
}

fn own_key(prefix: &[u8], lease: i64) -> Vec<u8> {
    let mut key = prefix.to_vec();
    key.extend_from_slice(format!("{lease:x}").as_bytes());
    key
}

fn with_slash(prefix: &str) -> Vec<u8> {
    let mut p = prefix.as_bytes().to_vec();
    if !p.ends_with(b"/") {
        p.push(b'/');
    }
    p
}

/// A session's place in the queue under a prefix, shared by [`Mutex`] and
/// [`Election`]: its own key (prefix + lease ID, attached to the lease) and
/// that key's create revision while it is queued (0 when not).
struct QueueSlot {
    client: Client,
    lease: i64,
    prefix: Vec<u8>,
    key: Vec<u8>,
    rev: i64,
}

impl QueueSlot {
    /// A `/` is appended to `prefix` if missing, as clientv3 does.
    fn new(session: &Session, prefix: &str) -> QueueSlot {
        let prefix = with_slash(prefix);
        QueueSlot {
            client: session.client().clone(),
            lease: session.lease(),
            key: own_key(&prefix, session.lease()),
            prefix,
            rev: 0,
        }
    }
}

/// A distributed lock on a key prefix, held through a [`Session`].
pub struct Mutex {
    slot: QueueSlot,
}

impl Mutex {
    /// A lock on `prefix` (a `/` is appended if missing, as clientv3 does).
    pub fn new(session: &Session, prefix: &str) -> Mutex {
        Mutex {
            slot: QueueSlot::new(session, prefix),
        }
    }

    /// Waits until this session holds the lock.
    pub async fn lock(&mut self) -> Result<(), ConcurrencyError> {
        let (rev, _, owner) = enqueue(
            &self.slot.client,
            &self.slot.prefix,
            &self.slot.key,
            b"",
            self.slot.lease,
        )
        .await?;
        self.slot.rev = rev;
        if owner.is_some_and(|o| o.create_revision != rev) {
            if let Err(e) = wait_deletes(&self.slot.client, &self.slot.prefix, rev - 1).await {
                let _ = self.unlock().await;
                return Err(e.into());
            }
        }
        still_held(&self.slot.client, &self.slot.key).await
    }

    /// Releases the lock (or leaves the queue).
    pub async fn unlock(&mut self) -> Result<(), ConcurrencyError> {
        self.slot.client.delete(self.slot.key.clone(), None).await?;
        self.slot.rev = 0;
        Ok(())
    }

    /// The key that holds our place in line.
    pub fn key(&self) -> &[u8] {
        &self.slot.key
    }
}

/// A leader election on a key prefix, campaigned for through a [`Session`].
pub struct Election {
    slot: QueueSlot,
}

impl Election {
    pub fn new(session: &Session, prefix: &str) -> Election {
        Election {
            slot: QueueSlot::new(session, prefix),
        }
    }

    /// Waits until this session leads, then proclaims `value`.
    pub async fn campaign(&mut self, value: impl Into<Vec<u8>>) -> Result<(), ConcurrencyError> {
        let value = value.into();
        let (rev, current, _) = enqueue(
            &self.slot.client,
            &self.slot.prefix,
            &self.slot.key,
            &value,
            self.slot.lease,
        )
        .await?;
        self.slot.rev = rev;
        if current != value {
            self.proclaim(value).await?;
        }
        if let Err(e) = wait_deletes(&self.slot.client, &self.slot.prefix, rev - 1).await {
            let _ = self.resign().await;
            return Err(e.into());
        }
        still_held(&self.slot.client, &self.slot.key).await
    }

    /// Changes the leader's value without an election.
    pub async fn proclaim(&mut self, value: impl Into<Vec<u8>>) -> Result<(), ConcurrencyError> {
        if self.slot.rev == 0 {
            return Err(ConcurrencyError::NotLeader);
        }
        let resp = self
            .slot
            .client
            .txn(
                Txn::new()
                    .when([Compare::create_revision(
                        self.slot.key.clone(),
                        CompareOp::Equal,
                        self.slot.rev,
                    )])
                    .and_then([TxnOp::put(
                        self.slot.key.clone(),
                        value.into(),
                        Some(PutOptions::new().with_lease(self.slot.lease)),
                    )]),
            )
            .await?;
        if !resp.succeeded {
            self.slot.rev = 0;
            return Err(ConcurrencyError::NotLeader);
        }
        Ok(())
    }

    /// Gives up leadership (or candidacy).
    pub async fn resign(&mut self) -> Result<(), ConcurrencyError> {
        if self.slot.rev == 0 {
            return Ok(());
        }
        self.slot
            .client
            .txn(
                Txn::new()
                    .when([Compare::create_revision(
                        self.slot.key.clone(),
                        CompareOp::Equal,
                        self.slot.rev,
                    )])
                    .and_then([TxnOp::delete(self.slot.key.clone(), None)]),
            )
            .await?;
        self.slot.rev = 0;
        Ok(())
    }

    /// The current leader's key and value.
    pub async fn leader(&self) -> Result<KeyValue, ConcurrencyError> {
        let resp = self
            .slot
            .client
            .get(self.slot.prefix.clone(), Some(first_created()))
            .await?;
        resp.kvs
            .into_iter()
            .next()
            .ok_or(ConcurrencyError::NoLeader)
    }

    /// Follows the leadership: each [`Observer::next`] returns the leader
    /// (key and value) whenever it or its value changes.
    pub fn observe(&self) -> Observer {
        Observer {
            client: self.slot.client.clone(),
            prefix: self.slot.prefix.clone(),
            current: None,
        }
    }
}

/// See [`Election::observe`].
pub struct Observer {
    client: Client,
    prefix: Vec<u8>,
    current: Option<KeyValue>,
}

impl Observer {
    /// The next leader, or the next value of the current one.
    pub async fn next(&mut self) -> Result<KeyValue, ClientError> {
        loop {
            match self.current.take() {
                None => {
                    let resp = self
                        .client
                        .get(self.prefix.clone(), Some(first_created()))
                        .await?;
                    if let Some(kv) = resp.kvs.into_iter().next() {
                        self.current = Some(kv.clone());
                        return Ok(kv);
                    }
                    // No one leads: wait for a candidate to appear.
                    let options = WatchOptions::new()
                        .with_prefix()
                        .with_filter_delete()
                        .with_start_revision(resp.header.revision + 1);
                    let mut w = self.client.watch(self.prefix.clone(), options).await?;
                    if let Some(resp) = w.next().await {
                        resp?;
                    }
                }
                Some(leader) => {
                    let options = WatchOptions::new().with_start_revision(leader.mod_revision + 1);
                    let mut w = self.client.watch(leader.key.clone(), options).await?;
                    let Some(resp) = w.next().await else { continue };
                    let resp = resp?;
                    match resp.events.into_iter().next() {
                        Some(ev) if ev.kind == EventType::Put => {
                            self.current = Some(ev.kv.clone());
                            return Ok(ev.kv);
                        }
                        // Deleted (resigned or expired), or compacted: look
                        // for the next leader.
                        _ => {}
                    }
                }
            }
        }
    }
}
