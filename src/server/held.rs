//! Calls that arrive while no leader can take them: during an election, or
//! while the leader hands leadership to another member. etcd holds such a
//! request until a leader appears or the request times out, so a client in
//! a loop does not spin on `etcdserver: no leader`; so does qed.
//!
//! The Raft loop parks a proposal or a ReadIndex here when the core refuses
//! it with `NoLeader` or `TransferInProgress`, tries again every tick once a
//! leader is known (each call keeps its first deadline), and answers
//! `etcdserver: no leader` (retryable: nothing was proposed) to calls still
//! waiting at their deadline. Bounded: past [`MAX_HELD_CALLS`] a call is
//! refused at once. Time is the loop's tick count, so this is plain data.

use crate::runtime::channel;
use qed_wire::command::AuthHeader;
use qed_wire::{Error, Reply, Request};
use std::collections::VecDeque;

/// Calls one member holds at most while it has no leader.
pub const MAX_HELD_CALLS: usize = 4096;

pub enum HeldCall {
    Propose {
        request: Request,
        auth: AuthHeader,
        reply: channel::Sender<Reply>,
    },
    Read {
        reply: channel::Sender<Result<(), Error>>,
    },
}

impl HeldCall {
    /// Answers the caller with `error`.
    pub fn fail(self, error: Error) {
        match self {
            HeldCall::Propose { reply, .. } => {
                let _ = reply.try_send(Err(error));
            }
            HeldCall::Read { reply } => {
                let _ = reply.try_send(Err(error));
            }
        }
    }

    fn caller_left(&self) -> bool {
        match self {
            HeldCall::Propose { reply, .. } => reply.is_closed(),
            HeldCall::Read { reply } => reply.is_closed(),
        }
    }
}

#[derive(Default)]
pub struct HeldCalls {
    /// (tick at which the call gives up, the call), oldest first.
    calls: VecDeque<(u64, HeldCall)>,
}

impl HeldCalls {
    pub fn is_empty(&self) -> bool {
        self.calls.is_empty()
    }

    /// Holds `call` until tick `deadline`; hands it back when full.
    pub fn hold(&mut self, deadline: u64, call: HeldCall) -> Option<HeldCall> {
        if self.calls.len() >= MAX_HELD_CALLS {
            return Some(call);
        }
        self.calls.push_back((deadline, call));
        None
    }

    /// Every held call, with its deadline, to be tried again.
    pub fn take(&mut self) -> Vec<(u64, HeldCall)> {
        self.calls.drain(..).collect()
    }

    /// Answers `NoLeader` to calls whose deadline is past `now`, and drops
    /// those whose caller gave up.
    pub fn expire(&mut self, now: u64) {
        let mut kept = VecDeque::with_capacity(self.calls.len());
        for (deadline, call) in self.calls.drain(..) {
            if call.caller_left() {
                continue;
            }
            if deadline <= now {
                call.fail(Error::NoLeader);
            } else {
                kept.push_back((deadline, call));
            }
        }
        self.calls = kept;
    }

    /// The loop stops: every held call gets `error`.
    pub fn fail_all(&mut self, error: &Error) {
        for (_, call) in self.calls.drain(..) {
            call.fail(error.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read() -> (HeldCall, channel::Receiver<Result<(), Error>>) {
        let (reply, answer) = channel::bounded(1);
        (HeldCall::Read { reply }, answer)
    }

    #[test]
    fn calls_wait_until_their_deadline_and_then_hear_no_leader() {
        let mut held = HeldCalls::default();
        let (a, a_answer) = read();
        let (b, b_answer) = read();
        assert!(held.hold(5, a).is_none());
        assert!(held.hold(9, b).is_none());
        held.expire(4);
        assert!(a_answer.try_recv().is_err(), "still waiting");
        held.expire(5);
        assert_eq!(a_answer.try_recv().ok(), Some(Err(Error::NoLeader)));
        assert!(b_answer.try_recv().is_err());
        let again = held.take();
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].0, 9, "a retried call keeps its deadline");
    }

    #[test]
    fn holding_is_bounded_and_callers_that_left_are_dropped() {
        let mut held = HeldCalls::default();
        let mut answers = Vec::new();
        for _ in 0..MAX_HELD_CALLS {
            let (call, answer) = read();
            assert!(held.hold(100, call).is_none());
            answers.push(answer);
        }
        let (extra, _) = read();
        assert!(held.hold(100, extra).is_some());
        answers.clear(); // every caller leaves
        held.expire(0);
        assert!(held.is_empty());
    }
}
