//! qed's Raft core: a deterministic, sans-IO state machine.
//!
//! [`Node`] owns no sockets, files, threads, clocks or randomness of its own
//! (its PRNG is seeded from [`Config::seed`]). It is driven by method calls
//! and answers with a [`Ready`]; the server's Raft loop is the *driver*. The
//! design is etcd raft's, with a leader that never waits on its own disk.
//!
//! # The driver's duties, in order
//!
//! 1. **Start**: build a [`Config`] and call [`Node::new`] with the durable
//!    [`RestartState`] (hard state, newest snapshot, entries after it).
//! 2. **Feed inputs**: call [`Node::tick`] every tick interval (e.g. 100 ms),
//!    [`Node::step`] for every peer message received, and the commands
//!    [`Node::propose`], [`Node::read_index`], [`Node::propose_conf_change`],
//!    [`Node::transfer_leader`] as clients ask.
//! 3. **Drain**: whenever [`Node::has_ready`], take [`Node::ready`] and:
//!    1. send every message tagged `before_persist` now;
//!    2. install the `snapshot`, write `entries` and `hard_state`, and start
//!       the fsync — without waiting for it: ticks, votes and heartbeats go
//!       on while it runs, and more `Ready`s may be taken (writes must
//!       complete in order);
//!    3. when that write is durable, send the remaining messages and call
//!       [`Node::on_persisted`] with the `Ready`'s `persist` token. Only then
//!       does the leader count its own copy toward commit; an entry commits
//!       as soon as a quorum of voters has it durable, which may be the
//!       followers alone;
//!    4. apply `committed_entries` in order (`conf_state` reports the
//!       membership after them; the core has already put it in force);
//!    5. answer each read in `read_states` once the applied index reaches its
//!       `index`.
//! 4. **Snapshot**: now and then, snapshot the state machine at the applied
//!    index, store it durably, and call [`Node::compact`] with its bytes
//!    (or [`Node::compact_at_without_image`]); the core sends the bytes in
//!    chunks to followers that are behind its in-memory log, which holds
//!    only [`Config::catch_up_entries`] applied entries (older ones are in
//!    the driver's WAL and snapshot). When [`Node::take_image_wanted`]
//!    says a follower needs a snapshot the core cannot send, take one at
//!    once.
//!
//! # Rules worth knowing
//!
//! - The driver's fsync is never on the core's critical path: a leader's
//!   appends and heartbeats, a candidate's vote requests, heartbeat answers
//!   and pre-votes all leave before persistence; what depends on durable
//!   state (vote grants, append acknowledgements, the leader's and the
//!   candidate's own votes) waits for it. A leader whose followers keep
//!   committing ahead of its own disk hands leadership over
//!   ([`Config::slow_disk_transfer_ticks`]).
//! - PreVote and CheckQuorum are on: a leader that has not heard from a
//!   quorum within an election timeout steps down; followers that hear from a
//!   leader ignore vote requests (except a TimeoutNow-triggered election).
//! - Membership changes go one server at a time and take effect when the
//!   entry is *applied* (handed out in `committed_entries`), as in etcd.
//!   A leader that applies its own removal steps down. A new leader accepts
//!   no change until its no-op entry is applied.
//! - Batching is automatic: all proposals made between two `Ready`s leave
//!   in one append per follower, so a driver that proposes a burst and then
//!   drains once gets large batches for free.
//! - Where the leader and one follower are a quorum (2 or 3 voters), the
//!   leader tells each voter follower after its own fsync how far its log
//!   is durable (`MessageBody::LeaderDurable`); a follower holding those
//!   entries durably, of the current term, commits them itself (the
//!   leader's own rule, applied half a round trip sooner; `raft.rs` argues
//!   why), so a write proposed at a follower is answered after about one
//!   round trip instead of two. The message is a hint: send it unreliably
//!   (losing it only delays the follower to the leader's commit). A read
//!   at the leader is answered no lower than the highest index it
//!   announced, since a follower may have answered a write there.
//! - `MessageBody::Snapshot` chunks can be large: send them on their own
//!   stream so heartbeats and votes never queue behind them.
//! - Committed entries with empty data are the leader's no-ops; entries of
//!   kind `ConfChange` carry a postcard [`ConfChange`](crate::wire::raft::ConfChange)
//!   whose `context` the server defines.
//! - Proposals on a follower are forwarded to the leader; without a known
//!   leader they fail with [`ProposeError::NoLeader`]. A leader handing
//!   leadership over appends nothing new (the transferee must end up
//!   holding every entry it has): it holds proposals, its own and
//!   forwarded ones, and forwards them to the new leader once it knows it
//!   (or appends them if the transfer is abandoned). A forwarded proposal
//!   that reaches a member not leading is passed on to its leader, or held
//!   while it knows none (at most two election timeouts). Each proposal is
//!   moved, never copied: it is appended at most once. Forwarded proposals
//!   and reads may still be lost (a crash, a dropped message, no leader in
//!   time); drivers time them out.
//!
//! Modules: [`config`] (settings, errors), `log` (in-memory log view),
//! `progress` (per-follower replication state), `read_only` (ReadIndex
//! queue), `raft` (role logic), `node` (the driver API and `Ready`).

pub mod config;
mod log;
mod node;
mod progress;
#[allow(clippy::module_inception)]
mod raft;
mod read_only;

pub use config::{Config, ConfigError, ProposeError, TestKnobs, TransferError};
pub use log::{Image, Snapshot};
pub use node::{Node, PeerProgress, PersistToken, Ready, RestartState, SoftState, Status};
pub use progress::ProgressState;
pub use raft::{Outbound, ReadState, Role};

#[cfg(test)]
mod tests;
