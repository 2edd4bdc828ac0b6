//! [`WatchHub`]: every watcher of every stream, the indexes that route
//! applied events to them, and one bounded response queue per stream.
//!
//! Driver duties, in order (see the module doc of `watch` for guarantees):
//! 1. `WatchHub::new(config, store.revision())` at start-up, after the store
//!    is loaded.
//! 2. For every applied write that bumped the revision, right after the
//!    store applied it: `on_apply(&events, store.revision())`.
//! 3. Client requests: `create`, `cancel`, `request_progress`; on stream end
//!    `drop_stream`.
//! 4. Whenever `unsynced_count() > 0`, soon (etcd: every 100 ms):
//!    `catch_up(&store, batch)`.
//! 5. Every so often (etcd's sendLoop ticks each second or so):
//!    `tick_progress(now_ms)`.
//! 6. After any of the above: `take_ready()` names the streams with new
//!    responses; each stream's sender calls `take_pending(stream)` and
//!    sends the responses in order.
//! 7. After installing a snapshot: `restore(store.revision())`.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::hash::BuildHasherDefault;
use std::ops::Bound;
use std::rc::Rc;
use std::sync::Arc;

use super::interval::{End, IntervalMap};
use super::pending::{PendingResponse, SharedEvent};
use super::{IdHasher, IdMap, WatchError};
use crate::mvcc::{MvccError, Store};
use qed_wire::kv::{Event, EventType, KeyValue, ResponseHeader};
use qed_wire::watch::{WatchCreateRequest, WatchFilter, WatchResponse};

/// The driver's name for one client watch stream.
pub type StreamId = u64;
/// A watch's ID within its stream (etcd's `WatchId`).
pub type WatchId = i64;

type WatcherRef = (StreamId, WatchId);

/// etcd's `clientv3.InvalidWatchID`: the ID of stream-wide progress
/// responses and of refused creates.
const INVALID_WATCH_ID: WatchId = -1;

/// Estimated fixed bytes of a response beyond its events (header, flags).
const RESPONSE_OVERHEAD: usize = 64;
/// Estimated fixed bytes of one key-value beyond its key and value.
const KV_OVERHEAD: usize = 48;

/// Limits. Defaults follow etcd where it has one.
#[derive(Debug, Clone)]
pub struct WatchConfig {
    /// Responses a stream may hold undrained before the next watcher that
    /// would add one is demoted to catch up from history later (etcd's
    /// per-watch channel holds 1024, `chanBufLen`).
    pub max_pending_responses: usize,
    /// The same bound in estimated bytes, so a few huge values cannot hold
    /// a stream's memory unbounded.
    pub max_pending_bytes: usize,
    /// A `fragment` watch splits a response larger than this (etcd's
    /// `--max-request-bytes`, 1.5 MiB).
    pub max_response_bytes: usize,
    /// Between progress notifications for `progress_notify` watches (etcd's
    /// default is 10 minutes).
    pub progress_interval_ms: u64,
    /// Unsynced watchers one `catch_up` call visits, so one call's work is
    /// bounded however many are behind (etcd's `maxWatchersPerSync`);
    /// the next call continues where this one stopped.
    pub max_catch_up_watchers: usize,
    /// History one `catch_up` call may look at, in log entries (a single
    /// key's changes count one each): a round stops once it is spent, so
    /// the hub lock the apply path waits for is held for bounded work
    /// however far behind watchers are. 0: no limit.
    pub max_catch_up_visits: usize,
}

impl Default for WatchConfig {
    fn default() -> Self {
        WatchConfig {
            max_pending_responses: 1024,
            max_pending_bytes: 64 * 1024 * 1024,
            max_response_bytes: qed_wire::frame::MAX_REQUEST_BYTES,
            progress_interval_ms: 10 * 60 * 1000,
            max_catch_up_watchers: 512,
            max_catch_up_visits: 20_000,
        }
    }
}

/// How a watch's `range_end` reads (etcd's rules for watch requests).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Range {
    Single,
    To(End),
}

#[derive(Debug, Clone)]
struct Watcher {
    key: Vec<u8>,
    range: Range,
    /// The request's `range_end`, as `Store::events_since` wants it.
    range_end: Vec<u8>,
    no_put: bool,
    no_delete: bool,
    prev_kv: bool,
    fragment: bool,
    progress_notify: bool,
    /// The first revision not yet handed to this watcher.
    next_rev: i64,
    synced: bool,
    /// No events queued since the last progress tick (etcd's
    /// `sws.progress[id]`).
    quiet: bool,
}

impl Watcher {
    /// Whether its filters let an event of this kind through.
    fn wants(&self, kind: EventType) -> bool {
        match kind {
            EventType::Put => !self.no_put,
            EventType::Delete => !self.no_delete,
        }
    }

    /// Applies filters and `prev_kv` to one event; `None` if filtered out.
    fn shape(&self, ev: &Arc<Event>) -> Option<SharedEvent> {
        self.wants(ev.kind).then(|| SharedEvent {
            event: ev.clone(),
            prev_kv: self.prev_kv,
        })
    }
}

/// Watchers of one stream that `on_apply` hands the same events at once:
/// one queued response for all of them.
struct Run {
    stream: StreamId,
    /// Their open response's position, if they share one (see
    /// `StreamState::open`); only watchers that agree on it share a run.
    open: Option<usize>,
    prev_kv: bool,
    fragment: bool,
    /// Indexes of the revision's events they get, in order.
    picks: Vec<usize>,
    ids: Vec<WatchId>,
}

/// One history read of a `catch_up` round, shared by the watchers that
/// want the same one: the events, and through which revision they are
/// complete.
#[derive(Clone)]
enum History {
    Events(Rc<Vec<Arc<Event>>>, i64),
    Compacted,
    Unreadable,
}

/// What a queued response is, so cancel knows what to purge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Created, canceled or compacted: never dropped.
    Control,
    /// Events.
    Events,
    /// A progress notification for one watch.
    Progress,
    /// A progress response for the whole stream (`watch_id = -1`).
    StreamProgress,
}

#[derive(Debug)]
struct Queued {
    kind: Kind,
    /// Estimated bytes of the response as one of its watches gets it.
    each: usize,
    /// `each` times its watches: what the stream's byte bound counts (as
    /// if every watch had its own copy, which an unbatched stream sends).
    bytes: usize,
    resp: PendingResponse,
}

#[derive(Debug, Default)]
struct StreamState {
    /// etcd's `watchStream.nextID`: server-assigned IDs count up from 0.
    next_auto_id: WatchId,
    /// The stream's watches, so that dropping it visits only them.
    watches: BTreeSet<WatchId>,
    queue: VecDeque<Queued>,
    bytes: usize,
    /// A progress request waits until every watch of the stream is synced,
    /// so its revision never claims events a watch has not been sent.
    progress_requested: bool,
    /// Watches whose newest queued response is an events response nothing
    /// else has been queued after on this stream: its position in `queue`.
    /// Watches' next events join that response instead of queuing one
    /// more, when they are exactly the watches it is for (see
    /// [`WatchHub::join_open`]). Cleared by anything that moves or orders
    /// around queued responses: another kind of response, a purge, a drain.
    open: IdMap<usize>,
}

fn kv_bytes(kv: &KeyValue) -> usize {
    KV_OVERHEAD + kv.key.len() + kv.value.len()
}

fn event_bytes(ev: &SharedEvent) -> usize {
    kv_bytes(&ev.event.kv) + ev.prev_kv().map_or(0, kv_bytes)
}

fn header(revision: i64) -> ResponseHeader {
    ResponseHeader {
        revision,
        ..ResponseHeader::default()
    }
}

/// Every watcher of every stream, with their routing indexes and queues.
#[derive(Debug)]
pub struct WatchHub {
    config: WatchConfig,
    /// The newest revision the hub has been told about.
    revision: i64,
    /// Hashed, not ordered: `on_apply` looks up every watcher it routes
    /// to, per revision (each stream lists its own, see `StreamState`).
    watchers: HashMap<WatcherRef, Watcher, BuildHasherDefault<IdHasher>>,
    streams: BTreeMap<StreamId, StreamState>,
    /// Single-key watchers by key, synced or not.
    keys: BTreeMap<Vec<u8>, BTreeSet<WatcherRef>>,
    /// Range watchers, synced or not.
    ranges: IntervalMap<WatcherRef>,
    unsynced: BTreeSet<WatcherRef>,
    /// Streams whose queue gained responses since the last `take_ready`.
    ready: BTreeSet<StreamId>,
    next_progress_ms: Option<u64>,
    /// The last watcher `catch_up` visited, so turns rotate fairly.
    catch_up_cursor: Option<WatcherRef>,
    #[cfg(test)]
    pub(crate) demotions: usize,
}

impl WatchHub {
    /// An empty hub at the store's current revision.
    pub fn new(config: WatchConfig, revision: i64) -> WatchHub {
        WatchHub {
            config,
            revision,
            watchers: HashMap::default(),
            streams: BTreeMap::new(),
            keys: BTreeMap::new(),
            ranges: IntervalMap::default(),
            unsynced: BTreeSet::new(),
            ready: BTreeSet::new(),
            next_progress_ms: None,
            catch_up_cursor: None,
            #[cfg(test)]
            demotions: 0,
        }
    }

    // ---- getters ----

    /// The newest revision the hub has seen.
    pub fn revision(&self) -> i64 {
        self.revision
    }

    /// Watchers across all streams.
    pub fn watcher_count(&self) -> usize {
        self.watchers.len()
    }

    /// Watchers waiting for `catch_up`.
    pub fn unsynced_count(&self) -> usize {
        self.unsynced.len()
    }

    /// Whether `stream` has responses to send.
    pub fn has_pending(&self, stream: StreamId) -> bool {
        self.streams
            .get(&stream)
            .is_some_and(|s| !s.queue.is_empty())
    }

    /// Responses `stream` holds undrained.
    pub fn pending_len(&self, stream: StreamId) -> usize {
        self.streams.get(&stream).map_or(0, |s| s.queue.len())
    }

    // ---- client requests ----

    /// Adds a watch to `stream` and queues its `created` response. A
    /// `watch_id` of 0 lets the hub pick the stream's next free ID from 0
    /// up, as etcd does. `start_revision` 0 or above the current revision
    /// watches from the next revision (or from `start_revision` if later);
    /// an older one replays history through `catch_up` first (a negative
    /// one replays all kept history).
    ///
    /// On error, etcd's refusal is queued instead (`created` and `canceled`
    /// set, `watch_id = -1`, the error text as `cancel_reason`), so the
    /// driver sends the stream's queue either way.
    pub fn create(
        &mut self,
        stream: StreamId,
        req: &WatchCreateRequest,
    ) -> Result<WatchId, WatchError> {
        match self.try_create(stream, req) {
            Ok(id) => {
                let resp = WatchResponse {
                    header: header(self.revision),
                    watch_id: id,
                    created: true,
                    ..WatchResponse::default()
                };
                self.push(stream, Kind::Control, resp);
                Ok(id)
            }
            Err(e) => {
                self.refuse_create(stream, e.to_string());
                Err(e)
            }
        }
    }

    /// Answers a create that cannot be served (a bad request here, or one
    /// the caller may not make) as etcd does: created and canceled at once,
    /// `watch_id = -1`, the error text as `cancel_reason`.
    pub fn refuse_create(&mut self, stream: StreamId, reason: String) {
        let resp = WatchResponse {
            header: header(self.revision),
            watch_id: INVALID_WATCH_ID,
            created: true,
            canceled: true,
            cancel_reason: reason,
            ..WatchResponse::default()
        };
        self.push(stream, Kind::Control, resp);
    }

    fn try_create(
        &mut self,
        stream: StreamId,
        req: &WatchCreateRequest,
    ) -> Result<WatchId, WatchError> {
        // etcd's v3rpc: an empty key is the smallest key.
        let key = if req.key.is_empty() {
            vec![0]
        } else {
            req.key.clone()
        };
        let range = match req.range_end.as_slice() {
            [] => Range::Single,
            [0] => Range::To(End::Infinity),
            end if key.as_slice() >= end => return Err(WatchError::EmptyRange),
            end => Range::To(End::Key(end.to_vec())),
        };

        let state = self.streams.entry(stream).or_default();
        let id = if req.watch_id == 0 {
            while self.watchers.contains_key(&(stream, state.next_auto_id)) {
                state.next_auto_id = state.next_auto_id.saturating_add(1);
            }
            let id = state.next_auto_id;
            state.next_auto_id = state.next_auto_id.saturating_add(1);
            id
        } else if self.watchers.contains_key(&(stream, req.watch_id)) {
            return Err(WatchError::IdExists);
        } else {
            req.watch_id
        };

        // etcd's watchableStore.watch: synced when starting now or later.
        let synced = req.start_revision == 0 || req.start_revision > self.revision;
        let next_rev = if synced {
            req.start_revision.max(self.revision.saturating_add(1))
        } else {
            req.start_revision.max(1)
        };
        let watcher = Watcher {
            key,
            range,
            range_end: req.range_end.clone(),
            no_put: req.filters.contains(&WatchFilter::NoPut),
            no_delete: req.filters.contains(&WatchFilter::NoDelete),
            prev_kv: req.prev_kv,
            fragment: req.fragment,
            progress_notify: req.progress_notify,
            next_rev,
            synced,
            quiet: true,
        };
        let wref = (stream, id);
        match &watcher.range {
            Range::Single => {
                self.keys
                    .entry(watcher.key.clone())
                    .or_default()
                    .insert(wref);
            }
            Range::To(end) => self.ranges.insert(&watcher.key, end, wref),
        }
        if !synced {
            self.unsynced.insert(wref);
        }
        state.watches.insert(id);
        self.watchers.insert(wref, watcher);
        Ok(id)
    }

    /// Removes a watch, drops its undelivered events and queues etcd's
    /// `canceled` response.
    pub fn cancel(&mut self, stream: StreamId, id: WatchId) -> Result<(), WatchError> {
        if !self.remove_watcher((stream, id)) {
            return Err(WatchError::NotFound);
        }
        self.purge(stream, id);
        let resp = WatchResponse {
            header: header(self.revision),
            watch_id: id,
            canceled: true,
            ..WatchResponse::default()
        };
        self.push(stream, Kind::Control, resp);
        self.answer_deferred_progress(stream);
        Ok(())
    }

    /// Forgets a stream that ended: its watches and its queue.
    pub fn drop_stream(&mut self, stream: StreamId) {
        self.ready.remove(&stream);
        let Some(state) = self.streams.remove(&stream) else {
            return;
        };
        for id in state.watches {
            self.remove_watcher((stream, id));
        }
    }

    /// A client's progress request: one response with `watch_id = -1` and
    /// the current revision. etcd 3.4 answers at once; we answer once every
    /// watch of the stream is synced (as etcd 3.5 does), since the revision
    /// promises the client it has seen everything up to it.
    pub fn request_progress(&mut self, stream: StreamId) {
        self.streams.entry(stream).or_default().progress_requested = true;
        self.answer_deferred_progress(stream);
    }

    // ---- apply path ----

    /// Routes one revision's events (as the store's write returned them) to
    /// synced watchers. Never blocks: a watcher whose stream is full is
    /// demoted to catch up later. A revision at or below the hub's is
    /// ignored (a replay must not duplicate); one that skips revisions
    /// demotes every synced watcher, so the skipped ones come from history
    /// rather than going missing.
    pub fn on_apply(&mut self, events: &[Event], revision: i64) {
        if revision <= self.revision {
            return;
        }
        if revision > self.revision.saturating_add(1) {
            self.unsync_all();
        }
        self.revision = revision;

        // Matches, per watcher in event order (by index into `events`).
        let mut matched: Vec<(WatcherRef, usize)> = Vec::new();
        for (i, ev) in events.iter().enumerate() {
            if let Some(refs) = self.keys.get(&ev.kv.key) {
                matched.extend(refs.iter().map(|wref| (*wref, i)));
            }
            self.ranges
                .stab(&ev.kv.key, |wref| matched.push((*wref, i)));
        }
        if matched.is_empty() {
            return;
        }
        // Pairs are distinct, so this is the stable order: per stream, per
        // watch, events in order.
        matched.sort_unstable();

        // Neighbours (in watch order) that get the same response share a
        // run: on one key with the same options, a stream's watchers are
        // one run, whose response is queued once.
        let mut runs: Vec<Run> = Vec::new();
        // The stream of the watcher before (matches come stream by stream).
        let mut stream: Option<(StreamId, Option<&StreamState>)> = None;
        for group in matched.chunk_by(|a, b| a.0 == b.0) {
            let wref = group[0].0;
            let Some(w) = self.watchers.get(&wref) else {
                continue;
            };
            if !w.synced || w.next_rev > revision {
                continue;
            }
            let picks = group
                .iter()
                .map(|&(_, i)| i)
                .filter(|&i| events.get(i).is_some_and(|e| w.wants(e.kind)));
            let state = match stream {
                Some((id, state)) if id == wref.0 => state,
                _ => {
                    let state = self.streams.get(&wref.0);
                    stream = Some((wref.0, state));
                    state
                }
            };
            let open = state.and_then(|s| s.open.get(&wref.1).copied());
            if let Some(run) = runs.last_mut() {
                if run.stream == wref.0
                    && run.open == open
                    && run.prev_kv == w.prev_kv
                    && run.fragment == w.fragment
                    && run.picks.iter().copied().eq(picks.clone())
                {
                    run.ids.push(wref.1);
                    continue;
                }
            }
            let picks: Vec<usize> = picks.collect();
            // Everything filtered out: nothing to hand it (its `next_rev`
            // may lag over revisions it does not get, as over those it
            // does not match; see `unsync_all`).
            if picks.is_empty() {
                continue;
            }
            runs.push(Run {
                stream: wref.0,
                open,
                prev_kv: w.prev_kv,
                fragment: w.fragment,
                picks,
                ids: vec![wref.1],
            });
        }

        // An event that goes to anyone is copied once, into one allocation
        // every response it goes in shares.
        let mut shared: Vec<Option<Arc<Event>>> = vec![None; events.len()];
        for run in runs {
            if !self.has_room(run.stream, &run.ids) {
                for id in run.ids {
                    self.demote((run.stream, id), revision);
                }
                continue;
            }
            for id in &run.ids {
                if let Some(w) = self.watchers.get_mut(&(run.stream, *id)) {
                    w.next_rev = revision.saturating_add(1);
                    w.quiet = false;
                }
            }
            let shaped: Vec<SharedEvent> = run
                .picks
                .iter()
                .filter_map(|&i| {
                    let ev = events.get(i)?;
                    let event = shared
                        .get_mut(i)?
                        .get_or_insert_with(|| Arc::new(ev.clone()));
                    Some(SharedEvent {
                        event: event.clone(),
                        prev_kv: run.prev_kv,
                    })
                })
                .collect();
            self.push_events(run.stream, run.ids, run.fragment, shaped, revision);
        }
    }

    /// Moves unsynced watchers forward through the store's history, one
    /// batch of at least `batch` events (whole revisions; 0: all) each, at
    /// most `max_catch_up_watchers` of them per call (taking turns),
    /// skipping streams that are full. A watcher that reaches the store's
    /// revision turns synced; one whose next revision was compacted gets
    /// the compacted response and is removed.
    ///
    /// The store must be the one `on_apply` follows; if it is ahead of the
    /// hub, the hub takes its revision and every synced watcher catches up
    /// too.
    pub fn catch_up(&mut self, store: &Store, batch: usize) {
        let current = store.revision();
        if current < self.revision {
            // Not the store the hub follows (or not yet restored): serving
            // from it could repeat or skip revisions.
            return;
        }
        if current > self.revision {
            self.unsync_all();
            self.revision = current;
        }
        let limit = self.config.max_catch_up_watchers.max(1);
        let refs: Vec<WatcherRef> = match self.catch_up_cursor {
            Some(cursor) => self
                .unsynced
                .range((Bound::Excluded(cursor), Bound::Unbounded))
                .chain(self.unsynced.range(..=cursor))
                .take(limit)
                .copied()
                .collect(),
            None => self.unsynced.iter().take(limit).copied().collect(),
        };
        let mut touched = BTreeSet::new();
        // Watchers demoted together want the same history: read it once
        // per round for each (key, range end, start) and share the events.
        // Reads stop when the round's visits are spent; the round ends at
        // the first watcher that would need another read.
        let mut history: HashMap<(Vec<u8>, Vec<u8>, i64), History> = HashMap::new();
        let unlimited = self.config.max_catch_up_visits == 0;
        let mut visits_left = self.config.max_catch_up_visits;
        for wref in refs {
            if self.is_full(wref.0) {
                self.catch_up_cursor = Some(wref);
                continue;
            }
            let Some(w) = self.watchers.get(&wref) else {
                self.unsynced.remove(&wref);
                continue;
            };
            let read_key = (w.key.clone(), w.range_end.clone(), w.next_rev);
            if !history.contains_key(&read_key) {
                if !unlimited && visits_left == 0 {
                    break;
                }
                let read =
                    match store.history_since(w.next_rev, &w.key, &w.range_end, batch, visits_left)
                    {
                        Ok(read) => {
                            visits_left = visits_left.saturating_sub(read.visited.max(1));
                            History::Events(
                                Rc::new(read.events.into_iter().map(Arc::new).collect()),
                                read.through,
                            )
                        }
                        Err(MvccError::Compacted) => History::Compacted,
                        // No other error comes from history reads; leave the
                        // watcher for the next round rather than guess.
                        Err(_) => History::Unreadable,
                    };
                history.insert(read_key.clone(), read);
            }
            let Some(read) = history.get(&read_key).cloned() else {
                continue;
            };
            self.catch_up_cursor = Some(wref);
            touched.insert(wref.0);
            match read {
                History::Compacted => {
                    self.remove_watcher(wref);
                    self.purge(wref.0, wref.1);
                    // etcd sends exactly these fields (and a header with
                    // revision 0).
                    let resp = WatchResponse {
                        header: header(0),
                        watch_id: wref.1,
                        canceled: true,
                        compact_revision: store.compact_revision(),
                        ..WatchResponse::default()
                    };
                    self.push(wref.0, Kind::Control, resp);
                }
                History::Unreadable => {}
                History::Events(evs, through) => {
                    let done = through >= current;
                    let shaped: Vec<SharedEvent> = evs.iter().filter_map(|e| w.shape(e)).collect();
                    let next_rev = if done {
                        w.next_rev.max(current.saturating_add(1))
                    } else {
                        through.saturating_add(1)
                    };
                    let header_rev = if done { current } else { through };
                    let mut fragment = false;
                    if let Some(w) = self.watchers.get_mut(&wref) {
                        w.next_rev = next_rev;
                        if done {
                            w.synced = true;
                        }
                        if !shaped.is_empty() {
                            w.quiet = false;
                        }
                        fragment = w.fragment;
                    }
                    if done {
                        self.unsynced.remove(&wref);
                    }
                    if !shaped.is_empty() {
                        self.push_events(wref.0, vec![wref.1], fragment, shaped, header_rev);
                    }
                }
            }
        }
        for stream in touched {
            self.answer_deferred_progress(stream);
        }
    }

    /// Periodic progress notifications: each `progress_interval_ms`, every
    /// synced `progress_notify` watch that had no events queued since the
    /// last one gets an empty response at the current revision (etcd's
    /// sendLoop). The first call only starts the clock.
    pub fn tick_progress(&mut self, now_ms: u64) {
        let due = match self.next_progress_ms {
            None => {
                self.next_progress_ms =
                    Some(now_ms.saturating_add(self.config.progress_interval_ms));
                return;
            }
            Some(due) => due,
        };
        if now_ms < due {
            return;
        }
        self.next_progress_ms = Some(now_ms.saturating_add(self.config.progress_interval_ms));
        let mut send = Vec::new();
        for (wref, w) in self.watchers.iter_mut() {
            if !w.progress_notify {
                continue;
            }
            if w.quiet && w.synced {
                send.push(*wref);
            }
            w.quiet = true;
        }
        // Each stream's notifications in watch order.
        send.sort_unstable();
        for (stream, id) in send {
            let resp = WatchResponse {
                header: header(self.revision),
                watch_id: id,
                ..WatchResponse::default()
            };
            self.push(stream, Kind::Progress, resp);
        }
    }

    /// After a snapshot install replaced the store: every watcher resumes
    /// from history at its own next revision (or gets the compacted
    /// response if the snapshot no longer has it).
    pub fn restore(&mut self, revision: i64) {
        self.unsync_all();
        self.revision = revision;
    }

    // ---- outputs ----

    /// Streams that gained responses since the last call.
    pub fn take_ready(&mut self) -> Vec<StreamId> {
        std::mem::take(&mut self.ready).into_iter().collect()
    }

    /// Everything `stream` has queued, oldest first. All of it, so the
    /// fragments of one revision are never split between a drain and a
    /// later demotion.
    pub fn take_pending(&mut self, stream: StreamId) -> Vec<PendingResponse> {
        let Some(state) = self.streams.get_mut(&stream) else {
            return Vec::new();
        };
        state.bytes = 0;
        state.open.clear();
        std::mem::take(&mut state.queue)
            .into_iter()
            .map(|q| q.resp)
            .collect()
    }

    /// [`WatchHub::take_pending`] as owned responses, one per watch.
    #[cfg(test)]
    pub fn take_responses(&mut self, stream: StreamId) -> Vec<WatchResponse> {
        self.take_pending(stream)
            .into_iter()
            .flat_map(PendingResponse::into_responses)
            .collect()
    }

    // ---- internals ----

    fn is_full(&self, stream: StreamId) -> bool {
        self.streams.get(&stream).is_some_and(|s| {
            s.queue.len() >= self.config.max_pending_responses
                || s.bytes >= self.config.max_pending_bytes
        })
    }

    /// Whether watches `ids` of `stream` may be handed more events now:
    /// the stream is below its bounds, or below the byte bound with an
    /// open response for each of them (joining one adds no response).
    fn has_room(&self, stream: StreamId, ids: &[WatchId]) -> bool {
        self.streams.get(&stream).is_none_or(|s| {
            let bytes_ok = s.bytes < self.config.max_pending_bytes;
            bytes_ok
                && (s.queue.len() < self.config.max_pending_responses
                    || ids.iter().all(|id| s.open.contains_key(id)))
        })
    }

    /// Queues a response without events.
    fn push(&mut self, stream: StreamId, kind: Kind, resp: WatchResponse) {
        self.push_pending(
            stream,
            kind,
            PendingResponse::control(resp),
            RESPONSE_OVERHEAD,
        );
    }

    /// Queues `resp`, which its caller has sized (`each`: the estimate for
    /// one of its watches; the stream's byte bound counts it per watch).
    fn push_pending(&mut self, stream: StreamId, kind: Kind, resp: PendingResponse, each: usize) {
        let state = self.streams.entry(stream).or_default();
        let bytes = each.saturating_mul(resp.watch_count());
        state.bytes = state.bytes.saturating_add(bytes);
        if kind == Kind::Events && !resp.head.fragment {
            let at = state.queue.len();
            for id in resp.watch_ids() {
                state.open.insert(id, at);
            }
        } else {
            // Whatever this says (created, canceled, progress, a fragment)
            // must stay after the events queued before it.
            state.open.clear();
        }
        state.queue.push_back(Queued {
            kind,
            each,
            bytes,
            resp,
        });
        self.ready.insert(stream);
    }

    /// Adds `events` (whole revisions after everything the watches have
    /// queued) to the open response of watches `ids`, if it is open for
    /// each of them and for no other watch, and the result stays under
    /// `max_response_bytes`; `events` back if not.
    fn join_open(
        &mut self,
        stream: StreamId,
        ids: &[WatchId],
        events: Vec<SharedEvent>,
        bytes: usize,
        hdr: i64,
    ) -> Result<(), Vec<SharedEvent>> {
        let limit = self.config.max_response_bytes;
        let Some(state) = self.streams.get_mut(&stream) else {
            return Err(events);
        };
        let Some(&at) = ids.first().and_then(|id| state.open.get(id)) else {
            return Err(events);
        };
        // Each watch's open response is this one, and it is for as many
        // watches: for exactly these (IDs in a response are distinct).
        if !ids.iter().all(|id| state.open.get(id) == Some(&at)) {
            return Err(events);
        }
        let Some(queued) = state.queue.get_mut(at) else {
            return Err(events);
        };
        // `bytes` counts a response's overhead once; the joined one has it.
        let added = bytes.saturating_sub(RESPONSE_OVERHEAD);
        if queued.kind != Kind::Events
            || queued.resp.watch_count() != ids.len()
            || queued.each.saturating_add(added) >= limit
        {
            return Err(events);
        }
        let added_all = added.saturating_mul(ids.len());
        queued.each = queued.each.saturating_add(added);
        queued.bytes = queued.bytes.saturating_add(added_all);
        queued.resp.head.header.revision = hdr;
        queued.resp.events.extend(events);
        state.bytes = state.bytes.saturating_add(added_all);
        self.ready.insert(stream);
        Ok(())
    }

    /// Queues events for watches `ids` of `stream` (one response for all
    /// of them): whole revisions per response, starting a new response
    /// when the next revision would take it past `max_response_bytes` (a
    /// catch-up batch can span many revisions). A single revision larger
    /// than that is split per etcd's `sendFragments` if the watches asked
    /// for fragments, else sent whole. The last response carries
    /// `header_rev`; earlier ones their last event's revision.
    fn push_events(
        &mut self,
        stream: StreamId,
        ids: Vec<WatchId>,
        fragment: bool,
        events: Vec<SharedEvent>,
        header_rev: i64,
    ) {
        if ids.is_empty() {
            return;
        }
        let limit = self.config.max_response_bytes;
        // The common case: everything fits in one response.
        let total = RESPONSE_OVERHEAD + events.iter().map(event_bytes).sum::<usize>();
        if total < limit {
            if let Err(events) = self.join_open(stream, &ids, events, total, header_rev) {
                self.push_response(stream, &ids, events, total, header_rev, false);
            }
            return;
        }
        let mut chunks: Vec<(Vec<SharedEvent>, usize)> = Vec::new();
        let mut chunk: Vec<SharedEvent> = Vec::new();
        let mut size = RESPONSE_OVERHEAD;
        let mut events = events.into_iter().peekable();
        while let Some(first) = events.next() {
            let rev = first.revision();
            let mut group = vec![first];
            while let Some(ev) = events.next_if(|e| e.revision() == rev) {
                group.push(ev);
            }
            let group_size: usize = group.iter().map(event_bytes).sum();
            if !chunk.is_empty() && size + group_size >= limit {
                chunks.push((std::mem::take(&mut chunk), size));
                size = RESPONSE_OVERHEAD;
            }
            size += group_size;
            chunk.extend(group);
        }
        if !chunk.is_empty() {
            chunks.push((chunk, size));
        }
        let count = chunks.len();
        for (i, (chunk, size)) in chunks.into_iter().enumerate() {
            let last_rev = chunk.last().map_or(header_rev, SharedEvent::revision);
            let hdr = if i + 1 == count { header_rev } else { last_rev };
            if fragment && size >= limit && chunk.len() >= 2 {
                self.push_fragments(stream, &ids, chunk, hdr);
            } else {
                self.push_response(stream, &ids, chunk, size, hdr, false);
            }
        }
    }

    /// Queues one events response for watches `ids` (at least one).
    fn push_response(
        &mut self,
        stream: StreamId,
        ids: &[WatchId],
        events: Vec<SharedEvent>,
        bytes: usize,
        hdr: i64,
        more: bool,
    ) {
        let Some((&first, others)) = ids.split_first() else {
            return;
        };
        let head = WatchResponse {
            header: header(hdr),
            watch_id: first,
            fragment: more,
            ..WatchResponse::default()
        };
        let resp = PendingResponse {
            head,
            events,
            more_ids: others.to_vec(),
        };
        self.push_pending(stream, Kind::Events, resp, bytes);
    }

    /// etcd's `sendFragments`: as many events per part as fit under the
    /// limit (at least one), `fragment = true` on all parts but the last.
    fn push_fragments(
        &mut self,
        stream: StreamId,
        ids: &[WatchId],
        events: Vec<SharedEvent>,
        hdr: i64,
    ) {
        let limit = self.config.max_response_bytes;
        let mut part: Vec<SharedEvent> = Vec::new();
        let mut size = RESPONSE_OVERHEAD;
        for ev in events {
            let bytes = event_bytes(&ev);
            if !part.is_empty() && size + bytes >= limit {
                self.push_response(stream, ids, std::mem::take(&mut part), size, hdr, true);
                size = RESPONSE_OVERHEAD;
            }
            size += bytes;
            part.push(ev);
        }
        self.push_response(stream, ids, part, size, hdr, false);
        // A fragmented revision's last part stays as it was split.
        if let Some(state) = self.streams.get_mut(&stream) {
            for id in ids {
                state.open.remove(id);
            }
        }
    }

    /// Drops a watch's queued events and progress notes. A queued
    /// stream-wide progress response is dropped too (it may vouch for
    /// events just removed) and re-requested.
    fn purge(&mut self, stream: StreamId, id: WatchId) {
        let Some(state) = self.streams.get_mut(&stream) else {
            return;
        };
        let mut rerequest = false;
        let mut freed = 0usize;
        // Positions move.
        state.open.clear();
        state.queue.retain_mut(|q| {
            match q.kind {
                Kind::Control => return true,
                Kind::Events | Kind::Progress => {
                    if !q.resp.watch_ids().any(|w| w == id) {
                        return true;
                    }
                    // Shared with other watches: only this one leaves it.
                    if q.resp.remove_watch(id) {
                        q.bytes = q.bytes.saturating_sub(q.each);
                        freed += q.each;
                        return true;
                    }
                }
                Kind::StreamProgress => rerequest = true,
            }
            freed += q.bytes;
            false
        });
        state.bytes = state.bytes.saturating_sub(freed);
        if rerequest {
            state.progress_requested = true;
        }
    }

    /// A synced watcher that could not be given revision `missed` resumes
    /// from history there. What it already has queued stays queued (whole
    /// revisions, all before `missed`, and the queue is bounded): dropping
    /// it would only mean reading the same revisions from history again.
    fn demote(&mut self, wref: WatcherRef, missed: i64) {
        #[cfg(test)]
        {
            self.demotions += 1;
        }
        if let Some(w) = self.watchers.get_mut(&wref) {
            w.next_rev = missed;
            w.synced = false;
            self.unsynced.insert(wref);
        }
    }

    /// Every synced watcher resumes from history after the hub's current
    /// revision (call before the revision moves). Its `next_rev` may lag
    /// behind that over revisions it was not handed anything from (it is
    /// only moved when it is), so it is brought up here: a synced watcher
    /// has been handed everything through the hub's revision.
    fn unsync_all(&mut self) {
        let next = self.revision.saturating_add(1);
        for (wref, w) in self.watchers.iter_mut() {
            if w.synced {
                w.synced = false;
                w.next_rev = w.next_rev.max(next);
                self.unsynced.insert(*wref);
            }
        }
    }

    fn remove_watcher(&mut self, wref: WatcherRef) -> bool {
        let Some(w) = self.watchers.remove(&wref) else {
            return false;
        };
        if let Some(state) = self.streams.get_mut(&wref.0) {
            state.watches.remove(&wref.1);
        }
        match &w.range {
            Range::Single => {
                if let Some(set) = self.keys.get_mut(&w.key) {
                    set.remove(&wref);
                    if set.is_empty() {
                        self.keys.remove(&w.key);
                    }
                }
            }
            Range::To(end) => {
                self.ranges.remove(&w.key, end, &wref);
            }
        }
        self.unsynced.remove(&wref);
        true
    }

    /// Sends a deferred stream progress response once nothing on the
    /// stream is behind.
    fn answer_deferred_progress(&mut self, stream: StreamId) {
        let requested = self
            .streams
            .get(&stream)
            .is_some_and(|s| s.progress_requested);
        if !requested {
            return;
        }
        let behind = self
            .unsynced
            .range((stream, WatchId::MIN)..=(stream, WatchId::MAX))
            .next()
            .is_some();
        if behind {
            return;
        }
        if let Some(state) = self.streams.get_mut(&stream) {
            state.progress_requested = false;
        }
        let resp = WatchResponse {
            header: header(self.revision),
            watch_id: INVALID_WATCH_ID,
            ..WatchResponse::default()
        };
        self.push(stream, Kind::StreamProgress, resp);
    }
}
