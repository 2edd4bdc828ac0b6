# Edge links: qed and etcd 3.4 under peer loss, a slow leader disk and WAN
# latency (bench/edge.sh). Included by the main Makefile.
#
#   make bench-edge                   every cell, 60 s each -> bench/results/edge.md
#   make bench-edge QUICK=1           5 s each -> bench/results/edge-quick.md
#   make bench-edge EDGE_DURATION=30 EDGE_SCENARIOS="loss wan"
#
# The loss cells need root (a network namespace and nftables, which
# deps-edge installs); without root they are skipped and the rest runs.

# Do not become the default goal of the including Makefile.
_edge_mk_prev_goal := $(.DEFAULT_GOAL)

EXTRA_HELP := $(EXTRA_HELP), bench-edge (QUICK=1, EDGE_DURATION=S, EDGE_SCENARIOS="loss disk wan")
EDGE_DURATION ?=
EDGE_SCENARIOS ?=

.PHONY: bench-edge deps-edge

bench-edge: deps-edge
	QUICK=$(QUICK) DURATION=$(EDGE_DURATION) SCENARIOS="$(EDGE_SCENARIOS)" bench/edge.sh

# nftables and strace, from Debian, when root and apt-get are there.
deps-edge:
	@missing=; for t in nft:nftables strace:strace curl:curl; do \
		command -v $${t%%:*} >/dev/null || missing="$$missing $${t#*:}"; done; \
	if [ -z "$$missing" ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	else \
		echo "deps-edge: missing$$missing (bench-edge skips what needs them)"; \
	fi

.DEFAULT_GOAL := $(_edge_mk_prev_goal)
