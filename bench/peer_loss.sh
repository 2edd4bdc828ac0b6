#!/usr/bin/env bash
# Peer packet loss: how long followers go without a leader.
#
#   bench/peer_loss.sh [LOSS_PERCENT] [SECONDS]      (default 20, 60)
#
# Three qed members on loopback inside a fresh network namespace; nftables
# drops LOSS_PERCENT of the packets to any member's peer port, at random
# (clients and metrics are clean). examples/bench puts through all members
# (16 in flight) for SECONDS while every member's etcd_server_has_leader is
# sampled every 100 ms. Prints one line: put/s, errors, leader changes,
# the no-leader gaps seen (count, longest, total) and each member's log
# lines about losing its leader. Binaries from QED_BIN (default
# target/debug; build them first: cargo build --bins --examples).
#
# Needs root (ip netns, nft); without it, or without nft, it says so and
# exits 0. Everything runs inside the namespace, which is deleted on exit
# (with every process started in it, stopped by PID). QED_LOGS=DIR keeps
# the members' logs there; QED_FLAGS adds flags to every member (say
# "--heartbeat-interval auto --election-timeout auto").
set -euo pipefail

LOSS=${1:-20}
SECS=${2:-60}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${QED_BIN:-$ROOT/target/debug}

if [ "${QED_PEER_LOSS_INSIDE:-}" != 1 ]; then
    if [ "$(id -u)" != 0 ]; then
        echo "peer_loss: skipped (needs root for a network namespace and nftables)"
        exit 0
    fi
    for tool in ip nft curl; do
        if ! command -v "$tool" >/dev/null; then
            echo "peer_loss: skipped ($tool is not installed)"
            exit 0
        fi
    done
    for b in qed examples/bench; do
        [ -x "$BIN/$b" ] || { echo "peer_loss: $BIN/$b is missing (cargo build --bins --examples)"; exit 1; }
    done
    NS=qed-loss-$$
    ip netns add "$NS"
    trap 'ip netns delete "$NS" 2>/dev/null || true' EXIT
    ip netns exec "$NS" ip link set lo up
    QED_PEER_LOSS_INSIDE=1 QED_BIN="$BIN" QED_LOGS="${QED_LOGS:-}" QED_FLAGS="${QED_FLAGS:-}" ip netns exec "$NS" "$0" "$LOSS" "$SECS"
    exit $?
fi

# ---- inside the namespace
TMP=$(mktemp -d /tmp/qed-peer-loss.XXXXXX)
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    if [ -n "${QED_LOGS:-}" ]; then mkdir -p "$QED_LOGS" && cp "$TMP"/*.log "$TMP"/bench.* "$QED_LOGS"/ 2>/dev/null || true; fi
    rm -rf "$TMP"
}
trap cleanup EXIT

PEERS=(12380 22380 32380)
CLUSTER="n1=http://127.0.0.1:12380,n2=http://127.0.0.1:22380,n3=http://127.0.0.1:32380"
for i in 1 2 3; do
    "$BIN/qed" --name "n$i" --data-dir "$TMP/n$i" \
        --listen-client-urls "https://127.0.0.1:${i}2379" \
        --listen-peer-urls "http://127.0.0.1:${i}2380" \
        --initial-advertise-peer-urls "http://127.0.0.1:${i}2380" \
        --listen-metrics-urls "http://127.0.0.1:${i}2381" \
        --initial-cluster "$CLUSTER" --initial-cluster-token loss \
        --log-level info ${QED_FLAGS:-} 2>"$TMP/n$i.log" &
    PIDS+=($!)
done

has_leader() { curl -s -m 1 "http://127.0.0.1:${1}2381/metrics" | awk '/^etcd_server_has_leader /{print $2}'; }
metric() { curl -s -m 1 "http://127.0.0.1:${1}2381/metrics" | awk -v m="$2" '$1==m{print $2}'; }

for _ in $(seq 300); do
    ok=0
    for i in 1 2 3; do [ "$(has_leader $i)" = 1 ] && ok=$((ok + 1)); done
    [ $ok = 3 ] && break
    sleep 0.1
done
[ $ok = 3 ] || { echo "peer_loss: the cluster never elected a leader"; tail -5 "$TMP"/n*.log; exit 1; }
for _ in $(seq 300); do
    [ -s "$TMP/n1/certs/ca.crt" ] && [ -s "$TMP/n2/certs/ca.crt" ] && [ -s "$TMP/n3/certs/ca.crt" ] && break
    sleep 0.1
done
cat "$TMP"/n{1,2,3}/certs/ca.crt >"$TMP/ca.crt"
changes_before=0
for i in 1 2 3; do changes_before=$((changes_before + $(metric $i etcd_server_leader_changes_seen_total | cut -d. -f1))); done

nft -f - <<EOF
table inet qed_loss {
    chain out {
        type filter hook output priority 0;
        udp dport { ${PEERS[0]}, ${PEERS[1]}, ${PEERS[2]} } numgen random mod 100 < $LOSS drop
    }
}
EOF

"$BIN/examples/bench" put --target native \
    --endpoints "https://127.0.0.1:12379,https://127.0.0.1:22379,https://127.0.0.1:32379" \
    --cacert "$TMP/ca.crt" --clients 16 --duration "$SECS" >"$TMP/bench.out" 2>"$TMP/bench.err" &
BENCH_PID=$!
PIDS+=($BENCH_PID)

# Sample every member's has_leader every 100 ms while the load runs.
declare -A gap_start
gaps=0; longest=0; total=0
now_ms() { date +%s%3N; }
while kill -0 $BENCH_PID 2>/dev/null; do
    t=$(now_ms)
    for i in 1 2 3; do
        if [ "$(has_leader $i)" = 1 ]; then
            if [ -n "${gap_start[$i]:-}" ]; then
                d=$((t - gap_start[$i])); gaps=$((gaps + 1)); total=$((total + d))
                [ $d -gt $longest ] && longest=$d
                unset "gap_start[$i]"
            fi
        elif [ -z "${gap_start[$i]:-}" ]; then
            gap_start[$i]=$t
        fi
    done
    sleep 0.1
done
wait $BENCH_PID || true
changes_after=0
for i in 1 2 3; do changes_after=$((changes_after + $(metric $i etcd_server_leader_changes_seen_total | cut -d. -f1))); done
nft delete table inet qed_loss

echo "peer loss ${LOSS}%, ${SECS} s, 16 clients (native SDK, all endpoints):"
echo "  bench: $(cat "$TMP/bench.out")"
tr "\r" "\n" <"$TMP/bench.err" | grep "^error" | sort | uniq -c | sed "s/^/  /" || true
echo "  leader changes: $((changes_after - changes_before)); no-leader gaps: $gaps, longest ${longest} ms, total ${total} ms"
for i in 1 2 3; do
    grep -i "lost the leader\|Raft timing" "$TMP/n$i.log" | head -5 | sed "s/^/  n$i: /" || true
done
