#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# e2e: a real guest (tests/e2e harness, QEMU runner) boots with its only
# disk served from an iSCSI LUN (tgtd, 4096-byte blocks) through the iscsi
# plugin.  Afterwards the LUN's backing file holds the guest's pattern and
# every other byte is unchanged.
source "${TOP_SRCDIR:?run the tests through ctest, which sets TOP_SRCDIR}/tests/functions.sh"
source "$TOP_SRCDIR/tests/iscsi/common.sh"
source "$TOP_SRCDIR/tests/e2e/pattern.sh"
requires qemu-system-x86_64

d=$tmpdir
random_file $d/lun.img 16M
cp $d/lun.img $d/before.img
tgtd_one_lun $d/lun.img --blocksize 4096

start_nbdkit $d/sock "$(plugin_so iscsi)" url=$(tgtd_url $IQN 1)
rc=0
bash "$TOP_SRCDIR/tests/e2e/guest-run.sh" qemu "$(uri_of $d/sock)" || rc=$?
[ $rc != 77 ] || exit 77
[ $rc = 0 ] || fail "guest run failed (status $rc)"
stop_nbdkit

e2e_verify_backend_raw $d/lun.img || fail "pattern not in the LUN's backing file"
end=$((E2E_PATTERN_OFFSET + E2E_PATTERN_LENGTH))
cmp -s -n "$E2E_PATTERN_OFFSET" $d/lun.img $d/before.img ||
  fail "LUN changed before the pattern region"
cmp -s -i "$end:$end" $d/lun.img $d/before.img ||
  fail "LUN changed after the pattern region"
echo PASS
