//! The leader's ReadIndex queue.
//!
//! A read request records the leader's commit index when it arrives. It may
//! be answered once a quorum of voters has acknowledged a heartbeat that was
//! sent *after* the request arrived: then no other leader could have
//! committed anything the read would miss. Requests are batched into
//! numbered rounds: all requests that arrive before the next heartbeat
//! broadcast share that broadcast's round number, so one heartbeat round
//! confirms any number of reads.
//!
//! Invariants: rounds only increase within a term; a request is released
//! only when a quorum's highest acknowledged round is at least its round;
//! requests are released in arrival order. The queue is dropped whenever the
//! node stops being leader.

use std::collections::{BTreeMap, VecDeque};

use crate::wire::raft::NodeId;

#[derive(Debug, Clone)]
pub(crate) struct ReadRequest {
    /// Who asked: this node or a follower that forwarded it.
    pub from: NodeId,
    pub ctx: Vec<u8>,
    pub index: u64,
    pub round: u64,
}

#[derive(Debug, Default)]
pub(crate) struct ReadOnly {
    /// The last round broadcast.
    pub round: u64,
    /// Requests waiting for the next broadcast are tagged `round + 1`.
    pub flush_pending: bool,
    queue: VecDeque<ReadRequest>,
    /// Requests that arrived before the leader committed an entry of its
    /// term; their index is fixed once it has.
    deferred: Vec<(NodeId, Vec<u8>)>,
    /// Highest round each voter acknowledged.
    acks: BTreeMap<NodeId, u64>,
}

impl ReadOnly {
    pub fn reset(&mut self) {
        let round = self.round;
        *self = ReadOnly::default();
        self.round = round;
    }

    pub fn defer(&mut self, from: NodeId, ctx: Vec<u8>) {
        self.deferred.push((from, ctx));
    }

    pub fn take_deferred(&mut self) -> Vec<(NodeId, Vec<u8>)> {
        std::mem::take(&mut self.deferred)
    }

    pub fn add(&mut self, from: NodeId, ctx: Vec<u8>, index: u64) {
        self.queue.push_back(ReadRequest {
            from,
            ctx,
            index,
            round: self.round + 1,
        });
        self.flush_pending = true;
    }

    /// Starts a new round if requests are waiting; returns its number.
    pub fn start_round(&mut self) -> Option<u64> {
        if !self.flush_pending {
            return None;
        }
        self.flush_pending = false;
        self.round += 1;
        Some(self.round)
    }

    pub fn ack(&mut self, from: NodeId, round: u64) {
        if round > self.round {
            return; // not a round we sent in this term
        }
        let a = self.acks.entry(from).or_insert(0);
        *a = (*a).max(round);
    }

    /// Releases the requests confirmed by `voters` (this node, `self_id`,
    /// always counts with the current round).
    pub fn release(&mut self, self_id: NodeId, voters: &[NodeId]) -> Vec<ReadRequest> {
        if self.queue.is_empty() || !voters.contains(&self_id) {
            return Vec::new();
        }
        let mut rounds: Vec<u64> = voters
            .iter()
            .map(|v| {
                if *v == self_id {
                    self.round
                } else {
                    self.acks.get(v).copied().unwrap_or(0)
                }
            })
            .collect();
        rounds.sort_unstable_by(|a, b| b.cmp(a));
        let confirmed = rounds[voters.len() / 2];
        let mut out = Vec::new();
        while let Some(r) = self.queue.front() {
            if r.round > confirmed {
                break;
            }
            if let Some(r) = self.queue.pop_front() {
                out.push(r);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_round_needs_a_quorum_of_acks_sent_after_the_request() {
        let mut ro = ReadOnly::default();
        let voters = [1, 2, 3];
        ro.add(1, b"a".to_vec(), 5);
        ro.add(2, b"b".to_vec(), 5);
        // An ack of an earlier round confirms nothing.
        ro.ack(2, 0);
        assert!(ro.release(1, &voters).is_empty());
        assert_eq!(ro.start_round(), Some(1));
        assert_eq!(ro.start_round(), None);
        ro.ack(3, 7); // from the future: ignored
        assert!(ro.release(1, &voters).is_empty());
        ro.ack(3, 1);
        let out = ro.release(1, &voters);
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].ctx, b"a");
    }
}
