#!/bin/bash
# SPDX-License-Identifier: BSD-3-Clause
# e2e: a real guest (QEMU runner) booting from the snapshot filter over a
# raw image (nbdkit's file plugin).  Boot 1 writes the pattern at 1 MiB;
# snapshot s1; boot 2 writes it at 4 MiB (KVM_E2E_PATTERN_OFFSET); @s1
# still shows the state of s1; revert to s1; nbdkit restarted; boot 3 sees
# the disk exactly as it was at s1 (the guest's own checksum of the whole
# disk equals that of s1).  The raw image is untouched throughout, every
# layer passes qemu-img check.
source "${TOP_SRCDIR:?run the tests through ctest, which sets TOP_SRCDIR}/tests/functions.sh"
source "$TOP_SRCDIR/tests/e2e/pattern.sh"
requires nbdkit qemu-system-x86_64 qemu-img nbdcopy
requires_filter snapshot
ctl="$TOP_BUILDDIR/filters/snapshot/nbdkit-snapshot-ctl"

cd "$tmpdir"
random_file disk.raw 16M
cp disk.raw disk.orig
serve () {
  rm -f "$tmpdir/sock"
  start_nbdkit "$tmpdir/sock" --filter="$(filter_so snapshot)" file \
    file="$tmpdir/disk.raw" overlay-dir="$tmpdir/ovl" control="$tmpdir/ctl.sock"
}
uri=$(uri_of "$tmpdir/sock")
boot () {   # OFFSET: one guest run writing the pattern there
  local rc=0
  KVM_E2E_PATTERN_OFFSET=$1 bash "$TOP_SRCDIR/tests/e2e/guest-run.sh" qemu "$uri" \
    > "$tmpdir/boot.log" 2>&1 || rc=$?
  cat "$tmpdir/boot.log"
  [ $rc != 77 ] || exit 77
  [ $rc = 0 ] || fail "guest run failed (status $rc)"
}

serve
boot 1048576
nbdcopy -- "$uri" s1.raw
"$ctl" "$tmpdir/ctl.sock" create s1 || fail "create s1"
boot 4194304
nbdcopy -- "$(uri_of "$tmpdir/sock" @s1)" at-s1.raw
cmp -s at-s1.raw s1.raw || fail "@s1 changed after the second boot"
nbdcopy -- "$uri" both.raw
cmp -s both.raw s1.raw && fail "the second boot wrote nothing"
"$ctl" "$tmpdir/ctl.sock" revert s1 || fail "revert s1"
nbdcopy -- "$uri" reverted.raw
cmp -s reverted.raw s1.raw || fail "the disk after revert is not s1"
stop_nbdkit
cmp -s disk.raw disk.orig || fail "the raw image below was written"
for l in ovl/layer-*.qcow2; do qemu_img_check "$l"; done

# Boot 3, after a restart: the guest sees s1's state.
serve
boot 4194304
s1_sum=$(sha256sum < s1.raw); s1_sum=${s1_sum%% *}
g_before=$(sed -n 's/.*guest checksum before write: //p' "$tmpdir/boot.log")
[ "$g_before" = "$s1_sum" ] ||
  fail "the guest saw $g_before before writing, s1 is $s1_sum"
echo "guest after revert and restart sees s1 ($s1_sum)"
stop_nbdkit
cmp -s disk.raw disk.orig || fail "the raw image below was written"
for l in ovl/layer-*.qcow2; do qemu_img_check "$l"; done
echo PASS
