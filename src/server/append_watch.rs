//! How long a leader's appends wait for their answers, per follower.
//!
//! The peer transport notes every append it writes to a data link (the
//! last index it carries, when, and how many packets the link had sent by
//! then) and every successful append response it receives (the
//! follower's match). An
//! append is answered by the first response whose index reaches its last
//! index; the wait is from its send to that response. A wait longer than
//! [`SLOW_ANSWER`] is reported with the data link's packet count at both
//! ends, so a log line tells a link that sent nothing while it waited (QUIC
//! loss-probe back-off on an idle connection) from one that kept sending.
//!
//! Pure: the clock and the packet counts are arguments. Bounded: at most
//! [`MAX_PENDING`] appends per follower are remembered (later ones are not
//! timed until the queue drains), and one older than [`FORGET_AFTER`] is
//! forgotten unanswered (a follower that left, a leader that stepped down).

use qed_wire::raft::NodeId;
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

/// A wait worth a log line: several heartbeat intervals on any link.
pub const SLOW_ANSWER: Duration = Duration::from_millis(500);
/// Appends remembered per follower.
pub const MAX_PENDING: usize = 4096;
/// An append not answered this long ago is forgotten.
pub const FORGET_AFTER: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy)]
struct Pending {
    last: u64,
    sent_at: Instant,
    packets_sent: u64,
}

/// An append that waited long for its answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlowAnswer {
    /// The last index of the oldest append the response answered.
    pub index: u64,
    pub waited: Duration,
    /// Packets the data link sent while it waited.
    pub packets_sent: u64,
}

/// Per follower, the appends not answered yet, oldest first.
#[derive(Debug, Default)]
pub struct AppendWatch {
    pending: HashMap<NodeId, VecDeque<Pending>>,
}

impl AppendWatch {
    /// An append to `to` whose entries end at `last` left at `now`, when
    /// the data link had sent `packets_sent` packets.
    pub fn sent(&mut self, to: NodeId, last: u64, now: Instant, packets_sent: u64) {
        let queue = self.pending.entry(to).or_default();
        while queue
            .front()
            .is_some_and(|p| now.saturating_duration_since(p.sent_at) > FORGET_AFTER)
        {
            queue.pop_front();
        }
        // Indices only grow within a term; a resend of an older index
        // (probing after a rejection) is timed from the first send.
        if queue.back().is_some_and(|p| p.last >= last) || queue.len() >= MAX_PENDING {
            return;
        }
        queue.push_back(Pending {
            last,
            sent_at: now,
            packets_sent,
        });
    }

    /// `from` answered that it holds everything through `index`, at `now`,
    /// when the data link had sent `packets_sent` packets. Returns the
    /// oldest append this answers if it waited at least [`SLOW_ANSWER`].
    pub fn answered(
        &mut self,
        from: NodeId,
        index: u64,
        now: Instant,
        packets_sent: u64,
    ) -> Option<SlowAnswer> {
        let queue = self.pending.get_mut(&from)?;
        let mut oldest = None;
        while let Some(p) = queue.front().copied().filter(|p| p.last <= index) {
            queue.pop_front();
            oldest.get_or_insert(p);
        }
        let p = oldest?;
        let waited = now.saturating_duration_since(p.sent_at);
        (waited >= SLOW_ANSWER).then_some(SlowAnswer {
            index: p.last,
            waited,
            packets_sent: packets_sent.saturating_sub(p.packets_sent),
        })
    }

    /// Forgets a follower (it left the configuration).
    pub fn forget(&mut self, id: NodeId) {
        self.pending.remove(&id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_times_the_oldest_append_it_covers() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let mut w = AppendWatch::default();
        w.sent(2, 10, t0, 100);
        w.sent(2, 12, ms(5), 103);
        w.sent(2, 15, ms(10), 104);
        // A quick answer through 12 answers the first two, unreported.
        assert_eq!(w.answered(2, 12, ms(20), 110), None);
        // The third waits 1.2 s while the link sends 6 packets.
        let slow = w.answered(2, 15, ms(1210), 110);
        assert_eq!(
            slow,
            Some(SlowAnswer {
                index: 15,
                waited: Duration::from_millis(1200),
                packets_sent: 6,
            })
        );
        assert_eq!(w.answered(2, 15, ms(1300), 110), None, "answered once");
        // Nothing pending: an answer reports nothing; other members are apart.
        assert_eq!(w.answered(2, 20, ms(5000), 0), None);
        assert_eq!(w.answered(3, 20, ms(5000), 0), None);
    }

    #[test]
    fn resends_and_stale_appends_are_not_timed_twice() {
        let t0 = Instant::now();
        let mut w = AppendWatch::default();
        w.sent(2, 10, t0, 0);
        // A probe re-sending up to 10 keeps the first send's time.
        w.sent(2, 10, t0 + Duration::from_secs(1), 5);
        assert_eq!(
            w.answered(2, 10, t0 + Duration::from_secs(2), 9)
                .map(|s| s.waited),
            Some(Duration::from_secs(2))
        );
        // Forgotten after FORGET_AFTER without an answer: the answer
        // times the append after it.
        let later = t0 + FORGET_AFTER + Duration::from_secs(1);
        w.sent(2, 11, t0, 0);
        w.sent(2, 12, later, 0);
        assert_eq!(
            w.answered(2, 12, later + SLOW_ANSWER, 0).map(|s| s.waited),
            Some(SLOW_ANSWER)
        );
        w.sent(2, 13, t0, 0);
        w.forget(2);
        assert_eq!(w.answered(2, 13, later, 0), None);
    }
}
