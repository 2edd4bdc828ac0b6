# Raft core: deterministic simulation and micro-benchmark.
#
#   make sim SEED=S                 one seed, verbose (reproduces a failure exactly)
#   make sim SEEDS=N SEED_BASE=B    seeds B..B+N-1; non-zero exit on any violation
#   make sim SEEDS=N SIM_FLAGS=--release   the same, optimized (faster for big N)
#   make sim SEEDS=50 SIM_BREAK=read-index  break a rule on purpose (also:
#                                   election-restriction, leader-fsync,
#                                   follower-fsync, held-copy, durable-read);
#                                   must exit non-zero
#   make sim SEEDS=N SIM_SHAPE=far-follower   three voters, one behind a slow
#                                   uplink (followers commit ahead of the leader)
#   make sim SEEDS=N SIM_SHAPE=slow-uplink    any drawn configuration, one member
#                                   behind a 12-unit uplink (snapshot transfers)
#   make bench-raft                 committed entries/s and allocations/entry
#
# Plain `cargo test` (make test) already runs 400 seeds (and 400 more with a
# slow uplink) plus the tests that
# prove the checkers catch deliberately broken rules.

# Do not become the default goal of the including Makefile.
_raft_mk_prev_goal := $(.DEFAULT_GOAL)

SIM_FLAGS ?=

.PHONY: sim bench-raft
sim:
	SEED="$(SEED)" SEEDS="$(SEEDS)" SEED_BASE="$(SEED_BASE)" SIM_BREAK="$(SIM_BREAK)" SIM_SHAPE="$(SIM_SHAPE)" \
		cargo test $(SIM_FLAGS) --test raft_sim sim_from_env -- --ignored --nocapture

bench-raft:
	cargo run --release --example bench_raft

.DEFAULT_GOAL := $(_raft_mk_prev_goal)
