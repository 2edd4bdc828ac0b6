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
//!
//! Two formats are read, told apart by their first bytes: qed's own (above;
//! still what a node's internal snapshots are) and an etcd v3 backend (a
//! bbolt file, as `etcdctl snapshot save` writes it, with or without the
//! sha256 trailer), imported by `crate::etcd_db`. What a node streams for
//! `qed snapshot save` and etcd's Maintenance.Snapshot is the etcd form
//! ([`etcd_file`]), so `etcdctl snapshot status` and `restore` take it.

use super::state_machine::{Limits, SnapshotImage, StateMachine};
use crate::etcd_db::Imported;
use crate::storage::durable_log::{DurableLog, LogOptions};
use crate::storage::wal::DEFAULT_SEGMENT_BYTES;
use crate::wire::raft::{ConfState, HardState, SnapshotMeta};
use std::fmt;
use std::path::{Path, PathBuf};

/// What `qed snapshot status` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotSummary {
    /// HashKV of the state, comparable with `etcdctl endpoint hashkv`
    /// (computed for `status` only; a restore does not need it).
    pub hash: Option<u32>,
    pub revision: i64,
    pub total_keys: usize,
    pub total_size: u64,
    /// Kept changes (the history since the last compaction).
    pub revisions: usize,
    pub leases: usize,
    /// Auth users.
    pub users: usize,
    pub format: SnapshotFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotFormat {
    Qed,
    Etcd,
}

impl fmt::Display for SnapshotFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SnapshotFormat::Qed => "qed",
            SnapshotFormat::Etcd => "etcd v3 (bbolt)",
        })
    }
}

/// A loaded snapshot and the format it was in.
/// A snapshot file's content: qed's own image as a state machine, or an
/// etcd backend as imported (keys borrowed from the file's bytes).
enum Loaded<'a> {
    Qed(StateMachine),
    Etcd(Imported<'a>),
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
                write!(f, "{} is not a valid snapshot: {reason}", path.display())
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

/// The node's state as an etcd 3.4 backend file with etcd's sha256
/// trailer: what Maintenance.Snapshot streams.
pub fn etcd_file(state: &StateMachine) -> Result<Vec<u8>, String> {
    let auth = state.auth().snapshot();
    for name in crate::etcd_db::unexportable_auth_names(&auth) {
        log::warn!(
            "snapshot: auth name of {} bytes left out (longer than etcd's backend allows)",
            name.len()
        );
    }
    let exported = crate::etcd_db::export(
        &state.store_view(),
        &state.lease_snapshot(),
        &auth,
        state.applied(),
    );
    // The export read every value, those left in the loaded snapshot file
    // too: give their pages back (see `release_loaded_pages`).
    state.release_loaded_pages();
    exported.map(seal).map_err(|e| e.to_string())
}

/// Limits for a state machine that is only read or re-encoded: they do
/// not matter there; restore sets its own.
fn reading_limits() -> Limits {
    Limits {
        lease: crate::lease::LeaseConfig::default(),
    }
}

/// Reads a snapshot file, reporting progress as `progress(bytes_read,
/// total)`.
fn read(path: &Path, progress: &mut dyn FnMut(u64, u64)) -> Result<Vec<u8>, SnapshotFileError> {
    use std::io::Read;
    let read_err = |e: std::io::Error| SnapshotFileError::Read {
        path: path.to_path_buf(),
        reason: e.to_string(),
    };
    let mut file = std::fs::File::open(path).map_err(read_err)?;
    let total = file.metadata().map_err(read_err)?.len();
    // Read straight into the buffer, 1 MiB at a time for the progress line.
    let mut bytes = Vec::with_capacity(usize::try_from(total).unwrap_or(0));
    loop {
        let n = (&mut file)
            .take(1 << 20)
            .read_to_end(&mut bytes)
            .map_err(read_err)?;
        if n == 0 {
            break;
        }
        progress(bytes.len() as u64, total);
    }
    Ok(bytes)
}

/// Checks and decodes a snapshot file's bytes, in either format.
fn load<'a>(path: &Path, bytes: &'a [u8]) -> Result<Loaded<'a>, SnapshotFileError> {
    let invalid = |reason: String| SnapshotFileError::Invalid {
        path: path.to_path_buf(),
        reason,
    };
    if crate::etcd_db::looks_like_bbolt(bytes) {
        let imported = crate::etcd_db::import(bytes).map_err(|e| invalid(e.to_string()))?;
        return Ok(Loaded::Etcd(imported));
    }
    let framed = unseal(bytes).map_err(invalid)?;
    let image = crate::storage::snapshot::decode_padded(framed).map_err(invalid)?;
    let state = StateMachine::from_snapshot(image, reading_limits(), Default::default())
        .map_err(|e| invalid(e.to_string()))?;
    Ok(Loaded::Qed(state))
}

fn save_image<KV: crate::mvcc::KeySpaceImage>(
    log: &DurableLog,
    meta: &SnapshotMeta,
    image: &SnapshotImage<'_, KV>,
) -> Result<(), crate::storage::StorageError> {
    log.snapshot_writer()
        .save_streamed(meta, image.len(), |out| image.stream_to(out))
}

/// An imported etcd backend as a state machine at applied index 1 (the
/// restored snapshot's index, see `restore`).
fn etcd_state(imported: Imported<'_>) -> StateMachine {
    StateMachine::from_parts(
        imported.histories.into_store(),
        imported.leases,
        imported.auth,
        1,
        reading_limits(),
        Default::default(),
    )
}

fn summarize(loaded: &Loaded<'_>, size: u64) -> SnapshotSummary {
    match loaded {
        Loaded::Qed(state) => SnapshotSummary {
            hash: None,
            revision: state.revision(),
            total_keys: state.key_count(),
            total_size: size,
            revisions: state.store_view().history_len(),
            leases: state.lease_snapshot().leases.len(),
            users: state.auth().snapshot().users.len(),
            format: SnapshotFormat::Qed,
        },
        Loaded::Etcd(imported) => SnapshotSummary {
            hash: None,
            revision: imported.histories.revision(),
            total_keys: imported.counts.keys,
            total_size: size,
            revisions: imported.counts.revisions,
            leases: imported.leases.leases.len(),
            users: imported.auth.users.len(),
            format: SnapshotFormat::Etcd,
        },
    }
}

/// `qed snapshot status FILE`.
pub fn status(path: &Path) -> Result<SnapshotSummary, SnapshotFileError> {
    let bytes = read(path, &mut |_, _| {})?;
    let loaded = load(path, &bytes)?;
    let summary = summarize(&loaded, bytes.len() as u64);
    let state = match loaded {
        Loaded::Qed(state) => state,
        Loaded::Etcd(imported) => etcd_state(imported),
    };
    Ok(SnapshotSummary {
        hash: Some(state.hash().unwrap_or(0)),
        ..summary
    })
}

/// `qed snapshot restore FILE --data-dir DIR`: a data directory holding the
/// snapshot as the state of a new cluster whose voters are `voters` (from
/// `--initial-cluster`; each member is restored from the same file into its
/// own directory, as with etcd).
///
/// An etcd file's image is encoded straight from the import (the same
/// bytes a state machine built from it would write), so a restore never
/// builds the key maps it does not serve from.
pub fn restore(
    path: &Path,
    data_dir: &Path,
    voters: &[u64],
    progress: &mut dyn FnMut(u64, u64),
) -> Result<SnapshotSummary, SnapshotFileError> {
    let member_dir = data_dir.join("member");
    if member_dir.exists() {
        return Err(SnapshotFileError::Exists(data_dir.to_path_buf()));
    }
    let bytes = read(path, progress)?;
    let loaded = load(path, &bytes)?;
    let summary = summarize(&loaded, bytes.len() as u64);
    let write_err = |reason: String| SnapshotFileError::Write {
        path: member_dir.clone(),
        reason,
    };
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
    // whose voters are the restored members.
    let applied = match &loaded {
        Loaded::Qed(state) => state.applied(),
        Loaded::Etcd(_) => 1,
    };
    let index = applied.max(1);
    let meta = SnapshotMeta {
        index,
        term: 1,
        conf_state: ConfState {
            voters: voters.to_vec(),
            learners: Vec::new(),
        },
    };
    // Streamed into the file: no buffer of the whole image.
    let no_urls = Default::default();
    let saved = match &loaded {
        Loaded::Qed(state) => state.image().map(|image| save_image(&log, &meta, &image)),
        Loaded::Etcd(imported) => SnapshotImage::new(
            index,
            &imported.histories,
            &[],
            imported.leases.clone(),
            imported.auth.clone(),
            &no_urls,
        )
        .map(|image| save_image(&log, &meta, &image)),
    };
    saved
        .map_err(|e| write_err(e.to_string()))?
        .map_err(|e| write_err(e.to_string()))?;
    log.mark_snapshot(&meta)
        .map_err(|e| write_err(e.to_string()))?;
    drop(loaded);
    drop(bytes);
    let hard_state = HardState {
        term: 1,
        vote: 0,
        commit: index,
    };
    log.append(Some(&hard_state), &[])
        .map_err(|e| write_err(e.to_string()))?;
    log.sync().map_err(|e| write_err(e.to_string()))?;
    Ok(summary)
}
