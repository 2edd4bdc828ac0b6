//! The envelope: how calls are laid out on client streams.
//!
//! Every call opens its own bidirectional QUIC stream and sends one
//! [`ClientRequest`] frame first. For a unary call ([`Call::Unary`]) the node
//! answers with exactly one [`Reply`] frame and finishes the stream. For a
//! streaming call the first frame only names the call, and the node answers
//! it with one [`StreamAccept`] frame (refusing, for instance, a bad token or
//! an unimplemented call); after it the client sends that call's request
//! messages (`WatchRequest`, `LeaseKeepAliveRequest`) and the node sends its
//! responses (`WatchResponse`, `WatchBatch` on a `WatchBatched` stream,
//! `LeaseKeepAliveResponse`, or
//! `Result<SnapshotResponse, Error>` chunks) until either side finishes.
//!
//! A stream opened with [`Call::Mux`] carries many unary calls, numbered
//! as on a multiplexed Unix connection (below).
//!
//! A Unix-socket connection carries the same frames, with a call number in
//! front of the envelope ([`UnixRequest`]). A connection whose first frame
//! is a streaming call is that call's alone, as a QUIC stream is (the
//! number is unused). Otherwise it is *multiplexed*: unary calls follow
//! one another without waiting for replies, and the node answers each with
//! a [`UnixReply`] carrying its number, in whatever order the calls finish
//! (a streaming call there is refused). Write shutdown stands for FIN.

use crate::auth::*;
use crate::cluster::*;
use crate::error::Error;
use crate::kv::*;
use crate::lease::*;
use crate::maintenance::*;
use serde::{Deserialize, Serialize};

/// The first frame on every client stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientRequest {
    /// Auth token from `Authenticate`, when auth is enabled.
    pub token: Option<String>,
    pub call: Call,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Call {
    Unary(Request),
    /// Opens a watch stream.
    Watch,
    /// Opens a lease keep-alive stream.
    LeaseKeepAlive,
    /// Streams a snapshot of the node's state back.
    Snapshot,
    /// Opens a watch stream whose node-to-client messages are
    /// [`WatchBatch`](crate::watch::WatchBatch)es: one response stands for
    /// every watch of the stream it is identical for, so an event a
    /// thousand watches share crosses the wire once. (Last, so older
    /// nodes refuse it as malformed and a client can fall back to `Watch`.)
    WatchBatched,
    /// Opens a stream that carries unary calls multiplexed, as a Unix
    /// connection does: after the node's [`StreamAccept`], the client sends
    /// [`UnixRequest`]s and the node answers each with a [`UnixReply`] of
    /// the same number, in whatever order the calls finish (a streaming
    /// call there is refused). The stream's calls share one flow of bytes,
    /// so a lost packet delays all of them (head-of-line blocking). (Last,
    /// so older nodes refuse it as malformed and a client can fall back to
    /// a stream per call.)
    Mux,
}

/// The answer to a unary call.
pub type Reply = Result<Response, Error>;

/// A call on a Unix-socket connection: the client's number for it, then
/// the envelope.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnixRequest {
    pub id: u64,
    pub request: ClientRequest,
}

impl UnixRequest {
    /// The frame of `UnixRequest { id, request }` made from `envelope`, an
    /// encoded [`ClientRequest`] frame (prefix and body), without encoding
    /// the request again: postcard writes a struct as its fields one after
    /// another, so the body is `id`'s varint followed by the envelope's.
    pub fn frame_from(
        id: u64,
        envelope: &[u8],
        max: usize,
    ) -> Result<Vec<u8>, crate::frame::FrameError> {
        use crate::frame::{FrameError, PREFIX_LEN};
        let body = envelope.get(PREFIX_LEN..).unwrap_or_default();
        let mut varint = [0u8; 10];
        let id = postcard::to_slice(&id, &mut varint)
            .map_err(|e| FrameError::Malformed(e.to_string()))?;
        let len = id.len() + body.len();
        let too_large = FrameError::TooLarge { len, max };
        if len > max {
            return Err(too_large);
        }
        let len32 = u32::try_from(len).map_err(|_| too_large)?;
        let mut frame = Vec::with_capacity(PREFIX_LEN + len);
        frame.extend_from_slice(&len32.to_be_bytes());
        frame.extend_from_slice(id);
        frame.extend_from_slice(body);
        Ok(frame)
    }
}

/// The node's answer to the unary call numbered `id` on a multiplexed Unix
/// connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnixReply {
    pub id: u64,
    pub reply: Reply,
}

/// The node's first answer on a streaming call: accepted, or why not.
pub type StreamAccept = Result<(), Error>;

/// Every unary call, one variant each, in etcd's service order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    // KV
    Range(RangeRequest),
    Put(PutRequest),
    DeleteRange(DeleteRangeRequest),
    Txn(TxnRequest),
    Compact(CompactionRequest),
    // Lease
    LeaseGrant(LeaseGrantRequest),
    LeaseRevoke(LeaseRevokeRequest),
    LeaseTimeToLive(LeaseTimeToLiveRequest),
    LeaseLeases(LeaseLeasesRequest),
    // Cluster
    MemberAdd(MemberAddRequest),
    MemberRemove(MemberRemoveRequest),
    MemberUpdate(MemberUpdateRequest),
    MemberList(MemberListRequest),
    MemberPromote(MemberPromoteRequest),
    // Maintenance
    Alarm(AlarmRequest),
    Status(StatusRequest),
    Defragment(DefragmentRequest),
    Hash(HashRequest),
    HashKv(HashKvRequest),
    MoveLeader(MoveLeaderRequest),
    // Auth
    AuthEnable,
    AuthDisable,
    AuthStatus,
    Authenticate(AuthenticateRequest),
    UserAdd(UserAddRequest),
    UserGet { name: String },
    UserList,
    UserDelete { name: String },
    UserChangePassword(UserChangePasswordRequest),
    UserGrantRole(UserRoleRequest),
    UserRevokeRole(UserRoleRequest),
    RoleAdd { name: String },
    RoleGet { role: String },
    RoleList,
    RoleDelete { role: String },
    RoleGrantPermission(RoleGrantPermissionRequest),
    RoleRevokePermission(RoleRevokePermissionRequest),
}

impl Request {
    /// etcd's method name, for logs and `Unimplemented` errors.
    pub fn method(&self) -> &'static str {
        use Request::*;
        match self {
            Range(_) => "KV/Range",
            Put(_) => "KV/Put",
            DeleteRange(_) => "KV/DeleteRange",
            Txn(_) => "KV/Txn",
            Compact(_) => "KV/Compact",
            LeaseGrant(_) => "Lease/LeaseGrant",
            LeaseRevoke(_) => "Lease/LeaseRevoke",
            LeaseTimeToLive(_) => "Lease/LeaseTimeToLive",
            LeaseLeases(_) => "Lease/LeaseLeases",
            MemberAdd(_) => "Cluster/MemberAdd",
            MemberRemove(_) => "Cluster/MemberRemove",
            MemberUpdate(_) => "Cluster/MemberUpdate",
            MemberList(_) => "Cluster/MemberList",
            MemberPromote(_) => "Cluster/MemberPromote",
            Alarm(_) => "Maintenance/Alarm",
            Status(_) => "Maintenance/Status",
            Defragment(_) => "Maintenance/Defragment",
            Hash(_) => "Maintenance/Hash",
            HashKv(_) => "Maintenance/HashKV",
            MoveLeader(_) => "Maintenance/MoveLeader",
            AuthEnable => "Auth/AuthEnable",
            AuthDisable => "Auth/AuthDisable",
            AuthStatus => "Auth/AuthStatus",
            Authenticate(_) => "Auth/Authenticate",
            UserAdd(_) => "Auth/UserAdd",
            UserGet { .. } => "Auth/UserGet",
            UserList => "Auth/UserList",
            UserDelete { .. } => "Auth/UserDelete",
            UserChangePassword(_) => "Auth/UserChangePassword",
            UserGrantRole(_) => "Auth/UserGrantRole",
            UserRevokeRole(_) => "Auth/UserRevokeRole",
            RoleAdd { .. } => "Auth/RoleAdd",
            RoleGet { .. } => "Auth/RoleGet",
            RoleList => "Auth/RoleList",
            RoleDelete { .. } => "Auth/RoleDelete",
            RoleGrantPermission(_) => "Auth/RoleGrantPermission",
            RoleRevokePermission(_) => "Auth/RoleRevokePermission",
        }
    }
}

/// The successful answer to each [`Request`] variant, in the same order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    Range(RangeResponse),
    Put(PutResponse),
    DeleteRange(DeleteRangeResponse),
    Txn(TxnResponse),
    Compact(CompactionResponse),
    LeaseGrant(LeaseGrantResponse),
    LeaseRevoke(LeaseRevokeResponse),
    LeaseTimeToLive(LeaseTimeToLiveResponse),
    LeaseLeases(LeaseLeasesResponse),
    MemberAdd(MemberAddResponse),
    /// Remove, update, list and promote.
    Members(MembersResponse),
    Alarm(AlarmResponse),
    Status(StatusResponse),
    Defragment(DefragmentResponse),
    Hash(HashResponse),
    HashKv(HashKvResponse),
    MoveLeader(MoveLeaderResponse),
    /// Auth calls that return only a header.
    Auth(AuthResponse),
    AuthStatus {
        header: ResponseHeader,
        enabled: bool,
        auth_revision: u64,
    },
    Authenticate(AuthenticateResponse),
    UserGet(UserGetResponse),
    /// User list and role list.
    Names(NamesResponse),
    RoleGet(RoleGetResponse),
}

/// Picks the header out of every [`Response`] variant, `&` or `&mut`.
macro_rules! header_of {
    ($resp:expr, $($ref:tt)+) => {{
        use Response::*;
        match $resp {
            Range(r) => $($ref)+ r.header,
            Put(r) => $($ref)+ r.header,
            DeleteRange(r) => $($ref)+ r.header,
            Txn(r) => $($ref)+ r.header,
            Compact(r) => $($ref)+ r.header,
            LeaseGrant(r) => $($ref)+ r.header,
            LeaseRevoke(r) => $($ref)+ r.header,
            LeaseTimeToLive(r) => $($ref)+ r.header,
            LeaseLeases(r) => $($ref)+ r.header,
            MemberAdd(r) => $($ref)+ r.header,
            Members(r) => $($ref)+ r.header,
            Alarm(r) => $($ref)+ r.header,
            Status(r) => $($ref)+ r.header,
            Defragment(r) => $($ref)+ r.header,
            Hash(r) => $($ref)+ r.header,
            HashKv(r) => $($ref)+ r.header,
            MoveLeader(r) => $($ref)+ r.header,
            Auth(r) => $($ref)+ r.header,
            AuthStatus { header, .. } => header,
            Authenticate(r) => $($ref)+ r.header,
            UserGet(r) => $($ref)+ r.header,
            Names(r) => $($ref)+ r.header,
            RoleGet(r) => $($ref)+ r.header,
        }
    }};
}

impl Response {
    /// The header, whatever the call.
    pub fn header(&self) -> &ResponseHeader {
        header_of!(self, &)
    }

    /// The header, for the node to stamp before replying.
    pub fn header_mut(&mut self) -> &mut ResponseHeader {
        header_of!(self, &mut)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame;

    #[test]
    fn a_unix_frame_from_an_envelope_is_the_encoded_unix_request() {
        let request = ClientRequest {
            token: Some("t".into()),
            call: Call::Unary(Request::Range(RangeRequest {
                key: b"k".to_vec(),
                ..Default::default()
            })),
        };
        let envelope = frame::encode(&request, usize::MAX).expect("encode");
        for id in [0, 1, 127, 128, 300, u64::MAX] {
            let got = UnixRequest::frame_from(id, &envelope, usize::MAX).expect("frame");
            let want = frame::encode(
                &UnixRequest {
                    id,
                    request: request.clone(),
                },
                usize::MAX,
            )
            .expect("encode");
            assert_eq!(got, want, "id {id}");
        }
        let limit = envelope.len() - frame::PREFIX_LEN;
        assert!(matches!(
            UnixRequest::frame_from(300, &envelope, limit),
            Err(frame::FrameError::TooLarge { .. })
        ));
    }
}
