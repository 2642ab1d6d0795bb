#!/bin/bash
# SPDX-License-Identifier: BSD-3-Clause
# Build the libFuzzer targets with clang and run each for N seconds
# (default 60), growing its corpus under tests/fuzz/corpus/NAME.
#   tests/fuzz/run-fuzzers.sh [SECONDS] [NAME...]
# FUZZ_RUNS=N runs each target for N executions instead (as recorded in
# docs/fuzzing.md).  An input slower than 5 s counts as a hang (-timeout);
# the final statistics give the execution count.
set -euo pipefail
top=$(cd "$(dirname "$0")/../.." && pwd)
secs=${1:-60}; shift || :
build=$top/build-fuzz
CC=clang cmake -S "$top" -B "$build" -DFUZZ=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build "$build" -j"$(nproc)" >/dev/null
names=("$@")
if [ ${#names[@]} = 0 ]; then
  for f in "$top"/tests/fuzz/fuzz_*.c; do
    n=$(basename "$f" .c); names+=("${n#fuzz_}")
  done
fi
for n in "${names[@]}"; do
  mkdir -p "$build/new-corpus/$n"
  if [ -n "${FUZZ_RUNS:-}" ]; then
    echo "== fuzz_$n for $FUZZ_RUNS executions"
    limit=-runs="$FUZZ_RUNS"
  else
    echo "== fuzz_$n for ${secs}s"
    limit=-max_total_time="$secs"
  fi
  "$build/tests/fuzz-replay/fuzz_$n" "$limit" -timeout=5 -print_final_stats=1 \
    -max_len=1048576 -artifact_prefix="$build/artifacts-$n-" \
    "$build/new-corpus/$n" "$top/tests/fuzz/corpus/$n"
done
