# Storage: power cuts under the real durable log (src/storage/power_cut.rs).
#
#   make power-cut SEEDS=N [SEED_BASE=B]   seeds B..B+N-1 (default 2000 from 1)
#   make power-cut SEED=S                  one seed, printing its steps
#   make power-cut SEEDS=N POWER_CUT_FLAGS=--release   optimized (faster for big N)
#
# Plain `cargo test` (make test) already runs 300 seeds of cuts and of bit rot.

# Do not become the default goal of the including Makefile.
_storage_mk_prev_goal := $(.DEFAULT_GOAL)

POWER_CUT_FLAGS ?=
EXTRA_HELP := $(EXTRA_HELP), power-cut (SEEDS=N or SEED=S)

.PHONY: power-cut
power-cut:
	POWER_CUT_SEED="$(SEED)" POWER_CUT_SEEDS="$(or $(SEEDS),2000)" POWER_CUT_SEED_BASE="$(or $(SEED_BASE),1)" \
		cargo test $(POWER_CUT_FLAGS) --lib storage::power_cut -- --nocapture

.DEFAULT_GOAL := $(_storage_mk_prev_goal)
