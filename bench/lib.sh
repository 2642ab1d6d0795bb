# SPDX-License-Identifier: BSD-3-Clause
# Helpers for the benchmark harness: sourced by bench/run.sh, used by
# the scenario files in bench/scenarios/.  See bench/README.md for the
# interface.  Not a test: ctest runs only bench/run.sh --smoke
# (tests/bench/test-bench-smoke.sh).

# --- logging ----------------------------------------------------------------
bench_log () { echo "bench: $*" >&2; }
bench_die () { echo "bench: error: $*" >&2; exit 1; }

# --- our modules ------------------------------------------------------------
plugin_so () { echo "$BUILD/plugins/$1/nbdkit-$1-plugin.so"; }
filter_so () { echo "$BUILD/filters/$1/nbdkit-$1-filter.so"; }

# --- skipping ---------------------------------------------------------------
# Exit status 3 from a scenario subshell means "skipped"; run.sh turns
# it into a failure under --strict.
BENCH_SKIP_STATUS=3
bench_skip () {
  echo "$*" > "$SCENARIO_STATE/skip-reason"
  exit $BENCH_SKIP_STATUS
}
bench_requires () {
  local c
  for c in "$@"; do
    command -v "$c" >/dev/null 2>&1 || bench_skip "$c is not installed"
  done
}
bench_requires_plugin () {
  [ -f "$(plugin_so "$1")" ] || bench_skip "plugin $1 was not built in $BUILD"
}
bench_requires_filter () {
  [ -f "$(filter_so "$1")" ] || bench_skip "filter $1 was not built in $BUILD"
}

# --- images -----------------------------------------------------------------
# make_random_raw FILE [SIZE]: fully allocated, random content.
make_random_raw () {
  local f=$1 size=${2:-$SIZE}
  rm -f "$f"
  # openssl would be faster, but head on urandom needs nothing extra and
  # runs once per scenario.
  head -c "$size" /dev/urandom > "$f"
  [ "$(stat -c %s "$f")" = "$size" ] || bench_die "could not create $f"
}
# make_compressible_raw FILE [SIZE]: fully allocated, every 4 KiB block
# = 1 KiB random + 3 KiB zeros, so deflate/zstd shrink it about 4x while
# no block is all zeros (random data would not compress: qemu-img -c then
# stores the clusters uncompressed and a "compressed read" measures
# nothing; zero blocks would be skipped as holes).
make_compressible_raw () {
  local f=$1 size=${2:-$SIZE}
  rm -f "$f"
  python3 - "$f" "$size" <<'PYEOF'
import os, sys
path, size = sys.argv[1], int(sys.argv[2])
blk = 4096
with open(path, "wb") as f:
    left = size
    while left > 0:
        n = min(left, 1 << 20)
        out = bytearray(n)
        rnd = os.urandom(n // 4 + 1024)
        for off in range(0, n, blk):
            k = min(1024, n - off)
            out[off:off + k] = rnd[off // 4:off // 4 + k]
        f.write(out)
        left -= n
PYEOF
  [ "$(stat -c %s "$f")" = "$size" ] || bench_die "could not create $f"
}
# make_empty_raw FILE [SIZE]: sparse file of SIZE bytes.
make_empty_raw () {
  local f=$1 size=${2:-$SIZE}
  rm -f "$f"
  truncate -s "$size" "$f"
}

# --- servers ----------------------------------------------------------------
# Declared servers, in declaration order.
_bench_labels=()
declare -A _bench_cmds=()

bench_server () {
  [ $# = 2 ] || bench_die "usage: bench_server LABEL 'COMMAND'"
  case $1 in
    ''|*[!A-Za-z0-9._+-]*) bench_die "bad server label '$1' (use A-Z a-z 0-9 . _ + -)" ;;
  esac
  [ -z "${_bench_cmds[$1]+x}" ] || bench_die "server '$1' declared twice"
  _bench_labels+=("$1")
  _bench_cmds[$1]=$2
}

# Used inside server commands: run the server in the foreground on $SOCK.
serve_nbdkit () { exec nbdkit -f -U "$SOCK" "$@"; }
serve_qemu_nbd () { exec qemu-nbd -t -e 0 -k "$SOCK" "$@"; }

# --- helper daemons (tgtd, Ceph, ...) ---------------------------------------
# bench_daemon NAME CMD...: start CMD in the background (its own process
# group: run.sh enables job control), stdout/stderr to a log file, fds > 2
# closed (a daemon that inherits a pipe would keep the reader of the
# harness output waiting).  Stopped automatically at the end of the
# scenario (after the scenario's cleanup function), last started first:
# SIGTERM to its process group, SIGKILL after 5 s.  Sets BENCH_DAEMON_PID.
_bench_daemons=()
bench_daemon () {
  [ $# -ge 2 ] || bench_die "usage: bench_daemon NAME CMD..."
  local name=$1; shift
  local log=$LOGDIR/daemon-$name.log
  (
    for fd in /proc/self/fd/*; do
      fd=${fd##*/}
      [ "$fd" -gt 2 ] 2>/dev/null && eval "exec $fd>&-" 2>/dev/null
    done
    exec "$@"
  ) </dev/null >"$log" 2>&1 &
  BENCH_DAEMON_PID=$!
  _bench_daemons+=("$BENCH_DAEMON_PID:$name")
  bench_log "$SCENARIO: started $name (pid $BENCH_DAEMON_PID, log $log)"
}
_bench_stop_daemons () {
  local i pid name k
  for (( i=${#_bench_daemons[@]}-1; i>=0; i-- )); do
    pid=${_bench_daemons[$i]%%:*} name=${_bench_daemons[$i]#*:}
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || continue
    for (( k=0; k<100; k++ )); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.05
    done
    kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || :
    wait "$pid" 2>/dev/null || :
  done
  _bench_daemons=()
}

# bench_wait_for SECS CMD...: poll CMD (every 0.1 s) until it succeeds;
# fails after SECS seconds.
bench_wait_for () {
  local secs=$1 i; shift
  for (( i=0; i<secs*10; i++ )); do
    "$@" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  bench_log "timed out after $secs s waiting for: $*"
  return 1
}

# free_port: an unused TCP port on 127.0.0.1.
free_port () {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# --- workloads --------------------------------------------------------------
declare -A _wl_kind=() _wl_unit=() _wl_args=() _wl_desc=()

# bench_workload NAME KIND UNIT [ARGS...]
bench_workload () {
  [ $# -ge 3 ] || bench_die "usage: bench_workload NAME KIND UNIT [ARGS...]"
  local name=$1 kind=$2 unit=$3; shift 3
  case $name in
    ''|*[!A-Za-z0-9_-]*) bench_die "bad workload name '$name'" ;;
  esac
  case $kind in
    fio|fio-once) case $unit in MiB/s|IOPS) ;; *) bench_die "workload $name: unit must be MiB/s or IOPS" ;; esac ;;
    nbdcopy|nbdcopy-in) [ "$unit" = MiB/s ] || bench_die "workload $name: $kind unit must be MiB/s" ;;
    *) bench_die "workload $name: kind must be fio, fio-once, nbdcopy or nbdcopy-in" ;;
  esac
  _wl_kind[$name]=$kind
  _wl_unit[$name]=$unit
  # Stored as a quoted word list, re-split with eval at run time.
  _wl_args[$name]=""
  [ $# = 0 ] || _wl_args[$name]=$(printf '%q ' "$@")
  _wl_desc[$name]=${BENCH_WORKLOAD_DESC:-$kind $*}
}

BENCH_WORKLOAD_DESC="seq read 1 MiB" bench_workload seqread fio MiB/s --rw=read --bs=1M
BENCH_WORKLOAD_DESC="seq write 1 MiB" bench_workload seqwrite fio MiB/s --rw=write --bs=1M
BENCH_WORKLOAD_DESC="rand read 4 KiB" bench_workload randread fio IOPS --rw=randread --bs=4k
BENCH_WORKLOAD_DESC="rand write 4 KiB" bench_workload randwrite fio IOPS --rw=randwrite --bs=4k
BENCH_WORKLOAD_DESC="nbdcopy to null:" bench_workload copy nbdcopy MiB/s
BENCH_WORKLOAD_DESC="allocating seq write 1 MiB, one pass" \
  bench_workload allocseqwrite fio-once MiB/s --rw=write --bs=1M
BENCH_WORKLOAD_DESC="allocating rand write 4 KiB, one pass" \
  bench_workload allocrandwrite fio-once IOPS --rw=randwrite --bs=4k

BENCH_DEFAULT_WORKLOADS="seqread seqwrite randread randwrite copy"

is_alloc_workload () { case $1 in alloc*) return 0 ;; *) return 1 ;; esac; }

# --- results ----------------------------------------------------------------
# bench_median RESULTS_TSV LABEL WORKLOAD: median value (empty if none).
bench_median () {
  python3 - "$1" "$SCENARIO" "$2" "$3" <<'EOF'
import sys, statistics
path, scen, label, wl = sys.argv[1:5]
vals = []
with open(path) as f:
    for line in f:
        p = line.rstrip("\n").split("\t")
        if len(p) >= 6 and p[0] == scen and p[2] == label and p[3] == wl:
            vals.append(float(p[4]))
if vals:
    print("%.6g" % statistics.median(vals))
EOF
}

# --- size parsing -----------------------------------------------------------
# parse_size 512M -> bytes (K, M, G, T are powers of 1024).
parse_size () {
  local s=$1 n mult=1
  case $s in
    *[kK]) mult=1024; n=${s%?} ;;
    *[mM]) mult=$((1024*1024)); n=${s%?} ;;
    *[gG]) mult=$((1024*1024*1024)); n=${s%?} ;;
    *[tT]) mult=$((1024*1024*1024*1024)); n=${s%?} ;;
    *) n=$s ;;
  esac
  case $n in ''|*[!0-9]*) return 1 ;; esac
  echo $(( n * mult ))
}
