//! etcd v3's lessor as a pure state machine: no I/O, no clock (every
//! time-dependent call takes `now` in milliseconds of the driver's monotonic
//! clock), no tasks, no locks.
//!
//! Two kinds of state live here:
//! - *replicated*: which leases exist, the TTL each was granted, and which
//!   keys are attached. Every replica changes it only from applied Raft
//!   entries (`grant`, `revoke`, `apply_events`), so all replicas agree;
//!   [`Lessor::snapshot`] / [`Lessor::from_snapshot`] carry it in snapshots;
//! - *leader-local*: each lease's expiry deadline and the expiry queue. Only
//!   the primary (the Raft leader) has deadlines; elsewhere leases never
//!   expire. [`Lessor::promote`] gives every lease a full fresh TTL (plus an
//!   election's worth) on becoming leader, so no lease expires because of
//!   an election; [`Lessor::demote`] forgets all deadlines.
//!
//! Expiry never revokes by itself: [`Lessor::expired`] names leases whose
//! deadline passed (rate limited, as etcd does), the leader proposes their
//! revoke through Raft, and the applied revoke returns the attached keys,
//! which the driver deletes in the same revision. Semantics are etcd 3.4's
//! `lease/lessor.go` (without its optional checkpointing).
//!
//! Driver duties:
//! 1. Start from [`Lessor::from_snapshot`] (or [`Lessor::new`]): not
//!    primary.
//! 2. Applied LeaseGrant: `grant(id, ttl, now)` (the leader chose a
//!    non-zero ID before proposing, [`lease_id_from`]). Applied
//!    LeaseRevoke: `revoke(id)` returns the keys; delete them all in one
//!    revision and treat the deletes as any other write (step 3).
//! 3. Every applied write: check puts with `|id| lessor.contains(id)`, then
//!    `apply_events(&events)` with the events the store returned.
//! 4. Leadership: `promote(now, election_timeout_ms)` on becoming leader,
//!    `demote()` on losing it.
//! 5. Leader, every 500 ms: `expired(now, LEASE_REVOKE_RATE / 2)` and
//!    propose a revoke for each ID named.
//! 6. Keepalive and TimeToLive, on the leader once its apply index caught
//!    up: `renew` / `time_to_live`. `NotPrimary` means forward to the
//!    leader; `NotFound` / `Expired` mean a keepalive response with TTL 0
//!    and a TimeToLive response with TTL -1, as etcd's v3rpc answers.
//! 7. Snapshots: `snapshot()` beside the store; `from_snapshot` on install
//!    (then `promote` if leading).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};

use qed_wire::kv::{Event, EventType};
use qed_wire::lease::LeaseTimeToLiveResponse;

#[cfg(test)]
mod tests;

/// A lease's ID; 0 means "no lease" everywhere.
pub type LeaseId = i64;

/// etcd's `MaxLeaseTTL`: grants above this many seconds are refused.
pub const MAX_LEASE_TTL: i64 = 9_000_000_000;

/// etcd's `leaseRevokeRate`: expired leases revoked per second at most. The
/// driver checks every 500 ms and asks for half of it each time.
pub const LEASE_REVOKE_RATE: usize = 1000;

/// Why a lease operation was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseError {
    /// No lease with this ID (or ID 0 on grant, as etcd answers).
    NotFound,
    /// A grant for an ID in use.
    Exists,
    /// A grant above [`MAX_LEASE_TTL`].
    TtlTooLarge,
    /// Keepalive or time-to-live on a non-leader: forward to the leader.
    NotPrimary,
    /// Keepalive of a lease past its deadline whose revoke is on its way;
    /// etcd waits for the revoke and then answers "not found".
    Expired,
}

impl fmt::Display for LeaseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LeaseError::NotFound => "lease not found",
            LeaseError::Exists => "lease already exists",
            LeaseError::TtlTooLarge => "too large lease TTL",
            LeaseError::NotPrimary => "not a primary lessor",
            LeaseError::Expired => "lease expired",
        })
    }
}

impl std::error::Error for LeaseError {}

impl From<LeaseError> for qed_wire::Error {
    fn from(e: LeaseError) -> Self {
        use qed_wire::Error as W;
        match e {
            LeaseError::NotFound | LeaseError::Expired => W::LeaseNotFound,
            LeaseError::Exists => W::LeaseExist,
            LeaseError::TtlTooLarge => W::LeaseTtlTooLarge,
            LeaseError::NotPrimary => W::NotLeader,
        }
    }
}

/// Settings that are not replicated state.
#[derive(Debug, Clone)]
pub struct LeaseConfig {
    /// Shortest TTL this member proposes, in seconds; shorter asks
    /// (including 0 and negative ones) are rounded up before the grant is
    /// proposed ([`grant_ttl`]). etcd uses 1.5 election timeouts, so a
    /// lease outlives a leader election: see [`min_lease_ttl`]. Apply
    /// never uses it (members may have other flags): see
    /// [`MIN_APPLIED_TTL`].
    pub min_ttl: i64,
    /// After `expired` names a lease, it is named again only this much
    /// later if still not revoked (a lost proposal is retried; etcd: 3 s).
    pub revoke_retry_ms: u64,
}

impl Default for LeaseConfig {
    fn default() -> Self {
        LeaseConfig {
            // etcd's defaults: 1000 ms election timeout, 100 ms heartbeat.
            min_ttl: min_lease_ttl(10, 100),
            revoke_retry_ms: 3000,
        }
    }
}

/// The shortest TTL apply grants or restores, whatever the entry says: etcd's
/// minimum under its default flags (`min_lease_ttl(10, 100)`). It is a
/// constant because apply must be a function of the log alone; each member
/// raises a grant to its own, flag-derived minimum before proposing it.
pub const MIN_APPLIED_TTL: i64 = 2;

/// The TTL a member proposes for a grant asking `ttl`: raised to its own
/// minimum (`config.min_ttl`), before the entry, so every member applies
/// the same TTL.
pub fn grant_ttl(config: &LeaseConfig, ttl: i64) -> i64 {
    ttl.max(config.min_ttl)
}

/// etcd's `minTTL`: `ceil((3 * election_ticks / 2) * heartbeat)` seconds.
pub fn min_lease_ttl(election_ticks: u64, heartbeat_ms: u64) -> i64 {
    let ms = (3 * election_ticks / 2).saturating_mul(heartbeat_ms);
    i64::try_from(ms.div_ceil(1000)).unwrap_or(i64::MAX)
}

/// A positive, non-zero lease ID from any 64 random or unique bits (etcd
/// masks its request ID generator's output the same way).
pub fn lease_id_from(raw: u64) -> LeaseId {
    let id = (raw & (i64::MAX as u64)) as i64;
    if id == 0 {
        1
    } else {
        id
    }
}

/// The replicated part of one lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRecord {
    pub id: LeaseId,
    /// Granted TTL in seconds (after rounding up to the minimum).
    pub ttl: i64,
    /// Attached keys, sorted.
    #[serde(with = "qed_wire::bytes::list")]
    pub keys: Vec<Vec<u8>>,
}

/// The replicated lease state, for snapshots.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseSnapshot {
    /// Sorted by ID.
    pub leases: Vec<LeaseRecord>,
}

#[derive(Debug, Clone)]
struct Lease {
    ttl: i64,
    keys: BTreeSet<Vec<u8>>,
    /// The deadline; `None` ("forever") unless primary.
    expiry: Option<u64>,
    /// This lease's key in the expiry queue, if queued.
    queued: Option<u64>,
}

/// All leases, their attached keys and (on the leader) their deadlines.
#[derive(Debug, Clone)]
pub struct Lessor {
    config: LeaseConfig,
    leases: BTreeMap<LeaseId, Lease>,
    /// Which lease each attached key is on (etcd's `itemMap`).
    items: BTreeMap<Vec<u8>, LeaseId>,
    primary: bool,
    /// `(deadline ms, id)`: leases in the order they are due.
    queue: BTreeSet<(u64, LeaseId)>,
}

fn deadline(now: u64, ttl_secs: i64, extra_ms: u64) -> u64 {
    let ttl_ms = u64::try_from(ttl_secs).unwrap_or(0).saturating_mul(1000);
    now.saturating_add(ttl_ms).saturating_add(extra_ms)
}

impl Lessor {
    /// An empty lessor, not primary.
    pub fn new(config: LeaseConfig) -> Lessor {
        Lessor {
            config,
            leases: BTreeMap::new(),
            items: BTreeMap::new(),
            primary: false,
            queue: BTreeSet::new(),
        }
    }

    // ---- getters ----

    pub fn is_primary(&self) -> bool {
        self.primary
    }

    /// Whether the lease is granted (what `Store::put` asks).
    pub fn contains(&self, id: LeaseId) -> bool {
        self.leases.contains_key(&id)
    }

    /// The lease a key is attached to (etcd's `GetLease`).
    pub fn lease_of(&self, key: &[u8]) -> Option<LeaseId> {
        self.items.get(key).copied()
    }

    /// The keys attached to a lease (none when it does not exist).
    pub fn keys_of(&self, id: LeaseId) -> Vec<Vec<u8>> {
        self.leases
            .get(&id)
            .map(|l| l.keys.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Every lease ID, ascending.
    pub fn leases(&self) -> Vec<LeaseId> {
        self.leases.keys().copied().collect()
    }

    /// The granted TTL in seconds.
    pub fn granted_ttl(&self, id: LeaseId) -> Option<i64> {
        self.leases.get(&id).map(|l| l.ttl)
    }

    /// The earliest deadline in the queue: when `expired` next has work
    /// (a driver may sleep until then instead of polling).
    pub fn next_deadline(&self) -> Option<u64> {
        self.queue.first().map(|(at, _)| *at)
    }

    /// etcd's TimeToLive, served by the leader: remaining seconds
    /// (truncated; negative once past the deadline), granted TTL and, if
    /// asked, the keys. The header is left for the driver to fill.
    pub fn time_to_live(
        &self,
        id: LeaseId,
        now: u64,
        with_keys: bool,
    ) -> Result<LeaseTimeToLiveResponse, LeaseError> {
        if !self.primary {
            return Err(LeaseError::NotPrimary);
        }
        let lease = self.leases.get(&id).ok_or(LeaseError::NotFound)?;
        let remaining_ms = match lease.expiry {
            Some(at) => i128::from(at) - i128::from(now),
            // Unreachable on a primary; answer as etcd's "forever" does.
            None => i128::from(i64::MAX),
        };
        let ttl = i64::try_from(remaining_ms / 1000).unwrap_or(i64::MAX);
        Ok(LeaseTimeToLiveResponse {
            id,
            ttl,
            granted_ttl: lease.ttl,
            keys: if with_keys {
                lease.keys.iter().cloned().collect()
            } else {
                Vec::new()
            },
            ..LeaseTimeToLiveResponse::default()
        })
    }

    // ---- replicated changes (apply path, every replica) ----

    /// Grants a lease (an applied LeaseGrant). ID 0 is refused as etcd's
    /// lessor does: the leader picks an ID (see [`lease_id_from`]) before
    /// proposing, and raises the TTL to its own minimum ([`grant_ttl`]);
    /// here a TTL below [`MIN_APPLIED_TTL`], 0 and negative included, is
    /// raised to that constant. Returns the TTL granted.
    pub fn grant(&mut self, id: LeaseId, ttl: i64, now: u64) -> Result<i64, LeaseError> {
        if id == 0 {
            return Err(LeaseError::NotFound);
        }
        if ttl > MAX_LEASE_TTL {
            return Err(LeaseError::TtlTooLarge);
        }
        if self.leases.contains_key(&id) {
            return Err(LeaseError::Exists);
        }
        let ttl = ttl.max(MIN_APPLIED_TTL);
        self.leases.insert(
            id,
            Lease {
                ttl,
                keys: BTreeSet::new(),
                expiry: None,
                queued: None,
            },
        );
        if self.primary {
            self.set_deadline(id, deadline(now, ttl, 0));
        }
        Ok(ttl)
    }

    /// Revokes a lease (an applied LeaseRevoke, from a client or from
    /// expiry) and returns its keys, sorted as etcd sorts them so every
    /// replica deletes them in the same order, in the same revision.
    pub fn revoke(&mut self, id: LeaseId) -> Result<Vec<Vec<u8>>, LeaseError> {
        let lease = self.leases.remove(&id).ok_or(LeaseError::NotFound)?;
        if let Some(at) = lease.queued {
            self.queue.remove(&(at, id));
        }
        for key in &lease.keys {
            if self.items.get(key) == Some(&id) {
                self.items.remove(key);
            }
        }
        Ok(lease.keys.into_iter().collect())
    }

    /// Attaches a key to a lease (a put with `lease` set). A key is on at
    /// most one lease: attaching moves it.
    pub fn attach(&mut self, id: LeaseId, key: &[u8]) -> Result<(), LeaseError> {
        if !self.leases.contains_key(&id) {
            return Err(LeaseError::NotFound);
        }
        if let Some(old) = self.items.insert(key.to_vec(), id) {
            if old != id {
                if let Some(lease) = self.leases.get_mut(&old) {
                    lease.keys.remove(key);
                }
            }
        }
        if let Some(lease) = self.leases.get_mut(&id) {
            lease.keys.insert(key.to_vec());
        }
        Ok(())
    }

    /// Detaches a key from a lease (the key was deleted or moved).
    pub fn detach(&mut self, id: LeaseId, key: &[u8]) -> Result<(), LeaseError> {
        let lease = self.leases.get_mut(&id).ok_or(LeaseError::NotFound)?;
        lease.keys.remove(key);
        if self.items.get(key) == Some(&id) {
            self.items.remove(key);
        }
        Ok(())
    }

    /// Follows one applied write's events (which always carry `prev_kv`):
    /// a key leaves the lease its previous version had and joins the one
    /// its new version has, as etcd's kvstore does on put and delete.
    /// Events naming a lease that no longer exists (the deletes of a
    /// revoke) are skipped.
    pub fn apply_events(&mut self, events: &[Event]) {
        for ev in events {
            if let Some(prev) = &ev.prev_kv {
                if prev.lease != 0 {
                    let _ = self.detach(prev.lease, &prev.key);
                }
            }
            if ev.kind == EventType::Put && ev.kv.lease != 0 {
                let _ = self.attach(ev.kv.lease, &ev.kv.key);
            }
        }
    }

    // ---- leader-local ----

    /// A keepalive, answered by the leader without Raft: a full TTL from
    /// `now`. Returns the granted TTL.
    pub fn renew(&mut self, id: LeaseId, now: u64) -> Result<i64, LeaseError> {
        if !self.primary {
            return Err(LeaseError::NotPrimary);
        }
        let lease = self.leases.get(&id).ok_or(LeaseError::NotFound)?;
        if lease.expiry.is_some_and(|at| at <= now) {
            return Err(LeaseError::Expired);
        }
        let ttl = lease.ttl;
        self.set_deadline(id, deadline(now, ttl, 0));
        Ok(ttl)
    }

    /// Leases past their deadline, oldest first, at most `limit` (etcd:
    /// [`LEASE_REVOKE_RATE`] / 2 every 500 ms). Each named lease is not
    /// named again for `revoke_retry_ms`, unless renewed meanwhile; the
    /// leader proposes their revokes. Empty on a non-leader.
    pub fn expired(&mut self, now: u64, limit: usize) -> Vec<LeaseId> {
        if !self.primary {
            return Vec::new();
        }
        let due: Vec<(u64, LeaseId)> = self
            .queue
            .iter()
            .take_while(|(at, _)| *at <= now)
            .take(limit)
            .copied()
            .collect();
        let retry_at = now.saturating_add(self.config.revoke_retry_ms);
        let mut out = Vec::with_capacity(due.len());
        for (at, id) in due {
            self.queue.remove(&(at, id));
            if let Some(lease) = self.leases.get_mut(&id) {
                lease.queued = Some(retry_at);
                self.queue.insert((retry_at, id));
                out.push(id);
            }
        }
        out
    }

    /// On becoming leader: every lease gets a full TTL from `now` plus
    /// `extend_ms` (etcd passes the election timeout), so none expires
    /// because leadership moved. With [`LEASE_REVOKE_RATE`] or more
    /// leases, deadlines bunched in one second are spread out as etcd's
    /// `Promote` does, so a pile of expiries cannot flood Raft.
    pub fn promote(&mut self, now: u64, extend_ms: u64) {
        self.primary = true;
        let ids: Vec<LeaseId> = self.leases.keys().copied().collect();
        let mut by_deadline: Vec<(u64, LeaseId, i64)> = Vec::with_capacity(ids.len());
        for id in ids {
            let Some(ttl) = self.leases.get(&id).map(|l| l.ttl) else {
                continue;
            };
            let at = deadline(now, ttl, extend_ms);
            self.set_deadline(id, at);
            by_deadline.push((at, id, ttl));
        }
        if by_deadline.len() < LEASE_REVOKE_RATE {
            return;
        }
        by_deadline.sort_unstable();
        let Some(&(first, _, _)) = by_deadline.first() else {
            return;
        };
        // etcd's window arithmetic, in milliseconds from `now`.
        let remaining = |at: u64| at.saturating_sub(now) as f64;
        let target = (3 * LEASE_REVOKE_RATE / 4) as f64;
        let mut base = remaining(first);
        let mut next_window = base + 1000.0;
        let mut expires = 0usize;
        for (at, id, ttl) in by_deadline {
            let left = remaining(at);
            if left > next_window {
                base = left;
                next_window = base + 1000.0;
                expires = 1;
                continue;
            }
            expires += 1;
            if expires as f64 <= target {
                continue;
            }
            let delay = 1000.0 * (expires as f64 / target) - (left - base);
            next_window = base + delay;
            let delay_ms = if delay > 0.0 { delay as u64 } else { 0 };
            self.set_deadline(id, deadline(now, ttl, extend_ms.saturating_add(delay_ms)));
        }
    }

    /// On losing leadership: no deadlines, nothing expires here.
    pub fn demote(&mut self) {
        self.primary = false;
        self.queue.clear();
        for lease in self.leases.values_mut() {
            lease.expiry = None;
            lease.queued = None;
        }
    }

    // ---- snapshots ----

    /// The replicated state.
    pub fn snapshot(&self) -> LeaseSnapshot {
        LeaseSnapshot {
            leases: self
                .leases
                .iter()
                .map(|(id, l)| LeaseRecord {
                    id: *id,
                    ttl: l.ttl,
                    keys: l.keys.iter().cloned().collect(),
                })
                .collect(),
        }
    }

    /// A non-primary lessor holding a snapshot's leases (the driver calls
    /// `promote` if this node leads). TTLs below [`MIN_APPLIED_TTL`] are
    /// raised (never to this member's own minimum: the restored state must
    /// be every member's); a key listed under two leases stays on the last
    /// one.
    pub fn from_snapshot(config: LeaseConfig, snapshot: LeaseSnapshot) -> Lessor {
        let mut lessor = Lessor::new(config);
        for record in snapshot.leases {
            if record.id == 0 {
                continue;
            }
            let ttl = record.ttl.clamp(MIN_APPLIED_TTL, MAX_LEASE_TTL);
            lessor.leases.insert(
                record.id,
                Lease {
                    ttl,
                    keys: BTreeSet::new(),
                    expiry: None,
                    queued: None,
                },
            );
            for key in record.keys {
                let _ = lessor.attach(record.id, &key);
            }
        }
        lessor
    }

    // ---- internals ----

    fn set_deadline(&mut self, id: LeaseId, at: u64) {
        let Some(lease) = self.leases.get_mut(&id) else {
            return;
        };
        if let Some(old) = lease.queued.take() {
            self.queue.remove(&(old, id));
        }
        lease.expiry = Some(at);
        lease.queued = Some(at);
        self.queue.insert((at, id));
    }
}
