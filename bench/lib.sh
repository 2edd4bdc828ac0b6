# Shared by the bench scripts (sourced, not run): the processes a script
# started, stopped by PID on exit; messages; a free port; a median.
#
# A script sets TMP (its scratch directory) and appends every server it
# starts to PIDS; `stop_started` ends them, `cleanup` also removes TMP.

PIDS=()

stop_started() {
    for pid in "${PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    PIDS=()
}

cleanup() {
    stop_started
    rm -rf "$TMP"
}

say() { printf '%s\n' "$*" >&2; }

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# median of the numbers on stdin
median() { sort -g | awk '{a[NR]=$1} END {if (NR==0) print "n/a"; else print a[int((NR+1)/2)]}'; }
