//! The replicated state machine: what applying a request means.
//!
//! Writes go through [`StateMachine::apply`] as their Raft entries commit,
//! and reads through [`StateMachine::read`]. Both are deterministic
//! functions of the state and the request (no clock, no I/O), because every
//! member must reach the same state from the same log. The applied index is
//! part of the state, and of its snapshots, so replaying the log after a
//! restart never applies an entry twice. Alarms live here because they gate
//! writes: with NOSPACE raised, puts and txns that write are refused until
//! an operator compacts and disarms, exactly as etcd's capped applier.
//!
//! Cloning is cheap (the key space is a persistent map), so snapshots are
//! serialized from a clone while applying goes on.

use crate::mvcc::{MvccError, Store};
use qed_wire::kv::{RequestOp, TxnRequest};
use qed_wire::maintenance::{
    AlarmAction, AlarmMember, AlarmResponse, AlarmType, HashKvResponse, HashResponse,
};
use qed_wire::{Error, Reply, Request, Response};
use serde::{Deserialize, Serialize};

/// Limits enforced at apply time.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// `--quota-backend-bytes`: in-memory bytes of key space plus history
    /// beyond which NOSPACE is raised.
    pub quota_bytes: u64,
}

#[derive(Clone)]
pub struct StateMachine {
    kv: Store,
    alarms: Vec<AlarmMember>,
    /// Index of the last log entry applied.
    applied: u64,
    limits: Limits,
    /// This member, for alarms raised here.
    member_id: u64,
}

/// What a snapshot of the state machine holds.
#[derive(Serialize, Deserialize)]
struct Image {
    applied: u64,
    kv: Vec<u8>,
    alarms: Vec<AlarmMember>,
}

/// Whether a request changes state (and so must go through the log).
pub fn is_write(req: &Request) -> bool {
    match req {
        Request::Range(_) | Request::Hash(_) | Request::HashKv(_) | Request::Status(_) => false,
        Request::Alarm(a) => a.action != AlarmAction::Get,
        Request::Txn(t) => !crate::mvcc::is_read_only_txn(t),
        _ => true,
    }
}

/// Rough bytes a write adds, for the quota check before applying it; 0 for
/// requests that add nothing (etcd lets deletes and compactions through a
/// NOSPACE alarm so operators can free room).
fn cost(req: &Request) -> u64 {
    match req {
        Request::Put(p) => (p.key.len() + p.value.len()) as u64,
        Request::Txn(t) => txn_cost(t),
        _ => 0,
    }
}

fn txn_cost(t: &TxnRequest) -> u64 {
    t.success
        .iter()
        .chain(&t.failure)
        .map(|op| match op {
            RequestOp::Put(p) => (p.key.len() + p.value.len()) as u64,
            RequestOp::Txn(inner) => txn_cost(inner),
            _ => 0,
        })
        .sum()
}

impl StateMachine {
    pub fn new(member_id: u64, limits: Limits) -> Self {
        StateMachine {
            kv: Store::new(),
            alarms: Vec::new(),
            applied: 0,
            limits,
            member_id,
        }
    }

    /// Rebuilds a state machine from [`StateMachine::to_snapshot`]'s bytes.
    pub fn from_snapshot(bytes: &[u8], member_id: u64, limits: Limits) -> Result<Self, MvccError> {
        let image: Image = postcard::from_bytes(bytes)
            .map_err(|e| MvccError::Corrupt(format!("state snapshot: {e}")))?;
        Ok(StateMachine {
            kv: Store::from_bytes(&image.kv)?,
            alarms: image.alarms,
            applied: image.applied,
            limits,
            member_id,
        })
    }

    /// The whole state, for a snapshot file or a lagging follower.
    pub fn to_snapshot(&self) -> Result<Vec<u8>, MvccError> {
        let image = Image {
            applied: self.applied,
            kv: self.kv.to_bytes()?,
            alarms: self.alarms.clone(),
        };
        postcard::to_allocvec(&image).map_err(|e| MvccError::Corrupt(e.to_string()))
    }

    /// What a state machine rebuilt from a snapshot keeps of this one.
    pub fn identity(&self) -> (u64, Limits) {
        (self.member_id, self.limits)
    }

    pub fn applied(&self) -> u64 {
        self.applied
    }

    /// Marks an entry with no command (a leader's no-op) applied.
    pub fn skip(&mut self, index: u64) {
        self.applied = self.applied.max(index);
    }

    /// Applies the command of log entry `index`; `None` if that entry was
    /// applied already (replay after a restart from a snapshot).
    pub fn apply_entry(&mut self, index: u64, req: &Request) -> Option<Reply> {
        if index <= self.applied {
            return None;
        }
        self.applied = index;
        Some(self.apply(req))
    }

    pub fn revision(&self) -> i64 {
        self.kv.revision()
    }

    /// Bytes the state takes, as `Status` reports and the quota counts.
    pub fn size_bytes(&self) -> u64 {
        self.kv.size_bytes()
    }

    /// Keys that exist now (deleted ones with history left do not count).
    pub fn key_count(&self) -> usize {
        let all = qed_wire::kv::RangeRequest {
            key: vec![0],
            range_end: vec![0],
            count_only: true,
            ..Default::default()
        };
        self.kv
            .range(&all)
            .map(|r| r.count.max(0) as usize)
            .unwrap_or(0)
    }

    /// HashKV of the whole history kept, as `etcdctl endpoint hashkv` shows it.
    pub fn hash(&self) -> Result<u32, MvccError> {
        self.kv.hash_kv(0).map(|h| h.hash)
    }

    pub fn alarms(&self) -> &[AlarmMember] {
        &self.alarms
    }

    /// Applies a write, stamping the header's revision. Errors leave the
    /// state unchanged.
    fn apply(&mut self, req: &Request) -> Reply {
        let mut resp = self.apply_unstamped(req)?;
        resp.header_mut().revision = self.kv.revision();
        Ok(resp)
    }

    fn apply_unstamped(&mut self, req: &Request) -> Reply {
        // No leases exist until the lessor lands, so any lease is unknown,
        // which is etcd's answer for a lease that does not exist.
        let no_leases = |_: i64| false;
        let no_space = self.alarms.iter().any(|a| a.alarm == AlarmType::Nospace);
        if cost(req) > 0 {
            if no_space {
                return Err(Error::NoSpace);
            }
            if self.kv.size_bytes() + cost(req) > self.limits.quota_bytes {
                self.raise(AlarmType::Nospace);
                return Err(Error::NoSpace);
            }
        }
        Ok(match req {
            Request::Put(p) => Response::Put(self.kv.put(p, &no_leases).map_err(Error::from)?.0),
            Request::DeleteRange(d) => {
                Response::DeleteRange(self.kv.delete_range(d).map_err(Error::from)?.0)
            }
            Request::Txn(t) => Response::Txn(self.kv.txn(t, &no_leases).map_err(Error::from)?.0),
            Request::Compact(c) => {
                self.kv.compact(c.revision).map_err(Error::from)?;
                Response::Compact(Default::default())
            }
            Request::Alarm(a) => {
                match a.action {
                    AlarmAction::Activate => {
                        if a.alarm != AlarmType::None {
                            self.alarms
                                .retain(|m| !(m.member_id == a.member_id && m.alarm == a.alarm));
                            self.alarms.push(AlarmMember {
                                member_id: a.member_id,
                                alarm: a.alarm,
                            });
                        }
                    }
                    AlarmAction::Deactivate => self
                        .alarms
                        .retain(|m| !(m.member_id == a.member_id && m.alarm == a.alarm)),
                    AlarmAction::Get => {}
                }
                Response::Alarm(AlarmResponse {
                    header: Default::default(),
                    alarms: self.alarms.clone(),
                })
            }
            other => return Err(Error::Unimplemented(other.method().to_string())),
        })
    }

    /// Serves a read from the current state, stamping the header's revision.
    pub fn read(&self, req: &Request) -> Reply {
        let mut resp = self.read_unstamped(req)?;
        resp.header_mut().revision = self.kv.revision();
        Ok(resp)
    }

    fn read_unstamped(&self, req: &Request) -> Reply {
        Ok(match req {
            Request::Range(r) => Response::Range(self.kv.range(r).map_err(Error::from)?),
            Request::Txn(t) => Response::Txn(self.kv.txn_read_only(t).map_err(Error::from)?),
            Request::HashKv(h) => {
                let hash = self.kv.hash_kv(h.revision).map_err(Error::from)?;
                Response::HashKv(HashKvResponse {
                    header: Default::default(),
                    hash: hash.hash,
                    compact_revision: hash.compact_revision,
                })
            }
            Request::Hash(_) => {
                let hash = self.kv.hash_kv(0).map_err(Error::from)?;
                Response::Hash(HashResponse {
                    header: Default::default(),
                    hash: hash.hash,
                })
            }
            Request::Alarm(_) => Response::Alarm(AlarmResponse {
                header: Default::default(),
                alarms: self.alarms.clone(),
            }),
            other => return Err(Error::Unimplemented(other.method().to_string())),
        })
    }

    fn raise(&mut self, alarm: AlarmType) {
        let member_id = self.member_id;
        if !self
            .alarms
            .iter()
            .any(|a| a.member_id == member_id && a.alarm == alarm)
        {
            log::warn!("alarm raised: {alarm:?} on member {member_id:x}");
            self.alarms.push(AlarmMember { member_id, alarm });
        }
    }
}
