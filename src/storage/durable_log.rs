//! The Raft log made durable: typed records over the WAL, plus snapshots.
//!
//! This is the only place that knows which Raft structures go into which
//! WAL record (`Entries` holds a postcard `Vec<Entry>`, `HardState` a
//! `HardState`, `Snapshot` the `SnapshotMeta` of a saved snapshot) and how
//! to rebuild the Raft restart state from them.
//!
//! Recovery: the newest snapshot, then every WAL entry after it, with later
//! records overwriting earlier ones at the same index (a new leader's
//! entries replace an old leader's uncommitted tail, everything from their
//! first index on, even when the snapshot covers that index). The result
//! must be contiguous from the snapshot; a hole means a lost segment and
//! stops recovery with an error. The WAL is told the highest index
//! recovered, so the next segment's name never understates what the
//! segments before it hold.

use super::fs::{Fs, OsFs};
use super::snapshot::{SnapshotId, SnapshotStore, StreamDecoder};
use super::wal::{RecordKind, Wal};
use super::StorageError;
use crate::mvcc::Backing;
use crate::wire::raft::{Entry, EntryType, HardState, SnapshotMeta};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Entries are grouped into WAL records of about this size (one entry may
/// exceed it; requests are capped far below a segment).
pub const MAX_RECORD_BYTES: usize = 4 * 1024 * 1024;

/// Tuning that operators set with flags.
#[derive(Debug, Clone, Copy)]
pub struct LogOptions {
    pub segment_bytes: u64,
    /// Snapshots kept on disk (`--max-snapshots`).
    pub max_snapshots: usize,
    /// WAL segments kept even when a snapshot covers them (`--max-wals`).
    pub max_wals: usize,
}

/// The durable state a member restarts from.
#[derive(Debug, Clone, Default)]
pub struct Recovered {
    pub hard_state: HardState,
    /// The newest snapshot: where it sits in the log and the state
    /// machine's bytes (checked, not read yet).
    pub snapshot: Option<(SnapshotMeta, SnapshotState)>,
    /// Entries after the snapshot, contiguous.
    pub entries: Vec<Entry>,
}

// A snapshot file's payload (inside the store's framing) is what postcard
// writes for `struct { meta: SnapshotMeta, data: bytes }`: the meta, the
// state's length as a varint, the state's bytes. It is written and read in
// place, never built as one struct (the state is the size of all the data).

/// An [`Entry`] as recorded (the same encoding), its data still in the
/// record.
#[derive(serde::Deserialize)]
struct EntryRef<'a> {
    term: u64,
    index: u64,
    kind: EntryType,
    data: &'a [u8],
}

/// The state machine's bytes in the newest snapshot file, read on demand
/// as a stream: a restart never holds the whole state twice.
#[derive(Debug, Clone)]
pub struct SnapshotState {
    snapshots: SnapshotStore,
    id: SnapshotId,
    /// Payload bytes before the state (the meta and the state's length).
    skip: u64,
    /// The state's bytes.
    pub len: u64,
}

impl SnapshotState {
    /// Runs `read` over the state's bytes, then checks the file whole
    /// again (it was checked at open; a file damaged since is an error
    /// naming it, whatever `read` made of it).
    pub fn read_with<T>(
        &self,
        read: impl FnOnce(&mut dyn std::io::Read) -> Result<T, String>,
    ) -> Result<T, StorageError> {
        use std::io::Read;
        let mut payload = self.snapshots.open_payload(self.id)?;
        let path = payload.path().to_path_buf();
        let skipped = std::io::copy(&mut (&mut payload).take(self.skip), &mut std::io::sink());
        let out = match skipped {
            Ok(n) if n == self.skip => read(&mut (&mut payload).take(self.len)),
            _ => Err("snapshot is shorter than at start".into()),
        };
        payload.finish()?;
        out.map_err(|reason| corrupt(&path, format!("snapshot state does not load: {reason}")))
    }

    /// The snapshot file's path.
    pub fn path(&self) -> PathBuf {
        self.snapshots.path(self.id)
    }

    /// The snapshot file mapped into memory (see `Fs::map`), checked
    /// whole: its state's bytes.
    pub fn map(&self) -> Result<MappedState, StorageError> {
        let mapped = map_state(&self.snapshots, self.id)?;
        if mapped.range.len() as u64 != self.len {
            return Err(corrupt(
                &self.path(),
                "snapshot state does not fill the file as at start".into(),
            ));
        }
        Ok(mapped)
    }

    /// The state's bytes, in memory.
    pub fn bytes(&self) -> Result<Vec<u8>, StorageError> {
        self.read_with(|r| {
            let mut out = Vec::new();
            r.read_to_end(&mut out).map_err(|e| e.to_string())?;
            Ok(out)
        })
    }
}

/// A snapshot's state as bytes of its mapped file: what a restart decodes
/// (values left in the file), and the image a member sends a follower
/// (no copy on the heap).
#[derive(Debug, Clone)]
pub struct MappedState {
    pub backing: Arc<Backing>,
    pub range: std::ops::Range<usize>,
}

impl AsRef<[u8]> for MappedState {
    fn as_ref(&self) -> &[u8] {
        self.backing
            .bytes()
            .get(self.range.clone())
            .unwrap_or_default()
    }
}

/// Maps snapshot `id`, checks it whole, and finds its state: the payload
/// is the meta, the state's length, then the state, filling the file.
fn map_state(snapshots: &SnapshotStore, id: SnapshotId) -> Result<MappedState, StorageError> {
    let (backing, payload) = snapshots.map_payload(id)?;
    let path = snapshots.path(id);
    let bytes = backing.bytes().get(payload.clone()).unwrap_or_default();
    let head = postcard::take_from_bytes::<SnapshotMeta>(bytes)
        .and_then(|(meta, rest)| Ok((meta, postcard::take_from_bytes::<u64>(rest)?)));
    let (meta, (len, state)) =
        head.map_err(|e| corrupt(&path, format!("snapshot does not decode: {e}")))?;
    if (meta.index, meta.term) != (id.index, id.term) {
        return Err(corrupt(
            &path,
            "snapshot contents do not match its name".into(),
        ));
    }
    if state.len() as u64 != len {
        return Err(corrupt(
            &path,
            format!("snapshot state of {len} bytes does not fill the file"),
        ));
    }
    let start = payload.end - state.len();
    Ok(MappedState {
        backing,
        range: start..payload.end,
    })
}

pub struct DurableLog {
    wal: Wal,
    snapshots: SnapshotStore,
    wal_dir: PathBuf,
    max_wals: usize,
}

fn corrupt(path: &Path, reason: String) -> StorageError {
    StorageError::Corrupt {
        path: path.to_path_buf(),
        offset: 0,
        reason,
    }
}

impl DurableLog {
    /// Opens `<dir>/wal` and `<dir>/snap` on the operating system's files,
    /// creating them if needed.
    pub fn open(dir: &Path, options: LogOptions) -> Result<(DurableLog, Recovered), StorageError> {
        DurableLog::open_in(Arc::new(OsFs), dir, options)
    }

    /// [`DurableLog::open`] on the given file layer.
    pub fn open_in(
        fs: Arc<dyn Fs>,
        dir: &Path,
        options: LogOptions,
    ) -> Result<(DurableLog, Recovered), StorageError> {
        let wal_dir = dir.join("wal");
        let snapshots =
            SnapshotStore::open_in(fs.clone(), &dir.join("snap"), options.max_snapshots)?;
        let snapshot = match snapshots.list()?.pop() {
            Some(id) => {
                // Read through once (checksum, length) without holding it:
                // only the meta is kept; the state is read when wanted.
                let path = snapshots.path(id);
                let mut payload = snapshots.open_payload(id)?;
                let declared = payload.len();
                let mut decoder = StreamDecoder::new(&mut payload);
                let head = decoder
                    .decode::<SnapshotMeta>()
                    .and_then(|meta| Ok((meta, decoder.decode::<u64>()?)));
                let skip = decoder.consumed();
                drop(decoder);
                payload.finish()?;
                let (meta, len) =
                    head.map_err(|e| corrupt(&path, format!("snapshot does not decode: {e}")))?;
                if skip.checked_add(len) != Some(declared) {
                    return Err(corrupt(
                        &path,
                        format!("snapshot state of {len} bytes does not fill the file"),
                    ));
                }
                if meta.index != id.index || meta.term != id.term {
                    return Err(corrupt(
                        &path,
                        "snapshot contents do not match its name".into(),
                    ));
                }
                Some((
                    meta,
                    SnapshotState {
                        snapshots: snapshots.clone(),
                        id,
                        skip,
                        len,
                    },
                ))
            }
            None => None,
        };
        let (mut wal, records) = Wal::open_in(fs, &wal_dir, options.segment_bytes)?;
        let snap_index = snapshot.as_ref().map(|(m, _)| m.index).unwrap_or(0);
        if wal.first_index() > snap_index + 1 {
            return Err(StorageError::Gap {
                dir: wal_dir.clone(),
                reason: format!(
                    "the oldest segment starts at index {}, the snapshot ends at {snap_index}",
                    wal.first_index()
                ),
            });
        }
        let mut recovered = Recovered {
            snapshot,
            ..Default::default()
        };
        // The highest index ever written, for naming the next segment.
        let mut highest = snap_index;
        // The records stay until every kept entry is copied out, so those
        // copies are allocated past them and the records free as one
        // stretch of the heap (see `crate::heap`), not as holes between
        // the entries kept.
        for record in &records {
            match record.kind {
                RecordKind::HardState => {
                    recovered.hard_state = postcard::from_bytes(&record.payload).map_err(|e| {
                        corrupt(&wal_dir, format!("hard state record does not decode: {e}"))
                    })?;
                }
                RecordKind::Entries => {
                    // Decoded borrowing from the record: only the entries
                    // kept (after the snapshot) are copied out, so recovery
                    // does not churn through every entry the WAL holds.
                    let entries: Vec<EntryRef<'_>> = postcard::from_bytes(&record.payload)
                        .map_err(|e| {
                            corrupt(&wal_dir, format!("entries record does not decode: {e}"))
                        })?;
                    if let Some(last) = entries.last() {
                        highest = highest.max(last.index);
                    }
                    // A later write at an index replaces everything from
                    // it on, even when the snapshot covers that index (the
                    // entries it cut off above the snapshot are stale).
                    if let Some(first) = entries.first() {
                        let keep = recovered
                            .entries
                            .partition_point(|old| old.index < first.index);
                        recovered.entries.truncate(keep);
                    }
                    for e in entries.into_iter().filter(|e| e.index > snap_index) {
                        let keep = recovered.entries.partition_point(|old| old.index < e.index);
                        recovered.entries.truncate(keep);
                        recovered.entries.push(Entry {
                            term: e.term,
                            index: e.index,
                            kind: e.kind,
                            data: e.data.to_vec(),
                        });
                    }
                }
                RecordKind::Snapshot | RecordKind::Batch => {}
            }
        }
        drop(records);
        wal.recovered_through(highest);
        if let Some(first) = recovered.entries.first() {
            if first.index != snap_index + 1 {
                return Err(StorageError::Gap {
                    dir: wal_dir.clone(),
                    reason: format!(
                        "the snapshot ends at index {snap_index}, the next entry is {}",
                        first.index
                    ),
                });
            }
        }
        if let Some(pair) = recovered
            .entries
            .windows(2)
            .find(|w| w[1].index != w[0].index + 1)
        {
            return Err(corrupt(
                &wal_dir,
                format!(
                    "log entries jump from index {} to {}",
                    pair[0].index, pair[1].index
                ),
            ));
        }
        Ok((
            DurableLog {
                wal,
                snapshots,
                wal_dir,
                max_wals: options.max_wals,
            },
            recovered,
        ))
    }

    /// Queues entries and hard state; durable after [`DurableLog::sync`].
    /// Entries go in records of at most about [`MAX_RECORD_BYTES`], so any
    /// batch fits a segment.
    pub fn append(
        &mut self,
        hard_state: Option<&HardState>,
        entries: &[Entry],
    ) -> Result<(), StorageError> {
        let mut start = 0;
        while start < entries.len() {
            let mut end = start;
            let mut bytes = 0;
            while end < entries.len()
                && (end == start || bytes + entries[end].data.len() < MAX_RECORD_BYTES)
            {
                bytes += entries[end].data.len() + 32;
                end += 1;
            }
            let chunk = &entries[start..end];
            let payload =
                postcard::to_allocvec(chunk).map_err(|e| corrupt(&self.wal_dir, e.to_string()))?;
            self.wal
                .append(RecordKind::Entries, &payload, chunk[chunk.len() - 1].index)?;
            start = end;
        }
        if let Some(hs) = hard_state {
            let payload =
                postcard::to_allocvec(hs).map_err(|e| corrupt(&self.wal_dir, e.to_string()))?;
            self.wal.append(RecordKind::HardState, &payload, 0)?;
        }
        Ok(())
    }

    pub fn sync(&mut self) -> Result<(), StorageError> {
        self.wal.sync()
    }

    /// Saves a snapshot file, records it in the WAL, and releases the WAL
    /// segments it covers. The snapshot is durable before any segment goes.
    pub fn save_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        data: Vec<u8>,
    ) -> Result<(), StorageError> {
        self.snapshot_writer().save(meta, &data)?;
        self.mark_snapshot(meta)
    }

    /// A handle that writes snapshot files from another thread, so a large
    /// snapshot never holds up WAL appends; follow it with
    /// [`DurableLog::mark_snapshot`].
    pub fn snapshot_writer(&self) -> SnapshotWriter {
        SnapshotWriter {
            snapshots: self.snapshots.clone(),
            wal_dir: self.wal_dir.clone(),
        }
    }

    /// Records in the WAL that a durable snapshot file covers the log up to
    /// `meta.index`, and releases the segments it covers.
    pub fn mark_snapshot(&mut self, meta: &SnapshotMeta) -> Result<(), StorageError> {
        let marker =
            postcard::to_allocvec(meta).map_err(|e| corrupt(&self.wal_dir, e.to_string()))?;
        self.wal.append(RecordKind::Snapshot, &marker, meta.index)?;
        self.wal.sync()?;
        self.wal.release_through(meta.index, self.max_wals)?;
        Ok(())
    }
}

/// Writes snapshot files; see [`DurableLog::snapshot_writer`].
#[derive(Clone)]
pub struct SnapshotWriter {
    snapshots: SnapshotStore,
    wal_dir: PathBuf,
}

impl SnapshotWriter {
    /// Like [`SnapshotWriter::save`] for a state that `write` streams out,
    /// exactly `len` bytes of it: no buffer of the whole state is made.
    pub fn save_streamed(
        &self,
        meta: &SnapshotMeta,
        len: usize,
        write: impl FnOnce(&mut dyn std::io::Write) -> std::io::Result<()>,
    ) -> Result<(), StorageError> {
        let mut head =
            postcard::to_allocvec(meta).map_err(|e| corrupt(&self.wal_dir, e.to_string()))?;
        head =
            postcard::to_extend(&len, head).map_err(|e| corrupt(&self.wal_dir, e.to_string()))?;
        let id = SnapshotId {
            term: meta.term,
            index: meta.index,
        };
        self.snapshots.save_with(id, |out| {
            out.write_all(&head)?;
            let mut counted = CountingWriter { out, written: 0 };
            write(&mut counted)?;
            if counted.written != len as u64 {
                return Err(std::io::Error::other(format!(
                    "the state wrote {} bytes, {len} announced",
                    counted.written
                )));
            }
            Ok(())
        })?;
        Ok(())
    }

    /// The state of the snapshot saved for `meta`, mapped (see
    /// [`MappedState`]).
    pub fn map_state(&self, meta: &SnapshotMeta) -> Result<MappedState, StorageError> {
        let id = SnapshotId {
            term: meta.term,
            index: meta.index,
        };
        map_state(&self.snapshots, id)
    }

    /// Writes the snapshot file atomically (durable on return).
    pub fn save(&self, meta: &SnapshotMeta, data: &[u8]) -> Result<(), StorageError> {
        // A `SnapshotFile` written in place: its meta, then `data` as a
        // byte string (postcard: varint length, then the bytes), without
        // copying the state into one buffer first.
        let mut head =
            postcard::to_allocvec(meta).map_err(|e| corrupt(&self.wal_dir, e.to_string()))?;
        head = postcard::to_extend(&data.len(), head)
            .map_err(|e| corrupt(&self.wal_dir, e.to_string()))?;
        self.snapshots.save(
            SnapshotId {
                term: meta.term,
                index: meta.index,
            },
            &[&head, data],
        )?;
        Ok(())
    }
}

/// Counts what passes through, so a streamed state that does not match
/// its announced length is caught before the file is renamed into place.
struct CountingWriter<'a> {
    out: &'a mut dyn std::io::Write,
    written: u64,
}

impl std::io::Write for CountingWriter<'_> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        let n = self.out.write(bytes)?;
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::raft::{ConfState, EntryType};

    fn entry(index: u64, term: u64) -> Entry {
        Entry {
            term,
            index,
            kind: EntryType::Normal,
            data: format!("{index}@{term}").into_bytes(),
        }
    }

    fn opts() -> LogOptions {
        LogOptions {
            segment_bytes: 512,
            max_snapshots: 2,
            max_wals: 0,
        }
    }

    fn dir(tag: &str) -> PathBuf {
        let p = std::env::temp_dir().join(format!("qed-dlog-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        p
    }

    #[test]
    fn recovers_entries_hard_state_and_overwrites() {
        let d = dir("recover");
        {
            let (mut log, rec) = DurableLog::open(&d, opts()).unwrap();
            assert!(rec.entries.is_empty() && rec.snapshot.is_none());
            log.append(None, &(1..=5).map(|i| entry(i, 1)).collect::<Vec<_>>())
                .unwrap();
            // A new leader replaces the tail from index 4.
            let hs = HardState {
                term: 2,
                vote: 7,
                commit: 3,
            };
            log.append(Some(&hs), &[entry(4, 2), entry(5, 2), entry(6, 2)])
                .unwrap();
            log.sync().unwrap();
        }
        let (_, rec) = DurableLog::open(&d, opts()).unwrap();
        assert_eq!(
            rec.hard_state,
            HardState {
                term: 2,
                vote: 7,
                commit: 3
            }
        );
        let ids: Vec<(u64, u64)> = rec.entries.iter().map(|e| (e.index, e.term)).collect();
        assert_eq!(ids, vec![(1, 1), (2, 1), (3, 1), (4, 2), (5, 2), (6, 2)]);
        let _ = std::fs::remove_dir_all(&d);
    }

    /// After a reopen, the next segment must be named after the log's
    /// last index, not after the last segment's name: releasing segments
    /// below a snapshot trusts those names. (Found by the power-cut test:
    /// a rotation right after a restart named the new segment too low, and
    /// the next snapshot released entries it did not cover.)
    #[test]
    fn a_segment_started_after_a_reopen_never_releases_uncovered_entries() {
        let d = dir("reopen-rotate");
        {
            let (mut log, _) = DurableLog::open(&d, opts()).unwrap();
            for i in 1..=40 {
                log.append(None, &[entry(i, 1)]).unwrap();
            }
            log.sync().unwrap();
        }
        {
            let (mut log, rec) = DurableLog::open(&d, opts()).unwrap();
            assert_eq!(rec.entries.len(), 40);
            // Enough hard states to rotate twice.
            for commit in 0..40 {
                let hs = HardState {
                    term: 1,
                    vote: 1,
                    commit,
                };
                log.append(Some(&hs), &[]).unwrap();
            }
            log.sync().unwrap();
            let meta = SnapshotMeta {
                index: 39,
                term: 1,
                conf_state: ConfState {
                    voters: vec![1],
                    learners: vec![],
                },
            };
            log.save_snapshot(&meta, b"state at 39".to_vec()).unwrap();
        }
        let (_, rec) = DurableLog::open(&d, opts()).unwrap();
        let idx: Vec<u64> = rec.entries.iter().map(|e| e.index).collect();
        assert_eq!(idx, vec![40]);
        let _ = std::fs::remove_dir_all(&d);
    }

    /// A new leader's entries replace an old tail; a snapshot then covers
    /// the replaced index. The old tail above the snapshot must not come
    /// back. (Found by the power-cut test: entries at or below the snapshot
    /// were skipped before their overwrite took effect.)
    #[test]
    fn an_overwrite_below_the_snapshot_still_cuts_the_stale_tail() {
        let d = dir("overwrite-snap");
        {
            let (mut log, _) = DurableLog::open(&d, opts()).unwrap();
            log.append(None, &(1..=11).map(|i| entry(i, 1)).collect::<Vec<_>>())
                .unwrap();
            log.append(None, &[entry(9, 2), entry(10, 2)]).unwrap();
            log.sync().unwrap();
            let meta = SnapshotMeta {
                index: 10,
                term: 2,
                conf_state: ConfState {
                    voters: vec![1],
                    learners: vec![],
                },
            };
            log.save_snapshot(&meta, b"state at 10".to_vec()).unwrap();
        }
        let (_, rec) = DurableLog::open(&d, opts()).unwrap();
        assert_eq!(rec.snapshot.unwrap().0.index, 10);
        let stale: Vec<(u64, u64)> = rec.entries.iter().map(|e| (e.index, e.term)).collect();
        assert!(stale.is_empty(), "stale entries came back: {stale:?}");
        let _ = std::fs::remove_dir_all(&d);
    }

    /// A state streamed in pieces of every size (some past the store's
    /// buffer) reads back whole; one that writes other than the length it
    /// announced leaves no snapshot behind.
    #[test]
    fn a_streamed_snapshot_reads_back_and_a_wrong_length_is_refused() {
        let d = dir("streamed");
        let state: Vec<u8> = (0..700_000u32).map(|i| (i % 251) as u8).collect();
        let meta = |index| SnapshotMeta {
            index,
            term: 1,
            conf_state: ConfState {
                voters: vec![1],
                learners: vec![],
            },
        };
        {
            let (log, _) = DurableLog::open(&d, opts()).unwrap();
            let writer = log.snapshot_writer();
            writer
                .save_streamed(&meta(5), state.len(), |out| {
                    let (a, rest) = state.split_at(1);
                    let (b, rest) = rest.split_at(300_000);
                    let (c, e) = rest.split_at(7);
                    for part in [a, b, c, e] {
                        out.write_all(part)?;
                    }
                    Ok(())
                })
                .unwrap();
            let short =
                writer.save_streamed(&meta(9), state.len() + 1, |out| out.write_all(&state));
            assert!(short.is_err(), "a length mismatch is an error");
        }
        let (_, rec) = DurableLog::open(&d, opts()).unwrap();
        let (got, data) = rec.snapshot.unwrap();
        assert_eq!(got.index, 5, "the refused snapshot is not on disk");
        assert_eq!(data.len, state.len() as u64);
        assert!(
            data.bytes().unwrap() == state,
            "the state reads back as written"
        );
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn snapshot_then_wal_and_released_segments() {
        let d = dir("snap");
        {
            let (mut log, _) = DurableLog::open(&d, opts()).unwrap();
            for i in 1..=40 {
                log.append(
                    Some(&HardState {
                        term: 1,
                        vote: 1,
                        commit: i,
                    }),
                    &[entry(i, 1)],
                )
                .unwrap();
            }
            log.sync().unwrap();
            let meta = SnapshotMeta {
                index: 30,
                term: 1,
                conf_state: ConfState {
                    voters: vec![1],
                    learners: vec![],
                },
            };
            log.save_snapshot(&meta, b"state at 30".to_vec()).unwrap();
            log.append(None, &[entry(41, 1)]).unwrap();
            log.sync().unwrap();
        }
        let (_, rec) = DurableLog::open(&d, opts()).unwrap();
        let (meta, data) = rec.snapshot.unwrap();
        assert_eq!(
            (meta.index, data.bytes().unwrap().as_slice()),
            (30, &b"state at 30"[..])
        );
        let idx: Vec<u64> = rec.entries.iter().map(|e| e.index).collect();
        assert_eq!(idx, (31..=41).collect::<Vec<_>>());
        assert_eq!(rec.hard_state.commit, 40);
        let _ = std::fs::remove_dir_all(&d);
    }
}
