#!/bin/bash
# SPDX-License-Identifier: BSD-3-Clause
# Every built plugin and filter loads into nbdkit.  nbdkit dlopen()s a
# module with RTLD_NOW, so a symbol that neither nbdkit nor a library the
# module links defines fails the load here.  (The link cannot check it: the
# nbdkit_* API is defined by the nbdkit executable, not by a library.)
# Every plugin reports the project's one version, from project(VERSION).
source "${TOP_SRCDIR:?run the tests through ctest, which sets TOP_SRCDIR}/tests/functions.sh"
requires nbdkit
: "${KVM_VERSION:=$(sed -n 's/^#define KVM_VERSION "\(.*\)"$/\1/p' "$TOP_BUILDDIR/include/kvm_version.h")}"
[ -n "$KVM_VERSION" ] || fail "no KVM_VERSION (and no $TOP_BUILDDIR/include/kvm_version.h)"

n=0
for so in "$TOP_BUILDDIR"/plugins/*/nbdkit-*-plugin.so; do
  [ -f "$so" ] || continue
  name=$(basename "$so"); name=${name#nbdkit-}; name=${name%-plugin.so}
  out=$(nbdkit "$so" --dump-plugin 2>&1) || fail "$so does not load: $out"
  grep -qx "name=$name" <<<"$out" || fail "$so: no name=$name in: $out"
  grep -qx "version=$KVM_VERSION" <<<"$out" ||
    fail "$so: not version=$KVM_VERSION in: $out"
  grep -qx "api_version=2" <<<"$out" || fail "$so: not API v2"
  grep -q "^thread_model=" <<<"$out" || fail "$so: no thread model"
  echo "ok: plugin $name $KVM_VERSION"
  n=$((n+1))
done
for so in "$TOP_BUILDDIR"/filters/*/nbdkit-*-filter.so; do
  [ -f "$so" ] || continue
  name=$(basename "$so"); name=${name#nbdkit-}; name=${name%-filter.so}
  out=$(nbdkit --filter="$so" null --dump-plugin 2>&1) ||
    fail "filter $so does not load: $out"
  echo "ok: filter $name"
  n=$((n+1))
done
[ $n -gt 0 ] || fail "no plugin or filter was built"
