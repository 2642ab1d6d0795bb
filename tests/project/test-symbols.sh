#!/bin/bash
# SPDX-License-Identifier: BSD-3-Clause
# Symbol hygiene of every built module.
# - It exports only what nbdkit looks up: plugin_init or filter_init, and
#   its -D debug flags NAME_debug_FLAG.  nbdkit loads modules RTLD_GLOBAL:
#   an exported engine symbol would bind a filter to a plugin's copy of
#   common/ (or the reverse).
# - It carries only the engines it uses: the lvm plugin has no format
#   engine and needs no compression library; the throttle filter has no
#   block-device code.
# (Under ASan, an exported variable comes with its ODR indicator
# __odr_asan.NAME.)
source "${TOP_SRCDIR:?run the tests through ctest, which sets TOP_SRCDIR}/tests/functions.sh"
requires nm ldd

# only_exports SO ENTRY PREFIX
only_exports () {
  local so=$1 entry=$2 prefix=$3 exports bad
  exports=$(nm -D --defined-only "$so" | awk '{ print $NF }')
  grep -qx "$entry" <<<"$exports" || fail "$so does not export $entry"
  bad=$(grep -vxE "$entry|(__odr_asan[._])?${prefix}_debug_[A-Za-z0-9_]+|_init|_fini|__bss_start|_edata|_end" \
          <<<"$exports" || :)
  [ -z "$bad" ] ||
    fail "$so exports more than $entry and ${prefix}_debug_*: $(echo $bad | cut -c1-400)"
}

# lacks SO SYMBOL WHY: SYMBOL is not in SO at all (full symbol table).
lacks () {
  # Into a file first: grep -q stopping early made the pipeline fail
  # (SIGPIPE under pipefail), which read as "absent".
  nm "$1" > "$tmpdir/syms" 2>/dev/null || fail "nm $1 failed"
  if awk '{ print $NF }' "$tmpdir/syms" | grep -x "$2" >/dev/null; then
    fail "$1 contains $2 ($3)"
  fi
}

n=0
for so in "$TOP_BUILDDIR"/plugins/*/nbdkit-*-plugin.so; do
  [ -f "$so" ] || continue
  name=$(basename "$so"); name=${name#nbdkit-}; name=${name%-plugin.so}
  only_exports "$so" plugin_init "${name//-/_}"
  echo "ok: plugin $name exports: $(nm -D --defined-only "$so" | awk '{ print $NF }' | tr '\n' ' ')"
  n=$((n+1))
done
for so in "$TOP_BUILDDIR"/filters/*/nbdkit-*-filter.so; do
  [ -f "$so" ] || continue
  name=$(basename "$so"); name=${name#nbdkit-}; name=${name%-filter.so}
  only_exports "$so" filter_init "${name//-/_}"
  echo "ok: filter $name exports: $(nm -D --defined-only "$so" | awk '{ print $NF }' | tr '\n' ' ')"
  n=$((n+1))
done
[ $n -gt 0 ] || fail "no plugin or filter was built"

lvm=$(plugin_so lvm)
if [ -f "$lvm" ]; then
  deps=$(ldd "$lvm") || fail "ldd $lvm failed"
  if grep -E 'libz\.so|libzstd\.so' <<<"$deps"; then
    fail "$lvm needs a compression library (it links a format engine)"
  fi
  lacks "$lvm" qcow2_open "the lvm plugin links the qcow2 engine"
  lacks "$lvm" bdev_open "the lvm plugin links the format table"
  echo "ok: lvm plugin without format engines or compression libraries"
fi
throttle=$(filter_so throttle)
if [ -f "$throttle" ]; then
  lacks "$throttle" bdev_pread "the throttle filter links the block-device layer"
  echo "ok: throttle filter without the block-device layer"
fi
