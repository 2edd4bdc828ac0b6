//! [`Node`]: the driver's handle on one Raft member, and [`Ready`], the
//! batch of work it hands out.
//!
//! `Node` adds to the role logic only the bookkeeping of what the driver has
//! already been given (hard state, role), so each `Ready` holds exactly the
//! news since the previous one.

use super::config::{Config, ConfigError, ProposeError, TransferError};
use super::log::{RaftLog, Snapshot};
use super::raft::{Outbound, Raft, ReadState, Role};
use crate::wire::raft::{
    ConfChange, ConfChangeType, ConfState, Entry, EntryType, HardState, Message, NodeId,
    SnapshotMeta,
};

/// What a node restarts from: its durable state.
///
/// A brand-new member of a brand-new cluster passes a default hard state, no
/// entries, and a snapshot at index 0 whose `conf_state` is the initial
/// membership: the node turns it into the first log entries (as etcd does),
/// and the first `Ready` asks the driver to persist them. A member joining
/// an existing cluster (etcd's `--initial-cluster-state existing`) must pass
/// an empty `conf_state`: it learns the membership from the leader's log or
/// snapshot. (Passing anything but the cluster's exact initial membership
/// would forge conflicting committed entries.) On restart, pass what was
/// persisted.
#[derive(Debug, Clone, Default)]
pub struct RestartState {
    pub hard_state: HardState,
    /// The newest snapshot. Its `data` may be left empty: the core then
    /// keeps no image, and asks for a new snapshot through
    /// [`Node::take_image_wanted`] should a follower need one (a driver
    /// that restores its state from the snapshot file need not hold a
    /// second copy of it in memory).
    pub snapshot: Snapshot,
    /// The persisted entries after `snapshot.meta.index`, contiguous.
    pub entries: Vec<Entry>,
}

/// Volatile state the driver may want to show (role and known leader).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SoftState {
    pub leader: NodeId,
    pub role: Role,
}

/// Echo this back through [`Node::on_persisted`] once the writes of the
/// `Ready` that carried it (snapshot, entries, hard state) are durable.
/// Opaque to the driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PersistToken {
    seq: u64,
    /// Last entry written (index, term), if any.
    last: Option<(u64, u64)>,
}

/// One batch of work for the driver. Handle the fields in this order:
/// 1. send the messages with `before_persist == true` at once;
/// 2. install `snapshot` (if any), then write `entries` (replacing any
///    persisted entries at or after `entries[0].index`) and `hard_state`,
///    and fsync; the write may complete later, while more `Ready`s are
///    taken, but writes must complete in order;
/// 3. when it is durable: send the other messages, and call
///    [`Node::on_persisted`] with `persist`;
/// 4. apply `committed_entries` in order (they may be applied before step 3
///    completes: committed means a quorum already has them durable);
/// 5. serve each of `read_states` once the applied index reaches its index.
#[derive(Debug, Default)]
#[must_use]
pub struct Ready {
    pub soft_state: Option<SoftState>,
    pub hard_state: Option<HardState>,
    pub snapshot: Option<Snapshot>,
    pub entries: Vec<Entry>,
    pub persist: Option<PersistToken>,
    pub messages: Vec<Outbound>,
    pub committed_entries: Vec<Entry>,
    /// The membership after applying `committed_entries` (or `snapshot`),
    /// if it changed.
    pub conf_state: Option<ConfState>,
    pub read_states: Vec<ReadState>,
}

/// The leader's replication state for one peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerProgress {
    pub id: NodeId,
    pub state: super::ProgressState,
    pub matched: u64,
    pub next: u64,
    pub paused: bool,
    pub recent_active: bool,
    pub is_learner: bool,
}

/// The initial membership as conf change entries at term 1: voters, then
/// learners, each in id order.
fn bootstrap_entries(conf: &ConfState) -> Vec<Entry> {
    let mut voters = conf.voters.clone();
    voters.sort_unstable();
    voters.dedup();
    let mut learners: Vec<NodeId> = conf
        .learners
        .iter()
        .copied()
        .filter(|l| !voters.contains(l))
        .collect();
    learners.sort_unstable();
    learners.dedup();
    let changes = voters
        .into_iter()
        .map(|id| (ConfChangeType::AddVoter, id))
        .chain(
            learners
                .into_iter()
                .map(|id| (ConfChangeType::AddLearner, id)),
        );
    changes
        .enumerate()
        .map(|(i, (change, node_id))| Entry {
            term: 1,
            index: i as u64 + 1,
            kind: EntryType::ConfChange,
            data: postcard::to_allocvec(&ConfChange {
                change,
                node_id,
                context: Vec::new(),
            })
            .unwrap_or_default(),
        })
        .collect()
}

/// A snapshot of the node's state, for status reports and tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    pub id: NodeId,
    pub term: u64,
    pub vote: NodeId,
    pub leader: NodeId,
    pub role: Role,
    pub commit: u64,
    /// Highest committed index handed out for applying.
    pub applied: u64,
    pub persisted: u64,
    pub first_index: u64,
    pub last_index: u64,
    pub lead_transferee: Option<NodeId>,
}

/// One Raft member. See the module docs of [`crate::raft`] for the driver's
/// duties.
pub struct Node {
    raft: Raft,
    prev_hard: HardState,
    prev_soft: SoftState,
    max_apply_bytes: u64,
    /// Numbers the `Ready`s that carry writes.
    seq: u64,
}

impl Node {
    /// Starts (or restarts) a member from its durable state.
    pub fn new(cfg: Config, mut state: RestartState) -> Result<Node, ConfigError> {
        cfg.validate()?;
        let fresh = state.hard_state == HardState::default()
            && state.snapshot.meta.index == 0
            && state.entries.is_empty();
        let conf = &state.snapshot.meta.conf_state;
        let bootstrap = fresh && !(conf.voters.is_empty() && conf.learners.is_empty());
        if bootstrap {
            // Like etcd: the initial membership becomes the first log
            // entries (identical on every initial member, committed by
            // construction), so a member joining later learns it from the
            // log like any other change.
            let entries = bootstrap_entries(conf);
            state.hard_state = HardState {
                term: 1,
                vote: 0,
                commit: entries.len() as u64,
            };
            state.entries = entries;
            state.snapshot.meta.conf_state = ConfState::default();
        }
        let conf = state.snapshot.meta.conf_state.clone();
        let hs = state.hard_state;
        let mut log = RaftLog::restore_from(state.snapshot, state.entries, hs.commit)
            .ok_or(ConfigError::BadLog)?;
        let mut prev_hard = hs;
        if bootstrap {
            // The driver has not persisted the bootstrap yet: the first
            // `Ready` carries it.
            log.persisted = 0;
            log.handed = 0;
            prev_hard = HardState::default();
        }
        let max_apply_bytes = cfg.max_size_per_msg.max(1) * 4;
        let image_missing = log.snapshot.as_ref().is_some_and(|s| s.data.is_empty());
        let mut raft = Raft::new(cfg, log, hs.term, hs.vote, &conf);
        raft.image_missing = image_missing;
        raft.conf_changed = bootstrap;
        prev_hard.commit = prev_hard.commit.min(raft.log.committed);
        let prev_soft = SoftState {
            leader: 0,
            role: Role::Follower,
        };
        Ok(Node {
            raft,
            prev_hard,
            prev_soft,
            max_apply_bytes,
            seq: 0,
        })
    }

    // ---- inputs ----

    /// Advances logical time by one tick.
    pub fn tick(&mut self) {
        self.raft.tick();
    }

    /// Changes the election timeout to `ticks` (raised to one more than
    /// the heartbeat ticks): the driver retimes Raft for its links
    /// (`--election-timeout auto`). A running countdown is redrawn only if
    /// it falls outside the new `[ticks, 2 * ticks)`. Timing only: nothing
    /// the log decides depends on it.
    pub fn set_election_tick(&mut self, ticks: u32) {
        self.raft.set_election_tick(ticks);
    }

    /// Handles a message from a peer. Never panics, whatever it contains.
    pub fn step(&mut self, m: Message) {
        self.raft.step(m);
    }

    /// Proposes a command. On a follower it is forwarded to the leader.
    /// `Ok` does not mean it will commit: watch the applied entries.
    pub fn propose(&mut self, data: Vec<u8>) -> Result<(), ProposeError> {
        self.raft.propose(data)
    }

    /// Requests a linearizable read; `ctx` comes back in a [`ReadState`].
    pub fn read_index(&mut self, ctx: Vec<u8>) -> Result<(), ProposeError> {
        self.raft.read_index(ctx)
    }

    /// Proposes a membership change (on the leader only).
    pub fn propose_conf_change(&mut self, cc: ConfChange) -> Result<(), ProposeError> {
        self.raft.propose_conf_change(cc)
    }

    /// Hands leadership to voter `to` (on the leader only). Until it
    /// completes or an election timeout passes, proposals are held, not
    /// appended, and then forwarded to the new leader (appended here if the
    /// transfer is abandoned); [`ProposeError::TransferInProgress`] only
    /// when too many are held already.
    pub fn transfer_leader(&mut self, to: NodeId) -> Result<(), TransferError> {
        self.raft.transfer_leader(to)
    }

    /// The writes of the `Ready` that carried `token` are durable.
    pub fn on_persisted(&mut self, token: PersistToken) {
        if let Some((index, term)) = token.last {
            self.raft.persisted(index, term);
        }
        self.raft.hard_state_persisted(token.seq);
    }

    /// The driver durably saved a snapshot of its state machine at the
    /// applied index (everything handed out in `committed_entries` has been
    /// applied); `data` is kept to send to lagging followers. Returns the
    /// snapshot's meta, or `None` if there is nothing new. (Entries leave
    /// memory by [`Config::catch_up_entries`], not here.)
    pub fn compact(&mut self, data: Vec<u8>) -> Option<SnapshotMeta> {
        self.raft.compact(data)
    }

    /// Like [`Node::compact`], for a snapshot of the state machine as it was
    /// at an earlier applied index (serialized off the driver's loop while
    /// applying went on). `meta` is what the driver read when it cut the
    /// snapshot: the index, its term ([`Node::log_term`]) and the membership
    /// then in force ([`Node::conf_state`]). `None` if the index is not
    /// applied yet or not newer than the current snapshot. An `Arc` is kept
    /// as it is (no copy).
    pub fn compact_at(
        &mut self,
        meta: SnapshotMeta,
        data: impl Into<super::Image>,
    ) -> Option<SnapshotMeta> {
        self.raft.compact_with(meta, Some(data.into()))
    }

    /// Like [`Node::compact_at`], keeping no copy of the image (a lone voter
    /// has nobody to send it to). Should a follower need a snapshot later,
    /// none is sent: [`Node::take_image_wanted`] says so, and the driver
    /// takes a new snapshot (with its image) at once.
    pub fn compact_at_without_image(&mut self, meta: SnapshotMeta) -> Option<SnapshotMeta> {
        self.raft.compact_with(meta, None)
    }

    /// Whether a follower needed a snapshot this member cannot send since
    /// the last call: none was kept with its image (see
    /// [`Node::compact_at_without_image`], [`RestartState::snapshot`]), or
    /// it ends before the entries still in memory. The driver then takes a
    /// new snapshot with its image at once.
    pub fn take_image_wanted(&mut self) -> bool {
        std::mem::take(&mut self.raft.image_wanted)
    }

    /// Bytes of a snapshot transfer received but not installed yet.
    #[cfg(test)]
    pub(crate) fn incoming_snapshot_bytes(&self) -> usize {
        self.raft.incoming_snapshot_bytes()
    }

    // ---- outputs ----

    pub fn has_ready(&self) -> bool {
        let r = &self.raft;
        !r.msgs.is_empty()
            || r.bcast_pending
            || r.commit_bcast_pending
            || r.durable_bcast_pending
            || !r.read_states.is_empty()
            || r.reads_pending_flush()
            || r.held_releasable()
            || r.log.has_unpersisted()
            || r.log.pending_snapshot.is_some()
            || r.log.has_next_committed()
            || self.hard_state() != self.prev_hard
            || self.soft_state() != self.prev_soft
    }

    /// Takes everything the driver must do now. See [`Ready`].
    pub fn ready(&mut self) -> Ready {
        self.raft.flush_appends();
        self.raft.flush_reads();
        let mut rd = Ready::default();
        let soft = self.soft_state();
        if soft != self.prev_soft {
            rd.soft_state = Some(soft);
            self.prev_soft = soft;
        }
        rd.snapshot = self.raft.log.pending_snapshot.take();
        rd.entries = self.raft.log.take_unpersisted();
        let last = match (rd.entries.last(), &rd.snapshot) {
            (Some(e), _) => Some((e.index, e.term)),
            (None, Some(s)) => Some((s.meta.index, s.meta.term)),
            (None, None) => None,
        };
        rd.committed_entries = self.raft.log.take_committed(self.max_apply_bytes);
        self.raft.apply_conf_entries(&rd.committed_entries);
        self.raft.trim_log();
        let hard = self.hard_state();
        if hard != self.prev_hard {
            rd.hard_state = Some(hard);
            self.prev_hard = hard;
        }
        if last.is_some() || rd.hard_state.is_some() {
            self.seq += 1;
            rd.persist = Some(PersistToken {
                seq: self.seq,
                last,
            });
            self.raft.hard_state_handed(self.seq);
        }
        if std::mem::take(&mut self.raft.conf_changed) {
            rd.conf_state = Some(self.raft.conf_state());
        }
        rd.messages = std::mem::take(&mut self.raft.msgs);
        rd.read_states = std::mem::take(&mut self.raft.read_states);
        // Applying a conf change can change the role (a removed leader).
        let soft = self.soft_state();
        if soft != self.prev_soft {
            rd.soft_state = Some(soft);
            self.prev_soft = soft;
        }
        rd
    }

    fn hard_state(&self) -> HardState {
        HardState {
            term: self.raft.term,
            vote: self.raft.vote,
            commit: self.raft.log.committed,
        }
    }

    fn soft_state(&self) -> SoftState {
        SoftState {
            leader: self.raft.leader,
            role: self.raft.role,
        }
    }

    // ---- getters ----

    pub fn id(&self) -> NodeId {
        self.raft.id
    }

    pub fn status(&self) -> Status {
        let r = &self.raft;
        Status {
            id: r.id,
            term: r.term,
            vote: r.vote,
            leader: r.leader,
            role: r.role,
            commit: r.log.committed,
            applied: r.log.applied,
            persisted: r.log.persisted,
            first_index: r.log.first_index(),
            last_index: r.log.last_index(),
            lead_transferee: r.lead_transferee,
        }
    }

    /// Leader: the highest index it announced durable to its followers
    /// in its term (a follower may have committed, and answered, writes up
    /// to there that this leader does not know are committed yet; reads
    /// are answered no lower); 0 on any other member.
    pub fn announced_durable(&self) -> u64 {
        self.raft.announced_durable()
    }

    /// The leader's view of each peer (empty on followers).
    pub fn progress(&self) -> Vec<PeerProgress> {
        self.raft.progress_view()
    }

    pub fn conf_state(&self) -> ConfState {
        self.raft.conf_state()
    }

    /// Term of the entry at `index` if it is in the in-memory log (or is the
    /// snapshot's last entry).
    pub fn log_term(&self, index: u64) -> Option<u64> {
        self.raft.log.term(index)
    }
}
