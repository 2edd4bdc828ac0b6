//! Configuration of one Raft node, and the errors its commands return.
//!
//! Times are in ticks: the driver calls `tick()` at a fixed interval (etcd's
//! default is 100 ms) and every timeout here counts those calls. The core
//! never reads a clock.

use crate::wire::raft::NodeId;

/// Settings for one node. [`Config::new`] gives etcd's defaults.
#[derive(Debug, Clone)]
pub struct Config {
    /// This node's id; non-zero.
    pub id: NodeId,
    /// Ticks without hearing from a leader before a follower campaigns; the
    /// actual timeout is drawn uniformly from `[election_tick,
    /// 2 * election_tick)` so that candidates rarely split the vote. Default
    /// 10, i.e. 10 heartbeats (etcd's ratio).
    pub election_tick: u32,
    /// Ticks between leader heartbeats. Default 1.
    pub heartbeat_tick: u32,
    /// Upper bound on the entry bytes in one append message (at least one
    /// entry is always sent). Default 1 MiB, etcd's.
    pub max_size_per_msg: u64,
    /// Append messages in flight per follower in replicate state (pipelining
    /// window). Default 256, etcd's.
    pub max_inflight_msgs: usize,
    /// Entry bytes in flight per follower; 0 is unlimited. Default 16 MiB,
    /// so a lossy link cannot queue unbounded data.
    pub max_inflight_bytes: u64,
    /// Applied entries kept in memory for followers a little behind; one
    /// further behind gets a snapshot. Default 5000, etcd 3.6's
    /// `SnapshotCatchUpEntries`: enough for a follower that missed a few
    /// seconds of writes, while the log's memory stays a small tail
    /// rather than everything since the last snapshot.
    pub catch_up_entries: u64,
    /// Bytes per InstallSnapshot chunk. Default 1 MiB.
    pub snapshot_chunk_size: usize,
    /// The largest snapshot image a follower receives: a transfer that
    /// grows past it is dropped (a leader cannot make a follower buffer
    /// without bound). Default 16 GiB, twice etcd's largest sensible quota;
    /// a node sets it from its own quota.
    pub max_snapshot_bytes: u64,
    /// Run a pre-election that does not bump terms, so a partitioned node
    /// rejoining cannot disrupt a healthy leader. Default on.
    pub pre_vote: bool,
    /// A leader that has not heard from a quorum for an election timeout
    /// steps down, and followers ignore votes while they hear from a leader.
    /// Default on.
    pub check_quorum: bool,
    /// Ticks the leader's own log may stay behind the quorum's commit (its
    /// followers persist faster than it does) before it hands leadership to
    /// the most up-to-date follower; 0 disables. Default 20 (two election
    /// timeouts): a leader with a slow disk must not slow the cluster.
    pub slow_disk_transfer_ticks: u32,
    /// Seed of the core's PRNG (randomized election timeouts). Use something
    /// different per node, e.g. the id mixed with a boot counter.
    pub seed: u64,
    /// Deliberately broken rules, for proving that the simulator's checkers
    /// catch bugs. Never set outside tests.
    #[doc(hidden)]
    pub test_knobs: TestKnobs,
}

/// Deliberate bugs; see [`Config::test_knobs`].
#[doc(hidden)]
#[derive(Debug, Clone, Copy, Default)]
pub struct TestKnobs {
    /// Grant votes without checking that the candidate's log is up to date.
    pub skip_election_restriction: bool,
    /// Answer ReadIndex at once from the leader's commit index, without a
    /// heartbeat round confirming leadership.
    pub read_without_quorum: bool,
    /// Count the leader's own copy toward commit before it is durable.
    pub commit_before_own_persist: bool,
    /// Followers acknowledge appends before the entries are durable.
    pub ack_before_persist: bool,
    /// Hand held proposals on (see the leader transfer) but keep a copy
    /// held, to go on again later.
    pub copy_held_proposals: bool,
    /// The leader's read index is its commit index alone, not raised to
    /// what it announced durable: a follower may already have committed
    /// (and answered) a write the leader does not know is committed.
    pub read_below_announced_durable: bool,
}

impl Config {
    pub fn new(id: NodeId) -> Self {
        Config {
            id,
            election_tick: 10,
            heartbeat_tick: 1,
            max_size_per_msg: 1024 * 1024,
            max_inflight_msgs: 256,
            max_inflight_bytes: 16 * 1024 * 1024,
            catch_up_entries: 5000,
            snapshot_chunk_size: 1024 * 1024,
            max_snapshot_bytes: 16 << 30,
            pre_vote: true,
            check_quorum: true,
            slow_disk_transfer_ticks: 20,
            seed: id,
            test_knobs: TestKnobs::default(),
        }
    }

    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        if self.id == 0 {
            return Err(ConfigError::ZeroId);
        }
        if self.heartbeat_tick == 0 || self.election_tick <= self.heartbeat_tick {
            return Err(ConfigError::BadTicks);
        }
        if self.max_inflight_msgs == 0 || self.snapshot_chunk_size == 0 {
            return Err(ConfigError::ZeroLimit);
        }
        Ok(())
    }
}

/// Why a [`Config`] or restart state was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigError {
    ZeroId,
    /// `heartbeat_tick` must be non-zero and below `election_tick`.
    BadTicks,
    ZeroLimit,
    /// The restart state's entries do not follow the snapshot contiguously.
    BadLog,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConfigError::ZeroId => write!(f, "raft node id must be non-zero"),
            ConfigError::BadTicks => {
                write!(f, "heartbeat_tick must be non-zero and below election_tick")
            }
            ConfigError::ZeroLimit => write!(f, "inflight and chunk limits must be non-zero"),
            ConfigError::BadLog => write!(f, "persisted entries do not follow the snapshot"),
        }
    }
}

impl std::error::Error for ConfigError {}

/// Why a proposal (or conf change) was not accepted. Accepted proposals can
/// still be lost (leader change, message loss): the driver times them out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProposeError {
    /// No leader is known (election in progress, or partitioned).
    NoLeader,
    /// This command must run on the leader; retry there.
    NotLeader { leader_hint: Option<NodeId> },
    /// The leader is handing leadership over and holds as many proposals
    /// as it may already; retry after it completes.
    TransferInProgress,
    /// A membership change is still uncommitted or unapplied.
    ConfChangePending,
    /// The change makes no sense for the current membership (adding a
    /// present voter, removing an absent node, removing the last voter).
    InvalidConfChange,
}

impl std::fmt::Display for ProposeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProposeError::NoLeader => write!(f, "raft: no leader"),
            ProposeError::NotLeader {
                leader_hint: Some(l),
            } => write!(f, "raft: not leader (leader is {l:x})"),
            ProposeError::NotLeader { leader_hint: None } => write!(f, "raft: not leader"),
            ProposeError::TransferInProgress => write!(f, "raft: leader transfer in progress"),
            ProposeError::ConfChangePending => {
                write!(f, "raft: a membership change is already pending")
            }
            ProposeError::InvalidConfChange => write!(f, "raft: invalid membership change"),
        }
    }
}

impl std::error::Error for ProposeError {}

/// Why a leader transfer was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransferError {
    NotLeader {
        leader_hint: Option<NodeId>,
    },
    /// The target is not a voter (or is this node).
    NotVoter,
}

impl std::fmt::Display for TransferError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TransferError::NotLeader { .. } => write!(f, "raft: not leader"),
            TransferError::NotVoter => write!(f, "raft: transfer target is not another voter"),
        }
    }
}

impl std::error::Error for TransferError {}
