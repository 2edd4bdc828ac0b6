//! The auto-compaction driver: a task that feeds the clock, the current
//! revision and the leadership to the pure schedule
//! ([`crate::mvcc::auto_compact`]) and proposes what it decides as an
//! ordinary Compact through Raft, logging as etcd's compactor does.
//!
//! Invariant: the decision is leader-local; what members apply is the
//! Compact entry, so apply stays a function of the log. The task holds
//! the state lock only to read the revision, and has at most one proposal
//! in flight.

use super::raft_loop::RaftHandle;
use super::state_machine::StateMachine;
use crate::mvcc::auto_compact::{AutoCompactor, Retention};
use crate::runtime;
use crate::wire::command::AuthHeader;
use crate::wire::kv::CompactionRequest;
use crate::wire::{Error, Request};
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

/// Starts the task; it runs for the life of the process.
pub fn start(
    retention: Retention,
    member_id: u64,
    raft: RaftHandle,
    state: Arc<RwLock<StateMachine>>,
) {
    let revision = {
        let state = state.clone();
        move || state.read().unwrap_or_else(|p| p.into_inner()).revision()
    };
    let mut schedule = AutoCompactor::new(retention, super::now_ms(), revision());
    let pause = schedule
        .interval()
        .clamp(Duration::from_millis(10), Duration::from_secs(1));
    match retention {
        Retention::Periodic(period) => log::info!(
            "auto periodic compaction enabled: compact-period={period:?} retry-interval={:?}",
            schedule.interval()
        ),
        Retention::Revision(keep) => log::info!(
            "auto revision compaction enabled: revision-compaction-retention={keep} \
             check-interval={:?}",
            schedule.interval()
        ),
    }
    runtime::spawn(async move {
        loop {
            runtime::sleep(pause).await;
            let leading = raft.status.leader.load(Ordering::Relaxed) == member_id;
            let Some(rev) = schedule.poll(super::now_ms(), revision(), leading) else {
                continue;
            };
            let started = Instant::now();
            log_start(retention, rev);
            let request = Request::Compact(CompactionRequest {
                revision: rev,
                physical: false,
            });
            let outcome = raft.propose(request, AuthHeader::system()).await;
            let ok = matches!(outcome, Ok(_) | Err(Error::Compacted));
            match outcome {
                Ok(_) | Err(Error::Compacted) => log_done(retention, rev, started.elapsed()),
                Err(e) => log_failed(retention, rev, schedule.interval(), &e),
            }
            schedule.finished(super::now_ms(), rev, ok);
        }
    });
}

fn log_start(retention: Retention, rev: i64) {
    match retention {
        Retention::Periodic(period) => {
            log::info!("starting auto periodic compaction revision={rev} compact-period={period:?}")
        }
        Retention::Revision(keep) => log::info!(
            "starting auto revision compaction revision={rev} revision-compaction-retention={keep}"
        ),
    }
}

fn log_done(retention: Retention, rev: i64, took: Duration) {
    match retention {
        Retention::Periodic(period) => log::info!(
            "completed auto periodic compaction revision={rev} compact-period={period:?} \
             took={took:?}"
        ),
        Retention::Revision(keep) => log::info!(
            "completed auto revision compaction revision={rev} \
             revision-compaction-retention={keep} took={took:?}"
        ),
    }
}

fn log_failed(retention: Retention, rev: i64, retry: Duration, e: &Error) {
    match retention {
        Retention::Periodic(period) => log::warn!(
            "failed auto periodic compaction revision={rev} compact-period={period:?} \
             retry-interval={retry:?} error={e}"
        ),
        Retention::Revision(keep) => log::warn!(
            "failed auto revision compaction revision={rev} \
             revision-compaction-retention={keep} retry-interval={retry:?} error={e}"
        ),
    }
}
