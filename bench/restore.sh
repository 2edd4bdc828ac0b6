#!/usr/bin/env bash
# make bench-restore: how long restoring an etcd v3 snapshot takes, qed
# against etcd's own `etcdctl snapshot restore`, on the same file, in one
# run (issue 15's goal: qed faster at 1M keys).
#
# Fills a fresh etcd 3.4 with KEYS keys (sequential, VAL-byte values)
# through examples/bench, saves a snapshot with etcdctl, stops etcd, then
# restores the file RUNS times with each tool, alternating, into fresh
# directories, and prints the median wall time, CPU time and peak RSS of
# each with the ratio. The table goes to bench/results/restore.md.
#
#   make bench-restore                 1M keys x 256 B, RUNS=3
#   make bench-restore KEYS=100000     a quicker look
#
# SNAPSHOT=path reuses an existing etcd snapshot instead of filling etcd.
# Every process it starts is stopped by PID on exit, error or Ctrl-C.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
KEYS=${KEYS:-1000000}
VAL=${VAL:-256}
RUNS=${RUNS:-3}
BENCH=target/release/examples/bench
QED=target/release/qed
TMP=$(mktemp -d /tmp/qed-restore.XXXXXX)
# shellcheck source=bench/lib.sh
. bench/lib.sh
trap cleanup EXIT
trap 'exit 130' INT TERM

for tool in etcd etcdctl; do
    command -v "$tool" >/dev/null || { say "$tool not found: run 'make deps-etcd' first"; exit 1; }
done

SNAP=${SNAPSHOT:-}
if [ -z "$SNAP" ]; then
    say "filling etcd with $KEYS keys x $VAL B ..."
    port=$(free_port)
    peer=$(free_port)
    etcd --data-dir "$TMP/etcd" --quota-backend-bytes 8589934592 \
        --listen-client-urls "http://127.0.0.1:$port" --advertise-client-urls "http://127.0.0.1:$port" \
        --listen-peer-urls "http://127.0.0.1:$peer" --initial-advertise-peer-urls "http://127.0.0.1:$peer" \
        --initial-cluster "default=http://127.0.0.1:$peer" >"$TMP/etcd.log" 2>&1 &
    PIDS+=($!)
    deadline=$((SECONDS + 60))
    until etcdctl --endpoints "127.0.0.1:$port" endpoint health >/dev/null 2>&1; do
        [ $SECONDS -lt $deadline ] || { say "etcd did not start (log: $TMP/etcd.log)"; exit 1; }
        sleep 0.2
    done
    "$BENCH" put --target grpc --endpoints "http://127.0.0.1:$port" --sequential \
        --total "$KEYS" --key-space "$KEYS" --val-size "$VAL" --clients 64 >"$TMP/fill" 2>/dev/null
    SNAP="$TMP/snap.db"
    etcdctl --endpoints "127.0.0.1:$port" snapshot save "$SNAP" >/dev/null 2>&1
    stop_started
fi
size_mb=$(( $(stat -c %s "$SNAP") / 1000000 ))
say "snapshot: $SNAP ($size_mb MB); $RUNS runs each ..."

# timed NAME CMD...: appends "wall user+sys maxrss_kb" to $TMP/NAME.
timed() {
    local name=$1
    shift
    /usr/bin/time -f '%e %U %S %M' -o "$TMP/time" "$@" >/dev/null 2>&1 || {
        say "  $name failed: $*"
        return 0
    }
    awk '{printf "%s %.2f %s\n", $1, $2 + $3, $4}' "$TMP/time" >>"$TMP/$name"
}

for i in $(seq "$RUNS"); do
    rm -rf "$TMP/q" "$TMP/e"
    timed qed "$QED" snapshot restore "$SNAP" --data-dir "$TMP/q"
    timed etcd etcdctl snapshot restore "$SNAP" --data-dir "$TMP/e"
    say "  run $i: qed $(tail -1 "$TMP/qed" | cut -d' ' -f1) s, etcd $(tail -1 "$TMP/etcd" | cut -d' ' -f1) s"
done
rm -rf "$TMP/q" "$TMP/e"

col() { cut -d' ' -f"$2" "$TMP/$1" | median; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2fx", a / b; else print "n/a" }'; }
qw=$(col qed 1); ew=$(col etcd 1)
qc=$(col qed 2); ec=$(col etcd 2)
qm=$(( $(col qed 3) / 1024 )); em=$(( $(col etcd 3) / 1024 ))
table="| restore of an etcd snapshot ($KEYS keys x $VAL B, $size_mb MB) | etcd 3.4 | qed | qed/etcd |
|---|---|---|---|
| wall time, s (median of $RUNS) | $ew | $qw | $(ratio "$qw" "$ew") |
| CPU time (user+sys), s | $ec | $qc | $(ratio "$qc" "$ec") |
| peak RSS, MB | $em | $qm | $(ratio "$qm" "$em") |"
mkdir -p bench/results
{
    echo "# Restore: qed snapshot restore vs etcdctl snapshot restore"
    echo
    echo "$(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)."
    echo
    echo "$table"
} >bench/results/restore.md
echo "$table"
