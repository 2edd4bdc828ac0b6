//! etcd's backend layout on top of [`crate::bbolt`]: importing an etcd v3
//! snapshot (`etcdctl snapshot save`, etcd 3.4/3.5) into qed's state, and
//! exporting qed's state as one that etcd's tools and etcd itself accept.
//!
//! The layout (etcd 3.4 `mvcc/kvstore.go`, `lease/lessor.go`,
//! `auth/store.go`, `etcdserver/api/membership/store.go`): top-level
//! buckets `key`, `meta`, `lease`, `auth`, `authUsers`, `authRoles`,
//! `members`, `members_removed`, `cluster`, `alarm`. In `key`, each change
//! is stored under its 17-byte revision (main, `_`, sub, all big-endian),
//! with an 18th byte `t` for a delete, and a `mvccpb.KeyValue` value (only
//! the key for a delete). `meta` holds `consistent_index` (u64 BE) and the
//! finished and scheduled compaction revisions (17-byte revisions). `lease`
//! maps the ID (8 bytes BE) to a `leasepb.Lease`; attached keys are not
//! stored, they are the keys whose newest value names the lease. `auth`
//! holds `authEnabled` (one byte) and `authRevision` (u64 BE); users and
//! roles are `authpb` messages under their names.
//!
//! Invariants: pure (bytes in, bytes or state out; time and files are the
//! caller's). Import refuses a damaged file with an error naming what is
//! wrong, never panics, and keeps etcd's meaning: history since the last
//! compaction with create/mod revisions and versions as etcd had them, a
//! compaction etcd had scheduled but not finished is completed (as etcd's
//! own restart does), and the current revision is the newest change or the
//! compaction point, whichever is higher (etcd's `restore`). Export writes
//! every kept change, so an etcd started from it answers reads at every
//! revision qed would.

pub mod proto;

#[cfg(test)]
mod tests;

use std::fmt;

use crate::auth::store::{Role, User};
use crate::auth::AuthSnapshot;
use crate::bbolt::{self, Db, DbWriter, Entry, ReadError, WriteError};
use crate::lease::{LeaseRecord, LeaseSnapshot};
use crate::mvcc::{Change, ChangeRef, Histories, Revision, Store};
use qed_wire::auth::{Permission, PermissionType};

const KEY: &[u8] = b"key";
const META: &[u8] = b"meta";
const LEASE: &[u8] = b"lease";
const AUTH: &[u8] = b"auth";
const AUTH_USERS: &[u8] = b"authUsers";
const AUTH_ROLES: &[u8] = b"authRoles";
/// Buckets etcd keeps that qed writes empty: membership is reset by every
/// restore (etcd's and ours), and alarms are not carried over.
const EMPTY_BUCKETS: [&[u8]; 4] = [b"alarm", b"cluster", b"members", b"members_removed"];

const CONSISTENT_INDEX: &[u8] = b"consistent_index";
const FINISHED_COMPACT: &[u8] = b"finishedCompactRev";
const SCHEDULED_COMPACT: &[u8] = b"scheduledCompactRev";
const AUTH_ENABLED: &[u8] = b"authEnabled";
const AUTH_REVISION: &[u8] = b"authRevision";

const REV_LEN: usize = 17;
const TOMBSTONE_MARK: u8 = b't';
const SHA256_LEN: usize = 32;

/// Counts for the restore summary, as etcdutl prints them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ImportCounts {
    /// Keys that exist at the current revision.
    pub keys: usize,
    /// Changes (entries of the `key` bucket) kept after compaction.
    pub revisions: usize,
    pub leases: usize,
    pub users: usize,
    pub roles: usize,
}

/// An etcd backend as qed state.
#[derive(Debug)]
pub struct Imported<'a> {
    /// The key space; keys borrow from the file.
    pub histories: Histories<&'a [u8]>,
    pub leases: LeaseSnapshot,
    /// Users (with etcd's bcrypt hashes), roles, the enabled flag and the
    /// auth revision.
    pub auth: AuthSnapshot,
    /// etcd's applied index when the snapshot was taken.
    pub consistent_index: u64,
    pub counts: ImportCounts,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImportError {
    /// The file ends in what looks like etcd's sha256 trailer, which does
    /// not match.
    Checksum,
    Bbolt(ReadError),
    /// The bbolt file is sound but is not etcd's layout, or an entry in it
    /// does not decode; the text names the bucket and entry.
    Layout(String),
}

impl fmt::Display for ImportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ImportError::Checksum => f.write_str("sha256 checksum mismatch"),
            ImportError::Bbolt(e) => e.fmt(f),
            ImportError::Layout(why) => write!(f, "not an etcd backend: {why}"),
        }
    }
}

impl std::error::Error for ImportError {}

impl From<ReadError> for ImportError {
    fn from(e: ReadError) -> Self {
        ImportError::Bbolt(e)
    }
}

fn layout(why: String) -> ImportError {
    ImportError::Layout(why)
}

/// Whether `bytes` start like a bbolt file (the first meta's magic).
pub fn looks_like_bbolt(bytes: &[u8]) -> bool {
    bytes
        .get(bbolt::PAGE_HEADER..bbolt::PAGE_HEADER + 4)
        .is_some_and(|m| m == bbolt::MAGIC.to_le_bytes())
}

/// A 17/18-byte revision key: (revision, is a delete).
fn parse_revision(key: &[u8]) -> Result<(Revision, bool), String> {
    let tombstone = match key.len() {
        REV_LEN => false,
        18 if key[REV_LEN] == TOMBSTONE_MARK => true,
        _ => return Err(format!("revision key {key:x?}: bad length or mark")),
    };
    if key[8] != b'_' {
        return Err(format!("revision key {key:x?}: no '_' separator"));
    }
    let main = i64::from_be_bytes(key[..8].try_into().unwrap_or_default());
    let sub = u64::from_be_bytes(key[9..REV_LEN].try_into().unwrap_or_default());
    let sub = u32::try_from(sub).map_err(|_| format!("revision {main}: sub {sub} too large"))?;
    if main < 0 {
        return Err(format!("revision {main} below 0"));
    }
    Ok((Revision::new(main, sub), tombstone))
}

fn revision_key(rev: Revision, tombstone: bool) -> Vec<u8> {
    let mut k = Vec::with_capacity(REV_LEN + 1);
    k.extend_from_slice(&(rev.main as u64).to_be_bytes());
    k.push(b'_');
    k.extend_from_slice(&u64::from(rev.sub).to_be_bytes());
    if tombstone {
        k.push(TOMBSTONE_MARK);
    }
    k
}

/// Calls `f` on each plain value of the top-level bucket `name` (none if
/// the bucket is missing).
fn each_value<'a>(
    db: &Db<'a>,
    name: &[u8],
    mut f: impl FnMut(&'a [u8], &'a [u8]) -> Result<(), String>,
) -> Result<(), ImportError> {
    let Some(bucket) = db.bucket(db.root(), name)? else {
        return Ok(());
    };
    let mut failed = None;
    let bucket_name = String::from_utf8_lossy(name).into_owned();
    db.for_each(bucket, &mut |k, entry| match entry {
        Entry::Value(v) => f(k, v).map_err(|e| {
            failed = Some(e);
            ReadError::Corrupt {
                page: 0,
                reason: String::new(),
            }
        }),
        Entry::Bucket(_) => Ok(()),
    })
    .map_err(|e| match failed.take() {
        Some(why) => layout(format!("bucket {bucket_name}: {why}")),
        None => ImportError::Bbolt(e),
    })
}

/// Reads an etcd snapshot or backend file as qed state. etcd's sha256
/// trailer is optional: present when the size is 32 past a multiple of 512
/// (etcd's rule), and then checked.
///
/// The sha256 trailer, if there is one, is checked on a second thread while
/// this one decodes; a mismatch wins over any decoding error.
pub fn import(file: &[u8]) -> Result<Imported<'_>, ImportError> {
    if file.len() % 512 != SHA256_LEN {
        return import_db(file);
    }
    let (body, sha) = file.split_at(file.len() - SHA256_LEN);
    std::thread::scope(|scope| {
        let check =
            scope.spawn(move || ring::digest::digest(&ring::digest::SHA256, body).as_ref() == sha);
        let imported = import_db(body);
        match check.join() {
            Ok(true) => imported,
            _ => Err(ImportError::Checksum),
        }
    })
}

fn import_db(bytes: &[u8]) -> Result<Imported<'_>, ImportError> {
    let db = Db::open(bytes)?;
    if db.bucket(db.root(), KEY)?.is_none() || db.bucket(db.root(), META)?.is_none() {
        return Err(layout("no `key` or `meta` bucket".into()));
    }

    let (mut finished, mut scheduled, mut consistent_index) = (-1i64, -1i64, 0u64);
    each_value(&db, META, |k, v| {
        let rev = || parse_revision(v).map(|(r, _)| r.main);
        match k {
            FINISHED_COMPACT => finished = rev()?,
            SCHEDULED_COMPACT => scheduled = rev()?,
            CONSISTENT_INDEX => {
                consistent_index = u64::from_be_bytes(
                    v.try_into()
                        .map_err(|_| format!("consistent_index of {} bytes", v.len()))?,
                )
            }
            _ => {}
        }
        Ok(())
    })?;
    // etcd finishes a scheduled compaction when it starts again.
    let compacted = finished.max(scheduled);

    // Every change with its key (borrowed from the file), in the bucket's
    // revision order, then sorted by key on two threads: a stable sort, so
    // each key's changes stay in revision order. One allocation for all
    // (the count comes from page headers, so it is bounded by the file's
    // size); a hash map of per-key vectors cost a malloc per key, and its
    // hasher (FxHash's multiply) put keys that differ only in their last
    // bytes into the same buckets: a 1M-key restore took two minutes.
    let count = match db.bucket(db.root(), KEY)? {
        Some(b) => db.entry_count(b)?,
        None => 0,
    };
    let mut changes: Vec<(&[u8], Change)> = Vec::with_capacity(count);
    let mut newest = 0i64;
    each_value(&db, KEY, |k, v| {
        let (rev, tombstone) = parse_revision(k)?;
        if rev.main < 1 {
            return Err(format!("change at revision {}", rev.main));
        }
        let (key, kv) =
            proto::KeyValue::decode(v).map_err(|e| format!("revision {}: {e}", rev.main))?;
        if key.is_empty() {
            return Err(format!("revision {}: empty key", rev.main));
        }
        newest = newest.max(rev.main);
        let change = if tombstone {
            Change::tombstone(rev)
        } else {
            Change {
                main: rev.main,
                create: kv.create_revision,
                version: kv.version,
                lease: kv.lease,
                sub: rev.sub,
                value: kv.value.into(),
            }
        };
        changes.push((key, change));
        Ok(())
    })?;
    let revision = newest.max(compacted).max(1);
    let changes = sort_by_key_on_two_threads(changes);

    let mut keys: Vec<(&[u8], Vec<Change>)> = Vec::new();
    for (key, change) in changes {
        match keys.last_mut() {
            Some((last, history)) if *last == key => history.push(change),
            _ => keys.push((key, vec![change])),
        }
    }
    keys.retain_mut(|(_, history)| {
        // The bucket is in revision order; a damaged one may not be.
        if !history
            .windows(2)
            .all(|p| p[0].revision() < p[1].revision())
        {
            history.sort_by_key(Change::revision);
        }
        compact_history(history, compacted);
        !history.is_empty()
    });

    let mut leases: Vec<LeaseRecord> = Vec::new();
    each_value(&db, LEASE, |k, v| {
        let lease = proto::Lease::decode(v).map_err(|e| format!("lease {k:x?}: {e}"))?;
        if lease.id > 0 {
            leases.push(LeaseRecord {
                id: lease.id,
                ttl: lease.ttl,
                keys: Vec::new(),
            });
        }
        Ok(())
    })?;
    leases.sort_by_key(|l| l.id);
    leases.dedup_by_key(|l| l.id);

    let mut counts = ImportCounts {
        leases: leases.len(),
        ..ImportCounts::default()
    };
    for (key, changes) in &keys {
        counts.revisions += changes.len();
        let Some(live) = changes.last().filter(|c| !c.is_tombstone()) else {
            continue;
        };
        counts.keys += 1;
        if live.lease != 0 {
            if let Ok(i) = leases.binary_search_by_key(&live.lease, |l| l.id) {
                leases[i].keys.push(key.to_vec());
            }
        }
    }

    let auth = import_auth(&db)?;
    counts.users = auth.users.len();
    counts.roles = auth.roles.len();

    let histories = Histories::new(revision, compacted, keys).map_err(layout)?;
    Ok(Imported {
        histories,
        leases: LeaseSnapshot { leases },
        auth,
        consistent_index,
        counts,
    })
}

/// `items` stably sorted by key, each half on its own thread, then merged
/// (equal keys: the first half's first, so the order among them holds).
fn sort_by_key_on_two_threads<T: Send>(mut items: Vec<(&[u8], T)>) -> Vec<(&[u8], T)> {
    let mut right = items.split_off(items.len() / 2);
    let mut left = items;
    let right = std::thread::scope(|scope| {
        let sorting = scope.spawn(move || {
            right.sort_by(|a, b| a.0.cmp(b.0));
            right
        });
        left.sort_by(|a, b| a.0.cmp(b.0));
        // Comparing byte slices does not panic; if it did, so do we.
        sorting
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    });
    let mut merged = Vec::with_capacity(left.len() + right.len());
    let (mut left, mut right) = (left.into_iter().peekable(), right.into_iter().peekable());
    loop {
        let take_left = match (left.peek(), right.peek()) {
            (Some(l), Some(r)) => l.0 <= r.0,
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (None, None) => break,
        };
        merged.extend(if take_left { left.next() } else { right.next() });
    }
    merged
}

/// etcd's compaction of one key's history at `at`: of the changes at or
/// below it, only the newest is kept, and not if it is a delete. A backend
/// saved mid-compaction still holds more; this finishes the job.
fn compact_history(changes: &mut Vec<Change>, at: i64) {
    if at < 0 {
        return;
    }
    let below = changes.partition_point(|c| c.main <= at);
    if below == 0 {
        return;
    }
    let keep_last = !changes[below - 1].is_tombstone();
    changes.drain(..if keep_last { below - 1 } else { below });
}

fn import_auth(db: &Db<'_>) -> Result<AuthSnapshot, ImportError> {
    let mut auth = AuthSnapshot {
        enabled: false,
        // etcd commits auth revision 1 when it creates the buckets.
        revision: 1,
        users: Vec::new(),
        roles: Vec::new(),
    };
    each_value(db, AUTH, |k, v| {
        match k {
            AUTH_ENABLED => auth.enabled = v == [1],
            AUTH_REVISION => {
                auth.revision = u64::from_be_bytes(
                    v.try_into()
                        .map_err(|_| format!("authRevision of {} bytes", v.len()))?,
                )
                .max(1)
            }
            _ => {}
        }
        Ok(())
    })?;
    let text =
        |what: &str, b: Vec<u8>| String::from_utf8(b).map_err(|_| format!("{what} is not UTF-8"));
    each_value(db, AUTH_USERS, |k, v| {
        let name = String::from_utf8_lossy(k).into_owned();
        let user = proto::User::decode(v).map_err(|e| format!("user {name}: {e}"))?;
        let mut roles = user.roles;
        roles.sort();
        roles.dedup();
        auth.users.push(User {
            name: text("user name", user.name)?,
            password_hash: if user.no_password || user.password.is_empty() {
                None
            } else {
                Some(text("password hash", user.password)?)
            },
            roles,
        });
        Ok(())
    })?;
    each_value(db, AUTH_ROLES, |k, v| {
        let name = String::from_utf8_lossy(k).into_owned();
        let role = proto::Role::decode(v).map_err(|e| format!("role {name}: {e}"))?;
        let mut perms = role
            .permissions
            .into_iter()
            .map(|p| {
                let perm_type = match p.perm_type {
                    0 => PermissionType::Read,
                    1 => PermissionType::Write,
                    2 => PermissionType::ReadWrite,
                    t => return Err(format!("role {name}: permission type {t}")),
                };
                Ok(Permission {
                    perm_type,
                    key: p.key,
                    range_end: p.range_end,
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        perms.sort_by(|a, b| (&a.key, &a.range_end).cmp(&(&b.key, &b.range_end)));
        auth.roles.push(Role {
            name: text("role name", role.name)?,
            perms,
        });
        Ok(())
    })?;
    auth.users.sort_by(|a, b| a.name.cmp(&b.name));
    auth.users.dedup_by(|a, b| a.name == b.name);
    auth.roles.sort_by(|a, b| a.name.cmp(&b.name));
    auth.roles.dedup_by(|a, b| a.name == b.name);
    Ok(auth)
}

/// qed's state as an etcd 3.4 backend file (no trailer): every kept change
/// of `store`, its compaction point, `leases`, the auth state (users with
/// their bcrypt hashes, roles, enabled flag, auth revision; a user or role
/// whose name is longer than bbolt allows is left out, see
/// [`unexportable_auth_names`]),
/// `consistent_index` as the applied index, and the membership and alarm
/// buckets empty.
pub fn export(
    store: &Store,
    leases: &LeaseSnapshot,
    auth: &AuthSnapshot,
    consistent_index: u64,
) -> Result<Vec<u8>, WriteError> {
    let mut db = DbWriter::default();
    for name in EMPTY_BUCKETS {
        db.bucket(name)?.finish()?;
    }
    export_auth(&mut db, auth)?;

    let mut changes: Vec<&ChangeRef> = store
        .histories()
        .flat_map(|(_, changes)| changes.iter())
        .collect();
    changes.sort_unstable_by_key(|c| c.revision());
    let mut bucket = db.bucket(KEY)?;
    let mut value = Vec::new();
    for c in changes {
        let c = c.view();
        let tombstone = c.version == 0;
        value.clear();
        if tombstone {
            proto::encode_key_value(&mut value, c.key, 0, 0, 0, &[], 0);
        } else {
            proto::encode_key_value(
                &mut value, c.key, c.create, c.main, c.version, c.value, c.lease,
            );
        }
        bucket.put(
            &revision_key(Revision::new(c.main, c.sub), tombstone),
            &value,
        )?;
    }
    bucket.finish()?;

    let mut records: Vec<&LeaseRecord> = leases.leases.iter().filter(|l| l.id > 0).collect();
    records.sort_by_key(|l| l.id);
    records.dedup_by_key(|l| l.id);
    let mut bucket = db.bucket(LEASE)?;
    for l in records {
        value.clear();
        proto::Lease {
            id: l.id,
            ttl: l.ttl,
        }
        .encode(&mut value);
        bucket.put(&(l.id as u64).to_be_bytes(), &value)?;
    }
    bucket.finish()?;

    let mut meta = db.bucket(META)?;
    meta.put(CONSISTENT_INDEX, &consistent_index.to_be_bytes())?;
    let compacted = store.compact_revision();
    // qed's store starts at -1 (never compacted); 0 means the same to etcd.
    if compacted > 0 {
        let rev = revision_key(Revision::new(compacted, 0), false);
        meta.put(FINISHED_COMPACT, &rev)?;
        meta.put(SCHEDULED_COMPACT, &rev)?;
    }
    meta.finish()?;
    db.finish()
}

/// Whether etcd could hold a user or role of this name: it is a bbolt key,
/// and bbolt refuses keys over [`bbolt::MAX_KEY_SIZE`] (etcd cannot create
/// such a name at all; qed can).
fn exportable(name: &str) -> bool {
    !name.is_empty() && name.len() <= bbolt::MAX_KEY_SIZE
}

/// The users and roles [`export`] leaves out because etcd cannot hold
/// their names, for the caller to warn about.
pub fn unexportable_auth_names(auth: &AuthSnapshot) -> Vec<&str> {
    let users = auth.users.iter().map(|u| u.name.as_str());
    let roles = auth.roles.iter().map(|r| r.name.as_str());
    users.chain(roles).filter(|n| !exportable(n)).collect()
}

fn export_auth(db: &mut DbWriter, auth: &AuthSnapshot) -> Result<(), WriteError> {
    let mut flags = db.bucket(AUTH)?;
    flags.put(AUTH_ENABLED, &[u8::from(auth.enabled)])?;
    flags.put(AUTH_REVISION, &auth.revision.to_be_bytes())?;
    flags.finish()?;

    let mut users: Vec<&User> = auth.users.iter().filter(|u| exportable(&u.name)).collect();
    users.sort_by(|a, b| a.name.cmp(&b.name));
    let mut bucket = db.bucket(AUTH_USERS)?;
    let mut value = Vec::new();
    for u in users {
        value.clear();
        proto::User {
            name: u.name.as_bytes().to_vec(),
            password: u
                .password_hash
                .as_deref()
                .unwrap_or_default()
                .as_bytes()
                .to_vec(),
            roles: u.roles.clone(),
            no_password: u.password_hash.is_none(),
        }
        .encode(&mut value);
        bucket.put(u.name.as_bytes(), &value)?;
    }
    bucket.finish()?;

    let mut roles: Vec<&Role> = auth.roles.iter().filter(|r| exportable(&r.name)).collect();
    roles.sort_by(|a, b| a.name.cmp(&b.name));
    let mut bucket = db.bucket(AUTH_ROLES)?;
    for r in roles {
        value.clear();
        proto::Role {
            name: r.name.as_bytes().to_vec(),
            permissions: r
                .perms
                .iter()
                .map(|p| proto::Permission {
                    perm_type: match p.perm_type {
                        PermissionType::Read => 0,
                        PermissionType::Write => 1,
                        PermissionType::ReadWrite => 2,
                    },
                    key: p.key.clone(),
                    range_end: p.range_end.clone(),
                })
                .collect(),
        }
        .encode(&mut value);
        bucket.put(r.name.as_bytes(), &value)?;
    }
    bucket.finish()
}
