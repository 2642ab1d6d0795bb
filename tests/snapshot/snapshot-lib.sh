# SPDX-License-Identifier: BSD-3-Clause
# Helpers for the snapshot filter tests.  Source after tests/functions.sh.
#
# snapshot_model ARGS... -- PLUGIN ARGS...: run snapshot-model.py (the
# model-based driver) with the filter, the CLI and a fresh directory.
# SNAPSHOT_TEST_ROUNDS scales the random rounds (default per test).

requires_filter snapshot
requires qemu-img
requires_nbdsh

snapshot_ctl="$TOP_BUILDDIR/filters/snapshot/nbdkit-snapshot-ctl"
[ -x "$snapshot_ctl" ] || skip "nbdkit-snapshot-ctl was not built"

snapshot_model () {
  local d
  d=$(mktemp -d "$tmpdir/m.XXXXXX")
  PATH="/usr/bin:$PATH" python3 "$TOP_SRCDIR/tests/snapshot/snapshot-model.py" \
    --filter "$(filter_so snapshot)" --ctl "$snapshot_ctl" --dir "$d" "$@"
}
