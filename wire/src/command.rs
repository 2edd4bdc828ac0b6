//! What a client write looks like inside a Raft log entry.
//!
//! Entries are replicated between members, so their payload is wire format
//! like everything else that crosses a socket. An entry with empty data is
//! the leader's no-op and carries no command.

use crate::call::Request;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Command {
    /// Chosen by the proposing member to match the applied result to the
    /// waiting caller; unique per member across restarts.
    pub id: u64,
    pub request: Request,
}
