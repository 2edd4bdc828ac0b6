# Migration from and to etcd: etcd v3 snapshots (bbolt files) in and out.
# Included by the main Makefile. tests/etcd_migrate.rs runs in `make test`
# (it skips without etcd/etcdctl; deps-etcd in mk/grpc.mk installs them).

.PHONY: fuzz-etcd-snapshot

EXTRA_HELP += fuzz-etcd-snapshot

# Fuzz the bbolt reader and the etcd layout import (nightly + cargo-fuzz).
fuzz-etcd-snapshot:
	cd fuzz && $(CARGO) +nightly fuzz run etcd_snapshot -- -max_total_time=$(FUZZ_SECONDS)

# Restore speed against etcd's own restore, one etcd-made snapshot
# (KEYS=1000000 by default; SNAPSHOT=file reuses one).
.PHONY: bench-restore
EXTRA_HELP += bench-restore
bench-restore: release
	$(CARGO) build --release --example bench
	KEYS=$(or $(KEYS),1000000) bench/restore.sh
