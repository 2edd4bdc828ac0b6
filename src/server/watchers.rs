//! The node's watch side: one [`WatchHub`] shared by the apply path and the
//! watch stream tasks, plus a wake-up channel per stream.
//!
//! Locking: the hub sits behind a plain mutex held only for in-memory work
//! of bounded size (routing one batch of applied events, one create or
//! cancel, draining one stream's queue, one bounded `catch_up` round). No
//! one holds it across an `.await`, a socket write or the state machine's
//! lock being *waited* for: the apply path takes the state lock and then
//! the hub lock; the catch-up task takes the hub lock and only *tries* the
//! state lock, so the two never deadlock and the Raft loop never waits for
//! a watcher's socket.
//!
//! Wake-ups: after any hub call, the streams `take_ready` names get a unit
//! on their `bounded(1)` channel with `try_send` (a full channel already
//! means "wake up"), so the apply path never blocks on a slow stream. A
//! slow stream's queue is bounded by the hub, which demotes its watchers to
//! catch up from history later.

use super::state_machine::StateMachine;
use crate::mvcc::Event;
use crate::runtime::{self, channel};
use crate::watch::{PendingResponse, StreamId, WatchConfig, WatchHub};
use qed_wire::watch::WatchRequest;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

/// Events per watcher per catch-up round (whole revisions; etcd's
/// `watchBatchMaxRevs` is 1000 revisions).
const CATCH_UP_BATCH: usize = 1000;
/// How often unsynced watchers are caught up (etcd: 100 ms).
const CATCH_UP_EVERY: Duration = Duration::from_millis(100);
/// Progress notifications are considered this often (etcd's sendLoop).
const PROGRESS_EVERY_ROUNDS: u32 = 10;

/// The hub, its wake-ups, and the state it catches watchers up from.
pub struct Watchers {
    hub: Mutex<WatchHub>,
    wakers: Mutex<HashMap<StreamId, channel::Sender<()>>>,
    next_stream: AtomicU64,
    state: Arc<RwLock<StateMachine>>,
}

/// A registered watch stream: its ID and its wake-up channel. Dropping it
/// does not unregister; call [`Watchers::close`].
pub struct StreamSlot {
    pub id: StreamId,
    pub wake: channel::Receiver<()>,
}

impl Watchers {
    /// A hub at the state's current revision, with its catch-up and
    /// progress task running.
    pub fn start(state: Arc<RwLock<StateMachine>>) -> Arc<Watchers> {
        let revision = state.read().unwrap_or_else(|p| p.into_inner()).revision();
        let watchers = Arc::new(Watchers {
            hub: Mutex::new(WatchHub::new(WatchConfig::default(), revision)),
            wakers: Mutex::new(HashMap::new()),
            next_stream: AtomicU64::new(1),
            state,
        });
        let weak = Arc::downgrade(&watchers);
        runtime::spawn(async move {
            let mut round = 0u32;
            loop {
                runtime::sleep(CATCH_UP_EVERY).await;
                let Some(w) = weak.upgrade() else { return };
                w.catch_up();
                round = round.wrapping_add(1);
                if round % PROGRESS_EVERY_ROUNDS == 0 {
                    w.with_hub(|hub| hub.tick_progress(super::now_ms()));
                }
            }
        });
        watchers
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, WatchHub> {
        self.hub.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `f` on the hub, then wakes the streams it made ready.
    fn with_hub<T>(&self, f: impl FnOnce(&mut WatchHub) -> T) -> T {
        let (out, ready) = {
            let mut hub = self.lock();
            let out = f(&mut hub);
            (out, hub.take_ready())
        };
        self.wake(&ready);
        out
    }

    fn wake(&self, streams: &[StreamId]) {
        if streams.is_empty() {
            return;
        }
        let wakers = self.wakers.lock().unwrap_or_else(|p| p.into_inner());
        for s in streams {
            if let Some(tx) = wakers.get(s) {
                let _ = tx.try_send(());
            }
        }
    }

    /// Apply path: one batch of applied revisions, `(events, revision after
    /// them)` in log order.
    pub fn on_apply(&self, applied: &[(Vec<Event>, i64)]) {
        if applied.is_empty() {
            return;
        }
        self.with_hub(|hub| {
            for (events, revision) in applied {
                hub.on_apply(events, *revision);
            }
        });
    }

    /// After a snapshot replaced the state: every watcher resumes from
    /// history.
    pub fn restore(&self, revision: i64) {
        self.with_hub(|hub| hub.restore(revision));
    }

    /// One catch-up round, if anyone is behind. Skipped (tried again next
    /// round) when the apply path holds the state: the store must be the
    /// one the hub has followed, which it is whenever the apply path is not
    /// in the middle of a batch.
    pub fn catch_up(&self) {
        self.with_hub(|hub| {
            if hub.unsynced_count() == 0 {
                return;
            }
            let store = match self.state.try_read() {
                Ok(state) => state.store_view(),
                Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner().store_view(),
                Err(std::sync::TryLockError::WouldBlock) => return,
            };
            hub.catch_up(&store, CATCH_UP_BATCH);
        });
    }

    /// Registers a new stream.
    pub fn open(&self) -> StreamSlot {
        let id = self.next_stream.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = channel::bounded(1);
        self.wakers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, tx);
        StreamSlot { id, wake: rx }
    }

    /// Forgets a stream: its watches, its queue and its wake-up channel
    /// (which ends the stream's sender).
    pub fn close(&self, stream: StreamId) {
        self.lock().drop_stream(stream);
        self.wakers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&stream);
    }

    /// One client request on a stream. A create from an old revision is
    /// caught up at once rather than at the next round.
    pub fn request(&self, stream: StreamId, req: WatchRequest) {
        let behind = self.with_hub(|hub| {
            match req {
                WatchRequest::Create(create) => {
                    let _ = hub.create(stream, &create);
                }
                WatchRequest::Cancel { watch_id } => {
                    // etcd ignores a cancel of an unknown watch.
                    let _ = hub.cancel(stream, watch_id);
                }
                WatchRequest::Progress => hub.request_progress(stream),
            }
            hub.unsynced_count() > 0
        });
        if behind {
            self.catch_up();
        }
    }

    /// Answers a create the node refused (auth) with a canceled response.
    pub fn refuse(&self, stream: StreamId, reason: String) {
        self.with_hub(|hub| hub.refuse_create(stream, reason));
    }

    /// What a stream has queued, oldest first.
    pub fn take(&self, stream: StreamId) -> Vec<PendingResponse> {
        self.lock().take_pending(stream)
    }

    /// Watchers across every stream (for status and tests).
    pub fn watcher_count(&self) -> usize {
        self.lock().watcher_count()
    }

    /// Watchers waiting to catch up from history (etcd's slow watchers).
    pub fn unsynced_count(&self) -> usize {
        self.lock().unsynced_count()
    }
}
