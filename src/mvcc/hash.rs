//! HashKV: a CRC32C over the key space's kept history, so members can be
//! compared for corruption (etcd's `HashByRev`).
//!
//! What is hashed, for `hash_kv(rev)`: every change with revision in
//! `(compact_revision, rev]`, tombstones included, plus each change at or
//! below the compaction point that compaction at `rev` would still keep
//! (the newest live value per key). Like etcd, when no key would keep
//! anything at `rev`, the changes below the compaction point are all
//! included. Changes are fed key by key (in key order, then revision
//! order) rather than in etcd's global revision order: the bytes differ from
//! etcd's anyway (etcd hashes its protobuf encoding), and only equality
//! between our own members matters. Each change contributes its revision,
//! key, value, create revision, version and lease, with lengths, so that
//! different histories cannot concatenate to the same bytes.

use super::store::Store;
use super::MvccError;

/// The answer to a HashKV request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HashKv {
    pub hash: u32,
    /// etcd reports its raw compact revision: -1 before any compaction.
    pub compact_revision: i64,
    /// The current revision (what etcd's response header carries).
    pub revision: i64,
}

impl Store {
    /// Hashes the key space as of `revision` (0: now).
    pub fn hash_kv(&self, revision: i64) -> Result<HashKv, MvccError> {
        if revision > 0 && revision <= self.compacted {
            return Err(MvccError::Compacted);
        }
        if revision > self.current {
            return Err(MvccError::FutureRev);
        }
        if revision < 0 {
            // etcd hashes nothing but its bucket name for a negative
            // revision (no revision is below it).
            return Ok(HashKv {
                hash: crc32c::crc32c(b"key"),
                compact_revision: self.compacted,
                revision: self.current,
            });
        }
        let rev = if revision == 0 {
            self.current
        } else {
            revision
        };
        let compacted = self.compacted;

        // etcd: revisions below the compaction point are filtered by the
        // keep set only when that set is non-empty.
        let keep_any = self.keys.values().any(|index| index.kept_at(rev).is_some());

        let mut crc = crc32c::crc32c(b"key");
        for (key, index) in self.keys.entries() {
            let kept = index.kept_at(rev);
            for (i, change) in index.changes().iter().enumerate() {
                let change = change.view();
                if change.main > rev {
                    break;
                }
                if change.main <= compacted && keep_any && kept != Some(i) {
                    continue;
                }
                crc = crc32c::crc32c_append(
                    crc,
                    &super::Revision::new(change.main, change.sub).to_bytes(),
                );
                crc = crc32c::crc32c_append(crc, &(key.len() as u64).to_be_bytes());
                crc = crc32c::crc32c_append(crc, key);
                crc = crc32c::crc32c_append(crc, &(change.value.len() as u64).to_be_bytes());
                crc = crc32c::crc32c_append(crc, change.value);
                crc = crc32c::crc32c_append(crc, &change.create.to_be_bytes());
                crc = crc32c::crc32c_append(crc, &change.version.to_be_bytes());
                crc = crc32c::crc32c_append(crc, &change.lease.to_be_bytes());
            }
        }
        Ok(HashKv {
            hash: crc,
            compact_revision: compacted,
            revision: self.current,
        })
    }
}
