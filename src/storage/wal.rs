//! The write-ahead log: append-only segment files of checksummed records.
//!
//! A segment is `wal/<seq>-<first index>.log` (both 16 hex digits),
//! preallocated with real zeroed blocks to the segment size (so a full disk
//! shows at rotation, never in the middle of a write) and filled front to
//! back; its unused tail stays zero. A record is
//!
//! ```text
//! len: u32 LE | crc: u32 LE | kind: u8 | payload | zero padding to 8 bytes
//! ```
//!
//! where `len` counts kind + payload and the CRC32C covers `len`, kind and
//! payload, so a flipped length is caught like a flipped payload byte. An
//! all-zero header marks the end of a segment's data.
//!
//! Group commit: [`Wal::append`] only encodes into a buffer; [`Wal::sync`]
//! writes the whole buffer with one `write` and one `fdatasync`. Each such
//! write (a *batch*) starts with a `Batch` record giving the batch's length
//! in bytes. A batch is written only after the previous one is synced, so
//! at any moment at most one batch, the last, may be unsynced.
//!
//! Recovery rules ([`Wal::open`]), from the two facts above and the disk
//! model in [`super::fs`] (sectors are atomic; the pages of one write land
//! in any order; the unused tail is zero):
//! - A bad record or a zero header followed by data is *torn* (a write the
//!   power cut interrupted, never acknowledged) only if all of: it is in the
//!   last segment; no valid `Batch` record follows it (a later batch proves
//!   this one was synced); and it shows the mark of a write that did not
//!   land: its header is zero, or a 512-byte sector within its batch (or,
//!   at the start of a batch, within the batch record) is all zeros. A torn
//!   spot and everything after it are zeroed and synced.
//! - Anything else is damage and stops recovery with the file and offset:
//!   a bad record in an older segment; one followed by a later batch; and a
//!   complete record that fails its checksum, which is bit rot even when it
//!   is the very last record (it was fsynced, so a write that landed whole).
//!
//! What these rules cannot tell apart: a whole sector of the last batch
//! zeroed by the device after it was synced (a lost write) looks like a
//! write that never landed, and is truncated; so is bit rot in a record
//! whose payload holds a full aligned sector of zeros.

use super::fs::{Fs, FsFile, OsFs};
use super::{create_dir_durable, io_error, sync_dir, StorageError};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A quarter of etcd's 64 MB: a segment is preallocated whole and the
/// active one (with the one before it, until a snapshot covers it) is
/// what the WAL costs on disk and what recovery reads. With snapshots
/// every 10,000 entries, 16 MiB holds several snapshots' worth of
/// entries at etcd's largest request (1.5 MiB) as well as at small ones.
pub const DEFAULT_SEGMENT_BYTES: u64 = 16 * 1024 * 1024;

const HEADER: usize = 8;
const ALIGN: usize = 8;
/// The unit a disk writes all or nothing.
const SECTOR: usize = 512;
/// A `Batch` record's size: header, kind, u64 length, padding.
const BATCH_BYTES: usize = 24;

/// What a record holds; the payload format belongs to the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordKind {
    /// Log entries, in index order.
    Entries = 1,
    /// The Raft hard state (term, vote, commit).
    HardState = 2,
    /// A snapshot was taken at some index: entries before it may be gone.
    Snapshot = 3,
    /// Starts each write; its payload is the write's length in bytes (u64
    /// LE). Internal to the WAL: [`Wal::open`] never returns one.
    Batch = 4,
}

impl RecordKind {
    fn from_byte(b: u8) -> Option<Self> {
        match b {
            1 => Some(RecordKind::Entries),
            2 => Some(RecordKind::HardState),
            3 => Some(RecordKind::Snapshot),
            4 => Some(RecordKind::Batch),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub kind: RecordKind,
    pub payload: Vec<u8>,
}

fn padded(len: usize) -> usize {
    len.div_ceil(ALIGN) * ALIGN
}

/// Appends one encoded record to `out`.
pub fn encode_record(kind: RecordKind, payload: &[u8], out: &mut Vec<u8>) {
    let len = (1 + payload.len()) as u32;
    let mut crc = crc32c::crc32c(&len.to_le_bytes());
    crc = crc32c::crc32c_append(crc, &[kind as u8]);
    crc = crc32c::crc32c_append(crc, payload);
    let start = out.len();
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&crc.to_le_bytes());
    out.push(kind as u8);
    out.extend_from_slice(payload);
    out.resize(start + padded(out.len() - start), 0);
}

/// The result of decoding at one offset.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded {
    /// A valid record and the bytes it took, padding included.
    Record(Record, usize),
    /// An all-zero header: no more data in this segment.
    End,
    /// Not a valid record; why.
    Bad(String),
}

/// Decodes the record at the start of `buf`. Never panics, never allocates
/// more than the bytes actually present.
pub fn decode_record(buf: &[u8]) -> Decoded {
    let Some((header, rest)) = buf.split_first_chunk::<HEADER>() else {
        return if buf.iter().all(|b| *b == 0) {
            Decoded::End
        } else {
            Decoded::Bad("truncated record header".into())
        };
    };
    if header.iter().all(|b| *b == 0) {
        return Decoded::End;
    }
    let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
    let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    if len == 0 {
        return Decoded::Bad("zero record length".into());
    }
    let Some(body) = rest.get(..len) else {
        return Decoded::Bad(format!(
            "record of {len} bytes runs past the end of the segment"
        ));
    };
    let mut actual = crc32c::crc32c(&header[..4]);
    actual = crc32c::crc32c_append(actual, body);
    if actual != crc {
        return Decoded::Bad(format!(
            "checksum mismatch (stored {crc:08x}, computed {actual:08x})"
        ));
    }
    let Some(kind) = RecordKind::from_byte(body[0]) else {
        return Decoded::Bad(format!("unknown record kind {}", body[0]));
    };
    let taken = padded(HEADER + len).min(buf.len());
    Decoded::Record(
        Record {
            kind,
            payload: body[1..].to_vec(),
        },
        taken,
    )
}

/// Whether a valid record (only a `Batch` one, with `batch_only`) starts
/// at an aligned offset at or after `from`.
fn record_after(buf: &[u8], from: usize, batch_only: bool) -> bool {
    let mut off = from.div_ceil(ALIGN) * ALIGN;
    while off + HEADER <= buf.len() {
        match first_nonzero(buf, off) {
            None => return false,
            Some(nz) => off = nz / ALIGN * ALIGN,
        }
        if off + HEADER <= buf.len() {
            if let Decoded::Record(r, _) = decode_record(&buf[off..]) {
                if !batch_only || r.kind == RecordKind::Batch {
                    return true;
                }
            }
        }
        off += ALIGN;
    }
    false
}

/// The first non-zero byte at or after `from`. The unused tail of a segment
/// is megabytes of zeros; comparing whole blocks against a zero block is a
/// `memcmp`, so skipping it stays cheap even in unoptimized builds.
fn first_nonzero(buf: &[u8], from: usize) -> Option<usize> {
    const BLOCK: usize = 4096;
    static ZEROS: [u8; BLOCK] = [0; BLOCK];
    let mut off = from;
    while off < buf.len() {
        let end = (off + BLOCK).min(buf.len());
        let block = &buf[off..end];
        if block != &ZEROS[..block.len()] {
            return block.iter().position(|b| *b != 0).map(|i| off + i);
        }
        off = end;
    }
    None
}

/// Whether the bad record at `off` bears the mark of a write that did not
/// land: a zero header, or an all-zero sector where the write should have
/// put data. Inside a batch that is the rest of the batch (its length is
/// known from its `Batch` record); at a batch's start, the `Batch` record
/// that should be there (or, in a segment from before batches, the
/// record's own extent).
fn looks_torn(buf: &[u8], off: usize, batch_end: usize) -> bool {
    let Some(header) = buf.get(off..off + HEADER) else {
        return true;
    };
    if header.iter().all(|b| *b == 0) {
        return true;
    }
    let limit = if off < batch_end {
        batch_end
    } else if buf.get(off + HEADER) == Some(&(RecordKind::Batch as u8)) {
        off + BATCH_BYTES
    } else {
        let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
        off.saturating_add(padded(HEADER.saturating_add(len)))
    }
    .min(buf.len());
    let mut sector = off / SECTOR * SECTOR;
    while sector < limit {
        let end = (sector + SECTOR).min(buf.len());
        if buf[sector..end].iter().all(|b| *b == 0) {
            return true;
        }
        sector += SECTOR;
    }
    false
}

/// How a segment's scan ended.
#[derive(Debug, PartialEq, Eq)]
struct Scanned {
    records: Vec<Record>,
    /// Where the next record goes.
    end: usize,
    /// Non-zero bytes from `end` on (a torn write) must be zeroed.
    torn: bool,
}

/// Reads a segment's records under the rules in the module doc.
fn scan(buf: &[u8], is_last: bool, path: &Path) -> Result<Scanned, StorageError> {
    let mut records = Vec::new();
    let mut off = 0;
    // Where the batch announced by the last `Batch` record ends.
    let mut batch_end = 0;
    let corrupt = |offset: usize, reason: String| StorageError::Corrupt {
        path: path.to_path_buf(),
        offset: offset as u64,
        reason,
    };
    while off < buf.len() {
        let reason = match decode_record(&buf[off..]) {
            Decoded::Record(r, n) => {
                if r.kind == RecordKind::Batch {
                    let Ok(len) = <[u8; 8]>::try_from(r.payload.as_slice()) else {
                        return Err(corrupt(off, "batch record of the wrong size".into()));
                    };
                    batch_end = usize::try_from(u64::from_le_bytes(len))
                        .map_or(usize::MAX, |len| off.saturating_add(len));
                } else {
                    records.push(r);
                }
                off += n;
                continue;
            }
            Decoded::End => {
                if !record_after(buf, off + ALIGN, false) {
                    // The end of the data; anything non-zero after it is
                    // what is left of a torn write (the last segment) or
                    // never read (older ones).
                    let torn = is_last && first_nonzero(buf, off).is_some();
                    return Ok(Scanned {
                        records,
                        end: off,
                        torn,
                    });
                }
                "zeroed record header before valid records".to_string()
            }
            Decoded::Bad(reason) => reason,
        };
        if !is_last {
            return Err(corrupt(
                off,
                format!("{reason} (in a segment already complete)"),
            ));
        }
        if record_after(buf, off + ALIGN, true) {
            return Err(corrupt(
                off,
                format!("{reason} (a later write follows, so this was synced)"),
            ));
        }
        if looks_torn(buf, off, batch_end) {
            return Ok(Scanned {
                records,
                end: off,
                torn: true,
            });
        }
        return Err(corrupt(
            off,
            format!("{reason} (a whole record fails its check: damaged after it was written)"),
        ));
    }
    Ok(Scanned {
        records,
        end: off,
        torn: false,
    })
}

#[derive(Debug, Clone)]
struct Segment {
    seq: u64,
    first_index: u64,
    path: PathBuf,
}

fn segment_name(seq: u64, first_index: u64) -> String {
    format!("{seq:016x}-{first_index:016x}.log")
}

fn parse_segment_name(name: &str) -> Option<(u64, u64)> {
    let stem = name.strip_suffix(".log")?;
    let (seq, first) = stem.split_once('-')?;
    if seq.len() != 16 || first.len() != 16 {
        return None;
    }
    Some((
        u64::from_str_radix(seq, 16).ok()?,
        u64::from_str_radix(first, 16).ok()?,
    ))
}

/// An open WAL, positioned to append after the last valid record.
pub struct Wal {
    fs: Arc<dyn Fs>,
    dir: PathBuf,
    segment_bytes: u64,
    /// In sequence order; the last one is being appended to.
    segments: Vec<Segment>,
    file: Box<dyn FsFile>,
    /// Bytes of the active segment already written (synced or not).
    offset: u64,
    /// Encoded records not yet written, after room for the batch record.
    pending: Vec<u8>,
    /// Highest index the caller has appended, for naming the next segment.
    last_index: u64,
    /// Repeated at the head of each new segment, so that releasing older
    /// segments never loses the latest hard state or snapshot marker.
    last_hard_state: Option<Vec<u8>>,
    last_snapshot: Option<Vec<u8>>,
}

impl Wal {
    /// Opens (or creates) the WAL in `dir` on the operating system's files;
    /// see [`Wal::open_in`].
    pub fn open(dir: &Path, segment_bytes: u64) -> Result<(Wal, Vec<Record>), StorageError> {
        Wal::open_in(Arc::new(OsFs), dir, segment_bytes)
    }

    /// Opens (or creates) the WAL in `dir` and returns every record in it,
    /// in order. Segments are created with `segment_bytes` bytes.
    pub fn open_in(
        fs: Arc<dyn Fs>,
        dir: &Path,
        segment_bytes: u64,
    ) -> Result<(Wal, Vec<Record>), StorageError> {
        create_dir_durable(&*fs, dir)?;
        let mut segments = Vec::new();
        for name in fs.list(dir).map_err(io_error(dir, "list"))? {
            let path = dir.join(&name);
            if let Some((seq, first_index)) = parse_segment_name(&name) {
                segments.push(Segment {
                    seq,
                    first_index,
                    path,
                });
            } else if name.ends_with(".tmp") {
                // A segment whose creation a crash interrupted; never used.
                // Failing to remove it only leaves it for the next start.
                let _ = fs.remove(&path);
            }
        }
        segments.sort_by_key(|s| s.seq);
        for pair in segments.windows(2) {
            if pair[1].seq != pair[0].seq + 1 {
                return Err(StorageError::MissingSegment {
                    dir: dir.to_path_buf(),
                    after: pair[0].path.display().to_string(),
                    expected_seq: pair[0].seq + 1,
                });
            }
        }
        if segments.is_empty() {
            let path = create_segment(&*fs, dir, 0, 0, segment_bytes)?;
            segments.push(Segment {
                seq: 0,
                first_index: 0,
                path,
            });
        }

        let mut records = Vec::new();
        let mut tail = None;
        let mut last_has_hard_state = false;
        let count = segments.len();
        for (i, seg) in segments.iter().enumerate() {
            let buf = fs.read(&seg.path).map_err(io_error(&seg.path, "read"))?;
            let scanned = scan(&buf, i + 1 == count, &seg.path)?;
            last_has_hard_state = scanned
                .records
                .iter()
                .any(|r| r.kind == RecordKind::HardState);
            records.extend(scanned.records);
            if i + 1 == count {
                let dirty_end = if scanned.torn {
                    nonzero_end(&buf).max(scanned.end)
                } else {
                    scanned.end
                };
                tail = Some((scanned.end, scanned.torn, dirty_end));
            }
        }
        let (end, torn, dirty_end) = tail.unwrap_or((0, false, 0));
        let last = segments.last().map(|s| s.path.clone()).unwrap_or_default();
        let file = fs.open(&last).map_err(io_error(&last, "open"))?;
        if torn {
            log::warn!(
                "WAL {}: truncating a torn write at offset {end}",
                last.display()
            );
            let zeros = vec![0u8; dirty_end - end];
            file.write_at(&zeros, end as u64)
                .map_err(io_error(&last, "truncate torn tail of"))?;
            file.sync_data().map_err(io_error(&last, "fsync"))?;
        }
        let mut wal = Wal {
            fs,
            dir: dir.to_path_buf(),
            segment_bytes,
            file,
            offset: end as u64,
            pending: Vec::new(),
            last_index: segments
                .last()
                .map(|s| s.first_index.saturating_sub(1))
                .unwrap_or(0),
            segments,
            last_hard_state: None,
            last_snapshot: None,
        };
        for r in &records {
            wal.remember(r.kind, &r.payload);
        }
        if wal.segments.len() > 1 && !last_has_hard_state && wal.last_hard_state.is_some() {
            // The power failed before the head of the newest segment was
            // synced: write it again, or releasing the older segments
            // would take the latest hard state with them.
            wal.write_head();
        }
        Ok((wal, records))
    }

    fn remember(&mut self, kind: RecordKind, payload: &[u8]) {
        match kind {
            RecordKind::HardState => self.last_hard_state = Some(payload.to_vec()),
            RecordKind::Snapshot => self.last_snapshot = Some(payload.to_vec()),
            RecordKind::Entries | RecordKind::Batch => {}
        }
    }

    /// Queues a record. `last_index` is the highest log index it holds (for
    /// entries) or the log's current last index (otherwise); it names the
    /// next segment. Nothing is durable until [`Wal::sync`].
    pub fn append(
        &mut self,
        kind: RecordKind,
        payload: &[u8],
        last_index: u64,
    ) -> Result<(), StorageError> {
        let size = padded(HEADER + 1 + payload.len()) as u64;
        let head = [&self.last_hard_state, &self.last_snapshot]
            .iter()
            .filter_map(|p| p.as_ref().map(|p| padded(HEADER + 1 + p.len()) as u64))
            .sum::<u64>();
        if size + head + BATCH_BYTES as u64 > self.segment_bytes {
            return Err(StorageError::RecordTooLarge {
                len: payload.len(),
                max: self.segment_bytes,
            });
        }
        let batch = if self.pending.is_empty() {
            BATCH_BYTES as u64
        } else {
            0
        };
        if self.offset + self.pending.len() as u64 + batch + size > self.segment_bytes {
            self.rotate()?;
        }
        self.begin_batch();
        encode_record(kind, payload, &mut self.pending);
        self.remember(kind, payload);
        self.last_index = self.last_index.max(last_index);
        Ok(())
    }

    /// Leaves room for the batch record at the start of a new batch.
    fn begin_batch(&mut self) {
        if self.pending.is_empty() {
            self.pending.resize(BATCH_BYTES, 0);
        }
    }

    /// Writes what is pending and makes it durable.
    pub fn sync(&mut self) -> Result<(), StorageError> {
        self.flush()?;
        let path = self.active_path();
        self.file.sync_data().map_err(io_error(&path, "fsync"))
    }

    /// Writes the pending batch, its batch record first, in one write.
    fn flush(&mut self) -> Result<(), StorageError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let mut batch = Vec::with_capacity(BATCH_BYTES);
        encode_record(
            RecordKind::Batch,
            &(self.pending.len() as u64).to_le_bytes(),
            &mut batch,
        );
        self.pending[..BATCH_BYTES].copy_from_slice(&batch);
        let path = self.active_path();
        self.file
            .write_at(&self.pending, self.offset)
            .map_err(io_error(&path, "write"))?;
        self.offset += self.pending.len() as u64;
        self.pending.clear();
        Ok(())
    }

    fn active_path(&self) -> PathBuf {
        self.segments
            .last()
            .map(|s| s.path.clone())
            .unwrap_or_default()
    }

    /// Starts the next segment; its head repeats the latest hard state and
    /// snapshot marker. The old segment is made durable first, so a torn
    /// write can only ever be in the last segment.
    fn rotate(&mut self) -> Result<(), StorageError> {
        self.sync()?;
        let seq = self.segments.last().map(|s| s.seq + 1).unwrap_or(0);
        let first_index = self.last_index + 1;
        let path = create_segment(&*self.fs, &self.dir, seq, first_index, self.segment_bytes)?;
        self.file = self.fs.open(&path).map_err(io_error(&path, "open"))?;
        self.segments.push(Segment {
            seq,
            first_index,
            path,
        });
        self.offset = 0;
        self.write_head();
        Ok(())
    }

    /// Queues a new segment's head: the latest hard state and snapshot
    /// marker.
    fn write_head(&mut self) {
        self.begin_batch();
        if let Some(hs) = self.last_hard_state.clone() {
            encode_record(RecordKind::HardState, &hs, &mut self.pending);
        }
        if let Some(snap) = self.last_snapshot.clone() {
            encode_record(RecordKind::Snapshot, &snap, &mut self.pending);
        }
    }

    /// Deletes the segments whose every entry is at or below
    /// `snapshot_index`, oldest first; the active segment always stays.
    /// `keep` (etcd's `--max-wals`) segments are kept in all, covered or
    /// not; 0 keeps only what recovery needs.
    pub fn release_through(
        &mut self,
        snapshot_index: u64,
        keep: usize,
    ) -> Result<usize, StorageError> {
        let mut released = 0;
        while self.segments.len() > keep.max(1)
            && self.segments[1].first_index <= snapshot_index + 1
        {
            let seg = self.segments.remove(0);
            match self.fs.remove(&seg.path) {
                // Already gone (an operator cleaned up): what we wanted.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                other => other.map_err(io_error(&seg.path, "remove"))?,
            }
            released += 1;
        }
        if released > 0 {
            sync_dir(&*self.fs, &self.dir)?;
        }
        Ok(released)
    }

    /// Tells the WAL the log's last index after recovery (the highest index
    /// any record or the snapshot holds), so the next segment is named
    /// after it: [`Wal::release_through`] relies on every entry before a
    /// segment being below that segment's first index.
    pub fn recovered_through(&mut self, index: u64) {
        self.last_index = self.last_index.max(index);
    }

    /// The first log index the oldest segment may hold: entries below it
    /// must come from a snapshot.
    pub fn first_index(&self) -> u64 {
        self.segments.first().map(|s| s.first_index).unwrap_or(0)
    }

    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }
}

/// One past the last non-zero byte of `buf` (0 when all zero), skipping
/// zero blocks by `memcmp` as [`first_nonzero`] does.
fn nonzero_end(buf: &[u8]) -> usize {
    const BLOCK: usize = 4096;
    static ZEROS: [u8; BLOCK] = [0; BLOCK];
    let mut end = buf.len();
    while end > 0 {
        let start = end.saturating_sub(BLOCK);
        let block = &buf[start..end];
        if block != &ZEROS[..block.len()] {
            return block
                .iter()
                .rposition(|b| *b != 0)
                .map_or(start, |i| start + i + 1);
        }
        end = start;
    }
    0
}

/// Creates a segment atomically: a temp file given real zeroed blocks,
/// synced, renamed into place, the directory synced. A full disk fails
/// here, before anything is written to the segment.
fn create_segment(
    fs: &dyn Fs,
    dir: &Path,
    seq: u64,
    first_index: u64,
    bytes: u64,
) -> Result<PathBuf, StorageError> {
    let path = dir.join(segment_name(seq, first_index));
    let tmp = dir.join(format!("{}.tmp", segment_name(seq, first_index)));
    let file = fs.create(&tmp).map_err(io_error(&tmp, "create"))?;
    file.allocate(bytes)
        .map_err(io_error(&tmp, "preallocate"))?;
    file.sync_all().map_err(io_error(&tmp, "fsync"))?;
    drop(file);
    fs.rename(&tmp, &path)
        .map_err(io_error(&path, "rename into place"))?;
    sync_dir(fs, dir)?;
    Ok(path)
}

#[cfg(test)]
mod tests;
