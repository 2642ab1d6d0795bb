#!/bin/bash
# SPDX-License-Identifier: BSD-3-Clause
# After `cmake --install` (done by scripts/run-tests.sh and the README's
# set-up command), nbdkit finds each plugin and filter by its short name.
source "${TOP_SRCDIR:?run the tests through ctest, which sets TOP_SRCDIR}/tests/functions.sh"
requires nbdkit pkg-config

plugindir=$(pkg-config --variable=plugindir nbdkit)
filterdir=$(pkg-config --variable=filterdir nbdkit)
n=0
for so in "$TOP_BUILDDIR"/plugins/*/nbdkit-*-plugin.so; do
  [ -f "$so" ] || continue
  name=$(basename "$so"); name=${name#nbdkit-}; name=${name%-plugin.so}
  [ -f "$plugindir/nbdkit-$name-plugin.so" ] ||
    skip "plugins are not installed (run cmake --install build)"
  out=$(nbdkit "$name" --dump-plugin) || fail "nbdkit $name --dump-plugin failed"
  grep -qx "path=$plugindir/nbdkit-$name-plugin.so" <<<"$out" ||
    fail "nbdkit $name resolved elsewhere: $out"
  echo "ok: nbdkit $name"
  n=$((n+1))
done
for so in "$TOP_BUILDDIR"/filters/*/nbdkit-*-filter.so; do
  [ -f "$so" ] || continue
  name=$(basename "$so"); name=${name#nbdkit-}; name=${name%-filter.so}
  [ -f "$filterdir/nbdkit-$name-filter.so" ] ||
    skip "filters are not installed (run cmake --install build)"
  nbdkit --filter="$name" null --dump-plugin >/dev/null ||
    fail "nbdkit --filter=$name does not load"
  echo "ok: --filter=$name"
  n=$((n+1))
done
[ $n -gt 0 ] || fail "nothing was built"
