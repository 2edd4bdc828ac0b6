//! What members send each other on the peer port, besides Raft messages.
//!
//! Every peer stream opens with a [`PeerHello`]: who sends, to whom, in
//! which cluster, and the sender's advertised URLs (so members learn each
//! other's client URLs without a log entry). Unidirectional streams then
//! carry [`crate::raft::Message`] frames, one after another, for as long as
//! the connection lives. A bidirectional stream carries one [`PeerCall`]
//! and its [`PeerReply`]: a follower forwarding leader-only work.
//!
//! Everything here is untrusted on receipt: the receiver checks the
//! cluster ID and that the sender is a member before it reads further.

use crate::call::{Request, Response};
use crate::error::Error;
use crate::lease::LeaseKeepAliveResponse;
use crate::raft::NodeId;
use serde::{Deserialize, Serialize};

/// The first frame of every peer stream.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerHello {
    pub cluster_id: u64,
    pub from: NodeId,
    pub to: NodeId,
    /// The sender's `--name`.
    pub name: String,
    /// The sender's `--initial-advertise-peer-urls`.
    pub peer_urls: Vec<String>,
    /// The sender's `--advertise-client-urls`.
    pub client_urls: Vec<String>,
}

/// A call a follower forwards to the leader (after a [`PeerHello`] on a
/// bidirectional stream).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PeerCall {
    /// One keepalive of the lease with this ID.
    LeaseKeepAlive(i64),
    /// A unary request only the leader answers (lease TimeToLive, member
    /// removal).
    Request(Request),
}

/// The leader's answer to a [`PeerCall`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PeerAnswer {
    LeaseKeepAlive(LeaseKeepAliveResponse),
    Response(Response),
}

pub type PeerReply = Result<PeerAnswer, Error>;

/// The `context` of a membership change in the Raft log: which caller on
/// the proposing member waits for it, and an added member's peer URLs (so
/// every member learns where to reach it when the change applies).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfContext {
    pub waiter: u64,
    pub peer_urls: Vec<String>,
}
