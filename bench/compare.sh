#!/usr/bin/env bash
# make bench: qed against etcd 3.4 and 3.5 on this machine, side by side, one run.
#
# etcd 3.5 is the official 3.5.1 binary (make deps-etcd35); without it (no
# network) its columns are left out.
#
# For each server it starts a fresh single node on loopback (fresh data
# directory), then a fresh 3-node cluster (for qed, a fresh one again for
# each column: native, gRPC, a shim per member, so no column runs on the
# history an earlier one left), drives the same workloads with examples/bench (etcd and
# qed-grpc over gRPC, qed natively over QUIC), takes the median of RUNS
# runs of each figure, stops the server by its PID, and finally prints one
# markdown table with the ratio of each qed figure to etcd's. A full run's
# table is written to bench/results/latest.md and a dated copy; a QUICK
# run's to bench/results/quick.md only, so it never replaces a full one.
#
#   make bench            full run (RUNS=3, larger totals)
#   make bench QUICK=1    a sanity check in a few minutes
#
# Every process it starts is stopped by PID on exit, error or Ctrl-C.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
QUICK=${QUICK:-0}
# W1 watchers on one key x P1 puts; W2 watchers over 100 prefixes x P2 puts;
# LEASES leases kept alive (N keepalives).
if [ "$QUICK" = 1 ]; then
    RUNS=${RUNS:-1}; N=${N:-5000}; KEYS=${KEYS:-10000}
    W1=${W1:-200}; P1=${P1:-200}; W2=${W2:-1000}; P2=${P2:-200}; LEASES=${LEASES:-1000}
else
    RUNS=${RUNS:-3}; N=${N:-40000}; KEYS=${KEYS:-100000}
    W1=${W1:-1000}; P1=${P1:-1000}; W2=${W2:-10000}; P2=${P2:-2000}; LEASES=${LEASES:-10000}
fi
BENCH=target/release/examples/bench
TMP=$(mktemp -d /tmp/qed-bench.XXXXXX)
# shellcheck source=bench/lib.sh
. bench/lib.sh
trap cleanup EXIT
trap 'exit 130' INT TERM

# udp_bound PORT: succeeds once something listens on UDP 127.0.0.1:PORT.
udp_bound() { ! python3 -c 'import socket,sys; socket.socket(socket.AF_INET, socket.SOCK_DGRAM).bind(("127.0.0.1", int(sys.argv[1])))' "$1" 2>/dev/null; }


# stop PID: ends one server we started and forgets it.
stop() {
    kill "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
    local keep=()
    for p in "${PIDS[@]}"; do [ "$p" = "$1" ] || keep+=("$p"); done
    PIDS=("${keep[@]}")
}

# poll CMD... until it succeeds, for at most 60 s.
poll() {
    local deadline=$((SECONDS + 60))
    until "$@" >/dev/null 2>&1; do
        [ $SECONDS -lt $deadline ] || { say "timed out waiting for: $*"; return 1; }
        sleep 0.1
    done
}

rss_kb() { ps -o rss= -p "$1" | tr -d ' '; }


# runs BENCH-ARGS...: runs the bench RUNS times, keeping the result lines
# for `med` (a failed run leaves no line and so no figure).
runs() {
    for _ in $(seq "$RUNS"); do
        "$BENCH" "$@" 2>/dev/null || say "    run failed: $*"
    done >"$TMP/runs"
    grep -o 'errors=[1-9][0-9]*' "$TMP/runs" | sed "s|^|    $1: |" >&2 || true
}

# med FIELD: the median of FIELD (a whole field: p99, not read_p99) over the last runs.
med() { { grep -oE "(^| )$1=[0-9.]+" "$TMP/runs" || true; } | cut -d= -f2 | median; }

declare -A R   # R[row,column] = value

# measure COLUMN TARGET-ARGS...: the workloads against one running server.
measure() {
    local col=$1; shift
    say "  [$col] put / range / txn / mixed workloads"
    for c in 16 128; do
        runs put --clients "$c" --total "$N" "$@"
        R["put c=$c (req/s)",$col]=$(med throughput)
        R["put c=$c p99 (ms)",$col]=$(med p99)
        runs range --clients "$c" --total "$N" --key-space 1000 "$@"
        R["range linearizable c=$c (req/s)",$col]=$(med throughput)
    done
    runs range-serializable --clients 128 --total "$N" --key-space 1000 "$@"
    R["range serializable c=128 (req/s)",$col]=$(med throughput)
    runs txn --clients 128 --total "$N" --key-space 1000 "$@"
    R["txn cas c=128 (req/s)",$col]=$(med throughput)
    runs mixed --read-ratio 0.9 --clients 128 --total "$N" --key-space 1000 "$@"
    R["mixed 90% reads c=128 (req/s)",$col]=$(med throughput)
    R["mixed 90% reads c=128 p99 (ms)",$col]=$(med p99)
    say "  [$col] watch fan-out"
    # 4 connections; the SDK puts up to 256 watches on each of its watch
    # streams, gRPC spreads 10 Watch streams over the connections.
    runs watch --watchers "$W1" --total "$P1" --clients 16 --conns 4 --streams 10 "$@"
    R["$WATCH1 (events/s)",$col]=$(med throughput)
    R["$WATCH1 p99 delivery (ms)",$col]=$(med p99)
    runs watch --watchers "$W2" --prefixes 100 --total "$P2" --clients 16 --conns 4 --streams 10 "$@"
    R["$WATCH2 (events/s)",$col]=$(med throughput)
    R["$WATCH2 p99 delivery (ms)",$col]=$(med p99)
    say "  [$col] lease keepalive"
    runs lease-keepalive --leases "$LEASES" --clients 16 --total "$N" "$@"
    R["$LEASE (keepalives/s)",$col]=$(med throughput)
    R["$LEASE p99 (ms)",$col]=$(med p99)
}
WATCH1="watch $W1 watchers x $P1 puts, one key"
WATCH2="watch $W2 watchers over 100 prefixes x $P2 puts"
LEASE="lease keepalive, $LEASES leases, 16 streams"

# load_and_size COLUMN PID DATADIR TARGET-ARGS...: RSS with KEYS keys of 256 B, data size.
load_and_size() {
    local col=$1 pid=$2 dir=$3; shift 3
    say "  [$col] loading $KEYS keys"
    "$BENCH" put --sequential --clients 64 --total "$KEYS" --key-space "$KEYS" "$@" >/dev/null 2>&1
    R["RSS with $KEYS keys (MB)",$col]=$(awk "BEGIN {printf \"%.1f\", $(rss_kb "$pid") / 1024}")
    R["data dir with $KEYS keys (MB)",$col]=$(du -sm "$dir" | cut -f1)
}

say "building release binaries"
cargo build --release --bins --example bench >&2
command -v etcd >/dev/null || make deps-etcd >&2

# ---------------------------------------------------------------- etcd
say "etcd $(etcd --version | head -1 | awk '{print $3}')"
EP=$(free_port); PP=$(free_port)
start_etcd() {
    "${ETCD_BIN:-etcd}" --name bench --data-dir "$TMP/etcd" \
        --listen-client-urls "http://127.0.0.1:$EP" --advertise-client-urls "http://127.0.0.1:$EP" \
        --listen-peer-urls "http://127.0.0.1:$PP" --initial-advertise-peer-urls "http://127.0.0.1:$PP" \
        --initial-cluster "bench=http://127.0.0.1:$PP" >"$TMP/etcd.log" 2>&1 &
    ETCD=$!; PIDS+=("$ETCD")
    poll etcdctl --endpoints "127.0.0.1:$EP" endpoint health
}
start_etcd
sleep 1
R["idle RSS (MB)",etcd]=$(awk "BEGIN {printf \"%.1f\", $(rss_kb "$ETCD") / 1024}")
measure etcd --target grpc --endpoints "http://127.0.0.1:$EP"
stop "$ETCD"; rm -rf "$TMP/etcd"
start_etcd
load_and_size etcd "$ETCD" "$TMP/etcd" --target grpc --endpoints "http://127.0.0.1:$EP"
stop "$ETCD"
t0=$(date +%s.%N); start_etcd; t1=$(date +%s.%N)
R["restart with $KEYS keys (s)",etcd]=$(awk "BEGIN {printf \"%.2f\", $t1 - $t0}")
stop "$ETCD"

# ---------------------------------------------------------------- qed
QP=$(free_port); GP=$(free_port)
start_qed() {
    target/release/qed --data-dir "$TMP/qed" --listen-client-urls "https://127.0.0.1:$QP,unix://$TMP/qed.sock" \
        --log-level warn >"$TMP/qed.log" 2>&1 &
    QED=$!; PIDS+=("$QED")
    poll test -f "$TMP/qed/certs/ca.crt"
    # Wait for the UDP port to be bound before the first QUIC handshake: an
    # Initial sent to a closed port is retried only after QUIC's 1 s probe
    # timeout, which would be measured as restart time.
    poll udp_bound "$QP"
    poll "$BENCH" range --clients 1 --total 1 --key-space 1 --target native --endpoints "https://127.0.0.1:$QP" --cacert "$TMP/qed/certs/ca.crt"
}
start_shim() {
    target/release/qed-grpc --listen-client-urls "http://127.0.0.1:$GP" --endpoints "https://127.0.0.1:$QP" \
        --cacert "$TMP/qed/certs/ca.crt" >"$TMP/grpc.log" 2>&1 &
    SHIM=$!; PIDS+=("$SHIM")
    poll etcdctl --endpoints "127.0.0.1:$GP" endpoint health
}
say "qed $(target/release/qed --version | awk '{print $2}')"
start_qed
sleep 1
R["idle RSS (MB)",qed-native]=$(awk "BEGIN {printf \"%.1f\", $(rss_kb "$QED") / 1024}")
NATIVE=(--target native --endpoints "https://127.0.0.1:$QP" --cacert "$TMP/qed/certs/ca.crt")
measure qed-native "${NATIVE[@]}"
# Each column starts from a fresh node, as etcd's did: the gRPC column
# must not pay for the history the native column left behind.
stop "$QED"; rm -rf "$TMP/qed"
start_qed
start_shim
# Node idle (measured before any load) plus the shim as it starts.
R["idle RSS (MB)",qed-grpc]=$(awk "BEGIN {printf \"%.1f\", ${R["idle RSS (MB)",qed-native]} + $(rss_kb "$SHIM") / 1024}")
measure qed-grpc --target grpc --endpoints "http://127.0.0.1:$GP"
stop "$SHIM"
# The edge deployment: the shim beside its node, on the node's Unix socket
# (a fresh node again).
stop "$QED"; rm -rf "$TMP/qed"
start_qed
say "  [qed-grpc] a shim on the node's Unix socket"
UP=$(free_port)
target/release/qed-grpc --listen-client-urls "http://127.0.0.1:$UP" --endpoints "unix://$TMP/qed.sock" >"$TMP/grpc-unix.log" 2>&1 &
SHIM=$!; PIDS+=("$SHIM")
poll etcdctl --endpoints "127.0.0.1:$UP" endpoint health
for c in 16 128; do
    runs put --clients "$c" --total "$N" --target grpc --endpoints "http://127.0.0.1:$UP"
    R["put c=$c, the shim on the node's Unix socket (req/s)",qed-grpc]=$(med throughput)
done
stop "$SHIM"; stop "$QED"; rm -rf "$TMP/qed"
start_qed
load_and_size qed-native "$QED" "$TMP/qed" "${NATIVE[@]}"
stop "$QED"
t0=$(date +%s.%N); start_qed; t1=$(date +%s.%N)
R["restart with $KEYS keys (s)",qed-native]=$(awk "BEGIN {printf \"%.2f\", $t1 - $t0}")
stop "$QED"

# ---------------------------------------------------------------- memory and disk (issue 14)
# Each server filled with N keys of 16 B and values of 256 B (sequential
# puts, 64 clients), fresh data directory; 5 s later its RSS and high-water
# mark (VmRSS, VmHWM from /proc) and the data directory's size; then it is
# stopped (SIGTERM), restarted on the same directory, and 5 s after it
# answers its RSS again. At KEYS keys and at MEM_KEYS_BIG (1M; 0 skips, the
# default in a QUICK run).
if [ "$QUICK" = 1 ]; then MEM_KEYS_BIG=${MEM_KEYS_BIG:-0}; else MEM_KEYS_BIG=${MEM_KEYS_BIG:-1000000}; fi
MEM_ROWS=()
vm_mb() { awk -v f="$2:" '$1 == f {printf "%.1f", $2 / 1024}' "/proc/$1/status"; }
# memory_and_disk COLUMN KEYS START-FN PID-VAR DATADIR TARGET-ARGS...
memory_and_disk() {
    local col=$1 keys=$2 start=$3 pidvar=$4 dir=$5; shift 5
    say "  [$col] memory and disk with $keys keys"
    rm -rf "$dir"; "$start"; local pid=${!pidvar}
    "$BENCH" put --sequential --clients 64 --total "$keys" --key-space "$keys" --key-size 16 --val-size 256 "$@" >/dev/null 2>&1 ||
        say "    fill failed: $col, $keys keys"
    sleep 5
    R["RSS after fill, $keys keys (MB)",$col]=$(vm_mb "$pid" VmRSS)
    R["RSS high-water mark, $keys keys (MB)",$col]=$(vm_mb "$pid" VmHWM)
    R["data dir, $keys keys (MB)",$col]=$(du -sm "$dir" | cut -f1)
    stop "$pid"
    "$start"; pid=${!pidvar}
    sleep 5
    R["RSS after restart, $keys keys (MB)",$col]=$(vm_mb "$pid" VmRSS)
    stop "$pid"; rm -rf "$dir"
}
for keys in "$KEYS" "$MEM_KEYS_BIG"; do
    [ "$keys" -gt 0 ] || continue
    raw=$(awk "BEGIN {printf \"%.1f\", $keys * 272 / 1048576}")
    R["raw data: keys + values, $keys keys (MB)",etcd]=$raw
    R["raw data: keys + values, $keys keys (MB)",qed-native]=$raw
    MEM_ROWS+=("raw data: keys + values, $keys keys (MB)" "RSS after fill, $keys keys (MB)" "RSS high-water mark, $keys keys (MB)"
        "RSS after restart, $keys keys (MB)" "data dir, $keys keys (MB)")
    memory_and_disk etcd "$keys" start_etcd ETCD "$TMP/etcd" --target grpc --endpoints "http://127.0.0.1:$EP"
    memory_and_disk qed-native "$keys" start_qed QED "$TMP/qed" "${NATIVE[@]}"
done
# ---------------------------------------------------------------- end of memory and disk

# ---------------------------------------------------------------- auth on
# The same put and range figures with auth enabled, as a non-root user whose
# role may read and write the bench's keys (digits: the range ["0", ":")),
# so every call pays for token lookup and a permission check.
AUTH_ROWS=("auth on: put c=16 (req/s)" "auth on: range linearizable c=128 (req/s)")
AUTH_USER=(--user bench:benchpw)
enable_auth() {
    local e=(etcdctl --endpoints "$1")
    # root gets the root role explicitly: etcd 3.5 refuses `auth enable` otherwise.
    { "${e[@]}" user add root --new-user-password=rootpw && "${e[@]}" user grant-role root root &&
        "${e[@]}" user add bench --new-user-password=benchpw &&
        "${e[@]}" role add bench && "${e[@]}" role grant-permission bench readwrite 0 : &&
        "${e[@]}" user grant-role bench bench && "${e[@]}" auth enable; } >/dev/null
}
measure_auth() {
    local col=$1; shift
    say "  [$col] auth on: put / range"
    runs put --clients 16 --total "$N" "${AUTH_USER[@]}" "$@"
    R["auth on: put c=16 (req/s)",$col]=$(med throughput)
    runs range --clients 128 --total "$N" --key-space 1000 "${AUTH_USER[@]}" "$@"
    R["auth on: range linearizable c=128 (req/s)",$col]=$(med throughput)
}
say "etcd, auth on"
rm -rf "$TMP/etcd"; start_etcd
enable_auth "127.0.0.1:$EP"
measure_auth etcd --target grpc --endpoints "http://127.0.0.1:$EP"
stop "$ETCD"
say "qed, auth on"
rm -rf "$TMP/qed"; start_qed; start_shim
enable_auth "127.0.0.1:$GP"
measure_auth qed-native "${NATIVE[@]}"
measure_auth qed-grpc --target grpc --endpoints "http://127.0.0.1:$GP"
stop "$SHIM"; stop "$QED"

# ---------------------------------------------------------------- 3 nodes
# Three members on loopback, for each server; the clients spread over all
# three members (as etcd's own benchmark does with --endpoints), so writes
# reaching a follower are forwarded to the leader.
CLUSTER_ROWS=("3 nodes: put c=16 (req/s)" "3 nodes: put c=128 (req/s)" "3 nodes: put c=128 p99 (ms)"
    "3 nodes: range linearizable c=128 (req/s)" "3 nodes: range serializable c=128 (req/s)")
measure_cluster() {
    local col=$1; shift
    say "  [$col] 3 nodes: put / range"
    runs put --clients 16 --total "$N" "$@"
    R["3 nodes: put c=16 (req/s)",$col]=$(med throughput)
    runs put --clients 128 --total "$N" "$@"
    R["3 nodes: put c=128 (req/s)",$col]=$(med throughput)
    R["3 nodes: put c=128 p99 (ms)",$col]=$(med p99)
    runs range --clients 128 --total "$N" --key-space 1000 "$@"
    R["3 nodes: range linearizable c=128 (req/s)",$col]=$(med throughput)
    runs range-serializable --clients 128 --total "$N" --key-space 1000 "$@"
    R["3 nodes: range serializable c=128 (req/s)",$col]=$(med throughput)
}
CLUSTER_PIDS=()
stop_cluster() {
    for pid in "${CLUSTER_PIDS[@]}"; do stop "$pid"; done
    CLUSTER_PIDS=()
}
declare -a CP PP3
for i in 1 2 3; do CP[$i]=$(free_port); PP3[$i]=$(free_port); done
INITIAL=$(for i in 1 2 3; do printf 'm%s=http://127.0.0.1:%s,' "$i" "${PP3[$i]}"; done); INITIAL=${INITIAL%,}
say "etcd, 3 nodes"
ETCD3=""
for i in 1 2 3; do
    etcd --name "m$i" --data-dir "$TMP/etcd3-$i" \
        --listen-client-urls "http://127.0.0.1:${CP[$i]}" --advertise-client-urls "http://127.0.0.1:${CP[$i]}" \
        --listen-peer-urls "http://127.0.0.1:${PP3[$i]}" --initial-advertise-peer-urls "http://127.0.0.1:${PP3[$i]}" \
        --initial-cluster "$INITIAL" --initial-cluster-token bench3 --initial-cluster-state new \
        >"$TMP/etcd3-$i.log" 2>&1 &
    PIDS+=($!); CLUSTER_PIDS+=($!)
    ETCD3+="http://127.0.0.1:${CP[$i]},"
done
ETCD3=${ETCD3%,}
poll etcdctl --endpoints "$ETCD3" endpoint health
measure_cluster etcd --target grpc --endpoints "$ETCD3"
stop_cluster

say "qed, 3 nodes"
# start_qed3: a fresh 3-member cluster (each column of the table starts
# from one, as etcd's does); sets QED3 and NATIVE3.
start_qed3() {
    QED3=""
    for i in 1 2 3; do
        rm -rf "$TMP/qed3-$i"
        target/release/qed --name "m$i" --data-dir "$TMP/qed3-$i" --log-level warn \
            --listen-client-urls "https://127.0.0.1:${CP[$i]},unix://$TMP/qed3-$i.sock" \
            --listen-peer-urls "http://127.0.0.1:${PP3[$i]}" --initial-advertise-peer-urls "http://127.0.0.1:${PP3[$i]}" \
            --initial-cluster "$INITIAL" --initial-cluster-token bench3 >"$TMP/qed3-$i.log" 2>&1 &
        PIDS+=($!); CLUSTER_PIDS+=($!)
        QED3+="https://127.0.0.1:${CP[$i]},"
    done
    QED3=${QED3%,}
    for i in 1 2 3; do poll test -f "$TMP/qed3-$i/certs/ca.crt"; done
    # Each member generated its own CA: clients trust all three.
    cat "$TMP"/qed3-{1,2,3}/certs/ca.crt >"$TMP/qed3-ca.crt"
    NATIVE3=(--target native --endpoints "$QED3" --cacert "$TMP/qed3-ca.crt")
    poll "$BENCH" range --clients 1 --total 1 --key-space 1 "${NATIVE3[@]}"
}
start_qed3
measure_cluster qed-native "${NATIVE3[@]}"
stop_cluster
start_qed3
target/release/qed-grpc --listen-client-urls "http://127.0.0.1:$GP" --endpoints "$QED3" \
    --cacert "$TMP/qed3-ca.crt" >"$TMP/grpc3.log" 2>&1 &
SHIM=$!; PIDS+=("$SHIM")
poll etcdctl --endpoints "127.0.0.1:$GP" endpoint health
measure_cluster qed-grpc --target grpc --endpoints "http://127.0.0.1:$GP"
stop "$SHIM"
stop_cluster
start_qed3
# The edge deployment: a shim beside each member, on its Unix socket; the
# clients spread over the three shims (as etcd's over its three members).
SHIMS3=""; SHIM_PIDS=()
for i in 1 2 3; do
    port=$(free_port)
    target/release/qed-grpc --listen-client-urls "http://127.0.0.1:$port" \
        --endpoints "unix://$TMP/qed3-$i.sock" >"$TMP/grpc3-$i.log" 2>&1 &
    PIDS+=($!); SHIM_PIDS+=($!)
    poll etcdctl --endpoints "127.0.0.1:$port" endpoint health
    SHIMS3+="http://127.0.0.1:$port,"
done
say "  [qed-grpc] 3 nodes, a shim per member (Unix socket)"
for c in 16 128; do
    runs put --clients "$c" --total "$N" --target grpc --endpoints "${SHIMS3%,}"
    R["3 nodes: put c=$c, a shim per member (req/s)",qed-grpc]=$(med throughput)
done
for pid in "${SHIM_PIDS[@]}"; do stop "$pid"; done
stop_cluster

strip_size() { cp "$1" "$TMP/s" && strip "$TMP/s" 2>/dev/null; awk "BEGIN {printf \"%.1f\", $(stat -c %s "$TMP/s") / 1e6}"; }

# ---------------------------------------------------------------- etcd 3.5
# The same throughput workloads (single node, auth on, 3 nodes) against the
# official etcd 3.5.1, driven and measured as 3.4 is.
ETCD35=${ETCD35:-.deps/etcd-3.5.1/etcd}
[ -x "$ETCD35" ] || make deps-etcd35 >&2 || true
HAVE35=0
if [ -x "$ETCD35" ]; then
    HAVE35=1
    say "etcd $("$ETCD35" --version | head -1 | awk '{print $3}')"
    rm -rf "$TMP/etcd"; ETCD_BIN=$ETCD35 start_etcd
    measure etcd35 --target grpc --endpoints "http://127.0.0.1:$EP"
    stop "$ETCD"; rm -rf "$TMP/etcd"
    say "etcd 3.5, auth on"
    ETCD_BIN=$ETCD35 start_etcd
    enable_auth "127.0.0.1:$EP"
    measure_auth etcd35 --target grpc --endpoints "http://127.0.0.1:$EP"
    stop "$ETCD"; rm -rf "$TMP/etcd"
    say "etcd 3.5, 3 nodes"
    for i in 1 2 3; do
        "$ETCD35" --name "m$i" --data-dir "$TMP/etcd35-3-$i" \
            --listen-client-urls "http://127.0.0.1:${CP[$i]}" --advertise-client-urls "http://127.0.0.1:${CP[$i]}" \
            --listen-peer-urls "http://127.0.0.1:${PP3[$i]}" --initial-advertise-peer-urls "http://127.0.0.1:${PP3[$i]}" \
            --initial-cluster "$INITIAL" --initial-cluster-token bench35 --initial-cluster-state new \
            >"$TMP/etcd35-3-$i.log" 2>&1 &
        PIDS+=($!); CLUSTER_PIDS+=($!)
    done
    poll etcdctl --endpoints "$ETCD3" endpoint health
    measure_cluster etcd35 --target grpc --endpoints "$ETCD3"
    stop_cluster
    R["binary, stripped (MB)",etcd35]=$(strip_size "$ETCD35")
fi
# etcd's own put figures stand beside the shim on the Unix socket (etcd
# has no shim), and its 3-node put figures (its clients spread over its
# members) beside a shim per member.
for c in 16 128; do
    for col in etcd etcd35; do
        R["put c=$c, the shim on the node's Unix socket (req/s)",$col]=${R["put c=$c (req/s)",$col]:-n/a}
    done
done
for c in 16 128; do
    for col in etcd etcd35; do
        R["3 nodes: put c=$c, a shim per member (req/s)",$col]=${R["3 nodes: put c=$c (req/s)",$col]:-n/a}
    done
done
CLUSTER_ROWS+=("3 nodes: put c=16, a shim per member (req/s)" "3 nodes: put c=128, a shim per member (req/s)")
R["binary, stripped (MB)",etcd]=$(strip_size "$(command -v etcd)")
R["binary, stripped (MB)",qed-native]=$(strip_size target/release/qed)
R["binary, stripped (MB)",qed-grpc]=$(strip_size target/release/qed-grpc)

# ---------------------------------------------------------------- table
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a+0 > 0 && b+0 > 0) printf "%.2f", a / b; else print "n/a" }'; }
ROWS=("put c=16 (req/s)" "put c=128 (req/s)" "put c=16 p99 (ms)" "put c=128 p99 (ms)"
    "put c=16, the shim on the node's Unix socket (req/s)" "put c=128, the shim on the node's Unix socket (req/s)"
    "range linearizable c=16 (req/s)" "range linearizable c=128 (req/s)" "range serializable c=128 (req/s)"
    "txn cas c=128 (req/s)" "mixed 90% reads c=128 (req/s)" "mixed 90% reads c=128 p99 (ms)"
    "$WATCH1 (events/s)" "$WATCH1 p99 delivery (ms)" "$WATCH2 (events/s)" "$WATCH2 p99 delivery (ms)"
    "$LEASE (keepalives/s)" "$LEASE p99 (ms)" "idle RSS (MB)" "RSS with $KEYS keys (MB)" "data dir with $KEYS keys (MB)"
    "restart with $KEYS keys (s)" "binary, stripped (MB)" "${MEM_ROWS[@]}" "${AUTH_ROWS[@]}" "${CLUSTER_ROWS[@]}")
{
    v35=; [ "$HAVE35" = 1 ] && v35=" and $("$ETCD35" --version | head -1 | awk '{print $3}')"
    echo "# qed vs etcd $(etcd --version | head -1 | awk '{print $3}')$v35, single node and 3 nodes on loopback"
    echo
    echo "$(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, RUNS=$RUNS (median), N=$N requests per figure, qed $(git rev-parse --short HEAD)."
    echo "Ratios are qed / etcd: above 1 is better for throughput, below 1 is better for latency, memory, size and time."
    echo
    if [ "$HAVE35" = 1 ]; then
        echo "| figure | etcd 3.4 | etcd 3.5 | qed native | qed via gRPC | native / 3.4 | gRPC / 3.4 | native / 3.5 | gRPC / 3.5 |"
        echo "|---|---|---|---|---|---|---|---|---|"
    else
        echo "| figure | etcd | qed native | qed via gRPC | native / etcd | gRPC / etcd |"
        echo "|---|---|---|---|---|---|"
    fi
    for row in "${ROWS[@]}"; do
        e=${R["$row",etcd]:-n/a}; n=${R["$row",qed-native]:-n/a}; g=${R["$row",qed-grpc]:-n/a}
        if [ "$HAVE35" = 1 ]; then
            f=${R["$row",etcd35]:-n/a}
            echo "| $row | $e | $f | $n | $g | $(ratio "$n" "$e") | $(ratio "$g" "$e") | $(ratio "$n" "$f") | $(ratio "$g" "$f") |"
        else
            echo "| $row | $e | $n | $g | $(ratio "$n" "$e") | $(ratio "$g" "$e") |"
        fi
    done
    echo
    echo "Auth cost: the share of the auth-off throughput each server keeps with auth on (a non-root user with a range permission)."
    echo
    cols=(etcd qed-native qed-grpc)
    if [ "$HAVE35" = 1 ]; then
        cols=(etcd etcd35 qed-native qed-grpc)
        echo "| figure | etcd 3.4 | etcd 3.5 | qed native | qed via gRPC |"
        echo "|---|---|---|---|---|"
    else
        echo "| figure | etcd | qed native | qed via gRPC |"
        echo "|---|---|---|---|"
    fi
    for pair in "put c=16 (req/s)|auth on: put c=16 (req/s)" "range linearizable c=128 (req/s)|auth on: range linearizable c=128 (req/s)"; do
        off=${pair%%|*}; on=${pair#*|}
        line="| $on / $off"
        for col in "${cols[@]}"; do line+=" | $(ratio "${R["$on",$col]:-0}" "${R["$off",$col]:-0}")"; done
        echo "$line |"
    done
    echo
    echo "Watch: events/s from the first put until every watcher has every event; delivery = put sent to event received."
    echo "Lease: keepalives one at a time per stream, round-robin over the leases."
    echo "3 nodes: the clients spread over the three members (etcd: gRPC connections round-robin; qed native: the SDK's round-robin; qed-grpc: one shim in front of all three)."
    echo "A shim per member: each member's own qed-grpc on its Unix socket, the clients spread over the three shims; etcd's figure is its 3-node put (clients spread over its members)."
    echo "The shim on the node's Unix socket: single node, qed-grpc beside it on unix:// (the rest of the qed-grpc column reaches the node over QUIC); etcd's figure is its own put."
} >"$TMP/table.md"
mkdir -p bench/results
if [ "$QUICK" = 1 ]; then
    cp "$TMP/table.md" bench/results/quick.md
else
    cp "$TMP/table.md" bench/results/latest.md
    cp "$TMP/table.md" "bench/results/$(date -u +%Y-%m-%d-%H%M).md"
fi
cat "$TMP/table.md"
