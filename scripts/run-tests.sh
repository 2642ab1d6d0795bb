#!/bin/bash
# SPDX-License-Identifier: BSD-3-Clause
# The whole test suite, from a fresh Debian 12 machine (as root):
# installs packages, builds, installs the plugins into nbdkit's directories,
# prepares the guest kernel for the end-to-end tests, runs a 1-round smoke
# of the benchmarks, then runs ctest on the normal build and again on an
# AddressSanitizer + UBSan build.  Exits non-zero if anything fails.
set -uo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"

step () { printf '\n===== %s =====\n' "$*"; }
failed=()

step "install dependencies"
bash scripts/install-deps.sh || exit 1

step "build (normal)"
bash scripts/build.sh "$top/build" || exit 1
step "install into nbdkit's plugin and filter directories"
cmake --install "$top/build" || exit 1

step "build (AddressSanitizer + UBSan)"
bash scripts/build.sh "$top/build-asan" -DSANITIZE=ON -DCMAKE_BUILD_TYPE=Debug || exit 1

if [ -x tests/e2e/prepare.sh ]; then
  step "prepare the guest kernel and initramfs for e2e tests"
  bash tests/e2e/prepare.sh || failed+=("e2e-prepare")
fi

if [ -x bench/run.sh ]; then
  step "benchmark smoke run (1 round, not a measurement)"
  BUILD="$top/build" bash bench/run.sh --smoke --charts "$top/build/bench-charts" ||
    failed+=("bench-smoke")
fi

jobs=${CTEST_JOBS:-2}
step "ctest (normal build)"
(cd build && ctest --output-on-failure -j"$jobs") || failed+=("ctest")

# Tests labelled normal-build-only repeat, over another plugin, engine
# paths that other tests run under the sanitizers too (see
# tests/qcow2/CMakeLists.txt); they run in the normal build only.
step "ctest (sanitizer build)"
(cd build-asan && ctest --output-on-failure -j"$jobs" -LE normal-build-only) ||
  failed+=("ctest-asan")

if [ ${#failed[@]} -gt 0 ]; then
  echo "FAILED: ${failed[*]}" >&2
  exit 1
fi
