//! Deterministic fault simulator for `qed::raft`.
//!
//! One seed fixes everything: cluster size, fault rates, and every random
//! choice of the run (one PRNG, and only ordered collections are iterated),
//! so a failing seed reproduces exactly. Time advances in units; nodes tick
//! every [`TICK_UNITS`]. The network drops, duplicates, delays (and so
//! reorders) messages and can cut links both ways or one way; a test may
//! put one member behind a slow uplink (all it sends arrives later). Each node has
//! a disk whose writes complete after a latency, in order; a crash loses the
//! writes still in flight and all volatile state, and the node restarts from
//! its disk. Clients put, get (ReadIndex) and compare-and-swap on a few keys.
//!
//! Checked as the run goes: election safety (one leader per term), log
//! matching (entries with equal index and term have equal prefixes: a hash
//! chain per log, compared across all logs ever seen), leader completeness
//! (a new leader holds every entry committed in earlier terms), state
//! machine safety (every node applies the same entry at each index and
//! reaches the same state there, whether by entries or by an installed
//! snapshot), and that applied indices are consecutive. At the
//! end: liveness after healing, and linearizability of the client history.

pub mod kv;
pub mod linearizability;

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use qed::raft::{Config, Node, PersistToken, ReadState, RestartState, Role, Snapshot, TestKnobs};
use qed::wire::raft::{
    ConfChange, ConfChangeType, ConfState, Entry, EntryType, HardState, Message, SnapshotMeta,
};

use kv::{Cmd, CmdResult, Kv};
use linearizability::{Input, Output, Verdict};

pub const TICK_UNITS: u64 = 2;
const LIVENESS_UNITS: u64 = 800;
const OP_TIMEOUT: u64 = 100;
const COMPACT_EVERY: u64 = 48;

/// SplitMix64: small, fast, good enough for a simulator.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next() % n
        }
    }
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }
    pub fn chance(&mut self, p: f64) -> bool {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64 <= p && p > 0.0
    }
}

#[derive(Debug, Clone)]
pub struct SimConfig {
    pub seed: u64,
    pub voters: usize,
    pub learners: usize,
    /// Time units of the fault phase (liveness phase comes after).
    pub units: u64,
    pub clients: usize,
    pub keys: u8,
    pub drop: f64,
    pub dup: f64,
    pub max_delay: u64,
    pub crashes: bool,
    /// Chance per time unit of a crash (when `crashes`).
    pub crash_rate: f64,
    /// Chance that a node's disk is slow (6-16 units per write).
    pub slow_disks: f64,
    pub partitions: bool,
    pub membership: bool,
    pub transfers: bool,
    /// Applied entries each core keeps in memory (`Config::catch_up_entries`).
    pub catch_up_entries: u64,
    /// A member behind a slow uplink: everything it sends takes this many
    /// more units (its answers reach a leader late, while what it receives
    /// comes at the usual pace: it may know an entry committed, by the
    /// leader's durability announcement, well before the leader does).
    /// Not drawn from the seed (seeds keep the runs they always had); set
    /// by tests (`far_follower`, `slow_uplink` in tests/raft_sim.rs).
    pub slow_uplink: Option<(u64, u64)>,
    pub knobs: TestKnobs,
}

impl SimConfig {
    /// Everything derived from the seed.
    pub fn from_seed(seed: u64) -> Self {
        let mut r = Rng::new(seed ^ 0x5eed_5eed);
        let voters = [3, 5, 7][r.below(3) as usize];
        SimConfig {
            seed,
            voters,
            learners: r.below(2) as usize,
            units: 1500,
            clients: r.range(2, 5) as usize,
            keys: r.range(2, 4) as u8,
            drop: [0.0, 0.02, 0.05, 0.15][r.below(4) as usize],
            dup: [0.0, 0.02, 0.1][r.below(3) as usize],
            max_delay: r.range(1, 5),
            crashes: r.chance(0.8),
            crash_rate: [1.0 / 200.0, 1.0 / 80.0, 1.0 / 40.0][r.below(3) as usize],
            slow_disks: [0.1, 0.3, 0.9][r.below(3) as usize],
            partitions: r.chance(0.8),
            membership: r.chance(0.6),
            transfers: r.chance(0.6),
            catch_up_entries: 0,
            slow_uplink: None,
            knobs: TestKnobs::default(),
        }
        .with_catch_up(&mut r)
    }

    /// Drawn last, so the settings above stay what each seed always had.
    fn with_catch_up(mut self, r: &mut Rng) -> Self {
        self.catch_up_entries = [0, 3, 20, 5000][r.below(4) as usize];
        self
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    ElectionSafety,
    LogMatching,
    LeaderCompleteness,
    StateMachineSafety,
    /// A command applied twice though the network never duplicated a
    /// message: the core copied a proposal (held, forwarded, appended).
    ExactlyOnce,
    Linearizability,
    Liveness,
    Internal,
}

#[derive(Debug, Clone)]
pub struct Violation {
    pub seed: u64,
    pub kind: Kind,
    pub at: u64,
    pub detail: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "seed {}: {:?} violation at t={}: {} (reproduce: make sim SEED={})",
            self.seed, self.kind, self.at, self.detail, self.seed
        )
    }
}

#[derive(Debug, Default, Clone)]
pub struct Report {
    pub units: u64,
    pub ops_ok: usize,
    pub ops_unknown: usize,
    pub max_commit: u64,
    pub leaders: usize,
    pub crashes: usize,
    pub conf_changes: usize,
    pub transfers: usize,
    pub snapshots_installed: usize,
    pub lin_unknown: usize,
    /// Times a follower's commit index passed the highest any leader had
    /// reported: the follower inferred it (leader and follower durable).
    pub follower_commits: usize,
    /// Ticks from healing until every member applied a fresh commit.
    pub liveness_ticks: u64,
}

#[derive(Default)]
struct Disk {
    hs: HardState,
    snapshot: Snapshot,
    entries: Vec<Entry>,
}

struct Write {
    done_at: u64,
    hs: Option<HardState>,
    snapshot: Option<Snapshot>,
    entries: Vec<Entry>,
    token: Option<PersistToken>,
    msgs: Vec<Message>,
}

/// The node's in-memory log as seen through its `Ready`s, as a hash chain.
#[derive(Default)]
struct Mirror {
    base: u64,
    base_chain: u64,
    chains: Vec<u64>,
}

impl Mirror {
    fn last(&self) -> u64 {
        self.base + self.chains.len() as u64
    }
    fn chain(&self, i: u64) -> Option<u64> {
        if i == self.base {
            Some(self.base_chain)
        } else if i < self.base {
            None
        } else {
            self.chains.get((i - self.base - 1) as usize).copied()
        }
    }
}

fn hash_bytes(b: &[u8]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for x in b {
        h ^= *x as u64;
        h = h.wrapping_mul(0x100_0000_01b3);
    }
    h
}

fn chain_hash(prev: u64, e: &Entry) -> u64 {
    let mut r = Rng::new(
        prev ^ e.term.wrapping_mul(0x9e37_79b9)
            ^ e.index.rotate_left(17)
            ^ hash_bytes(&e.data)
            ^ (e.kind == EntryType::ConfChange) as u64,
    );
    r.next()
}

struct SimNode {
    id: u64,
    node: Option<Node>,
    disk: Disk,
    writes: VecDeque<Write>,
    disk_latency: u64,
    kv: Kv,
    applied: u64,
    mirror: Mirror,
    reads: Vec<ReadState>,
    commit_seen: u64,
    boots: u64,
    down_until: u64,
}

struct ClientOp {
    id: u64,
    hist: usize,
    deadline: u64,
    key: u8,
    node: u64,
}

struct Client {
    node: u64,
    op: Option<ClientOp>,
}

struct HistOp {
    key: u8,
    op: linearizability::Op,
}

struct Sim {
    cfg: SimConfig,
    rng: Rng,
    now: u64,
    hclock: u64,
    nodes: BTreeMap<u64, SimNode>,
    bootstrap: ConfState,
    next_id: u64,
    net: Vec<(u64, u64, Message)>,
    net_seq: u64,
    blocked: BTreeSet<(u64, u64)>,
    drop: f64,
    dup: f64,
    max_delay: u64,
    leaders: BTreeMap<u64, u64>,
    seen: HashMap<(u64, u64), u64>,
    committed: Vec<Option<(u64, u64)>>,
    applied_log: Vec<Option<(u64, u64)>>,
    /// State machine fingerprint after applying each index (any node).
    state_at: HashMap<u64, u64>,
    clients: Vec<Client>,
    hist: Vec<HistOp>,
    next_op: u64,
    put_vals: u64,
    /// The highest commit index a leader reported.
    leader_commit: u64,
    marker: Option<(u64, u64)>,
    /// The term the marker's node led when it took the marker: a leader
    /// that lost leadership since may have lost the marker (overwritten,
    /// or held and dropped), even if it leads again.
    marker_term: u64,
    marker_done: bool,
    report: Report,
}

type Res<T = ()> = Result<T, Violation>;

impl Sim {
    fn fail(&self, kind: Kind, detail: String) -> Violation {
        Violation {
            seed: self.cfg.seed,
            kind,
            at: self.now,
            detail,
        }
    }

    fn node_config(&self, id: u64, boots: u64) -> Config {
        let mut c = Config::new(id);
        c.seed = self.cfg.seed ^ id.wrapping_mul(0x1000_0001) ^ boots.wrapping_mul(0x7777);
        c.max_size_per_msg = 256;
        c.max_inflight_msgs = 8;
        c.max_inflight_bytes = 4096;
        c.snapshot_chunk_size = 200;
        c.catch_up_entries = self.cfg.catch_up_entries;
        c.test_knobs = self.cfg.knobs;
        c
    }

    /// Initial members get the initial membership; members that join later
    /// start empty and learn it from the leader.
    fn bootstrap_state(&self, initial: bool) -> RestartState {
        RestartState {
            snapshot: Snapshot {
                meta: SnapshotMeta {
                    conf_state: if initial {
                        self.bootstrap.clone()
                    } else {
                        ConfState::default()
                    },
                    ..Default::default()
                },
                data: Vec::new().into(),
            },
            ..Default::default()
        }
    }

    fn add_node(&mut self, id: u64, initial: bool) {
        let st = self.bootstrap_state(initial);
        let node = Node::new(self.node_config(id, 0), st.clone()).ok();
        let latency = if self.rng.chance(self.cfg.slow_disks) {
            self.rng.range(6, 16)
        } else {
            self.rng.range(0, 3)
        };
        self.nodes.insert(
            id,
            SimNode {
                id,
                node,
                disk: Disk {
                    hs: st.hard_state,
                    snapshot: st.snapshot,
                    entries: Vec::new(),
                },
                writes: VecDeque::new(),
                disk_latency: latency,
                kv: Kv::default(),
                applied: 0,
                mirror: Mirror::default(),
                reads: Vec::new(),
                commit_seen: 0,
                boots: 0,
                down_until: 0,
            },
        );
    }

    fn new(cfg: SimConfig) -> Sim {
        let total = (cfg.voters + cfg.learners) as u64;
        let bootstrap = ConfState {
            voters: (1..=cfg.voters as u64).collect(),
            learners: (cfg.voters as u64 + 1..=total).collect(),
        };
        let mut s = Sim {
            rng: Rng::new(cfg.seed),
            drop: cfg.drop,
            dup: cfg.dup,
            max_delay: cfg.max_delay,
            clients: (0..cfg.clients)
                .map(|i| Client {
                    node: 1 + (i as u64 % total),
                    op: None,
                })
                .collect(),
            cfg,
            now: 0,
            hclock: 0,
            nodes: BTreeMap::new(),
            bootstrap,
            next_id: total + 1,
            net: Vec::new(),
            net_seq: 0,
            blocked: BTreeSet::new(),
            leaders: BTreeMap::new(),
            seen: HashMap::new(),
            committed: Vec::new(),
            applied_log: Vec::new(),
            state_at: HashMap::new(),
            hist: Vec::new(),
            next_op: 1,
            put_vals: 0,
            leader_commit: 0,
            marker: None,
            marker_term: 0,
            marker_done: false,
            report: Report::default(),
        };
        for id in 1..=total {
            s.add_node(id, true);
        }
        s
    }

    // ---- network ----

    fn send(&mut self, m: Message) {
        if self.blocked.contains(&(m.from, m.to)) || self.rng.chance(self.drop) {
            return;
        }
        let copies = if self.rng.chance(self.dup) { 2 } else { 1 };
        let uplink = match self.cfg.slow_uplink {
            Some((member, extra)) if member == m.from => extra,
            _ => 0,
        };
        for _ in 0..copies {
            let at = self.now + self.rng.range(1, self.max_delay) + uplink;
            self.net_seq += 1;
            self.net.push((at, self.net_seq, m.clone()));
        }
    }

    fn deliver(&mut self) {
        let now = self.now;
        let mut due = Vec::new();
        let mut i = 0;
        while i < self.net.len() {
            if self.net[i].0 <= now {
                due.push(self.net.swap_remove(i));
            } else {
                i += 1;
            }
        }
        due.sort_by_key(|d| d.1);
        // Shuffle: equal-time messages arrive in any order.
        for i in (1..due.len()).rev() {
            let j = self.rng.below(i as u64 + 1) as usize;
            due.swap(i, j);
        }
        let trace_from = std::env::var("SIM_TRACE")
            .ok()
            .and_then(|s| s.parse::<u64>().ok())
            .unwrap_or(u64::MAX);
        for (_, _, m) in due {
            if self.now >= trace_from {
                eprintln!("t={} {:?}", self.now, m);
            }
            if let Some(n) = self.nodes.get_mut(&m.to).and_then(|n| n.node.as_mut()) {
                n.step(m);
            }
        }
    }

    // ---- disk ----

    fn complete_writes(&mut self, id: u64) {
        loop {
            let Some(sn) = self.nodes.get_mut(&id) else {
                return;
            };
            if sn.writes.front().is_none_or(|w| w.done_at > self.now) {
                return;
            }
            let Some(w) = sn.writes.pop_front() else {
                return;
            };
            if let Some(s) = w.snapshot {
                if s.meta.index > sn.disk.snapshot.meta.index {
                    sn.disk.entries.clear();
                    sn.disk.snapshot = s;
                }
            }
            let base = sn.disk.snapshot.meta.index;
            if let Some(first) = w.entries.iter().find(|e| e.index > base) {
                let keep = (first.index - base - 1) as usize;
                sn.disk.entries.truncate(keep);
                sn.disk
                    .entries
                    .extend(w.entries.iter().filter(|e| e.index > base).cloned());
            }
            if let Some(hs) = w.hs {
                sn.disk.hs = hs;
            }
            if let (Some(t), Some(n)) = (w.token, sn.node.as_mut()) {
                n.on_persisted(t);
            }
            for m in w.msgs {
                self.send(m);
            }
        }
    }

    // ---- ready processing ----

    fn process_ready(&mut self, id: u64) -> Res {
        for _ in 0..16 {
            let Some(sn) = self.nodes.get_mut(&id) else {
                return Ok(());
            };
            let Some(node) = sn.node.as_mut() else {
                return Ok(());
            };
            if !node.has_ready() {
                break;
            }
            let rd = node.ready();
            let status = node.status();
            let mut after = Vec::new();
            let mut now_msgs = Vec::new();
            for o in rd.messages {
                if o.before_persist {
                    now_msgs.push(o.message);
                } else {
                    after.push(o.message);
                }
            }
            let done_at = sn
                .writes
                .back()
                .map_or(0, |w| w.done_at)
                .max(self.now + sn.disk_latency);
            sn.writes.push_back(Write {
                done_at,
                hs: rd.hard_state,
                snapshot: rd.snapshot.clone(),
                entries: rd.entries.clone(),
                token: rd.persist,
                msgs: after,
            });
            for m in now_msgs {
                self.send(m);
            }
            if let Some(s) = &rd.snapshot {
                self.install_snapshot(id, s)?;
            }
            self.mirror_append(id, &rd.entries)?;
            if let Some(hs) = rd.hard_state {
                if status.role == Role::Leader {
                    self.leader_commit = self.leader_commit.max(hs.commit);
                } else if hs.commit > self.leader_commit {
                    self.report.follower_commits += 1;
                }
                self.observe_commit(id, hs.commit, status.term)?;
            }
            if rd.soft_state.is_some_and(|s| s.role == Role::Leader) {
                self.check_leader_completeness(id, status.term)?;
            }
            self.apply(id, &rd.committed_entries)?;
            if let Some(sn) = self.nodes.get_mut(&id) {
                sn.reads.extend(rd.read_states);
            }
            self.serve_reads(id);
            let wanted = self
                .nodes
                .get_mut(&id)
                .and_then(|sn| sn.node.as_mut())
                .is_some_and(|n| n.take_image_wanted());
            self.maybe_compact(id, wanted);
        }
        Ok(())
    }

    fn install_snapshot(&mut self, id: u64, s: &Snapshot) -> Res {
        let base_chain = if s.meta.index == 0 {
            0
        } else {
            match self.seen.get(&(s.meta.index, s.meta.term)) {
                Some(c) => *c,
                None => {
                    return Err(self.fail(
                        Kind::LogMatching,
                        format!("node {id} installed a snapshot of an unknown entry"),
                    ))
                }
            }
        };
        let Some(kv) = Kv::deserialize(&s.data) else {
            return Err(self.fail(Kind::Internal, "bad snapshot data".into()));
        };
        self.check_state(id, s.meta.index, kv.digest())?;
        self.report.snapshots_installed += 1;
        let Some(sn) = self.nodes.get_mut(&id) else {
            return Ok(());
        };
        sn.kv = kv;
        sn.applied = s.meta.index;
        sn.commit_seen = sn.commit_seen.max(s.meta.index);
        sn.mirror = Mirror {
            base: s.meta.index,
            base_chain,
            chains: Vec::new(),
        };
        Ok(())
    }

    fn mirror_append(&mut self, id: u64, entries: &[Entry]) -> Res {
        let Some(first) = entries.first() else {
            return Ok(());
        };
        let Some(sn) = self.nodes.get_mut(&id) else {
            return Ok(());
        };
        let m = &mut sn.mirror;
        if first.index <= m.base || first.index > m.last() + 1 {
            let (b, l) = (m.base, m.last());
            return Err(self.fail(
                Kind::Internal,
                format!(
                    "node {id}: entries from {} do not fit log ({b}, {l}]",
                    first.index
                ),
            ));
        }
        m.chains.truncate((first.index - m.base - 1) as usize);
        let mut prev = m.chain(first.index - 1).unwrap_or(0);
        let mut bad = None;
        for e in entries {
            let c = chain_hash(prev, e);
            m.chains.push(c);
            prev = c;
            let known = *self.seen.entry((e.index, e.term)).or_insert(c);
            if known != c && bad.is_none() {
                bad = Some((e.index, e.term));
            }
        }
        if let Some((i, t)) = bad {
            return Err(self.fail(
                Kind::LogMatching,
                format!(
                    "node {id}: entry ({i}, term {t}) has a prefix differing from another log's"
                ),
            ));
        }
        Ok(())
    }

    fn observe_commit(&mut self, id: u64, commit: u64, term: u64) -> Res {
        let Some(sn) = self.nodes.get_mut(&id) else {
            return Ok(());
        };
        if commit <= sn.commit_seen {
            return Ok(());
        }
        let from = sn.commit_seen + 1;
        sn.commit_seen = commit;
        self.report.max_commit = self.report.max_commit.max(commit);
        let chains: Vec<(u64, Option<u64>)> =
            (from..=commit).map(|i| (i, sn.mirror.chain(i))).collect();
        // A leader commits in its term; a follower learns a commit from the
        // leader of its term, or infers one in its term (an entry of that
        // term, durable on it and the leader). Whoever reports first,
        // `term` is the committing term or (after the reporter moved on to
        // a newer term) a later one, which only weakens the completeness
        // check.
        let commit_term = term;
        for (i, c) in chains {
            let Some(c) = c else { continue };
            if self.committed.len() <= i as usize {
                self.committed.resize(i as usize + 1, None);
            }
            match self.committed[i as usize] {
                None => self.committed[i as usize] = Some((c, commit_term)),
                Some((known, _)) if known != c => {
                    return Err(self.fail(
                        Kind::StateMachineSafety,
                        format!("node {id} committed a different entry at index {i}"),
                    ))
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn check_leader_completeness(&mut self, id: u64, term: u64) -> Res {
        let Some(sn) = self.nodes.get(&id) else {
            return Ok(());
        };
        let Some(i) = (1..self.committed.len())
            .rev()
            .find(|&i| self.committed[i].is_some_and(|(_, t)| t < term))
        else {
            return Ok(());
        };
        let Some((want, _)) = self.committed[i] else {
            return Ok(());
        };
        let i = i as u64;
        let ok = if i >= sn.mirror.base {
            sn.mirror.chain(i) == Some(want)
        } else {
            // Compacted: the snapshot point must be on the committed chain.
            let b = sn.mirror.base as usize;
            self.committed
                .get(b)
                .copied()
                .flatten()
                .is_none_or(|(c, _)| c == sn.mirror.base_chain)
        };
        if !ok {
            return Err(self.fail(
                Kind::LeaderCompleteness,
                format!("node {id} became leader of term {term} without committed entry {i}"),
            ));
        }
        Ok(())
    }

    /// Every node's state machine after applying index `i` is the same,
    /// whether it got there by entries or by a snapshot.
    fn check_state(&mut self, id: u64, i: u64, digest: u64) -> Res {
        let known = *self.state_at.entry(i).or_insert(digest);
        if known != digest {
            return Err(self.fail(
                Kind::StateMachineSafety,
                format!("node {id}'s state after index {i} differs from another node's"),
            ));
        }
        Ok(())
    }

    fn apply(&mut self, id: u64, entries: &[Entry]) -> Res {
        for e in entries {
            let Some(sn) = self.nodes.get_mut(&id) else {
                return Ok(());
            };
            if e.index != sn.applied + 1 {
                let a = sn.applied;
                return Err(self.fail(
                    Kind::StateMachineSafety,
                    format!("node {id} applied {} after {a}", e.index),
                ));
            }
            sn.applied = e.index;
            let h = (e.term, hash_bytes(&e.data));
            let idx = e.index as usize;
            if self.applied_log.len() <= idx {
                self.applied_log.resize(idx + 1, None);
            }
            match self.applied_log[idx] {
                None => self.applied_log[idx] = Some(h),
                Some(k) if k != h => {
                    return Err(self.fail(
                        Kind::StateMachineSafety,
                        format!("node {id} applied a different entry at index {idx}"),
                    ))
                }
                _ => {}
            }
            let decoded = (e.kind == EntryType::Normal)
                .then(|| kv::decode(&e.data))
                .flatten();
            let res = decoded.map(|(op, cmd)| (op, cmd, sn.kv.apply(op, cmd)));
            let digest = sn.kv.digest();
            self.check_state(id, e.index, digest)?;
            let Some((op, cmd, res)) = res else {
                continue;
            };
            if self.marker.is_some_and(|(m, n)| m == op && n == id) {
                self.marker_done = true;
            }
            let out = match (cmd, res) {
                (_, CmdResult::Duplicate) if self.cfg.dup == 0.0 => {
                    return Err(self.fail(
                        Kind::ExactlyOnce,
                        format!("node {id} applied op {op} a second time, at index {idx}"),
                    ));
                }
                (_, CmdResult::Duplicate) => continue,
                (Cmd::Cas { .. }, CmdResult::Swapped(s)) => Output::Swapped(s),
                _ => Output::Done,
            };
            self.respond(id, op, out);
        }
        Ok(())
    }

    fn respond(&mut self, node: u64, op: u64, out: Output) {
        for c in &mut self.clients {
            if c.op.as_ref().is_some_and(|o| o.id == op && o.node == node) {
                let Some(o) = c.op.take() else { continue };
                self.hclock += 1;
                let h = &mut self.hist[o.hist];
                h.op.ret = self.hclock;
                h.op.output = Some(out);
                self.report.ops_ok += 1;
            }
        }
    }

    fn serve_reads(&mut self, id: u64) {
        let Some(sn) = self.nodes.get_mut(&id) else {
            return;
        };
        let applied = sn.applied;
        let ready: Vec<ReadState> = sn
            .reads
            .iter()
            .filter(|r| r.index <= applied)
            .cloned()
            .collect();
        sn.reads.retain(|r| r.index > applied);
        for r in ready {
            let Ok(b) = <[u8; 8]>::try_from(r.ctx.as_slice()) else {
                continue;
            };
            let op = u64::from_le_bytes(b);
            let Some(key) = self
                .clients
                .iter()
                .find_map(|c| c.op.as_ref().filter(|o| o.id == op).map(|o| o.key))
            else {
                continue;
            };
            let v = self
                .nodes
                .get(&id)
                .and_then(|sn| sn.kv.map.get(&key).copied());
            self.respond(id, op, Output::Value(v));
        }
    }

    /// Every `COMPACT_EVERY` applied entries, or `now` when the core wants
    /// a snapshot it can send.
    fn maybe_compact(&mut self, id: u64, now: bool) {
        let Some(sn) = self.nodes.get_mut(&id) else {
            return;
        };
        if !now && sn.applied < sn.mirror.base + COMPACT_EVERY {
            return;
        }
        let Some(node) = sn.node.as_mut() else {
            return;
        };
        if node.status().applied != sn.applied {
            return;
        }
        let data = sn.kv.serialize();
        let Some(meta) = node.compact(data.clone()) else {
            return;
        };
        let i = meta.index;
        let Some(chain) = sn.mirror.chain(i) else {
            return;
        };
        sn.mirror.chains.drain(..(i - sn.mirror.base) as usize);
        sn.mirror.base = i;
        sn.mirror.base_chain = chain;
        sn.disk.entries.retain(|e| e.index > i);
        sn.disk.snapshot = Snapshot {
            meta,
            data: data.into(),
        };
    }

    // ---- faults ----

    fn crash(&mut self, id: u64) {
        let down = self.now + self.rng.range(10, 150);
        let Some(sn) = self.nodes.get_mut(&id) else {
            return;
        };
        if sn.node.is_none() {
            return;
        }
        sn.node = None;
        sn.writes.clear();
        sn.reads.clear();
        sn.down_until = down;
        self.report.crashes += 1;
    }

    fn restart(&mut self, id: u64) -> Res {
        let Some(sn) = self.nodes.get(&id) else {
            return Ok(());
        };
        if sn.node.is_some() {
            return Ok(());
        }
        let boots = sn.boots + 1;
        let cfg = self.node_config(id, boots);
        let state = RestartState {
            hard_state: sn.disk.hs,
            snapshot: sn.disk.snapshot.clone(),
            entries: sn.disk.entries.clone(),
        };
        let snap = state.snapshot.clone();
        let node = Node::new(cfg, state)
            .map_err(|e| self.fail(Kind::Internal, format!("restart of {id}: {e}")))?;
        let commit = node.status().commit;
        let kv = Kv::deserialize(&snap.data).unwrap_or_default();
        let base_chain = if snap.meta.index == 0 {
            0
        } else {
            self.seen
                .get(&(snap.meta.index, snap.meta.term))
                .copied()
                .unwrap_or(0)
        };
        let Some(sn) = self.nodes.get_mut(&id) else {
            return Ok(());
        };
        sn.node = Some(node);
        sn.boots = boots;
        sn.kv = kv;
        sn.applied = snap.meta.index;
        sn.commit_seen = commit;
        sn.mirror = Mirror {
            base: snap.meta.index,
            base_chain,
            chains: Vec::new(),
        };
        let entries = sn.disk.entries.clone();
        self.mirror_append(id, &entries)
    }

    fn live_ids(&self) -> Vec<u64> {
        self.nodes
            .values()
            .filter(|n| n.node.is_some())
            .map(|n| n.id)
            .collect()
    }

    fn leader(&self) -> Option<u64> {
        self.nodes
            .values()
            .filter_map(|n| n.node.as_ref().map(|x| (n.id, x.status())))
            .filter(|(_, s)| s.role == Role::Leader)
            .max_by_key(|(_, s)| s.term)
            .map(|(id, _)| id)
    }

    fn change_network(&mut self) {
        let ids: Vec<u64> = self.nodes.keys().copied().collect();
        self.blocked.clear();
        match self.rng.below(5) {
            0 => {} // healed
            1 => {
                // isolate one node (often the leader) both ways
                let victim = match self.leader() {
                    Some(l) if self.rng.chance(0.6) => l,
                    _ => ids[self.rng.below(ids.len() as u64) as usize],
                };
                for &o in &ids {
                    if o != victim {
                        self.blocked.insert((victim, o));
                        self.blocked.insert((o, victim));
                    }
                }
            }
            2 => {
                // split into two random sides
                let side: Vec<bool> = ids.iter().map(|_| self.rng.chance(0.5)).collect();
                for (i, &a) in ids.iter().enumerate() {
                    for (j, &b) in ids.iter().enumerate() {
                        if side[i] != side[j] {
                            self.blocked.insert((a, b));
                        }
                    }
                }
            }
            _ => {
                // one-way cuts
                for _ in 0..self.rng.range(1, ids.len() as u64) {
                    let a = ids[self.rng.below(ids.len() as u64) as usize];
                    let b = ids[self.rng.below(ids.len() as u64) as usize];
                    if a != b {
                        self.blocked.insert((a, b));
                    }
                }
            }
        }
    }

    fn membership_event(&mut self) {
        let Some(l) = self.leader() else { return };
        let Some(node) = self.nodes.get(&l).and_then(|n| n.node.as_ref()) else {
            return;
        };
        let conf = node.conf_state();
        let cc = match self.rng.below(3) {
            0 if self.nodes.len() < self.cfg.voters + self.cfg.learners + 3 => {
                let id = self.next_id;
                self.next_id += 1;
                self.add_node(id, false);
                ConfChange {
                    change: ConfChangeType::AddLearner,
                    node_id: id,
                    context: vec![],
                }
            }
            1 if !conf.learners.is_empty() => ConfChange {
                change: ConfChangeType::AddVoter,
                node_id: conf.learners[self.rng.below(conf.learners.len() as u64) as usize],
                context: vec![],
            },
            2 if conf.voters.len() > 2 => ConfChange {
                change: ConfChangeType::Remove,
                node_id: conf.voters[self.rng.below(conf.voters.len() as u64) as usize],
                context: vec![],
            },
            _ => return,
        };
        if let Some(n) = self.nodes.get_mut(&l).and_then(|n| n.node.as_mut()) {
            if n.propose_conf_change(cc).is_ok() {
                self.report.conf_changes += 1;
            }
        }
    }

    fn transfer_event(&mut self) {
        let Some(l) = self.leader() else { return };
        let Some(n) = self.nodes.get_mut(&l).and_then(|n| n.node.as_mut()) else {
            return;
        };
        let voters = n.conf_state().voters;
        let to = voters[self.rng.below(voters.len() as u64) as usize];
        if n.transfer_leader(to).is_ok() {
            self.report.transfers += 1;
        }
    }

    // ---- clients ----

    fn client_step(&mut self, c: usize) {
        if let Some(o) = &self.clients[c].op {
            if o.deadline <= self.now {
                // Like a real client: give up on this node, try another.
                self.clients[c].op = None;
                self.report.ops_unknown += 1;
                let ids: Vec<u64> = self.nodes.keys().copied().collect();
                self.clients[c].node = ids[self.rng.below(ids.len() as u64) as usize];
            }
            return;
        }
        if !self.rng.chance(0.3) {
            return;
        }
        let live = self.live_ids();
        if live.is_empty() {
            return;
        }
        let mut target = self.clients[c].node;
        if !live.contains(&target) || self.rng.chance(0.05) {
            target = live[self.rng.below(live.len() as u64) as usize];
            self.clients[c].node = target;
        }
        let key = self.rng.below(self.cfg.keys as u64) as u8;
        let op_id = self.next_op;
        self.next_op += 1;
        let input = match self.rng.below(20) {
            0..=7 => {
                self.put_vals += 1;
                Input::Put(self.put_vals)
            }
            8..=14 => Input::Get,
            _ => {
                self.put_vals += 1;
                let expect = if self.rng.chance(0.2) || self.put_vals < 2 {
                    None
                } else {
                    Some(self.put_vals - self.rng.range(1, 3.min(self.put_vals - 1)))
                };
                Input::Cas {
                    expect,
                    new: self.put_vals,
                }
            }
        };
        let Some(node) = self.nodes.get_mut(&target).and_then(|n| n.node.as_mut()) else {
            return;
        };
        let res = match input {
            Input::Put(val) => node.propose(kv::encode(op_id, Cmd::Put { key, val })),
            Input::Cas { expect, new } => {
                node.propose(kv::encode(op_id, Cmd::Cas { key, expect, new }))
            }
            Input::Get => node.read_index(op_id.to_le_bytes().to_vec()),
        };
        if res.is_err() {
            self.clients[c].node = live[self.rng.below(live.len() as u64) as usize];
            return;
        }
        self.hclock += 1;
        self.hist.push(HistOp {
            key,
            op: linearizability::Op {
                client: c,
                call: self.hclock,
                ret: u64::MAX,
                input,
                output: None,
            },
        });
        self.clients[c].op = Some(ClientOp {
            id: op_id,
            hist: self.hist.len() - 1,
            deadline: self.now + OP_TIMEOUT,
            key,
            node: target,
        });
    }

    // ---- the loop ----

    fn unit(&mut self, faults: bool) -> Res {
        self.now += 1;
        if faults {
            if self.cfg.partitions && self.rng.chance(1.0 / 120.0) {
                self.change_network();
            }
            if self.cfg.crashes && self.rng.chance(self.cfg.crash_rate) {
                let ids: Vec<u64> = self.live_ids();
                if !ids.is_empty() {
                    let v = match self.leader() {
                        Some(l) if self.rng.chance(0.4) => l,
                        _ => ids[self.rng.below(ids.len() as u64) as usize],
                    };
                    self.crash(v);
                }
            }
            if self.cfg.membership && self.rng.chance(1.0 / 150.0) {
                self.membership_event();
            }
            if self.cfg.transfers && self.rng.chance(1.0 / 200.0) {
                self.transfer_event();
            }
        }
        let ids: Vec<u64> = self.nodes.keys().copied().collect();
        for &id in &ids {
            let restart = self
                .nodes
                .get(&id)
                .is_some_and(|n| n.node.is_none() && n.down_until <= self.now);
            if restart {
                self.restart(id)?;
            }
            self.complete_writes(id);
        }
        self.deliver();
        if self.now % TICK_UNITS == 0 {
            for n in self.nodes.values_mut() {
                if let Some(x) = n.node.as_mut() {
                    x.tick();
                }
            }
        }
        for c in 0..self.clients.len() {
            self.client_step(c);
        }
        for &id in &ids {
            self.process_ready(id)?;
        }
        self.check_election_safety()
    }

    fn check_election_safety(&mut self) -> Res {
        for n in self.nodes.values() {
            let Some(x) = n.node.as_ref() else { continue };
            let s = x.status();
            if s.role != Role::Leader {
                continue;
            }
            let prev = *self.leaders.entry(s.term).or_insert(n.id);
            if prev != n.id {
                return Err(self.fail(
                    Kind::ElectionSafety,
                    format!("nodes {prev} and {} both lead term {}", n.id, s.term),
                ));
            }
        }
        Ok(())
    }

    /// Every member in the leader's configuration applied the marker: the
    /// leader replicates to all of them, by entries or by snapshot.
    fn all_members_applied_marker(&self) -> bool {
        let (Some((op, _)), Some(l)) = (self.marker, self.leader()) else {
            return false;
        };
        let Some(conf) = self
            .nodes
            .get(&l)
            .and_then(|n| n.node.as_ref())
            .map(|n| n.conf_state())
        else {
            return false;
        };
        conf.voters.iter().chain(conf.learners.iter()).all(|id| {
            self.nodes
                .get(id)
                .is_some_and(|n| n.kv.applied_ops.contains(&op))
        })
    }

    fn liveness(&mut self) -> Res {
        self.blocked.clear();
        self.drop = 0.0;
        self.dup = 0.0;
        for id in self.nodes.keys().copied().collect::<Vec<_>>() {
            if let Some(sn) = self.nodes.get_mut(&id) {
                sn.down_until = 0;
            }
        }
        let start = self.now;
        while self.now < start + LIVENESS_UNITS {
            self.unit(false)?;
            if self.marker_done && self.all_members_applied_marker() {
                self.report.liveness_ticks = (self.now - start) / TICK_UNITS;
                return Ok(());
            }
            let Some(l) = self.leader() else { continue };
            let Some(n) = self.nodes.get_mut(&l).and_then(|n| n.node.as_mut()) else {
                continue;
            };
            let term = n.status().term;
            let same = |(_, m): (u64, u64)| m == l && term == self.marker_term;
            if self.marker_done || self.marker.is_some_and(same) {
                continue;
            }
            let op = self.next_op;
            self.next_op += 1;
            if n.propose(kv::encode(op, Cmd::Nop)).is_ok() {
                self.marker = Some((op, l));
                self.marker_term = term;
            }
        }
        let states: Vec<String> = self
            .nodes
            .values()
            .map(|n| match &n.node {
                Some(x) => format!(
                    "{:?} conf={:?} progress={:?}",
                    x.status(),
                    x.conf_state(),
                    x.progress()
                ),
                None => format!("{} down", n.id),
            })
            .collect();
        Err(self.fail(
            Kind::Liveness,
            format!(
                "no leader committed within {LIVENESS_UNITS} units after healing; nodes: {states:#?}"
            ),
        ))
    }

    fn check_history(&mut self) -> Res {
        let mut by_key: BTreeMap<u8, Vec<linearizability::Op>> = BTreeMap::new();
        for h in &self.hist {
            if h.op.input == Input::Get && h.op.ret == u64::MAX {
                continue; // a read that never returned constrains nothing
            }
            by_key.entry(h.key).or_default().push(h.op.clone());
        }
        for (key, ops) in by_key {
            match linearizability::check_register(&ops) {
                Verdict::Linearizable => {}
                Verdict::Unknown => self.report.lin_unknown += 1,
                Verdict::Violation => {
                    return Err(self.fail(
                        Kind::Linearizability,
                        format!(
                            "history of key {key} ({} ops) is not linearizable",
                            ops.len()
                        ),
                    ))
                }
            }
        }
        Ok(())
    }
}

/// Runs one simulation; `Err` describes the first violation.
pub fn run(cfg: SimConfig) -> Result<Report, Violation> {
    let mut sim = Sim::new(cfg);
    let units = sim.cfg.units;
    while sim.now < units {
        sim.unit(true)?;
    }
    // Clients stop; let in-flight operations settle while healing.
    sim.liveness()?;
    sim.check_history()?;
    sim.report.units = sim.now;
    sim.report.leaders = sim.leaders.len();
    Ok(sim.report)
}
