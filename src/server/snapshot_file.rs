//! Snapshot files outside a running node: `qed snapshot status` and
//! `qed snapshot restore` (etcdutl's equivalents).
//!
//! A saved snapshot is the state machine image in the snapshot file framing
//! (`storage::snapshot`: magic, CRC, length), zero-padded to a multiple of
//! 512 bytes and followed by the sha256 of all that: the shape etcd streams,
//! which `etcdctl snapshot save` checks, so a snapshot saved through the gRPC
//! shim and one saved with `qed snapshot save` are the same file. Restoring
//! writes a new data directory whose only member is the one the restore
//! flags describe: like etcd, a restore starts a new cluster from the data,
//! it does not rejoin the old one.

use super::state_machine::{Limits, StateMachine};
use crate::storage::durable_log::{DurableLog, LogOptions};
use crate::storage::wal::DEFAULT_SEGMENT_BYTES;
use crate::wire::raft::{ConfState, HardState, SnapshotMeta};
use std::fmt;
use std::path::{Path, PathBuf};

/// What `qed snapshot status` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotSummary {
    /// HashKV of the state, comparable with `etcdctl endpoint hashkv`.
    pub hash: u32,
    pub revision: i64,
    pub total_keys: usize,
    pub total_size: u64,
}

#[derive(Debug)]
pub enum SnapshotFileError {
    Read {
        path: PathBuf,
        reason: String,
    },
    /// Not a snapshot, or damaged.
    Invalid {
        path: PathBuf,
        reason: String,
    },
    /// Restore never overwrites an existing member directory.
    Exists(PathBuf),
    Write {
        path: PathBuf,
        reason: String,
    },
}

impl fmt::Display for SnapshotFileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SnapshotFileError::Read { path, reason } => {
                write!(f, "cannot read {}: {reason}", path.display())
            }
            SnapshotFileError::Invalid { path, reason } => {
                write!(
                    f,
                    "{} is not a valid qed snapshot: {reason}",
                    path.display()
                )
            }
            SnapshotFileError::Exists(path) => write!(
                f,
                "data-dir {:?} exists; restore into a new directory",
                path.display().to_string()
            ),
            SnapshotFileError::Write { path, reason } => {
                write!(f, "cannot write {}: {reason}", path.display())
            }
        }
    }
}

impl std::error::Error for SnapshotFileError {}

const SHA256_LEN: usize = 32;
const PAGE: usize = 512;

/// Pads framed snapshot bytes to a 512-byte multiple and appends their sha256.
pub fn seal(mut framed: Vec<u8>) -> Vec<u8> {
    framed.resize(framed.len().div_ceil(PAGE) * PAGE, 0);
    let digest = ring::digest::digest(&ring::digest::SHA256, &framed);
    framed.extend_from_slice(digest.as_ref());
    framed
}

/// Checks the sha256 trailer and returns the padded framed bytes before it.
fn unseal(bytes: &[u8]) -> Result<&[u8], String> {
    if bytes.len() % PAGE != SHA256_LEN {
        return Err(format!(
            "sha256 checksum not found (file of {} bytes)",
            bytes.len()
        ));
    }
    let (body, sha) = bytes.split_at(bytes.len() - SHA256_LEN);
    if ring::digest::digest(&ring::digest::SHA256, body).as_ref() != sha {
        return Err("sha256 checksum mismatch".into());
    }
    Ok(body)
}

/// Reads and checks a snapshot file, reporting progress as
/// `progress(bytes_read, total)`.
fn load(
    path: &Path,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<StateMachine, SnapshotFileError> {
    use std::io::Read;
    let read_err = |e: std::io::Error| SnapshotFileError::Read {
        path: path.to_path_buf(),
        reason: e.to_string(),
    };
    let mut file = std::fs::File::open(path).map_err(read_err)?;
    let total = file.metadata().map_err(read_err)?.len();
    let mut bytes = Vec::with_capacity(usize::try_from(total).unwrap_or(0));
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).map_err(read_err)?;
        if n == 0 {
            break;
        }
        bytes.extend_from_slice(&buf[..n]);
        progress(bytes.len() as u64, total);
    }
    let invalid = |reason: String| SnapshotFileError::Invalid {
        path: path.to_path_buf(),
        reason,
    };
    let framed = unseal(&bytes).map_err(invalid)?;
    let image = crate::storage::snapshot::decode_padded(framed).map_err(invalid)?;
    // Limits do not matter for reading; restore sets its own.
    StateMachine::from_snapshot(
        image,
        Limits {
            lease: crate::lease::LeaseConfig::default(),
        },
        Default::default(),
    )
    .map_err(|e| invalid(e.to_string()))
}

fn summarize(state: &StateMachine, size: u64) -> SnapshotSummary {
    SnapshotSummary {
        hash: state.hash().unwrap_or(0),
        revision: state.revision(),
        total_keys: state.key_count(),
        total_size: size,
    }
}

/// `qed snapshot status FILE`.
pub fn status(path: &Path) -> Result<SnapshotSummary, SnapshotFileError> {
    let size = std::fs::metadata(path)
        .map(|m| m.len())
        .map_err(|e| SnapshotFileError::Read {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
    Ok(summarize(&load(path, &mut |_, _| {})?, size))
}

/// `qed snapshot restore FILE --data-dir DIR`: a data directory holding the
/// snapshot as the state of a one-member cluster whose member is `member_id`.
pub fn restore(
    path: &Path,
    data_dir: &Path,
    member_id: u64,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<SnapshotSummary, SnapshotFileError> {
    let member_dir = data_dir.join("member");
    if member_dir.exists() {
        return Err(SnapshotFileError::Exists(data_dir.to_path_buf()));
    }
    let state = load(path, progress)?;
    let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    let write_err = |reason: String| SnapshotFileError::Write {
        path: member_dir.clone(),
        reason,
    };
    let image = state.to_snapshot().map_err(|e| write_err(e.to_string()))?;
    let (mut log, _) = DurableLog::open(
        &member_dir,
        LogOptions {
            segment_bytes: DEFAULT_SEGMENT_BYTES,
            max_snapshots: 1,
            max_wals: 0,
        },
    )
    .map_err(|e| write_err(e.to_string()))?;
    // The restored state sits at its applied index, in term 1 of a cluster
    // whose only voter is this member.
    let index = state.applied().max(1);
    let meta = SnapshotMeta {
        index,
        term: 1,
        conf_state: ConfState {
            voters: vec![member_id],
            learners: Vec::new(),
        },
    };
    log.save_snapshot(&meta, image)
        .map_err(|e| write_err(e.to_string()))?;
    let hard_state = HardState {
        term: 1,
        vote: 0,
        commit: index,
    };
    log.append(Some(&hard_state), &[])
        .map_err(|e| write_err(e.to_string()))?;
    log.sync().map_err(|e| write_err(e.to_string()))?;
    Ok(summarize(&state, size))
}
