# qed: the two commands a newcomer needs are `make run` and `make test`.
# Targets from other areas live in mk/*.mk and are included below.

CARGO ?= cargo
DATA_DIR ?= default.qed

.PHONY: all build release run test test-deps fmt lint fuzz clean help

all: build

help:
	@echo "make run    build and start a single node (QUIC on UDP 127.0.0.1:2379)"
	@echo "make test   install what the tests need, then run them all"
	@echo "make build | release | fmt | lint | fuzz | clean"
	@echo "also: $(EXTRA_HELP)"

build:
	$(CARGO) build --workspace --all-targets

release:
	$(CARGO) build --release --bins

# A single node on the default ports, its data in ./$(DATA_DIR). The SDK
# examples (`cargo run --example kv`) find its CA in $(DATA_DIR)/certs.
run: release
	./target/release/qed --data-dir $(DATA_DIR)

# Everything the tests need is installed by test-deps (extended by mk/*.mk).
test: test-deps
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
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

clean:
	$(CARGO) clean

-include mk/*.mk
