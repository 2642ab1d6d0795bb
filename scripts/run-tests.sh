#!/bin/bash
# SPDX-License-Identifier: BSD-3-Clause
# The whole test suite, from a fresh Debian 12 machine (as root):
# installs packages, builds, installs the plugins into nbdkit's directories,
# prepares the guest kernel for the end-to-end tests, then runs ctest on
# the normal build (with a 1-round smoke run of the benchmarks), again
# on an AddressSanitizer + UBSan build, and the tests labelled tsan on a
# ThreadSanitizer build.  Exits non-zero if anything fails.
#
# Phases that do not compete for the CPU overlap (2 cores): the e2e guest
# preparation (downloads, unpacking) runs in the background from the start
# (e2e tests also wait for its lock themselves), the sanitizer build at
# nice 19 beside ctest on the normal build.  The benchmark smoke run
# is a ctest test of the normal build (bench-smoke).  The two ctest runs
# stay one after the other; in each, at most $CTEST_JOBS (2) tests that
# keep a core busy run at once (ctest's "cpu" resource, one slot per job),
# and as many tests that mostly wait (rate limits, timeouts: IDLE in
# tests/*/CMakeLists.txt) run beside them: see tests/CMakeLists.txt.
# Each phase's wall time is printed at the end.
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

# python3 is the system's (/usr/bin/python3, with python3-libnbd) even
# when a version manager's shim comes first on PATH: the benchmark and
# e2e scripts call it often, and a pyenv shim costs ~0.5 s of CPU per call
# (tests/functions.sh does the same for the tests).
if [ -x /usr/bin/python3 ] && [ "$(command -v python3)" != /usr/bin/python3 ]; then
  mkdir "$logdir/python"
  ln -s /usr/bin/python3 "$logdir/python/python3"
  export PATH="$logdir/python:$PATH"
fi

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

# The sanitizer build runs in the background at the lowest priority
# (nice 19) while ctest runs on the normal build: it takes only the CPU
# time the tests leave idle (waits, sleeps, rate limits) and hardly
# slows them; ctest on it waits for it below.
nice -n 19 bash scripts/build.sh "$top/build-asan" -DSANITIZE=ON -DCMAKE_BUILD_TYPE=Debug \
  > "$logdir/build-asan.log" 2>&1 &
build_asan_pid=$!
build_asan_t0=$SECONDS

# ---- ThreadSanitizer build (issue #22; docs/hardening.md) ----
# Only the targets of the tests labelled tsan (tests/CMakeLists.txt: the
# engines driven from several threads at once, multi-connection shell
# tests), at nice 19 beside ctest too; its ctest runs at the end.
tsan_targets=(qcow2-unit-threads vmdk-unit-threads vhdx-unit-threads
              snapshot-unit-threads throttle-unit-threads lvm-unit-threads
              thin-unit cfail-unit-threads nbdkit-vhdx-plugin
              nbdkit-throttle-filter
              nbdkit-thin-filter nbdkit-thin-check nbdkit-snapshot-filter
              nbdkit-snapshot-ctl nbdkit-lvm-plugin)
( cmake -S "$top" -B "$top/build-tsan" -DREQUIRE_ALL=ON -DSANITIZE=thread &&
  nice -n 19 cmake --build "$top/build-tsan" -j"$(nproc)" \
    --target "${tsan_targets[@]}" ) > "$logdir/build-tsan.log" 2>&1 &
build_tsan_pid=$!
build_tsan_t0=$SECONDS
# ---- end ThreadSanitizer build ----

if [ -n "$prepare_pid" ]; then
  step "prepare the guest kernel and initramfs for e2e tests: waiting for it"
  wait "$prepare_pid" || failed+=("e2e-prepare")
  cat "$logdir/prepare.log"
  echo "(e2e preparation: $((SECONDS - prepare_t0)) s in all)"
fi

# ctest's resources: $jobs "cpu" slots.  Every test takes one, except the
# IDLE ones; twice as many tests as slots run at once at most.
jobs=${CTEST_JOBS:-2}
printf '{"version": {"major": 1, "minor": 0}, "local": [{"cpu": [{"id": "0", "slots": %d}]}]}\n' \
  "$jobs" > "$logdir/resources.json"
ctest_args=(--output-on-failure -j"$((jobs * 2))" --resource-spec-file "$logdir/resources.json")

# Tests labelled sanitizer-build-only run cases that other tests run
# through the same engine in the normal build (tests/qcow2/CMakeLists.txt).
step "ctest (normal build, with the benchmark smoke run: bench-smoke)"
(cd build && ctest "${ctest_args[@]}" -LE sanitizer-build-only) || failed+=("ctest")

step "build (AddressSanitizer + UBSan, nice 19 beside ctest): waiting for it"
build_asan_ok=1
wait "$build_asan_pid" || { build_asan_ok=0; failed+=("build-asan"); }
cat "$logdir/build-asan.log"
echo "(sanitizer build: $((SECONDS - build_asan_t0)) s in all)"

# Tests labelled normal-build-only either load none of the project's code
# or repeat, over another plugin, engine paths that other tests run under
# the sanitizers too (see tests/qcow2/CMakeLists.txt, tests/e2e/); they
# run in the normal build only.
if [ $build_asan_ok = 1 ]; then
  step "ctest (sanitizer build)"
  (cd build-asan && ctest "${ctest_args[@]}" -LE normal-build-only) ||
    failed+=("ctest-asan")
fi

# ---- ThreadSanitizer tests (issue #22; docs/hardening.md) ----
# nbdkit gets libtsan preloaded (tests/functions.sh).
step "build (ThreadSanitizer, tsan-labelled targets only): waiting for it"
if wait "$build_tsan_pid"; then
  echo "(ThreadSanitizer build: $((SECONDS - build_tsan_t0)) s in all)"
  step "ctest (ThreadSanitizer build, -L tsan)"
  (cd build-tsan && ctest "${ctest_args[@]}" -L tsan) || failed+=("ctest-tsan")
else
  cat "$logdir/build-tsan.log"
  failed+=("build-tsan")
fi
# ---- end ThreadSanitizer tests ----

summary
if [ ${#failed[@]} -gt 0 ]; then
  echo "FAILED: ${failed[*]}" >&2
  exit 1
fi
