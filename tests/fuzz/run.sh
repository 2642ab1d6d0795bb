#!/bin/bash
# SPDX-License-Identifier: BSD-3-Clause
# Run the fuzz targets: tests/fuzz/run.sh SECONDS [TARGET...]
# Each TARGET (a fuzz_TARGET.c here; all of them by default) runs for
# SECONDS under libFuzzer with ASan and UBSan, from its seeds in
# tests/fuzz/corpus/TARGET, growing a corpus outside the source tree.
# Exits 1 if any target found a crash, leak or timeout; the input is in
# build-fuzz/artifacts-TARGET-*: once fixed, keep it in
# tests/fuzz/regressions/TARGET/ (replayed by ctest).
# The knobs (FUZZ_RUNS, FUZZ_CORPUS, FUZZ_TIMEOUT, ...) are described in
# run-fuzzers.sh.
set -euo pipefail
if [ $# -lt 1 ] || ! [[ $1 =~ ^[0-9]+$ ]]; then
  echo "usage: $0 SECONDS [TARGET...]" >&2
  exit 2
fi
exec "$(dirname "$0")/run-fuzzers.sh" "$@"
