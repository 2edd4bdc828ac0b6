//! The member table: who is in the cluster and where to reach them.
//!
//! As in etcd, every member derives the same IDs from the same flags: a
//! member's ID hashes its peer URLs (sorted) with `--initial-cluster-token`,
//! and the cluster ID hashes the sorted member IDs with the token. So the
//! members of one `--initial-cluster` agree on every ID without talking, and
//! a member started with another token or another member list has another
//! cluster ID and is refused by the others (see [`super::peer`]).
//!
//! Invariants: the table follows the Raft configuration (`sync`, driven by
//! the Raft loop), so membership is durable through the log and snapshots;
//! URLs come from `--initial-cluster`, from a member-add entry's context, or
//! from the member's own hello (peer URLs only if they hash to its ID), and
//! an applied MemberUpdate overrides them all. A member's IDs are derived
//! once and then kept in its data directory (`member/id`), so they survive
//! a change of its peer URLs. A cluster of one member has exactly today's
//! single-node IDs.

use qed_wire::cluster::Member;
use qed_wire::raft::{ConfState, NodeId};
use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::RwLock;

/// Why `--initial-cluster` cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MembersError {
    /// An entry is not `name=url`.
    BadEntry(String),
    /// This member's name is not in the list.
    NameMissing(String),
    /// This member's entries do not match its `--initial-advertise-peer-urls`.
    UrlsDiffer {
        name: String,
        listed: Vec<String>,
        advertised: Vec<String>,
    },
    /// Two members hash to the same ID (same peer URLs).
    DuplicateId(NodeId),
}

impl fmt::Display for MembersError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MembersError::BadEntry(e) => write!(
                f,
                "--initial-cluster: {e:?} is not name=url (e.g. n1=http://10.0.0.1:2380)"
            ),
            MembersError::NameMissing(name) => write!(
                f,
                "--initial-cluster does not name this member ({name:?}); add {name}=<peer url>"
            ),
            MembersError::UrlsDiffer {
                name,
                listed,
                advertised,
            } => write!(
                f,
                "--initial-cluster gives {name} the peer URLs {listed:?} but \
                 --initial-advertise-peer-urls is {advertised:?}; they must be the same"
            ),
            MembersError::DuplicateId(id) => write!(
                f,
                "--initial-cluster: two members have the same peer URLs (member ID {id:x})"
            ),
        }
    }
}

impl std::error::Error for MembersError {}

/// A member's ID: its sorted peer URLs and the cluster token, hashed.
pub fn member_id(peer_urls: &[String], token: &str) -> NodeId {
    let mut urls = peer_urls.to_vec();
    urls.sort();
    fnv1a64(format!("{}|{token}", urls.join(",")).as_bytes())
}

/// The cluster ID: the sorted member IDs and the token, hashed. For one
/// member it is the ID single-node qed has always used.
pub fn cluster_id(member_ids: &[NodeId], token: &str) -> u64 {
    let mut ids = member_ids.to_vec();
    ids.sort_unstable();
    let ids: Vec<String> = ids.iter().map(|id| format!("{id:x}")).collect();
    fnv1a64(format!("{}|{token}", ids.join(",")).as_bytes())
}

/// The IDs a member was created with, kept in `member/id` so that they
/// survive a change of its peer URLs: `member=<hex>` and, once known,
/// `cluster=<hex>`. `None` when the file does not exist (a new data
/// directory, or one from before the file: its IDs are the URLs' hashes,
/// as they always were).
pub fn load_identity(path: &std::path::Path) -> std::io::Result<Option<(NodeId, u64)>> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let bad = || {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{}: not member=<hex> [cluster=<hex>]", path.display()),
        )
    };
    let (mut member, mut cluster) = (None, 0);
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let (key, value) = line.split_once('=').ok_or_else(bad)?;
        let value = u64::from_str_radix(value.trim(), 16).map_err(|_| bad())?;
        match key.trim() {
            "member" => member = Some(value),
            "cluster" => cluster = value,
            _ => return Err(bad()),
        }
    }
    member
        .filter(|id| *id != 0)
        .map(|id| (id, cluster))
        .ok_or_else(bad)
        .map(Some)
}

/// Writes `member/id` (atomically, durably).
pub fn save_identity(path: &std::path::Path, member: NodeId, cluster: u64) -> std::io::Result<()> {
    let mut text = format!("member={member:x}\n");
    if cluster != 0 {
        text.push_str(&format!("cluster={cluster:x}\n"));
    }
    crate::storage::fs::write_atomic(&crate::storage::fs::OsFs, path, text.as_bytes())
}

fn unhex32(text: &str) -> Option<[u8; 32]> {
    let text = text.trim();
    if text.len() != 64 || !text.is_ascii() {
        return None;
    }
    let mut out = [0; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Parses etcd's `--initial-cluster` (`n1=url,n1=url2,n2=url`) into names
/// and their peer URLs, in first-seen order.
pub fn parse_initial_cluster(text: &str) -> Result<Vec<(String, Vec<String>)>, MembersError> {
    let mut out: Vec<(String, Vec<String>)> = Vec::new();
    for entry in text.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let (name, url) = entry
            .split_once('=')
            .filter(|(n, u)| !n.trim().is_empty() && !u.trim().is_empty())
            .ok_or_else(|| MembersError::BadEntry(entry.to_string()))?;
        let (name, url) = (name.trim().to_string(), url.trim().to_string());
        match out.iter_mut().find(|(n, _)| *n == name) {
            Some((_, urls)) => urls.push(url),
            None => out.push((name, vec![url])),
        }
    }
    Ok(out)
}

/// The cluster's members, shared by the node (MemberList, forwarding) and
/// the peer transport (addresses, refusing strangers).
#[derive(Debug)]
pub struct Members {
    /// 0 while unknown: a member joining a running cluster learns it from
    /// the first member that contacts it ([`Members::adopt_cluster_id`]).
    cluster_id: AtomicU64,
    /// This member's ID.
    pub local: NodeId,
    /// `--initial-cluster-token`: an added member's ID hashes its peer URLs
    /// with it, as the member itself does when it starts.
    pub token: String,
    table: RwLock<BTreeMap<NodeId, Member>>,
    /// Members this one saw leave the configuration (in this run): their
    /// streams are refused with "removed", so they stop.
    removed: RwLock<Vec<NodeId>>,
    /// With generated peer certificates: each member's certificate
    /// fingerprint (SHA-256), pinned on first contact (trust on first use),
    /// and where the pins are kept across restarts.
    pins: RwLock<BTreeMap<NodeId, [u8; 32]>>,
    pin_file: RwLock<Option<PathBuf>>,
    /// Peer URLs set by MemberUpdate (the state machine's replicated map):
    /// they win over `--initial-cluster`, add contexts and hellos.
    updated: RwLock<BTreeMap<NodeId, Vec<String>>>,
}

/// A member presented another certificate than the one pinned for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PinMismatch {
    pub pinned: [u8; 32],
    pub presented: [u8; 32],
}

impl fmt::Display for PinMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "its certificate (sha256 {}) is not the one pinned on first contact (sha256 {}); \
             a member whose certificate changed must be removed and added again with other \
             peer URLs (or give every member --peer-trusted-ca-file)",
            hex(&self.presented),
            hex(&self.pinned)
        )
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Members {
    /// The table `--initial-cluster` describes; `name` and `peer_urls` are
    /// this member's, which must appear in it.
    pub fn from_initial_cluster(
        initial: &[(String, Vec<String>)],
        name: &str,
        peer_urls: &[String],
        client_urls: &[String],
        token: &str,
    ) -> Result<Members, MembersError> {
        Self::from_initial_cluster_keeping(initial, name, peer_urls, client_urls, token, None)
    }

    /// [`Members::from_initial_cluster`] for a member whose data directory
    /// holds its ID already. `stored_id`: the ID this
    /// member was created with (kept in its data directory, see
    /// [`load_identity`]); its peer URLs may have changed since (MemberUpdate),
    /// so they need not match the list then.
    pub fn from_initial_cluster_keeping(
        initial: &[(String, Vec<String>)],
        name: &str,
        peer_urls: &[String],
        client_urls: &[String],
        token: &str,
        stored_id: Option<NodeId>,
    ) -> Result<Members, MembersError> {
        let (_, listed) = initial
            .iter()
            .find(|(n, _)| n == name)
            .ok_or_else(|| MembersError::NameMissing(name.to_string()))?;
        let (mut a, mut b) = (listed.clone(), peer_urls.to_vec());
        a.sort();
        b.sort();
        if a != b && stored_id.is_none() {
            return Err(MembersError::UrlsDiffer {
                name: name.to_string(),
                listed: listed.clone(),
                advertised: peer_urls.to_vec(),
            });
        }
        let local = stored_id.unwrap_or_else(|| member_id(peer_urls, token));
        let mut table = BTreeMap::new();
        for (n, urls) in initial {
            let (id, urls) = match n == name {
                true => (local, peer_urls),
                false => (member_id(urls, token), urls.as_slice()),
            };
            let member = Member {
                id,
                name: n.clone(),
                peer_urls: urls.to_vec(),
                client_urls: if id == local {
                    client_urls.to_vec()
                } else {
                    Vec::new()
                },
                is_learner: false,
            };
            if table.insert(id, member).is_some() {
                return Err(MembersError::DuplicateId(id));
            }
        }
        let ids: Vec<NodeId> = table.keys().copied().collect();
        Ok(Members {
            cluster_id: AtomicU64::new(cluster_id(&ids, token)),
            local,
            token: token.to_string(),
            table: RwLock::new(table),
            removed: RwLock::new(Vec::new()),
            pins: RwLock::new(BTreeMap::new()),
            pin_file: RwLock::new(None),
            updated: RwLock::new(BTreeMap::new()),
        })
    }

    /// Takes the peer URLs MemberUpdate set (the state machine's whole
    /// map, after a restart or a snapshot install) and puts them in the table.
    pub fn set_updated_urls(&self, urls: &BTreeMap<NodeId, Vec<String>>) {
        *self.updated.write().unwrap_or_else(|p| p.into_inner()) = urls.clone();
        let mut table = self.table.write().unwrap_or_else(|p| p.into_inner());
        for (id, urls) in urls {
            if let Some(m) = table.get_mut(id) {
                m.peer_urls = urls.clone();
            }
        }
    }

    /// An applied MemberUpdate: member `id` now listens on `peer_urls`
    /// (its ID stays; the transport dials the new URLs from now on).
    pub fn update_peer_urls(&self, id: NodeId, peer_urls: &[String]) {
        self.updated
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, peer_urls.to_vec());
        if let Some(m) = self
            .table
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .get_mut(&id)
        {
            m.peer_urls = peer_urls.to_vec();
        }
    }

    /// Loads the certificate pins kept in `path` (none if it does not
    /// exist yet) and keeps later pins there. A line is `<member id hex>
    /// <sha256 hex>`; a file that does not parse is an error, not a reason
    /// to trust anyone anew.
    pub fn load_pins(&self, path: PathBuf) -> std::io::Result<()> {
        let bad = |line: &str| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{}: bad line {line:?}", path.display()),
            )
        };
        let mut pins = BTreeMap::new();
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                for line in text.lines().filter(|l| !l.trim().is_empty()) {
                    let (id, fp) = line.trim().split_once(' ').ok_or_else(|| bad(line))?;
                    let id = NodeId::from_str_radix(id, 16).map_err(|_| bad(line))?;
                    let fp = unhex32(fp).ok_or_else(|| bad(line))?;
                    pins.insert(id, fp);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        *self.pins.write().unwrap_or_else(|p| p.into_inner()) = pins;
        *self.pin_file.write().unwrap_or_else(|p| p.into_inner()) = Some(path);
        Ok(())
    }

    /// Checks member `id`'s certificate fingerprint against its pin; the
    /// first one seen is pinned (and saved).
    pub fn check_pin(&self, id: NodeId, presented: [u8; 32]) -> Result<(), PinMismatch> {
        if let Some(pinned) = self.pins.read().unwrap_or_else(|p| p.into_inner()).get(&id) {
            return match *pinned == presented {
                true => Ok(()),
                false => Err(PinMismatch {
                    pinned: *pinned,
                    presented,
                }),
            };
        }
        let mut pins = self.pins.write().unwrap_or_else(|p| p.into_inner());
        match pins.get(&id) {
            Some(pinned) if *pinned != presented => Err(PinMismatch {
                pinned: *pinned,
                presented,
            }),
            Some(_) => Ok(()),
            None => {
                pins.insert(id, presented);
                log::info!(
                    "pinned member {id:x}'s peer certificate (sha256 {})",
                    hex(&presented)
                );
                self.save_pins(&pins);
                Ok(())
            }
        }
    }

    /// Writes the pins (temp file, fsync, rename, fsync directory); a
    /// failure is logged: the pins stay in force for this run.
    fn save_pins(&self, pins: &BTreeMap<NodeId, [u8; 32]>) {
        let Some(path) = self
            .pin_file
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
        else {
            return;
        };
        let text: String = pins
            .iter()
            .map(|(id, fp)| format!("{id:x} {}\n", hex(fp)))
            .collect();
        let written =
            crate::storage::fs::write_atomic(&crate::storage::fs::OsFs, &path, text.as_bytes());
        if let Err(e) = written {
            log::error!(
                "cannot save peer certificate pins in {}: {e}",
                path.display()
            );
        }
    }

    /// The cluster's ID; 0 while a joining member has not learned it.
    pub fn cluster_id(&self) -> u64 {
        self.cluster_id.load(Ordering::Relaxed)
    }

    /// Sets the cluster ID: a joining member's, once known, or one saved
    /// in the data directory.
    pub fn adopt_cluster_id(&self, id: u64) {
        self.cluster_id.store(id, Ordering::Relaxed);
    }

    /// Every member ID, ascending.
    pub fn ids(&self) -> Vec<NodeId> {
        self.read().keys().copied().collect()
    }

    pub fn get(&self, id: NodeId) -> Option<Member> {
        self.read().get(&id).cloned()
    }

    pub fn contains(&self, id: NodeId) -> bool {
        self.read().contains_key(&id)
    }

    /// Every member, by ID.
    pub fn list(&self) -> Vec<Member> {
        self.read().values().cloned().collect()
    }

    /// What a member told us about itself in its hello: its client URLs,
    /// and its name and peer URLs if we did not know them (a member added
    /// while we were behind; its ID is its peer URLs' hash, so they cannot
    /// be replaced by others).
    pub fn learn(&self, id: NodeId, name: &str, peer_urls: &[String], client_urls: &[String]) {
        let known = self.read().get(&id).is_some_and(|m| {
            m.client_urls == client_urls && !m.peer_urls.is_empty() && !m.name.is_empty()
        });
        if known {
            return;
        }
        let mut table = self.table.write().unwrap_or_else(|p| p.into_inner());
        if let Some(m) = table.get_mut(&id) {
            m.client_urls = client_urls.to_vec();
            if m.name.is_empty() {
                m.name = name.to_string();
            }
            if m.peer_urls.is_empty() && member_id(peer_urls, &self.token) == id {
                m.peer_urls = peer_urls.to_vec();
            }
        }
    }

    /// Whether `id` left the configuration while this member watched.
    pub fn was_removed(&self, id: NodeId) -> bool {
        self.removed
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&id)
    }

    /// Where an added member listens (from its membership change).
    pub fn set_peer_urls(&self, id: NodeId, peer_urls: &[String]) {
        let mut table = self.table.write().unwrap_or_else(|p| p.into_inner());
        if let Some(m) = table.get_mut(&id) {
            if m.peer_urls.is_empty() {
                m.peer_urls = peer_urls.to_vec();
            }
        }
    }

    /// Makes the table follow the Raft configuration: members not in it
    /// are dropped, new ones added (without URLs until their membership
    /// change applies or they say hello), learner flags updated. Returns
    /// the IDs dropped and the IDs added.
    pub fn sync(&self, conf: &ConfState) -> (Vec<NodeId>, Vec<NodeId>) {
        let mut table = self.table.write().unwrap_or_else(|p| p.into_inner());
        // This member stays (with its name and URLs): a joining member may
        // first see a configuration from before it was added, and one that
        // applied its own removal stops.
        let in_conf = |id: &NodeId| {
            *id == self.local || conf.voters.contains(id) || conf.learners.contains(id)
        };
        let gone: Vec<NodeId> = table.keys().filter(|id| !in_conf(id)).copied().collect();
        for id in &gone {
            table.remove(id);
        }
        if !gone.is_empty() {
            let mut pins = self.pins.write().unwrap_or_else(|p| p.into_inner());
            let before = pins.len();
            pins.retain(|id, _| !gone.contains(id));
            if pins.len() != before {
                self.save_pins(&pins);
            }
        }
        self.removed
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .extend(&gone);
        let mut added = Vec::new();
        let updated = self.updated.read().unwrap_or_else(|p| p.into_inner());
        for id in conf.voters.iter().chain(&conf.learners) {
            let member = table.entry(*id).or_insert_with(|| {
                added.push(*id);
                Member {
                    id: *id,
                    peer_urls: updated.get(id).cloned().unwrap_or_default(),
                    ..Default::default()
                }
            });
            member.is_learner = !conf.voters.contains(id);
        }
        (gone, added)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<NodeId, Member>> {
        self.table.read().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn urls(u: &str) -> Vec<String> {
        vec![u.to_string()]
    }

    #[test]
    fn every_member_computes_the_same_ids() {
        let initial = parse_initial_cluster("n1=http://a:1, n2=http://b:2,n3=http://c:3").unwrap();
        let m1 =
            Members::from_initial_cluster(&initial, "n1", &urls("http://a:1"), &[], "t").unwrap();
        let m3 =
            Members::from_initial_cluster(&initial, "n3", &urls("http://c:3"), &[], "t").unwrap();
        assert_eq!(m1.cluster_id(), m3.cluster_id());
        assert_eq!(m1.ids(), m3.ids());
        assert_eq!(m1.ids().len(), 3);
        assert_ne!(m1.local, m3.local);
        let other =
            Members::from_initial_cluster(&initial, "n1", &urls("http://a:1"), &[], "u").unwrap();
        assert_ne!(other.cluster_id(), m1.cluster_id());
        assert!(!other.ids().iter().any(|id| m1.contains(*id)));
    }

    #[test]
    fn one_member_keeps_the_single_node_ids() {
        let peer = urls("http://localhost:2380");
        let initial = parse_initial_cluster("default=http://localhost:2380").unwrap();
        let m =
            Members::from_initial_cluster(&initial, "default", &peer, &[], "qed-cluster").unwrap();
        let id = member_id(&peer, "qed-cluster");
        assert_eq!(m.local, id);
        // The formula single-node qed used before clusters existed.
        assert_eq!(
            m.cluster_id(),
            fnv1a64(format!("{id:x}|qed-cluster").as_bytes())
        );
    }

    #[test]
    fn a_stored_id_outlives_a_change_of_peer_urls() {
        let dir = std::env::temp_dir().join(format!("qed-members-id-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("id");
        assert_eq!(load_identity(&file).unwrap(), None);
        let initial = parse_initial_cluster("n1=http://a:1,n2=http://b:2").unwrap();
        let first =
            Members::from_initial_cluster(&initial, "n1", &urls("http://a:1"), &[], "t").unwrap();
        save_identity(&file, first.local, first.cluster_id()).unwrap();
        let stored = load_identity(&file).unwrap();
        assert_eq!(stored, Some((first.local, first.cluster_id())));
        // Restarted at another address, --initial-cluster unchanged.
        let moved = Members::from_initial_cluster_keeping(
            &initial,
            "n1",
            &urls("http://a:9"),
            &[],
            "t",
            stored.map(|(id, _)| id),
        )
        .unwrap();
        assert_eq!(moved.local, first.local);
        assert_eq!(moved.cluster_id(), first.cluster_id());
        assert_eq!(
            moved.get(moved.local).unwrap().peer_urls,
            urls("http://a:9")
        );
        // An applied MemberUpdate wins over the flags, for others too.
        let n2 = member_id(&urls("http://b:2"), "t");
        moved.update_peer_urls(n2, &urls("http://b:9"));
        assert_eq!(moved.get(n2).unwrap().peer_urls, urls("http://b:9"));
        std::fs::write(&file, "member=zz\n").unwrap();
        assert!(load_identity(&file).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn refuses_inconsistent_flags() {
        let initial = parse_initial_cluster("n1=http://a:1,n2=http://b:2").unwrap();
        assert!(matches!(
            Members::from_initial_cluster(&initial, "n9", &urls("http://a:1"), &[], "t"),
            Err(MembersError::NameMissing(_))
        ));
        assert!(matches!(
            Members::from_initial_cluster(&initial, "n1", &urls("http://b:2"), &[], "t"),
            Err(MembersError::UrlsDiffer { .. })
        ));
        assert!(parse_initial_cluster("n1").is_err());
        assert!(parse_initial_cluster("=http://a:1").is_err());
        let dup = parse_initial_cluster("n1=http://a:1,n2=http://a:1").unwrap();
        assert!(matches!(
            Members::from_initial_cluster(&dup, "n1", &urls("http://a:1"), &[], "t"),
            Err(MembersError::DuplicateId(_))
        ));
    }

    #[test]
    fn learns_client_urls_of_members_only() {
        let initial = parse_initial_cluster("n1=http://a:1,n2=http://b:2").unwrap();
        let m =
            Members::from_initial_cluster(&initial, "n1", &urls("http://a:1"), &[], "t").unwrap();
        let n2 = member_id(&urls("http://b:2"), "t");
        m.learn(n2, "n2", &urls("http://b:2"), &urls("https://b:3"));
        m.learn(12345, "evil", &urls("http://e:1"), &urls("https://evil:3"));
        assert_eq!(m.get(n2).unwrap().client_urls, urls("https://b:3"));
        assert_eq!(m.list().len(), 2);
    }

    #[test]
    fn follows_the_configuration() {
        let initial = parse_initial_cluster("n1=http://a:1,n2=http://b:2").unwrap();
        let m =
            Members::from_initial_cluster(&initial, "n1", &urls("http://a:1"), &[], "t").unwrap();
        let n2 = member_id(&urls("http://b:2"), "t");
        let n3 = member_id(&urls("http://c:3"), "t");
        let (gone, added) = m.sync(&ConfState {
            voters: vec![m.local],
            learners: vec![n3],
        });
        assert_eq!((gone, added), (vec![n2], vec![n3]));
        assert!(m.get(n3).unwrap().is_learner);
        // Its hello may not claim URLs that do not hash to its ID.
        m.learn(n3, "n3", &urls("http://evil:3"), &[]);
        assert!(m.get(n3).unwrap().peer_urls.is_empty());
        m.learn(n3, "n3", &urls("http://c:3"), &urls("https://c:4"));
        let n3m = m.get(n3).unwrap();
        assert_eq!(
            (n3m.name.as_str(), n3m.peer_urls.clone()),
            ("n3", urls("http://c:3"))
        );
        m.sync(&ConfState {
            voters: vec![m.local, n3],
            learners: vec![],
        });
        assert!(!m.get(n3).unwrap().is_learner);
    }
}
