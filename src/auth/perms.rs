//! Key-range permissions: how etcd 3.4 decides whether a user's roles cover
//! a key or a range (`auth/range_perm_cache.go`).
//!
//! A permission is a point (`range_end` empty), a range `[key, range_end)`,
//! or everything from `key` on (`range_end` = `"\0"`). A user's read and
//! write permissions are the union over its roles (`READWRITE` counts for
//! both). A single key is permitted when some permission contains it; a
//! range is permitted only when the union of permissions covers all of it
//! (etcd's `IntervalTree.Contains`), so `[a, c)` is covered by `[a, b)`
//! plus `[b, c)` but not by `[a, b)` alone.

use qed_wire::auth::{Permission, PermissionType};
use std::cmp::Ordering;

/// Read or write, what a check asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
}

/// An interval end: a key, or past every key.
#[derive(Debug, Clone, PartialEq, Eq)]
enum End {
    Key(Vec<u8>),
    Infinity,
}

impl End {
    fn cmp_key(&self, key: &[u8]) -> Ordering {
        match self {
            End::Key(k) => k.as_slice().cmp(key),
            End::Infinity => Ordering::Greater,
        }
    }

    fn max(self, other: End) -> End {
        match (&self, &other) {
            (End::Infinity, _) | (_, End::Infinity) => End::Infinity,
            (End::Key(a), End::Key(b)) => {
                if a >= b {
                    self
                } else {
                    other
                }
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Interval {
    begin: Vec<u8>,
    end: End,
}

impl Interval {
    /// A granted permission's interval (a point is `[key, key + "\0")`).
    fn of_permission(key: &[u8], range_end: &[u8]) -> Interval {
        let end = match range_end {
            [] => {
                let mut next = key.to_vec();
                next.push(0);
                End::Key(next)
            }
            [0] => End::Infinity,
            end => End::Key(end.to_vec()),
        };
        Interval {
            begin: key.to_vec(),
            end,
        }
    }

    /// Whether two intervals share a key (etcd's overlap test).
    fn overlaps(&self, begin: &[u8], end: &End) -> bool {
        let self_begin_before_end = end.cmp_key(&self.begin) == Ordering::Greater;
        let begin_before_self_end = self.end.cmp_key(begin) == Ordering::Greater;
        self_begin_before_end && begin_before_self_end
    }
}

/// One user's merged permissions, built from its roles.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserPermissions {
    read: Vec<Interval>,
    write: Vec<Interval>,
}

impl UserPermissions {
    /// Merges the permissions of every role the user has (roles that do
    /// not exist are skipped, as etcd does).
    pub fn merge<'a>(perms: impl IntoIterator<Item = &'a Permission>) -> UserPermissions {
        let mut merged = UserPermissions::default();
        for p in perms {
            let ivl = Interval::of_permission(&p.key, &p.range_end);
            match p.perm_type {
                PermissionType::Read => merged.read.push(ivl),
                PermissionType::Write => merged.write.push(ivl),
                PermissionType::ReadWrite => {
                    merged.read.push(ivl.clone());
                    merged.write.push(ivl);
                }
            }
        }
        merged.read.sort_by(|a, b| a.begin.cmp(&b.begin));
        merged.write.sort_by(|a, b| a.begin.cmp(&b.begin));
        merged
    }

    /// Whether `key` (with `range_end` as a request gives it: empty for one
    /// key, `"\0"` for everything from `key`) is permitted for `access`.
    pub fn permits(&self, access: Access, key: &[u8], range_end: &[u8]) -> bool {
        let granted = match access {
            Access::Read => &self.read,
            Access::Write => &self.write,
        };
        if range_end.is_empty() {
            return granted.iter().any(|ivl| {
                ivl.begin.as_slice() <= key && ivl.end.cmp_key(key) == Ordering::Greater
            });
        }
        let end = if range_end == [0] {
            End::Infinity
        } else {
            End::Key(range_end.to_vec())
        };
        covers(granted, key, &end)
    }
}

/// etcd's `IntervalTree.Contains`: the intervals overlapping `[begin, end)`,
/// in order of their start, form one contiguous run from at or before
/// `begin` to at or past `end`.
fn covers(sorted: &[Interval], begin: &[u8], end: &End) -> bool {
    let mut run: Option<(&[u8], End)> = None;
    for ivl in sorted.iter().filter(|i| i.overlaps(begin, end)) {
        run = match run {
            None => Some((ivl.begin.as_slice(), ivl.end.clone())),
            Some((first, reach)) => {
                // A gap between what is covered so far and this interval.
                if reach.cmp_key(&ivl.begin) == Ordering::Less {
                    return false;
                }
                Some((first, reach.max(ivl.end.clone())))
            }
        };
    }
    match run {
        None => false,
        Some((first, reach)) => {
            let reaches_end = match (&reach, end) {
                (End::Infinity, _) => true,
                (End::Key(_), End::Infinity) => false,
                (End::Key(r), End::Key(e)) => r >= e,
            };
            first <= begin && reaches_end
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn perm(t: PermissionType, key: &str, end: &str) -> Permission {
        Permission {
            perm_type: t,
            key: key.as_bytes().to_vec(),
            range_end: end.as_bytes().to_vec(),
        }
    }

    /// Cases from etcd's range_perm_cache_test.go and store_test.go, plus
    /// the shapes etcdctl grants (key, range, prefix, from-key).
    #[test]
    fn etcd_permission_table() {
        use Access::*;
        use PermissionType as P;
        let p = UserPermissions::merge(&[
            perm(P::Read, "a", "b"),
            perm(P::Read, "b", "c"),
            perm(P::Write, "single", ""),
            perm(P::ReadWrite, "pre/", "pre0"),
            perm(P::Read, "z", "\0"),
        ]);
        let cases: &[(Access, &str, &str, bool)] = &[
            (Read, "a", "", true),
            (Read, "abc", "", true),
            (Read, "b", "", true),
            (Read, "c", "", false),
            (Read, "a", "c", true), // two adjacent ranges cover it
            (Read, "a", "d", false),
            (Read, "", "b", false),
            (Write, "a", "", false),
            (Write, "single", "", true),
            (Write, "single0", "", false),
            (Write, "singl", "", false),
            (Write, "single", "single\0", true), // the point as a range
            (Write, "single", "singlf", false),
            (Read, "pre/x", "", true),
            (Write, "pre/x", "", true),
            (Read, "pre/", "pre0", true),
            (Read, "pre", "pre0", false),
            (Read, "z", "", true),
            (Read, "zzzz", "", true),
            (Read, "z", "\0", true),
            (Read, "y", "\0", false),
            (Read, "\0", "\0", false),
        ];
        for &(access, key, end, want) in cases {
            assert_eq!(
                p.permits(access, key.as_bytes(), end.as_bytes()),
                want,
                "{access:?} {key:?}..{end:?}"
            );
        }
    }

    #[test]
    fn nothing_granted_permits_nothing() {
        let p = UserPermissions::default();
        assert!(!p.permits(Access::Read, b"a", b""));
        assert!(!p.permits(Access::Read, b"a", b"\0"));
    }

    #[test]
    fn a_gap_between_ranges_is_not_covered() {
        let p = UserPermissions::merge(&[
            perm(PermissionType::Read, "a", "b"),
            perm(PermissionType::Read, "c", "d"),
        ]);
        assert!(!p.permits(Access::Read, b"a", b"d"));
        assert!(p.permits(Access::Read, b"c", b"d"));
    }
}
