//! Durable state on disk: WAL segments and snapshot files.
//!
//! The WAL ([`wal`]) is a sequence of append-only, preallocated segment
//! files of checksummed records; the snapshot store ([`snapshot`]) keeps a
//! few whole-state snapshots, each written atomically. Recovery is the newest
//! snapshot plus the WAL records after it. Both are byte-level: they know
//! record kinds and checksums, not what Raft puts in them.
//!
//! All of it writes through the file layer in [`fs`], so tests can cut the
//! power under it (`sim_fs`).
//!
//! Invariants: nothing is reported written until it is fsynced, and no file
//! or directory entry is relied on before its directory is fsynced too; a
//! torn write at the tail of the last segment (one the power cut
//! interrupted, never acknowledged) is truncated; any other damage, bit rot
//! in the last synced record included, stops recovery with an error naming
//! the file and offset (the exact rules are in [`wal`]). Nothing is ever
//! skipped silently.

pub mod durable_log;
pub mod fs;
#[cfg(test)]
mod power_cut;
#[cfg(test)]
pub mod sim_fs;
pub mod snapshot;
pub mod wal;

use std::fmt;
use std::path::{Path, PathBuf};

/// What went wrong with the files, and where.
#[derive(Debug)]
pub enum StorageError {
    /// An operating-system error on a file or directory.
    Io {
        path: PathBuf,
        op: &'static str,
        source: std::io::Error,
    },
    /// A record or file failed its checksum or structure check.
    Corrupt {
        path: PathBuf,
        offset: u64,
        reason: String,
    },
    /// A WAL segment is missing from the sequence.
    MissingSegment {
        dir: PathBuf,
        after: String,
        expected_seq: u64,
    },
    /// The log does not continue where the snapshot ends.
    Gap { dir: PathBuf, reason: String },
    /// A record is larger than a segment can hold.
    RecordTooLarge { len: usize, max: u64 },
}

impl fmt::Display for StorageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StorageError::Io { path, op, source } => {
                write!(f, "cannot {op} {}: {source}", path.display())
            }
            StorageError::Corrupt {
                path,
                offset,
                reason,
            } => write!(
                f,
                "{} is damaged at offset {offset}: {reason}; restore this member from a snapshot \
                 (qed snapshot restore) or remove it from the cluster and add it back empty",
                path.display()
            ),
            StorageError::MissingSegment {
                dir,
                after,
                expected_seq,
            } => write!(
                f,
                "WAL in {} is missing segment {expected_seq:016x} after {after}; restore this \
                 member from a snapshot or re-add it empty",
                dir.display()
            ),
            StorageError::Gap { dir, reason } => write!(
                f,
                "WAL in {} has a gap: {reason}; restore this member from a snapshot or re-add it empty",
                dir.display()
            ),
            StorageError::RecordTooLarge { len, max } => {
                write!(
                    f,
                    "WAL record of {len} bytes does not fit a {max}-byte segment"
                )
            }
        }
    }
}

impl std::error::Error for StorageError {}

pub(crate) fn io_error<'a>(
    path: &'a Path,
    op: &'static str,
) -> impl FnOnce(std::io::Error) -> StorageError + 'a {
    move |source| StorageError::Io {
        path: path.to_path_buf(),
        op,
        source,
    }
}

/// Makes a rename or file creation in `dir` durable.
pub(crate) fn sync_dir(fs: &dyn fs::Fs, dir: &Path) -> Result<(), StorageError> {
    fs.sync_dir(dir).map_err(io_error(dir, "fsync directory"))
}

/// Creates `dir` (and missing parents) and makes each new entry durable in
/// its parent, so files synced into it later cannot vanish with it.
pub fn create_dir_durable(fs: &dyn fs::Fs, dir: &Path) -> Result<(), StorageError> {
    let missing: Vec<&Path> = dir
        .ancestors()
        .take_while(|a| !a.as_os_str().is_empty() && !fs.exists(a))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    fs.create_dir_all(dir)
        .map_err(io_error(dir, "create directory"))?;
    for created in missing.iter().rev() {
        match created.parent() {
            // A relative path's first component lives in the working directory.
            Some(parent) if parent.as_os_str().is_empty() => sync_dir(fs, Path::new("."))?,
            Some(parent) => sync_dir(fs, parent)?,
            None => {}
        }
    }
    Ok(())
}
