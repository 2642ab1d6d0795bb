#!/bin/bash
# SPDX-License-Identifier: BSD-3-Clause
# The whole test suite, from a fresh Debian 12 machine (as root):
# installs packages, builds, installs the plugins into nbdkit's directories,
# prepares the guest kernel for the end-to-end tests, runs a 1-round smoke
# of the benchmarks, then runs ctest on the normal build and again on an
# AddressSanitizer + UBSan build.  Exits non-zero if anything fails.
#
# Phases that do not compete for the CPU overlap (2 cores): the e2e guest
# preparation (downloads, unpacking) runs in the background from the start
# (e2e tests also wait for its lock themselves), and the benchmark smoke
# run (time-based fio jobs of 1 s) runs beside the sanitizer build.  The
# two ctest runs stay one after the other, each with -j$CTEST_JOBS (2): see
# tests/CMakeLists.txt for what lets tests run in parallel.  Each phase's
# wall time is printed at the end.
set -uo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"

failed=()
phases=()
_phase=""
_phase_t0=$SECONDS
phase_end () {
  [ -n "$_phase" ] && phases+=("$(printf '%5d s  %s' $((SECONDS - _phase_t0)) "$_phase")")
  _phase=""
}
step () {
  phase_end
  _phase=$*
  _phase_t0=$SECONDS
  printf '\n===== %s =====\n' "$*"
}
summary () {
  phase_end
  printf '\n===== wall time per phase =====\n'
  printf '%s\n' "${phases[@]}"
  printf '%5d s  total\n' "$SECONDS"
}
logdir=$(mktemp -d /tmp/kvm-ci.XXXXXX)
# On an early exit, let the background phases finish (they stop their
# own servers) before their logs go.
trap 'wait; rm -rf "$logdir"' EXIT

step "install dependencies"
bash scripts/install-deps.sh || exit 1

# In the background: prepare.sh takes a lock on its cache, and every e2e
# test runs it again (a no-op once cached) under the same lock.
prepare_pid=""
if [ -x tests/e2e/prepare.sh ]; then
  bash tests/e2e/prepare.sh > "$logdir/prepare.log" 2>&1 &
  prepare_pid=$!
fi
prepare_t0=$SECONDS

step "build (normal)"
bash scripts/build.sh "$top/build" || exit 1
step "install into nbdkit's plugin and filter directories"
cmake --install "$top/build" || exit 1

# The benchmark smoke run only needs the normal build: beside the
# sanitizer build (its jobs are time-based, it is not a measurement).
bench_pid=""
if [ -x bench/run.sh ]; then
  BUILD="$top/build" bash bench/run.sh --smoke --charts "$top/build/bench-charts" \
    > "$logdir/bench.log" 2>&1 &
  bench_pid=$!
fi
bench_t0=$SECONDS

step "build (AddressSanitizer + UBSan), benchmark smoke run beside it"
bash scripts/build.sh "$top/build-asan" -DSANITIZE=ON -DCMAKE_BUILD_TYPE=Debug || exit 1

if [ -n "$bench_pid" ]; then
  step "benchmark smoke run (1 round, not a measurement): waiting for it"
  wait "$bench_pid" || failed+=("bench-smoke")
  cat "$logdir/bench.log"
  echo "(benchmark smoke run: $((SECONDS - bench_t0)) s in all)"
fi

if [ -n "$prepare_pid" ]; then
  step "prepare the guest kernel and initramfs for e2e tests: waiting for it"
  wait "$prepare_pid" || failed+=("e2e-prepare")
  cat "$logdir/prepare.log"
  echo "(e2e preparation: $((SECONDS - prepare_t0)) s in all)"
fi

jobs=${CTEST_JOBS:-2}
step "ctest (normal build)"
(cd build && ctest --output-on-failure -j"$jobs") || failed+=("ctest")

# Tests labelled normal-build-only either load none of the project's code
# or repeat, over another plugin, engine paths that other tests run under
# the sanitizers too (see tests/qcow2/CMakeLists.txt, tests/e2e/); they
# run in the normal build only.
step "ctest (sanitizer build)"
(cd build-asan && ctest --output-on-failure -j"$jobs" -LE normal-build-only) ||
  failed+=("ctest-asan")

summary
if [ ${#failed[@]} -gt 0 ]; then
  echo "FAILED: ${failed[*]}" >&2
  exit 1
fi
