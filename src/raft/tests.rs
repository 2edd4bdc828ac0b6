//! Pinned behaviours of the core, driven by hand. The fault simulator in
//! `tests/raft_sim.rs` covers the rest.

use super::*;
use crate::wire::raft::{ConfState, Entry, Message, MessageBody, SnapshotMeta};

fn node(id: u64, voters: &[u64]) -> Node {
    let state = RestartState {
        snapshot: Snapshot {
            meta: SnapshotMeta {
                conf_state: ConfState {
                    voters: voters.to_vec(),
                    learners: vec![],
                },
                ..Default::default()
            },
            data: Vec::new().into(),
        },
        ..Default::default()
    };
    Node::new(Config::new(id), state).unwrap()
}

fn elect_single(n: &mut Node) {
    for _ in 0..30 {
        n.tick();
    }
    assert_eq!(
        n.status().role,
        Role::Candidate,
        "waiting for its vote to be durable"
    );
    let rd = n.ready();
    n.on_persisted(rd.persist.unwrap());
    assert_eq!(n.status().role, Role::Leader);
}

#[test]
fn single_node_commits_only_once_its_log_is_durable() {
    let mut n = node(1, &[1]);
    elect_single(&mut n);
    let rd = n.ready();
    assert!(rd.committed_entries.is_empty());
    n.propose(b"x".to_vec()).unwrap();
    let rd2 = n.ready();
    assert_eq!(rd2.entries.len(), 1);
    assert!(rd2.committed_entries.is_empty(), "nothing is durable yet");
    n.on_persisted(rd.persist.unwrap());
    let rd3 = n.ready();
    assert_eq!(rd3.committed_entries.len(), 1, "the no-op commits");
    n.on_persisted(rd2.persist.unwrap());
    let rd4 = n.ready();
    assert_eq!(rd4.committed_entries[0].data, b"x");
}

/// A lone voter keeps no applied entries in memory: it has no follower to
/// catch up (`catch_up_entries` is for followers).
#[test]
fn lone_voter_keeps_no_applied_tail() {
    let mut n = node(1, &[1]);
    elect_single(&mut n);
    for i in 0..20u8 {
        n.propose(vec![i]).unwrap();
        let rd = n.ready();
        if let Some(p) = rd.persist {
            n.on_persisted(p);
        }
    }
    let rd = n.ready();
    assert!(rd.committed_entries.iter().any(|e| e.data == [19]));
    let _ = n.ready();
    let st = n.status();
    assert!(st.applied >= 21, "{st:?}");
    assert_eq!(st.first_index, st.applied + 1, "no applied tail: {st:?}");
    assert_eq!(
        n.log_term(st.applied),
        Some(st.term),
        "the boundary's term is kept"
    );
}

#[test]
fn leader_commits_on_followers_durability_alone() {
    let mut n = node(1, &[1, 2, 3]);
    // Become leader: pre-vote then vote, granted by 2.
    for _ in 0..30 {
        n.tick();
    }
    let rd = n.ready();
    let pre = rd
        .messages
        .iter()
        .find(|o| o.message.to == 2)
        .unwrap()
        .message
        .clone();
    n.step(Message {
        from: 2,
        to: 1,
        term: pre.term,
        body: MessageBody::VoteResponse {
            pre: true,
            reject: false,
        },
    });
    let rd = n.ready();
    let vote = rd.messages.iter().find(|o| o.message.to == 2).unwrap();
    assert!(
        vote.before_persist,
        "vote requests leave in parallel with the candidate's fsync"
    );
    let term = vote.message.term;
    n.step(Message {
        from: 2,
        to: 1,
        term,
        body: MessageBody::VoteResponse {
            pre: false,
            reject: false,
        },
    });
    assert_eq!(
        n.status().role,
        Role::Candidate,
        "its own vote is not durable yet: one grant of three is no quorum"
    );
    n.on_persisted(rd.persist.unwrap());
    assert_eq!(n.status().role, Role::Leader);
    let rd = n.ready();
    let app = rd.messages.iter().find(|o| o.message.to == 3).unwrap();
    assert!(
        app.before_persist,
        "appends go out before the leader's fsync"
    );
    let noop = rd.entries.last().unwrap().index;
    // Leader never acknowledges its own write; followers 2 and 3 do.
    for f in [2, 3] {
        n.step(Message {
            from: f,
            to: 1,
            term,
            body: MessageBody::AppendResponse {
                index: noop,
                reject: false,
                hint_index: 0,
                hint_term: 0,
            },
        });
    }
    assert_eq!(n.status().commit, noop);
    // One follower plus the leader's in-flight write is not a quorum.
    n.propose(b"y".to_vec()).unwrap();
    n.step(Message {
        from: 2,
        to: 1,
        term,
        body: MessageBody::AppendResponse {
            index: noop + 1,
            reject: false,
            hint_index: 0,
            hint_term: 0,
        },
    });
    assert_eq!(n.status().commit, noop);
}

#[test]
fn no_leader_means_a_clear_error() {
    let mut n = node(1, &[1, 2, 3]);
    assert_eq!(n.propose(b"x".to_vec()), Err(ProposeError::NoLeader));
    assert_eq!(n.read_index(vec![]), Err(ProposeError::NoLeader));
    assert!(matches!(
        n.transfer_leader(2),
        Err(TransferError::NotLeader { leader_hint: None })
    ));
}

/// Hostile input: random messages with random terms, indices and senders.
#[test]
fn garbage_messages_never_panic() {
    let mut s = 42u64;
    let mut rnd = move |m: u64| {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        // Now and then an extreme value, to catch overflows.
        match s % 97 {
            0 => u64::MAX,
            1 => u64::MAX / 2,
            _ => s % m.max(1),
        }
    };
    for round in 0..20 {
        let mut n = node(1, &[1, 2, 3]);
        if round % 2 == 0 {
            for _ in 0..30 {
                n.tick();
            }
        }
        for _ in 0..2000 {
            let entries: Vec<Entry> = (0..rnd(4).min(4))
                .map(|_| Entry {
                    term: rnd(6),
                    index: rnd(12),
                    data: vec![1],
                    ..Default::default()
                })
                .collect();
            let body = match rnd(13) % 13 {
                0 => MessageBody::Append {
                    prev_index: rnd(12),
                    prev_term: rnd(6),
                    entries,
                    commit: rnd(14),
                },
                1 => MessageBody::AppendResponse {
                    index: rnd(14),
                    reject: rnd(2) == 0,
                    hint_index: rnd(14),
                    hint_term: rnd(6),
                },
                2 => MessageBody::Heartbeat {
                    commit: rnd(14),
                    read_round: rnd(3),
                },
                3 => MessageBody::HeartbeatResponse { read_round: rnd(3) },
                4 => MessageBody::Vote {
                    pre: rnd(2) == 0,
                    last_index: rnd(12),
                    last_term: rnd(6),
                    transfer: rnd(2) == 0,
                },
                5 => MessageBody::VoteResponse {
                    pre: rnd(2) == 0,
                    reject: rnd(2) == 0,
                },
                6 => MessageBody::Snapshot {
                    meta: SnapshotMeta {
                        index: rnd(14),
                        term: rnd(6),
                        conf_state: ConfState {
                            voters: vec![rnd(5)],
                            learners: vec![],
                        },
                    },
                    offset: rnd(3),
                    data: vec![0; rnd(3).min(3) as usize],
                    done: rnd(2) == 0,
                    checksum: rnd(2) as u32,
                },
                7 => MessageBody::SnapshotResponse {
                    index: rnd(14),
                    offset: rnd(5),
                    reject: rnd(2) == 0,
                },
                8 => MessageBody::Propose { entries },
                9 => MessageBody::ReadIndex { ctx: vec![1] },
                10 => MessageBody::ReadIndexResponse {
                    index: rnd(20),
                    ctx: vec![],
                },
                11 => MessageBody::LeaderDurable { index: rnd(14) },
                _ => MessageBody::TimeoutNow,
            };
            n.step(Message {
                from: rnd(5),
                to: if rnd(10) == 0 { rnd(3) } else { 1 },
                term: rnd(7),
                body,
            });
            if rnd(5) == 0 {
                n.tick();
            }
            if rnd(3) == 0 {
                let rd = n.ready();
                if let Some(t) = rd.persist {
                    n.on_persisted(t);
                }
                if rnd(4) == 0 {
                    let _ = n.compact(vec![7; 3]);
                }
            }
            let st = n.status();
            assert!(st.commit <= st.last_index);
            assert!(st.applied <= st.commit);
        }
    }
}

/// A tiny lossless cluster: instant delivery, instant fsync.
struct Cluster {
    nodes: std::collections::BTreeMap<u64, Node>,
    applied: std::collections::BTreeMap<u64, Vec<Entry>>,
    reads: std::collections::BTreeMap<u64, Vec<ReadState>>,
    cut: Vec<u64>,
    /// Nodes whose fsyncs never complete.
    stalled_disk: Vec<u64>,
    /// Snapshot chunks at this offset or beyond are lost (a slow link).
    chunks_below: Option<u64>,
    /// Snapshot chunks delivered: (to, snapshot index, offset, done).
    chunks: Vec<(u64, u64, u64, bool)>,
}

impl Cluster {
    fn new(voters: &[u64], cfg: impl Fn(&mut Config)) -> Self {
        let mut nodes = std::collections::BTreeMap::new();
        for &id in voters {
            let mut c = Config::new(id);
            cfg(&mut c);
            let rs = RestartState {
                snapshot: Snapshot {
                    meta: SnapshotMeta {
                        conf_state: ConfState {
                            voters: voters.to_vec(),
                            learners: vec![],
                        },
                        ..Default::default()
                    },
                    data: Vec::new().into(),
                },
                ..Default::default()
            };
            nodes.insert(id, Node::new(c, rs).unwrap());
        }
        Cluster {
            nodes,
            applied: Default::default(),
            reads: Default::default(),
            cut: vec![],
            stalled_disk: vec![],
            chunks_below: None,
            chunks: vec![],
        }
    }

    fn pump(&mut self) {
        for _ in 0..1000 {
            let mut msgs = Vec::new();
            for (id, n) in self.nodes.iter_mut() {
                while n.has_ready() {
                    let rd = n.ready();
                    let stalled = self.stalled_disk.contains(id);
                    if let Some(t) = rd.persist.filter(|_| !stalled) {
                        n.on_persisted(t);
                    }
                    self.applied
                        .entry(*id)
                        .or_default()
                        .extend(rd.committed_entries);
                    self.reads.entry(*id).or_default().extend(rd.read_states);
                    msgs.extend(
                        rd.messages
                            .into_iter()
                            .filter(|o| !stalled || o.before_persist)
                            .map(|o| o.message),
                    );
                }
            }
            if msgs.is_empty() {
                return;
            }
            for m in msgs {
                if self.cut.contains(&m.from) || self.cut.contains(&m.to) {
                    continue;
                }
                if let MessageBody::Snapshot {
                    meta, offset, done, ..
                } = &m.body
                {
                    if self.chunks_below.is_some_and(|below| *offset >= below) {
                        continue;
                    }
                    self.chunks.push((m.to, meta.index, *offset, *done));
                }
                if let Some(n) = self.nodes.get_mut(&m.to) {
                    n.step(m);
                }
            }
        }
    }

    fn tick(&mut self, n: usize) {
        for _ in 0..n {
            for node in self.nodes.values_mut() {
                node.tick();
            }
            self.pump();
        }
    }

    fn leader(&self) -> Option<u64> {
        self.nodes
            .values()
            .filter(|n| !self.cut.contains(&n.id()))
            .find(|n| n.status().role == Role::Leader)
            .map(|n| n.id())
    }

    fn elect(&mut self) -> u64 {
        for _ in 0..100 {
            self.tick(1);
            if let Some(l) = self.leader() {
                return l;
            }
        }
        panic!("no leader");
    }
}

#[test]
fn leader_transfer_hands_over_with_timeout_now() {
    let mut c = Cluster::new(&[1, 2, 3], |_| {});
    let l = c.elect();
    let target = if l == 1 { 2 } else { 1 };
    c.nodes
        .get_mut(&l)
        .unwrap()
        .transfer_leader(target)
        .unwrap();
    c.nodes.get_mut(&l).unwrap().propose(b"x".to_vec()).unwrap();
    assert_eq!(
        c.nodes[&l].status().last_index,
        c.nodes[&target].status().last_index,
        "held, not appended: the transferee holds every entry of the old leader"
    );
    c.pump();
    assert_eq!(c.leader(), Some(target));
    assert_eq!(c.nodes[&l].status().role, Role::Follower);
    assert_eq!(applied_times(&c, l, b"x"), 1, "forwarded to the new leader");
}

/// How many times `node` applied an entry carrying `data`.
fn applied_times(c: &Cluster, node: u64, data: &[u8]) -> usize {
    c.applied
        .get(&node)
        .map_or(0, |es| es.iter().filter(|e| e.data == data).count())
}

/// A hand-over with proposals in flight: made on the leader during the
/// transfer, forwarded to it by a follower during the transfer, and
/// forwarded to it after it stepped down. None is lost, none applies
/// twice, on any member.
#[test]
fn a_transfer_with_proposals_in_flight_loses_none_and_applies_none_twice() {
    let mut c = Cluster::new(&[1, 2, 3], |_| {});
    let l = c.elect();
    let mut others = [1, 2, 3].into_iter().filter(|&n| n != l);
    let (target, other) = (others.next().unwrap(), others.next().unwrap());
    c.nodes
        .get_mut(&l)
        .unwrap()
        .propose(b"before".to_vec())
        .unwrap();
    c.pump();
    // The target is behind: the transfer waits for it to catch up, and
    // proposals keep coming meanwhile.
    c.cut.push(target);
    c.nodes
        .get_mut(&l)
        .unwrap()
        .propose(b"behind".to_vec())
        .unwrap();
    c.pump();
    c.cut.clear();
    let leader = c.nodes.get_mut(&l).unwrap();
    leader.transfer_leader(target).unwrap();
    leader.propose(b"at the leader".to_vec()).unwrap();
    c.nodes
        .get_mut(&other)
        .unwrap()
        .propose(b"via a follower".to_vec())
        .unwrap();
    c.pump();
    assert_eq!(c.leader(), Some(target));
    // A proposal forwarded to the old leader that reaches it only now.
    c.nodes.get_mut(&l).unwrap().step(Message {
        from: other,
        to: l,
        term: 0,
        body: MessageBody::Propose {
            entries: vec![Entry {
                data: b"late".to_vec(),
                ..Default::default()
            }],
        },
    });
    c.pump();
    c.tick(2);
    for data in [
        &b"before"[..],
        b"behind",
        b"at the leader",
        b"via a follower",
        b"late",
    ] {
        for n in [1, 2, 3] {
            assert_eq!(
                applied_times(&c, n, data),
                1,
                "{} on member {n}",
                String::from_utf8_lossy(data)
            );
        }
    }
}

/// A transfer that does not complete (the target never hears) is
/// abandoned after an election timeout; what the leader held meanwhile is
/// then appended by it, once.
#[test]
fn proposals_held_by_an_abandoned_transfer_are_appended_once() {
    let mut c = Cluster::new(&[1, 2, 3], |_| {});
    let l = c.elect();
    let target = if l == 1 { 2 } else { 1 };
    c.cut.push(target);
    let leader = c.nodes.get_mut(&l).unwrap();
    leader.transfer_leader(target).unwrap();
    leader.propose(b"held".to_vec()).unwrap();
    c.pump();
    assert_eq!(c.nodes[&l].status().lead_transferee, Some(target));
    assert_eq!(applied_times(&c, l, b"held"), 0);
    c.tick(12);
    assert_eq!(c.leader(), Some(l));
    assert_eq!(c.nodes[&l].status().lead_transferee, None);
    assert_eq!(applied_times(&c, l, b"held"), 1);
    c.cut.clear();
    c.tick(3);
    assert_eq!(applied_times(&c, target, b"held"), 1);
}

/// Proposals held with no leader in sight are bounded in time: dropped
/// after two election timeouts (their callers time out), never kept.
#[test]
fn proposals_held_without_a_leader_are_dropped_in_time() {
    let mut c = Cluster::new(&[1, 2, 3], |_| {});
    let l = c.elect();
    let f = if l == 1 { 2 } else { 1 };
    // A follower cut off campaigns, and knows no leader.
    c.cut.push(f);
    c.tick(25);
    assert_eq!(c.nodes[&f].status().leader, 0);
    let forwarded = |data: &[u8]| Message {
        from: l,
        to: f,
        term: 0,
        body: MessageBody::Propose {
            entries: vec![Entry {
                data: data.to_vec(),
                ..Default::default()
            }],
        },
    };
    c.nodes.get_mut(&f).unwrap().step(forwarded(b"dropped"));
    c.tick(20);
    c.nodes.get_mut(&f).unwrap().step(forwarded(b"kept"));
    c.cut.clear();
    c.tick(30);
    assert_eq!(c.nodes[&f].status().role, Role::Follower);
    for n in [1, 2, 3] {
        assert_eq!(applied_times(&c, n, b"dropped"), 0, "member {n}");
        assert_eq!(applied_times(&c, n, b"kept"), 1, "member {n}");
    }
}

#[test]
fn removed_leader_steps_down_and_the_rest_carry_on() {
    use crate::wire::raft::{ConfChange, ConfChangeType};
    let mut c = Cluster::new(&[1, 2, 3], |_| {});
    let l = c.elect();
    c.nodes
        .get_mut(&l)
        .unwrap()
        .propose_conf_change(ConfChange {
            change: ConfChangeType::Remove,
            node_id: l,
            context: vec![],
        })
        .unwrap();
    c.pump();
    assert_eq!(c.nodes[&l].status().role, Role::Follower);
    assert!(!c.nodes[&l].conf_state().voters.contains(&l));
    c.cut.push(l);
    c.tick(60);
    let l2 = c.leader().expect("the remaining two elect a leader");
    assert_ne!(l2, l);
    c.nodes
        .get_mut(&l2)
        .unwrap()
        .propose(b"after".to_vec())
        .unwrap();
    c.pump();
    assert!(c.applied[&l2].iter().any(|e| e.data == b"after"));
}

/// Three members, 7-byte snapshot chunks, no applied tail kept: a leader
/// with 20 entries the cut-off `lagger` lacks, compacted into a 50-byte
/// image (`meta`). Returns (cluster, leader, lagger, meta).
fn cluster_with_a_lagger_behind_a_snapshot() -> (Cluster, u64, u64, SnapshotMeta) {
    let mut c = Cluster::new(&[1, 2, 3], |cfg| {
        cfg.snapshot_chunk_size = 7;
        cfg.catch_up_entries = 0;
    });
    let l = c.elect();
    let lagger = if l == 3 { 2 } else { 3 };
    c.cut.push(lagger);
    for i in 0..20u8 {
        c.nodes.get_mut(&l).unwrap().propose(vec![i]).unwrap();
        c.pump();
    }
    let meta = c.nodes.get_mut(&l).unwrap().compact(vec![9; 50]).unwrap();
    (c, l, lagger, meta)
}

#[test]
fn lagging_follower_catches_up_by_chunked_snapshot() {
    let (mut c, l, lagger, meta) = cluster_with_a_lagger_behind_a_snapshot();
    assert!(meta.index >= 20);
    assert!(c.nodes[&l].status().first_index > 1);
    c.cut.clear();
    c.tick(5);
    let st = c.nodes[&lagger].status();
    assert!(st.commit >= meta.index, "{st:?}");
    assert_eq!(st.first_index, meta.index + 1);
    // And it follows normal replication afterwards.
    c.nodes.get_mut(&l).unwrap().propose(b"z".to_vec()).unwrap();
    c.pump();
    c.tick(1);
    assert!(c.applied[&lagger].iter().any(|e| e.data == b"z"));
}

/// A transfer goes on with the image it began with when the leader takes
/// a newer snapshot meanwhile: restarting it at every compaction never
/// ended behind a slow link.
#[test]
fn a_snapshot_transfer_keeps_its_image_across_a_new_compaction() {
    let (mut c, l, lagger, first) = cluster_with_a_lagger_behind_a_snapshot();
    // The link to the lagger delivers the first two chunks only.
    c.chunks_below = Some(14);
    c.cut.clear();
    c.tick(3);
    assert!(
        c.chunks
            .iter()
            .any(|&(to, index, ..)| to == lagger && index == first.index),
        "the transfer began: {:?}",
        c.chunks
    );
    // Meanwhile the leader moves on and takes another snapshot.
    for i in 0..5u8 {
        c.nodes.get_mut(&l).unwrap().propose(vec![i]).unwrap();
        c.pump();
    }
    let second = c.nodes.get_mut(&l).unwrap().compact(vec![8; 60]).unwrap();
    assert!(second.index > first.index);
    c.chunks_below = None;
    c.tick(20);
    let to_lagger: Vec<(u64, u64, bool)> = c
        .chunks
        .iter()
        .filter(|&&(to, ..)| to == lagger)
        .map(|&(_, index, offset, done)| (index, offset, done))
        .collect();
    let first_done = to_lagger
        .iter()
        .position(|&(index, _, done)| index == first.index && done);
    let first_newer = to_lagger
        .iter()
        .position(|&(index, ..)| index != first.index);
    assert!(
        first_done.is_some_and(|d| first_newer.is_none_or(|n| d < n)),
        "the first image was sent to its end before any other: {to_lagger:?}"
    );
    // And the lagger catches up (by entries or the newer snapshot).
    c.nodes.get_mut(&l).unwrap().propose(b"z".to_vec()).unwrap();
    c.pump();
    c.tick(3);
    assert!(c.applied[&lagger].iter().any(|e| e.data == b"z"));
}

#[test]
fn reads_are_batched_per_heartbeat_round_and_forwarded() {
    let mut c = Cluster::new(&[1, 2, 3], |_| {});
    let l = c.elect();
    let f = if l == 1 { 2 } else { 1 };
    let leader = c.nodes.get_mut(&l).unwrap();
    leader.read_index(b"a".to_vec()).unwrap();
    leader.read_index(b"b".to_vec()).unwrap();
    let rd = leader.ready();
    let heartbeats = rd
        .messages
        .iter()
        .filter(|o| matches!(o.message.body, MessageBody::Heartbeat { .. }))
        .count();
    assert_eq!(
        heartbeats, 2,
        "one round (one heartbeat per follower) for both reads"
    );
    assert!(
        rd.read_states.is_empty(),
        "not before a quorum acknowledges"
    );
    for o in rd.messages {
        c.nodes.get_mut(&o.message.to).unwrap().step(o.message);
    }
    c.nodes
        .get_mut(&f)
        .unwrap()
        .read_index(b"f".to_vec())
        .unwrap();
    c.pump();
    let ctxs = |id: u64| -> Vec<Vec<u8>> { c.reads[&id].iter().map(|r| r.ctx.clone()).collect() };
    assert_eq!(ctxs(l), vec![b"a".to_vec(), b"b".to_vec()]);
    assert_eq!(ctxs(f), vec![b"f".to_vec()]);
    assert!(c.reads[&f][0].index >= c.reads[&l][0].index);
}

#[test]
fn a_leader_with_a_stalled_disk_keeps_committing_then_hands_over() {
    let mut c = Cluster::new(&[1, 2, 3], |_| {});
    let l = c.elect();
    c.stalled_disk.push(l);
    let before = c.nodes[&l].status().commit;
    for i in 0..5u8 {
        c.nodes.get_mut(&l).unwrap().propose(vec![i]).unwrap();
        c.pump();
    }
    let st = c.nodes[&l].status();
    assert_eq!(st.commit, before + 5, "followers alone form the quorum");
    assert!(st.persisted < st.commit);
    c.tick(25);
    assert_ne!(c.leader(), Some(l), "leadership moved off the slow disk");
    assert!(c.leader().is_some());
}

#[test]
fn a_joining_member_learns_the_membership_from_the_log() {
    use crate::wire::raft::{ConfChange, ConfChangeType};
    let mut c = Cluster::new(&[1, 2, 3], |_| {});
    let l = c.elect();
    let add = |change, node_id| ConfChange {
        change,
        node_id,
        context: vec![],
    };
    c.nodes
        .get_mut(&l)
        .unwrap()
        .propose_conf_change(add(ConfChangeType::AddLearner, 4))
        .unwrap();
    c.pump();
    // Started with nothing: no membership, empty log.
    let joiner = Node::new(Config::new(4), RestartState::default()).unwrap();
    c.nodes.insert(4, joiner);
    c.tick(3);
    let conf = c.nodes[&4].conf_state();
    assert_eq!(conf.voters, vec![1, 2, 3]);
    assert_eq!(conf.learners, vec![4]);
    c.nodes
        .get_mut(&l)
        .unwrap()
        .propose_conf_change(add(ConfChangeType::AddVoter, 4))
        .unwrap();
    c.pump();
    c.tick(2);
    assert_eq!(c.nodes[&4].conf_state().voters, vec![1, 2, 3, 4]);
    assert!(c.nodes[&4].conf_state().learners.is_empty());
}

/// A snapshot cut before a membership change and recorded after it was
/// applied keeps the membership of its own index: the change is in the log
/// after the snapshot, and a follower installing it replays the change.
#[test]
fn a_snapshot_records_the_membership_at_its_cut() {
    use crate::wire::raft::{ConfChange, ConfChangeType};
    let mut c = Cluster::new(&[1, 2, 3], |_| {});
    let l = c.elect();
    let leader = c.nodes.get_mut(&l).unwrap();
    let applied = leader.status().applied;
    let cut = meta_at(leader, applied, leader.log_term(applied).unwrap());
    leader
        .propose_conf_change(ConfChange {
            change: ConfChangeType::AddLearner,
            node_id: 4,
            context: vec![],
        })
        .unwrap();
    c.pump();
    let leader = c.nodes.get_mut(&l).unwrap();
    assert_eq!(leader.conf_state().learners, vec![4], "the change applied");
    let recorded = leader
        .compact_at(cut, vec![1, 2, 3])
        .expect("a snapshot at an applied index");
    assert_eq!(recorded.index, applied);
    assert!(
        recorded.conf_state.learners.is_empty(),
        "the later change is not part of the snapshot: {:?}",
        recorded.conf_state
    );
}

#[test]
fn compact_at_an_earlier_applied_index() {
    let mut cfg = Config::new(1);
    cfg.election_tick = 3;
    // A lone voter with a learner: it commits alone, and keeps its applied
    // entries in memory (alone it would keep none).
    let state = RestartState {
        snapshot: Snapshot {
            meta: SnapshotMeta {
                index: 0,
                term: 0,
                conf_state: ConfState {
                    voters: vec![1],
                    learners: vec![2],
                },
            },
            data: Image::default(),
        },
        ..Default::default()
    };
    let mut n = Node::new(cfg, state).unwrap();
    for _ in 0..20 {
        n.tick();
        if n.has_ready() {
            let rd = n.ready();
            if let Some(t) = rd.persist {
                n.on_persisted(t);
            }
        }
    }
    for round in 1..5 {
        n.propose(vec![round]).unwrap();
        for _ in 0..2 {
            let rd = n.ready();
            if let Some(t) = rd.persist {
                n.on_persisted(t);
            }
        }
    }
    let applied = n.status().applied;
    assert!(applied >= 3, "single voter commits its own proposals");
    let term = n.log_term(2).unwrap();
    assert!(
        n.compact_at(meta_at(&n, applied + 1, term), vec![])
            .is_none(),
        "cannot compact past applied"
    );
    assert!(
        n.compact_at(meta_at(&n, 2, term + 1), vec![1]).is_none(),
        "not an entry of this log"
    );
    let meta = n
        .compact_at(meta_at(&n, 2, term), vec![1])
        .expect("compacts at an applied index");
    assert_eq!(meta.index, 2);
    assert!(
        n.compact_at(meta_at(&n, 2, term), vec![]).is_none(),
        "nothing newer to compact"
    );
}

/// Memory holds only `catch_up_entries` applied entries beyond what live
/// followers lack; a silent follower further behind gets a snapshot, and
/// one that ends before the in-memory log is not sent: the core asks for a
/// new one.
#[test]
fn the_log_keeps_a_short_tail_and_a_follower_behind_it_gets_a_new_snapshot() {
    let mut c = Cluster::new(&[1, 2, 3], |cfg| {
        cfg.catch_up_entries = 4;
        cfg.snapshot_chunk_size = 16;
    });
    let l = c.elect();
    let lagger = if l == 3 { 2 } else { 3 };
    let compact_now = |n: &mut Node| {
        let applied = n.status().applied;
        let term = n.log_term(applied).unwrap();
        n.compact_at(meta_at(n, applied, term), vec![applied as u8; 40])
            .expect("a snapshot at the applied index")
    };
    let old = compact_now(c.nodes.get_mut(&l).unwrap());
    c.cut.push(lagger);
    for i in 0..10u8 {
        c.nodes.get_mut(&l).unwrap().propose(vec![i]).unwrap();
        c.pump();
    }
    // A follower the leader heard from in the last election timeout is
    // slow, not gone: the entries it lacks stay in memory (up to
    // SNAPSHOT_PIN_FACTOR times the tail), so it gets entries, not a
    // snapshot.
    let st = c.nodes[&l].status();
    assert!(
        st.first_index + 4 <= st.applied,
        "entries a live follower lacks stay: {st:?}"
    );
    // Once an election timeout passes without a word from it, only the
    // tail stays.
    c.tick(25);
    assert_eq!(c.leader(), Some(l));
    for i in 10..30u8 {
        c.nodes.get_mut(&l).unwrap().propose(vec![i]).unwrap();
        c.pump();
    }
    let st = c.nodes[&l].status();
    assert_eq!(
        st.first_index,
        st.applied - 4 + 1,
        "only the tail stays in memory: {st:?}"
    );
    assert!(old.index < st.first_index - 1);
    c.cut.clear();
    c.tick(3);
    let leader = c.nodes.get_mut(&l).unwrap();
    assert!(
        leader.take_image_wanted(),
        "the old snapshot cannot serve the follower: the core asks for one"
    );
    assert!(c.nodes[&lagger].status().commit < old.index + 30);
    let meta = compact_now(c.nodes.get_mut(&l).unwrap());
    c.tick(5);
    let st = c.nodes[&lagger].status();
    assert!(st.commit >= meta.index, "{st:?}");
    c.nodes.get_mut(&l).unwrap().propose(b"z".to_vec()).unwrap();
    c.pump();
    c.tick(1);
    assert!(c.applied[&lagger].iter().any(|e| e.data == b"z"));
    assert!(
        !c.nodes.get_mut(&l).unwrap().take_image_wanted(),
        "nothing more wanted"
    );
}

/// Found by the SIGKILL crash test: a restarted lone voter whose persisted
/// commit index lagged its log answered a read before committing an entry of
/// its new term, so the read missed acknowledged writes.
#[test]
fn restarted_lone_voter_defers_reads_until_it_commits_in_its_term() {
    let entries: Vec<Entry> = (1..=5)
        .map(|i| Entry {
            term: 1,
            index: i,
            kind: crate::wire::raft::EntryType::Normal,
            data: vec![i as u8],
        })
        .collect();
    let state = RestartState {
        hard_state: crate::wire::raft::HardState {
            term: 1,
            vote: 1,
            commit: 2,
        },
        snapshot: Snapshot {
            meta: SnapshotMeta {
                index: 0,
                term: 0,
                conf_state: ConfState {
                    voters: vec![1],
                    learners: vec![],
                },
            },
            data: Image::default(),
        },
        entries,
    };
    let mut cfg = Config::new(1);
    cfg.election_tick = 3;
    let mut n = Node::new(cfg, state).unwrap();
    // Elect it: its own vote counts once persisted.
    for _ in 0..20 {
        n.tick();
        if n.has_ready() {
            let rd = n.ready();
            if let Some(t) = rd.persist {
                n.on_persisted(t);
            }
        }
        if n.status().role == Role::Leader {
            break;
        }
    }
    // Its no-op is not persisted yet: nothing of its term is committed.
    n.read_index(b"r".to_vec()).unwrap();
    let rd = n.ready();
    assert!(
        rd.read_states.is_empty(),
        "read answered at a stale commit index: {:?}",
        rd.read_states
    );
    let token = rd.persist.expect("the new term's no-op must be persisted");
    n.on_persisted(token);
    let rd = n.ready();
    assert_eq!(rd.read_states.len(), 1);
    assert!(
        rd.read_states[0].index >= 5,
        "read index {} misses committed entries",
        rd.read_states[0].index
    );
}

fn snapshot_chunk(
    from: u64,
    term: u64,
    offset: u64,
    data: &[u8],
    done: bool,
    checksum: u32,
) -> Message {
    Message {
        from,
        to: 2,
        term,
        body: MessageBody::Snapshot {
            meta: SnapshotMeta {
                index: 50,
                term: 1,
                conf_state: ConfState {
                    voters: vec![1, 2, 3],
                    learners: vec![],
                },
            },
            offset,
            data: data.to_vec(),
            done,
            checksum,
        },
    }
}

/// A leader that dies (or is deposed) mid-transfer must not leave its
/// half-sent image in the follower's memory.
#[test]
fn an_abandoned_snapshot_transfer_is_dropped_on_a_new_term() {
    let mut n = node(2, &[1, 2, 3]);
    n.step(snapshot_chunk(1, 1, 0, &[7; 100], false, 0));
    assert_eq!(n.incoming_snapshot_bytes(), 100);
    // Member 3 leads a later term.
    n.step(Message {
        from: 3,
        to: 2,
        term: 2,
        body: MessageBody::Heartbeat {
            commit: 0,
            read_round: 0,
        },
    });
    assert_eq!(n.status().leader, 3);
    assert_eq!(
        n.incoming_snapshot_bytes(),
        0,
        "the old transfer is dropped"
    );
}

/// The image is installed only if it is the one the leader checksummed.
#[test]
fn a_snapshot_with_a_wrong_checksum_is_not_installed() {
    let image = [5u8; 64];
    let good = crc32c::crc32c(&image);
    let mut n = node(2, &[1, 2, 3]);
    n.step(snapshot_chunk(1, 1, 0, &image[..32], false, good ^ 1));
    n.step(snapshot_chunk(1, 1, 32, &image[32..], true, good ^ 1));
    let rd = n.ready();
    assert!(rd.snapshot.is_none(), "a damaged image was installed");
    assert!(
        rd.messages.iter().any(|o| matches!(
            o.message.body,
            MessageBody::SnapshotResponse {
                offset: 0,
                reject: true,
                ..
            }
        )),
        "the follower asks for the image again: {:?}",
        rd.messages
    );
    assert_eq!(n.incoming_snapshot_bytes(), 0);
    n.step(snapshot_chunk(1, 1, 0, &image[..32], false, good));
    n.step(snapshot_chunk(1, 1, 32, &image[32..], true, good));
    let rd = n.ready();
    let installed = rd.snapshot.expect("the intact image is installed");
    assert_eq!(&installed.data[..], &image[..]);
}

/// A leader cannot make a follower buffer more than its bound.
#[test]
fn a_snapshot_transfer_is_bounded() {
    let mut cfg = Config::new(2);
    cfg.max_snapshot_bytes = 100;
    let state = RestartState {
        snapshot: Snapshot {
            meta: SnapshotMeta {
                conf_state: ConfState {
                    voters: vec![1, 2, 3],
                    learners: vec![],
                },
                ..Default::default()
            },
            data: Vec::new().into(),
        },
        ..Default::default()
    };
    let mut n = Node::new(cfg, state).unwrap();
    n.step(snapshot_chunk(1, 1, 0, &[1; 60], false, 0));
    assert_eq!(n.incoming_snapshot_bytes(), 60);
    n.step(snapshot_chunk(1, 1, 60, &[1; 60], false, 0));
    assert_eq!(n.incoming_snapshot_bytes(), 0, "past the bound: dropped");
}

#[test]
fn a_new_election_timeout_applies_to_the_running_countdown() {
    // Default 10 ticks: a follower campaigns within [10, 20).
    let mut n = node(1, &[1, 2, 3]);
    n.set_election_tick(30);
    for _ in 0..29 {
        n.tick();
    }
    assert_eq!(n.status().role, Role::Follower, "30 ticks now, not 10");
    for _ in 29..60 {
        n.tick();
    }
    assert_ne!(n.status().role, Role::Follower, "campaigns within 60 ticks");
    // Shorter again: a countdown drawn for 30 is redrawn, not waited out.
    let mut m = node(2, &[1, 2, 3]);
    m.set_election_tick(30);
    m.set_election_tick(5);
    for _ in 0..10 {
        m.tick();
    }
    assert_ne!(m.status().role, Role::Follower, "campaigns within 10 ticks");
    // Never at or below the heartbeat.
    let mut k = node(3, &[1, 2, 3]);
    k.set_election_tick(0);
    k.tick();
    assert_eq!(k.status().role, Role::Follower);
}

/// The meta a driver reads when it cuts a snapshot at `index`.
fn meta_at(n: &Node, index: u64, term: u64) -> SnapshotMeta {
    SnapshotMeta {
        index,
        term,
        conf_state: n.conf_state(),
    }
}

// ---- follower commit inference (LeaderDurable) ----------------------------

fn node_with(id: u64, voters: &[u64], learners: &[u64]) -> Node {
    let state = RestartState {
        snapshot: Snapshot {
            meta: SnapshotMeta {
                conf_state: ConfState {
                    voters: voters.to_vec(),
                    learners: learners.to_vec(),
                },
                ..Default::default()
            },
            data: Vec::new().into(),
        },
        ..Default::default()
    };
    Node::new(Config::new(id), state).unwrap()
}

/// Member `id` of a fresh cluster, following leader 1 in term 2 with its
/// bootstrap entries durable and applied; returns it and its last index.
fn following_1(id: u64, voters: &[u64], learners: &[u64]) -> (Node, u64) {
    let mut n = node_with(id, voters, learners);
    let rd = n.ready();
    n.on_persisted(rd.persist.unwrap());
    let last = n.status().last_index;
    n.step(Message {
        from: 1,
        to: id,
        term: 2,
        body: MessageBody::Heartbeat {
            commit: last,
            read_round: 0,
        },
    });
    let _ = n.ready();
    assert_eq!((n.status().term, n.status().leader), (2, 1));
    (n, last)
}

fn entry(index: u64, term: u64) -> Entry {
    Entry {
        index,
        term,
        data: b"x".to_vec(),
        ..Default::default()
    }
}

/// Leader 1's append (term 2) to `n`, with no news of commit; returns
/// the token of the write.
fn append_from_1(
    n: &mut Node,
    prev_index: u64,
    prev_term: u64,
    entries: Vec<Entry>,
) -> PersistToken {
    let (to, commit) = (n.id(), n.status().commit);
    n.step(Message {
        from: 1,
        to,
        term: 2,
        body: MessageBody::Append {
            prev_index,
            prev_term,
            entries,
            commit,
        },
    });
    n.ready().persist.expect("the entries are to be written")
}

/// [`append_from_1`], then the write completes.
fn durable_append_from_1(n: &mut Node, prev_index: u64, prev_term: u64, entries: Vec<Entry>) {
    let t = append_from_1(n, prev_index, prev_term, entries);
    n.on_persisted(t);
}

fn leader_durable(n: &mut Node, from: u64, term: u64, index: u64) {
    let to = n.id();
    n.step(Message {
        from,
        to,
        term,
        body: MessageBody::LeaderDurable { index },
    });
}

#[test]
fn a_follower_commits_what_it_and_the_leader_hold_durably() {
    let (mut n, last) = following_1(2, &[1, 2, 3], &[]);
    let t = append_from_1(
        &mut n,
        last,
        1,
        vec![entry(last + 1, 2), entry(last + 2, 2)],
    );
    leader_durable(&mut n, 1, 2, last + 1);
    assert_eq!(n.status().commit, last, "its own copy is not durable yet");
    n.on_persisted(t);
    assert_eq!(
        n.status().commit,
        last + 1,
        "only what the leader has durable"
    );
    let rd = n.ready();
    let applied: Vec<u64> = rd.committed_entries.iter().map(|e| e.index).collect();
    assert_eq!(applied, [last + 1]);
    // The leader's disk may be ahead of this follower's log: what both hold.
    leader_durable(&mut n, 1, 2, last + 9);
    assert_eq!(n.status().commit, last + 2);
    // And an announcement that came before the entries counts once they
    // are appended and durable.
    leader_durable(&mut n, 1, 2, last + 3);
    let t = append_from_1(&mut n, last + 2, 2, vec![entry(last + 3, 2)]);
    assert_eq!(n.status().commit, last + 2);
    n.on_persisted(t);
    assert_eq!(n.status().commit, last + 3);
}

#[test]
fn a_follower_infers_nothing_from_an_older_term_or_another_member() {
    let (mut n, last) = following_1(2, &[1, 2, 3], &[]);
    durable_append_from_1(&mut n, last, 1, vec![entry(last + 1, 2)]);
    leader_durable(&mut n, 1, 1, last + 1);
    assert_eq!(n.status().commit, last, "a message of an older term");
    leader_durable(&mut n, 3, 2, last + 1);
    assert_eq!(n.status().commit, last, "not from the leader it follows");
    // A newer term's leader: the entry is of an older term now.
    leader_durable(&mut n, 3, 3, last + 1);
    assert_eq!((n.status().term, n.status().leader), (3, 3));
    assert_eq!(
        n.status().commit,
        last,
        "the entry is not of the current term"
    );
}

/// An entry of an earlier term, sent on by the current leader, commits
/// only by the leader's rule (indirectly, under an entry of its term).
#[test]
fn a_follower_does_not_commit_an_older_terms_entry_by_inference() {
    let (mut n, last) = following_1(2, &[1, 2, 3], &[]);
    durable_append_from_1(&mut n, last, 1, vec![entry(last + 1, 1)]);
    leader_durable(&mut n, 1, 2, last + 1);
    assert_eq!(n.status().commit, last);
    durable_append_from_1(&mut n, last + 1, 1, vec![entry(last + 2, 2)]);
    assert_eq!(n.status().commit, last, "announced only through last + 1");
    leader_durable(&mut n, 1, 2, last + 2);
    assert_eq!(n.status().commit, last + 2, "under an entry of the term");
}

#[test]
fn a_follower_infers_nothing_where_two_are_no_quorum_or_it_does_not_vote() {
    let (mut five, last) = following_1(2, &[1, 2, 3, 4, 5], &[]);
    durable_append_from_1(&mut five, last, 1, vec![entry(last + 1, 2)]);
    leader_durable(&mut five, 1, 2, last + 1);
    assert_eq!(five.status().commit, last, "five voters: a quorum is three");

    let (mut learner, last) = following_1(3, &[1, 2], &[3]);
    durable_append_from_1(&mut learner, last, 1, vec![entry(last + 1, 2)]);
    leader_durable(&mut learner, 1, 2, last + 1);
    assert_eq!(
        learner.status().commit,
        last,
        "a learner's copy counts for nothing"
    );
}

#[test]
fn a_follower_infers_nothing_while_a_membership_change_waits_in_its_log() {
    use crate::wire::raft::{ConfChange, ConfChangeType, EntryType};
    let (mut n, last) = following_1(2, &[1, 2, 3], &[]);
    let change = Entry {
        kind: EntryType::ConfChange,
        data: postcard::to_allocvec(&ConfChange {
            change: ConfChangeType::AddLearner,
            node_id: 4,
            context: vec![],
        })
        .unwrap(),
        ..entry(last + 1, 2)
    };
    durable_append_from_1(&mut n, last, 1, vec![change, entry(last + 2, 2)]);
    leader_durable(&mut n, 1, 2, last + 2);
    assert_eq!(n.status().commit, last);
    // Once the leader's commit brings the change and it is applied, the
    // configuration in force is known again.
    n.step(Message {
        from: 1,
        to: 2,
        term: 2,
        body: MessageBody::Heartbeat {
            commit: last + 1,
            read_round: 0,
        },
    });
    let rd = n.ready();
    assert_eq!(rd.conf_state.unwrap().learners, [4]);
    leader_durable(&mut n, 1, 2, last + 2);
    assert_eq!(n.status().commit, last + 2);
}

/// Member 1 of three, leading term 2 or later with its no-op committed.
fn leader_of_three() -> (Node, u64) {
    let mut n = node(1, &[1, 2, 3]);
    for _ in 0..30 {
        n.tick();
    }
    let rd = n.ready();
    let pre_term = rd.messages[0].message.term;
    n.step(Message {
        from: 2,
        to: 1,
        term: pre_term,
        body: MessageBody::VoteResponse {
            pre: true,
            reject: false,
        },
    });
    let rd = n.ready();
    let term = n.status().term;
    n.step(Message {
        from: 2,
        to: 1,
        term,
        body: MessageBody::VoteResponse {
            pre: false,
            reject: false,
        },
    });
    n.on_persisted(rd.persist.unwrap());
    assert_eq!(n.status().role, Role::Leader);
    let rd = n.ready();
    let noop = rd.entries.last().unwrap().index;
    n.on_persisted(rd.persist.unwrap());
    n.step(Message {
        from: 2,
        to: 1,
        term,
        body: MessageBody::AppendResponse {
            index: noop,
            reject: false,
            hint_index: 0,
            hint_term: 0,
        },
    });
    assert_eq!(n.status().commit, noop);
    let _ = n.ready();
    (n, term)
}

fn announced(rd: &Ready) -> Vec<(u64, u64, bool)> {
    rd.messages
        .iter()
        .filter_map(|o| match o.message.body {
            MessageBody::LeaderDurable { index } => Some((o.message.to, index, o.before_persist)),
            _ => None,
        })
        .collect()
}

/// The leader announces its durable log after its fsync, and a read
/// arriving after that is answered no lower than the announced index:
/// a follower may have committed and answered a write there that the
/// leader does not know is committed yet.
#[test]
fn the_leader_announces_its_durable_log_and_reads_cover_it() {
    let (mut n, term) = leader_of_three();
    n.propose(b"x".to_vec()).unwrap();
    let rd = n.ready();
    let x = rd.entries.last().unwrap().index;
    assert!(announced(&rd).is_empty(), "not before its own fsync");
    n.on_persisted(rd.persist.unwrap());
    let rd = n.ready();
    assert_eq!(announced(&rd), [(2, x, true), (3, x, true)]);
    assert!(n.status().commit < x, "no follower acknowledged it");
    n.read_index(b"r".to_vec()).unwrap();
    let rd = n.ready();
    let round = rd
        .messages
        .iter()
        .find_map(|o| match o.message.body {
            MessageBody::Heartbeat { read_round, .. } => Some(read_round),
            _ => None,
        })
        .unwrap();
    n.step(Message {
        from: 3,
        to: 1,
        term,
        body: MessageBody::HeartbeatResponse { read_round: round },
    });
    let rd = n.ready();
    assert_eq!(
        rd.read_states,
        [ReadState {
            index: x,
            ctx: b"r".to_vec()
        }]
    );
}

#[test]
fn a_leader_of_five_announces_nothing() {
    let mut c = Cluster::new(&[1, 2, 3, 4, 5], |_| {});
    let l = c.elect();
    let n = c.nodes.get_mut(&l).unwrap();
    n.propose(b"x".to_vec()).unwrap();
    let rd = n.ready();
    n.on_persisted(rd.persist.unwrap());
    assert!(announced(&n.ready()).is_empty());
}

/// End to end on the lossless harness: followers commit by inference and
/// every member applies the same entries once.
#[test]
fn a_three_member_cluster_commits_with_announcements_in_play() {
    let mut c = Cluster::new(&[1, 2, 3], |_| {});
    let l = c.elect();
    let f = if l == 1 { 2 } else { 1 };
    for i in 0..5u8 {
        c.nodes.get_mut(&f).unwrap().propose(vec![b'p', i]).unwrap();
        c.pump();
    }
    for n in [1, 2, 3] {
        for i in 0..5u8 {
            assert_eq!(applied_times(&c, n, &[b'p', i]), 1, "member {n}");
        }
    }
}
