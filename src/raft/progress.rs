//! The leader's view of each follower: how far its log matches, and how
//! much may be sent to it now.
//!
//! A follower is in one of three states:
//! - `Probe`: we don't know where its log matches; send one append per
//!   heartbeat interval and back off using its rejection hints.
//! - `Replicate`: it matched; stream appends optimistically (pipelining),
//!   bounded by [`Inflights`] in messages and bytes.
//! - `Snapshot`: it is behind our first index; send snapshot chunks and
//!   nothing else until it reports the snapshot installed.
//!
//! Invariant: `matched < next`, and `matched` is only ever raised by the
//! follower's own (durable) acknowledgement.

use std::collections::VecDeque;

use super::log::Image;
use crate::wire::raft::SnapshotMeta;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProgressState {
    Probe,
    Replicate,
    Snapshot,
}

/// Bounded window of in-flight appends: (last index, bytes) per message.
#[derive(Debug, Clone)]
pub(crate) struct Inflights {
    queue: VecDeque<(u64, u64)>,
    bytes: u64,
    max_count: usize,
    max_bytes: u64,
}

impl Inflights {
    pub fn new(max_count: usize, max_bytes: u64) -> Self {
        Inflights {
            queue: VecDeque::new(),
            bytes: 0,
            max_count,
            max_bytes,
        }
    }

    pub fn add(&mut self, last: u64, bytes: u64) {
        self.queue.push_back((last, bytes));
        self.bytes += bytes;
    }

    /// Frees every message whose last index is at or below `to`.
    pub fn free_le(&mut self, to: u64) {
        while let Some(&(last, b)) = self.queue.front() {
            if last > to {
                break;
            }
            self.bytes -= b;
            self.queue.pop_front();
        }
    }

    pub fn free_first(&mut self) {
        if let Some((_, b)) = self.queue.pop_front() {
            self.bytes -= b;
        }
    }

    pub fn full(&self) -> bool {
        self.queue.len() >= self.max_count || (self.max_bytes > 0 && self.bytes >= self.max_bytes)
    }

    pub fn reset(&mut self) {
        self.queue.clear();
        self.bytes = 0;
    }
}

/// The image a snapshot transfer sends, held by the transfer until it ends:
/// a newer snapshot the leader takes meanwhile does not restart it (behind
/// a slow link, restarting at every compaction could mean never finishing).
#[derive(Clone)]
pub(crate) struct SendingImage {
    pub meta: SnapshotMeta,
    pub data: Image,
    /// CRC32C of `data`, sent with every chunk.
    pub checksum: u32,
}

impl std::fmt::Debug for SendingImage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SendingImage")
            .field("index", &self.meta.index)
            .field("bytes", &self.data.len())
            .finish()
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Progress {
    pub matched: u64,
    pub next: u64,
    pub state: ProgressState,
    /// Probe: an append is out; wait for its answer or the next heartbeat.
    pub probe_sent: bool,
    /// Snapshot: the image being sent (`None` in the other states).
    pub sending: Option<SendingImage>,
    /// Snapshot: bytes acknowledged by the follower.
    pub snap_acked: u64,
    /// Snapshot: offset of the next chunk to send.
    pub snap_next: u64,
    /// Snapshot: the final chunk has been sent (since the last rewind).
    pub snap_done_sent: bool,
    /// Snapshot: heartbeats since the last chunk acknowledgement.
    pub snap_idle: u32,
    /// Heard from since the last CheckQuorum round.
    pub recent_active: bool,
    pub is_learner: bool,
    pub inflights: Inflights,
}

impl Progress {
    pub fn new(next: u64, inflights: Inflights, is_learner: bool) -> Self {
        Progress {
            matched: 0,
            next: next.max(1),
            state: ProgressState::Probe,
            probe_sent: false,
            sending: None,
            snap_acked: 0,
            snap_next: 0,
            snap_done_sent: false,
            snap_idle: 0,
            recent_active: false,
            is_learner,
            inflights,
        }
    }

    fn reset_state(&mut self, state: ProgressState) {
        self.state = state;
        self.probe_sent = false;
        self.sending = None;
        self.snap_acked = 0;
        self.snap_next = 0;
        self.snap_done_sent = false;
        self.snap_idle = 0;
        self.inflights.reset();
    }

    pub fn become_probe(&mut self) {
        if self.state == ProgressState::Snapshot {
            let pending = self.pending_snapshot();
            self.reset_state(ProgressState::Probe);
            self.next = (self.matched + 1).max(pending + 1);
        } else {
            self.reset_state(ProgressState::Probe);
            self.next = self.matched + 1;
        }
    }

    pub fn become_replicate(&mut self) {
        self.reset_state(ProgressState::Replicate);
        self.next = self.matched + 1;
    }

    /// Resend the snapshot from `offset` on.
    pub fn rewind_snapshot(&mut self, offset: u64) {
        self.snap_next = offset;
        self.snap_done_sent = false;
    }

    pub fn become_snapshot(&mut self, image: SendingImage) {
        self.reset_state(ProgressState::Snapshot);
        self.sending = Some(image);
    }

    /// Snapshot: the index of the snapshot being sent (0 in other states).
    pub fn pending_snapshot(&self) -> u64 {
        self.sending.as_ref().map_or(0, |image| image.meta.index)
    }

    /// A successful append response up to `n`. Returns whether it was news.
    pub fn maybe_update(&mut self, n: u64) -> bool {
        let updated = n > self.matched;
        if updated {
            self.matched = n;
            self.probe_sent = false;
        }
        self.next = self.next.max(n + 1);
        updated
    }

    /// A rejection of `rejected` (the probed prev index) with the
    /// follower's hint. Returns false for stale rejections.
    pub fn maybe_decr_to(&mut self, rejected: u64, match_hint: u64) -> bool {
        if self.state == ProgressState::Replicate {
            if rejected <= self.matched {
                return false;
            }
            self.next = self.matched + 1;
            return true;
        }
        if self.next.saturating_sub(1) != rejected {
            return false;
        }
        self.next = rejected.min(match_hint + 1).max(self.matched + 1);
        self.probe_sent = false;
        true
    }

    pub fn is_paused(&self) -> bool {
        match self.state {
            ProgressState::Probe => self.probe_sent,
            ProgressState::Replicate => self.inflights.full(),
            ProgressState::Snapshot => true,
        }
    }

    /// Book-keeping after sending entries `next..=last` of `bytes`.
    pub fn sent_entries(&mut self, last: Option<u64>, bytes: u64) {
        match self.state {
            ProgressState::Replicate => {
                if let Some(last) = last {
                    self.next = last + 1;
                    self.inflights.add(last, bytes);
                }
            }
            ProgressState::Probe => self.probe_sent = true,
            ProgressState::Snapshot => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inflights_bound_messages_and_bytes() {
        let mut f = Inflights::new(2, 100);
        f.add(5, 10);
        assert!(!f.full());
        f.add(6, 10);
        assert!(f.full());
        f.free_le(5);
        assert!(!f.full());
        f.add(9, 95);
        assert!(f.full());
        f.free_le(100);
        assert!(!f.full());
    }

    #[test]
    fn stale_rejections_are_ignored() {
        let mut p = Progress::new(10, Inflights::new(4, 0), false);
        assert!(!p.maybe_decr_to(5, 0));
        assert!(p.maybe_decr_to(9, 3));
        assert_eq!(p.next, 4);
        p.maybe_update(3);
        p.become_replicate();
        assert!(!p.maybe_decr_to(2, 0));
    }
}
