//! Power cuts under the real durable log (issue 12).
//!
//! Each seed drives a [`DurableLog`] on a [`SimFs`] through a random
//! workload (appends that overwrite uncommitted tails, hard states, syncs,
//! received snapshots and own snapshots marked later), cuts the power at a
//! random point (between operations or inside one: an armed budget makes
//! every later file call fail), recovers, checks, and goes on from the
//! recovered state for a few rounds. Sometimes the power fails again during
//! recovery itself.
//!
//! What must hold after every cut: recovery succeeds (a power cut alone is
//! never damage), and what it returns is the log as it stood after some
//! append at or after the last acknowledged sync (nothing acknowledged is
//! lost, nothing appears that was never written, no half-applied record);
//! the snapshot is at least the last acknowledged one and holds its bytes.
//! A second test flips one bit of a synced file: recovery must then return
//! exactly the acknowledged state or stop with `Corrupt` naming that file
//! at or before the flipped offset, never quietly return less.
//!
//! `POWER_CUT_SEEDS=N` (default 300) and `POWER_CUT_SEED=S` (one seed,
//! printing its steps) choose the seeds; `make power-cut SEEDS=N` runs more
//! in a release build. A failure prints its seed.

use super::durable_log::{DurableLog, LogOptions, Recovered};
use super::fs::Fs;
use super::sim_fs::{Rng, SimFs};
use super::StorageError;
use crate::wire::raft::{ConfState, Entry, EntryType, HardState, SnapshotMeta};
use std::path::Path;
use std::sync::Arc;

const DIR: &str = "/data/member";
const ROUNDS: usize = 4;

fn options(rng: &mut Rng) -> LogOptions {
    LogOptions {
        segment_bytes: [8 * 1024, 16 * 1024, 64 * 1024][rng.below(3) as usize],
        max_snapshots: 1 + rng.below(2) as usize,
        max_wals: rng.below(3) as usize,
    }
}

/// The writer's view: the whole log, and every state since the last open.
struct Model {
    /// States after each append since the last open: `history[0]` is what
    /// the open recovered.
    history: Vec<(HardState, Vec<Entry>)>,
    /// `history[acked]` and everything before it were synced.
    acked: usize,
    /// The newest snapshot acknowledged (saved and marked), by index.
    snap_acked: u64,
    /// The highest snapshot index attempted: entries at or below it are
    /// never overwritten (they are committed).
    snap_max: u64,
    /// An own snapshot saved but not yet marked in the WAL.
    unmarked: Option<SnapshotMeta>,
    verbose: bool,
}

impl Model {
    fn current(&self) -> &(HardState, Vec<Entry>) {
        &self.history[self.history.len() - 1]
    }

    fn ack(&mut self) {
        self.acked = self.history.len() - 1;
    }

    fn say(&self, what: impl FnOnce() -> String) {
        if self.verbose {
            println!("  {}", what());
        }
    }
}

/// What a snapshot at `index` holds: derived from it, so any snapshot file
/// can be checked without remembering it.
fn snapshot_data(index: u64, term: u64) -> Vec<u8> {
    let mut rng = Rng(index.wrapping_mul(31) ^ term);
    (0..200 + rng.below(3000))
        .map(|_| rng.next_u64() as u8)
        .collect()
}

fn random_bytes(rng: &mut Rng, len: usize) -> Vec<u8> {
    (0..len).map(|_| rng.next_u64() as u8).collect()
}

/// One step of the workload; `Err` when the file layer failed (the armed
/// cut), which ends the round.
fn step(log: &mut DurableLog, model: &mut Model, rng: &mut Rng) -> Result<(), StorageError> {
    let (hs, entries) = model.current().clone();
    let last = entries.len() as u64;
    match rng.below(100) {
        0..=44 => {
            // Entries, maybe replacing an uncommitted tail.
            // Never at or below a snapshot (those entries are committed).
            let lowest = (model.snap_max + 1).max(last.saturating_sub(2)).max(1);
            let start = lowest + rng.below(last + 2 - lowest);
            let count = 1 + rng.below(4);
            let term = hs.term.max(1);
            let new: Vec<Entry> = (start..start + count)
                .map(|index| Entry {
                    term,
                    index,
                    kind: EntryType::Normal,
                    data: {
                        let len = rng.below(1200) as usize;
                        random_bytes(rng, len)
                    },
                })
                .collect();
            model.say(|| format!("append {start}..{} at term {term}", start + count - 1));
            let mut log_after = entries;
            log_after.truncate(start as usize - 1);
            log_after.extend(new.iter().cloned());
            model.history.push((hs, log_after));
            log.append(None, &new)
        }
        45..=59 => {
            let hs = HardState {
                term: hs.term + rng.below(2),
                vote: rng.below(4),
                commit: rng.below(last + 1),
            };
            model.say(|| format!("hard state {hs:?}"));
            model.history.push((hs, entries));
            log.append(Some(&hs), &[])
        }
        60..=84 => {
            model.say(|| "sync".into());
            log.sync()?;
            model.ack();
            Ok(())
        }
        85..=91 => {
            // A snapshot from the leader, saved in order with the log.
            if last <= model.snap_max {
                return Ok(());
            }
            let index = model.snap_max + 1 + rng.below(last - model.snap_max);
            let meta = meta_at(&entries, index);
            model.say(|| format!("received snapshot at {index}"));
            log.sync()?;
            model.ack();
            model.snap_max = index;
            log.save_snapshot(&meta, snapshot_data(index, meta.term))?;
            model.snap_acked = model.snap_acked.max(index);
            Ok(())
        }
        _ => {
            // An own snapshot: the file first (off the WAL writer), its
            // marker later.
            if let Some(meta) = model.unmarked.take() {
                model.say(|| format!("mark own snapshot at {}", meta.index));
                log.mark_snapshot(&meta)?;
                model.ack();
                model.snap_acked = model.snap_acked.max(meta.index);
                return Ok(());
            }
            if last <= model.snap_max {
                return Ok(());
            }
            log.sync()?;
            model.ack();
            let index = model.snap_max + 1 + rng.below(last - model.snap_max);
            let meta = meta_at(&entries, index);
            model.say(|| format!("own snapshot at {index}"));
            model.snap_max = index;
            log.snapshot_writer()
                .save(&meta, &snapshot_data(index, meta.term))?;
            model.unmarked = Some(meta);
            Ok(())
        }
    }
}

fn meta_at(entries: &[Entry], index: u64) -> SnapshotMeta {
    SnapshotMeta {
        index,
        term: entries[index as usize - 1].term,
        conf_state: ConfState {
            voters: vec![1],
            learners: vec![],
        },
    }
}

/// Checks a recovery against the model; returns the state it matched.
fn check(model: &Model, rec: &Recovered) -> Result<(HardState, Vec<Entry>, u64), String> {
    let snap = match &rec.snapshot {
        Some((meta, data)) => {
            let data = data
                .bytes()
                .map_err(|e| format!("snapshot at {} unreadable: {e}", meta.index))?;
            if data != snapshot_data(meta.index, meta.term) {
                return Err(format!("snapshot at {} holds other bytes", meta.index));
            }
            meta.index
        }
        None => 0,
    };
    if snap < model.snap_acked {
        return Err(format!(
            "acknowledged snapshot at {} lost (recovered {snap})",
            model.snap_acked
        ));
    }
    for k in model.acked..model.history.len() {
        let (hs, entries) = &model.history[k];
        if *hs == rec.hard_state
            && entries.len() as u64 >= snap
            && entries[snap as usize..] == rec.entries[..]
        {
            return Ok((*hs, entries.clone(), snap));
        }
    }
    let acked = &model.history[model.acked];
    Err(format!(
        "recovered hard state {:?} and entries {:?} after snapshot {snap} match no state \
         from the acknowledged one on (acknowledged: {:?}, last index {}; {} states since)",
        rec.hard_state,
        rec.entries
            .iter()
            .map(|e| (e.index, e.term))
            .collect::<Vec<_>>(),
        acked.0,
        acked.1.len(),
        model.history.len() - 1 - model.acked
    ))
}

/// Opens the log, cutting the power during recovery itself now and then.
fn recover(
    fs: &SimFs,
    rng: &mut Rng,
    opts: LogOptions,
    verbose: bool,
) -> Result<(DurableLog, Recovered), String> {
    for attempt in 0..4 {
        if attempt < 3 && rng.below(4) == 0 {
            fs.fail_after(rng.below(12));
        }
        match DurableLog::open_in(Arc::new(fs.clone()), Path::new(DIR), opts) {
            Ok(opened) => {
                fs.fail_after(u64::MAX);
                return Ok(opened);
            }
            Err(e) if is_cut(&e) => {
                if verbose {
                    println!("  power cut during recovery: {e}");
                }
                fs.power_cut(rng);
            }
            Err(e) => {
                return Err(format!(
                    "recovery failed after a power cut: {e}; files {:?}",
                    fs.files(Path::new(DIR))
                ))
            }
        }
    }
    Err("recovery kept failing".into())
}

fn is_cut(e: &StorageError) -> bool {
    matches!(e, StorageError::Io { source, .. } if source.to_string().contains("simulated power cut"))
}

/// One seed: `ROUNDS` rounds of workload, cut, recovery, check.
fn run_seed(seed: u64, verbose: bool) -> Result<(), String> {
    let mut rng = Rng(seed);
    let opts = options(&mut rng);
    let fs = SimFs::new();
    if verbose {
        println!("seed {seed}: {opts:?}");
    }
    let (mut log, rec) = recover(&fs, &mut rng, opts, verbose)?;
    let mut model = Model {
        history: vec![(rec.hard_state, rec.entries.clone())],
        acked: 0,
        snap_acked: 0,
        snap_max: 0,
        unmarked: None,
        verbose,
    };
    for round in 0..ROUNDS {
        if rng.below(2) == 0 {
            fs.fail_after(rng.below(150));
        }
        for _ in 0..20 + rng.below(60) {
            if let Err(e) = step(&mut log, &mut model, &mut rng) {
                if !is_cut(&e) {
                    return Err(format!("round {round}: the workload failed: {e}"));
                }
                model.say(|| format!("power fails: {e}"));
                break;
            }
        }
        drop(log);
        model.say(|| "power cut".into());
        fs.power_cut(&mut rng);
        let (reopened, rec) = recover(&fs, &mut rng, opts, verbose)?;
        let (hs, entries, snap) = check(&model, &rec).map_err(|e| format!("round {round}: {e}"))?;
        model.say(|| {
            format!(
                "recovered {} entries after snapshot {snap}",
                rec.entries.len()
            )
        });
        log = reopened;
        model.history = vec![(hs, entries)];
        model.acked = 0;
        model.snap_acked = snap;
        model.snap_max = model.snap_max.max(snap);
        model.unmarked = None;
    }
    Ok(())
}

fn seeds(default: u64) -> (Vec<u64>, bool) {
    let var = |name| std::env::var(name).ok().and_then(|v| v.parse::<u64>().ok());
    match var("POWER_CUT_SEED") {
        Some(seed) => (vec![seed], true),
        None => {
            let n = var("POWER_CUT_SEEDS").unwrap_or(default);
            let base = var("POWER_CUT_SEED_BASE").unwrap_or(1);
            ((base..base + n).collect(), false)
        }
    }
}

#[test]
fn nothing_acknowledged_is_lost_to_a_power_cut() {
    let (seeds, verbose) = seeds(300);
    let started = std::time::Instant::now();
    let failures: Vec<String> = seeds
        .iter()
        .filter_map(|&seed| {
            run_seed(seed, verbose)
                .err()
                .map(|e| format!("seed {seed}: {e}\n  reproduce: make power-cut SEED={seed}"))
        })
        .collect();
    println!(
        "power cut: {} seeds × {ROUNDS} cuts in {:.1?}",
        seeds.len(),
        started.elapsed()
    );
    assert!(
        failures.is_empty(),
        "{} of {} seeds failed:\n{}",
        failures.len(),
        seeds.len(),
        failures[..failures.len().min(10)].join("\n")
    );
}

/// One seed of bit rot: a clean workload, everything synced, then one bit
/// of one file flipped.
fn rot_seed(seed: u64, verbose: bool) -> Result<(), String> {
    let mut rng = Rng(seed ^ 0x5eed_b175);
    let opts = options(&mut rng);
    let fs = SimFs::new();
    let (mut log, rec) = DurableLog::open_in(Arc::new(fs.clone()), Path::new(DIR), opts)
        .map_err(|e| e.to_string())?;
    let mut model = Model {
        history: vec![(rec.hard_state, rec.entries)],
        acked: 0,
        snap_acked: 0,
        snap_max: 0,
        unmarked: None,
        verbose,
    };
    for _ in 0..20 + rng.below(80) {
        step(&mut log, &mut model, &mut rng).map_err(|e| e.to_string())?;
    }
    log.sync().map_err(|e| e.to_string())?;
    model.ack();
    drop(log);
    let files = fs.files(Path::new(DIR));
    let written: Vec<(std::path::PathBuf, usize)> = files
        .into_iter()
        .filter_map(|(path, _)| {
            let bytes = fs.read(&path).ok()?;
            let end = bytes.iter().rposition(|b| *b != 0)? + 1;
            Some((path, end))
        })
        .collect();
    let (path, end) = &written[rng.below(written.len() as u64) as usize];
    let offset = rng.below(*end as u64) as usize;
    let bit = rng.below(8) as u8;
    fs.flip_bit(path, offset, bit);
    model.say(|| format!("flipped bit {bit} at {}:{offset}", path.display()));
    match DurableLog::open_in(Arc::new(fs.clone()), Path::new(DIR), opts) {
        Ok((_, rec)) => {
            // Only bytes no check covers (padding, older snapshots) may
            // flip unnoticed, and then nothing may be missing.
            model.acked = model.history.len() - 1;
            check(&model, &rec).map_err(|e| {
                format!(
                    "bit {bit} at {}:{offset} flipped, recovery returned less: {e}",
                    path.display()
                )
            })?;
            Ok(())
        }
        Err(StorageError::Corrupt {
            path: p,
            offset: at,
            ..
        }) if p == *path && at as usize <= offset => Ok(()),
        Err(e) => Err(format!(
            "bit {bit} at {}:{offset} flipped: wrong error: {e}",
            path.display()
        )),
    }
}

#[test]
fn bit_rot_in_synced_files_stops_recovery_or_changes_nothing() {
    let (seeds, verbose) = seeds(300);
    let failures: Vec<String> = seeds
        .iter()
        .filter_map(|&seed| {
            rot_seed(seed, verbose)
                .err()
                .map(|e| format!("seed {seed}: {e}\n  reproduce: make power-cut SEED={seed}"))
        })
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} seeds failed:\n{}",
        failures.len(),
        seeds.len(),
        failures[..failures.len().min(10)].join("\n")
    );
}
