#!/bin/bash
# SPDX-License-Identifier: BSD-3-Clause
# bench-smoke: bench/run.sh --smoke over every scenario (1 round, 16 MiB
# images, 0.3 s jobs: every server starts, serves the first workload and
# stops cleanly, every other workload runs on one server, the tables and
# charts are made).  Not a measurement.  It runs as a ctest test so that
# ctest schedules it among the others (scripts/run-tests.sh used to wait
# for it between the builds and ctest); with CI=true (--strict) a skipped
# scenario is a failure.  Normal build only: the servers are the normal
# build's plugins and filters.
source "${TOP_SRCDIR:?run the tests through ctest, which sets TOP_SRCDIR}/tests/functions.sh"
requires fio nbdcopy nbdinfo

out=$TOP_BUILDDIR/bench-smoke
rm -rf "$out"
mkdir -p "$out"
BUILD=$TOP_BUILDDIR bash "$TOP_SRCDIR/bench/run.sh" --smoke \
  --charts "$out/charts" --output "$out/bench.md" 2>&1 >/dev/null ||
  fail "bench/run.sh --smoke failed (see above)"
# Every scenario made its table and chart.
for f in "$TOP_SRCDIR"/bench/scenarios/*.sh; do
  s=$(basename "$f" .sh)
  grep -q "^### $s\$" "$out/bench.md" || fail "no table for scenario $s"
  [ -s "$out/charts/bench-$s.png" ] || fail "no chart for scenario $s"
done
echo "ok: bench smoke run, $(ls "$out"/charts/*.png | wc -l) charts"
