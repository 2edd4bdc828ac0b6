//! Snapshot files: the whole state machine at one log index.
//!
//! `snap/<term>-<index>.snap` (16 hex digits each) holds
//!
//! ```text
//! magic "QEDSNAP1" | crc32c: u32 LE | len: u64 LE | payload
//! ```
//!
//! Written atomically (temp file, fsync, rename, fsync directory), so a
//! crash leaves either the old set or the new one, never half a snapshot.
//! Two writers share a store (a member's own snapshots, saved off the Raft
//! loop, and those a leader sends, saved by the WAL writer): saves and
//! pruning hold the store's lock, leftover temp files are removed only when
//! the store is opened, and a file already gone when pruning is no error.
//! The newest snapshot is the one recovery uses; one that fails its check
//! stops recovery with its path, since falling back silently to an older
//! one could resurrect deleted keys whose WAL entries are already released.

use super::fs::{Fs, FsFile, OsFs};
use super::{create_dir_durable, io_error, sync_dir, StorageError};
use crate::mvcc::Backing;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

const MAGIC: &[u8; 8] = b"QEDSNAP1";
const HEADER: usize = 8 + 4 + 8;

/// `--max-snapshots` default: one. Recovery only ever uses the newest
/// snapshot (an older one could bring back keys deleted since), and a new
/// one is durable before the old one is removed; etcd keeps 5, but its
/// snapshots are small while ours hold the whole state.
pub const DEFAULT_MAX_SNAPSHOTS: usize = 1;

/// Where a snapshot sits in the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct SnapshotId {
    pub term: u64,
    pub index: u64,
}

fn file_name(id: SnapshotId) -> String {
    format!("{:016x}-{:016x}.snap", id.term, id.index)
}

fn parse_name(name: &str) -> Option<SnapshotId> {
    let (term, index) = name.strip_suffix(".snap")?.split_once('-')?;
    if term.len() != 16 || index.len() != 16 {
        return None;
    }
    Some(SnapshotId {
        term: u64::from_str_radix(term, 16).ok()?,
        index: u64::from_str_radix(index, 16).ok()?,
    })
}

/// Frames a payload as a snapshot file's bytes.
pub fn encode(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + payload.len());
    out.extend_from_slice(&header(&[payload]));
    out.extend_from_slice(payload);
    out
}

/// The header of a payload given as consecutive parts.
fn header(parts: &[&[u8]]) -> Vec<u8> {
    let crc = parts.iter().fold(0, |crc, p| crc32c::crc32c_append(crc, p));
    let len: usize = parts.iter().map(|p| p.len()).sum();
    let mut out = Vec::with_capacity(HEADER);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(&(len as u64).to_le_bytes());
    out
}

/// Like [`decode`] for bytes that may carry zero padding after the payload
/// (saved snapshots are padded to etcd's 512-byte multiple).
pub fn decode_padded(bytes: &[u8]) -> Result<&[u8], String> {
    let len = bytes
        .get(12..HEADER)
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map(u64::from_le_bytes)
        .ok_or_else(|| format!("file of {} bytes is shorter than the header", bytes.len()))?;
    let end = usize::try_from(len)
        .ok()
        .and_then(|l| l.checked_add(HEADER))
        .filter(|end| *end <= bytes.len())
        .ok_or_else(|| {
            format!(
                "header announces {len} payload bytes, file has {}",
                bytes.len() - HEADER
            )
        })?;
    if bytes[end..].iter().any(|b| *b != 0) {
        return Err("unexpected bytes after the payload".into());
    }
    decode(&bytes[..end])
}

/// Checks a snapshot file's bytes and returns the payload.
pub fn decode(bytes: &[u8]) -> Result<&[u8], String> {
    let Some((header, payload)) = bytes.split_first_chunk::<HEADER>() else {
        return Err(format!(
            "file of {} bytes is shorter than the header",
            bytes.len()
        ));
    };
    if &header[..8] != MAGIC {
        return Err("not a qed snapshot (bad magic)".into());
    }
    let crc = u32::from_le_bytes([header[8], header[9], header[10], header[11]]);
    let mut len = [0u8; 8];
    len.copy_from_slice(&header[12..20]);
    let len = u64::from_le_bytes(len);
    if payload.len() as u64 != len {
        return Err(format!(
            "header announces {len} payload bytes, file has {}",
            payload.len()
        ));
    }
    let actual = crc32c::crc32c(payload);
    if actual != crc {
        return Err(format!(
            "checksum mismatch (stored {crc:08x}, computed {actual:08x})"
        ));
    }
    Ok(payload)
}

/// Bytes [`SnapshotStore::save_with`] buffers between writes.
pub const STREAM_BUFFER: usize = 256 * 1024;

/// A streamed payload on its way into a temp file: buffered, checksummed.
struct FileSink<'a> {
    file: &'a dyn FsFile,
    /// Where the buffer goes.
    offset: u64,
    buf: Vec<u8>,
    crc: u32,
}

impl Write for FileSink<'_> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        if self.buf.len() + bytes.len() > STREAM_BUFFER {
            self.flush()?;
        }
        if bytes.len() >= STREAM_BUFFER {
            self.crc = crc32c::crc32c_append(self.crc, bytes);
            self.file.write_at(bytes, self.offset)?;
            self.offset += bytes.len() as u64;
        } else {
            self.buf.extend_from_slice(bytes);
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if !self.buf.is_empty() {
            self.crc = crc32c::crc32c_append(self.crc, &self.buf);
            self.file.write_at(&self.buf, self.offset)?;
            self.offset += self.buf.len() as u64;
            self.buf.clear();
        }
        Ok(())
    }
}

/// A snapshot file's payload as a stream: at most the length its header
/// announces, checksummed as it goes. Nothing read may be trusted before
/// [`PayloadReader::finish`] says the file was whole.
pub struct PayloadReader {
    inner: Box<dyn Read + Send>,
    path: PathBuf,
    declared: u64,
    remaining: u64,
    crc: u32,
    expected: u32,
}

impl Read for PayloadReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.remaining == 0 || buf.is_empty() {
            return Ok(0);
        }
        let want = usize::try_from(self.remaining).map_or(buf.len(), |r| r.min(buf.len()));
        let n = self.inner.read(&mut buf[..want])?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        self.crc = crc32c::crc32c_append(self.crc, &buf[..n]);
        self.remaining -= n as u64;
        Ok(n)
    }
}

impl PayloadReader {
    /// Reads what is left of the payload and checks the whole of it: the
    /// length the header announced, nothing after it, its checksum.
    pub fn finish(mut self) -> Result<(), StorageError> {
        let path = self.path.clone();
        let corrupt = |reason: String| StorageError::Corrupt {
            path: path.clone(),
            offset: 0,
            reason,
        };
        if std::io::copy(&mut self, &mut std::io::sink()).is_err() {
            return Err(corrupt(format!(
                "file ends {} bytes before the payload its header announces",
                self.remaining
            )));
        }
        let mut extra = [0u8; 1];
        if self
            .inner
            .read(&mut extra)
            .map_err(io_error(&path, "read"))?
            > 0
        {
            return Err(corrupt("unexpected bytes after the payload".into()));
        }
        if self.crc != self.expected {
            return Err(corrupt(format!(
                "checksum mismatch (stored {:08x}, computed {:08x})",
                self.expected, self.crc
            )));
        }
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The payload's length, as its header announces it.
    pub fn len(&self) -> u64 {
        self.declared
    }

    pub fn is_empty(&self) -> bool {
        self.declared == 0
    }
}

/// Decodes consecutive postcard values from a stream, holding only a
/// window of it (grown as far as the largest single value needs).
pub struct StreamDecoder<R> {
    reader: R,
    buf: Vec<u8>,
    pos: usize,
    eof: bool,
    consumed: u64,
}

impl<R: Read> StreamDecoder<R> {
    pub fn new(reader: R) -> Self {
        StreamDecoder {
            reader,
            buf: Vec::new(),
            pos: 0,
            eof: false,
            consumed: 0,
        }
    }

    /// Reads more into the window (at least doubling what an unfinished
    /// value already holds).
    fn fill(&mut self) -> std::io::Result<()> {
        self.buf.drain(..self.pos);
        self.pos = 0;
        let old = self.buf.len();
        self.buf.resize(old + old.max(STREAM_BUFFER), 0);
        let mut got = 0;
        while old + got < self.buf.len() {
            match self.reader.read(&mut self.buf[old + got..]) {
                Ok(0) => {
                    self.eof = true;
                    break;
                }
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.buf.truncate(old + got);
                    return Err(e);
                }
            }
        }
        self.buf.truncate(old + got);
        Ok(())
    }

    /// The next value.
    pub fn decode<T: serde::de::DeserializeOwned>(&mut self) -> Result<T, String> {
        loop {
            match postcard::take_from_bytes::<T>(&self.buf[self.pos..]) {
                Ok((value, rest)) => {
                    let used = self.buf.len() - self.pos - rest.len();
                    self.pos += used;
                    self.consumed += used as u64;
                    return Ok(value);
                }
                Err(postcard::Error::DeserializeUnexpectedEnd) if !self.eof => {
                    self.fill().map_err(|e| e.to_string())?;
                }
                Err(e) => return Err(e.to_string()),
            }
        }
    }

    /// Whether the stream is over.
    pub fn at_end(&mut self) -> Result<bool, String> {
        if self.pos == self.buf.len() && !self.eof {
            self.fill().map_err(|e| e.to_string())?;
        }
        Ok(self.pos == self.buf.len() && self.eof)
    }

    /// Bytes decoded so far.
    pub fn consumed(&self) -> u64 {
        self.consumed
    }
}

impl<R: Read> crate::mvcc::ValueSource for StreamDecoder<R> {
    fn next_value<T: serde::de::DeserializeOwned>(&mut self) -> Result<T, String> {
        self.decode()
    }

    fn consumed(&self) -> u64 {
        self.consumed
    }

    fn at_end(&mut self) -> Result<bool, String> {
        StreamDecoder::at_end(self)
    }
}

/// The snapshot directory.
#[derive(Debug, Clone)]
pub struct SnapshotStore {
    fs: Arc<dyn Fs>,
    dir: PathBuf,
    keep: usize,
    /// Held by `save` (write, rename, prune), shared by clones.
    writing: Arc<Mutex<()>>,
}

impl SnapshotStore {
    /// Opens `dir` on the operating system's files; see [`SnapshotStore::open_in`].
    pub fn open(dir: &Path, keep: usize) -> Result<SnapshotStore, StorageError> {
        SnapshotStore::open_in(Arc::new(OsFs), dir, keep)
    }

    /// Opens `dir`, creating it if needed; `keep` snapshots are retained.
    /// Temp files an interrupted save left behind are removed (nothing else
    /// writes here yet).
    pub fn open_in(
        fs: Arc<dyn Fs>,
        dir: &Path,
        keep: usize,
    ) -> Result<SnapshotStore, StorageError> {
        create_dir_durable(&*fs, dir)?;
        for name in fs.list(dir).map_err(io_error(dir, "list"))? {
            if name.ends_with(".tmp") {
                // Failing only leaves it for the next start.
                let _ = fs.remove(&dir.join(name));
            }
        }
        Ok(SnapshotStore {
            fs,
            dir: dir.to_path_buf(),
            keep: keep.max(1),
            writing: Arc::new(Mutex::new(())),
        })
    }

    /// Snapshot ids on disk, oldest first.
    pub fn list(&self) -> Result<Vec<SnapshotId>, StorageError> {
        let mut ids: Vec<SnapshotId> = self
            .fs
            .list(&self.dir)
            .map_err(io_error(&self.dir, "list"))?
            .iter()
            .filter_map(|name| parse_name(name))
            .collect();
        ids.sort_by_key(|id| (id.index, id.term));
        Ok(ids)
    }

    pub fn path(&self, id: SnapshotId) -> PathBuf {
        self.dir.join(file_name(id))
    }

    /// Writes a snapshot atomically, then drops the oldest beyond `keep`.
    /// The payload comes in parts written one after another, so a caller
    /// never has to copy a large state into one buffer with its framing.
    pub fn save(&self, id: SnapshotId, payload: &[&[u8]]) -> Result<PathBuf, StorageError> {
        self.save_file(id, |file, tmp| {
            let mut offset = 0u64;
            for part in std::iter::once(&header(payload)[..]).chain(payload.iter().copied()) {
                file.write_at(part, offset)
                    .map_err(io_error(tmp, "write"))?;
                offset += part.len() as u64;
            }
            Ok(())
        })
    }

    /// A temp file filled by `fill`, synced, renamed into place, the
    /// directory synced; then the oldest beyond `keep` are removed.
    fn save_file(
        &self,
        id: SnapshotId,
        fill: impl FnOnce(&dyn FsFile, &Path) -> Result<(), StorageError>,
    ) -> Result<PathBuf, StorageError> {
        let _writing = self.writing.lock().unwrap_or_else(|p| p.into_inner());
        let path = self.path(id);
        let tmp = self.dir.join(format!("{}.tmp", file_name(id)));
        let file = self.fs.create(&tmp).map_err(io_error(&tmp, "create"))?;
        fill(&*file, &tmp)?;
        file.sync_all().map_err(io_error(&tmp, "fsync"))?;
        drop(file);
        self.fs
            .rename(&tmp, &path)
            .map_err(io_error(&path, "rename into place"))?;
        sync_dir(&*self.fs, &self.dir)?;
        let ids = self.list()?;
        let mut removed = false;
        for old in ids.iter().take(ids.len().saturating_sub(self.keep)) {
            let p = self.path(*old);
            match self.fs.remove(&p) {
                Ok(()) => removed = true,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_error(&p, "remove")(e)),
            }
        }
        if removed {
            sync_dir(&*self.fs, &self.dir)?;
        }
        Ok(path)
    }

    /// Like [`SnapshotStore::save`] for a payload that `write` streams out
    /// (through a buffer of [`STREAM_BUFFER`] bytes): no copy of a large
    /// state is ever held in memory whole. The header, which needs the
    /// payload's checksum and length, is written last, before the fsync.
    pub fn save_with(
        &self,
        id: SnapshotId,
        write: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
    ) -> Result<PathBuf, StorageError> {
        self.save_file(id, |file, tmp| {
            let mut sink = FileSink {
                file,
                offset: HEADER as u64,
                buf: Vec::with_capacity(STREAM_BUFFER),
                crc: 0,
            };
            write(&mut sink)
                .and_then(|()| sink.flush())
                .map_err(io_error(tmp, "write"))?;
            let len = sink.offset - HEADER as u64;
            let mut head = Vec::with_capacity(HEADER);
            head.extend_from_slice(MAGIC);
            head.extend_from_slice(&sink.crc.to_le_bytes());
            head.extend_from_slice(&len.to_le_bytes());
            file.write_at(&head, 0).map_err(io_error(tmp, "write"))
        })
    }

    /// Maps snapshot `id` into memory (see `Fs::map`) and checks it whole:
    /// the mapping and where its payload lies in it.
    pub fn map_payload(
        &self,
        id: SnapshotId,
    ) -> Result<(Arc<Backing>, std::ops::Range<usize>), StorageError> {
        let path = self.path(id);
        let backing = self.fs.map(&path).map_err(io_error(&path, "map"))?;
        let payload = decode(backing.bytes()).map_err(|reason| StorageError::Corrupt {
            path: path.clone(),
            offset: 0,
            reason,
        })?;
        let start = payload.as_ptr() as usize - backing.bytes().as_ptr() as usize;
        let range = start..start + payload.len();
        Ok((backing, range))
    }

    /// Opens snapshot `id`'s payload as a stream, checked as it is read
    /// (see [`PayloadReader::finish`]).
    pub fn open_payload(&self, id: SnapshotId) -> Result<PayloadReader, StorageError> {
        let path = self.path(id);
        let file = self.fs.open_read(&path).map_err(io_error(&path, "open"))?;
        let mut inner = std::io::BufReader::with_capacity(STREAM_BUFFER, file);
        let corrupt = |reason: String| StorageError::Corrupt {
            path: path.clone(),
            offset: 0,
            reason,
        };
        let mut header = [0u8; HEADER];
        std::io::Read::read_exact(&mut inner, &mut header)
            .map_err(|_| corrupt("file is shorter than the header".into()))?;
        if &header[..8] != MAGIC {
            return Err(corrupt("not a qed snapshot (bad magic)".into()));
        }
        let expected = u32::from_le_bytes([header[8], header[9], header[10], header[11]]);
        let mut len = [0u8; 8];
        len.copy_from_slice(&header[12..20]);
        Ok(PayloadReader {
            inner: Box::new(inner),
            path: path.clone(),
            declared: u64::from_le_bytes(len),
            remaining: u64::from_le_bytes(len),
            crc: 0,
            expected,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The newest snapshot's payload, read through and checked.
    fn load_newest(store: &SnapshotStore) -> Result<Option<(SnapshotId, Vec<u8>)>, StorageError> {
        let Some(id) = store.list()?.pop() else {
            return Ok(None);
        };
        let mut payload = store.open_payload(id)?;
        let mut bytes = Vec::new();
        let read = payload.read_to_end(&mut bytes);
        payload.finish()?;
        read.map_err(io_error(&store.path(id), "read"))?;
        Ok(Some((id, bytes)))
    }

    fn dir(tag: &str) -> PathBuf {
        let p = std::env::temp_dir().join(format!("qed-snap-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        p
    }

    #[test]
    fn saves_loads_and_keeps_the_newest() {
        let d = dir("keep");
        let store = SnapshotStore::open(&d, 2).unwrap();
        assert!(load_newest(&store).unwrap().is_none());
        for i in 1..=4u64 {
            store
                .save(
                    SnapshotId {
                        term: 1,
                        index: i * 10,
                    },
                    // In two parts: the file holds them as one payload.
                    &[b"state ", format!("{i}").as_bytes()],
                )
                .unwrap();
        }
        assert_eq!(store.list().unwrap().len(), 2);
        let (id, payload) = load_newest(&store).unwrap().unwrap();
        assert_eq!((id.index, payload.as_slice()), (40, &b"state 4"[..]));
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_truncated_or_flipped_snapshot_is_an_error_naming_the_file() {
        let d = dir("bad");
        let store = SnapshotStore::open(&d, 5).unwrap();
        let path = store
            .save(SnapshotId { term: 2, index: 7 }, &[&[7u8; 1000]])
            .unwrap();
        let good = std::fs::read(&path).unwrap();
        for damaged in [good[..500].to_vec(), {
            let mut b = good.clone();
            b[600] ^= 1;
            b
        }] {
            std::fs::write(&path, &damaged).unwrap();
            match load_newest(&store) {
                Err(StorageError::Corrupt { path: p, .. }) => assert_eq!(p, path),
                other => panic!("expected corruption, got {other:?}"),
            }
        }
        let _ = std::fs::remove_dir_all(&d);
    }

    /// Two writers share one store (the Raft loop's own snapshots and the
    /// leader's, issue 12 item 7): neither may delete the other's temp
    /// file, and both pruning the same old file is no error.
    #[test]
    fn two_writers_at_once_never_fail() {
        let d = dir("race");
        let store = SnapshotStore::open(&d, 2).unwrap();
        let writers: Vec<_> = (0..2u64)
            .map(|w| {
                let store = store.clone();
                std::thread::spawn(move || {
                    for i in 0..50u64 {
                        let id = SnapshotId {
                            term: 1,
                            index: i * 2 + w,
                        };
                        if let Err(e) = store.save(id, &[&[w as u8; 300]]) {
                            return Err(format!("writer {w}, snapshot {i}: {e}"));
                        }
                    }
                    Ok(())
                })
            })
            .collect();
        for w in writers {
            w.join().unwrap().unwrap();
        }
        assert_eq!(store.list().unwrap().len(), 2);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn decode_refuses_garbage() {
        assert!(decode(b"short").is_err());
        assert!(decode(&[0u8; 40]).is_err());
        let mut ok = encode(b"x");
        assert_eq!(decode(&ok).unwrap(), b"x");
        ok.push(0);
        assert!(decode(&ok).is_err());
    }
}
