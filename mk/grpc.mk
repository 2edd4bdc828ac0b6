# qed-grpc: the etcd v3 gRPC shim. Included by the main Makefile.
#
# deps-etcd installs Debian's etcd 3.4 (server and etcdctl) for the
# differential test (tests/etcdctl_diff.rs), which skips without them.
# A temporary policy-rc.d (removed afterwards unless one was already there)
# stops the package from starting an etcd service on install.

.PHONY: deps-etcd fuzz-grpc

EXTRA_HELP += deps-etcd, fuzz-grpc

test-deps:: deps-etcd

SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

deps-etcd:
	@if command -v etcd >/dev/null && command -v etcdctl >/dev/null; then \
		echo "etcd $$(etcd --version | head -1 | awk '{print $$3}') and etcdctl present"; \
	elif command -v apt-get >/dev/null; then \
		guard=; if [ ! -e /usr/sbin/policy-rc.d ]; then guard=1; \
			printf '#!/bin/sh\nexit 101\n' | $(SUDO) tee /usr/sbin/policy-rc.d >/dev/null && \
			$(SUDO) chmod +x /usr/sbin/policy-rc.d; fi; \
		$(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq etcd-server etcd-client; \
		status=$$?; [ -z "$$guard" ] || $(SUDO) rm -f /usr/sbin/policy-rc.d; exit $$status; \
	else \
		echo "deps-etcd: no apt-get; install etcd 3.4 and etcdctl by hand (the etcdctl test skips without them)"; \
	fi

fuzz-grpc:
	cd fuzz && $(CARGO) +nightly fuzz run grpc_decode -- -max_total_time=$(FUZZ_SECONDS)
