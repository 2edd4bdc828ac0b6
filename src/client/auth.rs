//! Auth management, as clientv3's `Auth` interface: users, roles,
//! permissions, enabling and disabling. Logging in is
//! `ConnectOptions { user, password }` (see [`Client::authenticate`]).

use super::{unexpected, Client, ClientError};
use qed_wire::auth::{
    Permission, PermissionType, RoleGrantPermissionRequest, RoleRevokePermissionRequest,
    UserAddRequest, UserChangePasswordRequest, UserRoleRequest,
};
use qed_wire::{Request, Response};

impl Client {
    /// A call that answers with a header only.
    async fn auth_call(&self, what: &str, req: Request) -> Result<(), ClientError> {
        match self.call(req).await? {
            Response::Auth(_) => Ok(()),
            other => Err(unexpected(what, &other)),
        }
    }

    /// Turns auth on; the user `root` with the role `root` must exist.
    pub async fn auth_enable(&self) -> Result<(), ClientError> {
        self.auth_call("auth enable", Request::AuthEnable).await
    }

    pub async fn auth_disable(&self) -> Result<(), ClientError> {
        self.auth_call("auth disable", Request::AuthDisable).await
    }

    /// Adds a user; `password: None` adds one that can only log in with a
    /// client certificate (etcd's `--no-password`).
    pub async fn user_add(&self, name: &str, password: Option<&str>) -> Result<(), ClientError> {
        let req = UserAddRequest {
            name: name.into(),
            password: password.unwrap_or_default().into(),
            no_password: password.is_none(),
        };
        self.auth_call("user add", Request::UserAdd(req)).await
    }

    pub async fn user_delete(&self, name: &str) -> Result<(), ClientError> {
        let req = Request::UserDelete { name: name.into() };
        self.auth_call("user delete", req).await
    }

    pub async fn user_change_password(
        &self,
        name: &str,
        password: &str,
    ) -> Result<(), ClientError> {
        let req = UserChangePasswordRequest {
            name: name.into(),
            password: password.into(),
        };
        self.auth_call("user change-password", Request::UserChangePassword(req))
            .await
    }

    pub async fn user_grant_role(&self, user: &str, role: &str) -> Result<(), ClientError> {
        let req = UserRoleRequest {
            user: user.into(),
            role: role.into(),
        };
        self.auth_call("user grant-role", Request::UserGrantRole(req))
            .await
    }

    pub async fn user_revoke_role(&self, user: &str, role: &str) -> Result<(), ClientError> {
        let req = UserRoleRequest {
            user: user.into(),
            role: role.into(),
        };
        self.auth_call("user revoke-role", Request::UserRevokeRole(req))
            .await
    }

    pub async fn role_add(&self, name: &str) -> Result<(), ClientError> {
        let req = Request::RoleAdd { name: name.into() };
        self.auth_call("role add", req).await
    }

    pub async fn role_delete(&self, role: &str) -> Result<(), ClientError> {
        let req = Request::RoleDelete { role: role.into() };
        self.auth_call("role delete", req).await
    }

    /// Grants `perm` on `[key, range_end)` (`range_end` empty: one key;
    /// `"\0"`: everything from `key`; a prefix's end is
    /// [`crate::client::prefix_range_end`]).
    pub async fn role_grant_permission(
        &self,
        role: &str,
        perm: PermissionType,
        key: impl Into<Vec<u8>>,
        range_end: impl Into<Vec<u8>>,
    ) -> Result<(), ClientError> {
        let req = RoleGrantPermissionRequest {
            role: role.into(),
            perm: Permission {
                perm_type: perm,
                key: key.into(),
                range_end: range_end.into(),
            },
        };
        self.auth_call("role grant-permission", Request::RoleGrantPermission(req))
            .await
    }

    pub async fn role_revoke_permission(
        &self,
        role: &str,
        key: impl Into<Vec<u8>>,
        range_end: impl Into<Vec<u8>>,
    ) -> Result<(), ClientError> {
        let req = RoleRevokePermissionRequest {
            role: role.into(),
            key: key.into(),
            range_end: range_end.into(),
        };
        self.auth_call("role revoke-permission", Request::RoleRevokePermission(req))
            .await
    }

    /// A user's roles.
    pub async fn user_get(&self, name: &str) -> Result<Vec<String>, ClientError> {
        match self.call(Request::UserGet { name: name.into() }).await? {
            Response::UserGet(r) => Ok(r.roles),
            other => Err(unexpected("user get", &other)),
        }
    }

    /// A role's permissions.
    pub async fn role_get(&self, role: &str) -> Result<Vec<Permission>, ClientError> {
        match self.call(Request::RoleGet { role: role.into() }).await? {
            Response::RoleGet(r) => Ok(r.perms),
            other => Err(unexpected("role get", &other)),
        }
    }
}
