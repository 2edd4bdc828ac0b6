#!/usr/bin/env bash
# make bench-edge: qed and etcd 3.4 on bad links, side by side, one run.
#
# Three scenarios, each a set of cells; every cell starts a fresh 3-member
# cluster on loopback (qed: a qed-grpc per member; etcd: its own gRPC), waits
# until every member has a leader, then runs examples/bench `put` over gRPC
# (CLIENTS clients spread over the three members' gRPC endpoints) for
# DURATION seconds while a poller reads each member's metrics
# (etcd_server_has_leader, etcd_server_leader_changes_seen_total; qed serves
# them on --listen-metrics-urls, etcd on its client URL) every 100 ms:
#
#   loss  nftables drops LOSSES % of peer packets (both directions, UDP and
#         TCP on the members' peer ports) at random; clients are clean.
#   disk  strace delays every fdatasync of the leader by DISK_DELAYS.
#   wan   peers talk through bench's link emulator (target/release/qed-link:
#         UDP for qed's QUIC, TCP for etcd) at RTTS ms round trip (± 10 %
#         jitter each way) and WAN_LOSSES % loss each way. etcd's TCP sees a
#         lost segment as a retransmission delay (tail-loss probe, 2 x RTT),
#         not as a congestion-window cut: if anything this flatters etcd.
#
# The table (put/s, share of the scenario's lossless cell, p99, client
# errors, leader changes, seconds members spent without a leader) goes to
# bench/results/edge.md; QUICK=1 (DURATION=5) writes bench/results/edge-quick.md
# so a sanity check never replaces a full run.
#
#   make bench-edge                       every cell, 60 s each (~35 min)
#   make bench-edge QUICK=1               every cell, 5 s each
#   make bench-edge SCENARIOS="wan" DURATION=30 RTTS=200 SERVERS=qed
#
# A/B runs: SERVERS may also name `qed-NAME` variants, whose qed and
# qed-grpc binaries come from the directory in QED_DIR_NAME (say a copy of
# main's release binaries: SERVERS="qed qed-main" QED_DIR_main=DIR), so old
# and new alternate cell by cell in the same run; BUILD=0 skips the build.
#
# The loss cells need root (a private network namespace and nftables, so the
# drop rules touch nothing else on the machine): without root they are
# skipped with a note, and the rest runs on the host's loopback. Run as
# root, the whole bench runs in its own network namespace (unshare --net).
# Every process it starts is stopped by PID on exit, error or Ctrl-C.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
QUICK=${QUICK:-0}
if [ "$QUICK" = 1 ]; then DURATION=${DURATION:-5}; else DURATION=${DURATION:-60}; fi
CLIENTS=${CLIENTS:-16}
SCENARIOS=${SCENARIOS:-loss disk wan}
SERVERS=${SERVERS:-etcd qed}
LOSSES=${LOSSES:-0 5 10 20 30}
DISK_DELAYS=${DISK_DELAYS:-100ms 500ms}
RTTS=${RTTS:-50 200}
WAN_LOSSES=${WAN_LOSSES:-0 5 10}
SEED=${SEED:-1}
# Extra server flags (e.g. QED_FLAGS="--heartbeat-interval auto").
QED_FLAGS=${QED_FLAGS:-}
ETCD_FLAGS=${ETCD_FLAGS:-}
if [ "$QUICK" = 1 ]; then OUT=${OUT:-bench/results/edge-quick.md}; else OUT=${OUT:-bench/results/edge.md}; fi
BENCH=${BENCH:-target/release/examples/bench}
LINK=target/release/qed-link

say() { printf '%s\n' "$*" >&2; }

if [ -z "${EDGE_IN_NETNS:-}" ]; then
    if [ "${BUILD:-1}" != 0 ]; then
        say "building release binaries"
        cargo build --release --bins --example bench >&2
    fi
    command -v etcd >/dev/null || make deps-etcd >&2
    if [ "$(id -u)" = 0 ]; then
        command -v nft >/dev/null || make deps-edge >&2
        # A private network namespace: our nftables rules and ports touch
        # nothing else; it disappears when the last process in it exits.
        if unshare --net true 2>/dev/null; then
            EDGE_IN_NETNS=1 exec unshare --net "$ROOT/bench/edge.sh" "$@"
        fi
        say "bench-edge: cannot make a network namespace (unshare --net); loss cells skipped"
        EDGE_NO_LOSS=1
    else
        say "bench-edge: not root: the loss cells (network namespace + nftables) are skipped; run as root for them"
        EDGE_NO_LOSS=1
    fi
else
    # An Ethernet MTU: loopback's 64 KiB would let one TCP segment carry
    # what takes 45 packets on a real link, so a per-packet loss rate would
    # spare etcd's TCP (QUIC keeps its packets under 1452 bytes anyway).
    ip link set lo mtu 1500 up
fi
EDGE_NO_LOSS=${EDGE_NO_LOSS:-}

TMP=$(mktemp -d /tmp/qed-edge.XXXXXX)
PIDS=()
NFT_TABLE=""

cleanup() {
    for pid in "${PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    [ -z "$NFT_TABLE" ] || nft delete table inet "$NFT_TABLE" 2>/dev/null || true
    if [ -n "${KEEP:-}" ]; then say "logs of failed cells kept in $TMP"; else rm -rf "$TMP"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# stop PID...: ends processes we started and forgets them.
stop() {
    local pid p keep
    for pid in "$@"; do
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
        keep=()
        for p in "${PIDS[@]}"; do [ "$p" = "$pid" ] || keep+=("$p"); done
        PIDS=("${keep[@]}")
    done
}

# poll SECONDS CMD...: until CMD succeeds, for at most SECONDS.
poll() {
    local deadline=$((SECONDS + $1)); shift
    until "$@" >/dev/null 2>&1; do
        [ $SECONDS -lt $deadline ] || { say "    timed out waiting for: $*"; return 1; }
        sleep 0.2
    done
}

# metric URL NAME: the value of one unlabelled metric.
metric() { curl -fsS -m 1 "$1" 2>/dev/null | awk -v n="$2" '$1 == n && !found { print $2; found = 1 }'; }
has_leader() { [ "$(metric "$1" etcd_server_has_leader)" = 1 ]; }
all_have_leader() { local u; for u in "${METRICS[@]}"; do has_leader "$u" || return 1; done; }

# The leader poller: polls every member's metrics every 100 ms until
# SIGTERM, then prints "changes=N leaderless=S": the most leader changes one
# member saw, and the seconds without a leader summed over members.
cat >"$TMP/poll.py" <<'EOF'
import signal, sys, time, urllib.request
urls = sys.argv[1:]
first, last, leaderless, prev = {}, {}, {u: 0.0 for u in urls}, {}
stop = False
def done(*_):
    global stop
    stop = True
signal.signal(signal.SIGTERM, done)
def scrape(u):
    has, changes = None, None
    with urllib.request.urlopen(u, timeout=0.5) as r:
        for line in r.read().decode(errors="replace").splitlines():
            f = line.split()
            if len(f) == 2 and f[0] == "etcd_server_has_leader":
                has = float(f[1])
            elif len(f) == 2 and f[0] == "etcd_server_leader_changes_seen_total":
                changes = float(f[1])
    return has, changes
while not stop:
    for u in urls:
        now = time.monotonic()
        try:
            has, changes = scrape(u)
        except Exception:
            continue  # a member too busy to answer: no observation
        if changes is not None:
            first.setdefault(u, changes)
            last[u] = changes
        if u in prev and prev[u][1] == 0:
            leaderless[u] += now - prev[u][0]
        if has is not None:
            prev[u] = (now, has)
    time.sleep(0.1)
changes = max([last[u] - first[u] for u in last] or [0])
print("changes=%d leaderless=%.1f" % (changes, sum(leaderless.values())))
EOF

# ---------------------------------------------------------------- clusters
# qed_dir SERVER: where a qed variant's binaries are (see QED_DIR_NAME).
qed_dir() {
    local var
    case $1 in
    qed-*)
        var=QED_DIR_${1#qed-}
        [ -n "${!var:-}" ] || { say "SERVERS names $1: set $var to its binaries' directory"; exit 2; }
        echo "${!var}"
        ;;
    *) echo target/release ;;
    esac
}

# start_members SERVER CELL: three fresh members. Peers listen on PEER[i];
# with RELAYED=1 they are advertised (and so dialled) at RELAY[i], the link
# emulator's ports, else at PEER[i]. Sets MEMBER_PIDS, METRICS, ENDPOINTS.
RELAYED=0
start_members() {
    local server=$1 cell=$2 i adv initial=""
    PEER=(); RELAY=(); CLIENT=(); GRPC=(); MPORT=(); MEMBER_PIDS=(); METRICS=()
    for i in 0 1 2; do
        PEER[i]=$(free_port); CLIENT[i]=$(free_port); GRPC[i]=$(free_port); MPORT[i]=$(free_port)
        RELAY[i]=$(free_port)
        if [ "$RELAYED" = 1 ]; then adv=${RELAY[i]}; else adv=${PEER[i]}; fi
        initial+="m$i=http://127.0.0.1:$adv,"
    done
    initial=${initial%,}
    CELL_DIR="$TMP/$cell-$server"
    rm -rf "$CELL_DIR"; mkdir -p "$CELL_DIR"
    ENDPOINTS=""
    for i in 0 1 2; do
        if [ "$RELAYED" = 1 ]; then adv=${RELAY[i]}; else adv=${PEER[i]}; fi
        if [ "$server" = etcd ]; then
            # shellcheck disable=SC2086
            etcd --name "m$i" --data-dir "$CELL_DIR/m$i" $ETCD_FLAGS \
                --listen-client-urls "http://127.0.0.1:${CLIENT[i]}" --advertise-client-urls "http://127.0.0.1:${CLIENT[i]}" \
                --listen-peer-urls "http://127.0.0.1:${PEER[i]}" --initial-advertise-peer-urls "http://127.0.0.1:$adv" \
                --initial-cluster "$initial" --initial-cluster-token "edge-$cell" --initial-cluster-state new \
                >"$CELL_DIR/m$i.log" 2>&1 &
            METRICS[i]="http://127.0.0.1:${CLIENT[i]}/metrics"
            ENDPOINTS+="http://127.0.0.1:${CLIENT[i]},"
        else
            # shellcheck disable=SC2086
            "$(qed_dir "$server")/qed" --name "m$i" --data-dir "$CELL_DIR/m$i" --log-level "${QED_LOG_LEVEL:-warn}" $QED_FLAGS \
                --listen-client-urls "https://127.0.0.1:${CLIENT[i]}" \
                --listen-peer-urls "http://127.0.0.1:${PEER[i]}" --initial-advertise-peer-urls "http://127.0.0.1:$adv" \
                --listen-metrics-urls "http://127.0.0.1:${MPORT[i]}" \
                --initial-cluster "$initial" --initial-cluster-token "edge-$cell" >"$CELL_DIR/m$i.log" 2>&1 &
            METRICS[i]="http://127.0.0.1:${MPORT[i]}/metrics"
            ENDPOINTS+="http://127.0.0.1:${GRPC[i]},"
        fi
        MEMBER_PIDS[i]=$!; PIDS+=("$!")
    done
    ENDPOINTS=${ENDPOINTS%,}
}

# wait_ready SERVER: qed's shims started; every member has a leader and
# every gRPC endpoint is healthy.
wait_ready() {
    local i
    if [ "$1" != etcd ]; then
        # A shim per member, trusting that member's generated CA.
        for i in 0 1 2; do
            poll 60 test -f "$CELL_DIR/m$i/certs/ca.crt" || return 1
            "$(qed_dir "$1")/qed-grpc" --listen-client-urls "http://127.0.0.1:${GRPC[i]}" \
                --endpoints "https://127.0.0.1:${CLIENT[i]}" --cacert "$CELL_DIR/m$i/certs/ca.crt" \
                >"$CELL_DIR/grpc$i.log" 2>&1 &
            MEMBER_PIDS+=("$!"); PIDS+=("$!")
        done
    fi
    poll 90 all_have_leader || return 1
    poll 60 etcdctl --endpoints "$ENDPOINTS" endpoint health || return 1
}

# leader_pid: the PID of the member that leads now.
leader_pid() {
    local i
    for i in 0 1 2; do
        if [ "$(metric "${METRICS[i]}" etcd_server_is_leader)" = 1 ]; then
            echo "${MEMBER_PIDS[i]}"; return 0
        fi
    done
    return 1
}

declare -A R # R[cell|server] = "put/s p99 errors changes leaderless"

# measure CELL SERVER: the load and the poller against the running cluster.
measure() {
    local cell=$1 server=$2 poller line
    python3 "$TMP/poll.py" "${METRICS[@]}" >"$TMP/poll.out" 2>/dev/null &
    poller=$!; PIDS+=("$poller")
    "$BENCH" put --target grpc --endpoints "$ENDPOINTS" --clients "$CLIENTS" \
        --duration "$DURATION" --key-space 10000 >"$TMP/bench.out" 2>"$TMP/bench.err" || true
    stop "$poller"
    if [ -n "$NFT_TABLE" ]; then
        # The drop share nftables achieved (peer packets seen, dropped).
        nft list table inet "$NFT_TABLE" | grep -oE 'packets [0-9]+' | awk '{ n[NR] = $2 }
            END { if (n[1] > 0) printf "    nftables dropped %d of %d peer packets (%.1f%%)\n", n[2], n[1], 100 * n[2] / n[1] }' >&2
    fi
    line=$(grep -m1 'throughput=' "$TMP/bench.out" || true)
    if [ -z "$line" ]; then
        say "    no result: $(tail -2 "$TMP/bench.err" | tr '\n' ' ')"
        return
    fi
    local put p99 errors changes leaderless
    put=$(grep -oE 'throughput=[0-9.]+' <<<"$line" | cut -d= -f2)
    p99=$(grep -oE '(^| )p99=[0-9.]+' <<<"$line" | cut -d= -f2)
    errors=$(grep -oE 'errors=[0-9]+' <<<"$line" | cut -d= -f2)
    changes=$(grep -oE 'changes=[0-9]+' "$TMP/poll.out" | cut -d= -f2 || true)
    leaderless=$(grep -oE 'leaderless=[0-9.]+' "$TMP/poll.out" | cut -d= -f2 || true)
    R["$cell|$server"]="$put $p99 $errors ${changes:-n/a} ${leaderless:-n/a}"
    say "    $server: put/s=$put p99=${p99}ms errors=$errors leader changes=${changes:-n/a} leaderless=${leaderless:-n/a}s"
    [ "$errors" = 0 ] || grep -m3 '^error' "$TMP/bench.err" | sed 's/^/      /' >&2 || true
    if [ "$errors" != 0 ] && [ -n "${KEEP:-}" ]; then
        mkdir -p "$TMP/errors-$cell-$server" && cp "$CELL_DIR"/*.log "$TMP/bench.err" "$TMP/errors-$cell-$server/" 2>/dev/null || true
    fi
}

# cell CELL SERVER BEFORE AFTER: fresh members, BEFORE (run once their ports
# are known: the link emulator), the wait for a leader, AFTER (the fault),
# the measurement, teardown. BEFORE/AFTER may start helpers into CELL_PIDS.
CELL_PIDS=()
cell() {
    local cell=$1 server=$2 before=$3 after=$4
    say "  [$cell] $server"
    start_members "$server" "$cell"
    if "$before" "$server" && wait_ready "$server" && "$after" "$server"; then
        measure "$cell" "$server"
    else
        say "    cell failed"
        [ -z "${KEEP:-}" ] || cp -r "$CELL_DIR" "$TMP/failed-$cell-$server" 2>/dev/null || true
    fi
    [ ${#CELL_PIDS[@]} = 0 ] || stop "${CELL_PIDS[@]}"
    CELL_PIDS=()
    stop "${MEMBER_PIDS[@]}"
    MEMBER_PIDS=()
    if [ -n "$NFT_TABLE" ]; then nft delete table inet "$NFT_TABLE" 2>/dev/null || true; NFT_TABLE=""; fi
    rm -rf "$CELL_DIR"
}
nothing() { :; }

# drop_peer_packets: every packet to or from a peer port, UDP or TCP, is
# dropped with the chance LOSS % (once, whichever way it goes).
drop_peer_packets() {
    [ "$LOSS" != 0 ] || return 0
    NFT_TABLE=qededge
    nft -f - <<RULES
table inet $NFT_TABLE {
    set peers { type inet_service; elements = { ${PEER[0]}, ${PEER[1]}, ${PEER[2]} } }
    chain out {
        type filter hook output priority 0; policy accept;
        meta l4proto { tcp, udp } th dport @peers meta mark set 0x2a
        meta l4proto { tcp, udp } th sport @peers meta mark set 0x2a
        meta mark 0x2a counter
        meta mark 0x2a numgen random mod 100 < $LOSS counter drop
    }
}
RULES
}

# slow_leader: strace delays the leader's every fdatasync by DELAY.
slow_leader() {
    local pid tracer
    pid=$(leader_pid) || { say "    no leader found"; return 1; }
    strace -f -qq -p "$pid" -o /dev/null -e trace=fdatasync \
        -e inject=fdatasync:delay_enter="$DELAY" 2>"$TMP/strace.err" &
    tracer=$!; CELL_PIDS+=("$tracer"); PIDS+=("$tracer")
    sleep 1 # attaching to every thread
    kill -0 "$tracer" 2>/dev/null || { say "    strace: $(head -1 "$TMP/strace.err")"; return 1; }
}

# link_up SERVER: the link emulator in front of every member's peer port
# (UDP for qed's QUIC, TCP for etcd), RTT ms round trip, LOSS % each way.
link_up() {
    local proto=udp i relays=() oneway jitter
    [ "$1" != etcd ] || proto=tcp
    for i in 0 1 2; do relays+=("--$proto" "127.0.0.1:${RELAY[i]}=127.0.0.1:${PEER[i]}"); done
    oneway=$(awk -v r="$RTT" 'BEGIN { printf "%gms", r / 2 }')
    jitter=$(awk -v r="$RTT" 'BEGIN { printf "%gms", r / 20 }')
    "$LINK" "${relays[@]}" --seed "$SEED" --stats-every 10 \
        --link "delay=$oneway,jitter=$jitter,loss=$LOSS%" >"$CELL_DIR/link.log" 2>&1 &
    CELL_PIDS+=("$!"); PIDS+=("$!")
}

CELLS=()    # in table order
BASELINE=() # CELLS[i]'s lossless cell
LABEL=()
add_cell() { CELLS+=("$1"); BASELINE+=("$2"); LABEL+=("$3"); }

for scenario in $SCENARIOS; do
    case $scenario in
    loss)
        say "scenario loss: peer packets dropped at random (nftables)"
        for LOSS in $LOSSES; do
            if [ "$LOSS" != 0 ] && [ -n "$EDGE_NO_LOSS" ]; then
                say "  [loss-$LOSS] skipped: needs root"
                continue
            fi
            add_cell "loss-$LOSS" loss-0 "peer loss $LOSS%"
            for server in $SERVERS; do cell "loss-$LOSS" "$server" nothing drop_peer_packets; done
        done
        ;;
    disk)
        say "scenario disk: the leader's fdatasync delayed (strace)"
        for DELAY in $DISK_DELAYS; do
            add_cell "disk-$DELAY" loss-0 "leader fdatasync +$DELAY"
            for server in $SERVERS; do cell "disk-$DELAY" "$server" nothing slow_leader; done
        done
        ;;
    wan)
        say "scenario wan: peers through the link emulator (qed-link)"
        RELAYED=1
        for RTT in $RTTS; do
            for LOSS in $WAN_LOSSES; do
                add_cell "wan-$RTT-$LOSS" "wan-$RTT-0" "RTT $RTT ms, loss $LOSS%"
                for server in $SERVERS; do cell "wan-$RTT-$LOSS" "$server" link_up nothing; done
            done
        done
        RELAYED=0
        ;;
    *)
        say "unknown scenario: $scenario (loss, disk, wan)"
        exit 2
        ;;
    esac
done

# ---------------------------------------------------------------- table
field() {
    local v=${R["$1|$2"]:-}
    if [ -n "$v" ]; then awk -v i="$3" '{ print $i }' <<<"$v"; else echo n/a; fi
}
share() { awk -v a="$1" -v b="$2" 'BEGIN { if (a != "n/a" && b+0 > 0) printf "%.0f%%", 100 * a / b; else print "n/a" }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a+0 > 0 && b+0 > 0) printf "%.2f", a / b; else print "n/a" }'; }
mkdir -p "$(dirname "$OUT")"
{
    echo "# qed vs etcd $(etcd --version | head -1 | awk '{print $3}') on bad links (make bench-edge)"
    echo
    echo "$(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores (load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)), qed $(git rev-parse --short HEAD), one run per cell."
    echo "3 members on loopback; $CLIENTS gRPC clients put for $DURATION s per cell, spread over the three members (qed: a qed-grpc per member)."
    echo "Loss: nftables drops peer packets at random (UDP and TCP, both ways; loopback MTU 1500 as on Ethernet). Disk: strace delays the leader's every fdatasync."
    echo "WAN: peers through qed-link, RTT/2 ± RTT/20 and the loss each way; etcd's TCP pays a lost segment as a 2 x RTT retransmission delay (no congestion-window cut)."
    echo "Share: of the same server's lossless cell (peer loss 0%; for WAN the same RTT at 0%). Leader changes: the most one member saw; s leaderless: seconds without a leader, summed over members."
    if [ -n "$EDGE_NO_LOSS" ]; then echo "Loss cells above 0% skipped: not root (network namespace, nftables)."; fi
    echo
    echo "| cell | server | put/s | share of lossless | p99 (ms) | client errors | leader changes | s leaderless | qed / etcd put/s |"
    echo "|---|---|---|---|---|---|---|---|---|"
    for i in "${!CELLS[@]}"; do
        c=${CELLS[i]}
        for server in $SERVERS; do
            put=$(field "$c" "$server" 1)
            vs=""
            [ "$server" != qed ] || vs=$(ratio "$put" "$(field "$c" etcd 1)")
            echo "| ${LABEL[i]} | $server | $put | $(share "$put" "$(field "${BASELINE[i]}" "$server" 1)") | $(field "$c" "$server" 2) | $(field "$c" "$server" 3) | $(field "$c" "$server" 4) | $(field "$c" "$server" 5) | $vs |"
        done
    done
} >"$OUT"
cat "$OUT"
say "written to $OUT"
