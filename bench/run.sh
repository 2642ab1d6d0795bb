#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# Benchmark harness: serve the same image with several NBD servers, drive
# them with fio (nbd engine) and nbdcopy for several rounds, print medians
# and ratios as Markdown.  See bench/README.md.  Not part of ctest.
set -euo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SRCDIR=$(cd "$BENCH_DIR/.." && pwd)
: "${BUILD:=$SRCDIR/build}"
BUILD=$(realpath -m -- "$BUILD")
export BUILD SRCDIR

# shellcheck source=bench/lib.sh
source "$BENCH_DIR/lib.sh"

usage () {
  cat <<EOF
usage: bench/run.sh [--rounds N] [--size SIZE] [--runtime SECS] [--smoke]
                    [--workloads LIST] [--output FILE] [--results FILE]
                    [--charts DIR] [--dir DIR] [--strict] [--keep] [--list]
                    [SCENARIO...]
Scenarios: $(cd "$BENCH_DIR/scenarios" && ls -- *.sh 2>/dev/null | sed 's/\.sh$//' | tr '\n' ' ')
See bench/README.md.
EOF
}

ROUNDS=3
size_arg=512M
RUNTIME=10
SMOKE=0
strict=0
[ "${CI:-}" = true ] && strict=1
keep=0
output=""
results_out=""
charts=""
wl_filter=""
imgdir=${BENCH_TMPDIR:-}
rounds_set="" size_set="" runtime_set=""
scenarios=()

need_arg () { [ $# -ge 2 ] || { echo "bench/run.sh: $1 needs an argument" >&2; usage >&2; exit 2; }; }
while [ $# -gt 0 ]; do
  case $1 in
    --rounds) need_arg "$@"; ROUNDS=$2; rounds_set=1; shift 2 ;;
    --rounds=*) ROUNDS=${1#*=}; rounds_set=1; shift ;;
    --size) need_arg "$@"; size_arg=$2; size_set=1; shift 2 ;;
    --size=*) size_arg=${1#*=}; size_set=1; shift ;;
    --runtime) need_arg "$@"; RUNTIME=$2; runtime_set=1; shift 2 ;;
    --runtime=*) RUNTIME=${1#*=}; runtime_set=1; shift ;;
    --smoke) SMOKE=1; shift ;;
    --workloads) need_arg "$@"; wl_filter=$2; shift 2 ;;
    --workloads=*) wl_filter=${1#*=}; shift ;;
    --output|-o) need_arg "$@"; output=$2; shift 2 ;;
    --output=*) output=${1#*=}; shift ;;
    --results) need_arg "$@"; results_out=$2; shift 2 ;;
    --results=*) results_out=${1#*=}; shift ;;
    --charts) need_arg "$@"; charts=$2; shift 2 ;;
    --charts=*) charts=${1#*=}; shift ;;
    --dir) need_arg "$@"; imgdir=$2; shift 2 ;;
    --dir=*) imgdir=${1#*=}; shift ;;
    --strict) strict=1; shift ;;
    --keep) keep=1; shift ;;
    --list)
      for f in "$BENCH_DIR"/scenarios/*.sh; do
        [ -e "$f" ] || continue
        # Source it in a subshell (as a run would) to expand the text.
        d=$(SCENARIO=$(basename "$f" .sh) WORKDIR=${TMPDIR:-/tmp} SIZE=$((512*1048576)) \
              RUNTIME=10 ROUNDS=3 SMOKE=0 DESCRIPTION="" &&
            source "$f" >/dev/null 2>&1 && echo "$DESCRIPTION") || d="(does not load)"
        printf '%-12s %s\n' "$(basename "$f" .sh)" "$d"
      done
      exit 0 ;;
    -h|--help) usage; exit 0 ;;
    --) shift; scenarios+=("$@"); break ;;
    -*) echo "bench/run.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
    *) scenarios+=("$1"); shift ;;
  esac
done

if [ "$SMOKE" = 1 ]; then
  # Explicit options still win over the smoke defaults.
  [ -n "$rounds_set" ] || ROUNDS=1
  [ -n "$size_set" ] || size_arg=16M
  [ -n "$runtime_set" ] || RUNTIME=0.3
  strict=1
fi

case $ROUNDS in ''|*[!0-9]*|0) echo "bench/run.sh: bad --rounds '$ROUNDS'" >&2; exit 2 ;; esac
# Seconds, with up to 3 decimals (fio gets milliseconds).
if ! [[ $RUNTIME =~ ^[0-9]+(\.[0-9]{1,3})?$ ]] ||
   ! RUNTIME_MS=$(awk -v r="$RUNTIME" 'BEGIN { ms = int(r * 1000 + 0.5); print ms; exit !(ms > 0) }'); then
  echo "bench/run.sh: bad --runtime '$RUNTIME' (seconds, up to 3 decimals)" >&2; exit 2
fi
SIZE=$(parse_size "$size_arg") || { echo "bench/run.sh: bad --size '$size_arg'" >&2; exit 2; }
[ "$SIZE" -ge 1048576 ] && [ $((SIZE % 1048576)) = 0 ] ||
  { echo "bench/run.sh: --size must be a multiple of 1M" >&2; exit 2; }
export SIZE RUNTIME RUNTIME_MS ROUNDS SMOKE

if [ ${#scenarios[@]} = 0 ]; then
  for f in "$BENCH_DIR"/scenarios/*.sh; do
    [ -e "$f" ] && scenarios+=("$(basename "$f" .sh)")
  done
  [ ${#scenarios[@]} -gt 0 ] || { echo "bench/run.sh: no scenarios in $BENCH_DIR/scenarios" >&2; exit 2; }
fi
for s in "${scenarios[@]}"; do
  [ -f "$BENCH_DIR/scenarios/$s.sh" ] ||
    { echo "bench/run.sh: no scenario '$s' ($BENCH_DIR/scenarios/$s.sh)" >&2; exit 2; }
done

for c in fio nbdcopy nbdinfo python3; do
  command -v "$c" >/dev/null 2>&1 || bench_die "$c is required"
done

# Images on tmpfs by default: the storage is then memory and the numbers
# are the servers' own cost.
if [ -z "$imgdir" ]; then
  if [ "$(stat -f -c %T /dev/shm 2>/dev/null)" = tmpfs ] && [ -w /dev/shm ]; then
    imgdir=/dev/shm
  else
    imgdir=/var/tmp
  fi
fi
[ -d "$imgdir" ] && [ -w "$imgdir" ] || bench_die "image directory $imgdir is not writable"

RUNROOT=$(mktemp -d "$imgdir/kvmbench.XXXXXX")
# Unix socket paths are limited to 108 bytes: keep them short.
SOCKROOT=$(mktemp -d /tmp/kvmb.XXXXXX)
chmod 0755 "$RUNROOT" "$SOCKROOT"
finish () {
  if [ "$keep" = 1 ]; then
    bench_log "kept $RUNROOT and $SOCKROOT"
  else
    rm -rf -- "$RUNROOT" "$SOCKROOT"
  fi
}
trap finish EXIT
trap 'exit 130' INT TERM
RESULTS=$RUNROOT/results.tsv
printf 'scenario\tround\tserver\tworkload\tvalue\tunit\tserver_cpu_s\twork\n' > "$RESULTS"
export RUNROOT SOCKROOT RESULTS

# --- one run: start the server, run the workload, stop the server --------

# Inside a scenario subshell with job control on (set -m), every
# background job is its own process group: stopping a server kills its
# whole group (wrappers included) and nothing else.
_srv_pid=""

_log_tail () { sed 's/^/    | /' "$1" | tail -n 15 >&2; }

_start_server () {   # LABEL LOGFILE -> sets _srv_pid, SOCK
  local label=$1 log=$2 sockdir i
  sockdir=$(mktemp -d "$SOCKROOT/s.XXXXXX")
  SOCK=$sockdir/sock
  ( eval "${_bench_cmds[$label]}" ) </dev/null >"$log" 2>&1 &
  _srv_pid=$!
  for (( i=0; i<${BENCH_START_TIMEOUT:-60}*20; i++ )); do
    if ! kill -0 "$_srv_pid" 2>/dev/null; then
      wait "$_srv_pid" 2>/dev/null || :
      _srv_pid=""
      bench_log "server $label exited during start-up; its output:"
      _log_tail "$log"
      return 1
    fi
    if [ -S "$SOCK" ] && nbdinfo --size "nbd+unix:///?socket=$SOCK" >/dev/null 2>&1; then
      return 0
    fi
    sleep 0.05
  done
  bench_log "server $label did not serve on $SOCK within ${BENCH_START_TIMEOUT:-60} s"
  _log_tail "$log"
  return 1
}

_stop_server () {   # LABEL LOGFILE: fails if the server had died or crashed
  local label=$1 log=$2 pid=$_srv_pid i st=0
  [ -n "$pid" ] || return 0
  _srv_pid=""
  if ! kill -0 "$pid" 2>/dev/null; then
    wait "$pid" 2>/dev/null || st=$?
    bench_log "server $label died during the run (status $st); its output:"
    _log_tail "$log"
    return 1
  fi
  kill -TERM -- "-$pid" 2>/dev/null || :
  for (( i=0; i<200; i++ )); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.05
  done
  if kill -0 "$pid" 2>/dev/null; then
    bench_log "server $label ignored SIGTERM for 10 s; killing it"
    kill -KILL -- "-$pid" 2>/dev/null || :
  fi
  wait "$pid" 2>/dev/null || st=$?
  # 0 or "terminated by SIGTERM" are fine; anything else (sanitizer
  # report, crash on shutdown) is a failure.
  case $st in
    0|143) return 0 ;;
    *) bench_log "server $label exited with status $st on SIGTERM; its output:"
       _log_tail "$log"
       return 1 ;;
  esac
}

_kill_server () {   # for the EXIT trap
  if [ -n "$_srv_pid" ]; then
    kill -KILL -- "-$_srv_pid" 2>/dev/null || :
    wait "$_srv_pid" 2>/dev/null || :
    _srv_pid=""
  fi
}

# _run_workload WORKLOAD URI LOGBASE -> prints the value
_run_workload () {
  local wl=$1 uri=$2 base=$3 esize extra=()
  esize=$(nbdinfo --size "$uri") || { bench_log "nbdinfo --size $uri failed"; return 1; }
  [ "$esize" -gt 0 ] || { bench_log "export is empty"; return 1; }
  eval "extra=(${_wl_args[$wl]})"
  case ${_wl_kind[$wl]} in
    fio|fio-once)
      local args=(--name="$wl" --ioengine=nbd --uri="$uri" --size="$esize"
                  --iodepth=16 --numjobs=1 --group_reporting
                  --output-format=json --output="$base.json")
      [ "${_wl_kind[$wl]}" = fio ] && args+=(--time_based --runtime="${RUNTIME_MS}ms")
      if ! fio "${args[@]}" "${extra[@]}" >"$base.fio.log" 2>&1; then
        bench_log "fio failed: fio ${args[*]} ${extra[*]}"
        _log_tail "$base.fio.log"
        return 1
      fi
      python3 - "$base.json" "${_wl_unit[$wl]}" <<'EOF'
import json, sys
path, unit = sys.argv[1:3]
with open(path) as f:
    text = f.read()
# fio may print lines before the JSON object.
j = json.loads(text[text.index("{"):])
tot_bytes = tot_bw = tot_iops = 0.0
for job in j["jobs"]:
    if job.get("error", 0):
        sys.exit("fio job %s: error %s" % (job.get("jobname"), job["error"]))
    for d in ("read", "write", "trim"):
        s = job.get(d, {})
        tot_bytes += s.get("io_bytes", 0)
        tot_bw += s.get("bw_bytes", 0)
        tot_iops += s.get("iops", 0.0)
if tot_bytes <= 0:
    sys.exit("fio moved no data")
tot_ios = sum(job.get(d, {}).get("total_ios", 0)
              for job in j["jobs"] for d in ("read", "write", "trim"))
# value, then the amount of work: I/Os for IOPS, MiB for MiB/s.
if unit == "MiB/s":
    print("%.1f %.1f" % (tot_bw / 1048576.0, tot_bytes / 1048576.0))
else:
    print("%.1f %d" % (tot_iops, tot_ios))
EOF
      ;;
    nbdcopy)
      local n=0 t0 t1
      t0=$EPOCHREALTIME
      while :; do
        if ! nbdcopy --no-extents "${extra[@]}" -- "$uri" null: >>"$base.nbdcopy.log" 2>&1; then
          bench_log "nbdcopy failed: nbdcopy --no-extents ${extra[*]} -- $uri null:"
          _log_tail "$base.nbdcopy.log"
          return 1
        fi
        n=$((n+1))
        t1=$EPOCHREALTIME
        awk -v a="$t0" -v b="$t1" -v r="$RUNTIME" 'BEGIN { exit !(b - a >= r) }' && break
      done
      awk -v a="$t0" -v b="$t1" -v n="$n" -v s="$esize" \
        'BEGIN { printf "%.1f %.1f\n", n * s / 1048576 / (b - a), n * s / 1048576 }'
      ;;
    nbdcopy-in)
      # One copy of the file $BENCH_COPY_SRC into the export.
      local src=${BENCH_COPY_SRC:-} ssize t0 t1
      [ -f "$src" ] || { bench_log "workload $wl: BENCH_COPY_SRC is not a file"; return 1; }
      ssize=$(stat -c %s "$src")
      t0=$EPOCHREALTIME
      if ! nbdcopy "${extra[@]}" -- "$src" "$uri" >>"$base.nbdcopy.log" 2>&1; then
        bench_log "nbdcopy failed: nbdcopy ${extra[*]} -- $src $uri"
        _log_tail "$base.nbdcopy.log"
        return 1
      fi
      t1=$EPOCHREALTIME
      awk -v a="$t0" -v b="$t1" -v s="$ssize" \
        'BEGIN { printf "%.1f %.1f\n", s / 1048576 / (b - a), s / 1048576 }'
      ;;
  esac
}

# _server_cpu PID: user+system CPU seconds of the process (all threads).
_clk_tck=$(getconf CLK_TCK)
_server_cpu () {
  local st f
  st=$(cat "/proc/$1/stat" 2>/dev/null) || { echo 0; return; }
  st=${st##*) }            # drop "pid (comm) ": comm may contain spaces
  read -r -a f <<<"$st"    # f[0] is field 3 (state); utime = 14, stime = 15
  awk -v u="${f[11]}" -v s="${f[12]}" -v t="$_clk_tck" 'BEGIN { printf "%.2f\n", (u + s) / t }'
}

# _run_one LABEL WORKLOAD ROUND: one measurement, appended to $RESULTS.
_run_one () {
  local label=$1 wl=$2 round=$3 base out value work cpu
  base=$LOGDIR/r$round-$wl-$label
  if declare -F before_run >/dev/null; then before_run "$label" "$wl" "$round"; fi
  _start_server "$label" "$base.server.log" || return 1
  if ! out=$(_run_workload "$wl" "nbd+unix:///?socket=$SOCK" "$base"); then
    _stop_server "$label" "$base.server.log" || :
    return 1
  fi
  read -r value work <<<"$out"
  cpu=$(_server_cpu "$_srv_pid")
  _stop_server "$label" "$base.server.log" || return 1
  if declare -F after_run >/dev/null; then after_run "$label" "$wl" "$round"; fi
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$SCENARIO" "$round" "$label" "$wl" \
    "$value" "${_wl_unit[$wl]}" "$cpu" "$work" >> "$RESULTS"
  bench_log "$SCENARIO round $round: $wl $label = $value ${_wl_unit[$wl]} (server CPU ${cpu} s)"
}

_failed_run=""
_scenario_exit () {
  local st=$?
  set +e
  if [ $st != 0 ] && [ $st != "$BENCH_SKIP_STATUS" ] && [ -n "$_failed_run" ]; then
    bench_log "$SCENARIO: FAILED at $_failed_run (logs: $LOGDIR)"
  fi
  _kill_server
  if declare -F cleanup >/dev/null; then
    cleanup || { bench_log "$SCENARIO: cleanup failed"; [ $st = 0 ] && st=1; }
  fi
  _bench_stop_daemons
  exit $st
}

# run_scenario NAME (in a subshell).  Exit status: 0 ok, 1 failed, 3 skipped.
run_scenario () {
  SCENARIO=$1
  WORKDIR=$RUNROOT/$SCENARIO
  SCENARIO_STATE=$RUNROOT/$SCENARIO.state
  LOGDIR=$SCENARIO_STATE/logs
  mkdir -p "$WORKDIR" "$LOGDIR"
  export SCENARIO WORKDIR
  DESCRIPTION="" PEER="" CEILING="" WORKLOADS=""
  set -m
  trap _scenario_exit EXIT
  cd "$WORKDIR"
  # shellcheck disable=SC1090
  source "$BENCH_DIR/scenarios/$SCENARIO.sh"

  [ -n "$DESCRIPTION" ] || bench_die "$SCENARIO: DESCRIPTION is not set"
  [ ${#_bench_labels[@]} -gt 0 ] || bench_die "$SCENARIO: no bench_server declared"
  declare -F prepare >/dev/null || bench_die "$SCENARIO: no prepare function"
  local l w r i n found
  for r in PEER CEILING; do
    if [ -n "${!r}" ] && [ -z "${_bench_cmds[${!r}]+x}" ]; then
      bench_die "$SCENARIO: $r=${!r} is not a declared server"
    fi
  done
  local wls=()
  for w in ${WORKLOADS:-$BENCH_DEFAULT_WORKLOADS}; do
    [ -n "${_wl_kind[$w]+x}" ] || bench_die "$SCENARIO: unknown workload '$w'"
    if [ -n "$wl_filter" ]; then
      found=0
      for l in ${wl_filter//,/ }; do [ "$l" = "$w" ] && found=1; done
      [ $found = 1 ] || continue
    fi
    wls+=("$w")
  done
  [ ${#wls[@]} -gt 0 ] || bench_skip "no workload left after --workloads $wl_filter"

  {
    printf 'description\t%s\n' "$DESCRIPTION"
    printf 'peer\t%s\n' "$PEER"
    printf 'ceiling\t%s\n' "$CEILING"
    for l in "${_bench_labels[@]}"; do printf 'server\t%s\n' "$l"; done
    for w in "${wls[@]}"; do
      printf 'workload\t%s\t%s\t%s\n' "$w" "${_wl_unit[$w]}" "${_wl_desc[$w]}"
    done
  } > "$SCENARIO_STATE/meta"

  if declare -F scenario_requires >/dev/null; then scenario_requires; fi

  bench_log "$SCENARIO: preparing images in $WORKDIR"
  prepare

  n=${#_bench_labels[@]}
  if [ "$SMOKE" = 1 ]; then
    # A smoke run proves that every server and every workload of the
    # scenario works, not what they measure: every server runs the first
    # workload (so the tables and charts have their ratios), each other
    # workload runs on one server in turn: n + workloads - 1 runs instead
    # of n x workloads.
    local nw=${#wls[@]} k
    for (( k=0; k<n; k++ )); do
      l=${_bench_labels[$k]}
      _failed_run="smoke, workload ${wls[0]}, server $l"
      _run_one "$l" "${wls[0]}" 1
    done
    for (( k=1; k<nw; k++ )); do
      l=${_bench_labels[$(( k % n ))]}
      _failed_run="smoke, workload ${wls[$k]}, server $l"
      _run_one "$l" "${wls[$k]}" 1
    done
    if declare -F report >/dev/null; then
      report "$RESULTS" > "$SCENARIO_STATE/report.md"
    fi
    _failed_run=""
    return 0
  fi
  for (( r=1; r<=ROUNDS; r++ )); do
    for w in "${wls[@]}"; do
      for (( i=0; i<n; i++ )); do
        l=${_bench_labels[$(( (i + r - 1) % n ))]}
        # Not in a condition: errors (set -e) in hooks must stop here.
        _failed_run="round $r, workload $w, server $l"
        _run_one "$l" "$w" "$r"
      done
    done
  done

  if declare -F report >/dev/null; then
    report "$RESULTS" > "$SCENARIO_STATE/report.md"
  fi
  _failed_run=""
}

# --- main -------------------------------------------------------------------

fs_type=$(stat -f -c %T "$imgdir" 2>/dev/null || echo unknown)
cpu=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)
mem=$(awk '/^MemTotal/ { printf "%.0f GiB", $2/1048576 }' /proc/meminfo)
md=$RUNROOT/out.md
{
  echo "## Benchmark run $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo
  echo "- Machine: ${cpu:-unknown CPU}, $(nproc) CPUs, $mem RAM, Linux $(uname -r)"
  echo "- Tools: $(nbdkit --version 2>/dev/null | head -1), $(qemu-nbd --version 2>/dev/null | head -1 | sed 's/ (.*//'), $(fio --version), $(nbdcopy --version | head -1)"
  echo "- Parameters: $ROUNDS round(s), image $size_arg ($SIZE bytes) in $imgdir ($fs_type), ${RUNTIME} s per job, fio nbd engine iodepth 16"
  echo "- Values are medians over rounds; ratio columns are medians of per-round ratios (> 1: faster than the reference)."
} > "$md"
load_start=$(cut -d' ' -f1-3 /proc/loadavg)

status=0
for s in "${scenarios[@]}"; do
  bench_log "=== scenario $s ==="
  # Not "( ... ) || st=$?": that would switch off set -e inside.
  set +e
  ( set -e; run_scenario "$s" )
  st=$?
  set -e
  meta=$RUNROOT/$s.state/meta
  {
    echo
    echo "### $s"
    echo
    if [ -f "$meta" ] && [ $st != 3 ]; then
      python3 "$BENCH_DIR/table.py" "$RESULTS" "$meta" "$s"
      # The ratios as a chart (gnuplot): DIR/bench-SCENARIO.png.
      if [ -n "$charts" ] && [ $st = 0 ]; then
        mkdir -p -- "$charts"
        python3 "$BENCH_DIR/chart.py" "$RESULTS" "$meta" "$s" "$charts/bench-$s.png" >&2 ||
          { bench_log "$s: chart failed"; echo 1 > "$RUNROOT/chart-failed"; }
      fi
    fi
    case $st in
      0) ;;
      3) echo
         echo "Skipped: $(cat "$RUNROOT/$s.state/skip-reason" 2>/dev/null || echo '?')" ;;
      *) echo
         echo "**FAILED** (exit status $st; see the messages on stderr)." ;;
    esac
    if [ -s "$RUNROOT/$s.state/report.md" ]; then
      echo
      cat "$RUNROOT/$s.state/report.md"
    fi
  } >> "$md"
  case $st in
    0) ;;
    3) bench_log "$s: skipped: $(cat "$RUNROOT/$s.state/skip-reason" 2>/dev/null || :)"
       [ $strict = 1 ] && { bench_log "$s: a skip is a failure with --strict/--smoke/CI=true"; status=1; } ;;
    *) bench_log "$s: FAILED"; status=1 ;;
  esac
done

{
  echo
  echo "Load average at start: $load_start; at end: $(cut -d' ' -f1-3 /proc/loadavg) (other work on the machine lowers and scatters the numbers)."
} >> "$md"
cat "$md"
[ -z "$output" ] || cp -- "$md" "$output"
[ -z "$results_out" ] || cp -- "$RESULTS" "$results_out"
[ ! -e "$RUNROOT/chart-failed" ] || status=1
if [ $status = 0 ]; then bench_log "all runs succeeded"; else bench_log "some runs FAILED"; fi
exit $status
