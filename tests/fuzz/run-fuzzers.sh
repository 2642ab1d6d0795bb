#!/bin/bash
# SPDX-License-Identifier: BSD-3-Clause
# Build the libFuzzer targets with clang and run each for N seconds
# (default 60), one after another.
#   tests/fuzz/run-fuzzers.sh [SECONDS] [NAME...]   (all targets by default)
# Environment:
#   FUZZ_RUNS=N       run each target for N executions instead (as recorded
#                     in docs/fuzzing.md)
#   FUZZ_CORPUS=DIR   where the growing corpora go (DIR/NAME; default
#                     build-fuzz/new-corpus); the seeds of
#                     tests/fuzz/corpus/NAME are read, never written
#   FUZZ_TIMEOUT=S    an input slower than S seconds is a finding (default
#                     25: on a loaded machine at nice 19 a few seconds of
#                     stall are scheduling, not a hang; replay any timeout
#                     alone before calling it one)
#   FUZZ_TMPDIR=DIR   where the targets make their private directories
#                     (default /dev/shm, see fuzz_common.h)
#   FUZZ_NICE=N       niceness of the runs (default 19)
# -max_len is the largest seed of the target, at least 128 KiB.  ASan's
# quarantine is 8 MiB (ASAN_OPTIONS, unless set): with the default 256 MiB
# most allocations land on fresh pages, and page faults were half the
# cost of an execution of the image targets.
# Prints one summary line per target (executions, rate, coverage, corpus)
# and exits 1 if any target stopped on a finding (crash, leak, timeout:
# build-fuzz/artifacts-NAME-*).
set -euo pipefail
top=$(cd "$(dirname "$0")/../.." && pwd)
secs=${1:-60}; shift || :
build=$top/build-fuzz
names=("$@")
if [ ${#names[@]} = 0 ]; then
  for f in "$top"/tests/fuzz/fuzz_*.c; do
    n=$(basename "$f" .c); names+=("${n#fuzz_}")
  done
fi
CC=clang cmake -S "$top" -B "$build" -DFUZZ=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
targets=()
for n in "${names[@]}"; do targets+=("fuzz_$n"); done
cmake --build "$build" -j"$(nproc)" --target "${targets[@]}" >/dev/null
corpora=${FUZZ_CORPUS:-$build/new-corpus}
export ASAN_OPTIONS=${ASAN_OPTIONS:-quarantine_size_mb=8}
status=0
summary=()
for n in "${names[@]}"; do
  mkdir -p "$corpora/$n"
  seeds=$top/tests/fuzz/corpus/$n
  maxlen=$(find "$seeds" -type f -printf '%s\n' | sort -n | tail -1)
  [ "${maxlen:-0}" -ge 131072 ] || maxlen=131072
  if [ -n "${FUZZ_RUNS:-}" ]; then
    echo "== fuzz_$n for $FUZZ_RUNS executions"
    limit=-runs="$FUZZ_RUNS"
  else
    echo "== fuzz_$n for ${secs}s"
    limit=-max_total_time="$secs"
  fi
  log=$build/fuzz-$n.log
  rc=0
  nice -n "${FUZZ_NICE:-19}" "$build/tests/fuzz-replay/fuzz_$n" "$limit" \
    -timeout="${FUZZ_TIMEOUT:-25}" -print_final_stats=1 -max_len="$maxlen" \
    -artifact_prefix="$build/artifacts-$n-" \
    "$corpora/$n" "$seeds" > "$log" 2>&1 || rc=$?
  execs=$(awk '/stat::number_of_executed_units/ {print $2}' "$log")
  rate=$(awk '/stat::average_exec_per_sec/ {print $2}' "$log")
  last=$(grep -E '^#[0-9]+' "$log" | tail -1 |
         grep -oE 'cov: [0-9]+ ft: [0-9]+ corp: [^ ]+' || :)
  line="fuzz_$n: executions=${execs:-?} exec/s=${rate:-?} ${last:-} rc=$rc"
  echo "$line"
  summary+=("$line")
  if [ $rc = 72 ]; then
    echo "fuzz_$n: interrupted (SIGINT), no finding"
  elif [ $rc != 0 ]; then
    status=1
    grep -E 'ERROR|SUMMARY|Test unit written' "$log" | head -5 || :
  fi
done
printf '%s\n' "== summary" "${summary[@]}"
exit $status
