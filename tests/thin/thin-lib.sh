# SPDX-License-Identifier: BSD-3-Clause
# Helpers for the thin filter tests.  Source after tests/functions.sh.

requires_filter thin
requires python3 nbdcopy nbdinfo qemu-io qemu-img cmp
requires_nbdsh

thin_srcdir="$TOP_SRCDIR/tests/thin"
thin_check_bin="$TOP_BUILDDIR/filters/thin/nbdkit-thin-check"
[ -x "$thin_check_bin" ] || fail "nbdkit-thin-check was not built"

thin_meta () { python3 "$thin_srcdir/thin-meta.py" "$@"; }

# thin_check ARGS...: the checker must find the metadata clean.
thin_check () {
  local out
  out=$("$thin_check_bin" "$@" 2>&1) || fail "nbdkit-thin-check $*: $out"
  grep -q ': clean$' <<<"$out" || fail "nbdkit-thin-check $*: $out"
}

# thin_used URI: "used" bytes from the export description.
thin_desc () { nbdinfo "$1" | sed -n 's/^[[:space:]]*description: //p'; }
