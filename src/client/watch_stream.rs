//! Watch streams shared by many watches, as clientv3 shares one gRPC
//! stream: a client's watches ride on a few long QUIC streams instead of one
//! stream each, so a client can hold any number of watches (one stream per
//! watch would stop at the connection's stream limit) and the node keeps
//! one writer per stream rather than one per watch.
//!
//! A router task per stream reads the node's responses (batched: one
//! message for every watch it is identical for, see `Call::WatchBatched`)
//! and hands each to its watch's bounded queue. It never waits on a consumer: a watch whose
//! queue is full is *detached* (its route dropped, a cancel sent to the
//! node) and its `Watcher` re-creates it from its first undelivered revision
//! once its consumer has drained what it was given — the node's own rule
//! for slow watchers, so one slow consumer never stalls the others and a
//! watch's memory stays bounded. When the stream breaks, every route is
//! dropped and every watcher re-creates its watch the same way.
//!
//! Invariants: watch IDs on a shared stream are chosen here (a counter per
//! client), so a watch re-created on another stream can never collide with
//! one already there; a route exists before its create request is sent, so
//! the `created` response always finds it.

use super::{Client, ClientError, StreamSender};
use crate::runtime::{self, Mutex};
use qed_wire::watch::{WatchBatch, WatchCreateRequest, WatchRequest, WatchResponse};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Weak};
use std::task::{Poll, Waker};

/// Watches one shared stream carries before the next one is opened, so
/// that the node's per-stream queue (1,024 responses) and writer are
/// shared by a bounded number of watches.
const WATCHES_PER_STREAM: usize = 256;

/// Responses a watch's queue holds before the watch is detached.
const QUEUE_PER_WATCH: usize = 256;

/// What a node sends on a stream for the stream as a whole (a progress
/// notification after `WatchRequest::Progress`).
const STREAM_WATCH_ID: i64 = -1;

/// Where a watch's responses go; `closed` once the router stopped.
#[derive(Default)]
struct Routes {
    queues: HashMap<i64, Arc<WatchQueue>>,
    closed: bool,
}

/// A watch's responses on their way from the router to its `Watcher`: a
/// deque held to [`QUEUE_PER_WATCH`] (grown only as needed: a bounded
/// channel would allocate all its slots up front, for every idle watch)
/// and the reader's waker, under one lock. A push wakes the reader only
/// if it is waiting (it found the queue empty), so a burst of responses
/// costs the reader one wake-up, and waiting allocates nothing.
struct WatchQueue {
    state: std::sync::Mutex<QueueState>,
}

#[derive(Default)]
struct QueueState {
    items: VecDeque<WatchResponse>,
    /// No more responses will come: the watch was detached or the stream
    /// ended.
    closed: bool,
    /// The reader's, while it waits for the next response.
    waiting: Option<Waker>,
}

/// The `Watcher`'s end of a [`WatchQueue`].
pub(super) struct QueueReader {
    queue: Arc<WatchQueue>,
}

impl WatchQueue {
    fn new() -> (Arc<WatchQueue>, QueueReader) {
        let queue = Arc::new(WatchQueue {
            state: Default::default(),
        });
        let reader = QueueReader {
            queue: queue.clone(),
        };
        (queue, reader)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, QueueState> {
        // Plain data: a panic elsewhere while holding the lock leaves it usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues `resp`; `false` (and nothing queued) when the queue is full.
    fn push(&self, resp: WatchResponse) -> bool {
        let mut state = self.lock();
        if state.items.len() >= QUEUE_PER_WATCH {
            return false;
        }
        state.items.push_back(resp);
        let waiting = state.waiting.take();
        drop(state);
        if let Some(waker) = waiting {
            waker.wake();
        }
        true
    }

    /// Ends the queue: the reader gets what is queued, then `None`.
    fn close(&self) {
        let mut state = self.lock();
        state.closed = true;
        let waiting = state.waiting.take();
        drop(state);
        if let Some(waker) = waiting {
            waker.wake();
        }
    }
}

impl QueueReader {
    /// The next response; `None` once the queue is closed and drained.
    /// Cancel-safe: a response leaves the queue only when it is returned.
    pub(super) async fn recv(&self) -> Option<WatchResponse> {
        std::future::poll_fn(|cx| {
            let mut state = self.queue.lock();
            if let Some(resp) = state.items.pop_front() {
                return Poll::Ready(Some(resp));
            }
            if state.closed {
                return Poll::Ready(None);
            }
            match &mut state.waiting {
                Some(waker) => waker.clone_from(cx.waker()),
                none => *none = Some(cx.waker().clone()),
            }
            Poll::Pending
        })
        .await
    }
}

/// One QUIC watch stream and its routing table.
pub(super) struct SharedStream {
    send: Mutex<StreamSender>,
    routes: Arc<std::sync::Mutex<Routes>>,
}

/// A watch attached to a shared stream.
pub(super) struct Attached {
    stream: Arc<SharedStream>,
    pub(super) id: i64,
    pub(super) queue: QueueReader,
    /// The node has been told to cancel (or the watch ended): nothing to do
    /// on drop.
    released: bool,
}

/// A client's shared streams: the one new watches go to.
#[derive(Default)]
pub(super) struct WatchStreams {
    current: Mutex<Option<Arc<SharedStream>>>,
    next_id: AtomicI64,
}

fn lock_routes(routes: &std::sync::Mutex<Routes>) -> std::sync::MutexGuard<'_, Routes> {
    // Plain data: a panic elsewhere while holding the lock leaves it usable.
    routes.lock().unwrap_or_else(|e| e.into_inner())
}

impl WatchStreams {
    /// A watch ID no other watch of this client has used.
    pub(super) fn next_id(&self) -> i64 {
        self.next_id.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// The stream new watches go to: the current one while it is open and
    /// has room, else a newly opened one.
    async fn stream(&self, client: &Client) -> Result<Arc<SharedStream>, ClientError> {
        let mut current = self.current.lock().await;
        if let Some(stream) = current.as_ref() {
            let routes = lock_routes(&stream.routes);
            if !routes.closed && routes.queues.len() < WATCHES_PER_STREAM {
                drop(routes);
                return Ok(stream.clone());
            }
        }
        let stream = SharedStream::open(client).await?;
        *current = Some(stream.clone());
        Ok(stream)
    }
}

impl SharedStream {
    /// Opens a watch stream and starts its router.
    pub(super) async fn open(client: &Client) -> Result<Arc<SharedStream>, ClientError> {
        let (send, mut recv, batched) = client.open_watch_stream(client.token()).await?;
        let routes: Arc<std::sync::Mutex<Routes>> = Arc::default();
        let stream = Arc::new(SharedStream {
            send: Mutex::new(send),
            routes: routes.clone(),
        });
        let weak = Arc::downgrade(&stream);
        runtime::spawn(async move {
            loop {
                let batch = if batched {
                    match recv.recv::<WatchBatch>().await {
                        Ok(Some(batch)) => batch,
                        _ => break,
                    }
                } else {
                    match recv.recv::<WatchResponse>().await {
                        Ok(Some(response)) => WatchBatch {
                            response,
                            more_ids: Vec::new(),
                        },
                        _ => break,
                    }
                };
                route(&routes, &weak, batch);
            }
            let mut routes = lock_routes(&routes);
            routes.closed = true;
            // Every watcher re-creates its watch once it has drained its queue.
            for (_, queue) in routes.queues.drain() {
                queue.close();
            }
        });
        Ok(stream)
    }

    async fn send(&self, request: &WatchRequest) -> Result<(), ClientError> {
        self.send.lock().await.send(request).await
    }

    /// Registers a watch under `request.watch_id` and sends its create; the
    /// caller reads the `created` response from the returned queue.
    async fn attach(
        self: &Arc<Self>,
        request: &WatchCreateRequest,
    ) -> Result<Attached, ClientError> {
        let (queue, reader) = WatchQueue::new();
        {
            let mut routes = lock_routes(&self.routes);
            if routes.closed {
                return Err(ClientError::Closed);
            }
            routes.queues.insert(request.watch_id, queue);
        }
        let mut attached = Attached {
            stream: self.clone(),
            id: request.watch_id,
            queue: reader,
            released: false,
        };
        if let Err(e) = self.send(&WatchRequest::Create(request.clone())).await {
            attached.released = true;
            lock_routes(&self.routes).queues.remove(&request.watch_id);
            return Err(e);
        }
        Ok(attached)
    }
}

/// Hands a batch's response to each of its watches' queues without ever
/// waiting. The copies share the response's events (`Events`): a batch
/// for a thousand watches is one decoded list, not a thousand.
fn route(routes: &std::sync::Mutex<Routes>, stream: &Weak<SharedStream>, batch: WatchBatch) {
    let WatchBatch { response, more_ids } = batch;
    let mut routes = lock_routes(routes);
    if response.watch_id == STREAM_WATCH_ID {
        // Progress for the whole stream: every watch of it has been handed
        // everything up to the revision. A full queue just misses it.
        for queue in routes.queues.values() {
            let _ = queue.push(response.clone());
        }
        return;
    }
    // A batch names a watch once, so the order among its watches is free:
    // the copies first, the response itself last.
    let mut detached = Vec::new();
    for &watch_id in &more_ids {
        let copy = WatchResponse {
            watch_id,
            ..response.clone()
        };
        deliver(&mut routes, copy, &mut detached);
    }
    deliver(&mut routes, response, &mut detached);
    drop(routes);
    for id in detached {
        // A slow consumer: stop the node sending more; its watcher
        // re-creates the watch from where it stopped.
        send_cancel(stream, id);
    }
}

/// Queues `resp` for its watch; a watch whose queue is full is detached
/// (added to `detached`), as is one whose final response this is.
fn deliver(routes: &mut Routes, resp: WatchResponse, detached: &mut Vec<i64>) {
    let id = resp.watch_id;
    let Some(queue) = routes.queues.get(&id) else {
        // A watch already detached or canceled: its last responses.
        return;
    };
    let last = resp.canceled;
    let queued = queue.push(resp);
    if queued && !last {
        return;
    }
    if let Some(queue) = routes.queues.remove(&id) {
        queue.close();
    }
    if !queued {
        detached.push(id);
    }
}

/// Sends a cancel for `id` in the background (callers cannot wait).
fn send_cancel(stream: &Weak<SharedStream>, id: i64) {
    if let Some(stream) = stream.upgrade() {
        runtime::spawn(async move {
            let _ = stream.send(&WatchRequest::Cancel { watch_id: id }).await;
        });
    }
}

impl Attached {
    /// Attaches a watch to one of `client`'s shared streams under a fresh
    /// ID (or, for an ID the user chose, to a stream of its own, where that
    /// ID cannot collide with the client's counter).
    pub(super) async fn new(
        client: &Client,
        mut request: WatchCreateRequest,
        own_id: Option<i64>,
    ) -> Result<Attached, ClientError> {
        let stream = match own_id {
            Some(id) => {
                request.watch_id = id;
                SharedStream::open(client).await?
            }
            None => {
                request.watch_id = client.watch_streams().next_id();
                client.watch_streams().stream(client).await?
            }
        };
        stream.attach(&request).await
    }

    /// Asks the node for a progress notification on this watch's stream.
    pub(super) async fn request_progress(&self) -> Result<(), ClientError> {
        self.stream.send(&WatchRequest::Progress).await
    }

    /// Cancels the watch on the node; the final `canceled` response (or the
    /// end of the queue) follows on the queue.
    pub(super) async fn cancel(&mut self) -> Result<(), ClientError> {
        self.released = true;
        self.stream
            .send(&WatchRequest::Cancel { watch_id: self.id })
            .await
    }

    /// The watch ended on the node (canceled or compacted): nothing to
    /// cancel on drop.
    pub(super) fn ended(&mut self) {
        self.released = true;
    }
}

impl Drop for Attached {
    fn drop(&mut self) {
        let removed = lock_routes(&self.stream.routes)
            .queues
            .remove(&self.id)
            .is_some();
        if removed && !self.released {
            send_cancel(&Arc::downgrade(&self.stream), self.id);
        }
    }
}
