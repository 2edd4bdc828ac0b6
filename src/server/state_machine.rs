//! The replicated state machine: what applying a request means.
//!
//! Writes go through [`StateMachine::apply`] as their Raft entries commit,
//! and reads through [`StateMachine::read`]. Both are deterministic
//! functions of the state and the request (no clock, no I/O), because every
//! member must reach the same state from the same log. The applied index is
//! part of the state, and of its snapshots, so replaying the log after a
//! restart never applies an entry twice. Alarms live here because they gate
//! writes: with NOSPACE in the replicated alarm set, puts, txns that put and
//! lease grants are refused until an operator compacts and disarms, exactly
//! as etcd's capped applier. Alarms change only through applied Alarm
//! entries; no local setting (such as this member's quota, checked before
//! proposing: see [`super::quota`]) decides what is applied.
//!
//! Leases live here too: the [`Lessor`]'s replicated part (grants, TTLs,
//! attached keys) changes only through applied entries and is part of the
//! snapshot, so leases survive restarts. Its leader-local part (deadlines)
//! is driven by the Raft loop (`promote`, `demote`, `expired`) and by
//! keepalives; time enters only as the `now_ms` argument, which affects
//! deadlines and never the replicated state.
//!
//! Every applied write also returns its events (for the watch hub), and the
//! lessor follows the same events, so a key's lease is always the lease of
//! its newest version.
//!
//! Auth lives here too: the [`AuthStore`] (users, roles, permissions, the
//! enabled flag and the auth revision) changes only through applied
//! entries and is part of the snapshot. Every entry carries who proposed it
//! and the auth revision that was checked ([`AuthHeader`]); apply checks the
//! call again against it, so a revoke applied first wins (etcd's
//! `authApplierV3`). Simple tokens issued by applied `Authenticate` entries
//! go to a member-local table shared with the node ([`SimpleTokens`]), not
//! to the replicated state.
//!
//! Cloning is cheap (the key space is a persistent map), so snapshots are
//! serialized from a clone while applying goes on.

use super::auth::LocalAuth;
use crate::auth::request::check_request;
use crate::auth::{AuthError, AuthInfo, AuthSnapshot, AuthStore};
use crate::lease::{LeaseConfig, LeaseError, LeaseId, LeaseSnapshot, Lessor};
use crate::mvcc::{BackedSource, Backing, Event, KeySpaceImage, MvccError, Store, ValueSource};
use qed_wire::auth::{
    AuthResponse, AuthenticateResponse, NamesResponse, RoleGetResponse, UserGetResponse,
};
use qed_wire::command::AuthHeader;
use qed_wire::frame::encoded_len;
use qed_wire::lease::{
    LeaseGrantResponse, LeaseLeasesResponse, LeaseRevokeResponse, LeaseTimeToLiveResponse,
};
use qed_wire::maintenance::{
    AlarmAction, AlarmMember, AlarmResponse, AlarmType, HashKvResponse, HashResponse,
};
use qed_wire::{Error, Reply, Request, Response};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::{Arc, Weak};

/// This member's settings the state machine keeps.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Lease settings (minimum TTL from the election timeout).
    pub lease: LeaseConfig,
}

/// This member's simple tokens and enabled flag, shared by the state
/// machine (which issues and drops tokens as entries apply) and the node
/// (which looks them up).
pub type TokenTable = Arc<LocalAuth>;

#[derive(Clone)]
pub struct StateMachine {
    kv: Store,
    lessor: Lessor,
    auth: AuthStore,
    /// Member-local, not replicated; survives snapshot installs.
    tokens: TokenTable,
    alarms: Vec<AlarmMember>,
    /// Peer URLs set by MemberUpdate, by member ID: they win over the
    /// URLs a member was created with (its ID stays).
    member_urls: BTreeMap<u64, Vec<String>>,
    /// Index of the last log entry applied.
    applied: u64,
    limits: Limits,
    /// The mapped snapshot file this state was loaded from, whose pages
    /// writing a snapshot reads in (see [`StateMachine::release_loaded_pages`]).
    /// Weak: the values pointing into it keep it alive, not this.
    loaded_from: Weak<Backing>,
}

/// The start of every snapshot image. Sections added later follow it in
/// order (leases, then auth, then updated member URLs); an image from before a section existed ends
/// early and loads with that section empty. Postcard writes a struct as its
/// fields one after another, so this is the same byte layout as one struct.
#[derive(Deserialize)]
struct ImageBase {
    applied: u64,
    #[serde(with = "qed_wire::bytes")]
    kv: Vec<u8>,
    alarms: Vec<AlarmMember>,
}

/// [`Image`] as written: the store's encoding goes straight into `kv`, with
/// no copy of it made first. Postcard writes a byte string as its length
/// (a varint) followed by the bytes, which is exactly what the tuple
/// `(length, store)` writes, so readers of [`Image`] see the same bytes.
/// The key space is a [`Store`], or (for a restore) the checked histories
/// of an import, which encode as the same bytes.
struct ImageRef<'a, KV> {
    applied: u64,
    kv: &'a KV,
    kv_len: usize,
    alarms: &'a [AlarmMember],
    leases: &'a LeaseSnapshot,
    auth: &'a AuthSnapshot,
    member_urls: &'a BTreeMap<u64, Vec<String>>,
}

impl<KV: Serialize> Serialize for ImageRef<'_, KV> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut st = s.serialize_struct("Image", 6)?;
        st.serialize_field("applied", &self.applied)?;
        st.serialize_field("kv", &(self.kv_len, self.kv))?;
        st.serialize_field("alarms", self.alarms)?;
        st.serialize_field("leases", &self.leases)?;
        st.serialize_field("auth", &self.auth)?;
        st.serialize_field("member_urls", self.member_urls)?;
        st.end()
    }
}

/// The store as apply uses it: the txn size limit (`--max-txn-ops`) is the
/// receiving member's check before proposing, as in etcd; an entry in the
/// log applies whatever that member's flag was.
fn apply_store(mut kv: Store) -> Store {
    kv.set_max_txn_ops(usize::MAX);
    kv
}

/// A snapshot image, measured but not written: a [`Store`] keeps its
/// encoded length as it changes ([`KeySpaceImage`]), so the key space is
/// walked once, by [`SnapshotImage::stream_to`] (or
/// [`SnapshotImage::to_vec`]) writing it, and a snapshot file is written
/// with no buffer of the whole state. The key space is a [`Store`] (see
/// [`StateMachine::image`]) or, for a restore, the checked histories of an
/// import, which encode as the same bytes. [`StateMachine::from_snapshot`]
/// reads it.
pub struct SnapshotImage<'a, KV = Store> {
    applied: u64,
    kv: &'a KV,
    kv_len: usize,
    alarms: &'a [AlarmMember],
    leases: LeaseSnapshot,
    auth: AuthSnapshot,
    member_urls: &'a BTreeMap<u64, Vec<String>>,
    len: usize,
}

impl<'a, KV: KeySpaceImage> SnapshotImage<'a, KV> {
    /// The image of a state machine at `applied` made of these parts.
    pub fn new(
        applied: u64,
        kv: &'a KV,
        alarms: &'a [AlarmMember],
        leases: LeaseSnapshot,
        auth: AuthSnapshot,
        member_urls: &'a BTreeMap<u64, Vec<String>>,
    ) -> Result<Self, MvccError> {
        let corrupt = |e: postcard::Error| MvccError::Corrupt(e.to_string());
        let kv_len = kv.encoded_len().map_err(corrupt)?;
        // Everything but the key space's own bytes, which are `kv_len`.
        let rest = encoded_len(&(applied, kv_len, alarms, &leases, &auth, member_urls))
            .map_err(corrupt)?;
        Ok(SnapshotImage {
            applied,
            kv,
            kv_len,
            alarms,
            leases,
            auth,
            member_urls,
            len: rest + kv_len,
        })
    }

    /// Bytes [`SnapshotImage::stream_to`] writes.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn parts(&self) -> ImageRef<'_, KV> {
        ImageRef {
            applied: self.applied,
            kv: self.kv,
            kv_len: self.kv_len,
            alarms: self.alarms,
            leases: &self.leases,
            auth: &self.auth,
            member_urls: self.member_urls,
        }
    }

    /// Writes the image (exactly `len` bytes) into `out`, through a buffer
    /// (postcard writes a few bytes at a time).
    pub fn stream_to(&self, out: &mut dyn std::io::Write) -> std::io::Result<()> {
        let mut buffered = std::io::BufWriter::with_capacity(64 * 1024, out);
        postcard::to_io(&self.parts(), &mut buffered)
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        std::io::Write::flush(&mut buffered)
    }

    /// The image in one allocation of exactly its size.
    pub fn to_vec(&self) -> Result<Vec<u8>, MvccError> {
        postcard::to_extend(&self.parts(), Vec::with_capacity(self.len))
            .map_err(|e| MvccError::Corrupt(e.to_string()))
    }
}

/// Whether a request changes state (and so must go through the log).
pub fn is_write(req: &Request) -> bool {
    match req {
        Request::Range(_)
        | Request::Hash(_)
        | Request::HashKv(_)
        | Request::Status(_)
        | Request::LeaseTimeToLive(_)
        | Request::LeaseLeases(_)
        | Request::AuthStatus
        | Request::UserGet { .. }
        | Request::UserList
        | Request::RoleGet { .. }
        | Request::RoleList => false,
        Request::Alarm(a) => a.action != AlarmAction::Get,
        Request::Txn(t) => !crate::mvcc::is_read_only_txn(t),
        _ => true,
    }
}

/// The calls that change the auth state (or issue a token) when applied.
fn is_auth_call(req: &Request) -> bool {
    use Request::*;
    matches!(
        req,
        AuthEnable
            | AuthDisable
            | Authenticate(_)
            | UserAdd(_)
            | UserDelete { .. }
            | UserChangePassword(_)
            | UserGrantRole(_)
            | UserRevokeRole(_)
            | RoleAdd { .. }
            | RoleDelete { .. }
            | RoleGrantPermission(_)
            | RoleRevokePermission(_)
    )
}

impl StateMachine {
    pub fn new(limits: Limits, tokens: TokenTable) -> Self {
        let auth = AuthStore::new();
        tokens.mirror(&auth);
        StateMachine {
            kv: apply_store(Store::new()),
            lessor: Lessor::new(limits.lease.clone()),
            auth,
            tokens,
            alarms: Vec::new(),
            member_urls: BTreeMap::new(),
            applied: 0,
            limits,
            loaded_from: Weak::new(),
        }
    }

    /// Rebuilds a state machine from [`StateMachine::to_snapshot`]'s bytes
    /// (or an older image with fewer sections).
    pub fn from_snapshot(
        bytes: &[u8],
        limits: Limits,
        tokens: TokenTable,
    ) -> Result<Self, MvccError> {
        let corrupt = |e: postcard::Error| MvccError::Corrupt(format!("state snapshot: {e}"));
        let (base, rest) = postcard::take_from_bytes::<ImageBase>(bytes).map_err(corrupt)?;
        let (leases, rest) = match rest {
            [] => (LeaseSnapshot::default(), rest),
            _ => postcard::take_from_bytes::<LeaseSnapshot>(rest).map_err(corrupt)?,
        };
        let (auth, rest) = match rest {
            [] => (AuthSnapshot::default(), rest),
            _ => postcard::take_from_bytes::<AuthSnapshot>(rest).map_err(corrupt)?,
        };
        let member_urls = match rest {
            [] => BTreeMap::new(),
            _ => match postcard::take_from_bytes(rest).map_err(corrupt)? {
                (urls, []) => urls,
                (_, extra) => {
                    return Err(MvccError::Corrupt(format!(
                        "state snapshot: {} unexpected bytes at the end",
                        extra.len()
                    )))
                }
            },
        };
        let auth = AuthStore::from_snapshot(auth);
        tokens.mirror(&auth);
        Ok(StateMachine {
            kv: apply_store(Store::from_bytes(&base.kv)?),
            lessor: Lessor::from_snapshot(limits.lease.clone(), leases),
            auth,
            tokens,
            alarms: base.alarms,
            member_urls,
            applied: base.applied,
            limits,
            loaded_from: Weak::new(),
        })
    }

    /// [`StateMachine::from_snapshot`] reading the image as a stream, one
    /// value at a time: a restart never holds the image and the state at
    /// once.
    pub fn from_snapshot_stream(
        image: &mut dyn std::io::Read,
        limits: Limits,
        tokens: TokenTable,
    ) -> Result<Self, MvccError> {
        let mut decoder = crate::storage::snapshot::StreamDecoder::new(image);
        StateMachine::from_snapshot_values(&mut decoder, limits, tokens)
    }

    /// [`StateMachine::from_snapshot`] of the image at `range` in
    /// `backing` (a mapped snapshot file): the key space's values stay in
    /// the file rather than being copied to the heap (see `mvcc::Backing`).
    pub fn from_snapshot_backed(
        backing: Arc<Backing>,
        range: std::ops::Range<usize>,
        limits: Limits,
        tokens: TokenTable,
    ) -> Result<Self, MvccError> {
        let loaded_from = Arc::downgrade(&backing);
        let mut source = BackedSource::new(backing, range);
        let mut state = StateMachine::from_snapshot_values(&mut source, limits, tokens)?;
        state.loaded_from = loaded_from;
        Ok(state)
    }

    /// Releases the pages of the snapshot file this state was loaded from
    /// that this process has read in (`mvcc::Mapped::release_pages`): a
    /// snapshot written from this state reads every value left there, and
    /// those pages would otherwise count as the member's resident memory
    /// until the kernel needed them back.
    pub fn release_loaded_pages(&self) {
        if let Some(backing) = self.loaded_from.upgrade() {
            backing.release_pages();
        }
    }

    fn from_snapshot_values(
        decoder: &mut impl ValueSource,
        limits: Limits,
        tokens: TokenTable,
    ) -> Result<Self, MvccError> {
        let corrupt = |e: String| MvccError::Corrupt(format!("state snapshot: {e}"));
        let applied: u64 = decoder.next_value().map_err(corrupt)?;
        let kv_len: u64 = decoder.next_value().map_err(corrupt)?;
        let kv_start = decoder.consumed();
        let kv = Store::decode_from(decoder)?;
        if decoder.consumed() - kv_start != kv_len {
            return Err(corrupt(format!(
                "the key space is {} bytes, not the {kv_len} announced",
                decoder.consumed() - kv_start
            )));
        }
        let alarms: Vec<AlarmMember> = decoder.next_value().map_err(corrupt)?;
        // An older image ends early: leases, then auth, empty.
        let leases = match decoder.at_end().map_err(corrupt)? {
            true => LeaseSnapshot::default(),
            false => decoder.next_value().map_err(corrupt)?,
        };
        let auth = match decoder.at_end().map_err(corrupt)? {
            true => AuthSnapshot::default(),
            false => decoder.next_value().map_err(corrupt)?,
        };
        let member_urls = match decoder.at_end().map_err(corrupt)? {
            true => BTreeMap::new(),
            false => decoder.next_value().map_err(corrupt)?,
        };
        if !decoder.at_end().map_err(corrupt)? {
            return Err(corrupt("unexpected bytes at the end".into()));
        }
        let auth = AuthStore::from_snapshot(auth);
        tokens.mirror(&auth);
        Ok(StateMachine {
            kv: apply_store(kv),
            lessor: Lessor::from_snapshot(limits.lease.clone(), leases),
            auth,
            tokens,
            alarms,
            member_urls,
            applied,
            limits,
            loaded_from: Weak::new(),
        })
    }

    /// A state machine holding an imported key space, leases and auth
    /// state (an etcd backend, `crate::etcd_db`), at applied index `applied`.
    pub fn from_parts(
        kv: Store,
        leases: LeaseSnapshot,
        auth: AuthSnapshot,
        applied: u64,
        limits: Limits,
        tokens: TokenTable,
    ) -> Self {
        let auth = AuthStore::from_snapshot(auth);
        tokens.mirror(&auth);
        StateMachine {
            kv: apply_store(kv),
            lessor: Lessor::from_snapshot(limits.lease.clone(), leases),
            auth,
            tokens,
            alarms: Vec::new(),
            member_urls: BTreeMap::new(),
            applied,
            limits,
            loaded_from: Weak::new(),
        }
    }

    /// Peer URLs changed by MemberUpdate, by member ID.
    pub fn member_urls(&self) -> &BTreeMap<u64, Vec<String>> {
        &self.member_urls
    }

    /// The replicated lease state (IDs, TTLs, attached keys).
    pub fn lease_snapshot(&self) -> LeaseSnapshot {
        self.lessor.snapshot()
    }

    /// The whole state, for a snapshot file or a lagging follower.
    pub fn to_snapshot(&self) -> Result<Vec<u8>, MvccError> {
        self.image()?.to_vec()
    }

    /// The whole state as a snapshot image, measured but not written (see
    /// [`SnapshotImage`]).
    pub fn image(&self) -> Result<SnapshotImage<'_>, MvccError> {
        SnapshotImage::new(
            self.applied,
            &self.kv,
            &self.alarms,
            self.lessor.snapshot(),
            self.auth.snapshot(),
            &self.member_urls,
        )
    }

    /// What a state machine rebuilt from a snapshot keeps of this one.
    pub fn identity(&self) -> (Limits, TokenTable) {
        (self.limits.clone(), self.tokens.clone())
    }

    /// The auth state, for checks on the member that receives a call.
    pub fn auth(&self) -> &AuthStore {
        &self.auth
    }

    /// etcd's auth check for `req` from `info`, as of now (lease keys from
    /// this state).
    pub fn check_auth(&self, info: &AuthInfo, req: &Request) -> Result<(), AuthError> {
        let lessor = &self.lessor;
        check_request(&self.auth, info, req, &|id| lessor.keys_of(id))
    }

    pub fn applied(&self) -> u64 {
        self.applied
    }

    /// Marks an entry with no command (a leader's no-op) applied.
    pub fn skip(&mut self, index: u64) {
        self.applied = self.applied.max(index);
    }

    /// Applies the command of log entry `index`; `None` if that entry was
    /// applied already (replay after a restart from a snapshot). The events
    /// the write produced (one revision's, in order) are appended to
    /// `events`. `now_ms` (the driver's monotonic clock) only sets the
    /// leader's deadline for a granted lease.
    ///
    /// `auth` is who proposed it (`None` in entries from before auth:
    /// those apply as they did then, so no auth call applies from them).
    pub fn apply_entry(
        &mut self,
        index: u64,
        req: &Request,
        auth: Option<&AuthHeader>,
        now_ms: u64,
        events: &mut Vec<Event>,
    ) -> Option<Reply> {
        if index <= self.applied {
            return None;
        }
        self.applied = index;
        Some(self.apply(index, req, auth, now_ms, events))
    }

    /// The lessor, for the driver's leader-local duties (promote, demote,
    /// expiry, keepalives).
    pub fn lessor_mut(&mut self) -> &mut Lessor {
        &mut self.lessor
    }

    /// etcd's TimeToLive, on the leader: a lease that does not exist (or
    /// expired) answers TTL -1, as etcd's v3rpc does.
    pub fn lease_time_to_live(
        &self,
        id: LeaseId,
        keys: bool,
        now_ms: u64,
    ) -> Result<LeaseTimeToLiveResponse, Error> {
        let mut resp = match self.lessor.time_to_live(id, now_ms, keys) {
            Ok(resp) => resp,
            Err(LeaseError::NotFound | LeaseError::Expired) => LeaseTimeToLiveResponse {
                id,
                ttl: -1,
                ..LeaseTimeToLiveResponse::default()
            },
            Err(e) => return Err(e.into()),
        };
        resp.header.revision = self.kv.revision();
        Ok(resp)
    }

    pub fn revision(&self) -> i64 {
        self.kv.revision()
    }

    /// An O(1) copy of the key space, for watch catch-up off the lock.
    pub fn store_view(&self) -> Store {
        self.kv.clone()
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
            .map(|r| usize::try_from(r.count).unwrap_or(0))
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
    fn apply(
        &mut self,
        index: u64,
        req: &Request,
        auth: Option<&AuthHeader>,
        now_ms: u64,
        events: &mut Vec<Event>,
    ) -> Reply {
        match auth {
            None if is_auth_call(req) => return Err(Error::Unimplemented(req.method().into())),
            None => {}
            Some(h) if h.system => {}
            Some(h) => {
                let info = AuthInfo {
                    user: h.user.clone(),
                    revision: h.revision,
                };
                self.check_auth(&info, req).map_err(Error::from)?;
            }
        }
        if is_auth_call(req) {
            let token_prefix = auth.map(|h| h.token_prefix.as_str()).unwrap_or_default();
            let applied = self.apply_auth(index, req, token_prefix, now_ms);
            self.tokens.mirror(&self.auth);
            let mut resp = applied?;
            resp.header_mut().revision = self.kv.revision();
            return Ok(resp);
        }
        let mut resp = self.apply_unstamped(req, now_ms, events)?;
        resp.header_mut().revision = self.kv.revision();
        Ok(resp)
    }

    fn apply_unstamped(&mut self, req: &Request, now_ms: u64, events: &mut Vec<Event>) -> Reply {
        // etcd's capped applier: only the replicated alarm set decides.
        let no_space = self.alarms.iter().any(|a| a.alarm == AlarmType::Nospace);
        if no_space && super::quota::cost(req) > 0 {
            return Err(Error::NoSpace);
        }
        let lessor = &self.lessor;
        let lease_exists = |id: i64| lessor.contains(id);
        let (resp, written) = match req {
            Request::Put(p) => {
                let (resp, evs) = self.kv.put(p, &lease_exists).map_err(Error::from)?;
                (Response::Put(resp), evs)
            }
            Request::DeleteRange(d) => {
                let (resp, evs) = self.kv.delete_range(d).map_err(Error::from)?;
                (Response::DeleteRange(resp), evs)
            }
            Request::Txn(t) => {
                let (resp, evs) = self.kv.txn(t, &lease_exists).map_err(Error::from)?;
                (Response::Txn(resp), evs)
            }
            Request::LeaseGrant(g) => {
                let ttl = self.lessor.grant(g.id, g.ttl, now_ms)?;
                let resp = LeaseGrantResponse {
                    id: g.id,
                    ttl,
                    ..LeaseGrantResponse::default()
                };
                (Response::LeaseGrant(resp), Vec::new())
            }
            Request::LeaseRevoke(r) => {
                // The lease's keys go in one revision, however many there
                // are; watchers see them as ordinary deletes.
                let keys = self.lessor.revoke(r.id)?;
                let evs = self.kv.delete_keys(&keys);
                (Response::LeaseRevoke(LeaseRevokeResponse::default()), evs)
            }
            other => (self.apply_other(other)?, Vec::new()),
        };
        self.lessor.apply_events(&written);
        events.extend(written);
        Ok(resp)
    }

    fn apply_other(&mut self, req: &Request) -> Reply {
        Ok(match req {
            Request::Compact(c) => {
                self.kv.compact(c.revision).map_err(Error::from)?;
                Response::Compact(Default::default())
            }
            // The proposer checked the member exists and the URLs; the
            // member table follows this map (see `raft_loop`).
            Request::MemberUpdate(u) => {
                self.member_urls.insert(u.id, u.peer_urls.clone());
                Response::Members(Default::default())
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

    /// An auth change (or an `Authenticate` issuing a simple token). The
    /// auth revision moves; the key-value revision does not.
    fn apply_auth(&mut self, index: u64, req: &Request, token_prefix: &str, now_ms: u64) -> Reply {
        let auth = &mut self.auth;
        let tokens = || self.tokens.tokens();
        match req {
            Request::AuthEnable => auth.enable()?,
            Request::AuthDisable => {
                if auth.disable() {
                    tokens().clear();
                }
            }
            Request::Authenticate(r) => {
                if !auth.is_enabled() {
                    return Err(Error::AuthNotEnabled);
                }
                // Checked by the proposing member; the user may be gone or
                // password-less by now.
                match auth.user(&r.name) {
                    Some(u) if u.password_hash.is_some() => {}
                    _ => return Err(Error::AuthFailed),
                }
                let token = format!("{token_prefix}.{index}");
                tokens().assign(token.clone(), r.name.clone(), now_ms);
                return Ok(Response::Authenticate(AuthenticateResponse {
                    header: Default::default(),
                    token,
                }));
            }
            Request::UserAdd(r) => {
                let hash = (!r.no_password).then(|| r.password.clone());
                auth.user_add(&r.name, hash)?
            }
            Request::UserDelete { name } => {
                auth.user_delete(name)?;
                tokens().invalidate_user(name);
            }
            Request::UserChangePassword(r) => {
                auth.user_change_password(&r.name, r.password.clone())?;
                tokens().invalidate_user(&r.name);
            }
            Request::UserGrantRole(r) => auth.user_grant_role(&r.user, &r.role)?,
            Request::UserRevokeRole(r) => auth.user_revoke_role(&r.user, &r.role)?,
            Request::RoleAdd { name } => auth.role_add(name)?,
            Request::RoleDelete { role } => auth.role_delete(role)?,
            Request::RoleGrantPermission(r) => auth.role_grant_permission(&r.role, &r.perm)?,
            Request::RoleRevokePermission(r) => {
                auth.role_revoke_permission(&r.role, &r.key, &r.range_end)?
            }
            other => return Err(Error::Unimplemented(other.method().to_string())),
        }
        Ok(Response::Auth(AuthResponse::default()))
    }

    /// Serves a read from the current state, stamping the header's revision.
    pub fn read(&self, req: &Request) -> Reply {
        if let Some(reply) = Self::read_kv(&self.kv, req) {
            return reply;
        }
        let mut resp = self.read_unstamped(req)?;
        resp.header_mut().revision = self.kv.revision();
        Ok(resp)
    }

    /// The reads that need only the key space (ranges, read-only txns,
    /// hashes), served from `kv` and stamped with its revision; `None` for
    /// any other request. Callers pass a [`StateMachine::store_view`] so
    /// that building a large response holds no lock the apply path waits
    /// for.
    pub fn read_kv(kv: &Store, req: &Request) -> Option<Reply> {
        let resp = match req {
            Request::Range(r) => kv.range(r).map(Response::Range),
            Request::Txn(t) => kv.txn_read_only(t).map(Response::Txn),
            Request::HashKv(h) => kv.hash_kv(h.revision).map(|hash| {
                Response::HashKv(HashKvResponse {
                    header: Default::default(),
                    hash: hash.hash,
                    compact_revision: hash.compact_revision,
                })
            }),
            Request::Hash(_) => kv.hash_kv(0).map(|hash| {
                Response::Hash(HashResponse {
                    header: Default::default(),
                    hash: hash.hash,
                })
            }),
            _ => return None,
        };
        Some(resp.map_err(Error::from).map(|mut resp| {
            resp.header_mut().revision = kv.revision();
            resp
        }))
    }

    fn read_unstamped(&self, req: &Request) -> Reply {
        Ok(match req {
            Request::Alarm(_) => Response::Alarm(AlarmResponse {
                header: Default::default(),
                alarms: self.alarms.clone(),
            }),
            Request::LeaseLeases(_) => Response::LeaseLeases(LeaseLeasesResponse {
                header: Default::default(),
                leases: self.lessor.leases(),
            }),
            Request::AuthStatus => Response::AuthStatus {
                header: Default::default(),
                enabled: self.auth.is_enabled(),
                auth_revision: self.auth.revision(),
            },
            Request::UserGet { name } => Response::UserGet(UserGetResponse {
                header: Default::default(),
                roles: self.auth.user_get(name).map_err(Error::from)?.roles.clone(),
            }),
            Request::UserList => Response::Names(NamesResponse {
                header: Default::default(),
                names: self.auth.user_list(),
            }),
            Request::RoleGet { role } => Response::RoleGet(RoleGetResponse {
                header: Default::default(),
                perms: self.auth.role_get(role).map_err(Error::from)?.perms.clone(),
            }),
            Request::RoleList => Response::Names(NamesResponse {
                header: Default::default(),
                names: self.auth.role_list(),
            }),
            other => return Err(Error::Unimplemented(other.method().to_string())),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use qed_wire::kv::{EventType, PutRequest};
    use qed_wire::lease::{LeaseGrantRequest, LeaseRevokeRequest};

    fn machine() -> StateMachine {
        StateMachine::new(
            Limits {
                lease: LeaseConfig::default(),
            },
            TokenTable::default(),
        )
    }

    fn apply(sm: &mut StateMachine, index: u64, req: Request) -> (Reply, Vec<Event>) {
        let mut events = Vec::new();
        let reply = sm
            .apply_entry(index, &req, Some(&AuthHeader::system()), 0, &mut events)
            .expect("a new index applies");
        (reply, events)
    }

    fn put(key: &str, lease: i64) -> Request {
        Request::Put(PutRequest {
            key: key.as_bytes().to_vec(),
            value: b"v".to_vec(),
            lease,
            ..Default::default()
        })
    }

    #[test]
    fn revoke_deletes_attached_keys_in_one_revision_and_leases_survive_snapshots() {
        let mut sm = machine();
        let grant = Request::LeaseGrant(LeaseGrantRequest { ttl: 30, id: 7 });
        assert!(apply(&mut sm, 1, grant).0.is_ok());
        let (reply, _) = apply(&mut sm, 2, put("a", 99));
        assert_eq!(reply, Err(Error::LeaseNotFound));
        for (i, k) in ["a", "b", "c"].iter().enumerate() {
            let (reply, events) = apply(&mut sm, 3 + i as u64, put(k, 7));
            assert!(reply.is_ok());
            assert_eq!(events.len(), 1);
        }
        // Moving "c" to no lease detaches it.
        assert!(apply(&mut sm, 6, put("c", 0)).0.is_ok());

        // Leases and attachments come back from a snapshot.
        let bytes = sm.to_snapshot().unwrap();
        let (limits, tokens) = sm.identity();
        let mut sm = StateMachine::from_snapshot(&bytes, limits, tokens).unwrap();
        assert_eq!(
            sm.read(&Request::LeaseLeases(Default::default())),
            Ok(Response::LeaseLeases(LeaseLeasesResponse {
                header: qed_wire::ResponseHeader {
                    revision: 5,
                    ..Default::default()
                },
                leases: vec![7],
            }))
        );

        let before = sm.revision();
        let (reply, events) = apply(
            &mut sm,
            7,
            Request::LeaseRevoke(LeaseRevokeRequest { id: 7 }),
        );
        assert_eq!(reply.unwrap().header().revision, before + 1);
        let deleted: Vec<(&[u8], EventType, i64)> = events
            .iter()
            .map(|e| (e.kv.key.as_slice(), e.kind, e.kv.mod_revision))
            .collect();
        assert_eq!(
            deleted,
            vec![
                (&b"a"[..], EventType::Delete, before + 1),
                (&b"b"[..], EventType::Delete, before + 1)
            ]
        );
        let revoke_again = Request::LeaseRevoke(LeaseRevokeRequest { id: 7 });
        assert_eq!(apply(&mut sm, 8, revoke_again).0, Err(Error::LeaseNotFound));
    }

    /// Only applied Alarm entries gate writes: NOSPACE refuses what takes
    /// space (puts, txns that put, lease grants) on every member alike and
    /// lets deletes through; disarming it (another entry) lets writes in.
    #[test]
    fn replicated_nospace_alarm_gates_writes() {
        use qed_wire::maintenance::AlarmRequest;
        let alarm = |action, member_id| {
            Request::Alarm(AlarmRequest {
                action,
                member_id,
                alarm: AlarmType::Nospace,
            })
        };
        let mut sm = machine();
        assert!(apply(&mut sm, 1, put("a", 0)).0.is_ok());
        assert!(apply(&mut sm, 2, alarm(AlarmAction::Activate, 9)).0.is_ok());
        assert_eq!(apply(&mut sm, 3, put("b", 0)).0, Err(Error::NoSpace));
        let grant = Request::LeaseGrant(LeaseGrantRequest { ttl: 30, id: 7 });
        assert_eq!(apply(&mut sm, 4, grant).0, Err(Error::NoSpace));
        let delete = Request::DeleteRange(qed_wire::kv::DeleteRangeRequest {
            key: b"a".to_vec(),
            ..Default::default()
        });
        assert!(apply(&mut sm, 5, delete).0.is_ok());
        // Another member's disarm clears only its own alarm.
        assert!(apply(&mut sm, 6, alarm(AlarmAction::Deactivate, 8))
            .0
            .is_ok());
        assert_eq!(apply(&mut sm, 7, put("b", 0)).0, Err(Error::NoSpace));
        assert!(apply(&mut sm, 8, alarm(AlarmAction::Deactivate, 9))
            .0
            .is_ok());
        assert!(apply(&mut sm, 9, put("b", 0)).0.is_ok());
        assert!(sm.alarms().is_empty());
    }

    /// Members with other election timeouts (so other minimum lease TTLs)
    /// apply the same grant to the same state: the minimum is the
    /// proposer's business, not apply's.
    #[test]
    fn lease_grants_apply_alike_whatever_the_members_minimum_ttl() {
        let member = |min_ttl| {
            StateMachine::new(
                Limits {
                    lease: LeaseConfig {
                        min_ttl,
                        ..LeaseConfig::default()
                    },
                },
                TokenTable::default(),
            )
        };
        let (mut short, mut long) = (member(1), member(15));
        let grant = Request::LeaseGrant(LeaseGrantRequest { ttl: 1, id: 7 });
        let a = apply(&mut short, 1, grant.clone()).0;
        let b = apply(&mut long, 1, grant).0;
        assert_eq!(a, b);
        assert_eq!(short.to_snapshot().unwrap(), long.to_snapshot().unwrap());
        let (limits, tokens) = long.identity();
        let restored = StateMachine::from_snapshot(&short.to_snapshot().unwrap(), limits, tokens);
        assert_eq!(
            restored.unwrap().to_snapshot().unwrap(),
            short.to_snapshot().unwrap()
        );
    }

    #[test]
    fn snapshots_from_before_leases_still_load() {
        #[derive(Serialize)]
        struct Old {
            applied: u64,
            kv: Vec<u8>,
            alarms: Vec<AlarmMember>,
        }
        let old = Old {
            applied: 3,
            kv: Store::new().to_bytes().unwrap(),
            alarms: Vec::new(),
        };
        let bytes = postcard::to_allocvec(&old).unwrap();
        let (limits, tokens) = machine().identity();
        let sm = StateMachine::from_snapshot(&bytes, limits.clone(), tokens.clone()).unwrap();
        assert_eq!(sm.applied(), 3);
        let sm = StateMachine::from_snapshot_stream(&mut &bytes[..], limits, tokens).unwrap();
        assert_eq!(sm.applied(), 3);
    }

    /// The image is written without copying the store first; it must be
    /// the very bytes the plain struct with `kv` as a byte string gives.
    #[test]
    fn snapshot_image_is_the_plain_encoding() {
        #[derive(Serialize)]
        struct Plain {
            applied: u64,
            kv: Vec<u8>,
            alarms: Vec<AlarmMember>,
            leases: LeaseSnapshot,
            auth: AuthSnapshot,
            member_urls: BTreeMap<u64, Vec<String>>,
        }
        let mut sm = machine();
        let update = Request::MemberUpdate(qed_wire::cluster::MemberUpdateRequest {
            id: 0xabc,
            peer_urls: vec!["http://10.0.0.9:2380".into()],
        });
        apply(&mut sm, 100, update).0.expect("member update");
        for i in 0..50u64 {
            let put = Request::Put(qed_wire::kv::PutRequest {
                key: format!("k{i}").into_bytes(),
                value: vec![b'v'; i as usize * 7],
                ..Default::default()
            });
            apply(&mut sm, 100 + i + 1, put).0.expect("put");
        }
        let plain = Plain {
            applied: sm.applied(),
            kv: sm.kv.to_bytes().unwrap(),
            alarms: sm.alarms.clone(),
            leases: sm.lessor.snapshot(),
            auth: sm.auth.snapshot(),
            member_urls: sm.member_urls.clone(),
        };
        let bytes = sm.to_snapshot().unwrap();
        assert_eq!(bytes, postcard::to_allocvec(&plain).unwrap());
        assert_eq!(bytes.capacity(), bytes.len());
        // Streamed to a file, the same bytes, as many as announced.
        let image = sm.image().unwrap();
        let mut streamed = Vec::new();
        image.stream_to(&mut streamed).unwrap();
        assert_eq!((image.len(), &streamed), (bytes.len(), &bytes));
        let (limits, tokens) = machine().identity();
        let back = StateMachine::from_snapshot(&bytes, limits, tokens).unwrap();
        assert_eq!(back.to_snapshot().unwrap(), bytes);
        assert_eq!(back.member_urls().len(), 1);
        // Read as a stream, the same state; a cut or padded image is refused.
        let (limits, tokens) = machine().identity();
        let streamed =
            StateMachine::from_snapshot_stream(&mut &bytes[..], limits.clone(), tokens.clone())
                .unwrap();
        assert_eq!(streamed.to_snapshot().unwrap(), bytes);
        let cut = &bytes[..bytes.len() - 1];
        assert!(
            StateMachine::from_snapshot_stream(&mut &cut[..], limits.clone(), tokens.clone())
                .is_err()
        );
        let mut padded = bytes.clone();
        padded.push(0);
        assert!(StateMachine::from_snapshot_stream(
            &mut &padded[..],
            limits.clone(),
            tokens.clone()
        )
        .is_err());
        // Read from a backing (a mapped file, here bytes with a header
        // before the image), the same state; a cut or padded range is
        // refused the same way.
        let mut file = b"header".to_vec();
        file.extend_from_slice(&bytes);
        let backing = Backing::new(file);
        let end = 6 + bytes.len();
        let backed = |range: std::ops::Range<usize>| {
            StateMachine::from_snapshot_backed(
                backing.clone(),
                range,
                limits.clone(),
                tokens.clone(),
            )
        };
        assert_eq!(backed(6..end).unwrap().to_snapshot().unwrap(), bytes);
        assert!(backed(6..end - 1).is_err());
        let mut padded = backing.bytes().to_vec();
        padded.push(0);
        let padded = Backing::new(padded);
        assert!(StateMachine::from_snapshot_backed(padded, 6..end + 1, limits, tokens).is_err());
    }
}
