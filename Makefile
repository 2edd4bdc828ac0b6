# qed: the two commands a newcomer needs are `make run` and `make test`.
# Targets from other areas live in mk/*.mk and are included below.

CARGO ?= cargo
DATA_DIR ?= default.qed

.PHONY: all build release run run-cluster bench crash-test test test-deps fmt lint fuzz clean help

all: build

help:
	@echo "make run    build and start a node (QUIC, UDP 127.0.0.1:2379) and the gRPC shim (TCP 127.0.0.1:2379)"
	@echo "make run-cluster  3 members on loopback (QUIC, UDP 127.0.0.1:12379/22379/32379), a gRPC shim per member on the same TCP ports, and one on TCP 127.0.0.1:2379"
	@echo "make test   install what the tests need, then run them all"
	@echo "make bench  qed against etcd 3.4, side by side (QUICK=1 for a short run)"
	@echo "make crash-test  SIGKILL a node KILLS times under writers (default 200)"
	@echo "make build | release | fmt | lint | fuzz | clean"
	@echo "also: $(EXTRA_HELP)"

build:
	$(CARGO) build --workspace --all-targets

release:
	$(CARGO) build --release --bins

# A single node on the default port (QUIC, UDP 127.0.0.1:2379), its data in
# ./$(DATA_DIR), and the gRPC shim on TCP 127.0.0.1:2379 so that `etcdctl
# put a b` works at once. The SDK examples (`cargo run --example kv`) find
# the node's CA in $(DATA_DIR)/certs. Ctrl-C stops both.
# /health and /metrics: the shim's http://127.0.0.1:2379, the node's :2381.
# The node advertises http://127.0.0.1:2379 (QUIC on UDP, the shim's h2c on
# TCP), so `etcdctl ... --cluster` dials the shim.
run: release
	./target/release/qed --data-dir $(DATA_DIR) --listen-metrics-urls http://127.0.0.1:2381 \
	  --advertise-client-urls http://127.0.0.1:2379 & node=$$!; \
	trap 'kill $$node 2>/dev/null' EXIT INT TERM; \
	while [ ! -f $(DATA_DIR)/certs/ca.crt ]; do kill -0 $$node 2>/dev/null || exit 1; sleep 0.1; done; \
	./target/release/qed-grpc --cacert $(DATA_DIR)/certs/ca.crt

# Three members on loopback, each box serving its client URL
# http://127.0.0.1:{1,2,3}2379 twice, as `make run` serves 2379: the node on
# UDP (QUIC) and its own gRPC shim on TCP, so the client URLs MemberList
# reports are what `etcdctl --cluster` dials. Peers on UDP
# 127.0.0.1:{1,2,3}2380, data in ./$(CLUSTER_DIR)/n{1,2,3}, /metrics and
# /health on TCP 127.0.0.1:{1,2,3}2381, and one more shim on TCP
# 127.0.0.1:2379 in front of all three (trusting every member's generated
# CA) so plain `etcdctl` works. Ctrl-C stops all seven. BIN=target/debug
# skips the release build.
CLUSTER_DIR ?= cluster.qed
BIN ?= target/release
run-cluster: $(if $(filter target/release,$(BIN)),release)
	@ic=n1=http://127.0.0.1:12380,n2=http://127.0.0.1:22380,n3=http://127.0.0.1:32380; pids=; \
	trap 'kill $$pids 2>/dev/null' EXIT INT TERM; \
	for i in 1 2 3; do \
	  ./$(BIN)/qed --name n$$i --data-dir $(CLUSTER_DIR)/n$$i \
	    --listen-client-urls http://127.0.0.1:$${i}2379 \
	    --listen-peer-urls http://127.0.0.1:$${i}2380 \
	    --initial-advertise-peer-urls http://127.0.0.1:$${i}2380 \
	    --listen-metrics-urls http://127.0.0.1:$${i}2381 \
	    --initial-cluster $$ic --initial-cluster-token qed-run-cluster & pids="$$pids $$!"; \
	done; \
	for i in 1 2 3; do \
	  while [ ! -f $(CLUSTER_DIR)/n$$i/certs/ca.crt ]; do kill -0 $$pids 2>/dev/null || exit 1; sleep 0.1; done; \
	  ./$(BIN)/qed-grpc --endpoints http://127.0.0.1:$${i}2379 --cacert $(CLUSTER_DIR)/n$$i/certs/ca.crt \
	    --listen-client-urls http://127.0.0.1:$${i}2379 & pids="$$pids $$!"; \
	done; \
	cat $(CLUSTER_DIR)/n1/certs/ca.crt $(CLUSTER_DIR)/n2/certs/ca.crt $(CLUSTER_DIR)/n3/certs/ca.crt > $(CLUSTER_DIR)/ca-bundle.crt; \
	./$(BIN)/qed-grpc --endpoints http://127.0.0.1:12379,http://127.0.0.1:22379,http://127.0.0.1:32379 \
	  --cacert $(CLUSTER_DIR)/ca-bundle.crt

# More SIGKILLs than CI's 30: `make crash-test KILLS=500 CRASH_SEED=7`.
KILLS ?= 200
CRASH_SEED ?= 24301
crash-test:
	CRASH_KILLS=$(KILLS) CRASH_SEED=$(CRASH_SEED) $(CARGO) test --release --test crash -- --nocapture

# qed against etcd 3.4 on this machine; writes bench/results/latest.md
# (QUICK=1: bench/results/quick.md, so a sanity check never replaces a full run).
QUICK ?= 0
bench:
	QUICK=$(QUICK) bench/compare.sh

# Everything the tests need is installed by test-deps (extended by mk/*.mk).
test: test-deps
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	# The fuzz targets are not in the workspace (cargo-fuzz wants its own
	# crate); check they still build against the library.
	$(CARGO) check --manifest-path fuzz/Cargo.toml --bins
	$(CARGO) test --workspace

test-deps::
	@command -v cargo >/dev/null || { echo "cargo is required (https://rustup.rs)"; exit 1; }

fmt:
	$(CARGO) fmt --all

lint:
	$(CARGO) clippy --workspace --all-targets -- -D warnings

# Fuzz the frame and request decoders (needs nightly + cargo-fuzz; not in CI).
FUZZ_SECONDS ?= 60
fuzz:
	cd fuzz && $(CARGO) +nightly fuzz run client_request -- -max_total_time=$(FUZZ_SECONDS)
	cd fuzz && $(CARGO) +nightly fuzz run auth_decode -- -max_total_time=$(FUZZ_SECONDS)
	cd fuzz && $(CARGO) +nightly fuzz run kv_snapshot -- -max_total_time=$(FUZZ_SECONDS)

clean:
	$(CARGO) clean

-include mk/*.mk
