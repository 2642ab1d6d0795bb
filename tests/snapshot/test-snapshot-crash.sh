#!/bin/bash
# SPDX-License-Identifier: BSD-3-Clause
# Crash safety of the snapshot filter over nbdkit's file plugin: kill -9
# during writes (flushed data intact, sectors in flight old or new); a
# SIGKILL at every crash point of create, revert, delete and commit
# (KVM_SNAPSHOT_CRASH_AT) reopens to the state before or after the
# operation as designed; kill -9 at random times during operations
# reopens to one of the two.  qemu-img check on every layer each time.
source "${TOP_SRCDIR:?run the tests through ctest, which sets TOP_SRCDIR}/tests/functions.sh"
source "$TOP_SRCDIR/tests/snapshot/snapshot-lib.sh"

size=$((16 * 1024 * 1024))
random_file "$tmpdir/below.raw" $size
cp "$tmpdir/below.raw" "$tmpdir/below.orig"
snapshot_model --size $size --seed 14 --initial "$tmpdir/below.orig" \
  --crash-writes "${SNAPSHOT_TEST_ROUNDS:-3}" --crash-ops \
  --crash-random "${SNAPSHOT_TEST_ROUNDS:-4}" \
  -- file "file=$tmpdir/below.raw"
