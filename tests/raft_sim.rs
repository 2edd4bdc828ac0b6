//! Deterministic fault simulation of the Raft core; see `sim/mod.rs`.
//!
//! `cargo test --test raft_sim` runs a fixed range of seeds. `make sim` runs
//! the ignored `sim_from_env` with `SEED=S` (one seed) or `SEEDS=N
//! SEED_BASE=B` (seeds B..B+N).

mod sim;

use sim::{run, Kind, SimConfig};


fn run_range(base: u64, n: u64) {
    let mut failures = Vec::new();
    let mut units = 0;
    for seed in base..base + n {
        match run(SimConfig::from_seed(seed)) {
            Ok(r) => units += r.units,
            Err(v) => {
                eprintln!("{v}");
                failures.push(v);
            }
        }
    }
    eprintln!("{n} seeds from {base}: {units} units, {} failed", failures.len());
    assert!(failures.is_empty(), "violations: {failures:#?}");
}

#[test]
fn seeds_a() {
    run_range(0, 60);
}

#[test]
fn seeds_b() {
    run_range(1000, 60);
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().filter(|s| !s.is_empty()).and_then(|s| s.parse().ok())
}

#[test]
#[ignore = "driven by `make sim` through SEED / SEEDS / SEED_BASE"]
fn sim_from_env() {
    if let Some(seed) = env_u64("SEED") {
        let cfg = SimConfig::from_seed(seed);
        eprintln!("{cfg:?}");
        match run(cfg) {
            Ok(r) => eprintln!("seed {seed} ok: {r:?}"),
            Err(v) => panic!("{v}"),
        }
        return;
    }
    let n = env_u64("SEEDS").unwrap_or(1000);
    let base = env_u64("SEED_BASE").unwrap_or(0);
    run_range(base, n);
}
