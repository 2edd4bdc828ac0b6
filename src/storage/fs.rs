//! The file layer the WAL and snapshot store write through.
//!
//! [`Fs`] is the handful of file and directory operations storage needs;
//! [`OsFs`] is the real one. Tests put a fault-injecting in-memory one
//! (`sim_fs`) behind the same trait to simulate power cuts, which SIGKILL
//! cannot: a killed process keeps the page cache, a power cut does not.
//!
//! The contract the storage code relies on, and the simulation enforces:
//! a file's bytes are durable only after [`FsFile::sync_data`] (or
//! `sync_all`) returns; a directory entry (a create, rename or remove) is
//! durable only after [`Fs::sync_dir`] on its directory returns; a single
//! 512-byte sector is written all or nothing, but the sectors and pages of
//! one write may reach the disk in any order, or not at all, until the
//! next sync.

use std::fmt::Debug;
use std::io;
use std::path::Path;
use std::sync::Arc;

use crate::mvcc::{Backing, Mapped};

/// File and directory operations; paths are plain paths.
pub trait Fs: Send + Sync + Debug {
    /// Creates `dir` and any missing parents (not yet durable: the caller
    /// syncs the parent).
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// Whether `path` names a file or directory.
    fn exists(&self, path: &Path) -> bool;
    /// The names in `dir`.
    fn list(&self, dir: &Path) -> io::Result<Vec<String>>;
    /// A file's whole contents.
    fn read(&self, path: &Path) -> io::Result<Vec<u8>>;
    /// A file's contents as a stream, for files too large to hold whole
    /// (snapshots).
    fn open_read(&self, path: &Path) -> io::Result<Box<dyn io::Read + Send>>;
    /// Creates (or truncates) a file for writing.
    fn create(&self, path: &Path) -> io::Result<Box<dyn FsFile>>;
    /// Opens an existing file for writing.
    fn open(&self, path: &Path) -> io::Result<Box<dyn FsFile>>;
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    fn remove(&self, path: &Path) -> io::Result<()>;
    /// Makes the creates, renames and removes in `dir` durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    /// A file that is never written again (a snapshot), as bytes a store's
    /// values may stay in (`mvcc::Backing`). A layer that cannot map files
    /// reads it whole.
    fn map(&self, path: &Path) -> io::Result<Arc<Backing>> {
        Ok(Backing::new(self.read(path)?))
    }
}

/// An open file.
pub trait FsFile: Send {
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// Gives the file `len` bytes of real, zeroed blocks, so that later
    /// writes inside them cannot run out of space.
    fn allocate(&self, len: u64) -> io::Result<()>;
    fn sync_data(&self) -> io::Result<()>;
    /// Like `sync_data`, and the file's metadata (its length) too.
    fn sync_all(&self) -> io::Result<()>;
}

/// A file mapped read-only into memory (see [`Fs::map`]). Its pages are
/// read in on first access, belong to the page cache, and count as this
/// process's resident memory only while mapped in its page tables.
///
/// Invariant: nobody writes or truncates the file while it is mapped (a
/// snapshot is never written after it is renamed into place; pruning only
/// unlinks it, which leaves the mapping valid until it is dropped).
struct MappedFile {
    at: *const u8,
    len: usize,
}

// SAFETY: the mapping is read-only and lives until `Drop`; reading it from
// any thread is as safe as reading a `&[u8]`.
unsafe impl Send for MappedFile {}
// SAFETY: as above.
unsafe impl Sync for MappedFile {}

impl Mapped for MappedFile {
    fn bytes(&self) -> &[u8] {
        // SAFETY: `len` readable bytes at `at` while the mapping lives,
        // never changed (the invariant above).
        unsafe { std::slice::from_raw_parts(self.at, self.len) }
    }

    fn release_pages(&self) {
        // MADV_DONTNEED on a private mapping never written to only drops
        // its page table entries: later reads fault the same bytes back in
        // from the page cache or the file. Advice; a failure changes
        // nothing but the resident size.
        // SAFETY: the range is exactly this live mapping.
        unsafe {
            libc::madvise(self.at as *mut libc::c_void, self.len, libc::MADV_DONTNEED);
        }
    }
}

impl Drop for MappedFile {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `OsFs::map`, unmapped once.
        unsafe {
            libc::munmap(self.at as *mut libc::c_void, self.len);
        }
    }
}

/// Replaces `path` (creating its directory if needed) atomically and
/// durably: a temp file written and synced, renamed over it, the directory
/// synced (a rename is durable only once its directory is).
pub fn write_atomic(fs: &dyn Fs, path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    fs.create_dir_all(dir)?;
    let tmp = path.with_extension("tmp");
    let file = fs.create(&tmp)?;
    file.write_at(bytes, 0)?;
    file.sync_all()?;
    drop(file);
    fs.rename(&tmp, path)?;
    fs.sync_dir(dir)
}

/// The operating system's files.
#[derive(Debug, Clone, Copy, Default)]
pub struct OsFs;

struct OsFile(std::fs::File);

impl Fs for OsFs {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        std::fs::create_dir_all(dir)
    }

    fn exists(&self, path: &Path) -> bool {
        path.exists()
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            // A name that is not UTF-8 is nothing storage wrote.
            if let Ok(name) = entry?.file_name().into_string() {
                names.push(name);
            }
        }
        Ok(names)
    }

    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        std::fs::read(path)
    }

    fn open_read(&self, path: &Path) -> io::Result<Box<dyn io::Read + Send>> {
        Ok(Box::new(std::fs::File::open(path)?))
    }

    fn map(&self, path: &Path) -> io::Result<Arc<Backing>> {
        let file = std::fs::File::open(path)?;
        let len = usize::try_from(file.metadata()?.len())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "file too large to map"))?;
        if len == 0 {
            // mmap refuses an empty mapping.
            return Ok(Backing::new(Vec::new()));
        }
        use std::os::fd::AsRawFd;
        // SAFETY: a fresh read-only private mapping of an open file; the
        // pointer is checked below and unmapped once, in `Drop`.
        let at = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_PRIVATE,
                file.as_raw_fd(),
                0,
            )
        };
        if at == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        // The mapping stays valid after the file is closed.
        Ok(Backing::new(MappedFile {
            at: at.cast::<u8>(),
            len,
        }))
    }

    fn create(&self, path: &Path) -> io::Result<Box<dyn FsFile>> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)?;
        Ok(Box::new(OsFile(file)))
    }

    fn open(&self, path: &Path) -> io::Result<Box<dyn FsFile>> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)?;
        Ok(Box::new(OsFile(file)))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        std::fs::File::open(dir)?.sync_all()
    }
}

impl FsFile for OsFile {
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        std::os::unix::fs::FileExt::write_all_at(&self.0, buf, offset)
    }

    fn allocate(&self, len: u64) -> io::Result<()> {
        #[cfg(target_os = "linux")]
        {
            use std::os::fd::AsRawFd;
            let len = libc::off_t::try_from(len)
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "file too large"))?;
            // SAFETY: fallocate only reads its integer arguments; the
            // descriptor is open for writing and owned by `self`.
            let rc = unsafe { libc::fallocate(self.0.as_raw_fd(), 0, 0, len) };
            if rc == 0 {
                return Ok(());
            }
            let err = io::Error::last_os_error();
            // Filesystems without fallocate get zeros written instead.
            if !matches!(
                err.raw_os_error(),
                Some(libc::EOPNOTSUPP) | Some(libc::ENOSYS)
            ) {
                return Err(err);
            }
        }
        write_zeros(&self.0, len)
    }

    fn sync_data(&self) -> io::Result<()> {
        self.0.sync_data()
    }

    fn sync_all(&self) -> io::Result<()> {
        self.0.sync_all()
    }
}

/// Allocates by writing zeros, a megabyte at a time.
fn write_zeros(file: &std::fs::File, len: u64) -> io::Result<()> {
    const CHUNK: u64 = 1024 * 1024;
    let zeros = vec![0u8; CHUNK.min(len) as usize];
    let mut off = 0;
    while off < len {
        let n = CHUNK.min(len - off) as usize;
        std::os::unix::fs::FileExt::write_all_at(file, &zeros[..n], off)?;
        off += n as u64;
    }
    Ok(())
}
