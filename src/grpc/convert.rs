//! Field-by-field translation between etcd's protobuf messages ([`pb`]) and
//! qed's wire types ([`wire`]).
//!
//! Role: requests go pb -> wire, responses wire -> pb. The two protocols
//! mirror each other, so every function here is a plain copy; the only
//! decisions are the ones protobuf forces: enum fields arrive as `i32`, and an
//! unknown value is treated as etcd 3.4 treats it where that is harmless (an
//! unknown sort order does not sort) and refused with `InvalidArgument`
//! where etcd would misbehave; a missing optional message is its default;
//! a header is always sent (etcd always sets it). Routing by method path
//! lives here too, next to the per-method decoders.
//!
//! Invariant: no function here fails on a well-formed wire value, and none
//! panics on any protobuf value.

use super::pb;
use super::status::Status;
use crate::wire;
use crate::wire::auth as wa;
use crate::wire::cluster as wc;
use crate::wire::kv as wk;
use crate::wire::lease as wl;
use crate::wire::maintenance as wm;
use crate::wire::watch as ww;

// ------------------------------------------------------------ wire -> pb

pub fn header(h: &wire::ResponseHeader) -> Option<pb::ResponseHeader> {
    Some(pb::ResponseHeader {
        cluster_id: h.cluster_id,
        member_id: h.member_id,
        revision: h.revision,
        raft_term: h.raft_term,
    })
}

pub fn key_value(kv: wk::KeyValue) -> pb::mvccpb::KeyValue {
    pb::mvccpb::KeyValue {
        key: kv.key,
        create_revision: kv.create_revision,
        mod_revision: kv.mod_revision,
        version: kv.version,
        value: kv.value,
        lease: kv.lease,
    }
}

pub fn range_response(r: wk::RangeResponse) -> pb::RangeResponse {
    pb::RangeResponse {
        header: header(&r.header),
        kvs: r.kvs.into_iter().map(key_value).collect(),
        more: r.more,
        count: r.count,
    }
}

pub fn put_response(r: wk::PutResponse) -> pb::PutResponse {
    pb::PutResponse {
        header: header(&r.header),
        prev_kv: r.prev_kv.map(key_value),
    }
}

pub fn delete_range_response(r: wk::DeleteRangeResponse) -> pb::DeleteRangeResponse {
    pb::DeleteRangeResponse {
        header: header(&r.header),
        deleted: r.deleted,
        prev_kvs: r.prev_kvs.into_iter().map(key_value).collect(),
    }
}

pub fn txn_response(r: wk::TxnResponse) -> pb::TxnResponse {
    use pb::response_op::Response as P;
    pb::TxnResponse {
        header: header(&r.header),
        succeeded: r.succeeded,
        responses: r
            .responses
            .into_iter()
            .map(|op| pb::ResponseOp {
                response: Some(match op {
                    wk::ResponseOp::Range(r) => P::ResponseRange(range_response(r)),
                    wk::ResponseOp::Put(r) => P::ResponsePut(put_response(r)),
                    wk::ResponseOp::DeleteRange(r) => {
                        P::ResponseDeleteRange(delete_range_response(r))
                    }
                    wk::ResponseOp::Txn(r) => P::ResponseTxn(txn_response(r)),
                }),
            })
            .collect(),
    }
}

pub fn event(e: wk::Event) -> pb::mvccpb::Event {
    pb::mvccpb::Event {
        r#type: match e.kind {
            wk::EventType::Put => pb::mvccpb::EventType::Put as i32,
            wk::EventType::Delete => pb::mvccpb::EventType::Delete as i32,
        },
        kv: Some(key_value(e.kv)),
        prev_kv: e.prev_kv.map(key_value),
    }
}

pub fn watch_response(r: ww::WatchResponse) -> pb::WatchResponse {
    pb::WatchResponse {
        header: header(&r.header),
        watch_id: r.watch_id,
        created: r.created,
        canceled: r.canceled,
        compact_revision: r.compact_revision,
        cancel_reason: r.cancel_reason,
        fragment: r.fragment,
        events: r.events.into_iter().map(event).collect(),
    }
}

/// Appends to `out` the gRPC messages (length-prefixed, back to back) a
/// node's batch stands for, one per watch in its order: each exactly the
/// bytes `codec::encode(&watch_response(..))` gives that watch's response.
/// The parts but the watch ID (field 2) are encoded once: prost writes
/// fields in tag order, so a message is its header (1), its watch ID, then
/// the rest (3 to 11), and only the ID differs.
pub fn watch_batch_into(b: ww::WatchBatch, out: &mut bytes::BytesMut) {
    use bytes::BufMut;
    use prost::Message;
    let ww::WatchBatch { response, more_ids } = b;
    let mut whole = watch_response(response);
    if more_ids.is_empty() {
        super::codec::encode_into(&whole, out);
        return;
    }
    let first_id = whole.watch_id;
    let head = pb::WatchResponse {
        header: whole.header.take(),
        ..pb::WatchResponse::default()
    }
    .encode_to_vec();
    whole.watch_id = 0;
    let rest = whole.encode_to_vec();
    let each = super::codec::PREFIX_LEN + head.len() + rest.len() + 11;
    out.reserve(each * (1 + more_ids.len()));
    for id in std::iter::once(first_id).chain(more_ids) {
        // proto3 leaves a zero ID out, as prost's own encoding does.
        let id_len = if id == 0 {
            0
        } else {
            prost::encoding::int64::encoded_len(2, &id)
        };
        let len = head.len() + id_len + rest.len();
        out.put_u8(0);
        out.put_u32(len as u32);
        out.put_slice(&head);
        if id != 0 {
            prost::encoding::int64::encode(2, &id, out);
        }
        out.put_slice(&rest);
    }
}

pub fn lease_keep_alive_response(r: wl::LeaseKeepAliveResponse) -> pb::LeaseKeepAliveResponse {
    pb::LeaseKeepAliveResponse {
        header: header(&r.header),
        id: r.id,
        ttl: r.ttl,
    }
}

pub fn snapshot_response(r: wm::SnapshotResponse) -> pb::SnapshotResponse {
    pb::SnapshotResponse {
        header: header(&r.header),
        remaining_bytes: r.remaining_bytes,
        blob: r.blob,
    }
}

fn member(m: wc::Member) -> pb::Member {
    pb::Member {
        id: m.id,
        name: m.name,
        peer_urls: m.peer_urls,
        client_urls: m.client_urls,
        is_learner: m.is_learner,
    }
}

fn alarm_type(a: wm::AlarmType) -> i32 {
    match a {
        wm::AlarmType::None => pb::AlarmType::None as i32,
        wm::AlarmType::Nospace => pb::AlarmType::Nospace as i32,
        wm::AlarmType::Corrupt => pb::AlarmType::Corrupt as i32,
    }
}

fn permission(p: wa::Permission) -> pb::authpb::Permission {
    pb::authpb::Permission {
        perm_type: match p.perm_type {
            wa::PermissionType::Read => pb::authpb::PermissionType::Read as i32,
            wa::PermissionType::Write => pb::authpb::PermissionType::Write as i32,
            wa::PermissionType::ReadWrite => pb::authpb::PermissionType::Readwrite as i32,
        },
        key: p.key,
        range_end: p.range_end,
    }
}

fn header_only(h: &wire::ResponseHeader) -> pb::HeaderResponse {
    pb::HeaderResponse { header: header(h) }
}

/// `m` as a gRPC message: the 5-byte prefix and the protobuf body, in one
/// allocation of the exact size.
fn encode<M: prost::Message>(m: M) -> Vec<u8> {
    let len = m.encoded_len();
    let mut out = Vec::with_capacity(super::codec::PREFIX_LEN + len);
    out.push(0);
    out.extend_from_slice(&(len as u32).to_be_bytes());
    // Encoding into a Vec cannot run out of space.
    let _ = m.encode(&mut out);
    out
}

/// Encodes a unary response as the gRPC message (prefix and protobuf body)
/// of `method`. A response of the wrong kind for the method is a node bug,
/// reported as `Internal`.
pub fn encode_response(method: Unary, response: wire::Response) -> Result<Vec<u8>, Status> {
    use wire::Response as R;
    use Unary as U;
    let bytes = match (method, response) {
        (U::Range, R::Range(r)) => encode(range_response(r)),
        (U::Put, R::Put(r)) => encode(put_response(r)),
        (U::DeleteRange, R::DeleteRange(r)) => encode(delete_range_response(r)),
        (U::Txn, R::Txn(r)) => encode(txn_response(r)),
        (U::Compact, R::Compact(r)) => encode(header_only(&r.header)),
        (U::LeaseGrant, R::LeaseGrant(r)) => encode(pb::LeaseGrantResponse {
            header: header(&r.header),
            id: r.id,
            ttl: r.ttl,
            error: r.error,
        }),
        (U::LeaseRevoke, R::LeaseRevoke(r)) => encode(header_only(&r.header)),
        (U::LeaseTimeToLive, R::LeaseTimeToLive(r)) => encode(pb::LeaseTimeToLiveResponse {
            header: header(&r.header),
            id: r.id,
            ttl: r.ttl,
            granted_ttl: r.granted_ttl,
            keys: r.keys,
        }),
        (U::LeaseLeases, R::LeaseLeases(r)) => encode(pb::LeaseLeasesResponse {
            header: header(&r.header),
            leases: r
                .leases
                .into_iter()
                .map(|id| pb::LeaseStatus { id })
                .collect(),
        }),
        (U::MemberAdd, R::MemberAdd(r)) => encode(pb::MemberAddResponse {
            header: header(&r.header),
            member: Some(member(r.member)),
            members: r.members.into_iter().map(member).collect(),
        }),
        (U::MemberRemove | U::MemberUpdate | U::MemberList | U::MemberPromote, R::Members(r)) => {
            encode(pb::MembersResponse {
                header: header(&r.header),
                members: r.members.into_iter().map(member).collect(),
            })
        }
        (U::Alarm, R::Alarm(r)) => encode(pb::AlarmResponse {
            header: header(&r.header),
            alarms: r
                .alarms
                .into_iter()
                .map(|a| pb::AlarmMember {
                    member_id: a.member_id,
                    alarm: alarm_type(a.alarm),
                })
                .collect(),
        }),
        (U::Status, R::Status(r)) => encode(pb::StatusResponse {
            header: header(&r.header),
            version: r.version,
            db_size: r.db_size,
            leader: r.leader,
            raft_index: r.raft_index,
            raft_term: r.raft_term,
            raft_applied_index: r.raft_applied_index,
            errors: r.errors,
            db_size_in_use: r.db_size_in_use,
            is_learner: r.is_learner,
        }),
        (U::Defragment, R::Defragment(r)) => encode(header_only(&r.header)),
        (U::Hash, R::Hash(r)) => encode(pb::HashResponse {
            header: header(&r.header),
            hash: r.hash,
        }),
        (U::HashKv, R::HashKv(r)) => encode(pb::HashKvResponse {
            header: header(&r.header),
            hash: r.hash,
            compact_revision: r.compact_revision,
        }),
        (U::MoveLeader, R::MoveLeader(r)) => encode(header_only(&r.header)),
        (
            U::AuthEnable
            | U::AuthDisable
            | U::UserAdd
            | U::UserDelete
            | U::UserChangePassword
            | U::UserGrantRole
            | U::UserRevokeRole
            | U::RoleAdd
            | U::RoleDelete
            | U::RoleGrantPermission
            | U::RoleRevokePermission,
            R::Auth(r),
        ) => encode(header_only(&r.header)),
        (
            U::AuthStatus,
            R::AuthStatus {
                header: h,
                enabled,
                auth_revision,
            },
        ) => encode(pb::AuthStatusResponse {
            header: header(&h),
            enabled,
            auth_revision,
        }),
        (U::Authenticate, R::Authenticate(r)) => encode(pb::AuthenticateResponse {
            header: header(&r.header),
            token: r.token,
        }),
        (U::UserGet, R::UserGet(r)) => encode(pb::NamesResponse {
            header: header(&r.header),
            names: r.roles,
        }),
        (U::UserList | U::RoleList, R::Names(r)) => encode(pb::NamesResponse {
            header: header(&r.header),
            names: r.names,
        }),
        (U::RoleGet, R::RoleGet(r)) => encode(pb::AuthRoleGetResponse {
            header: header(&r.header),
            perm: r.perms.into_iter().map(permission).collect(),
        }),
        (method, other) => {
            return Err(Status::internal(format!(
                "qed-grpc: node answered {} with a response of the wrong kind ({})",
                method.path(),
                response_kind(&other)
            )))
        }
    };
    Ok(bytes)
}

fn response_kind(r: &wire::Response) -> String {
    let text = format!("{r:?}");
    text.split(['(', ' ', '{'])
        .next()
        .unwrap_or("?")
        .to_string()
}

// ------------------------------------------------------------ pb -> wire

fn sort_order(v: i32) -> wk::SortOrder {
    match pb::SortOrder::try_from(v) {
        Ok(pb::SortOrder::Ascend) => wk::SortOrder::Ascend,
        Ok(pb::SortOrder::Descend) => wk::SortOrder::Descend,
        // etcd 3.4's apply sorts only on ASCEND or DESCEND; any other value
        // leaves the key order as it is.
        Ok(pb::SortOrder::None) | Err(_) => wk::SortOrder::None,
    }
}

fn sort_target(v: i32) -> Result<wk::SortTarget, Status> {
    Ok(match pb::SortTarget::try_from(v) {
        Ok(pb::SortTarget::Key) => wk::SortTarget::Key,
        Ok(pb::SortTarget::Version) => wk::SortTarget::Version,
        Ok(pb::SortTarget::Create) => wk::SortTarget::Create,
        Ok(pb::SortTarget::Mod) => wk::SortTarget::Mod,
        Ok(pb::SortTarget::Value) => wk::SortTarget::Value,
        // etcd 3.4 has no check and would sort with a nil sorter (a panic);
        // refusing is the only sane answer.
        Err(_) => return Err(unknown_enum("sort target", v)),
    })
}

/// An enum value etcd's proto does not define. etcd 3.4 has no error for
/// these (it ignores or trips over them), so the text is the shim's own.
fn unknown_enum(what: &str, v: i32) -> Status {
    Status::invalid_argument(format!("qed-grpc: unknown {what} {v}"))
}

pub fn range_request(r: pb::RangeRequest) -> Result<wk::RangeRequest, Status> {
    Ok(wk::RangeRequest {
        key: r.key,
        range_end: r.range_end,
        limit: r.limit,
        revision: r.revision,
        sort_order: sort_order(r.sort_order),
        sort_target: sort_target(r.sort_target)?,
        serializable: r.serializable,
        keys_only: r.keys_only,
        count_only: r.count_only,
        min_mod_revision: r.min_mod_revision,
        max_mod_revision: r.max_mod_revision,
        min_create_revision: r.min_create_revision,
        max_create_revision: r.max_create_revision,
    })
}

pub fn put_request(r: pb::PutRequest) -> wk::PutRequest {
    wk::PutRequest {
        key: r.key,
        value: r.value,
        lease: r.lease,
        prev_kv: r.prev_kv,
        ignore_value: r.ignore_value,
        ignore_lease: r.ignore_lease,
    }
}

pub fn delete_range_request(r: pb::DeleteRangeRequest) -> wk::DeleteRangeRequest {
    wk::DeleteRangeRequest {
        key: r.key,
        range_end: r.range_end,
        prev_kv: r.prev_kv,
    }
}

fn compare(c: pb::Compare) -> Result<wk::Compare, Status> {
    use pb::compare::TargetUnion as T;
    let result = match pb::CompareResult::try_from(c.result) {
        Ok(pb::CompareResult::Equal) => wk::CompareResult::Equal,
        Ok(pb::CompareResult::Greater) => wk::CompareResult::Greater,
        Ok(pb::CompareResult::Less) => wk::CompareResult::Less,
        Ok(pb::CompareResult::NotEqual) => wk::CompareResult::NotEqual,
        Err(_) => {
            return Err(Status::invalid_argument(
                "etcdserver: invalid compare result",
            ))
        }
    };
    // Like etcd's generated getters: the operand of the named target, or its
    // zero value when the union holds something else.
    let u = c.target_union;
    let target = match pb::CompareTarget::try_from(c.target) {
        Ok(pb::CompareTarget::Version) => {
            wk::CompareTarget::Version(if let Some(T::Version(v)) = u { v } else { 0 })
        }
        Ok(pb::CompareTarget::Create) => wk::CompareTarget::Create(match u {
            Some(T::CreateRevision(v)) => v,
            _ => 0,
        }),
        Ok(pb::CompareTarget::Mod) => wk::CompareTarget::Mod(match u {
            Some(T::ModRevision(v)) => v,
            _ => 0,
        }),
        Ok(pb::CompareTarget::Value) => wk::CompareTarget::Value(match u {
            Some(T::Value(v)) => v,
            _ => Vec::new(),
        }),
        Ok(pb::CompareTarget::Lease) => wk::CompareTarget::Lease(match u {
            Some(T::Lease(v)) => v,
            _ => 0,
        }),
        Err(_) => {
            return Err(Status::invalid_argument(
                "etcdserver: invalid compare target",
            ))
        }
    };
    Ok(wk::Compare {
        result,
        target,
        key: c.key,
        range_end: c.range_end,
    })
}

fn request_op(op: pb::RequestOp) -> Result<wk::RequestOp, Status> {
    use pb::request_op::Request as P;
    Ok(match op.request {
        Some(P::RequestRange(r)) => wk::RequestOp::Range(range_request(r)?),
        Some(P::RequestPut(r)) => wk::RequestOp::Put(put_request(r)),
        Some(P::RequestDeleteRange(r)) => wk::RequestOp::DeleteRange(delete_range_request(r)),
        Some(P::RequestTxn(r)) => wk::RequestOp::Txn(txn_request(r)?),
        // etcd's checkRequestOp: "etcdserver: key is not provided" for an
        // op with nothing set is what a nil RangeRequest turns into.
        None => return Err(Status::from_wire(&wire::Error::EmptyKey)),
    })
}

pub fn txn_request(r: pb::TxnRequest) -> Result<wk::TxnRequest, Status> {
    Ok(wk::TxnRequest {
        compare: r
            .compare
            .into_iter()
            .map(compare)
            .collect::<Result<_, _>>()?,
        success: r
            .success
            .into_iter()
            .map(request_op)
            .collect::<Result<_, _>>()?,
        failure: r
            .failure
            .into_iter()
            .map(request_op)
            .collect::<Result<_, _>>()?,
    })
}

pub fn watch_request(r: pb::WatchRequest) -> Option<ww::WatchRequest> {
    use pb::watch_request::RequestUnion as U;
    Some(match r.request_union? {
        U::CreateRequest(c) => ww::WatchRequest::Create(ww::WatchCreateRequest {
            key: c.key,
            range_end: c.range_end,
            start_revision: c.start_revision,
            progress_notify: c.progress_notify,
            filters: c
                .filters
                .into_iter()
                .filter_map(|f| match pb::FilterType::try_from(f) {
                    Ok(pb::FilterType::Noput) => Some(ww::WatchFilter::NoPut),
                    Ok(pb::FilterType::Nodelete) => Some(ww::WatchFilter::NoDelete),
                    Err(_) => None,
                })
                .collect(),
            prev_kv: c.prev_kv,
            watch_id: c.watch_id,
            fragment: c.fragment,
        }),
        U::CancelRequest(c) => ww::WatchRequest::Cancel {
            watch_id: c.watch_id,
        },
        U::ProgressRequest(_) => ww::WatchRequest::Progress,
    })
}

/// Decodes one message of a Watch stream; an empty request union is ignored,
/// as etcd ignores it.
pub fn watch_request_bytes(body: &[u8]) -> Result<Option<ww::WatchRequest>, Status> {
    Ok(watch_request(super::codec::decode(body)?))
}

/// Decodes one message of a LeaseKeepAlive stream.
pub fn keep_alive_request_bytes(body: &[u8]) -> Result<Option<wl::LeaseKeepAliveRequest>, Status> {
    let r: pb::LeaseKeepAliveRequest = super::codec::decode(body)?;
    Ok(Some(wl::LeaseKeepAliveRequest { id: r.id }))
}

fn alarm_request(r: pb::AlarmRequest) -> Result<wm::AlarmRequest, Status> {
    let action = match pb::AlarmAction::try_from(r.action) {
        Ok(pb::AlarmAction::Get) => wm::AlarmAction::Get,
        Ok(pb::AlarmAction::Activate) => wm::AlarmAction::Activate,
        Ok(pb::AlarmAction::Deactivate) => wm::AlarmAction::Deactivate,
        Err(_) => return Err(unknown_enum("alarm action", r.action)),
    };
    let alarm = match pb::AlarmType::try_from(r.alarm) {
        Ok(pb::AlarmType::None) => wm::AlarmType::None,
        Ok(pb::AlarmType::Nospace) => wm::AlarmType::Nospace,
        Ok(pb::AlarmType::Corrupt) => wm::AlarmType::Corrupt,
        Err(_) => return Err(unknown_enum("alarm type", r.alarm)),
    };
    Ok(wm::AlarmRequest {
        action,
        member_id: r.member_id,
        alarm,
    })
}

fn permission_request(p: pb::authpb::Permission) -> Result<wa::Permission, Status> {
    let perm_type = match pb::authpb::PermissionType::try_from(p.perm_type) {
        Ok(pb::authpb::PermissionType::Read) => wa::PermissionType::Read,
        Ok(pb::authpb::PermissionType::Write) => wa::PermissionType::Write,
        Ok(pb::authpb::PermissionType::Readwrite) => wa::PermissionType::ReadWrite,
        Err(_) => {
            return Err(Status::invalid_argument(
                "etcdserver: invalid permission type",
            ))
        }
    };
    Ok(wa::Permission {
        perm_type,
        key: p.key,
        range_end: p.range_end,
    })
}

// ------------------------------------------------------------ routing

/// Every unary method, by its etcd path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unary {
    Range,
    Put,
    DeleteRange,
    Txn,
    Compact,
    LeaseGrant,
    LeaseRevoke,
    LeaseTimeToLive,
    LeaseLeases,
    MemberAdd,
    MemberRemove,
    MemberUpdate,
    MemberList,
    MemberPromote,
    Alarm,
    Status,
    Defragment,
    Hash,
    HashKv,
    MoveLeader,
    AuthEnable,
    AuthDisable,
    AuthStatus,
    Authenticate,
    UserAdd,
    UserGet,
    UserList,
    UserDelete,
    UserChangePassword,
    UserGrantRole,
    UserRevokeRole,
    RoleAdd,
    RoleGet,
    RoleList,
    RoleDelete,
    RoleGrantPermission,
    RoleRevokePermission,
}

/// The streaming methods.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Streaming {
    /// `/etcdserverpb.Watch/Watch`, bidirectional.
    Watch,
    /// `/etcdserverpb.Lease/LeaseKeepAlive`, bidirectional.
    LeaseKeepAlive,
    /// `/etcdserverpb.Maintenance/Snapshot`, server streaming.
    Snapshot,
}

/// What a request path names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Unary(Unary),
    Streaming(Streaming),
}

const UNARY: [(Unary, &str); 37] = [
    (Unary::Range, "/etcdserverpb.KV/Range"),
    (Unary::Put, "/etcdserverpb.KV/Put"),
    (Unary::DeleteRange, "/etcdserverpb.KV/DeleteRange"),
    (Unary::Txn, "/etcdserverpb.KV/Txn"),
    (Unary::Compact, "/etcdserverpb.KV/Compact"),
    (Unary::LeaseGrant, "/etcdserverpb.Lease/LeaseGrant"),
    (Unary::LeaseRevoke, "/etcdserverpb.Lease/LeaseRevoke"),
    (
        Unary::LeaseTimeToLive,
        "/etcdserverpb.Lease/LeaseTimeToLive",
    ),
    (Unary::LeaseLeases, "/etcdserverpb.Lease/LeaseLeases"),
    (Unary::MemberAdd, "/etcdserverpb.Cluster/MemberAdd"),
    (Unary::MemberRemove, "/etcdserverpb.Cluster/MemberRemove"),
    (Unary::MemberUpdate, "/etcdserverpb.Cluster/MemberUpdate"),
    (Unary::MemberList, "/etcdserverpb.Cluster/MemberList"),
    (Unary::MemberPromote, "/etcdserverpb.Cluster/MemberPromote"),
    (Unary::Alarm, "/etcdserverpb.Maintenance/Alarm"),
    (Unary::Status, "/etcdserverpb.Maintenance/Status"),
    (Unary::Defragment, "/etcdserverpb.Maintenance/Defragment"),
    (Unary::Hash, "/etcdserverpb.Maintenance/Hash"),
    (Unary::HashKv, "/etcdserverpb.Maintenance/HashKV"),
    (Unary::MoveLeader, "/etcdserverpb.Maintenance/MoveLeader"),
    (Unary::AuthEnable, "/etcdserverpb.Auth/AuthEnable"),
    (Unary::AuthDisable, "/etcdserverpb.Auth/AuthDisable"),
    (Unary::AuthStatus, "/etcdserverpb.Auth/AuthStatus"),
    (Unary::Authenticate, "/etcdserverpb.Auth/Authenticate"),
    (Unary::UserAdd, "/etcdserverpb.Auth/UserAdd"),
    (Unary::UserGet, "/etcdserverpb.Auth/UserGet"),
    (Unary::UserList, "/etcdserverpb.Auth/UserList"),
    (Unary::UserDelete, "/etcdserverpb.Auth/UserDelete"),
    (
        Unary::UserChangePassword,
        "/etcdserverpb.Auth/UserChangePassword",
    ),
    (Unary::UserGrantRole, "/etcdserverpb.Auth/UserGrantRole"),
    (Unary::UserRevokeRole, "/etcdserverpb.Auth/UserRevokeRole"),
    (Unary::RoleAdd, "/etcdserverpb.Auth/RoleAdd"),
    (Unary::RoleGet, "/etcdserverpb.Auth/RoleGet"),
    (Unary::RoleList, "/etcdserverpb.Auth/RoleList"),
    (Unary::RoleDelete, "/etcdserverpb.Auth/RoleDelete"),
    (
        Unary::RoleGrantPermission,
        "/etcdserverpb.Auth/RoleGrantPermission",
    ),
    (
        Unary::RoleRevokePermission,
        "/etcdserverpb.Auth/RoleRevokePermission",
    ),
];

const STREAMING: [(Streaming, &str); 3] = [
    (Streaming::Watch, "/etcdserverpb.Watch/Watch"),
    (
        Streaming::LeaseKeepAlive,
        "/etcdserverpb.Lease/LeaseKeepAlive",
    ),
    (Streaming::Snapshot, "/etcdserverpb.Maintenance/Snapshot"),
];

impl Method {
    /// Every method with its path (the gRPC metrics start each at zero).
    pub fn all() -> impl Iterator<Item = (Method, &'static str)> {
        UNARY
            .iter()
            .map(|(m, p)| (Method::Unary(*m), *p))
            .chain(STREAMING.iter().map(|(m, p)| (Method::Streaming(*m), *p)))
    }

    /// Looks up a `:path`.
    pub fn from_path(path: &str) -> Option<Method> {
        if let Some((m, _)) = UNARY.iter().find(|(_, p)| *p == path) {
            return Some(Method::Unary(*m));
        }
        STREAMING
            .iter()
            .find(|(_, p)| *p == path)
            .map(|(m, _)| Method::Streaming(*m))
    }
}

/// gRPC-go's answer for a path no service serves.
pub fn unknown_method(path: &str) -> Status {
    const SERVICES: [&str; 6] = [
        "etcdserverpb.KV",
        "etcdserverpb.Watch",
        "etcdserverpb.Lease",
        "etcdserverpb.Cluster",
        "etcdserverpb.Maintenance",
        "etcdserverpb.Auth",
    ];
    let trimmed = path.strip_prefix('/').unwrap_or(path);
    match trimmed.rsplit_once('/') {
        Some((service, method)) if SERVICES.contains(&service) => {
            Status::unimplemented(format!("unknown method {method} for service {service}"))
        }
        Some((service, _)) => Status::unimplemented(format!("unknown service {service}")),
        None => Status::unimplemented(format!("malformed method name: {path:?}")),
    }
}

impl Unary {
    /// Every unary method (for tests and fuzzing).
    pub fn all() -> impl Iterator<Item = Unary> {
        UNARY.iter().map(|(m, _)| *m)
    }

    pub fn path(self) -> &'static str {
        UNARY
            .iter()
            .find(|(m, _)| *m == self)
            .map(|(_, p)| *p)
            .unwrap_or("?")
    }

    /// Decodes the protobuf request body of this method into its wire call.
    pub fn decode_request(self, body: &[u8]) -> Result<wire::Request, Status> {
        use super::codec::decode;
        use wire::Request as W;
        use Unary as U;
        Ok(match self {
            U::Range => W::Range(range_request(decode(body)?)?),
            U::Put => W::Put(put_request(decode(body)?)),
            U::DeleteRange => W::DeleteRange(delete_range_request(decode(body)?)),
            U::Txn => W::Txn(txn_request(decode(body)?)?),
            U::Compact => {
                let r: pb::CompactionRequest = decode(body)?;
                W::Compact(wk::CompactionRequest {
                    revision: r.revision,
                    physical: r.physical,
                })
            }
            U::LeaseGrant => {
                let r: pb::LeaseGrantRequest = decode(body)?;
                W::LeaseGrant(wl::LeaseGrantRequest {
                    ttl: r.ttl,
                    id: r.id,
                })
            }
            U::LeaseRevoke => {
                let r: pb::LeaseRevokeRequest = decode(body)?;
                W::LeaseRevoke(wl::LeaseRevokeRequest { id: r.id })
            }
            U::LeaseTimeToLive => {
                let r: pb::LeaseTimeToLiveRequest = decode(body)?;
                W::LeaseTimeToLive(wl::LeaseTimeToLiveRequest {
                    id: r.id,
                    keys: r.keys,
                })
            }
            U::LeaseLeases => {
                decode::<pb::LeaseLeasesRequest>(body)?;
                W::LeaseLeases(wl::LeaseLeasesRequest {})
            }
            U::MemberAdd => {
                let r: pb::MemberAddRequest = decode(body)?;
                W::MemberAdd(wc::MemberAddRequest {
                    peer_urls: r.peer_urls,
                    is_learner: r.is_learner,
                })
            }
            U::MemberRemove => {
                let r: pb::MemberRemoveRequest = decode(body)?;
                W::MemberRemove(wc::MemberRemoveRequest { id: r.id })
            }
            U::MemberUpdate => {
                let r: pb::MemberUpdateRequest = decode(body)?;
                W::MemberUpdate(wc::MemberUpdateRequest {
                    id: r.id,
                    peer_urls: r.peer_urls,
                })
            }
            U::MemberList => {
                let r: pb::MemberListRequest = decode(body)?;
                W::MemberList(wc::MemberListRequest {
                    linearizable: r.linearizable,
                })
            }
            U::MemberPromote => {
                let r: pb::MemberPromoteRequest = decode(body)?;
                W::MemberPromote(wc::MemberPromoteRequest { id: r.id })
            }
            U::Alarm => W::Alarm(alarm_request(decode(body)?)?),
            U::Status => {
                decode::<pb::StatusRequest>(body)?;
                W::Status(wm::StatusRequest {})
            }
            U::Defragment => {
                decode::<pb::DefragmentRequest>(body)?;
                W::Defragment(wm::DefragmentRequest {})
            }
            U::Hash => {
                decode::<pb::HashRequest>(body)?;
                W::Hash(wm::HashRequest {})
            }
            U::HashKv => {
                let r: pb::HashKvRequest = decode(body)?;
                W::HashKv(wm::HashKvRequest {
                    revision: r.revision,
                })
            }
            U::MoveLeader => {
                let r: pb::MoveLeaderRequest = decode(body)?;
                W::MoveLeader(wm::MoveLeaderRequest {
                    target_id: r.target_id,
                })
            }
            U::AuthEnable => {
                decode::<pb::AuthEnableRequest>(body)?;
                W::AuthEnable
            }
            U::AuthDisable => {
                decode::<pb::AuthDisableRequest>(body)?;
                W::AuthDisable
            }
            U::AuthStatus => {
                decode::<pb::AuthStatusRequest>(body)?;
                W::AuthStatus
            }
            U::Authenticate => {
                let r: pb::AuthenticateRequest = decode(body)?;
                W::Authenticate(wa::AuthenticateRequest {
                    name: r.name,
                    password: r.password,
                })
            }
            U::UserAdd => {
                let r: pb::AuthUserAddRequest = decode(body)?;
                W::UserAdd(wa::UserAddRequest {
                    name: r.name,
                    password: r.password,
                    no_password: r.options.is_some_and(|o| o.no_password),
                })
            }
            U::UserGet => {
                let r: pb::AuthUserGetRequest = decode(body)?;
                W::UserGet { name: r.name }
            }
            U::UserList => {
                decode::<pb::AuthUserListRequest>(body)?;
                W::UserList
            }
            U::UserDelete => {
                let r: pb::AuthUserDeleteRequest = decode(body)?;
                W::UserDelete { name: r.name }
            }
            U::UserChangePassword => {
                let r: pb::AuthUserChangePasswordRequest = decode(body)?;
                W::UserChangePassword(wa::UserChangePasswordRequest {
                    name: r.name,
                    password: r.password,
                })
            }
            U::UserGrantRole => {
                let r: pb::AuthUserGrantRoleRequest = decode(body)?;
                W::UserGrantRole(wa::UserRoleRequest {
                    user: r.user,
                    role: r.role,
                })
            }
            U::UserRevokeRole => {
                let r: pb::AuthUserRevokeRoleRequest = decode(body)?;
                W::UserRevokeRole(wa::UserRoleRequest {
                    user: r.name,
                    role: r.role,
                })
            }
            U::RoleAdd => {
                let r: pb::AuthRoleAddRequest = decode(body)?;
                W::RoleAdd { name: r.name }
            }
            U::RoleGet => {
                let r: pb::AuthRoleGetRequest = decode(body)?;
                W::RoleGet { role: r.role }
            }
            U::RoleList => {
                decode::<pb::AuthRoleListRequest>(body)?;
                W::RoleList
            }
            U::RoleDelete => {
                let r: pb::AuthRoleDeleteRequest = decode(body)?;
                W::RoleDelete { role: r.role }
            }
            U::RoleGrantPermission => {
                let r: pb::AuthRoleGrantPermissionRequest = decode(body)?;
                W::RoleGrantPermission(wa::RoleGrantPermissionRequest {
                    role: r.name,
                    perm: permission_request(r.perm.unwrap_or_default())?,
                })
            }
            U::RoleRevokePermission => {
                let r: pb::AuthRoleRevokePermissionRequest = decode(body)?;
                W::RoleRevokePermission(wa::RoleRevokePermissionRequest {
                    role: r.role,
                    key: r.key,
                    range_end: r.range_end,
                })
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_known_bytes() {
        let r = Unary::DeleteRange
            .decode_request(&[0x0a, 0x01, 0x61])
            .unwrap();
        assert_eq!(
            r,
            wire::Request::DeleteRange(wk::DeleteRangeRequest {
                key: b"a".to_vec(),
                ..Default::default()
            })
        );
        let r = Unary::Range
            .decode_request(&[0x0a, 0x01, 0x61, 0x20, 0x01])
            .unwrap();
        let wire::Request::Range(r) = r else { panic!() };
        assert_eq!(r.revision, 1);
    }

    #[test]
    fn compare_union_and_range_end_tag_64() {
        use prost::Message;
        // Compare{result: GREATER, target: MOD, key: "k", mod_revision: 5,
        // range_end: "l"}, as gogo/protobuf encodes it.
        let bytes = [
            0x08, 0x01, 0x10, 0x02, 0x1a, 0x01, b'k', 0x30, 0x05, 0x82, 0x04, 0x01, b'l',
        ];
        let c = pb::Compare::decode(&bytes[..]).unwrap();
        assert_eq!(c.encode_to_vec(), bytes);
        let txn = txn_request(pb::TxnRequest {
            compare: vec![c],
            success: vec![pb::RequestOp {
                request: Some(pb::request_op::Request::RequestPut(pb::PutRequest {
                    key: b"k".to_vec(),
                    value: b"v".to_vec(),
                    ..Default::default()
                })),
            }],
            failure: vec![pb::RequestOp {
                request: Some(pb::request_op::Request::RequestTxn(
                    pb::TxnRequest::default(),
                )),
            }],
        })
        .unwrap();
        assert_eq!(
            txn.compare,
            vec![wk::Compare {
                result: wk::CompareResult::Greater,
                target: wk::CompareTarget::Mod(5),
                key: b"k".to_vec(),
                range_end: b"l".to_vec(),
            }]
        );
        assert!(matches!(txn.success[0], wk::RequestOp::Put(ref p) if p.value == b"v"));
        assert!(matches!(txn.failure[0], wk::RequestOp::Txn(_)));
    }

    #[test]
    fn bad_enums_get_etcd_status() {
        let r = range_request(pb::RangeRequest {
            sort_order: 7,
            ..Default::default()
        })
        .unwrap();
        assert_eq!(r.sort_order, wk::SortOrder::None);
        let err = range_request(pb::RangeRequest {
            sort_target: 9,
            ..Default::default()
        })
        .unwrap_err();
        assert_eq!(err.code, super::super::status::Code::InvalidArgument);
        assert_eq!(err.message, "qed-grpc: unknown sort target 9");
        let empty_op = txn_request(pb::TxnRequest {
            success: vec![pb::RequestOp { request: None }],
            ..Default::default()
        });
        assert!(empty_op.is_err());
    }

    #[test]
    fn responses_encode_as_etcd_messages() {
        use prost::Message;
        let h = wire::ResponseHeader {
            cluster_id: 1,
            member_id: 2,
            revision: 3,
            raft_term: 4,
        };
        let kv = wk::KeyValue {
            key: b"a".to_vec(),
            create_revision: 2,
            mod_revision: 3,
            version: 2,
            value: b"b".to_vec(),
            lease: 0,
        };
        let txn = wk::TxnResponse {
            header: h,
            succeeded: true,
            responses: vec![
                wk::ResponseOp::Range(wk::RangeResponse {
                    header: h,
                    kvs: vec![kv.clone()],
                    more: false,
                    count: 1,
                }),
                wk::ResponseOp::Put(wk::PutResponse {
                    header: h,
                    prev_kv: Some(kv.clone()),
                }),
            ],
        };
        let bytes = encode_response(Unary::Txn, wire::Response::Txn(txn)).unwrap();
        let len = u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]) as usize;
        assert_eq!(
            (bytes[0], len),
            (0, bytes.len() - super::super::codec::PREFIX_LEN)
        );
        let decoded = pb::TxnResponse::decode(&bytes[5..]).unwrap();
        assert!(decoded.succeeded);
        assert_eq!(decoded.header.unwrap().raft_term, 4);
        match &decoded.responses[1].response {
            Some(pb::response_op::Response::ResponsePut(p)) => {
                assert_eq!(p.prev_kv.as_ref().unwrap().value, b"b")
            }
            other => panic!("{other:?}"),
        }
        // KeyValue{key:"a", create:2, mod:3, version:2, value:"b"}.
        assert_eq!(
            key_value(kv).encode_to_vec(),
            [0x0a, 0x01, b'a', 0x10, 0x02, 0x18, 0x03, 0x20, 0x02, 0x2a, 0x01, b'b']
        );
        let members = wire::Response::Members(wire::cluster::MembersResponse {
            header: h,
            members: vec![wire::cluster::Member {
                id: 9,
                name: "n".into(),
                ..Default::default()
            }],
        });
        let bytes = encode_response(Unary::MemberList, members.clone()).unwrap();
        assert_eq!(
            pb::MembersResponse::decode(&bytes[5..]).unwrap().members[0].id,
            9
        );
        assert_eq!(
            encode_response(Unary::Range, members).unwrap_err().code,
            super::super::status::Code::Internal
        );
    }

    #[test]
    fn every_path_routes_and_unknown_ones_do_not() {
        for (method, path) in UNARY {
            assert_eq!(Method::from_path(path), Some(Method::Unary(method)));
            assert_eq!(method.path(), path);
            // An empty body is a valid (all-default) message for every call.
            let _ = method.decode_request(&[]);
        }
        assert_eq!(
            Method::from_path("/etcdserverpb.Watch/Watch"),
            Some(Method::Streaming(Streaming::Watch))
        );
        assert_eq!(Method::from_path("/etcdserverpb.KV/range"), None);
    }
}
