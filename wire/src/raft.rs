//! Raft peer messages: what one node's Raft core sends another.
//!
//! These are the types the sans-IO core in `qed::raft` consumes and emits;
//! the transport frames them with postcard like every other message. Node ids
//! are non-zero `u64`s; `0` means "none" (no vote, no known leader).
//!
//! Every field is untrusted on receipt: the core validates indices, terms and
//! senders and drops what does not fit, it never panics on a message.

use serde::{Deserialize, Serialize};

/// A member's id. `0` is reserved for "none".
pub type NodeId = u64;

/// What an [`Entry`] carries.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum EntryType {
    /// Opaque state machine command (empty data: the leader's no-op).
    #[default]
    Normal,
    /// A postcard-encoded [`ConfChange`].
    ConfChange,
}

/// One log entry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Entry {
    pub term: u64,
    pub index: u64,
    pub kind: EntryType,
    #[serde(with = "crate::bytes")]
    pub data: Vec<u8>,
}

/// What must be durable before a node answers a vote or an append.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct HardState {
    pub term: u64,
    /// Who this node voted for in `term` (0: nobody).
    pub vote: NodeId,
    pub commit: u64,
}

/// The membership: voters decide elections and commits, learners only
/// receive the log.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ConfState {
    pub voters: Vec<NodeId>,
    pub learners: Vec<NodeId>,
}

/// One single-server membership change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ConfChangeType {
    /// Add a voter, or promote a learner to voter.
    AddVoter,
    /// Add a learner (a non-voting member).
    AddLearner,
    /// Remove a voter or a learner.
    Remove,
}

/// A proposed membership change; `context` is opaque to Raft (the server puts
/// the member's peer URLs there).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ConfChange {
    pub change: ConfChangeType,
    pub node_id: NodeId,
    #[serde(with = "crate::bytes")]
    pub context: Vec<u8>,
}

/// Describes a snapshot: the state machine after applying `index`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SnapshotMeta {
    pub index: u64,
    pub term: u64,
    pub conf_state: ConfState,
}

/// One Raft message between peers. `term` is the sender's term, except for
/// the forwarded client requests ([`MessageBody::Propose`],
/// [`MessageBody::ReadIndex`]) which carry 0.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub from: NodeId,
    pub to: NodeId,
    pub term: u64,
    pub body: MessageBody,
}

/// The kinds of peer message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MessageBody {
    /// Leader -> follower: entries following `(prev_index, prev_term)`.
    Append {
        prev_index: u64,
        prev_term: u64,
        entries: Vec<Entry>,
        commit: u64,
    },
    /// Follower -> leader. On success `index` is the follower's durable
    /// match. On reject `index` is the rejected `prev_index` and
    /// `(hint_index, hint_term)` is the follower's last entry at or before it
    /// whose term is at most the leader's `prev_term` (fast backtracking).
    AppendResponse {
        index: u64,
        reject: bool,
        hint_index: u64,
        hint_term: u64,
    },
    /// Leader -> follower: liveness, commit, and a ReadIndex round number.
    Heartbeat {
        commit: u64,
        read_round: u64,
    },
    HeartbeatResponse {
        read_round: u64,
    },
    /// Candidate (or pre-candidate, `pre`) -> voter. `transfer` marks an
    /// election started by TimeoutNow, which voters honour even if they heard
    /// from a leader recently.
    Vote {
        pre: bool,
        last_index: u64,
        last_term: u64,
        transfer: bool,
    },
    VoteResponse {
        pre: bool,
        reject: bool,
    },
    /// Leader -> follower: one chunk of a snapshot, starting at `offset`.
    /// `checksum` is the CRC32C of the whole image (the same in every
    /// chunk): the follower installs the image only if it matches.
    Snapshot {
        meta: SnapshotMeta,
        offset: u64,
        #[serde(with = "crate::bytes")]
        data: Vec<u8>,
        done: bool,
        checksum: u32,
    },
    /// Follower -> leader: next snapshot byte wanted (`reject`: restart
    /// from `offset`).
    SnapshotResponse {
        index: u64,
        offset: u64,
        reject: bool,
    },
    /// Follower -> leader: forwarded client proposals.
    Propose {
        entries: Vec<Entry>,
    },
    /// Follower -> leader: forwarded linearizable read request.
    ReadIndex {
        #[serde(with = "crate::bytes")]
        ctx: Vec<u8>,
    },
    /// Leader -> follower: the read may be served once `index` is applied.
    ReadIndexResponse {
        index: u64,
        #[serde(with = "crate::bytes")]
        ctx: Vec<u8>,
    },
    /// Leader -> transferee: campaign now.
    TimeoutNow,
    /// Leader -> voter follower: "my log is durable through `index`" (sent
    /// after the leader's own fsync, in a cluster where the leader and one
    /// follower are a quorum). A follower holding that entry durably, of
    /// the current term, knows it is on a quorum and commits it without
    /// waiting for the leader's commit (see `qed::raft`). Unreliable: a
    /// lost one only delays that; the transport sends it only as a
    /// datagram. Last in the enum: postcard numbers variants by position,
    /// so every older message keeps its encoding, and an older member
    /// drops a datagram it cannot decode.
    LeaderDurable {
        index: u64,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_round_trips_through_postcard() {
        let m = Message {
            from: 1,
            to: 2,
            term: 7,
            body: MessageBody::Append {
                prev_index: 3,
                prev_term: 6,
                entries: vec![Entry {
                    term: 7,
                    index: 4,
                    kind: EntryType::ConfChange,
                    data: vec![1, 2, 3],
                }],
                commit: 3,
            },
        };
        let bytes = postcard::to_allocvec(&m).unwrap();
        assert_eq!(postcard::from_bytes::<Message>(&bytes).unwrap(), m);
    }

    /// Variants are numbered by position: adding one at the end leaves
    /// every older message's bytes as they were (members of mixed versions
    /// understand each other), and the new one round-trips.
    #[test]
    fn the_newest_variant_leaves_older_encodings_unchanged() {
        let msg = |body| Message {
            from: 1,
            to: 2,
            term: 3,
            body,
        };
        let timeout_now = postcard::to_allocvec(&msg(MessageBody::TimeoutNow)).unwrap();
        assert_eq!(timeout_now, [1, 2, 3, 11]);
        let durable = msg(MessageBody::LeaderDurable { index: 300 });
        let bytes = postcard::to_allocvec(&durable).unwrap();
        assert_eq!(bytes, [1, 2, 3, 12, 0xac, 0x02]);
        assert_eq!(postcard::from_bytes::<Message>(&bytes).unwrap(), durable);
    }
}
