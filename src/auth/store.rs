//! The replicated auth state: users, roles, permissions, the enabled flag
//! and the auth revision, changed only by applied log entries.
//!
//! Every operation is etcd 3.4's `authStore` method of the same name, with
//! its checks in its order and its errors (`auth/store.go`). A change bumps
//! the auth revision exactly where etcd's `commitRevision` does (enabling
//! does not; granting a role the user already has does not), and never
//! the key-value revision. Passwords arrive already hashed.
//!
//! Invariants: user roles and role permissions stay sorted (as etcd keeps
//! them, so `user get` and `role get` list them in etcd's order); each
//! user's merged permissions are rebuilt whenever users or roles change,
//! so checks never see a stale view.

use super::perms::{Access, UserPermissions};
use super::AuthError;
use qed_wire::auth::Permission;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

pub const ROOT_USER: &str = "root";
pub const ROOT_ROLE: &str = "root";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    pub name: String,
    /// The bcrypt hash; `None` for a user added with `--no-password`
    /// (it can only authenticate by client certificate).
    pub password_hash: Option<String>,
    /// Sorted.
    pub roles: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Role {
    pub name: String,
    /// Sorted by key.
    pub perms: Vec<Permission>,
}

/// What a snapshot holds of the auth state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthSnapshot {
    pub enabled: bool,
    pub revision: u64,
    pub users: Vec<User>,
    pub roles: Vec<Role>,
}

impl Default for AuthSnapshot {
    fn default() -> Self {
        AuthStore::new().snapshot()
    }
}

/// Who a request is from, as checks see it (etcd's `AuthInfo`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuthInfo {
    /// Empty when the caller gave no credentials.
    pub user: String,
    /// The auth revision the caller's credentials were checked at (0: none).
    pub revision: u64,
}

#[derive(Debug, Clone)]
pub struct AuthStore {
    enabled: bool,
    revision: u64,
    users: BTreeMap<String, User>,
    roles: BTreeMap<String, Role>,
    /// Derived from users and roles; shared by clones (snapshots, reads).
    merged: Arc<HashMap<String, UserPermissions>>,
}

impl Default for AuthStore {
    fn default() -> Self {
        AuthStore::new()
    }
}

impl AuthStore {
    /// A fresh store: disabled, no users or roles, auth revision 1 (etcd
    /// commits revision 1 when it creates its auth buckets).
    pub fn new() -> Self {
        AuthStore {
            enabled: false,
            revision: 1,
            users: BTreeMap::new(),
            roles: BTreeMap::new(),
            merged: Arc::default(),
        }
    }

    pub fn from_snapshot(snap: AuthSnapshot) -> Self {
        let mut store = AuthStore {
            enabled: snap.enabled,
            revision: snap.revision,
            users: snap
                .users
                .into_iter()
                .map(|u| (u.name.clone(), u))
                .collect(),
            roles: snap
                .roles
                .into_iter()
                .map(|r| (r.name.clone(), r))
                .collect(),
            merged: Arc::default(),
        };
        store.refresh();
        store
    }

    pub fn snapshot(&self) -> AuthSnapshot {
        AuthSnapshot {
            enabled: self.enabled,
            revision: self.revision,
            users: self.users.values().cloned().collect(),
            roles: self.roles.values().cloned().collect(),
        }
    }

    pub fn is_enabled(&self) -> bool {
        self.enabled
    }

    pub fn revision(&self) -> u64 {
        self.revision
    }

    pub fn user(&self, name: &str) -> Option<&User> {
        self.users.get(name)
    }

    fn commit(&mut self) {
        self.revision += 1;
        self.refresh();
    }

    fn refresh(&mut self) {
        let merged = self
            .users
            .values()
            .map(|u| {
                let perms = u
                    .roles
                    .iter()
                    .filter_map(|r| self.roles.get(r))
                    .flat_map(|r| r.perms.iter());
                (u.name.clone(), UserPermissions::merge(perms))
            })
            .collect();
        self.merged = Arc::new(merged);
    }

    // ---------------------------------------------------------------- changes

    pub fn enable(&mut self) -> Result<(), AuthError> {
        if self.enabled {
            return Ok(());
        }
        let root = self
            .users
            .get(ROOT_USER)
            .ok_or(AuthError::RootUserNotExist)?;
        if !has_root_role(root) {
            return Err(AuthError::RootRoleNotExist);
        }
        self.enabled = true;
        Ok(())
    }

    /// Returns whether anything changed (tokens are dropped when it did).
    pub fn disable(&mut self) -> bool {
        if !self.enabled {
            return false;
        }
        self.enabled = false;
        self.commit();
        true
    }

    pub fn user_add(&mut self, name: &str, password_hash: Option<String>) -> Result<(), AuthError> {
        if name.is_empty() {
            return Err(AuthError::UserEmpty);
        }
        if self.users.contains_key(name) {
            return Err(AuthError::UserAlreadyExist);
        }
        let user = User {
            name: name.to_string(),
            password_hash,
            roles: Vec::new(),
        };
        self.users.insert(name.to_string(), user);
        self.commit();
        Ok(())
    }

    pub fn user_delete(&mut self, name: &str) -> Result<(), AuthError> {
        if self.enabled && name == ROOT_USER {
            return Err(AuthError::InvalidAuthMgmt);
        }
        self.users.remove(name).ok_or(AuthError::UserNotFound)?;
        self.commit();
        Ok(())
    }

    pub fn user_change_password(&mut self, name: &str, hash: String) -> Result<(), AuthError> {
        let user = self.users.get_mut(name).ok_or(AuthError::UserNotFound)?;
        user.password_hash = Some(hash);
        self.commit();
        Ok(())
    }

    pub fn user_grant_role(&mut self, name: &str, role: &str) -> Result<(), AuthError> {
        if !self.users.contains_key(name) {
            return Err(AuthError::UserNotFound);
        }
        if role != ROOT_ROLE && !self.roles.contains_key(role) {
            return Err(AuthError::RoleNotFound);
        }
        let Some(user) = self.users.get_mut(name) else {
            return Err(AuthError::UserNotFound);
        };
        match user.roles.binary_search_by(|r| r.as_str().cmp(role)) {
            // Already granted: etcd answers success and changes nothing.
            Ok(_) => return Ok(()),
            Err(at) => user.roles.insert(at, role.to_string()),
        }
        self.commit();
        Ok(())
    }

    pub fn user_revoke_role(&mut self, name: &str, role: &str) -> Result<(), AuthError> {
        if self.enabled && name == ROOT_USER && role == ROOT_ROLE {
            return Err(AuthError::InvalidAuthMgmt);
        }
        let user = self.users.get_mut(name).ok_or(AuthError::UserNotFound)?;
        let before = user.roles.len();
        user.roles.retain(|r| r != role);
        if user.roles.len() == before {
            return Err(AuthError::RoleNotGranted);
        }
        self.commit();
        Ok(())
    }

    pub fn role_add(&mut self, name: &str) -> Result<(), AuthError> {
        if name.is_empty() {
            return Err(AuthError::RoleEmpty);
        }
        if self.roles.contains_key(name) {
            return Err(AuthError::RoleAlreadyExist);
        }
        self.roles.insert(
            name.to_string(),
            Role {
                name: name.to_string(),
                perms: Vec::new(),
            },
        );
        self.commit();
        Ok(())
    }

    pub fn role_delete(&mut self, name: &str) -> Result<(), AuthError> {
        if self.enabled && name == ROOT_ROLE {
            return Err(AuthError::InvalidAuthMgmt);
        }
        self.roles.remove(name).ok_or(AuthError::RoleNotFound)?;
        for user in self.users.values_mut() {
            user.roles.retain(|r| r != name);
        }
        self.commit();
        Ok(())
    }

    pub fn role_grant_permission(
        &mut self,
        role: &str,
        perm: &Permission,
    ) -> Result<(), AuthError> {
        let role = self.roles.get_mut(role).ok_or(AuthError::RoleNotFound)?;
        // etcd looks only at the first permission whose key is not below
        // the new one's: the same key and range end there is updated in
        // place, anything else is added and the list re-sorted by key.
        let at = role.perms.partition_point(|p| p.key < perm.key);
        match role.perms.get_mut(at) {
            Some(p) if p.key == perm.key && p.range_end == perm.range_end => {
                p.perm_type = perm.perm_type;
            }
            _ => {
                role.perms.push(perm.clone());
                role.perms.sort_by(|a, b| a.key.cmp(&b.key));
            }
        }
        self.commit();
        Ok(())
    }

    pub fn role_revoke_permission(
        &mut self,
        role: &str,
        key: &[u8],
        range_end: &[u8],
    ) -> Result<(), AuthError> {
        let role = self.roles.get_mut(role).ok_or(AuthError::RoleNotFound)?;
        let before = role.perms.len();
        role.perms
            .retain(|p| !(p.key == key && p.range_end == range_end));
        if role.perms.len() == before {
            return Err(AuthError::PermissionNotGranted);
        }
        self.commit();
        Ok(())
    }

    // ---------------------------------------------------------------- reads

    pub fn user_get(&self, name: &str) -> Result<&User, AuthError> {
        self.users.get(name).ok_or(AuthError::UserNotFound)
    }

    pub fn user_list(&self) -> Vec<String> {
        self.users.keys().cloned().collect()
    }

    pub fn role_get(&self, name: &str) -> Result<&Role, AuthError> {
        self.roles.get(name).ok_or(AuthError::RoleNotFound)
    }

    pub fn role_list(&self) -> Vec<String> {
        self.roles.keys().cloned().collect()
    }

    pub fn has_role(&self, user: &str, role: &str) -> bool {
        self.users
            .get(user)
            .is_some_and(|u| u.roles.iter().any(|r| r == role))
    }

    // ---------------------------------------------------------------- checks

    /// etcd's `isOpPermitted`: a key (`range_end` empty) or a range.
    pub fn check(
        &self,
        info: &AuthInfo,
        access: Access,
        key: &[u8],
        range_end: &[u8],
    ) -> Result<(), AuthError> {
        if !self.enabled {
            return Ok(());
        }
        if info.revision == 0 {
            return Err(AuthError::UserEmpty);
        }
        if info.revision < self.revision {
            return Err(AuthError::AuthOldRevision);
        }
        let user = self
            .users
            .get(&info.user)
            .ok_or(AuthError::PermissionDenied)?;
        if has_root_role(user) {
            return Ok(());
        }
        match self.merged.get(&info.user) {
            Some(perms) if perms.permits(access, key, range_end) => Ok(()),
            _ => Err(AuthError::PermissionDenied),
        }
    }

    /// etcd's `IsAdminPermitted`: the caller has the root role.
    pub fn check_admin(&self, info: &AuthInfo) -> Result<(), AuthError> {
        if !self.enabled {
            return Ok(());
        }
        if info.user.is_empty() {
            return Err(AuthError::UserEmpty);
        }
        let user = self.users.get(&info.user).ok_or(AuthError::UserNotFound)?;
        if !has_root_role(user) {
            return Err(AuthError::PermissionDenied);
        }
        Ok(())
    }
}

fn has_root_role(user: &User) -> bool {
    user.roles
        .binary_search_by(|r| r.as_str().cmp(ROOT_ROLE))
        .is_ok()
}
