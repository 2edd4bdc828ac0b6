//! The replicated state machine: what applying a request means.
//!
//! Writes go through [`StateMachine::apply`] and reads through
//! [`StateMachine::read`]. Both are deterministic functions of the state and
//! the request (no clock, no I/O), because every member must reach the same
//! state from the same log; the node decides *when* to call them (today
//! directly, with Raft once entries commit). Alarms live here because they
//! gate writes: with NOSPACE raised, puts and txns that write are refused
//! until an operator compacts and disarms, exactly as etcd's capped applier.

use crate::mvcc::Store;
use qed_wire::kv::{RequestOp, TxnRequest};
use qed_wire::maintenance::{
    AlarmAction, AlarmMember, AlarmResponse, AlarmType, HashKvResponse, HashResponse,
};
use qed_wire::{Error, Reply, Request, Response};

/// Limits enforced at apply time.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// `--quota-backend-bytes`: in-memory bytes of key space plus history
    /// beyond which NOSPACE is raised.
    pub quota_bytes: u64,
}

pub struct StateMachine {
    kv: Store,
    alarms: Vec<AlarmMember>,
    limits: Limits,
    /// This member, for alarms raised here.
    member_id: u64,
}

/// Whether a request changes state (and so must go through the log).
pub fn is_write(req: &Request) -> bool {
    match req {
        Request::Range(_) | Request::Hash(_) | Request::HashKv(_) | Request::Status(_) => false,
        Request::Alarm(a) => a.action != AlarmAction::Get,
        // Txns, even read-only ones, are applied in order with the writes:
        // simpler than a second read path, and a read-only txn does not
        // bump the revision.
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
            limits,
            member_id,
        }
    }

    pub fn revision(&self) -> i64 {
        self.kv.revision()
    }

    /// Bytes the state takes, as `Status` reports and the quota counts.
    pub fn size_bytes(&self) -> u64 {
        self.kv.size_bytes()
    }

    pub fn alarms(&self) -> &[AlarmMember] {
        &self.alarms
    }

    /// Applies a write. Errors leave the state unchanged.
    pub fn apply(&mut self, req: &Request) -> Reply {
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

    /// Serves a read from the current state.
    pub fn read(&self, req: &Request) -> Reply {
        Ok(match req {
            Request::Range(r) => Response::Range(self.kv.range(r).map_err(Error::from)?),
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
