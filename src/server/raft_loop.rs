//! The Raft driver: the one task that owns the Raft core.
//!
//! Everything that changes Raft state arrives as an [`Input`] on one
//! channel (ticks from a ticker task, proposals and reads from callers,
//! peer messages from the peer transport, completions from the WAL writer
//! and the snapshotter), so the core is only
//! ever touched from this loop and its order of events is the channel's.
//! After each batch of inputs the loop drains [`raft::Ready`]s in the order
//! the core documents:
//!
//! 1. messages that may go before persistence are handed to the peer
//!    transport ([`Peers::send`] never blocks; a lone voter sends none);
//! 2. entries, hard state and any snapshot go to the WAL writer thread,
//!    which appends and fsyncs them *off this loop* (group commit: all jobs
//!    queued during one fsync go into the next), so ticks and heartbeats
//!    never wait on the disk; the writer reports back with
//!    [`Input::Persisted`] naming the last append job durable, and only then
//!    are the remaining messages (vote grants, append acknowledgements) of
//!    the `Ready`s up to that job sent and the core told (the leader counts
//!    itself toward commit only once durable);
//! 3. committed entries are applied to the [`StateMachine`] and their
//!    callers answered;
//! 4. confirmed reads are released once the applied index reaches them.
//!
//! Leases and watches hang off the apply step: each applied write's events
//! go to the [`Watchers`] hub in the same critical section (the hub never
//! blocks: slow watchers are demoted, not waited for), and the loop drives
//! the lessor's leader-local duties: `promote` when this member becomes
//! leader, `demote` when it stops, and every 500 ms (an
//! [`Input::CheckLeases`] from a second ticker) it proposes a revoke for
//! each lease `expired` names. A `LeaseGrant` without an ID gets one here,
//! before it is proposed, so every member applies the same ID.
//!
//! A snapshot is due once `snapshot_count` entries were applied since the
//! last one *and* the log written since then reaches a quarter of the last
//! snapshot's size (see [`snapshot_due`]): each snapshot costs O(state), so
//! it waits until it covers a share of the state's size in log, and writing
//! snapshots costs at most ~4 bytes per byte logged however large the state
//! grows, while the WAL kept (and what a restart replays) stays under a
//! quarter of the state (and 20 counts of entries). The state machine is
//! then cloned (cheap),
//! serialized on the blocking pool, and handed to the writer, which saves it
//! and releases the WAL segments it covers. A snapshot a follower needs is
//! taken at once.
//!
//! A storage failure is fatal: the loop stops, every caller gets
//! `etcdserver: server stopped`, and the node reports why it stopped.

use super::held::{HeldCall, HeldCalls};
use super::members::Members;
use super::peer::Peers;
use super::state_machine::StateMachine;
use super::timing::{AutoTiming, Timing, TimingFlags};
use super::watchers::Watchers;
use crate::lease::{grant_ttl, lease_id_from, LeaseConfig, LEASE_REVOKE_RATE};
use crate::metrics::SERVER;
use crate::raft::{self, PersistToken, ProposeError, Role};
use crate::runtime::{self, channel};
use crate::storage::durable_log::{DurableLog, SnapshotWriter};
use crate::storage::StorageError;
use crate::wire::command::{AuthHeader, Command};
use crate::wire::raft::{
    ConfChange, ConfChangeType, ConfState, Entry, EntryType, HardState, Message, MessageBody,
    NodeId, SnapshotMeta,
};
use qed_wire::lease::LeaseRevokeRequest;
use qed_wire::peer::ConfContext;
use qed_wire::{Error, Reply, Request};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

/// What the loop reacts to.
pub enum Input {
    Tick,
    /// A Raft message from a peer.
    Step(Message),
    /// Time for the leader to look for expired leases.
    CheckLeases,
    Propose {
        request: Request,
        /// Who proposes it, checked at which auth revision.
        auth: AuthHeader,
        reply: channel::Sender<Reply>,
    },
    /// A membership change (on the leader); answered once it is applied.
    /// `peer_urls`: where an added member listens.
    ProposeConfChange {
        change: ConfChange,
        peer_urls: Vec<String>,
        reply: channel::Sender<Result<(), Error>>,
    },
    /// MoveLeader: hand leadership to this voter (TimeoutNow once it has
    /// caught up); answered when the core has started the transfer.
    TransferLeader {
        to: NodeId,
        reply: channel::Sender<Result<(), Error>>,
    },
    /// A linearizable read wants to know when it may read.
    ReadIndex {
        reply: channel::Sender<Result<(), Error>>,
    },
    /// The WAL writer made a batch durable (or failed): every append job
    /// numbered up to `through`.
    Persisted {
        tokens: Vec<PersistToken>,
        through: u64,
        result: Result<(), String>,
    },
    /// The snapshotter wrote the state machine as of `meta.index` to a
    /// durable snapshot file (and hands back its bytes, shared: the loop
    /// never copies an image).
    SnapshotSaved {
        meta: SnapshotMeta,
        data: Result<SavedState, String>,
    },
}

/// The state in a snapshot file the snapshotter saved.
#[derive(Debug)]
pub struct SavedState {
    /// Its size in bytes.
    bytes: u64,
    /// Its image to send followers, the saved file mapped (`None`: no
    /// image kept).
    image: Option<raft::Image>,
}

/// Raft facts other tasks read without asking the loop.
#[derive(Default)]
pub struct RaftStatus {
    pub term: AtomicU64,
    pub leader: AtomicU64,
    pub commit: AtomicU64,
    pub applied: AtomicU64,
    /// Leader: the highest index it told followers is durable in its term
    /// (`raft::Node::announced_durable`): a follower may have committed
    /// and answered writes up to there before this member's commit index
    /// covers them, so an answer that skips ReadIndex waits for it too.
    pub announced_durable: AtomicU64,
    pub last_index: AtomicU64,
    /// Peer messages in the inbox, not yet stepped.
    pub queued_steps: AtomicU64,
    /// Proposals and reads whose callers wait on the loop.
    pub waiting_calls: AtomicU64,
    /// A tick (or a lease check) is in the inbox, not yet handled: the
    /// tickers send no other, so a loop that fell behind gets one tick, not
    /// a burst of them (a burst would run out election timeouts at once and
    /// CheckQuorum would depose a leader that was only busy).
    tick_queued: AtomicBool,
    leases_queued: AtomicBool,
    /// The tick period (one heartbeat) in microseconds, which the ticker
    /// reads before each sleep (`--heartbeat-interval auto` changes it).
    tick_micros: AtomicU64,
}

/// Timing and snapshot settings for the loop.
#[derive(Debug, Clone, Copy)]
pub struct LoopOptions {
    /// etcd's `--heartbeat-interval`: one Raft tick.
    pub tick: Duration,
    /// etcd's `--snapshot-count`: the fewest applied entries between
    /// snapshots (see [`snapshot_due`] for the size condition).
    pub snapshot_count: u64,
    /// Bytes of state in the snapshot the node recovered from (0: none).
    pub snapshot_bytes: u64,
    /// etcd's `--election-timeout`: a new leader extends every lease by it.
    pub election_timeout: Duration,
    /// etcd's `--strict-reconfig-check`: refuse membership changes that
    /// would leave fewer started (or reachable) voters than a quorum.
    pub strict_reconfig_check: bool,
    /// `auto` timing: `tick` and `election_timeout` are where it starts.
    pub auto_timing: Option<TimingFlags>,
}

/// A snapshot waits until the log written since the last one is at least
/// 1/`SNAPSHOT_LOG_SHARE` of that snapshot's size.
const SNAPSHOT_LOG_SHARE: u64 = 4;
/// A snapshot is due after `SNAPSHOT_MAX_COUNTS` times `--snapshot-count`
/// entries whatever their size: a restart replays at most that many (small
/// entries cost more to apply per byte than a snapshot costs to load).
const SNAPSHOT_MAX_COUNTS: u64 = 20;
/// Bytes counted per applied entry on top of its data: the WAL record's
/// framing, index and term (about).
const ENTRY_OVERHEAD: u64 = 16;

/// Whether a snapshot is due, `entries` and `log_bytes` having been applied
/// since the last one, which held `last_snapshot_bytes` of state: at least
/// `snapshot_count` entries (etcd's `--snapshot-count`), and a log at least
/// a quarter of that snapshot's size or [`SNAPSHOT_MAX_COUNTS`] times the
/// count in entries. The snapshot costs O(state) and the
/// log it replaces grows with the writes, so snapshotting costs at most
/// `SNAPSHOT_LOG_SHARE` bytes written per byte logged whatever the state's
/// size (with the count alone, a large state was rewritten whole every
/// 10,000 entries: quadratic work), and the WAL kept and replayed on
/// restart stays at most a quarter of the state (plus a segment), in at
/// most 20 counts of entries.
fn snapshot_due(
    entries: u64,
    log_bytes: u64,
    last_snapshot_bytes: u64,
    snapshot_count: u64,
) -> bool {
    entries >= snapshot_count
        && (log_bytes.saturating_mul(SNAPSHOT_LOG_SHARE) >= last_snapshot_bytes
            || entries >= snapshot_count.saturating_mul(SNAPSHOT_MAX_COUNTS))
}

/// How often `auto` timing looks at the peer links.
const RETIME_EVERY: Duration = Duration::from_secs(5);
/// Packets a link must have sent since the last look for its figures to
/// count (an idle link's RTT is stale, its loss share noise).
const RETIME_MIN_PACKETS: u64 = 20;

/// `auto` timing's state in the loop: the pure estimator, and each
/// member's packet counts at the last look (loss is measured between
/// looks).
struct AutoTimer {
    timing: AutoTiming,
    last_look: Instant,
    counts: HashMap<NodeId, (u64, u64)>,
}

/// Peer messages the inbox may hold (each at most a peer frame; appends
/// are ~1 MiB at most, most messages are tiny).
const MAX_QUEUED_STEPS: u64 = 4096;

/// etcd's `maxGapBetweenApplyAndCommitIndex`: past this many committed
/// entries not yet applied, new proposals are refused with `too many
/// requests` rather than queued behind them.
const MAX_GAP_BETWEEN_APPLY_AND_COMMIT: u64 = 5000;

/// Proposals and reads that may wait on the loop at once; more are refused
/// with `too many requests` (each holds a waiter, and a proposal its entry,
/// until answered).
const MAX_WAITING_CALLS: u64 = 16 * 1024;

/// A read waiting for its ReadIndex round: the tick it asked at (`None`
/// once a newer round was asked for the same caller), and its caller.
struct WaitingRead {
    asked: Option<u64>,
    reply: channel::Sender<Result<(), Error>>,
}

/// Ticks between sweeps for callers that gave up waiting.
const FORGET_LEFT_CALLERS_EVERY: u64 = 50;

/// How often the leader looks for expired leases (etcd: 500 ms).
const LEASE_CHECK_EVERY: Duration = Duration::from_millis(500);

/// How callers reach the loop.
#[derive(Clone)]
pub struct RaftHandle {
    inbox: channel::Sender<Input>,
    pub status: Arc<RaftStatus>,
    /// How long a caller waits for a proposal or read (`None`: a lone
    /// member loses nothing on the way, so it waits as long as it takes).
    answer_timeout: Option<Duration>,
    /// `--heartbeat-interval` and `--election-timeout` (MoveLeader waits
    /// in ticks for at most two election timeouts).
    tick: Duration,
    election_timeout: Duration,
}

/// A caller counted in [`RaftStatus::waiting_calls`] until dropped.
struct Waiting<'a>(&'a AtomicU64);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl RaftHandle {
    /// Counts a caller that will wait on the loop, or refuses it when too
    /// many already do.
    fn admit(&self) -> Result<Waiting<'_>, Error> {
        let waiting = &self.status.waiting_calls;
        if waiting.fetch_add(1, Ordering::Relaxed) >= MAX_WAITING_CALLS {
            waiting.fetch_sub(1, Ordering::Relaxed);
            return Err(Error::TooManyRequests);
        }
        Ok(Waiting(waiting))
    }

    /// Proposes a write and waits until it is applied. Refused with etcd's
    /// `too many requests` while apply lags commit by more than
    /// [`MAX_GAP_BETWEEN_APPLY_AND_COMMIT`] entries or too many callers wait.
    pub async fn propose(&self, request: Request, auth: AuthHeader) -> Reply {
        let commit = self.status.commit.load(Ordering::Relaxed);
        let applied = self.status.applied.load(Ordering::Relaxed);
        if commit > applied + MAX_GAP_BETWEEN_APPLY_AND_COMMIT {
            return Err(Error::TooManyRequests);
        }
        let _waiting = self.admit()?;
        let (reply, answer) = channel::bounded(1);
        self.inbox
            .send(Input::Propose {
                request,
                auth,
                reply,
            })
            .await
            .map_err(|_| Error::Stopped)?;
        wait_answer(&answer, self.answer_timeout).await
    }

    /// Waits until a read at this moment may be served linearizably from
    /// the local state machine.
    pub async fn read_index(&self) -> Result<(), Error> {
        let _waiting = self.admit()?;
        let (reply, answer) = channel::bounded(1);
        self.inbox
            .send(Input::ReadIndex { reply })
            .await
            .map_err(|_| Error::Stopped)?;
        wait_answer(&answer, self.answer_timeout).await
    }

    /// Proposes a membership change and waits until it is applied (the
    /// member table is updated by then).
    pub async fn propose_conf_change(
        &self,
        change: ConfChange,
        peer_urls: Vec<String>,
    ) -> Result<(), Error> {
        let (reply, answer) = channel::bounded(1);
        self.inbox
            .send(Input::ProposeConfChange {
                change,
                peer_urls,
                reply,
            })
            .await
            .map_err(|_| Error::Stopped)?;
        wait_answer(&answer, self.answer_timeout).await
    }

    /// etcd's MoveLeader on the leader: starts a transfer to `to` (etcd's
    /// `not leader` elsewhere, `bad leader transferee` if `to` is not
    /// another voter) and waits, a tick at a time, until `to` leads; after
    /// two election timeouts (the core gives up after one) etcd's `leader
    /// transfer took too long`.
    pub async fn move_leader(&self, to: NodeId) -> Result<(), Error> {
        let (reply, answer) = channel::bounded(1);
        self.inbox
            .send(Input::TransferLeader { to, reply })
            .await
            .map_err(|_| Error::Stopped)?;
        answer.recv().await.map_err(|_| Error::Stopped)??;
        let deadline = Instant::now() + 2 * self.election_timeout;
        while self.status.leader.load(Ordering::Relaxed) != to {
            if Instant::now() >= deadline {
                return Err(Error::TimeoutLeaderTransfer);
            }
            runtime::sleep(self.tick).await;
        }
        Ok(())
    }

    /// Hands a peer's message to the loop without blocking the peer
    /// stream's reader. Peer messages in the inbox are bounded: past
    /// [`MAX_QUEUED_STEPS`] (a loop far behind its peers) they are dropped,
    /// which Raft tolerates, rather than piling up in memory.
    pub fn step(&self, message: Message) {
        let queued = &self.status.queued_steps;
        if queued.fetch_add(1, Ordering::Relaxed) >= MAX_QUEUED_STEPS {
            queued.fetch_sub(1, Ordering::Relaxed);
            log::debug!(
                "raft loop behind; dropped a message from {:x}",
                message.from
            );
            return;
        }
        if self.inbox.try_send(Input::Step(message)).is_err() {
            queued.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// Waits for the loop's answer. With peers, a forwarded proposal or read may
/// be lost on the way to the leader; the caller gets etcd's timeout instead
/// of waiting forever (the loop forgets waiters whose caller left).
async fn wait_answer<T>(
    answer: &channel::Receiver<Result<T, Error>>,
    limit: Option<Duration>,
) -> Result<T, Error> {
    match limit {
        None => answer.recv().await.map_err(|_| Error::Stopped)?,
        Some(limit) => match runtime::timeout(limit, answer.recv()).await {
            Ok(answer) => answer.map_err(|_| Error::Stopped)?,
            Err(_) => Err(Error::Timeout),
        },
    }
}

/// A batch for the WAL writer thread.
enum PersistJob {
    Append {
        hard_state: Option<HardState>,
        entries: Vec<Entry>,
        token: Option<PersistToken>,
        /// Needs an fsync before the token is reported.
        sync: bool,
        /// Numbers append jobs, so the loop knows which messages may go.
        seq: u64,
    },
    /// A snapshot from the leader: saved and marked in order with the log
    /// (the core's bytes, shared, not copied).
    Snapshot {
        meta: SnapshotMeta,
        data: raft::Image,
    },
    /// Our own snapshot file is durable: record it and release segments.
    SnapshotMarker { meta: SnapshotMeta },
}

/// Starts the loop, its ticker and its WAL writer. The core must already
/// reflect what `log` recovered and `state` must be restored to match.
pub fn start(
    mut core: raft::Node,
    log: DurableLog,
    state: Arc<RwLock<StateMachine>>,
    watchers: Arc<Watchers>,
    peers: Option<Arc<Peers>>,
    members: Arc<Members>,
    options: LoopOptions,
) -> (RaftHandle, channel::Receiver<String>) {
    let (inbox, inputs) = channel::unbounded();
    let (stopped_tx, stopped) = channel::bounded(1);
    let status = Arc::new(RaftStatus::default());
    let snapshots = log.snapshot_writer();
    let jobs = spawn_writer(log, inbox.clone());
    status.tick_micros.store(
        u64::try_from(options.tick.as_micros()).unwrap_or(u64::MAX),
        Ordering::Relaxed,
    );
    spawn_ticker(inbox.clone(), status.clone(), false);
    spawn_ticker(inbox.clone(), status.clone(), true);
    let timer = options.auto_timing.map(|flags| AutoTimer {
        timing: AutoTiming::new(
            flags,
            Timing {
                heartbeat: options.tick,
                election_ticks: u32::try_from(
                    options.election_timeout.as_micros() / options.tick.as_micros().max(1),
                )
                .unwrap_or(u32::MAX),
            },
        ),
        last_look: Instant::now(),
        counts: HashMap::new(),
    });
    let snapshot_base = core.status().first_index.saturating_sub(1);
    let replay_through = Some(core.status().last_index).filter(|&i| i > snapshot_base);
    let core_id = core.id();
    let lease_config = state
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .identity()
        .0
        .lease;
    // A forwarded proposal may be lost; etcd gives up after its request
    // timeout (5 s) plus two election timeouts.
    // A cluster of one (which listens for peers only so it can grow) has
    // no way to lose a proposal: it waits as long as it takes.
    let answer_timeout = (peers.is_some() && members.ids().len() > 1)
        .then(|| Duration::from_secs(5) + 2 * options.election_timeout);
    // A lone voter need not wait out an election timeout: tick until it
    // campaigns; the loop persists its vote and it leads at once.
    if core.conf_state().voters == [core.id()] {
        for _ in 0..1000 {
            if core.status().role != Role::Follower {
                break;
            }
            core.tick();
        }
    }
    let mut driver = Driver {
        core,
        state,
        watchers,
        leading: false,
        status: status.clone(),
        jobs,
        snapshots,
        inbox: inbox.clone(),
        proposals: HashMap::new(),
        conf_waiters: HashMap::new(),
        members,
        removed: false,
        held: HeldCalls::default(),
        reads: HashMap::new(),
        confirmed_reads: BTreeMap::new(),
        ids: CommandIds::new(core_id),
        peers,
        after_persist: VecDeque::new(),
        write_seq: 0,
        durable_seq: 0,
        ticks: 0,
        options,
        snapshot_base,
        log_bytes: 0,
        snapshot_log_bytes: 0,
        snapshot_bytes: options.snapshot_bytes,
        taking_log_bytes: 0,
        replay_through,
        heap_trim: crate::heap::QuietTrim::new(snapshot_base, Instant::now()),
        synced_vote: (0, 0),
        snapshotting: false,
        lease_config,
        followed: (0, 0),
        timer,
    };
    runtime::spawn(async move {
        let why = driver.run(inputs).await;
        log::error!("raft loop stopped: {why}");
        let _ = stopped_tx.send(why).await;
    });
    (
        RaftHandle {
            inbox,
            status,
            answer_timeout,
            tick: options.tick,
            election_timeout: options.election_timeout,
        },
        stopped,
    )
}

/// Sends `Tick` every tick period (`RaftStatus::tick_micros`), or with
/// `leases` `CheckLeases` every [`LEASE_CHECK_EVERY`], unless the last one
/// is still in the inbox (see [`RaftStatus::tick_queued`]).
fn spawn_ticker(inbox: channel::Sender<Input>, status: Arc<RaftStatus>, leases: bool) {
    runtime::spawn(async move {
        loop {
            let every = if leases {
                LEASE_CHECK_EVERY
            } else {
                Duration::from_micros(status.tick_micros.load(Ordering::Relaxed).max(1000))
            };
            runtime::sleep(every).await;
            let (queued, input) = if leases {
                (&status.leases_queued, Input::CheckLeases)
            } else {
                (&status.tick_queued, Input::Tick)
            };
            if queued.swap(true, Ordering::AcqRel) {
                continue;
            }
            if inbox.send(input).await.is_err() {
                return;
            }
        }
    });
}

/// Command IDs and read contexts, etcd's way (`idutil.Generator`): 16 bits
/// from the member ID, then 48 bits that start at the boot time in
/// milliseconds (shifted left 8) and count up. Unique per member across
/// restarts (as long as a run does not issue more than 256 IDs per
/// millisecond of downtime), and across members whose IDs differ in those
/// 16 bits. A collision could only hand a caller another member's result,
/// so the prefix folds all 64 bits of the member ID.
struct CommandIds {
    prefix: u64,
    suffix: u64,
}

impl CommandIds {
    const SUFFIX_BITS: u32 = 48;
    const SUFFIX_MASK: u64 = (1 << Self::SUFFIX_BITS) - 1;

    fn new(member: u64) -> Self {
        let folded = (member ^ (member >> 16) ^ (member >> 32) ^ (member >> 48)) & 0xffff;
        let millis = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        CommandIds {
            prefix: folded << Self::SUFFIX_BITS,
            suffix: (millis << 8) & Self::SUFFIX_MASK,
        }
    }

    fn next(&mut self) -> u64 {
        self.suffix = (self.suffix + 1) & Self::SUFFIX_MASK;
        self.prefix | self.suffix
    }
}

struct Driver {
    core: raft::Node,
    state: Arc<RwLock<StateMachine>>,
    watchers: Arc<Watchers>,
    /// Whether the lessor was last promoted (this member leads).
    leading: bool,
    status: Arc<RaftStatus>,
    jobs: std::sync::mpsc::Sender<PersistJob>,
    /// Writes our own snapshot files, off the WAL writer.
    snapshots: SnapshotWriter,
    inbox: channel::Sender<Input>,
    /// Callers waiting for their proposal to apply, by command ID.
    proposals: HashMap<u64, channel::Sender<Reply>>,
    /// Membership changes waiting to apply, by the ID in their context.
    conf_waiters: HashMap<u64, channel::Sender<Result<(), Error>>>,
    /// The member table, kept in step with the configuration.
    members: Arc<Members>,
    /// This member applied its own removal.
    removed: bool,
    /// Calls that came while no leader could take them (see `held`).
    held: HeldCalls,
    /// Reads waiting for the core to confirm an index, by context, with
    /// the tick they asked at.
    reads: HashMap<u64, WaitingRead>,
    /// Reads confirmed at an index, waiting for apply to reach it.
    confirmed_reads: BTreeMap<u64, Vec<channel::Sender<Result<(), Error>>>>,
    ids: CommandIds,
    /// The other members (`None` alone: a lone voter sends nothing).
    peers: Option<Arc<Peers>>,
    /// Messages that may leave once append job `seq` is durable.
    after_persist: VecDeque<(u64, Vec<Message>)>,
    /// Last append job handed to the WAL writer, and last one durable.
    write_seq: u64,
    durable_seq: u64,
    ticks: u64,
    options: LoopOptions,
    /// Applied index of the newest snapshot (or where the log starts).
    snapshot_base: u64,
    /// Bytes of entries applied since start (data plus [`ENTRY_OVERHEAD`]
    /// each: about what the WAL holds of them), and that count when the
    /// newest snapshot was taken, and when the one being taken was.
    log_bytes: u64,
    snapshot_log_bytes: u64,
    taking_log_bytes: u64,
    /// Bytes of state in the newest snapshot.
    snapshot_bytes: u64,
    /// The last index recovered from the WAL at start, until it is
    /// applied: then what replaying it left free in the heap (entries the
    /// core no longer keeps, their decoded commands) goes back to the
    /// system once (see `heap`), so a restarted node holds what a running
    /// one does.
    replay_through: Option<u64>,
    /// When a burst of writes is over, what it left free in the heap goes
    /// back to the system (see `heap`).
    heap_trim: crate::heap::QuietTrim,
    /// (term, vote) last handed to the writer: changes must be synced.
    synced_vote: (u64, u64),
    snapshotting: bool,
    /// This member's lease settings: grants it proposes are raised to its
    /// minimum TTL here, never at apply.
    lease_config: LeaseConfig,
    /// The newest (term, leader) this member followed (or was).
    followed: (u64, NodeId),
    /// `auto` timing, when a flag asked for it.
    timer: Option<AutoTimer>,
}

impl Driver {
    async fn run(&mut self, inputs: channel::Receiver<Input>) -> String {
        loop {
            let Ok(first) = inputs.recv().await else {
                return "every handle to the node was dropped".into();
            };
            let mut input = Some(first);
            // Take everything already queued before draining Readys, so one
            // Ready (and one WAL job) carries a whole burst of proposals.
            while let Some(i) = input {
                if let Err(why) = self.handle(i) {
                    self.fail_all(Error::Stopped);
                    return why;
                }
                input = inputs.try_recv().ok();
            }
            if let Err(why) = self.drain_ready() {
                self.fail_all(Error::Stopped);
                return why;
            }
            SERVER.proposals_pending.set(self.proposals.len() as u64);
        }
    }

    fn handle(&mut self, input: Input) -> Result<(), String> {
        match input {
            Input::Tick => {
                self.status.tick_queued.store(false, Ordering::Release);
                self.core.tick();
                // The leader stops talking to a member once its removal
                // applies, so a removed member may never apply it: the
                // leader's "removed" close is the word it gets.
                let claims = self.peers.as_ref().map(|p| p.take_removal_claims());
                for by in claims.unwrap_or_default() {
                    self.on_removal_claim(by);
                }
                self.ticks += 1;
                if self.ticks % FORGET_LEFT_CALLERS_EVERY == 0 {
                    self.forget_left_callers();
                }
                self.retime();
                self.retry_held();
                self.ask_again_for_late_reads();
                let applied = self.status.applied.load(Ordering::Relaxed);
                if self.heap_trim.due(applied, Instant::now()) {
                    crate::heap::release_free();
                }
            }
            Input::Step(message) => {
                self.status.queued_steps.fetch_sub(1, Ordering::Relaxed);
                self.core.step(message);
            }
            Input::Propose {
                request,
                auth,
                reply,
            } => {
                let deadline = self.hold_deadline();
                self.propose_or_hold(deadline, request, auth, reply);
            }
            Input::ProposeConfChange {
                mut change,
                peer_urls,
                reply,
            } => {
                if !self.learner_ready(&change) {
                    let _ = reply.try_send(Err(Error::LearnerNotReady));
                    return Ok(());
                }
                if let Err(e) = self.may_change_members(&change) {
                    log::warn!(
                        "refused a membership change ({:?} {:x}): {e}",
                        change.change,
                        change.node_id
                    );
                    let _ = reply.try_send(Err(e));
                    return Ok(());
                }
                // The context names the waiter, as a command ID does, and
                // tells every member where an added one listens.
                let id = self.ids.next();
                let context = ConfContext {
                    waiter: id,
                    peer_urls,
                };
                change.context = match postcard::to_allocvec(&context) {
                    Ok(bytes) => bytes,
                    Err(e) => {
                        let _ = reply.try_send(Err(Error::Internal(format!(
                            "cannot encode a membership change: {e}"
                        ))));
                        return Ok(());
                    }
                };
                match self.core.propose_conf_change(change) {
                    Ok(()) => {
                        self.conf_waiters.insert(id, reply);
                    }
                    Err(e) => {
                        let _ = reply.try_send(Err(propose_error(e)));
                    }
                }
            }
            Input::CheckLeases => {
                self.status.leases_queued.store(false, Ordering::Release);
                self.check_leases();
            }
            Input::TransferLeader { to, reply } => {
                let started = self.core.transfer_leader(to).map_err(|e| match e {
                    raft::TransferError::NotLeader { .. } => Error::NotLeader,
                    raft::TransferError::NotVoter => Error::BadLeaderTransferee,
                });
                if started.is_ok() {
                    log::info!("transferring leadership to {to:x}");
                }
                let _ = reply.try_send(started);
            }
            Input::ReadIndex { reply } => {
                let deadline = self.hold_deadline();
                self.read_or_hold(deadline, reply);
            }
            Input::Persisted {
                tokens,
                through,
                result,
            } => {
                result.map_err(|e| format!("WAL write failed: {e}"))?;
                self.durable_seq = self.durable_seq.max(through);
                while self
                    .after_persist
                    .front()
                    .is_some_and(|(seq, _)| *seq <= self.durable_seq)
                {
                    if let Some((_, messages)) = self.after_persist.pop_front() {
                        self.send_messages(messages);
                    }
                }
                for token in tokens {
                    self.core.on_persisted(token);
                }
            }
            Input::SnapshotSaved { meta, data } => {
                self.snapshotting = false;
                let data = data.map_err(|e| format!("snapshot failed: {e}"))?;
                // The core keeps these bytes to send to lagging followers; a
                // lone voter has none, so it need not hold a second copy of
                // the whole state (if one joins, the core asks for a new
                // snapshot: see `take_image_wanted`).
                let SavedState { bytes, image } = data;
                let compacted = match image {
                    Some(data) if !self.alone() => self.core.compact_at(meta.clone(), data),
                    _ => self.core.compact_at_without_image(meta.clone()),
                };
                if compacted.is_some() {
                    log::info!(
                        "saved snapshot at index {} (term {}, {bytes} bytes, after {} bytes of log)",
                        meta.index,
                        meta.term,
                        self.taking_log_bytes.saturating_sub(self.snapshot_log_bytes)
                    );
                    self.snapshot_base = meta.index;
                    self.snapshot_log_bytes = self.snapshot_log_bytes.max(self.taking_log_bytes);
                    self.snapshot_bytes = bytes;
                    self.send_job(PersistJob::SnapshotMarker { meta })?;
                }
            }
        }
        Ok(())
    }

    /// `auto` timing: every [`RETIME_EVERY`], hands the peer links'
    /// figures (the worst smoothed RTT among links that carried traffic,
    /// the share of their packets lost since the last look) to the
    /// estimator and applies the change it decides on: the ticker's period,
    /// the core's election ticks, and the loop's own timeouts.
    fn retime(&mut self) {
        let (Some(timer), Some(peers)) = (self.timer.as_mut(), self.peers.as_ref()) else {
            return;
        };
        if timer.last_look.elapsed() < RETIME_EVERY {
            return;
        }
        timer.last_look = Instant::now();
        let (mut rtt, mut lost, mut sent) = (Duration::ZERO, 0u64, 0u64);
        for (id, link_rtt, link_lost, link_sent) in peers.link_figures() {
            let (before_lost, before_sent) = timer
                .counts
                .insert(id, (link_lost, link_sent))
                .unwrap_or((0, 0));
            // A new connection counts from zero again.
            let (d_lost, d_sent) = if link_sent >= before_sent && link_lost >= before_lost {
                (link_lost - before_lost, link_sent - before_sent)
            } else {
                (link_lost, link_sent)
            };
            if d_sent >= RETIME_MIN_PACKETS {
                rtt = rtt.max(link_rtt);
                lost += d_lost;
                sent += d_sent;
            }
        }
        if sent == 0 {
            return;
        }
        let before = timer.timing.current();
        let Some(new) = timer.timing.observe(rtt, lost as f64 / sent as f64) else {
            return;
        };
        let (rtt, loss) = timer.timing.figures();
        log::info!(
            "Raft timing: heartbeat interval {} ms -> {} ms, election timeout {} ms -> {} ms \
             (peer RTT {:.1} ms, {:.1}% of peer packets lost, smoothed)",
            before.heartbeat.as_millis(),
            new.heartbeat.as_millis(),
            before.election_timeout().as_millis(),
            new.election_timeout().as_millis(),
            rtt.as_secs_f64() * 1000.0,
            loss * 100.0
        );
        self.status.tick_micros.store(
            u64::try_from(new.heartbeat.as_micros()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        self.core.set_election_tick(new.election_ticks);
        self.options.tick = new.heartbeat;
        self.options.election_timeout = new.election_timeout();
    }

    /// Until when a call may wait for a leader: two election timeouts, so
    /// an election or a leadership transfer is waited out, and the caller
    /// still hears `no leader` before its own deadline.
    fn hold_deadline(&self) -> u64 {
        self.ticks + 2 * self.election_ticks()
    }

    /// The election timeout in ticks (at least one).
    fn election_ticks(&self) -> u64 {
        let ticks =
            self.options.election_timeout.as_millis() / self.options.tick.as_millis().max(1);
        u64::try_from(ticks).unwrap_or(u64::MAX / 4).max(1)
    }

    /// Proposes a caller's command, or holds it while no leader can take
    /// it (an election, a leadership transfer).
    fn propose_or_hold(
        &mut self,
        deadline: u64,
        request: Request,
        auth: AuthHeader,
        reply: channel::Sender<Reply>,
    ) {
        match self.try_propose(request, auth).map_err(|refused| *refused) {
            Ok(id) => {
                self.proposals.insert(id, reply);
            }
            Err((Refusal::Core(e), request, auth)) if holdable(&e) => {
                let call = HeldCall::Propose {
                    request,
                    auth,
                    reply,
                };
                if let Some(call) = self.held.hold(deadline, call) {
                    call.fail(Error::NoLeader);
                }
            }
            Err((refusal, _, _)) => {
                SERVER.proposals_failed.inc();
                let _ = reply.try_send(Err(refusal.into_error()));
            }
        }
    }

    /// Starts a ReadIndex round, or holds the read while no leader can
    /// confirm it.
    fn read_or_hold(&mut self, deadline: u64, reply: channel::Sender<Result<(), Error>>) {
        let ctx = self.ids.next();
        match self.core.read_index(ctx.to_be_bytes().to_vec()) {
            Ok(()) => {
                let asked = Some(self.ticks);
                self.reads.insert(ctx, WaitingRead { asked, reply });
            }
            Err(e) if holdable(&e) => {
                if let Some(call) = self.held.hold(deadline, HeldCall::Read { reply }) {
                    call.fail(Error::NoLeader);
                }
            }
            Err(e) => {
                let _ = reply.try_send(Err(propose_error(e)));
            }
        }
    }

    /// A leader change loses the ReadIndex rounds in flight: the old
    /// leader's (it forgets them as it steps down) and those forwarded to
    /// it (a paused or cut-off leader never answers). Unlike a proposal, a
    /// read round may be asked again: its answer only has to be an index
    /// committed after the read arrived, and a later round's is. So every
    /// waiting read asks again, of the new leader or (none known yet) held
    /// until one is, rather than waiting out its caller's deadline. A late
    /// answer to the old round finds no waiter and is dropped. A round a
    /// newer one superseded (`asked` is `None`) is dropped, not asked
    /// again: the caller's newest round is asked (or is held already).
    fn ask_again_for_reads(&mut self) {
        if self.reads.is_empty() {
            return;
        }
        let deadline = self.hold_deadline();
        for (_, read) in std::mem::take(&mut self.reads) {
            if read.asked.is_some() && !read.reply.is_closed() {
                self.read_or_hold(deadline, read.reply);
            }
        }
    }

    /// A read round unanswered for an election timeout asks again (etcd
    /// 3.5 asks every 500 ms): a forwarded ReadIndex dropped on its way (a
    /// full or broken peer lane) is otherwise lost with no leader change
    /// to notice it. The late round keeps waiting too (on a slow link it
    /// may just be slow), and whichever answers first answers the caller;
    /// only the newest round of a read is asked again, so a read holds at
    /// most one round per election timeout it waits.
    fn ask_again_for_late_reads(&mut self) {
        let late = self.ticks.saturating_sub(self.election_ticks());
        let is_late = |r: &WaitingRead| r.asked.is_some_and(|t| t <= late);
        let again: Vec<channel::Sender<Result<(), Error>>> = self
            .reads
            .values_mut()
            .filter(|r| is_late(r) && !r.reply.is_closed())
            .map(|r| {
                r.asked = None;
                r.reply.clone()
            })
            .collect();
        let deadline = self.hold_deadline();
        for reply in again {
            self.read_or_hold(deadline, reply);
        }
    }

    /// Once a leader is known, held calls go again (keeping their
    /// deadlines); those past it hear `no leader`.
    fn retry_held(&mut self) {
        if self.held.is_empty() {
            return;
        }
        self.held.expire(self.ticks);
        if self.core.status().leader == 0 {
            return;
        }
        for (deadline, call) in self.held.take() {
            match call {
                HeldCall::Propose {
                    request,
                    auth,
                    reply,
                } => self.propose_or_hold(deadline, request, auth, reply),
                HeldCall::Read { reply } => self.read_or_hold(deadline, reply),
            }
        }
    }

    /// Proposes a command: its ID, or why not (with the request back, so
    /// it can be held and proposed again).
    fn try_propose(
        &mut self,
        mut request: Request,
        auth: AuthHeader,
    ) -> Result<u64, Box<(Refusal, Request, AuthHeader)>> {
        let id = self.ids.next();
        if let Request::LeaseGrant(grant) = &mut request {
            if grant.id == 0 {
                // Command IDs are unique per member across restarts; mixed
                // so that IDs do not look sequential (etcd's look random).
                grant.id = lease_id_from(mix64(id));
            }
            // This member's minimum (from its own election timeout) goes
            // into the entry, so every member applies the same TTL.
            grant.ttl = grant_ttl(&self.lease_config, grant.ttl);
        }
        let command = Command {
            id,
            request,
            auth: Some(auth),
        };
        let refused = match command.encode() {
            Ok(data) => match self.core.propose(data) {
                Ok(()) => return Ok(id),
                Err(e) => Refusal::Core(e),
            },
            Err(e) => Refusal::Encode(e.to_string()),
        };
        let Command { request, auth, .. } = command;
        Err(Box::new((refused, request, auth.unwrap_or_default())))
    }

    /// The leader proposes a revoke for each expired lease; the lessor
    /// names a lease again later if the revoke gets lost.
    fn check_leases(&mut self) {
        if !self.leading {
            return;
        }
        let expired = self
            .state
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .lessor_mut()
            .expired(super::now_ms(), LEASE_REVOKE_RATE / 2);
        for id in expired {
            log::debug!("lease {id:x} expired; revoking");
            let revoke = Request::LeaseRevoke(LeaseRevokeRequest { id });
            // A revoke that does not get in is named again later.
            let _ = self.try_propose(revoke, AuthHeader::system());
        }
    }

    /// Keeps the lessor's leader-local state in step with the role.
    fn set_leading(&mut self, leading: bool) {
        if leading == self.leading {
            return;
        }
        self.leading = leading;
        let mut state = self.state.write().unwrap_or_else(|p| p.into_inner());
        if leading {
            let extend = u64::try_from(self.options.election_timeout.as_millis()).unwrap_or(0);
            state.lessor_mut().promote(super::now_ms(), extend);
        } else {
            state.lessor_mut().demote();
        }
    }

    /// etcd promotes a learner only once its log is within 90% of the
    /// leader's, so a new voter does not stall commits while it catches up.
    fn learner_ready(&self, change: &ConfChange) -> bool {
        let promotes = change.change == ConfChangeType::AddVoter
            && self.core.conf_state().learners.contains(&change.node_id);
        if !promotes {
            return true;
        }
        let last = self.core.status().last_index;
        self.core
            .progress()
            .iter()
            .find(|p| p.id == change.node_id)
            .is_some_and(|p| p.matched.saturating_mul(10) >= last.saturating_mul(9))
    }

    /// etcd's strict reconfiguration checks (`mayAddMember`,
    /// `mayRemoveMember`, `mayPromoteMember`): a change must leave at least
    /// a quorum of started voters (a member is started once it said hello:
    /// it has a name), and must not break the quorum of voters this member
    /// hears from (heard within an election timeout; etcd: connected for
    /// 5 s). Adding a second voter to a cluster of one is allowed, as etcd
    /// allows it to restore a cluster from one member.
    fn may_change_members(&self, change: &ConfChange) -> Result<(), Error> {
        if !self.options.strict_reconfig_check {
            return Ok(());
        }
        let conf = self.core.conf_state();
        let me = self.core.id();
        let started =
            |id: &NodeId| *id == me || self.members.get(*id).is_some_and(|m| !m.name.is_empty());
        let active = |id: &NodeId| {
            *id == me
                || self
                    .peers
                    .as_ref()
                    .is_some_and(|p| p.heard_within(*id, self.options.election_timeout))
        };
        let id = change.node_id;
        match change.change {
            ConfChangeType::AddVoter if conf.learners.contains(&id) => {
                // Promotion: the learner counts, as started.
                let members = conf.voters.len() + 1;
                let started = conf.voters.iter().filter(|v| started(v)).count() + 1;
                if started < members / 2 + 1 {
                    return Err(Error::MemberNotEnoughStarted);
                }
                Ok(())
            }
            ConfChangeType::AddVoter | ConfChangeType::AddLearner => {
                if change.change == ConfChangeType::AddVoter {
                    let members = conf.voters.len() + 1;
                    let started = conf.voters.iter().filter(|v| started(v)).count();
                    if !(started == 1 && members == 2) && started < members / 2 + 1 {
                        return Err(Error::MemberNotEnoughStarted);
                    }
                }
                if !conf.voters.iter().all(active) {
                    return Err(Error::Unhealthy);
                }
                Ok(())
            }
            ConfChangeType::Remove => {
                if conf.learners.contains(&id) {
                    return Ok(());
                }
                let rest: Vec<NodeId> = conf.voters.iter().copied().filter(|v| *v != id).collect();
                let started = rest.iter().filter(|v| started(v)).count();
                if started < rest.len() / 2 + 1 {
                    return Err(Error::MemberNotEnoughStarted);
                }
                // A member that is down is not part of the active quorum.
                if id != me && !active(&id) {
                    return Ok(());
                }
                let reachable = conf.voters.iter().filter(|v| active(v)).count();
                if reachable.saturating_sub(1) < 1 + conf.voters.len().saturating_sub(1) / 2 {
                    return Err(Error::Unhealthy);
                }
                Ok(())
            }
        }
    }

    /// Member `by` closed a connection saying this member was removed.
    /// Believed only from the leader of the current term this member
    /// followed (it is the one that removes members and then stops talking
    /// to them); anyone else, even a member, cannot know it first.
    fn on_removal_claim(&mut self, by: NodeId) {
        let term = self.core.status().term;
        if self.followed == (term, by) {
            log::warn!("the leader ({by:x}) says this member was removed from the cluster");
            self.removed = true;
        } else {
            log::warn!(
                "member {by:x} says this member was removed, but it is not the leader of \
                 term {term}: removal not confirmed; ignored"
            );
        }
    }

    /// The membership changed: the member table follows it (members removed
    /// from the configuration are forgotten, so the transport refuses them;
    /// new ones get lanes).
    fn on_conf_state(&mut self, conf: &ConfState) {
        if conf.voters.is_empty() && conf.learners.is_empty() {
            return;
        }
        let (gone, added) = self.members.sync(conf);
        for id in gone {
            log::info!("member {id:x} left the cluster");
            if let Some(peers) = &self.peers {
                peers.remove_member(id);
            }
        }
        for id in added {
            log::info!("member {id:x} joined the cluster");
            if let Some(peers) = &self.peers {
                peers.add_member(id);
            }
        }
    }

    fn drain_ready(&mut self) -> Result<(), String> {
        // Bounded: each Ready hands out work; a core that kept producing
        // Readys without input would be a bug, not a reason to spin forever.
        for _ in 0..1000 {
            if !self.core.has_ready() {
                break;
            }
            let rd = self.core.ready();
            if let Some(soft) = rd.soft_state {
                if soft.leader != 0 {
                    self.followed = (self.core.status().term, soft.leader);
                }
                let before = self.status.leader.swap(soft.leader, Ordering::Relaxed);
                if before != soft.leader && soft.leader != 0 {
                    SERVER.leader_changes.inc();
                }
                if before != soft.leader && self.peers.is_some() {
                    match soft.leader {
                        0 => {
                            let why = match soft.role {
                                // With pre-vote (always on here) an election
                                // timeout makes a pre-candidate first; a
                                // candidate at once is most often the old
                                // leader's hand-over (TimeoutNow), unless the
                                // pre-vote won before this Ready.
                                Role::PreCandidate => "nothing from it for an election timeout",
                                Role::Candidate => {
                                    "it handed leadership over to this member, or an election timeout"
                                }
                                Role::Follower | Role::Leader => {
                                    "it stepped down or a newer term began"
                                }
                            };
                            let link = self
                                .peers
                                .as_ref()
                                .map(|p| p.link_report(before))
                                .unwrap_or_default();
                            log::warn!("lost the leader {before:x}: {why}; {link}");
                        }
                        l if l == self.core.id() => log::info!(
                            "this member ({l:x}) leads at term {}",
                            self.core.status().term
                        ),
                        l => log::info!("member {l:x} leads at term {}", self.core.status().term),
                    }
                }
                // Proposals in flight stay waiting when this member stops
                // leading, as etcd's do: a hand-over goes to a member that
                // holds every entry (the core appends nothing once a
                // transfer starts; it holds proposals and forwards them to
                // the new leader), so they commit in the new term and
                // their apply answers them here (command IDs carry the
                // proposing member's prefix, so only that command's apply
                // can). One whose entry a new leader overwrites (a leader
                // lost, not handed over) never applies, and its caller gets
                // `request timed out` at its deadline. Failing them all
                // with `leader changed` cost clients an error for writes
                // that did commit.
                //
                // An overwritten entry is not proposed again: being
                // overwritten here does not prove it never commits. With
                // five voters, A leads term t and gets X to C alone at
                // (i, t); B leads t+1 (votes of D, E) and overwrites A's
                // copy; C then leads t+2 (votes of D, E again, whose logs
                // end before i) and commits (i, t) from its own log. Had A
                // proposed X again, B (a follower by then) would forward it
                // to C, which would append it a second time: X applied
                // twice. Only the caller's deadline is safe to answer.
                self.set_leading(soft.role == Role::Leader);
                if before != soft.leader {
                    self.ask_again_for_reads();
                }
            }
            if let Some(hs) = rd.hard_state {
                self.status.term.store(hs.term, Ordering::Relaxed);
                self.status.commit.store(hs.commit, Ordering::Relaxed);
            }
            self.status
                .announced_durable
                .store(self.core.announced_durable(), Ordering::Relaxed);
            // Step 1: what may leave before persistence leaves now; the
            // rest waits for the WAL writer (queued after this Ready's own
            // write, below, or after the last one still in flight).
            let (now, later): (Vec<_>, Vec<_>) =
                rd.messages.into_iter().partition(|o| o.before_persist);
            self.send_messages(now.into_iter().map(|o| o.message).collect());
            let later: Vec<Message> = later.into_iter().map(|o| o.message).collect();
            if let Some(conf) = &rd.conf_state {
                self.on_conf_state(conf);
            }
            if let Some(snapshot) = rd.snapshot {
                self.install_snapshot(&snapshot)?;
                self.send_job(PersistJob::Snapshot {
                    meta: snapshot.meta.clone(),
                    data: snapshot.data.clone(),
                })?;
            }
            if let Some(last) = rd.entries.last() {
                self.status.last_index.store(last.index, Ordering::Relaxed);
            }
            if !rd.entries.is_empty() || rd.hard_state.is_some() || rd.persist.is_some() {
                // etcd's MustSync: entries, a term or a vote must be durable
                // before anyone relies on them; a commit index alone may be
                // lost (it is relearned) and rides along with the next fsync.
                let vote_changed = rd
                    .hard_state
                    .is_some_and(|hs| (hs.term, hs.vote) != self.synced_vote);
                let sync = !rd.entries.is_empty() || vote_changed;
                if let Some(hs) = rd.hard_state {
                    self.synced_vote = (hs.term, hs.vote);
                }
                self.write_seq += 1;
                self.send_job(PersistJob::Append {
                    hard_state: rd.hard_state,
                    entries: rd.entries,
                    token: rd.persist,
                    sync,
                    seq: self.write_seq,
                })?;
            }
            if !later.is_empty() {
                if self.write_seq > self.durable_seq {
                    self.after_persist.push_back((self.write_seq, later));
                } else {
                    self.send_messages(later);
                }
            }
            self.apply(rd.committed_entries);
            for read in rd.read_states {
                let ctx = read
                    .ctx
                    .get(..8)
                    .and_then(|b| <[u8; 8]>::try_from(b).ok())
                    .map(u64::from_be_bytes);
                if let Some(waiting) = ctx.and_then(|c| self.reads.remove(&c)) {
                    self.confirmed_reads
                        .entry(read.index)
                        .or_default()
                        .push(waiting.reply);
                }
            }
            self.release_reads();
        }
        if self.removed {
            // etcd's removed member stops too: nobody sends it anything now.
            // (Only applying its own removal counts: a joining member may
            // first install a snapshot from before it was added.)
            return Err(format!(
                "this member ({:x}) was removed from the cluster",
                self.core.id()
            ));
        }
        // A follower needs a snapshot whose image this member did not keep:
        // take one now (it keeps its image, there being a follower).
        let wanted = self.core.take_image_wanted();
        if wanted && !self.snapshotting {
            log::info!("a member needs a snapshot: taking one with its image");
        }
        self.maybe_snapshot(wanted);
        Ok(())
    }

    fn send_messages(&self, messages: Vec<Message>) {
        match &self.peers {
            Some(peers) => {
                for message in coalesce_proposals(messages) {
                    peers.send(message);
                }
            }
            None => {
                for message in messages {
                    log::debug!("no peer {:x} to send to; dropped", message.to);
                }
            }
        }
    }

    /// Drops waiters whose caller timed out and left (a forwarded proposal
    /// or read lost on the way to the leader would otherwise stay forever).
    fn forget_left_callers(&mut self) {
        self.proposals.retain(|_, reply| !reply.is_closed());
        self.conf_waiters.retain(|_, reply| !reply.is_closed());
        self.reads.retain(|_, read| !read.reply.is_closed());
    }

    fn apply(&mut self, entries: Vec<Entry>) {
        if entries.is_empty() {
            return;
        }
        let now = super::now_ms();
        let mut applied_events = Vec::new();
        let batch_started = Instant::now();
        let mut state = self.state.write().unwrap_or_else(|p| p.into_inner());
        for entry in entries {
            self.log_bytes += entry.data.len() as u64 + ENTRY_OVERHEAD;
            match entry.kind {
                EntryType::Normal if !entry.data.is_empty() => {
                    match Command::decode(&entry.data) {
                        Ok(command) => {
                            let mut events = Vec::new();
                            let started = Instant::now();
                            let reply = state.apply_entry(
                                entry.index,
                                &command.request,
                                command.auth.as_ref(),
                                now,
                                &mut events,
                            );
                            note_apply(started.elapsed(), entry.index, &events);
                            if let (Request::MemberUpdate(u), Some(Ok(_))) =
                                (&command.request, &reply)
                            {
                                log::info!("member {:x} now at {:?}", u.id, u.peer_urls);
                                self.members.update_peer_urls(u.id, &u.peer_urls);
                            }
                            if !events.is_empty() {
                                applied_events.push((events, state.revision()));
                                if applied_events.len() >= EVENTS_HANDED_AT_ONCE {
                                    // A long batch (a restart's replay) must
                                    // not hold every event until its end:
                                    // they sit in between the blocks it adds
                                    // to the key space, and freed at once
                                    // leave holes no page can be returned
                                    // from. Still under the state lock.
                                    self.watchers.on_apply(&applied_events);
                                    applied_events.clear();
                                }
                            }
                            if let (Some(reply), Some(waiter)) =
                                (reply, self.proposals.remove(&command.id))
                            {
                                let _ = waiter.try_send(reply);
                            }
                        }
                        Err(e) => {
                            // Every member decodes the same bytes the same
                            // way, so skipping keeps them in step; it is
                            // logged because it means a bug or damage.
                            log::error!("entry {} does not decode ({e}); skipped", entry.index);
                            state.skip(entry.index);
                        }
                    }
                }
                EntryType::ConfChange => {
                    // The configuration itself is in force already (the
                    // core applied it; `on_conf_state` synced the table).
                    let change = postcard::from_bytes::<ConfChange>(&entry.data).ok();
                    let context = change
                        .as_ref()
                        .and_then(|cc| postcard::from_bytes::<ConfContext>(&cc.context).ok());
                    if let Some(cc) = &change {
                        self.removed |=
                            cc.change == ConfChangeType::Remove && cc.node_id == self.core.id();
                    }
                    if let (Some(cc), Some(ctx)) = (&change, &context) {
                        if !ctx.peer_urls.is_empty() {
                            self.members.set_peer_urls(cc.node_id, &ctx.peer_urls);
                        }
                        if let Some(waiter) = self.conf_waiters.remove(&ctx.waiter) {
                            let _ = waiter.try_send(Ok(()));
                        }
                    }
                    state.skip(entry.index);
                }
                _ => state.skip(entry.index),
            }
        }
        // Still under the state lock, so the catch-up task never sees a
        // store ahead of the hub (see `watchers`).
        self.watchers.on_apply(&applied_events);
        self.status
            .applied
            .store(state.applied(), Ordering::Relaxed);
        // qed has no backend transaction: a batch applied under the state
        // lock is its commit.
        SERVER.backend_commit.observe(batch_started.elapsed());
        let applied = state.applied();
        drop(state);
        if self.replay_through.is_some_and(|i| applied >= i) {
            self.replay_through = None;
            crate::heap::release_free();
        }
    }

    fn release_reads(&mut self) {
        let applied = self.status.applied.load(Ordering::Relaxed);
        let later = self.confirmed_reads.split_off(&(applied + 1));
        for (_, waiters) in std::mem::replace(&mut self.confirmed_reads, later) {
            for reply in waiters {
                let _ = reply.try_send(Ok(()));
            }
        }
    }

    fn install_snapshot(&mut self, snapshot: &raft::Snapshot) -> Result<(), String> {
        let mut state = self.state.write().unwrap_or_else(|p| p.into_inner());
        let (limits, local_auth) = state.identity();
        *state = StateMachine::from_snapshot(&snapshot.data, limits, local_auth)
            .map_err(|e| format!("snapshot from the leader does not load: {e}"))?;
        if self.leading {
            let extend = u64::try_from(self.options.election_timeout.as_millis()).unwrap_or(0);
            state.lessor_mut().promote(super::now_ms(), extend);
        }
        self.watchers.restore(state.revision());
        self.members.set_updated_urls(state.member_urls());
        self.snapshot_base = snapshot.meta.index;
        self.snapshot_log_bytes = self.log_bytes;
        self.snapshot_bytes = snapshot.data.len() as u64;
        log::info!(
            "installed the leader's snapshot at index {} (term {}, {} bytes)",
            snapshot.meta.index,
            snapshot.meta.term,
            snapshot.data.len()
        );
        self.status
            .applied
            .store(state.applied(), Ordering::Relaxed);
        Ok(())
    }

    /// When [`snapshot_due`] says so (or `now`, unless one is being
    /// taken): clone the state (O(1)) and
    /// let a blocking-pool task serialize it and write the file, so neither
    /// this loop nor the WAL writer waits for a large snapshot.
    fn maybe_snapshot(&mut self, now: bool) {
        let applied = self.status.applied.load(Ordering::Relaxed);
        let due = now
            || snapshot_due(
                applied.saturating_sub(self.snapshot_base),
                self.log_bytes - self.snapshot_log_bytes,
                self.snapshot_bytes,
                self.options.snapshot_count,
            );
        if self.snapshotting || !due {
            return;
        }
        let view = self.state.read().unwrap_or_else(|p| p.into_inner()).clone();
        let index = view.applied();
        let Some(term) = self.core.log_term(index) else {
            return;
        };
        let meta = SnapshotMeta {
            index,
            term,
            conf_state: self.core.conf_state(),
        };
        self.snapshotting = true;
        self.taking_log_bytes = self.log_bytes;
        // The core keeps an image only to send it: a lone voter (unless a
        // member joining asked for one) streams its state to the file and
        // holds no copy of it at all.
        let keep_image = now || !self.alone();
        let (inbox, writer) = (self.inbox.clone(), self.snapshots.clone());
        runtime::spawn(async move {
            let file_meta = meta.clone();
            let data = runtime::spawn_blocking(move || {
                // Streamed to the file (no buffer of the whole state); the
                // image the core sends from is that file, mapped, so a
                // member holds no copy of its state to send either.
                let image = view.image().map_err(|e| e.to_string())?;
                writer
                    .save_streamed(&file_meta, image.len(), |out| image.stream_to(out))
                    .map_err(|e| e.to_string())?;
                view.release_loaded_pages();
                let bytes = image.len() as u64;
                let image = match keep_image {
                    true => match writer.map_state(&file_meta) {
                        Ok(mapped) => {
                            // Mapping checked the file whole, reading every
                            // page in: give them back until a send reads them.
                            mapped.backing.release_pages();
                            Some(raft::Image::new(mapped))
                        }
                        // Saved all the same; the image is then a copy on
                        // the heap (an address space too small to map it).
                        Err(e) => {
                            log::warn!("cannot map the snapshot just saved ({e}); keeping its image in memory");
                            Some(raft::Image::from(image.to_vec().map_err(|e| e.to_string())?))
                        }
                    },
                    false => None,
                };
                Ok(SavedState { bytes, image })
            })
            .await;
            let _ = inbox.send(Input::SnapshotSaved { meta, data }).await;
        });
    }

    /// This member is the only one: a lone voter, no learner.
    fn alone(&self) -> bool {
        let conf = self.core.conf_state();
        conf.voters == [self.core.id()] && conf.learners.is_empty()
    }

    fn send_job(&self, job: PersistJob) -> Result<(), String> {
        self.jobs
            .send(job)
            .map_err(|_| "the WAL writer stopped".to_string())
    }

    fn fail_all(&mut self, error: Error) {
        self.held.fail_all(&error);
        for (_, reply) in self.proposals.drain() {
            let _ = reply.try_send(Err(error.clone()));
        }
        for (_, read) in self.reads.drain() {
            let _ = read.reply.try_send(Err(error.clone()));
        }
        for (_, waiters) in std::mem::take(&mut self.confirmed_reads) {
            for reply in waiters {
                let _ = reply.try_send(Err(error.clone()));
            }
        }
    }
}

/// A follower's core forwards each proposal in a message of its own; a
/// burst of them (many clients writing through a follower) goes to the
/// leader as one message per destination, in order, so it takes one slot of
/// the peer lane, not hundreds.
fn coalesce_proposals(messages: Vec<Message>) -> Vec<Message> {
    let mut out: Vec<Message> = Vec::with_capacity(messages.len());
    // Where each destination's open merged proposal sits in `out`, and its
    // bytes so far: a merged message stays near one append's size.
    let mut merged: HashMap<u64, (usize, usize)> = HashMap::new();
    for message in messages {
        let MessageBody::Propose { entries } = message.body else {
            out.push(message);
            continue;
        };
        let bytes: usize = entries.iter().map(|e| e.data.len()).sum();
        if let Some((at, size)) = merged
            .get_mut(&message.to)
            .filter(|(_, size)| *size + bytes <= PROPOSE_BATCH_BYTES)
        {
            if let Some(Message {
                body: MessageBody::Propose { entries: into },
                ..
            }) = out.get_mut(*at)
            {
                into.extend(entries);
                *size += bytes;
                continue;
            }
        }
        merged.insert(message.to, (out.len(), bytes));
        out.push(Message {
            body: MessageBody::Propose { entries },
            ..message
        });
    }
    out
}

/// Payload bytes one merged forwarded proposal carries at most (the core's
/// `max_size_per_msg`); a single larger proposal still goes alone.
const PROPOSE_BATCH_BYTES: usize = 1024 * 1024;

/// splitmix64's finalizer: a bijection, so distinct inputs stay distinct.
fn mix64(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Why a proposal did not get into the log.
enum Refusal {
    Core(ProposeError),
    Encode(String),
}

impl Refusal {
    fn into_error(self) -> Error {
        match self {
            Refusal::Core(e) => propose_error(e),
            Refusal::Encode(why) => Error::Internal(format!("cannot encode proposal: {why}")),
        }
    }
}

/// Refusals that last only until a leader is known again: the call is
/// held (see `held`), not failed.
fn holdable(e: &ProposeError) -> bool {
    matches!(e, ProposeError::NoLeader | ProposeError::TransferInProgress)
}

fn propose_error(e: ProposeError) -> Error {
    match e {
        ProposeError::NoLeader => Error::NoLeader,
        ProposeError::NotLeader { .. } => Error::NotLeader,
        // etcd: a change while another is in flight, or one that would
        // leave no voter.
        ProposeError::ConfChangePending => Error::Unhealthy,
        ProposeError::InvalidConfChange => Error::MemberNotFound,
        // Held until the transfer ends; past that, retryable as etcd's.
        ProposeError::TransferInProgress => Error::LeaderChanged,
    }
}

/// The WAL writer: a thread of its own, because fsync blocks. Group commit:
/// it takes every job queued while the previous fsync ran and makes them
/// durable with one more.
fn spawn_writer(
    mut log: DurableLog,
    inbox: channel::Sender<Input>,
) -> std::sync::mpsc::Sender<PersistJob> {
    let (tx, rx) = std::sync::mpsc::channel::<PersistJob>();
    let spawned = std::thread::Builder::new()
        .name("qed-wal".into())
        .spawn(move || {
            while let Ok(first) = rx.recv() {
                let batch: Vec<PersistJob> = std::iter::once(first).chain(rx.try_iter()).collect();
                let mut tokens = Vec::new();
                let through = batch
                    .iter()
                    .filter_map(|job| match job {
                        PersistJob::Append { seq, .. } => Some(*seq),
                        _ => None,
                    })
                    .max()
                    .unwrap_or(0);
                let result = write_batch(&mut log, batch, &mut tokens).map_err(|e| e.to_string());
                let failed = result.is_err();
                if inbox
                    .send_blocking(Input::Persisted {
                        tokens,
                        through,
                        result,
                    })
                    .is_err()
                    || failed
                {
                    return;
                }
            }
        });
    if let Err(e) = spawned {
        log::error!("cannot start the WAL writer thread: {e}");
    }
    tx
}

/// Applied entries whose events the apply path hands to the watch hub at
/// once (also within one batch, see `Driver::apply`).
const EVENTS_HANDED_AT_ONCE: usize = 64;

/// etcd warns when an apply takes longer than this.
const SLOW_APPLY: Duration = Duration::from_millis(100);

/// etcd warns when an fdatasync takes longer than this.
const SLOW_FSYNC: Duration = Duration::from_secs(1);

/// Counts an applied entry's puts and a slow apply, as etcd does.
fn note_apply(took: Duration, index: u64, events: &[crate::wire::kv::Event]) {
    let puts = events
        .iter()
        .filter(|e| e.kind == crate::wire::kv::EventType::Put)
        .count();
    SERVER.puts.add(puts as u64);
    if took > SLOW_APPLY {
        SERVER.slow_applies.inc();
        log::warn!(
            "apply request took too long: took={took:?} expected-duration={SLOW_APPLY:?} index={index}"
        );
    }
}

/// `log.sync()`, timed into etcd's WAL fsync histogram.
fn timed_sync(log: &mut DurableLog) -> Result<(), StorageError> {
    let started = Instant::now();
    let result = log.sync();
    let took = started.elapsed();
    SERVER.wal_fsync.observe(took);
    if took > SLOW_FSYNC {
        log::warn!("slow fdatasync: took={took:?} expected-duration={SLOW_FSYNC:?}");
    }
    result
}

fn write_batch(
    log: &mut DurableLog,
    batch: Vec<PersistJob>,
    tokens: &mut Vec<PersistToken>,
) -> Result<(), StorageError> {
    let mut must_sync = false;
    for job in batch {
        match job {
            PersistJob::Append {
                hard_state,
                entries,
                token,
                sync,
                ..
            } => {
                log.append(hard_state.as_ref(), &entries)?;
                tokens.extend(token);
                must_sync |= sync;
            }
            PersistJob::Snapshot { meta, data } => {
                // Entries queued before it must be durable first.
                timed_sync(log)?;
                log.snapshot_writer().save(&meta, &data)?;
                log.mark_snapshot(&meta)?;
            }
            PersistJob::SnapshotMarker { meta } => {
                timed_sync(log)?;
                log.mark_snapshot(&meta)?;
            }
        }
    }
    if must_sync {
        timed_sync(log)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{
        coalesce_proposals, snapshot_due, CommandIds, RaftHandle, RaftStatus,
        MAX_GAP_BETWEEN_APPLY_AND_COMMIT, MAX_WAITING_CALLS,
    };
    use crate::runtime::channel;
    use crate::wire::raft::{Entry, Message, MessageBody};
    use qed_wire::Error;
    use std::sync::atomic::Ordering;
    use std::sync::Arc;

    /// A snapshot needs `--snapshot-count` entries and a log a quarter of
    /// the last snapshot's size (or 20 counts of entries); the first (no
    /// snapshot yet) only the count.
    #[test]
    fn snapshot_is_due_after_the_count_and_a_quarter_of_the_state_in_log() {
        // No snapshot yet, or a small one: the count decides.
        assert!(!snapshot_due(9_999, 1 << 20, 0, 10_000));
        assert!(snapshot_due(10_000, 0, 0, 10_000));
        assert!(snapshot_due(10_000, 250_000, 1_000_000, 10_000));
        // A large state: the count alone is not enough.
        let state = 290_000_000;
        assert!(!snapshot_due(10_000, 3_000_000, state, 10_000));
        assert!(!snapshot_due(150_000, state / 4 - 1, state, 10_000));
        assert!(snapshot_due(150_000, state / 4, state, 10_000));
        // Small entries: 20 counts of them, whatever their bytes.
        assert!(!snapshot_due(199_999, 199_999 * 40, state, 10_000));
        assert!(snapshot_due(200_000, 200_000 * 40, state, 10_000));
        // Nor the bytes alone.
        assert!(!snapshot_due(99, state, state, 100));
        // No overflow at the extremes.
        assert!(snapshot_due(u64::MAX, u64::MAX, u64::MAX, u64::MAX));
    }

    /// etcd's `too many requests`: refused before reaching the inbox when
    /// apply lags commit too far, or too many callers wait already.
    #[test]
    fn excess_proposals_are_refused_with_too_many_requests() {
        let (inbox, inputs) = channel::unbounded();
        let handle = RaftHandle {
            inbox,
            status: Arc::new(RaftStatus::default()),
            answer_timeout: None,
            tick: std::time::Duration::from_millis(100),
            election_timeout: std::time::Duration::from_secs(1),
        };
        let put = || qed_wire::Request::Put(Default::default());
        let status = &handle.status;
        status
            .commit
            .store(MAX_GAP_BETWEEN_APPLY_AND_COMMIT + 11, Ordering::Relaxed);
        status.applied.store(10, Ordering::Relaxed);
        let refused = crate::runtime::block_on(handle.propose(put(), Default::default()));
        assert_eq!(refused, Err(Error::TooManyRequests));
        status.applied.store(11, Ordering::Relaxed);
        status
            .waiting_calls
            .store(MAX_WAITING_CALLS, Ordering::Relaxed);
        let refused = crate::runtime::block_on(handle.propose(put(), Default::default()));
        assert_eq!(refused, Err(Error::TooManyRequests));
        let refused = crate::runtime::block_on(handle.read_index());
        assert_eq!(refused, Err(Error::TooManyRequests));
        assert!(inputs.try_recv().is_err(), "nothing reached the loop");
        assert_eq!(
            status.waiting_calls.load(Ordering::Relaxed),
            MAX_WAITING_CALLS
        );
    }

    fn propose(to: u64, data: u8) -> Message {
        Message {
            from: 1,
            to,
            term: 0,
            body: MessageBody::Propose {
                entries: vec![Entry {
                    data: vec![data],
                    ..Default::default()
                }],
            },
        }
    }

    #[test]
    fn proposals_to_one_leader_leave_as_one_message_in_order() {
        let heartbeat = Message {
            from: 1,
            to: 2,
            term: 3,
            body: MessageBody::HeartbeatResponse { read_round: 0 },
        };
        let out = coalesce_proposals(vec![
            propose(2, 1),
            heartbeat.clone(),
            propose(2, 2),
            propose(3, 9),
            propose(2, 3),
        ]);
        assert_eq!(out.len(), 3);
        let MessageBody::Propose { entries } = &out[0].body else {
            panic!("first is the merged proposal: {out:?}");
        };
        let data: Vec<u8> = entries.iter().map(|e| e.data[0]).collect();
        assert_eq!(data, [1, 2, 3]);
        assert_eq!(out[1], heartbeat);
        assert_eq!(out[2], propose(3, 9));
    }

    #[test]
    fn merged_proposals_stay_near_one_append() {
        let big = |data: u8| {
            let mut m = propose(2, data);
            if let MessageBody::Propose { entries } = &mut m.body {
                entries[0].data = vec![data; 700 * 1024];
            }
            m
        };
        let out = coalesce_proposals(vec![big(1), big(2), propose(2, 3)]);
        assert_eq!(out.len(), 2, "two big ones do not share a message");
        let MessageBody::Propose { entries } = &out[1].body else {
            panic!("{out:?}");
        };
        assert_eq!(entries.len(), 2);
    }

    #[test]
    fn command_ids_of_members_differ_and_count_up() {
        let (mut a, mut b) = (CommandIds::new(0x1234_5678_9abc_def0), CommandIds::new(7));
        let (a1, a2, b1) = (a.next(), a.next(), b.next());
        assert_eq!(a2, a1 + 1);
        assert_ne!(a1 >> CommandIds::SUFFIX_BITS, b1 >> CommandIds::SUFFIX_BITS);
        // The suffix wraps inside its 48 bits, never into the prefix.
        a.suffix = CommandIds::SUFFIX_MASK;
        assert_eq!(
            a.next() >> CommandIds::SUFFIX_BITS,
            a1 >> CommandIds::SUFFIX_BITS
        );
    }
}
