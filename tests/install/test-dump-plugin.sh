#!/bin/bash
# Every built plugin answers --dump-plugin with its own name; every built
# filter loads in front of nbdkit's null plugin.
source "$TOP_SRCDIR/tests/functions.sh"
requires nbdkit

n=0
for so in "$TOP_BUILDDIR"/plugins/*/nbdkit-*-plugin.so; do
  [ -f "$so" ] || continue
  name=$(basename "$so"); name=${name#nbdkit-}; name=${name%-plugin.so}
  out=$(nbdkit "$so" --dump-plugin) || fail "$so --dump-plugin failed"
  grep -qx "name=$name" <<<"$out" || fail "$so: no name=$name in: $out"
  grep -qx "api_version=2" <<<"$out" || fail "$so: not API v2"
  grep -q "^thread_model=" <<<"$out" || fail "$so: no thread model"
  echo "ok: plugin $name"
  n=$((n+1))
done
for so in "$TOP_BUILDDIR"/filters/*/nbdkit-*-filter.so; do
  [ -f "$so" ] || continue
  name=$(basename "$so"); name=${name#nbdkit-}; name=${name%-filter.so}
  nbdkit --filter="$so" null --dump-plugin >/dev/null || fail "filter $so does not load"
  echo "ok: filter $name"
  n=$((n+1))
done
[ $n -gt 0 ] || fail "no plugin or filter was built"
