//! A member's identity and the one entry point every call goes through.
//!
//! [`Node::handle`] routes a request: writes to [`StateMachine::apply`],
//! reads to [`StateMachine::read`], membership and status from here, and
//! stamps the response header. Today writes apply directly under the lock;
//! the Raft driver will replace the write arm with propose -> commit -> apply
//! without anything above this file changing.

use super::state_machine::{self, Limits, StateMachine};
use qed_wire::cluster::{Member, MembersResponse};
use qed_wire::maintenance::{AlarmType, StatusResponse};
use qed_wire::{Error, Reply, Request, Response, ResponseHeader};
use std::sync::RwLock;

/// Who this member is, as etcd derives it.
#[derive(Debug, Clone)]
pub struct Identity {
    pub name: String,
    pub peer_urls: Vec<String>,
    pub client_urls: Vec<String>,
    pub member_id: u64,
    pub cluster_id: u64,
}

impl Identity {
    /// Member ID from the member's peer URLs and the cluster token, cluster
    /// ID from the member IDs: stable across restarts with the same flags,
    /// different for different clusters (etcd hashes the same inputs).
    pub fn new(
        name: String,
        peer_urls: Vec<String>,
        client_urls: Vec<String>,
        token: &str,
    ) -> Self {
        let mut urls = peer_urls.clone();
        urls.sort();
        let member_id = fnv1a64(format!("{}|{token}", urls.join(",")).as_bytes());
        let cluster_id = fnv1a64(format!("{member_id:x}|{token}").as_bytes());
        Identity {
            name,
            peer_urls,
            client_urls,
            member_id,
            cluster_id,
        }
    }

    fn member(&self) -> Member {
        Member {
            id: self.member_id,
            name: self.name.clone(),
            peer_urls: self.peer_urls.clone(),
            client_urls: self.client_urls.clone(),
            is_learner: false,
        }
    }
}

fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

pub struct Node {
    identity: Identity,
    state: RwLock<StateMachine>,
}

/// The Raft term reported until the Raft core drives this node: a single
/// member that is leader of its first term.
const TERM: u64 = 1;

impl Node {
    pub fn new(identity: Identity, limits: Limits) -> Self {
        Node {
            state: RwLock::new(StateMachine::new(identity.member_id, limits)),
            identity,
        }
    }

    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    pub async fn handle(&self, req: Request) -> Reply {
        let (mut resp, revision) = match &req {
            Request::MemberList(_) => (
                Response::Members(MembersResponse {
                    header: Default::default(),
                    members: vec![self.identity.member()],
                }),
                self.revision(),
            ),
            Request::Status(_) => self.status(),
            Request::Defragment(_) => {
                // The state lives in memory and is rebuilt compactly at every
                // snapshot; there is no file to defragment.
                (Response::Defragment(Default::default()), self.revision())
            }
            Request::Authenticate(_) => return Err(Error::AuthNotEnabled),
            Request::AuthStatus => (
                Response::AuthStatus {
                    header: Default::default(),
                    enabled: false,
                    auth_revision: 0,
                },
                self.revision(),
            ),
            // The revision is read under the same lock as the request ran,
            // so a put's header names its own revision.
            req if state_machine::is_write(req) => {
                let mut state = self.state.write().unwrap_or_else(|p| p.into_inner());
                (state.apply(req)?, state.revision())
            }
            req => {
                let state = self.state.read().unwrap_or_else(|p| p.into_inner());
                (state.read(req)?, state.revision())
            }
        };
        *resp.header_mut() = ResponseHeader {
            cluster_id: self.identity.cluster_id,
            member_id: self.identity.member_id,
            revision,
            raft_term: TERM,
        };
        Ok(resp)
    }

    fn revision(&self) -> i64 {
        self.state
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .revision()
    }

    fn status(&self) -> (Response, i64) {
        let state = self.state.read().unwrap_or_else(|p| p.into_inner());
        let size = i64::try_from(state.size_bytes()).unwrap_or(i64::MAX);
        let revision = u64::try_from(state.revision()).unwrap_or(0);
        let resp = Response::Status(StatusResponse {
            header: Default::default(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            db_size: size,
            leader: self.identity.member_id,
            raft_index: revision,
            raft_term: TERM,
            raft_applied_index: revision,
            errors: state
                .alarms()
                .iter()
                .map(|a| format!("memberID:{} alarm:{}", a.member_id, alarm_name(a.alarm)))
                .collect(),
            db_size_in_use: size,
            is_learner: false,
        });
        (resp, state.revision())
    }
}

/// etcd's names for alarms, as `etcdctl alarm list` prints them.
pub fn alarm_name(alarm: AlarmType) -> &'static str {
    match alarm {
        AlarmType::None => "NONE",
        AlarmType::Nospace => "NOSPACE",
        AlarmType::Corrupt => "CORRUPT",
    }
}
