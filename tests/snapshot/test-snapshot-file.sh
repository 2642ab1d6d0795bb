#!/bin/bash
# SPDX-License-Identifier: BSD-3-Clause
# The snapshot filter over nbdkit's file plugin: random writes, zeroes and
# trims with create / revert / delete, restarts, @NAME exports read while
# the default export is written, then commit; every step compared byte by
# byte with the model in snapshot-model.py; the file untouched until the
# commit (cmp) and equal to the model after it; qemu-img check on every
# layer at every restart.
source "${TOP_SRCDIR:?run the tests through ctest, which sets TOP_SRCDIR}/tests/functions.sh"
source "$TOP_SRCDIR/tests/snapshot/snapshot-lib.sh"

size=$((16 * 1024 * 1024))
random_file "$tmpdir/below.raw" $size
cp "$tmpdir/below.raw" "$tmpdir/below.orig"
snapshot_model --size $size --seed 11 --rounds "${SNAPSHOT_TEST_ROUNDS:-15}" \
  --commit --initial "$tmpdir/below.orig" \
  --below-check "cmp -s '$tmpdir/below.raw' '$tmpdir/below.orig'" \
  --below-dump "cp '$tmpdir/below.raw'" \
  -- file "file=$tmpdir/below.raw"
