//! An in-memory [`Fs`] that simulates power cuts, for tests.
//!
//! It keeps two views of every file: what was written (the page cache) and
//! what was synced (the disk), plus the directory entries as the process
//! sees them and as the disk holds them. [`SimFs::power_cut`] throws the
//! cache away the way a real cut can: each page written since the last sync
//! reaches the disk whole, not at all, or torn (each 512-byte sector of it
//! new or old on its own), independently of the other pages, so later pages
//! may land while earlier ones are lost; a file whose length changed keeps
//! the old or the new length; directory operations (create, rename, remove,
//! mkdir) not yet made durable by [`Fs::sync_dir`] on their directory
//! survive only as a prefix of the order they were made in (a journal).
//! Sectors are atomic: no cut damages a sector that was already on disk.
//!
//! [`SimFs::fail_after`] arms a cut in the middle of the workload: after
//! that many more mutating operations every call fails, as if the process
//! had died there, until `power_cut`.

use super::fs::{Fs, FsFile};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

/// Sectors are written all or nothing.
pub const SECTOR: usize = 512;
/// Writeback happens in pages.
pub const PAGE: usize = 4096;

#[derive(Default)]
struct Inode {
    data: Vec<u8>,
    durable: Vec<u8>,
    /// Pages written since the last sync.
    dirty: BTreeSet<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Node {
    File(u64),
    Dir,
}

#[derive(Debug)]
enum DirOp {
    Link(PathBuf, Node),
    Unlink(PathBuf),
    Rename(PathBuf, PathBuf),
}

impl DirOp {
    /// The directory whose fsync makes this durable.
    fn dir(&self) -> &Path {
        let p = match self {
            DirOp::Link(p, _) | DirOp::Unlink(p) | DirOp::Rename(_, p) => p,
        };
        p.parent().unwrap_or(Path::new("/"))
    }

    fn apply(&self, names: &mut BTreeMap<PathBuf, Node>) {
        match self {
            DirOp::Link(p, n) => {
                names.insert(p.clone(), *n);
            }
            DirOp::Unlink(p) => {
                names.remove(p);
            }
            DirOp::Rename(from, to) => {
                if let Some(n) = names.remove(from) {
                    names.insert(to.clone(), n);
                }
            }
        }
    }
}

struct State {
    inodes: HashMap<u64, Inode>,
    next_inode: u64,
    names: BTreeMap<PathBuf, Node>,
    durable_names: BTreeMap<PathBuf, Node>,
    pending: Vec<DirOp>,
    /// Mutating operations left before the power fails (`None`: never).
    budget: Option<u64>,
    dead: bool,
}

/// The simulated disk; clones share it.
#[derive(Clone)]
pub struct SimFs(Arc<Mutex<State>>);

impl std::fmt::Debug for SimFs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SimFs")
    }
}

struct SimFile {
    fs: SimFs,
    inode: u64,
}

fn cut_error() -> io::Error {
    io::Error::other("simulated power cut")
}

fn not_found(path: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!("{} not found", path.display()),
    )
}

/// The cut's only source of randomness.
pub use crate::test_rng::Rng;

impl Default for SimFs {
    fn default() -> Self {
        SimFs::new()
    }
}

impl SimFs {
    /// An empty disk holding only the directory `/`.
    pub fn new() -> SimFs {
        let mut names = BTreeMap::new();
        names.insert(PathBuf::from("/"), Node::Dir);
        SimFs(Arc::new(Mutex::new(State {
            inodes: HashMap::new(),
            next_inode: 1,
            durable_names: names.clone(),
            names,
            pending: Vec::new(),
            budget: None,
            dead: false,
        })))
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The power fails after `ops` more mutating operations.
    pub fn fail_after(&self, ops: u64) {
        self.state().budget = Some(ops);
    }

    /// Cuts the power now: what was not synced is lost, torn or kept as
    /// described in the module doc, then the disk works again.
    pub fn power_cut(&self, rng: &mut Rng) {
        let mut st = self.state();
        let st = &mut *st;
        let keep = rng.below(st.pending.len() as u64 + 1) as usize;
        for op in st.pending.drain(..).take(keep) {
            op.apply(&mut st.durable_names);
        }
        // An entry whose directory's own entry was lost is lost with it.
        let orphans: Vec<PathBuf> = st
            .durable_names
            .keys()
            .filter(|p| {
                p.ancestors()
                    .skip(1)
                    .any(|a| st.durable_names.get(a) != Some(&Node::Dir))
            })
            .cloned()
            .collect();
        for p in orphans {
            st.durable_names.remove(&p);
        }
        st.names = st.durable_names.clone();
        for inode in st.inodes.values_mut() {
            let len = if inode.data.len() != inode.durable.len() && rng.below(2) == 0 {
                inode.data.len()
            } else {
                inode.durable.len()
            };
            let mut disk = std::mem::take(&mut inode.durable);
            disk.resize(len, 0);
            for &page in &inode.dirty {
                // 0: lost, 1: written whole, 2: torn sector by sector.
                let how = rng.below(3);
                for sector in 0..PAGE / SECTOR {
                    let start = page * PAGE + sector * SECTOR;
                    let end = (start + SECTOR).min(len).min(inode.data.len());
                    let landed = how == 1 || (how == 2 && rng.below(2) == 0);
                    if landed && start < end {
                        disk[start..end].copy_from_slice(&inode.data[start..end]);
                    }
                }
            }
            inode.dirty.clear();
            inode.data = disk.clone();
            inode.durable = disk;
        }
        st.budget = None;
        st.dead = false;
    }

    /// Flips one bit of a file on disk (bit rot), or returns false when the
    /// file is shorter.
    pub fn flip_bit(&self, path: &Path, offset: usize, bit: u8) -> bool {
        let mut st = self.state();
        let Some(Node::File(ino)) = st.names.get(path).copied() else {
            return false;
        };
        let Some(inode) = st.inodes.get_mut(&ino) else {
            return false;
        };
        if offset >= inode.data.len() {
            return false;
        }
        inode.data[offset] ^= 1 << (bit % 8);
        if offset < inode.durable.len() {
            inode.durable[offset] ^= 1 << (bit % 8);
        }
        true
    }

    /// The files under `dir` (recursively) and their lengths, in name order.
    pub fn files(&self, dir: &Path) -> Vec<(PathBuf, usize)> {
        let st = self.state();
        st.names
            .iter()
            .filter(|(p, _)| p.starts_with(dir))
            .filter_map(|(p, n)| match n {
                Node::File(ino) => Some((p.clone(), st.inodes.get(ino)?.data.len())),
                Node::Dir => None,
            })
            .collect()
    }

    /// Spends one mutating operation of the budget.
    fn spend(st: &mut State) -> io::Result<()> {
        if st.dead {
            return Err(cut_error());
        }
        if let Some(left) = st.budget.as_mut() {
            if *left == 0 {
                st.dead = true;
                return Err(cut_error());
            }
            *left -= 1;
        }
        Ok(())
    }

    fn alive(st: &State) -> io::Result<()> {
        if st.dead {
            Err(cut_error())
        } else {
            Ok(())
        }
    }

    fn parent_is_dir(st: &State, path: &Path) -> io::Result<()> {
        let parent = path.parent().ok_or_else(|| not_found(path))?;
        match st.names.get(parent) {
            Some(Node::Dir) => Ok(()),
            _ => Err(not_found(parent)),
        }
    }
}

impl Fs for SimFs {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        let mut st = self.state();
        let missing: Vec<PathBuf> = dir
            .ancestors()
            .take_while(|a| !st.names.contains_key(*a))
            .map(Path::to_path_buf)
            .collect();
        for d in missing.into_iter().rev() {
            Self::spend(&mut st)?;
            st.names.insert(d.clone(), Node::Dir);
            st.pending.push(DirOp::Link(d, Node::Dir));
        }
        match st.names.get(dir) {
            Some(Node::Dir) => Ok(()),
            _ => Err(io::Error::other(format!("{} is a file", dir.display()))),
        }
    }

    fn exists(&self, path: &Path) -> bool {
        self.state().names.contains_key(path)
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let st = self.state();
        Self::alive(&st)?;
        if st.names.get(dir) != Some(&Node::Dir) {
            return Err(not_found(dir));
        }
        Ok(st
            .names
            .keys()
            .filter(|p| p.parent() == Some(dir))
            .filter_map(|p| Some(p.file_name()?.to_str()?.to_string()))
            .collect())
    }

    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        let st = self.state();
        Self::alive(&st)?;
        match st.names.get(path) {
            Some(Node::File(ino)) => Ok(st
                .inodes
                .get(ino)
                .map(|i| i.data.clone())
                .unwrap_or_default()),
            _ => Err(not_found(path)),
        }
    }

    fn open_read(&self, path: &Path) -> io::Result<Box<dyn io::Read + Send>> {
        Ok(Box::new(io::Cursor::new(self.read(path)?)))
    }

    fn create(&self, path: &Path) -> io::Result<Box<dyn FsFile>> {
        let mut st = self.state();
        Self::spend(&mut st)?;
        Self::parent_is_dir(&st, path)?;
        let inode = match st.names.get(path) {
            Some(Node::File(ino)) => {
                let ino = *ino;
                if let Some(i) = st.inodes.get_mut(&ino) {
                    i.data.clear();
                }
                ino
            }
            Some(Node::Dir) => return Err(io::Error::other("is a directory")),
            None => {
                let ino = st.next_inode;
                st.next_inode += 1;
                st.inodes.insert(ino, Inode::default());
                st.names.insert(path.to_path_buf(), Node::File(ino));
                st.pending
                    .push(DirOp::Link(path.to_path_buf(), Node::File(ino)));
                ino
            }
        };
        Ok(Box::new(SimFile {
            fs: self.clone(),
            inode,
        }))
    }

    fn open(&self, path: &Path) -> io::Result<Box<dyn FsFile>> {
        let st = self.state();
        Self::alive(&st)?;
        match st.names.get(path) {
            Some(Node::File(ino)) => Ok(Box::new(SimFile {
                fs: self.clone(),
                inode: *ino,
            })),
            _ => Err(not_found(path)),
        }
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut st = self.state();
        Self::spend(&mut st)?;
        Self::parent_is_dir(&st, to)?;
        let node = st.names.remove(from).ok_or_else(|| not_found(from))?;
        st.names.insert(to.to_path_buf(), node);
        st.pending
            .push(DirOp::Rename(from.to_path_buf(), to.to_path_buf()));
        Ok(())
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        let mut st = self.state();
        Self::spend(&mut st)?;
        match st.names.get(path) {
            Some(Node::File(_)) => {
                st.names.remove(path);
                st.pending.push(DirOp::Unlink(path.to_path_buf()));
                Ok(())
            }
            _ => Err(not_found(path)),
        }
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut st = self.state();
        Self::spend(&mut st)?;
        if st.names.get(dir) != Some(&Node::Dir) {
            return Err(not_found(dir));
        }
        let st = &mut *st;
        let mut rest = Vec::new();
        for op in st.pending.drain(..) {
            if op.dir() == dir {
                op.apply(&mut st.durable_names);
            } else {
                rest.push(op);
            }
        }
        st.pending = rest;
        Ok(())
    }
}

impl SimFile {
    fn with<T>(&self, f: impl FnOnce(&mut Inode) -> T) -> io::Result<T> {
        let mut st = self.fs.state();
        SimFs::spend(&mut st)?;
        let inode = st
            .inodes
            .get_mut(&self.inode)
            .ok_or_else(|| io::Error::other("stale file handle"))?;
        Ok(f(inode))
    }
}

impl FsFile for SimFile {
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        if buf.is_empty() {
            return Ok(());
        }
        let start = usize::try_from(offset).map_err(io::Error::other)?;
        self.with(|inode| {
            let end = start + buf.len();
            if inode.data.len() < end {
                inode.data.resize(end, 0);
            }
            inode.data[start..end].copy_from_slice(buf);
            inode.dirty.extend(start / PAGE..=(end - 1) / PAGE);
        })
    }

    fn allocate(&self, len: u64) -> io::Result<()> {
        let len = usize::try_from(len).map_err(io::Error::other)?;
        self.with(|inode| {
            if inode.data.len() < len {
                inode.data.resize(len, 0);
            }
        })
    }

    fn sync_data(&self) -> io::Result<()> {
        self.with(|inode| {
            inode.durable = inode.data.clone();
            inode.dirty.clear();
        })
    }

    fn sync_all(&self) -> io::Result<()> {
        self.sync_data()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsynced_data_and_entries_can_be_lost_synced_ones_never() {
        for seed in 0..200 {
            let fs = SimFs::new();
            let mut rng = Rng(seed);
            let dir = Path::new("/d");
            fs.create_dir_all(dir).unwrap();
            fs.sync_dir(Path::new("/")).unwrap();
            let f = fs.create(&dir.join("a")).unwrap();
            f.write_at(&[1; 3 * PAGE], 0).unwrap();
            f.sync_data().unwrap();
            fs.sync_dir(dir).unwrap();
            f.write_at(&[2; 2 * PAGE], PAGE as u64).unwrap();
            let g = fs.create(&dir.join("b")).unwrap();
            g.write_at(b"b", 0).unwrap();
            g.sync_data().unwrap();
            fs.power_cut(&mut rng);
            let a = fs.read(&dir.join("a")).unwrap();
            assert_eq!(a.len(), 3 * PAGE, "seed {seed}");
            assert_eq!(&a[..PAGE], &[1; PAGE][..], "seed {seed}");
            // Every sector is wholly old or wholly new.
            for s in a[PAGE..].chunks(SECTOR) {
                assert!(s == [1; SECTOR] || s == [2; SECTOR], "seed {seed}");
            }
            // `b` was never made durable in its directory.
            if let Ok(b) = fs.read(&dir.join("b")) {
                assert_eq!(b, b"b");
            }
        }
    }

    /// `member/cluster_id` is written this way: once `write_atomic`
    /// returns, no power cut loses or mixes it.
    #[test]
    fn write_atomic_survives_any_cut() {
        for seed in 0..200 {
            let fs = SimFs::new();
            let mut rng = Rng(seed);
            let dir = Path::new("/member");
            fs.create_dir_all(dir).unwrap();
            fs.sync_dir(Path::new("/")).unwrap();
            let path = dir.join("cluster_id");
            super::super::fs::write_atomic(&fs, &path, b"old\n").unwrap();
            super::super::fs::write_atomic(&fs, &path, b"new\n").unwrap();
            fs.power_cut(&mut rng);
            assert_eq!(
                fs.read(&path).ok().as_deref(),
                Some(&b"new\n"[..]),
                "seed {seed}"
            );
        }
    }

    #[test]
    fn the_budget_kills_every_later_call() {
        let fs = SimFs::new();
        fs.fail_after(1);
        let f = fs.create(Path::new("/x")).unwrap();
        assert!(f.write_at(b"x", 0).is_err());
        assert!(fs.list(Path::new("/")).is_err());
        fs.power_cut(&mut Rng(1));
        assert!(fs.list(Path::new("/")).is_ok());
    }
}
