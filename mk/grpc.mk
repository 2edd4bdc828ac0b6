# qed-grpc: the etcd v3 gRPC shim. Included by the main Makefile.
#
# deps-etcd installs Debian's etcd 3.4 (server and etcdctl) for the
# differential test (tests/etcdctl_diff.rs), which skips without them.
# policy-rc.d stops the package from starting an etcd service on install.

.PHONY: deps-etcd run-grpc fuzz-grpc

EXTRA_HELP += run-grpc (node + gRPC shim: etcdctl works against 127.0.0.1:2379), deps-etcd, fuzz-grpc

test-deps:: deps-etcd

SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

deps-etcd:
	@if command -v etcd >/dev/null && command -v etcdctl >/dev/null; then \
		echo "etcd $$(etcd --version | head -1 | awk '{print $$3}') and etcdctl present"; \
	elif command -v apt-get >/dev/null; then \
		printf '#!/bin/sh\nexit 101\n' | $(SUDO) tee /usr/sbin/policy-rc.d >/dev/null && \
		$(SUDO) chmod +x /usr/sbin/policy-rc.d && \
		$(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq etcd-server etcd-client; \
	else \
		echo "deps-etcd: no apt-get; install etcd 3.4 and etcdctl by hand (the etcdctl test skips without them)"; \
	fi

# A node (QUIC on UDP 127.0.0.1:2379) and the shim (h2c on TCP
# 127.0.0.1:2379) together; Ctrl-C stops both.
run-grpc: release
	./target/release/qed --data-dir $(DATA_DIR) & node=$$!; \
	trap 'kill $$node 2>/dev/null' EXIT INT TERM; \
	while [ ! -f $(DATA_DIR)/certs/ca.crt ]; do kill -0 $$node 2>/dev/null || exit 1; sleep 0.1; done; \
	./target/release/qed-grpc --cacert $(DATA_DIR)/certs/ca.crt

fuzz-grpc:
	cd fuzz && $(CARGO) +nightly fuzz run grpc_decode -- -max_total_time=$(FUZZ_SECONDS)
