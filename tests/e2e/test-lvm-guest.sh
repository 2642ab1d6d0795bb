#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# e2e: a real guest boots with its disk served from an LV (a striped
# segment followed by a linear one, over two PV image files made by the
# real lvm2 tools).  Afterwards the guest's writes are found in the PV
# files where lvs says the LV's extents are, and nothing else changed.
source "${TOP_SRCDIR:-$(dirname "$0")/../..}/tests/functions.sh"
source "$TOP_SRCDIR/tests/e2e/pattern.sh"
source "$TOP_SRCDIR/tests/lvm/lvm-lib.sh"
requires qemu-system-x86_64

cd "$tmpdir"
truncate -s 48M p1.img p2.img
lvm_attach p1.img L1; lvm_attach p2.img L2
maps="$L1=p1.img $L2=p2.img"
lvm_q pvcreate -q "$L1" "$L2"
lvm_q vgcreate -q -s 1m vge "$L1" "$L2"
lvm_q lvcreate -q -an -Zn -L 4M -n bystander vge "$L1"
lvm_q lvcreate -q -an -Zn -i2 -I 64k -L 8M -n guest vge "$L1" "$L2"
lvm_q lvextend -q -i1 -L +8M vge/guest "$L2"
lvm_layout collect layout.json
for lv in guest bystander; do
  random_file $lv.data $(lvm_layout size layout.json vge $lv)
  lvm_layout scatter layout.json vge $lv $lv.data $maps
done

start_nbdkit "$tmpdir/sock" "$(plugin_so lvm)" pv=p1.img pv=p2.img
rc=0
bash "$TOP_SRCDIR/tests/e2e/guest-run.sh" qemu "$(uri_of "$tmpdir/sock" guest)" || rc=$?
[ $rc != 77 ] || exit 77            # no guest kernel here: skip (fails in CI)
[ $rc = 0 ] || fail "guest run failed (status $rc)"
stop_nbdkit

# The LV as stored in the PV files (per lvs): the pattern at its offset,
# every other byte as before.
lvm_layout gather layout.json vge guest guest.after $maps
e2e_verify_backend_raw guest.after || fail "pattern not in the PV files"
end=$((E2E_PATTERN_OFFSET + E2E_PATTERN_LENGTH))
cmp -s -n "$E2E_PATTERN_OFFSET" guest.after guest.data || fail "LV changed before the pattern"
cmp -s -i "$end:$end" guest.after guest.data || fail "LV changed after the pattern"
lvm_layout gather layout.json vge bystander bystander.after $maps
assert_same bystander.after bystander.data "the other LV"
echo PASS
