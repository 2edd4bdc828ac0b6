//! A member's identity and the one entry point every call goes through.
//!
//! [`Node::handle`] routes a request: writes are proposed to Raft and
//! answered once applied; linearizable reads wait for a ReadIndex
//! confirmation and then read the local state machine; serializable reads
//! read it at once; membership and status are answered from here. It stamps
//! the response header (the state machine stamps the revision).
//!
//! Auth: every call is first resolved to a caller (token or client
//! certificate, see [`super::auth`]) and checked as etcd checks it; a
//! proposal carries the caller and the auth revision it was checked at, and
//! apply checks it again. Reads are checked under the same state lock they
//! read under. Passwords are hashed here, before anything is proposed.
//!
//! Leases: TimeToLive and keepalives are leader-only and go through no log
//! entry (etcd answers them from the leader's lessor once its apply index
//! has caught up); a follower forwards them to the leader over the peer
//! transport, as etcd does, so clients may talk to any member. Watches are served by
//! the [`Watchers`] hub this node shares with the Raft loop.

use super::auth::{Authenticator, Credentials, LocalAuth};
use super::members::Members;
use super::peer::Peers;
use super::quota::Quota;
use super::raft_loop::RaftHandle;
use super::state_machine::{self, StateMachine};
use super::watchers::Watchers;
use crate::auth::AuthInfo;
use crate::lease::LeaseError;
use qed_wire::auth::{AuthenticateRequest, AuthenticateResponse};
use qed_wire::cluster::{MemberAddResponse, MembersResponse};
use qed_wire::command::AuthHeader;
use qed_wire::lease::{LeaseKeepAliveResponse, LeaseTimeToLiveRequest};
use qed_wire::maintenance::{AlarmAction, AlarmRequest, AlarmType, StatusResponse};
use qed_wire::peer::{PeerAnswer, PeerCall, PeerReply};
use qed_wire::raft::{ConfChange, ConfChangeType, Message, NodeId};
use qed_wire::{Error, Reply, Request, Response, ResponseHeader};
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};

/// Who this member is, as etcd derives it (see [`super::members`]).
#[derive(Debug, Clone)]
pub struct Identity {
    pub name: String,
    pub peer_urls: Vec<String>,
    pub client_urls: Vec<String>,
    pub member_id: u64,
}

impl Identity {
    /// A member's identity: its ID from its peer URLs and the cluster
    /// token (stable across restarts with the same flags).
    pub fn new(
        name: String,
        peer_urls: Vec<String>,
        client_urls: Vec<String>,
        token: &str,
    ) -> Self {
        Identity {
            member_id: super::members::member_id(&peer_urls, token),
            name,
            peer_urls,
            client_urls,
        }
    }
}

pub struct Node {
    identity: Identity,
    members: Arc<Members>,
    /// The other members; `None` for a cluster of one.
    peers: Option<Arc<Peers>>,
    state: Arc<RwLock<StateMachine>>,
    raft: RaftHandle,
    watchers: Arc<Watchers>,
    authenticator: Authenticator,
    local_auth: Arc<LocalAuth>,
    /// This member's `--quota-backend-bytes`, checked before proposing.
    quota: Quota,
    limits: ClientLimits,
}

/// etcd's `--max-request-bytes` and `--max-txn-ops`: checked by the member
/// a call arrives at, before anything is proposed, never when an entry is
/// applied (flags may differ between members; apply may not).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientLimits {
    pub max_request_bytes: usize,
    pub max_txn_ops: usize,
}

impl Default for ClientLimits {
    fn default() -> Self {
        ClientLimits {
            max_request_bytes: qed_wire::frame::MAX_REQUEST_BYTES,
            max_txn_ops: crate::mvcc::DEFAULT_MAX_TXN_OPS,
        }
    }
}

impl ClientLimits {
    /// The largest request frame read: the request plus the envelope's
    /// slack, never less than the wire's own limit.
    pub fn frame_cap(&self) -> usize {
        let slack = qed_wire::frame::MAX_CLIENT_FRAME - qed_wire::frame::MAX_REQUEST_BYTES;
        qed_wire::frame::MAX_CLIENT_FRAME.max(self.max_request_bytes.saturating_add(slack))
    }
}

/// `Authenticate` proposals retried when the auth state changed between the
/// password check and the token's entry (etcd retries the same way).
const AUTHENTICATE_ATTEMPTS: usize = 3;

impl Node {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        identity: Identity,
        members: Arc<Members>,
        peers: Option<Arc<Peers>>,
        state: Arc<RwLock<StateMachine>>,
        raft: RaftHandle,
        watchers: Arc<Watchers>,
        authenticator: Authenticator,
        local_auth: Arc<LocalAuth>,
        quota: Quota,
        limits: ClientLimits,
    ) -> Self {
        Node {
            identity,
            members,
            peers,
            state,
            raft,
            watchers,
            authenticator,
            local_auth,
            quota,
            limits,
        }
    }

    /// `--max-request-bytes` and `--max-txn-ops`.
    pub fn client_limits(&self) -> ClientLimits {
        self.limits
    }

    /// Who is calling (etcd's `AuthInfo`; empty without credentials).
    pub fn caller(&self, creds: &Credentials) -> Result<AuthInfo, Error> {
        if creds.token.is_none() && (creds.cert_user.is_none() || !self.local_auth.is_enabled()) {
            return Ok(AuthInfo::default());
        }
        let info = self.authenticator.caller(&self.local_auth, creds)?;
        Ok(info.unwrap_or_default())
    }

    /// etcd's check of `req` for `info` against the current auth state;
    /// free while auth is off.
    pub fn check(&self, info: &AuthInfo, req: &Request) -> Result<(), Error> {
        if !self.local_auth.is_enabled() {
            return Ok(());
        }
        let state = self.state.read().unwrap_or_else(|p| p.into_inner());
        state.check_auth(info, req).map_err(|e| auth_error(req, e))
    }

    /// The admin check of calls that are not requests (the snapshot stream).
    pub fn check_admin(&self, info: &AuthInfo) -> Result<(), Error> {
        if !self.local_auth.is_enabled() {
            return Ok(());
        }
        let state = self.state.read().unwrap_or_else(|p| p.into_inner());
        state.auth().check_admin(info).map_err(|e| e.untranslated())
    }

    /// etcd's `Authenticate`: the password is checked here (after a
    /// linearizable read of the auth state, and this user's back-off);
    /// a JWT is signed here, a simple token is issued by a log entry so
    /// every member knows it. The entry carries no password.
    async fn authenticate(&self, r: AuthenticateRequest) -> Reply {
        self.raft.read_index().await?;
        for _ in 0..AUTHENTICATE_ATTEMPTS {
            let (enabled, hash, checked_revision) = {
                let state = self.state.read().unwrap_or_else(|p| p.into_inner());
                let auth = state.auth();
                (
                    auth.is_enabled(),
                    auth.user(&r.name).map(|u| u.password_hash.clone()),
                    auth.revision(),
                )
            };
            if !enabled {
                return Err(Error::AuthNotEnabled);
            }
            let hash = match hash {
                Some(Some(hash)) => hash,
                Some(None) => {
                    // etcd sends this one untranslated.
                    self.authenticator.refuse(&r.name).await;
                    return Err(Error::Unknown(
                        "auth: authentication failed, password was given for no password user"
                            .into(),
                    ));
                }
                None => {
                    self.authenticator.refuse(&r.name).await;
                    return Err(Error::AuthFailed);
                }
            };
            if !self
                .authenticator
                .check_password(&r.name, r.password.clone(), hash)
                .await
            {
                return Err(Error::AuthFailed);
            }
            let token = if self.authenticator.issues_jwt() {
                self.authenticator.sign_jwt(&r.name, checked_revision)?
            } else {
                let header = AuthHeader {
                    token_prefix: self.authenticator.token_prefix()?,
                    ..AuthHeader::default()
                };
                let entry = Request::Authenticate(AuthenticateRequest {
                    name: r.name.clone(),
                    password: String::new(),
                });
                match self.raft.propose(entry, header).await? {
                    Response::Authenticate(resp) => resp.token,
                    _ => {
                        return Err(Error::Internal(
                            "Authenticate applied as something else".into(),
                        ))
                    }
                }
            };
            let now = self
                .state
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .auth()
                .revision();
            if now == checked_revision {
                return Ok(Response::Authenticate(AuthenticateResponse {
                    header: self.local_header(),
                    token,
                }));
            }
            log::info!(
                "auth revision moved while authenticating {:?}; retrying",
                r.name
            );
        }
        Err(Error::AuthOldRevision)
    }

    /// Replaces a password in a call with its bcrypt hash, so the entry
    /// proposed never holds the plaintext.
    async fn hash_passwords(&self, req: Request) -> Result<Request, Error> {
        Ok(match req {
            Request::UserAdd(mut r) if !r.no_password => {
                r.password = self.authenticator.hash_password(r.password).await?;
                Request::UserAdd(r)
            }
            Request::UserAdd(mut r) => {
                r.password.clear();
                Request::UserAdd(r)
            }
            Request::UserChangePassword(mut r) => {
                r.password = self.authenticator.hash_password(r.password).await?;
                Request::UserChangePassword(r)
            }
            other => other,
        })
    }

    /// The watch hub, for watch streams.
    pub fn watchers(&self) -> &Arc<Watchers> {
        &self.watchers
    }

    /// Fills in who answered: cluster, member and Raft term (the revision
    /// is the caller's).
    pub fn stamp(&self, header: &mut ResponseHeader) {
        header.cluster_id = self.members.cluster_id();
        header.member_id = self.identity.member_id;
        header.raft_term = self.raft.status.term.load(Ordering::Relaxed);
    }

    /// A Raft message from a peer, for the Raft loop.
    pub fn step(&self, message: Message) {
        self.raft.step(message);
    }

    /// The leader to forward leader-only work to, when it is another
    /// member; `None` when this member leads (or is alone).
    fn remote_leader(&self) -> Result<Option<(NodeId, &Peers)>, Error> {
        let Some(peers) = &self.peers else {
            return Ok(None);
        };
        match self.raft.status.leader.load(Ordering::Relaxed) {
            0 => Err(Error::NoLeader),
            leader if leader == self.identity.member_id => Ok(None),
            leader => Ok(Some((leader, peers))),
        }
    }

    /// A keepalive: answered here when this member leads, else forwarded
    /// to the leader over the peer transport (as etcd's followers do), so
    /// a client's keepalive stream to any member works.
    pub async fn lease_keep_alive(&self, id: i64) -> Result<LeaseKeepAliveResponse, Error> {
        if let Some((leader, peers)) = self.remote_leader()? {
            return match peers.call(leader, PeerCall::LeaseKeepAlive(id)).await? {
                PeerAnswer::LeaseKeepAlive(resp) => Ok(resp),
                PeerAnswer::Response(_) => Err(Error::Internal(
                    "the leader answered a keepalive with something else".into(),
                )),
            };
        }
        self.local_lease_keep_alive(id).await
    }

    /// A call forwarded by another member: answered from this member's
    /// state only (never forwarded again, so two members that each think
    /// the other leads cannot bounce a call forever).
    pub async fn serve_peer_call(&self, call: PeerCall) -> PeerReply {
        match call {
            PeerCall::LeaseKeepAlive(id) => self
                .local_lease_keep_alive(id)
                .await
                .map(PeerAnswer::LeaseKeepAlive),
            PeerCall::Request(Request::LeaseTimeToLive(r)) => {
                let mut resp = self.local_time_to_live(&r).await?;
                self.stamp(resp.header_mut());
                Ok(PeerAnswer::Response(resp))
            }
            PeerCall::Request(
                req
                @ (Request::MemberAdd(_) | Request::MemberRemove(_) | Request::MemberPromote(_)),
            ) => {
                let mut resp = self.change_members(&req).await?;
                self.stamp(resp.header_mut());
                Ok(PeerAnswer::Response(resp))
            }
            PeerCall::Request(_) => Err(Error::InvalidArgument(
                "only lease calls and membership changes are forwarded between members".into(),
            )),
        }
    }

    /// MemberAdd, MemberRemove, MemberPromote on the leader: one Raft
    /// configuration change each, answered with the membership once it is
    /// applied (the member table follows the configuration).
    async fn change_members(&self, req: &Request) -> Result<Response, Error> {
        let (change, node_id, peer_urls) = match req {
            Request::MemberAdd(r) => {
                if self.peers.is_none() {
                    return Err(Error::Unimplemented(
                        "member add: this member runs as a cluster of one without a peer port \
                         (its --listen-peer-urls could not be bound); restart it with a free one"
                            .into(),
                    ));
                }
                if r.peer_urls.is_empty()
                    || r.peer_urls
                        .iter()
                        .any(|u| crate::transport::url::parse(u).is_err())
                {
                    return Err(Error::MemberBadUrls);
                }
                // The ID the new member computes for itself from the same
                // URLs and token.
                let id = super::members::member_id(&r.peer_urls, &self.members.token);
                if self.members.contains(id) {
                    return Err(Error::MemberExist);
                }
                if self.members.was_removed(id) {
                    // Its ID is its URLs' hash: the members refuse that ID
                    // for good, so it could never rejoin.
                    return Err(Error::InvalidArgument(format!(
                        "etcdserver: member {id:x} with these peer URLs was removed from the \
                         cluster and cannot be added again under the same ID; give the new \
                         member other peer URLs (another port)"
                    )));
                }
                let taken = self
                    .members
                    .list()
                    .into_iter()
                    .any(|m| m.peer_urls.iter().any(|u| r.peer_urls.contains(u)));
                if taken {
                    return Err(Error::PeerUrlExist);
                }
                let change = if r.is_learner {
                    ConfChangeType::AddLearner
                } else {
                    ConfChangeType::AddVoter
                };
                (change, id, r.peer_urls.clone())
            }
            Request::MemberPromote(r) => match self.members.get(r.id) {
                None => return Err(Error::MemberNotFound),
                Some(m) if !m.is_learner => return Err(Error::MemberNotLearner),
                Some(_) => (ConfChangeType::AddVoter, r.id, Vec::new()),
            },
            Request::MemberRemove(r) => {
                if !self.members.contains(r.id) {
                    return Err(Error::MemberNotFound);
                }
                if self.members.ids().len() == 1 {
                    // Raft keeps at least one voter.
                    return Err(Error::MemberNotEnoughStarted);
                }
                (ConfChangeType::Remove, r.id, Vec::new())
            }
            other => {
                return Err(Error::Unimplemented(other.method().to_string()));
            }
        };
        self.raft
            .propose_conf_change(
                ConfChange {
                    change,
                    node_id,
                    context: Vec::new(),
                },
                peer_urls,
            )
            .await?;
        let members = self.members.list();
        Ok(match req {
            Request::MemberAdd(_) => Response::MemberAdd(MemberAddResponse {
                header: ResponseHeader::default(),
                member: members
                    .iter()
                    .find(|m| m.id == node_id)
                    .cloned()
                    .unwrap_or_default(),
                members,
            }),
            _ => Response::Members(MembersResponse {
                header: ResponseHeader::default(),
                members,
            }),
        })
    }

    async fn local_time_to_live(&self, r: &LeaseTimeToLiveRequest) -> Result<Response, Error> {
        self.wait_applied().await?;
        let state = self.state.read().unwrap_or_else(|p| p.into_inner());
        Ok(Response::LeaseTimeToLive(state.lease_time_to_live(
            r.id,
            r.keys,
            super::now_ms(),
        )?))
    }

    /// One keepalive, answered by the leader without a log entry: a lease
    /// that is gone (or expired, its revoke on the way) answers TTL 0.
    async fn local_lease_keep_alive(&self, id: i64) -> Result<LeaseKeepAliveResponse, Error> {
        self.wait_applied().await?;
        let renewed = self
            .state
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .lessor_mut()
            .renew(id, super::now_ms());
        let ttl = match renewed {
            Ok(ttl) => ttl,
            Err(LeaseError::NotFound | LeaseError::Expired) => 0,
            Err(e) => return Err(e.into()),
        };
        let mut resp = LeaseKeepAliveResponse {
            header: self.local_header(),
            id,
            ttl,
        };
        self.stamp(&mut resp.header);
        Ok(resp)
    }

    /// etcd's `waitAppliedIndex`: lease answers need every committed entry
    /// applied (a grant or revoke still in flight would be missed), and
    /// every entry this leader announced durable: a follower may have
    /// committed and answered a grant there already (see `raft`'s
    /// follower commit).
    async fn wait_applied(&self) -> Result<(), Error> {
        let status = &self.raft.status;
        let floor = status
            .commit
            .load(Ordering::Relaxed)
            .max(status.announced_durable.load(Ordering::Relaxed));
        if status.applied.load(Ordering::Relaxed) < floor {
            self.raft.read_index().await?;
        }
        Ok(())
    }

    /// The cluster's ID (0 while a joining member has not learned it).
    pub fn cluster_id(&self) -> u64 {
        self.members.cluster_id()
    }

    /// Raft facts (leader, term, commit, applied) as the loop last stored them.
    pub fn raft_status(&self) -> &super::raft_loop::RaftStatus {
        &self.raft.status
    }

    /// Runs `f` on the state machine under its read lock (probes, metrics).
    pub fn read_state<R>(&self, f: impl FnOnce(&StateMachine) -> R) -> R {
        f(&self.state.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// One ReadIndex round: Ok once a linearizable read could be served here.
    pub async fn confirm_read(&self) -> Result<(), Error> {
        self.raft.read_index().await
    }

    /// This member's `--quota-backend-bytes`.
    pub fn quota_bytes(&self) -> u64 {
        self.quota.bytes
    }

    /// Whether this member is a learner in the member table.
    pub fn is_learner(&self) -> bool {
        self.members
            .get(self.identity.member_id)
            .is_some_and(|m| m.is_learner)
    }

    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    pub async fn handle(&self, req: Request, creds: &Credentials) -> Reply {
        // etcd refuses malformed requests before they reach the log.
        validate(&req, self.limits.max_txn_ops)?;
        let info = self.caller(creds)?;
        if let Request::Authenticate(r) = req {
            return self.authenticate(r).await;
        }
        // Ranges and read-only txns are checked where they are read, under
        // the same lock (see `read`); everything else here.
        if !matches!(req, Request::Range(_) | Request::Txn(_)) || state_machine::is_write(&req) {
            self.check(&info, &req)?;
        }
        let req = self.hash_passwords(req).await?;
        // `req` is matched in place (no arm moves it but the write's, which
        // hands it to Raft as it is: no copy of a put's value).
        let mut resp = match req {
            // etcd's Cluster service stamps no revision.
            Request::MemberList(_) => Response::Members(MembersResponse {
                header: ResponseHeader::default(),
                members: self.members.list(),
            }),
            Request::MemberAdd(_) | Request::MemberRemove(_) | Request::MemberPromote(_) => {
                match self.remote_leader()? {
                    // Membership changes are proposed by the leader.
                    Some((leader, peers)) => {
                        return match peers.call(leader, PeerCall::Request(req.clone())).await? {
                            PeerAnswer::Response(resp) => Ok(resp),
                            PeerAnswer::LeaseKeepAlive(_) => Err(Error::Internal(
                                "the leader answered a membership change with something else"
                                    .into(),
                            )),
                        };
                    }
                    None => self.change_members(&req).await?,
                }
            }
            Request::MemberUpdate(ref r) => {
                self.check_member_update(r)?;
                let header = AuthHeader {
                    user: info.user.clone(),
                    revision: info.revision,
                    ..AuthHeader::default()
                };
                // An ordinary entry: every member applies it to its table
                // (and keeps it in the state machine, so snapshots carry it).
                self.raft.propose(req.clone(), header).await?;
                Response::Members(MembersResponse {
                    header: ResponseHeader::default(),
                    members: self.members.list(),
                })
            }
            Request::Status(_) => self.status(),
            Request::MoveLeader(ref r) => {
                self.move_leader(r.target_id).await?;
                Response::MoveLeader(qed_wire::maintenance::MoveLeaderResponse {
                    header: self.local_header(),
                })
            }
            Request::Defragment(_) => {
                // The state lives in memory and is rebuilt compactly at every
                // snapshot; there is no file to defragment.
                Response::Defragment(qed_wire::maintenance::DefragmentResponse {
                    header: self.local_header(),
                })
            }
            write if state_machine::is_write(&write) => {
                self.check_quota(&write).await?;
                let header = AuthHeader {
                    user: info.user.clone(),
                    revision: info.revision,
                    ..AuthHeader::default()
                };
                self.raft.propose(write, header).await?
            }
            Request::LeaseTimeToLive(ref r) => match self.remote_leader()? {
                // The leader's header stays: it answered.
                Some((leader, peers)) => {
                    return match peers.call(leader, PeerCall::Request(req.clone())).await? {
                        PeerAnswer::Response(resp) => Ok(resp),
                        PeerAnswer::LeaseKeepAlive(_) => Err(Error::Internal(
                            "the leader answered TimeToLive with something else".into(),
                        )),
                    };
                }
                None => self.local_time_to_live(r).await?,
            },
            Request::Range(ref r) if !r.serializable => {
                self.raft.read_index().await?;
                self.read(&req, &info)?
            }
            // A read-only txn (is_write said so) is a linearizable read, and
            // so are the auth reads and the alarm list (etcd 3.4 sends them
            // through Raft).
            Request::Txn(_)
            | Request::Alarm(_)
            | Request::UserGet { .. }
            | Request::UserList
            | Request::RoleGet { .. }
            | Request::RoleList => {
                self.raft.read_index().await?;
                self.read(&req, &info)?
            }
            ref req => self.read(req, &info)?,
        };
        let header = resp.header_mut();
        self.stamp(header);
        Ok(resp)
    }

    /// etcd's checks on MemberUpdate: valid URLs (`given member URLs are
    /// invalid`), a member that exists (`member not found`), URLs no other
    /// member uses (`Peer URLs already exists`).
    fn check_member_update(&self, r: &qed_wire::cluster::MemberUpdateRequest) -> Result<(), Error> {
        if r.peer_urls.is_empty()
            || r.peer_urls
                .iter()
                .any(|u| crate::transport::url::parse(u).is_err())
        {
            return Err(Error::MemberBadUrls);
        }
        if !self.members.contains(r.id) {
            return Err(Error::MemberNotFound);
        }
        let taken = self
            .members
            .list()
            .into_iter()
            .any(|m| m.id != r.id && m.peer_urls.iter().any(|u| r.peer_urls.contains(u)));
        if taken {
            return Err(Error::PeerUrlExist);
        }
        Ok(())
    }

    /// etcd's MoveLeader: only the leader moves leadership (`not leader`
    /// elsewhere, as etcd's maintenance server answers), to a voter that
    /// is a member (`bad leader transferee` otherwise, learners included).
    /// Moving it to the leader itself succeeds at once, as in etcd.
    async fn move_leader(&self, target: u64) -> Result<(), Error> {
        let me = self.identity.member_id;
        if self.raft.status.leader.load(Ordering::Relaxed) != me {
            return Err(Error::NotLeader);
        }
        match self.members.get(target) {
            Some(m) if !m.is_learner => {}
            _ => return Err(Error::BadLeaderTransferee),
        }
        if target == me {
            return Ok(());
        }
        self.raft.move_leader(target).await
    }

    /// etcd's quota check before a write is proposed: a write that would
    /// take this member's state past its `--quota-backend-bytes` is refused
    /// with NOSPACE, and this member proposes raising the NOSPACE alarm
    /// under its ID (once: not while its alarm is already raised). Apply
    /// then refuses writes on every member alike (see [`super::quota`]).
    async fn check_quota(&self, req: &Request) -> Result<(), Error> {
        let (used, raised) = {
            let state = self.state.read().unwrap_or_else(|p| p.into_inner());
            let me = self.identity.member_id;
            let raised = state
                .alarms()
                .iter()
                .any(|a| a.member_id == me && a.alarm == AlarmType::Nospace);
            (state.size_bytes(), raised)
        };
        if self.quota.available(used, req) {
            return Ok(());
        }
        if !raised {
            log::warn!(
                "{used} bytes in use: a write would pass the quota of {} bytes; raising NOSPACE",
                self.quota.bytes
            );
            let alarm = Request::Alarm(AlarmRequest {
                action: AlarmAction::Activate,
                member_id: self.identity.member_id,
                alarm: AlarmType::Nospace,
            });
            // etcd ignores the outcome too: the write is refused either way,
            // and the next one over the quota tries again.
            if let Err(e) = self.raft.propose(alarm, AuthHeader::system()).await {
                log::warn!("proposing the NOSPACE alarm failed: {e}");
            }
        }
        Err(Error::NoSpace)
    }

    /// The whole state as an etcd backend file (`qed snapshot save`,
    /// etcd's Maintenance/Snapshot; see `snapshot_file::etcd_file`):
    /// serialized from a clone, off the
    /// executor, so writes go on meanwhile.
    pub async fn snapshot_file(&self) -> Result<Vec<u8>, Error> {
        let view = self.state.read().unwrap_or_else(|p| p.into_inner()).clone();
        crate::runtime::spawn_blocking(move || super::snapshot_file::etcd_file(&view))
            .await
            .map_err(|e| Error::Internal(format!("snapshot failed: {e}")))
    }

    /// A read from the local state, checking `info` again under the state
    /// lock (a revoke applied since the first check wins). Key-space reads
    /// are served from an O(1) clone of the store taken under the lock and
    /// read after it is released, so a large range never holds up the
    /// apply path.
    fn read(&self, req: &Request, info: &AuthInfo) -> Reply {
        let view = {
            let state = self.state.read().unwrap_or_else(|p| p.into_inner());
            if self.local_auth.is_enabled() {
                state
                    .check_auth(info, req)
                    .map_err(|e| auth_error(req, e))?;
            }
            match req {
                Request::Range(_) | Request::Txn(_) | Request::HashKv(_) | Request::Hash(_) => {
                    state.store_view()
                }
                _ => return state.read(req),
            }
        };
        StateMachine::read_kv(&view, req).unwrap_or_else(|| {
            Err(Error::Internal(format!(
                "{} is not a key-space read",
                req.method()
            )))
        })
    }

    fn local_header(&self) -> ResponseHeader {
        ResponseHeader {
            revision: self
                .state
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .revision(),
            ..Default::default()
        }
    }

    fn status(&self) -> Response {
        let state = self.state.read().unwrap_or_else(|p| p.into_inner());
        let size = i64::try_from(state.size_bytes()).unwrap_or(i64::MAX);
        let raft = &self.raft.status;
        Response::Status(StatusResponse {
            header: ResponseHeader {
                revision: state.revision(),
                ..Default::default()
            },
            // The etcd API this member implements, as /version says, so
            // tools' version checks (etcdctl, client libraries) pass.
            version: super::probes::ETCD_SERVER_VERSION.to_string(),
            db_size: size,
            leader: raft.leader.load(Ordering::Relaxed),
            raft_index: raft.commit.load(Ordering::Relaxed),
            raft_term: raft.term.load(Ordering::Relaxed),
            raft_applied_index: raft.applied.load(Ordering::Relaxed),
            errors: status_errors(raft.leader.load(Ordering::Relaxed), state.alarms()),
            db_size_in_use: size,
            is_learner: self
                .members
                .get(self.identity.member_id)
                .is_some_and(|m| m.is_learner),
        })
    }
}

/// etcd's Status `errors`: `etcdserver: no leader` without one, then each
/// alarm as its protobuf compact text (`memberID:N alarm:NOSPACE `, the
/// trailing space included), which `etcdctl endpoint status` prints.
fn status_errors(leader: u64, alarms: &[qed_wire::maintenance::AlarmMember]) -> Vec<String> {
    let no_leader = (leader == 0).then(|| Error::NoLeader.to_string());
    let alarms = alarms
        .iter()
        .map(|a| format!("memberID:{} alarm:{} ", a.member_id, alarm_name(a.alarm)));
    no_leader.into_iter().chain(alarms).collect()
}

/// A refused call's error as etcd words it: its maintenance calls pass the
/// auth error through untranslated (gRPC code Unknown), every other call
/// sends etcd's translated error.
fn auth_error(req: &Request, e: crate::auth::AuthError) -> Error {
    match req {
        Request::Hash(_) | Request::HashKv(_) | Request::Defragment(_) => e.untranslated(),
        _ => e.into(),
    }
}

fn validate(req: &Request, max_txn_ops: usize) -> Result<(), Error> {
    use crate::mvcc;
    match req {
        Request::Range(r) => mvcc::validate_range(r),
        Request::Put(p) => mvcc::validate_put(p),
        Request::DeleteRange(d) => mvcc::validate_delete_range(d),
        Request::Txn(t) => mvcc::validate_txn(t, max_txn_ops),
        _ => Ok(()),
    }
    .map_err(Error::from)
}

/// etcd's names for alarms, as `etcdctl alarm list` prints them.
pub fn alarm_name(alarm: AlarmType) -> &'static str {
    match alarm {
        AlarmType::None => "NONE",
        AlarmType::Nospace => "NOSPACE",
        AlarmType::Corrupt => "CORRUPT",
    }
}
