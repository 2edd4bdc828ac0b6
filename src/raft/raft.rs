//! Role logic: elections, replication, commit, ReadIndex, snapshots,
//! membership and leader transfer.
//!
//! `Raft` is a plain struct; every input is a method call and every output
//! is queued (`msgs`, `read_states`) for [`super::node::Node::ready`] to
//! hand out. Rules that carry the safety argument:
//! - votes: one per term (persisted before the vote response leaves), and
//!   only for candidates whose log is at least as up to date (election
//!   restriction); a candidate counts its own vote only once durable;
//! - commit: the leader commits index `i` only if `i` is in its current term
//!   and a quorum of voters has it *durable*; the leader's own copy counts
//!   only once the driver acknowledged persisting it;
//! - follower commit (inference): where the leader and one follower are a
//!   quorum (2 or 3 voters), the leader announces after its own fsync how
//!   far its log is durable (`LeaderDurable`, only entries of its term,
//!   only past its commit index). A voter follower commits `c = min(what
//!   the leader of its current term announced, its own persisted index)`
//!   if `c` is an entry of the current term and no membership change is in
//!   its log past the configuration it applied. Why that is the leader's
//!   own rule: the entry at `c` has the current term, so the leader of
//!   this term made it and holds it at `c`; log matching makes both
//!   prefixes through `c` identical; both are durable (the follower's
//!   `persisted` never covers an entry since replaced: truncation lowers
//!   it, and a write is counted only if its last entry is still in the
//!   log with its term); leader plus follower are a quorum of the
//!   configuration both use (a change the leader applied that the
//!   follower has not is either in the follower's log up to `c`, which
//!   forbids the inference, or after `c` and committed, so `c` is too;
//!   one the follower applied first leaves a configuration whose
//!   predecessor's every majority still meets the pair). So the leader,
//!   hearing the follower's acknowledgement, would commit `c` itself: the
//!   follower only learns it half a round trip sooner;
//! - reads: answered at the commit index captured on arrival, raised to the
//!   highest index the leader announced durable in its term (a follower
//!   may have committed and answered a write through it that the leader
//!   has not seen acknowledged yet; the read waits until it applies that
//!   index, so until it commits it), after a quorum acknowledged a later
//!   heartbeat, and only once the leader has committed an entry of its
//!   own term;
//! - membership: one change at a time, effective when the entry is applied
//!   (handed out committed), etcd's rule for single-server changes.

use std::collections::BTreeMap;

use super::config::{Config, ProposeError, TransferError};
use super::log::{entry_size, Image, RaftLog, Snapshot};
use super::progress::{Inflights, Progress, ProgressState, SendingImage};
use super::read_only::ReadOnly;
use crate::wire::raft::{
    ConfChange, ConfChangeType, ConfState, Entry, EntryType, Message, MessageBody, NodeId,
    SnapshotMeta,
};

/// A node's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Follower,
    PreCandidate,
    Candidate,
    Leader,
}

/// A message to send, tagged with when it may go out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outbound {
    pub message: Message,
    /// `true`: send at once, even while this `Ready`'s entries and hard
    /// state are still being persisted (the leader's appends, heartbeats,
    /// snapshot chunks; vote requests, pre-votes, refusals, heartbeat and
    /// chunk acknowledgements; forwarded requests). `false`: send only after
    /// this `Ready` is durable (vote grants, append acknowledgements).
    pub before_persist: bool,
}

/// A confirmed linearizable read: serve it once the applied index reaches
/// `index`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadState {
    pub index: u64,
    pub ctx: Vec<u8>,
}

/// How an election starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Campaign {
    /// Election timeout: a pre-vote round first (if enabled).
    PreElection,
    /// The real vote, after a won pre-vote.
    Election,
    /// TimeoutNow from the leader: a real vote that voters honour even while
    /// they hear from that leader.
    Transfer,
}

pub(crate) struct Raft {
    pub id: NodeId,
    pub term: u64,
    pub vote: NodeId,
    pub leader: NodeId,
    pub role: Role,
    pub cfg: Config,
    pub log: RaftLog,
    pub voters: Vec<NodeId>,
    pub learners: Vec<NodeId>,
    progress: BTreeMap<NodeId, Progress>,
    votes: BTreeMap<NodeId, bool>,
    election_elapsed: u32,
    heartbeat_elapsed: u32,
    randomized_timeout: u32,
    rng: u64,
    pub lead_transferee: Option<NodeId>,
    pending_conf_index: u64,
    /// Conf changes up to here are reflected in `voters`/`learners`.
    conf_applied: u64,
    pub conf_changed: bool,
    read_only: ReadOnly,
    pub msgs: Vec<Outbound>,
    pub read_states: Vec<ReadState>,
    /// A snapshot being received from the leader of this term (dropped on
    /// any role or term change: a new leader starts its own transfer).
    incoming_snapshot: Option<IncomingSnapshot>,
    /// CRC32C of our own snapshot's image, once computed: (index, term,
    /// checksum).
    snapshot_checksum: Option<(u64, u64, u32)>,
    /// The newest snapshot was taken without its image (a lone voter has
    /// nobody to send it to); a follower that needs one sets
    /// `image_wanted`, and the driver takes a new snapshot with its image.
    pub image_missing: bool,
    pub image_wanted: bool,
    /// Reused buffer for commit-quorum computation.
    scratch: Vec<u64>,
    /// Consecutive leader ticks with our own log behind the commit index.
    slow_disk_ticks: u32,
    /// A candidate's vote for itself counts only once durable: the term it
    /// was cast in, and the write (`Ready` number) that carries it.
    self_vote: Option<(u64, Option<u64>)>,
    /// New entries to broadcast at the next `Ready`: every proposal made
    /// between two `Ready`s goes out in one append per follower.
    pub bcast_pending: bool,
    /// The commit index advanced: tell followers at the next `Ready`.
    pub commit_bcast_pending: bool,
    /// Proposals no leader can take at the moment, held instead of
    /// dropped (see [`Raft::hold_proposals`]).
    held: HeldProposals,
    /// Follower: how far the leader of this term (`leader`) said its log
    /// is durable (`LeaderDurable`); 0 after any role, term or leader
    /// change.
    leader_durable: u64,
    /// Leader: the highest index announced durable to followers in this
    /// term; reads are answered at no lower index.
    announced_durable: u64,
    /// Leader: its own log became durable further: announce it at the next
    /// `Ready` (one message per follower however many writes completed).
    pub durable_bcast_pending: bool,
}

/// Proposals held while no leader can take them: given to a leader that
/// is handing leadership over (etcd drops them and its callers time out),
/// or forwarded to a member that follows no leader (a leader that just
/// stepped down, a candidate). They go on at the next `Ready` once someone
/// can take them: appended by this member if it leads again with no
/// transfer pending, else forwarded to the leader it learns of.
///
/// Exactly once: an entry handed to the core is, at any moment, in exactly
/// one place: here, in one `Propose` message, or in the log, appended once.
/// Each move takes it out of where it was (this queue is drained as it is
/// appended or forwarded; a leader never forwards what it appended). So
/// holding adds no copy, and an entry appended once can apply at most once
/// (an index is applied once; nothing re-proposes an appended entry).
#[derive(Default)]
struct HeldProposals {
    entries: Vec<Entry>,
    bytes: u64,
    /// Ticks since the queue was last empty: past
    /// [`HELD_PROPOSAL_TICKS_FACTOR`] election timeouts it is dropped (its
    /// callers time out, as they would have without holding).
    ticks: u32,
}

/// Held proposals are bounded (entries and bytes); past the bound a
/// local proposal is refused, a forwarded one dropped.
const MAX_HELD_PROPOSALS: usize = 16 * 1024;
const MAX_HELD_PROPOSAL_BYTES: u64 = 64 << 20;
/// Held proposals wait at most this many election timeouts for a leader.
const HELD_PROPOSAL_TICKS_FACTOR: u32 = 2;

/// While a snapshot is sent, the entries after it stay in memory, up to
/// this many times `catch_up_entries`.
const SNAPSHOT_PIN_FACTOR: u64 = 20;
/// Entries a live follower lacks stay in memory up to this many times
/// `catch_up_entries`: enough for a slow disk's lag after a hand-over
/// (about 1.7x at 4000 puts/s in `make bench-edge`), while a follower that
/// just died still gets a snapshot once it is further behind.
const LIVE_FOLLOWER_PIN_FACTOR: u64 = 4;

/// A snapshot transfer in progress on a follower.
struct IncomingSnapshot {
    meta: SnapshotMeta,
    /// What the leader says the whole image's CRC32C is.
    checksum: u32,
    /// CRC32C of `data` so far.
    crc: u32,
    data: Vec<u8>,
}

/// One snapshot message's contents.
struct Chunk {
    meta: SnapshotMeta,
    offset: u64,
    data: Vec<u8>,
    done: bool,
    checksum: u32,
}

/// Snapshot chunks in flight per follower.
const SNAPSHOT_WINDOW: u64 = 4;

/// Terms and indices beyond this are refused outright, so that no
/// arithmetic on message contents can overflow.
const MAX_SANE: u64 = 1 << 62;

fn sane(m: &Message) -> bool {
    let ok = |x: u64| x < MAX_SANE;
    let entries_ok = |es: &[Entry]| es.iter().all(|e| ok(e.index) && ok(e.term));
    ok(m.term)
        && match &m.body {
            MessageBody::Append {
                prev_index,
                prev_term,
                entries,
                commit,
            } => ok(*prev_index) && ok(*prev_term) && ok(*commit) && entries_ok(entries),
            MessageBody::AppendResponse {
                index,
                hint_index,
                hint_term,
                ..
            } => ok(*index) && ok(*hint_index) && ok(*hint_term),
            MessageBody::Heartbeat { commit, .. } => ok(*commit),
            MessageBody::Vote {
                last_index,
                last_term,
                ..
            } => ok(*last_index) && ok(*last_term),
            MessageBody::Snapshot { meta, offset, .. } => {
                ok(meta.index) && ok(meta.term) && ok(*offset)
            }
            MessageBody::SnapshotResponse { index, offset, .. } => ok(*index) && ok(*offset),
            MessageBody::Propose { entries } => entries_ok(entries),
            MessageBody::ReadIndexResponse { index, .. } => ok(*index),
            MessageBody::LeaderDurable { index } => ok(*index),
            MessageBody::HeartbeatResponse { .. }
            | MessageBody::VoteResponse { .. }
            | MessageBody::ReadIndex { .. }
            | MessageBody::TimeoutNow => true,
        }
}

fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl Raft {
    pub fn new(cfg: Config, log: RaftLog, term: u64, vote: NodeId, conf: &ConfState) -> Self {
        let mut r = Raft {
            id: cfg.id,
            term,
            vote,
            leader: 0,
            role: Role::Follower,
            rng: cfg.seed ^ cfg.id.rotate_left(32),
            cfg,
            conf_applied: log.offset,
            log,
            voters: Vec::new(),
            learners: Vec::new(),
            progress: BTreeMap::new(),
            votes: BTreeMap::new(),
            election_elapsed: 0,
            heartbeat_elapsed: 0,
            randomized_timeout: 0,
            lead_transferee: None,
            pending_conf_index: 0,
            conf_changed: false,
            read_only: ReadOnly::default(),
            msgs: Vec::new(),
            read_states: Vec::new(),
            incoming_snapshot: None,
            snapshot_checksum: None,
            image_missing: false,
            image_wanted: false,
            scratch: Vec::new(),
            slow_disk_ticks: 0,
            self_vote: None,
            bcast_pending: false,
            commit_bcast_pending: false,
            held: HeldProposals::default(),
            leader_durable: 0,
            announced_durable: 0,
            durable_bcast_pending: false,
        };
        r.set_conf(conf);
        // Membership changes committed before the restart are in force now,
        // not only once the driver re-applies them.
        let changes: Vec<Entry> = (r.log.first_index()..=r.log.committed)
            .filter_map(|i| r.log.entry(i))
            .filter(|e| e.kind == EntryType::ConfChange)
            .cloned()
            .collect();
        r.apply_conf_entries(&changes);
        r.conf_applied = r.log.committed;
        r.conf_changed = false;
        r.reset_randomized_timeout();
        r
    }

    fn set_conf(&mut self, conf: &ConfState) {
        self.voters = conf.voters.clone();
        self.voters.sort_unstable();
        self.voters.dedup();
        self.learners = conf.learners.clone();
        self.learners.retain(|l| !conf.voters.contains(l));
        self.learners.sort_unstable();
        self.learners.dedup();
    }

    pub fn conf_state(&self) -> ConfState {
        ConfState {
            voters: self.voters.clone(),
            learners: self.learners.clone(),
        }
    }

    pub fn progress_view(&self) -> Vec<super::node::PeerProgress> {
        self.progress
            .iter()
            .map(|(id, p)| super::node::PeerProgress {
                id: *id,
                state: p.state,
                matched: p.matched,
                next: p.next,
                paused: p.is_paused(),
                recent_active: p.recent_active,
                is_learner: p.is_learner,
            })
            .collect()
    }

    fn quorum(&self) -> usize {
        self.voters.len() / 2 + 1
    }

    pub fn promotable(&self) -> bool {
        self.voters.contains(&self.id)
    }

    pub fn set_election_tick(&mut self, ticks: u32) {
        let ticks = ticks.max(self.cfg.heartbeat_tick.saturating_add(1));
        self.cfg.election_tick = ticks;
        if self.randomized_timeout < ticks || self.randomized_timeout >= ticks.saturating_mul(2) {
            self.reset_randomized_timeout();
        }
    }

    fn reset_randomized_timeout(&mut self) {
        let e = self.cfg.election_tick;
        self.randomized_timeout = e + (splitmix(&mut self.rng) % e as u64) as u32;
    }

    fn new_progress(&self, learner: bool) -> Progress {
        Progress::new(
            self.log.last_index() + 1,
            Inflights::new(self.cfg.max_inflight_msgs, self.cfg.max_inflight_bytes),
            learner,
        )
    }

    // ---- sending -------------------------------------------------------

    fn send_with_term(&mut self, to: NodeId, term: u64, body: MessageBody) {
        if to == self.id || to == 0 {
            return;
        }
        let before_persist = match body {
            MessageBody::Append { .. }
            | MessageBody::Heartbeat { .. }
            | MessageBody::Snapshot { .. }
            | MessageBody::TimeoutNow
            | MessageBody::ReadIndexResponse { .. } => self.role == Role::Leader,
            // No state change behind these: a slow disk must not delay
            // them (heartbeats keep leadership, pre-votes and refusals
            // promise nothing, chunks are held in memory).
            MessageBody::Propose { .. }
            | MessageBody::ReadIndex { .. }
            | MessageBody::HeartbeatResponse { .. }
            | MessageBody::SnapshotResponse { .. }
            // About what is durable already.
            | MessageBody::LeaderDurable { .. }
            // A vote request may leave before the candidate's own vote is
            // durable: that vote only counts once it is.
            | MessageBody::Vote { .. } => true,
            // A vote grant waits until the vote is durable, an append
            // acknowledgement until the entries are.
            MessageBody::VoteResponse { pre, reject } => pre || reject,
            MessageBody::AppendResponse { .. } => self.cfg.test_knobs.ack_before_persist,
        };
        self.msgs.push(Outbound {
            message: Message {
                from: self.id,
                to,
                term,
                body,
            },
            before_persist,
        });
    }

    fn send(&mut self, to: NodeId, body: MessageBody) {
        let term = match body {
            MessageBody::Propose { .. } | MessageBody::ReadIndex { .. } => 0,
            _ => self.term,
        };
        self.send_with_term(to, term, body);
    }

    /// Sends `to` whatever it needs next: entries, or a snapshot if it is
    /// behind our first index. Returns whether a message went out.
    fn send_append(&mut self, to: NodeId, send_if_empty: bool) -> bool {
        let last = self.log.last_index();
        let Some(pr) = self.progress.get_mut(&to) else {
            return false;
        };
        if pr.is_paused() {
            return false;
        }
        if pr.next > last + 1 {
            pr.next = last + 1;
        }
        let next = pr.next;
        let prev_term = self.log.term(next - 1);
        let ents = self.log.entries_from(next, self.cfg.max_size_per_msg);
        let (Some(prev_term), Some(entries)) = (prev_term, ents) else {
            return self.send_snapshot(to);
        };
        if entries.is_empty() && !send_if_empty {
            return false;
        }
        let bytes: u64 = entries.iter().map(entry_size).sum();
        let last_sent = entries.last().map(|e| e.index);
        let commit = self.log.committed;
        if let Some(pr) = self.progress.get_mut(&to) {
            pr.sent_entries(last_sent, bytes);
        }
        self.send(
            to,
            MessageBody::Append {
                prev_index: next - 1,
                prev_term,
                entries,
                commit,
            },
        );
        true
    }

    /// Starts sending `to` our snapshot. One that is missing, has no image,
    /// or ends before our in-memory log (the follower could not go on from
    /// it) is not sent: `image_wanted` asks the driver for a new one.
    fn send_snapshot(&mut self, to: NodeId) -> bool {
        let snap = match self.log.snapshot.as_ref() {
            Some(s) if !self.image_missing && s.meta.index >= self.log.offset => s.clone(),
            _ => {
                self.image_wanted = true;
                return false;
            }
        };
        let checksum = match self.snapshot_checksum {
            Some((index, term, crc)) if (index, term) == (snap.meta.index, snap.meta.term) => crc,
            _ => {
                let crc = crc32c::crc32c(&snap.data);
                self.snapshot_checksum = Some((snap.meta.index, snap.meta.term, crc));
                crc
            }
        };
        let Some(pr) = self.progress.get_mut(&to) else {
            return false;
        };
        pr.become_snapshot(SendingImage {
            meta: snap.meta,
            data: snap.data,
            checksum,
        });
        self.send_snapshot_window(to)
    }

    /// Sends snapshot chunks from the follower's `snap_next` while fewer
    /// than [`SNAPSHOT_WINDOW`] chunks are unacknowledged (pipelining, so a
    /// high-latency link is not paced by its round trip).
    fn send_snapshot_window(&mut self, to: NodeId) -> bool {
        let Some(snap) = self.progress.get(&to).and_then(|p| p.sending.clone()) else {
            return false;
        };
        let checksum = snap.checksum;
        let len = snap.data.len() as u64;
        let chunk = self.cfg.snapshot_chunk_size as u64;
        let mut sent = false;
        loop {
            let Some(pr) = self.progress.get_mut(&to) else {
                return sent;
            };
            if pr.state != ProgressState::Snapshot
                || pr.snap_done_sent
                || pr.snap_next.saturating_sub(pr.snap_acked) >= SNAPSHOT_WINDOW * chunk
            {
                return sent;
            }
            let start = pr.snap_next.min(len);
            let end = (start + chunk).min(len);
            pr.snap_next = end;
            pr.snap_done_sent = end == len;
            self.send(
                to,
                MessageBody::Snapshot {
                    meta: snap.meta.clone(),
                    offset: start,
                    // Both at most `len`, the image's length: they fit a usize.
                    data: snap.data[start as usize..end as usize].to_vec(),
                    done: end == len,
                    checksum,
                },
            );
            sent = true;
        }
    }

    fn bcast_append(&mut self, send_if_empty: bool) {
        // Walk the peers without collecting them (hot path: no allocation).
        let mut next = self.progress.keys().next().copied();
        while let Some(p) = next {
            self.send_append(p, send_if_empty);
            next = self.progress.range(p + 1..).next().map(|(id, _)| *id);
        }
    }

    fn bcast_heartbeat(&mut self, read_round: u64) {
        let peers: Vec<(NodeId, u64)> = self
            .progress
            .iter()
            .map(|(id, pr)| (*id, pr.matched))
            .collect();
        for (p, matched) in peers {
            let commit = matched.min(self.log.committed);
            self.send(p, MessageBody::Heartbeat { commit, read_round });
        }
    }

    // ---- role changes --------------------------------------------------

    pub fn become_follower(&mut self, term: u64, leader: NodeId) {
        if term != self.term {
            self.term = term;
            self.vote = 0;
        }
        self.role = Role::Follower;
        self.leader = leader;
        self.reset_common();
    }

    fn reset_common(&mut self) {
        self.incoming_snapshot = None;
        self.leader_durable = 0;
        self.announced_durable = 0;
        self.durable_bcast_pending = false;
        self.slow_disk_ticks = 0;
        self.self_vote = None;
        self.election_elapsed = 0;
        self.heartbeat_elapsed = 0;
        self.reset_randomized_timeout();
        self.lead_transferee = None;
        self.votes.clear();
        self.read_only.reset();
        self.progress.clear();
    }

    fn become_pre_candidate(&mut self) {
        self.role = Role::PreCandidate;
        self.leader = 0;
        self.reset_common();
    }

    fn become_candidate(&mut self) {
        self.term += 1;
        self.vote = self.id;
        self.role = Role::Candidate;
        self.leader = 0;
        self.reset_common();
    }

    fn become_leader(&mut self) {
        let votes = std::mem::take(&mut self.votes);
        self.role = Role::Leader;
        self.leader = self.id;
        self.reset_common();
        let members: Vec<(NodeId, bool)> = self
            .voters
            .iter()
            .map(|v| (*v, false))
            .chain(self.learners.iter().map(|l| (*l, true)))
            .filter(|(id, _)| *id != self.id)
            .collect();
        for (id, learner) in members {
            let mut pr = self.new_progress(learner);
            // We just heard from those who voted for us.
            pr.recent_active = votes.get(&id) == Some(&true);
            self.progress.insert(id, pr);
        }
        self.append_entries(vec![Entry::default()]);
        // No membership change until our no-op is applied: a leader must
        // commit in its own term before changing the configuration (the
        // single-server change bug Ongaro described on raft-dev in 2015).
        self.pending_conf_index = self.log.last_index();
        self.bcast_append(true);
        self.maybe_commit();
    }

    pub fn campaign(&mut self, kind: Campaign) {
        if !self.promotable() {
            return;
        }
        let kind = match kind {
            Campaign::PreElection if !self.cfg.pre_vote => Campaign::Election,
            k => k,
        };
        let pre = kind == Campaign::PreElection;
        let vote_term = if pre {
            self.become_pre_candidate();
            self.term + 1
        } else {
            self.become_candidate();
            self.term
        };
        if pre {
            self.votes.insert(self.id, true);
            if self.poll() == Some(true) {
                self.campaign(Campaign::Election);
                return;
            }
        } else {
            // Ask the others at once, in parallel with our own fsync; our
            // own vote counts when the driver reports it durable.
            self.self_vote = Some((self.term, None));
        }
        let (last_index, last_term) = (self.log.last_index(), self.log.last_term());
        let voters = self.voters.clone();
        for v in voters {
            self.send_with_term(
                v,
                vote_term,
                MessageBody::Vote {
                    pre,
                    last_index,
                    last_term,
                    transfer: kind == Campaign::Transfer,
                },
            );
        }
    }

    /// `Node::ready` handed out write number `seq`: it carries our vote.
    pub fn hard_state_handed(&mut self, seq: u64) {
        if let Some((_, w @ None)) = &mut self.self_vote {
            *w = Some(seq);
        }
    }

    /// Writes up to number `seq` are durable.
    pub fn hard_state_persisted(&mut self, seq: u64) {
        let Some((term, Some(w))) = self.self_vote else {
            return;
        };
        if seq < w {
            return;
        }
        self.self_vote = None;
        if self.role != Role::Candidate || self.term != term {
            return;
        }
        self.votes.insert(self.id, true);
        if self.poll() == Some(true) {
            self.become_leader();
        }
    }

    /// `Some(true)`: won; `Some(false)`: lost; `None`: undecided.
    fn poll(&self) -> Option<bool> {
        let granted = self
            .voters
            .iter()
            .filter(|v| self.votes.get(v) == Some(&true))
            .count();
        let rejected = self
            .voters
            .iter()
            .filter(|v| self.votes.get(v) == Some(&false))
            .count();
        if granted >= self.quorum() {
            Some(true)
        } else if rejected > self.voters.len() - self.quorum() {
            Some(false)
        } else {
            None
        }
    }

    // ---- inputs --------------------------------------------------------

    pub fn tick(&mut self) {
        if !self.held.entries.is_empty() {
            self.held.ticks += 1;
            let limit = self
                .cfg
                .election_tick
                .saturating_mul(HELD_PROPOSAL_TICKS_FACTOR);
            if self.held.ticks >= limit {
                self.held = HeldProposals::default();
            }
        }
        if self.role == Role::Leader {
            self.tick_leader();
        } else {
            self.election_elapsed += 1;
            if self.promotable() && self.election_elapsed >= self.randomized_timeout {
                self.election_elapsed = 0;
                self.campaign(Campaign::PreElection);
            }
        }
    }

    fn tick_leader(&mut self) {
        self.election_elapsed += 1;
        self.heartbeat_elapsed += 1;
        self.check_own_disk();
        if self.election_elapsed >= self.cfg.election_tick {
            self.election_elapsed = 0;
            if self.cfg.check_quorum {
                let active = self
                    .voters
                    .iter()
                    .filter(|v| {
                        **v == self.id || self.progress.get(v).is_some_and(|p| p.recent_active)
                    })
                    .count();
                if active < self.quorum() {
                    let term = self.term;
                    self.become_follower(term, 0);
                    return;
                }
                for pr in self.progress.values_mut() {
                    pr.recent_active = false;
                }
            }
            self.lead_transferee = None;
        }
        if self.heartbeat_elapsed >= self.cfg.heartbeat_tick {
            self.heartbeat_elapsed = 0;
            let round = self.read_only.round;
            self.bcast_heartbeat(round);
            // Retransmit stalled snapshot transfers from the last ack.
            let stalled: Vec<NodeId> = self
                .progress
                .iter_mut()
                .filter(|(_, p)| p.state == ProgressState::Snapshot)
                .filter_map(|(id, p)| {
                    p.snap_idle += 1;
                    (p.snap_idle >= 3).then(|| {
                        p.snap_idle = 0;
                        p.rewind_snapshot(p.snap_acked);
                        *id
                    })
                })
                .collect();
            for id in stalled {
                // The transfer goes on with its own image, however many
                // snapshots were taken since it began.
                if self.progress.get(&id).is_some_and(|p| p.sending.is_some()) {
                    self.send_snapshot_window(id);
                } else {
                    self.send_snapshot(id);
                }
            }
        }
    }

    /// A leader whose followers keep committing ahead of its own fsync
    /// hands leadership to the most up-to-date of them.
    fn check_own_disk(&mut self) {
        let limit = self.cfg.slow_disk_transfer_ticks;
        if limit == 0 || self.lead_transferee.is_some() {
            return;
        }
        if self.log.persisted >= self.log.committed {
            self.slow_disk_ticks = 0;
            return;
        }
        self.slow_disk_ticks += 1;
        if self.slow_disk_ticks < limit {
            return;
        }
        self.slow_disk_ticks = 0;
        let committed = self.log.committed;
        let target = self
            .voters
            .iter()
            .filter(|v| **v != self.id)
            .filter_map(|v| self.progress.get(v).map(|p| (*v, p)))
            .filter(|(_, p)| p.recent_active && p.matched >= committed)
            .max_by_key(|(v, p)| (p.matched, std::cmp::Reverse(*v)))
            .map(|(v, _)| v);
        if let Some(to) = target {
            let _ = self.transfer_leader(to);
        }
    }

    pub fn propose(&mut self, data: Vec<u8>) -> Result<(), ProposeError> {
        let e = Entry {
            data,
            ..Default::default()
        };
        match self.role {
            Role::Leader => {
                if self.lead_transferee.is_some() {
                    // Not appended while the transferee catches up (it
                    // must end up holding every entry of ours): held, and
                    // forwarded to the new leader (or appended here if the
                    // transfer is abandoned).
                    if self.hold_proposals(vec![e]) {
                        return Ok(());
                    }
                    return Err(ProposeError::TransferInProgress);
                }
                self.append_entry(e);
                self.bcast_pending = true;
                Ok(())
            }
            _ if self.leader != 0 => {
                let l = self.leader;
                self.send(l, MessageBody::Propose { entries: vec![e] });
                Ok(())
            }
            _ => Err(ProposeError::NoLeader),
        }
    }

    pub fn propose_conf_change(&mut self, cc: ConfChange) -> Result<(), ProposeError> {
        if self.role != Role::Leader {
            return Err(ProposeError::NotLeader {
                leader_hint: (self.leader != 0).then_some(self.leader),
            });
        }
        if self.lead_transferee.is_some() {
            return Err(ProposeError::TransferInProgress);
        }
        if self.pending_conf_index > self.conf_applied {
            return Err(ProposeError::ConfChangePending);
        }
        let id = cc.node_id;
        let valid = id != 0
            && match cc.change {
                ConfChangeType::AddVoter => !self.voters.contains(&id),
                ConfChangeType::AddLearner => {
                    !self.voters.contains(&id) && !self.learners.contains(&id)
                }
                ConfChangeType::Remove => {
                    (self.voters.contains(&id) && self.voters.len() > 1)
                        || self.learners.contains(&id)
                }
            };
        if !valid {
            return Err(ProposeError::InvalidConfChange);
        }
        let Ok(data) = postcard::to_allocvec(&cc) else {
            return Err(ProposeError::InvalidConfChange);
        };
        self.append_entries(vec![Entry {
            kind: EntryType::ConfChange,
            data,
            ..Default::default()
        }]);
        self.pending_conf_index = self.log.last_index();
        self.bcast_pending = true;
        Ok(())
    }

    pub fn transfer_leader(&mut self, to: NodeId) -> Result<(), TransferError> {
        if self.role != Role::Leader {
            return Err(TransferError::NotLeader {
                leader_hint: (self.leader != 0).then_some(self.leader),
            });
        }
        if to == self.id || !self.voters.contains(&to) {
            return Err(TransferError::NotVoter);
        }
        if self.lead_transferee == Some(to) {
            return Ok(());
        }
        self.lead_transferee = Some(to);
        self.election_elapsed = 0;
        let caught_up = self
            .progress
            .get(&to)
            .is_some_and(|p| p.matched == self.log.last_index());
        if caught_up {
            self.send(to, MessageBody::TimeoutNow);
        } else {
            self.send_append(to, true);
        }
        Ok(())
    }

    pub fn read_index(&mut self, ctx: Vec<u8>) -> Result<(), ProposeError> {
        match self.role {
            Role::Leader => {
                let id = self.id;
                self.handle_read_index(id, ctx);
                Ok(())
            }
            _ if self.leader != 0 => {
                let l = self.leader;
                self.send(l, MessageBody::ReadIndex { ctx });
                Ok(())
            }
            _ => Err(ProposeError::NoLeader),
        }
    }

    fn append_entry(&mut self, mut e: Entry) {
        e.term = self.term;
        e.index = self.log.last_index() + 1;
        self.log.push(e);
    }

    fn append_entries(&mut self, mut ents: Vec<Entry>) {
        let li = self.log.last_index();
        for (i, e) in ents.iter_mut().enumerate() {
            e.term = self.term;
            e.index = li + 1 + i as u64;
        }
        for e in ents {
            self.log.push(e);
        }
    }

    /// The driver made entries up to `(index, term)` durable.
    pub fn persisted(&mut self, index: u64, term: u64) {
        if !self.log.persisted_to(index, term) {
            return;
        }
        if self.maybe_commit() {
            self.commit_bcast_pending = true;
        }
        if self.role == Role::Leader {
            if self.quorum() == 2 {
                self.durable_bcast_pending = true;
            }
        } else {
            self.infer_commit();
        }
    }

    pub fn announced_durable(&self) -> u64 {
        self.announced_durable
    }

    /// Leader: tells each voter follower how far its log is durable, when
    /// that is past its commit index and in its term (nothing earlier
    /// helps a follower: see [`Raft::infer_commit`]); records it as
    /// announced (reads wait for it).
    fn bcast_durable(&mut self) {
        let durable = self.log.persisted.min(self.log.last_index());
        if self.role != Role::Leader
            || self.quorum() != 2
            || durable <= self.log.committed.max(self.announced_durable)
            || self.log.term(durable) != Some(self.term)
        {
            return;
        }
        self.announced_durable = durable;
        let mut next = self.progress.keys().next().copied();
        while let Some(p) = next {
            if self.voters.contains(&p) {
                self.send(p, MessageBody::LeaderDurable { index: durable });
            }
            next = self.progress.range(p + 1..).next().map(|(id, _)| *id);
        }
    }

    /// Follower: commits what it and the leader both hold durably, when
    /// the two are a quorum (the rule and why it is safe: the module docs).
    /// Conservative around membership: no change may wait in the log past
    /// the configuration in force here.
    fn infer_commit(&mut self) {
        if self.role != Role::Follower || self.leader == 0 {
            return;
        }
        let c = self.leader_durable.min(self.log.persisted);
        if c <= self.log.committed
            || self.log.term(c) != Some(self.term)
            || self.quorum() != 2
            || !self.voters.contains(&self.id)
            || !self.voters.contains(&self.leader)
        {
            return;
        }
        let change_waiting = (self.conf_applied + 1..=self.log.last_index())
            .filter_map(|i| self.log.entry(i))
            .any(|e| e.kind == EntryType::ConfChange);
        if !change_waiting {
            self.log.commit_to(c);
        }
    }

    fn maybe_commit(&mut self) -> bool {
        if self.role != Role::Leader || self.voters.is_empty() {
            return false;
        }
        let mut matches = std::mem::take(&mut self.scratch);
        matches.clear();
        matches.extend(self.voters.iter().map(|v| {
            if *v == self.id && self.cfg.test_knobs.commit_before_own_persist {
                self.log.last_index()
            } else if *v == self.id {
                self.log.persisted.min(self.log.last_index())
            } else {
                self.progress.get(v).map_or(0, |p| p.matched)
            }
        }));
        matches.sort_unstable_by(|a, b| b.cmp(a));
        let q = matches[self.quorum() - 1];
        self.scratch = matches;
        if q <= self.log.committed || self.log.term(q) != Some(self.term) {
            return false;
        }
        self.log.commit_to(q);
        // Reads that waited for a commit in this term can now be indexed.
        for (from, ctx) in self.read_only.take_deferred() {
            self.handle_read_index(from, ctx);
        }
        true
    }

    fn handle_read_index(&mut self, from: NodeId, ctx: Vec<u8>) {
        let committed = self.log.committed;
        // A follower may have committed (and answered) up to what we
        // announced durable; the read must not miss that.
        let index = if self.cfg.test_knobs.read_below_announced_durable {
            committed
        } else {
            committed.max(self.announced_durable)
        };
        if self.cfg.test_knobs.read_without_quorum {
            self.respond_read(from, ctx, committed);
        } else if self.log.term(committed) != Some(self.term) {
            // Until it commits an entry of its own term, a leader does not
            // know the true commit index (after a restart it may be stale
            // even with no other voter), so the read waits for that.
            self.read_only.defer(from, ctx);
        } else if self.voters == [self.id] {
            self.respond_read(from, ctx, index);
        } else {
            self.read_only.add(from, ctx, index);
        }
    }

    fn respond_read(&mut self, from: NodeId, ctx: Vec<u8>, index: u64) {
        if from == self.id {
            self.read_states.push(ReadState { index, ctx });
        } else {
            self.send(from, MessageBody::ReadIndexResponse { index, ctx });
        }
    }

    /// Holds `entries` (proposals) until a leader can take them; `false`
    /// (nothing held) when the queue is full.
    fn hold_proposals(&mut self, entries: Vec<Entry>) -> bool {
        let bytes: u64 = entries.iter().map(|e| e.data.len() as u64).sum();
        let held = &mut self.held;
        if held.entries.len() + entries.len() > MAX_HELD_PROPOSALS
            || held.bytes.saturating_add(bytes) > MAX_HELD_PROPOSAL_BYTES
        {
            return false;
        }
        held.bytes += bytes;
        held.entries.extend(entries.into_iter().map(|e| Entry {
            data: e.data,
            ..Default::default()
        }));
        true
    }

    /// Whether held proposals can go on now (see [`Raft::release_held`]).
    pub fn held_releasable(&self) -> bool {
        !self.held.entries.is_empty()
            && match self.role {
                Role::Leader => self.lead_transferee.is_none(),
                Role::Follower => self.leader != 0,
                Role::PreCandidate | Role::Candidate => false,
            }
    }

    /// Held proposals go on, in the order they came: appended if we lead
    /// with no transfer pending, else forwarded to the leader we follow.
    /// Moved, never copied: the queue is empty afterwards.
    fn release_held(&mut self) {
        if !self.held_releasable() {
            return;
        }
        let entries = if self.cfg.test_knobs.copy_held_proposals {
            self.held.entries.clone()
        } else {
            std::mem::take(&mut self.held).entries
        };
        if self.role == Role::Leader {
            self.append_entries(entries);
            self.bcast_pending = true;
        } else {
            let l = self.leader;
            self.send(l, MessageBody::Propose { entries });
        }
    }

    /// Sends the appends deferred since the last `Ready` (batching), after
    /// appending or forwarding held proposals that can go on now.
    pub fn flush_appends(&mut self) {
        self.release_held();
        let commit = std::mem::take(&mut self.commit_bcast_pending);
        let entries = std::mem::take(&mut self.bcast_pending);
        if self.role == Role::Leader && (commit || entries) {
            self.bcast_append(commit);
        }
        if std::mem::take(&mut self.durable_bcast_pending) {
            self.bcast_durable();
        }
    }

    /// Starts a heartbeat round for reads queued since the last one.
    pub fn flush_reads(&mut self) {
        if self.role != Role::Leader {
            return;
        }
        if let Some(round) = self.read_only.start_round() {
            self.bcast_heartbeat(round);
            self.release_reads();
        }
    }

    pub fn reads_pending_flush(&self) -> bool {
        self.read_only.flush_pending
    }

    fn release_reads(&mut self) {
        let voters = self.voters.clone();
        for r in self.read_only.release(self.id, &voters) {
            self.respond_read(r.from, r.ctx, r.index);
        }
    }

    // ---- step ----------------------------------------------------------

    pub fn step(&mut self, m: Message) {
        if m.from == 0 || m.from == self.id || (m.to != self.id && m.to != 0) || !sane(&m) {
            return;
        }
        let forwarded = matches!(
            m.body,
            MessageBody::Propose { .. } | MessageBody::ReadIndex { .. }
        );
        if forwarded {
            // Client requests carry no term.
        } else if m.term > self.term {
            match m.body {
                MessageBody::Vote { pre, transfer, .. } => {
                    let in_lease = self.cfg.check_quorum
                        && self.leader != 0
                        && self.election_elapsed < self.cfg.election_tick;
                    if in_lease && !transfer {
                        return;
                    }
                    if !pre {
                        self.become_follower(m.term, 0);
                    }
                }
                MessageBody::VoteResponse { pre: true, reject } if !reject => {}
                MessageBody::Append { .. }
                | MessageBody::Heartbeat { .. }
                | MessageBody::Snapshot { .. }
                | MessageBody::LeaderDurable { .. }
                | MessageBody::TimeoutNow => self.become_follower(m.term, m.from),
                _ => self.become_follower(m.term, 0),
            }
        } else if m.term < self.term {
            match m.body {
                MessageBody::Append { .. } | MessageBody::Heartbeat { .. }
                    if self.cfg.check_quorum || self.cfg.pre_vote =>
                {
                    // Tell a stale leader about the newer term.
                    self.send(
                        m.from,
                        MessageBody::AppendResponse {
                            index: 0,
                            reject: true,
                            hint_index: 0,
                            hint_term: 0,
                        },
                    );
                }
                MessageBody::Vote { pre: true, .. } => {
                    let t = self.term;
                    self.send_with_term(
                        m.from,
                        t,
                        MessageBody::VoteResponse {
                            pre: true,
                            reject: true,
                        },
                    );
                }
                _ => {}
            }
            return;
        }

        if let MessageBody::Vote {
            pre,
            last_index,
            last_term,
            ..
        } = m.body
        {
            self.handle_vote(m.from, m.term, pre, last_index, last_term);
            return;
        }
        match self.role {
            Role::Leader => self.step_leader(m),
            Role::Candidate | Role::PreCandidate => self.step_candidate(m),
            Role::Follower => self.step_follower(m),
        }
    }

    fn handle_vote(&mut self, from: NodeId, term: u64, pre: bool, last_index: u64, last_term: u64) {
        let can_vote =
            self.vote == from || (self.vote == 0 && self.leader == 0) || (pre && term > self.term);
        let up_to_date = self.cfg.test_knobs.skip_election_restriction
            || self.log.is_up_to_date(last_index, last_term);
        if can_vote && up_to_date {
            self.send_with_term(from, term, MessageBody::VoteResponse { pre, reject: false });
            if !pre {
                self.election_elapsed = 0;
                self.vote = from;
            }
        } else {
            let t = self.term;
            self.send_with_term(from, t, MessageBody::VoteResponse { pre, reject: true });
        }
    }

    fn step_leader(&mut self, m: Message) {
        let from = m.from;
        match m.body {
            MessageBody::Propose { entries } => {
                if entries.is_empty() {
                    return;
                }
                if self.lead_transferee.is_some() {
                    self.hold_proposals(entries);
                    return;
                }
                let ents = entries
                    .into_iter()
                    .map(|e| Entry {
                        data: e.data,
                        ..Default::default()
                    })
                    .collect();
                self.append_entries(ents);
                self.bcast_pending = true;
            }
            MessageBody::ReadIndex { ctx } if self.progress.contains_key(&from) => {
                self.handle_read_index(from, ctx);
            }
            MessageBody::AppendResponse {
                index,
                reject,
                hint_index,
                hint_term,
            } => self.handle_append_response(from, index, reject, hint_index, hint_term),
            MessageBody::HeartbeatResponse { read_round } => {
                let last = self.log.last_index();
                let Some(pr) = self.progress.get_mut(&from) else {
                    return;
                };
                pr.recent_active = true;
                pr.probe_sent = false;
                // A lost append would otherwise pin a full window forever:
                // free one slot so a new append (or its rejection) flows.
                if pr.state == ProgressState::Replicate && pr.inflights.full() {
                    pr.inflights.free_first();
                }
                if pr.state != ProgressState::Snapshot && pr.matched < last {
                    // Even if empty: if appends were lost, the follower
                    // rejects this one and we fall back to probing.
                    self.send_append(from, true);
                }
                if self.voters.contains(&from) {
                    self.read_only.ack(from, read_round);
                    self.release_reads();
                }
            }
            MessageBody::SnapshotResponse {
                index,
                offset,
                reject,
            } => {
                let Some(pr) = self.progress.get_mut(&from) else {
                    return;
                };
                pr.recent_active = true;
                if pr.state != ProgressState::Snapshot || pr.pending_snapshot() != index {
                    return;
                }
                // A snapshot taken since the transfer began does not
                // restart it: the transfer sends the image it holds.
                if reject {
                    // Lost or reordered chunk: resend from what it has.
                    pr.snap_acked = offset;
                    pr.rewind_snapshot(offset);
                } else if offset > pr.snap_acked {
                    pr.snap_acked = offset;
                    pr.snap_idle = 0;
                }
                self.send_snapshot_window(from);
            }
            _ => {}
        }
    }

    fn handle_append_response(
        &mut self,
        from: NodeId,
        index: u64,
        reject: bool,
        hint_index: u64,
        hint_term: u64,
    ) {
        let last = self.log.last_index();
        let Some(pr) = self.progress.get_mut(&from) else {
            return;
        };
        pr.recent_active = true;
        if reject {
            let mut next_probe = hint_index;
            if hint_term > 0 {
                next_probe = self.log.find_conflict_by_term(hint_index, hint_term).0;
            }
            let Some(pr) = self.progress.get_mut(&from) else {
                return;
            };
            if pr.maybe_decr_to(index, next_probe) {
                if pr.state == ProgressState::Replicate {
                    pr.become_probe();
                }
                self.send_append(from, false);
            }
            return;
        }
        if index > last {
            return; // a follower cannot hold more than the leader's log
        }
        let was_paused = pr.is_paused();
        if !pr.maybe_update(index) {
            if pr.state == ProgressState::Replicate {
                pr.inflights.free_le(index);
            }
            return;
        }
        match pr.state {
            ProgressState::Probe => pr.become_replicate(),
            ProgressState::Snapshot => {
                if pr.matched >= pr.pending_snapshot() {
                    pr.become_probe();
                    pr.become_replicate();
                }
            }
            ProgressState::Replicate => pr.inflights.free_le(index),
        }
        let matched = pr.matched;
        if self.maybe_commit() {
            self.commit_bcast_pending = true;
        } else if was_paused {
            self.send_append(from, false);
        }
        while self.send_append(from, false) {}
        if self.lead_transferee == Some(from) && matched == self.log.last_index() {
            self.send(from, MessageBody::TimeoutNow);
        }
    }

    fn step_candidate(&mut self, m: Message) {
        match m.body {
            MessageBody::Append { .. }
            | MessageBody::Heartbeat { .. }
            | MessageBody::Snapshot { .. } => {
                self.become_follower(m.term, m.from);
                self.step_follower(m);
            }
            MessageBody::VoteResponse { pre, reject } => {
                if pre != (self.role == Role::PreCandidate) || !self.voters.contains(&m.from) {
                    return;
                }
                self.votes.insert(m.from, !reject);
                match self.poll() {
                    Some(true) if pre => self.campaign(Campaign::Election),
                    Some(true) => self.become_leader(),
                    Some(false) => {
                        let t = self.term;
                        self.become_follower(t, 0);
                    }
                    None => {}
                }
            }
            MessageBody::Propose { entries } if !entries.is_empty() => {
                self.hold_proposals(entries);
            }
            _ => {}
        }
    }

    fn step_follower(&mut self, m: Message) {
        let from = m.from;
        match m.body {
            MessageBody::Append {
                prev_index,
                prev_term,
                entries,
                commit,
            } => {
                self.election_elapsed = 0;
                self.leader = from;
                self.handle_append(from, m.term, prev_index, prev_term, entries, commit);
            }
            MessageBody::Heartbeat { commit, read_round } => {
                self.election_elapsed = 0;
                self.leader = from;
                self.log.commit_to(commit);
                self.send(from, MessageBody::HeartbeatResponse { read_round });
            }
            MessageBody::Snapshot {
                meta,
                offset,
                data,
                done,
                checksum,
            } => {
                self.election_elapsed = 0;
                self.leader = from;
                self.handle_snapshot_chunk(
                    from,
                    Chunk {
                        meta,
                        offset,
                        data,
                        done,
                        checksum,
                    },
                );
            }
            MessageBody::ReadIndexResponse { index, ctx } => {
                self.read_states.push(ReadState { index, ctx });
            }
            MessageBody::TimeoutNow => self.campaign(Campaign::Transfer),
            MessageBody::LeaderDurable { index } if from == self.leader => {
                self.leader_durable = self.leader_durable.max(index);
                self.infer_commit();
            }
            // A proposal forwarded to us as leader that reached us as a
            // follower (we just handed leadership over or lost it): passed
            // on to the leader we know, or held until we know one. Not
            // back to the member that sent it (each of us would take the
            // other for the leader: one view is stale; its caller times
            // out).
            MessageBody::Propose { entries } if from != self.leader && !entries.is_empty() => {
                self.hold_proposals(entries);
            }
            _ => {}
        }
    }

    fn handle_append(
        &mut self,
        from: NodeId,
        term: u64,
        prev_index: u64,
        prev_term: u64,
        entries: Vec<Entry>,
        commit: u64,
    ) {
        if prev_index < self.log.committed {
            self.ack_committed(from);
            return;
        }
        if entries.iter().any(|e| e.term > term) {
            return;
        }
        match self.log.maybe_append(prev_index, prev_term, entries) {
            Err(()) => {}
            Ok(Some(last_new)) => {
                self.log.commit_to(commit.min(last_new));
                self.infer_commit();
                self.send(
                    from,
                    MessageBody::AppendResponse {
                        index: last_new,
                        reject: false,
                        hint_index: 0,
                        hint_term: 0,
                    },
                );
            }
            Ok(None) => {
                let (hint_index, hint_term) = self
                    .log
                    .find_conflict_by_term(prev_index.min(self.log.last_index()), prev_term);
                self.send(
                    from,
                    MessageBody::AppendResponse {
                        index: prev_index,
                        reject: true,
                        hint_index,
                        hint_term,
                    },
                );
            }
        }
    }

    /// One chunk of the leader's snapshot. Chunks are taken in order into
    /// one buffer (a chunk out of order is answered with the offset wanted);
    /// the buffer is bounded by `max_snapshot_bytes`, and the image is
    /// installed only if its CRC32C is the one the leader announced.
    fn handle_snapshot_chunk(&mut self, from: NodeId, chunk: Chunk) {
        let Chunk {
            meta,
            offset,
            data,
            done,
            checksum,
        } = chunk;
        if meta.index <= self.log.committed {
            self.incoming_snapshot = None;
            self.ack_committed(from);
            return;
        }
        let index = meta.index;
        let respond = |r: &mut Self, offset: u64, reject: bool| {
            r.send(
                from,
                MessageBody::SnapshotResponse {
                    index,
                    offset,
                    reject,
                },
            );
        };
        let same = self
            .incoming_snapshot
            .as_ref()
            .is_some_and(|s| s.meta == meta && s.checksum == checksum);
        if !same {
            if offset != 0 {
                respond(self, 0, true);
                return;
            }
            self.incoming_snapshot = Some(IncomingSnapshot {
                meta,
                checksum,
                crc: 0,
                data: Vec::new(),
            });
        }
        let max = self.cfg.max_snapshot_bytes;
        let Some(incoming) = self.incoming_snapshot.as_mut() else {
            return;
        };
        let have = incoming.data.len() as u64;
        if offset != have {
            respond(self, have, offset > have);
            return;
        }
        if have.saturating_add(data.len() as u64) > max {
            // Larger than any image this member takes: drop it, and do not
            // ask for more (the leader's transfer stalls, and is logged there
            // as a follower that does not catch up).
            self.incoming_snapshot = None;
            return;
        }
        incoming.crc = crc32c::crc32c_append(incoming.crc, &data);
        incoming.data.extend_from_slice(&data);
        if !done {
            let got = incoming.data.len() as u64;
            respond(self, got, false);
            return;
        }
        let Some(incoming) = self.incoming_snapshot.take() else {
            return;
        };
        if incoming.crc != incoming.checksum {
            // Damaged on the way or in memory: start over.
            respond(self, 0, true);
            return;
        }
        let meta = incoming.meta;
        if self.log.match_term(meta.index, meta.term) {
            self.log.commit_to(meta.index);
        } else {
            self.set_conf(&meta.conf_state);
            self.conf_applied = meta.index;
            self.conf_changed = true;
            self.image_missing = true;
            self.log.restore(Snapshot {
                meta,
                data: Image::from(incoming.data),
            });
        }
        self.ack_committed(from);
    }

    #[cfg(test)]
    pub(crate) fn incoming_snapshot_bytes(&self) -> usize {
        self.incoming_snapshot.as_ref().map_or(0, |s| s.data.len())
    }

    /// Tells the leader this follower holds everything up to its commit
    /// index (an append or snapshot at or below it needs nothing more).
    fn ack_committed(&mut self, to: NodeId) {
        let index = self.log.committed;
        self.send(
            to,
            MessageBody::AppendResponse {
                index,
                reject: false,
                hint_index: 0,
                hint_term: 0,
            },
        );
    }

    // ---- membership ----------------------------------------------------

    /// Applies the conf changes among `entries` (committed, being handed
    /// out) that are not in force yet.
    pub fn apply_conf_entries(&mut self, entries: &[Entry]) {
        for e in entries {
            if e.index <= self.conf_applied {
                continue;
            }
            self.conf_applied = e.index;
            if e.kind != EntryType::ConfChange {
                continue;
            }
            if let Ok(cc) = postcard::from_bytes::<ConfChange>(&e.data) {
                self.apply_conf_change(&cc);
            }
        }
    }

    fn apply_conf_change(&mut self, cc: &ConfChange) {
        let id = cc.node_id;
        let leader = self.role == Role::Leader;
        match cc.change {
            ConfChangeType::AddVoter => {
                self.learners.retain(|l| *l != id);
                if !self.voters.contains(&id) {
                    self.voters.push(id);
                    self.voters.sort_unstable();
                }
                if leader && id != self.id {
                    match self.progress.get_mut(&id) {
                        Some(p) => p.is_learner = false,
                        None => {
                            let p = self.new_progress(false);
                            self.progress.insert(id, p);
                        }
                    }
                }
            }
            ConfChangeType::AddLearner => {
                if self.voters.contains(&id) || self.learners.contains(&id) {
                    return;
                }
                self.learners.push(id);
                self.learners.sort_unstable();
                if leader && id != self.id {
                    let p = self.new_progress(true);
                    self.progress.insert(id, p);
                }
            }
            ConfChangeType::Remove => {
                self.voters.retain(|v| *v != id);
                self.learners.retain(|l| *l != id);
                self.progress.remove(&id);
                if self.lead_transferee == Some(id) {
                    self.lead_transferee = None;
                }
                if leader && id == self.id {
                    // Let followers learn the commit of our removal, then
                    // stop leading.
                    self.bcast_append(true);
                    let t = self.term;
                    self.become_follower(t, 0);
                }
            }
        }
        self.conf_changed = true;
        if self.role == Role::Leader && self.maybe_commit() {
            self.commit_bcast_pending = true;
        }
        if self.role == Role::Leader {
            self.release_reads();
        }
    }

    /// Takes a snapshot of the applied state: `data` is the state machine's
    /// serialization at the applied index.
    pub fn compact(&mut self, data: Vec<u8>) -> Option<SnapshotMeta> {
        let index = self.log.applied;
        let term = self.log.term(index)?;
        let meta = SnapshotMeta {
            index,
            term,
            conf_state: self.conf_state(),
        };
        self.compact_with(meta, Some(data.into()))
    }

    /// Records a snapshot of the state at applied `meta.index` with its
    /// image (`Some`, kept as it is: no copy) or without it (`None`: this
    /// member keeps no copy, and asks for a new snapshot through
    /// `image_wanted` once a follower needs one). The term and the
    /// membership are the caller's, read when it cut the snapshot: the
    /// entry may have left memory since, and a configuration change applied
    /// after the cut must not be recorded as part of it (a follower that
    /// installs the snapshot replays that change from the log). `None`
    /// unless it is newer than our snapshot, or brings the image our
    /// snapshot lacks.
    pub fn compact_with(
        &mut self,
        meta: SnapshotMeta,
        data: Option<Image>,
    ) -> Option<SnapshotMeta> {
        let index = meta.index;
        let current = self.log.snapshot_index();
        let newer = index > current || (index == current && self.image_missing && data.is_some());
        if index > self.log.applied || !newer {
            return None;
        }
        if self.log.term(index).is_some_and(|t| t != meta.term) {
            return None;
        }
        self.image_missing = data.is_none();
        self.log.compact(Snapshot {
            meta: meta.clone(),
            data: data.unwrap_or_default(),
        });
        Some(meta)
    }

    /// Drops applied entries from memory beyond the last
    /// `catch_up_entries`, keeping those a snapshot being sent leads to (a
    /// follower that installs it continues from there), and, on a leader,
    /// those a live follower (replicating or being probed) still lacks, up to
    /// [`SNAPSHOT_PIN_FACTOR`] and [`LIVE_FOLLOWER_PIN_FACTOR`] times as many: a transfer or a follower
    /// slower than the writes must not hold the log in memory without
    /// bound. A follower with a slow disk (typically the old leader just
    /// after a hand-over) thus keeps receiving entries instead of a
    /// snapshot; entries, not a snapshot, answer the proposals waiting on
    /// it (each by its own apply). A member alone in its configuration
    /// keeps no tail: it has no follower to catch up, and a member added
    /// later lacks the whole history, so it starts from a snapshot anyway.
    pub fn trim_log(&mut self) {
        let alone = self.learners.is_empty() && self.voters.iter().all(|v| *v == self.id);
        let tail = if alone { 0 } else { self.cfg.catch_up_entries };
        let mut through = self.log.applied.saturating_sub(tail);
        let floor = self
            .log
            .applied
            .saturating_sub(tail.saturating_mul(SNAPSHOT_PIN_FACTOR));
        let live_floor = self
            .log
            .applied
            .saturating_sub(tail.saturating_mul(LIVE_FOLLOWER_PIN_FACTOR));
        let leader = self.role == Role::Leader;
        for pr in self.progress.values() {
            if pr.state == ProgressState::Snapshot {
                through = through.min(pr.pending_snapshot().max(floor));
            } else if leader && pr.recent_active {
                // Replicate or Probe: a probe's `matched` is what is known
                // so far (0 until its first answer: the floor then bounds it).
                through = through.min(pr.matched.max(live_floor));
            }
        }
        self.log.trim_to(through);
    }
}
