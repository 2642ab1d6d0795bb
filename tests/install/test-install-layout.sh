#!/bin/bash
# SPDX-License-Identifier: BSD-3-Clause
# `cmake --install` puts plugins and filters in nbdkit's own directories and
# man pages in section 1 (checked in a DESTDIR, so this needs no root).
source "${TOP_SRCDIR:?run the tests through ctest, which sets TOP_SRCDIR}/tests/functions.sh"
requires cmake pkg-config man
: "${KVM_VERSION:=$(sed -n 's/^#define KVM_VERSION "\(.*\)"$/\1/p' "$TOP_BUILDDIR/include/kvm_version.h")}"

plugindir=$(pkg-config --variable=plugindir nbdkit)
filterdir=$(pkg-config --variable=filterdir nbdkit)
dest=$tmpdir/dest
DESTDIR=$dest cmake --install "$TOP_BUILDDIR" >/dev/null

n=0
for so in "$TOP_BUILDDIR"/plugins/*/nbdkit-*-plugin.so; do
  [ -f "$so" ] || continue
  b=$(basename "$so")
  [ -f "$dest$plugindir/$b" ] || fail "$b not installed in $plugindir"
  nbdkit "$dest$plugindir/$b" --dump-plugin >/dev/null || fail "installed $b does not load"
  n=$((n+1))
done
for so in "$TOP_BUILDDIR"/filters/*/nbdkit-*-filter.so; do
  [ -f "$so" ] || continue
  b=$(basename "$so")
  [ -f "$dest$filterdir/$b" ] || fail "$b not installed in $filterdir"
  n=$((n+1))
done
[ $n -gt 0 ] || fail "nothing was built"

# Every built plugin and filter has its man page beside its sources
# (plugins/NAME/nbdkit-NAME-plugin.pod, as in nbdkit), installed in
# section 1; so has every general page in docs/.
pods=()
for so in "$TOP_BUILDDIR"/plugins/*/nbdkit-*-plugin.so "$TOP_BUILDDIR"/filters/*/nbdkit-*-filter.so; do
  [ -f "$so" ] || continue
  b=$(basename "$so" .so)
  src=$TOP_SRCDIR/${so#"$TOP_BUILDDIR"/}
  pod=$(dirname "$src")/$b.pod
  [ -f "$pod" ] && [ ! -L "$pod" ] || fail "$b: no man page source $pod"
  pods+=("$pod")
done
for pod in "$TOP_SRCDIR"/docs/*.pod; do
  [ -f "$pod" ] && pods+=("$pod")
done
for pod in "${pods[@]}"; do
  m=$(basename "$pod" .pod).1
  found=$(find "$dest" -path "*/man1/$m" | head -1)
  [ -n "$found" ] || fail "man page $m not installed"
  man -l "$found" >/dev/null 2>&1 || fail "man page $m does not render"
  grep -qF "$KVM_VERSION" "$found" || fail "man page $m does not carry version $KVM_VERSION"
done
echo "install layout ok ($n modules)"
