//! Auth: etcd 3.4's users, roles and key-range permissions, and the tokens
//! that prove who a caller is. Pure: no I/O, no clock, no randomness of its
//! own (time, salts and token prefixes are arguments).
//!
//! - `store`: the replicated state (users, roles, the enabled flag, the
//!   auth revision), changed only by applied entries, and etcd's checks
//!   (`check`, `check_admin`).
//! - `perms`: how a user's permissions cover a key or a range.
//! - `request`: which check each call needs, where etcd makes it.
//! - `tokens`: etcd's `simple` tokens (a member-local table with a TTL
//!   refreshed on use) and `jwt` tokens (signed; any member verifies).
//! - `password`: bcrypt.
//!
//! The driver (`server/auth.rs`) resolves a caller's token into an
//! [`AuthInfo`], hashes passwords before they are proposed, and stamps each
//! proposal with the user and the auth revision it was checked at; apply
//! checks again against that revision, so a revoke that lands first wins.

pub mod password;
pub mod perms;
pub mod request;
pub mod store;
pub mod tokens;

pub use perms::Access;
pub use store::{AuthInfo, AuthSnapshot, AuthStore};

/// Why an auth operation or check failed; each is one of etcd's errors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthError {
    RootUserNotExist,
    RootRoleNotExist,
    UserAlreadyExist,
    UserEmpty,
    UserNotFound,
    RoleAlreadyExist,
    RoleNotFound,
    RoleEmpty,
    AuthFailed,
    PermissionDenied,
    RoleNotGranted,
    PermissionNotGranted,
    AuthNotEnabled,
    InvalidAuthToken,
    InvalidAuthMgmt,
    AuthOldRevision,
    /// Hashing a password failed (the text says why).
    Hash(String),
}

impl AuthError {
    /// etcd's own text of the error before its gRPC layer translates it;
    /// the maintenance calls send it as it is (see `qed_wire::Error::Unknown`).
    pub fn untranslated(&self) -> qed_wire::Error {
        let text = match self {
            AuthError::UserEmpty => "auth: user name is empty",
            AuthError::UserNotFound => "auth: user not found",
            AuthError::PermissionDenied => "auth: permission denied",
            AuthError::InvalidAuthToken => "auth: invalid auth token",
            other => return other.clone().into(),
        };
        qed_wire::Error::Unknown(text.into())
    }
}

impl From<AuthError> for qed_wire::Error {
    fn from(e: AuthError) -> Self {
        use qed_wire::Error as W;
        match e {
            AuthError::RootUserNotExist => W::RootUserNotExist,
            AuthError::RootRoleNotExist => W::RootRoleNotExist,
            AuthError::UserAlreadyExist => W::UserAlreadyExist,
            AuthError::UserEmpty => W::UserEmpty,
            AuthError::UserNotFound => W::UserNotFound,
            AuthError::RoleAlreadyExist => W::RoleAlreadyExist,
            AuthError::RoleNotFound => W::RoleNotFound,
            AuthError::RoleEmpty => W::RoleEmpty,
            AuthError::AuthFailed => W::AuthFailed,
            AuthError::PermissionDenied => W::PermissionDenied,
            AuthError::RoleNotGranted => W::RoleNotGranted,
            AuthError::PermissionNotGranted => W::PermissionNotGranted,
            AuthError::AuthNotEnabled => W::AuthNotEnabled,
            AuthError::InvalidAuthToken => W::InvalidAuthToken,
            AuthError::InvalidAuthMgmt => W::InvalidAuthMgmt,
            AuthError::AuthOldRevision => W::AuthOldRevision,
            AuthError::Hash(why) => W::Internal(format!("password hashing failed: {why}")),
        }
    }
}

#[cfg(test)]
mod tests;
