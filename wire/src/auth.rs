//! Auth service messages (etcd's `etcdserverpb.Auth` and `authpb`).

use crate::kv::ResponseHeader;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum PermissionType {
    #[default]
    Read,
    Write,
    ReadWrite,
}

/// Access to `[key, range_end)` (just `key` when `range_end` is empty).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Permission {
    pub perm_type: PermissionType,
    #[serde(with = "crate::bytes")]
    pub key: Vec<u8>,
    #[serde(with = "crate::bytes")]
    pub range_end: Vec<u8>,
}

/// Every auth call that carries only a header back.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthResponse {
    pub header: ResponseHeader,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthenticateRequest {
    pub name: String,
    pub password: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthenticateResponse {
    pub header: ResponseHeader,
    pub token: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserAddRequest {
    pub name: String,
    pub password: String,
    pub no_password: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserGetResponse {
    pub header: ResponseHeader,
    pub roles: Vec<String>,
}

/// The answer to user list and role list.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamesResponse {
    pub header: ResponseHeader,
    pub names: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserChangePasswordRequest {
    pub name: String,
    pub password: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRoleRequest {
    pub user: String,
    pub role: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoleGetResponse {
    pub header: ResponseHeader,
    pub perms: Vec<Permission>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoleGrantPermissionRequest {
    pub role: String,
    pub perm: Permission,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoleRevokePermissionRequest {
    pub role: String,
    #[serde(with = "crate::bytes")]
    pub key: Vec<u8>,
    #[serde(with = "crate::bytes")]
    pub range_end: Vec<u8>,
}
