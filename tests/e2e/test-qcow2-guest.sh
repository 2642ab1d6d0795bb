#!/bin/bash
# SPDX-License-Identifier: BSD-3-Clause
# e2e: a real guest (tests/e2e harness, QEMU runner) whose disk is a qcow2
# overlay served by the qcow2 plugin: 16 MiB, extended L2 entries, over a
# compressed qcow2 base full of data (so the guest's writes go through
# copy-on-write of compressed backing clusters).  The harness checks the
# guest's view; afterwards QEMU reads the qcow2 file itself: qemu-img
# check is clean, the pattern is in the image (qemu-img convert), every
# other byte is unchanged, and the base image was not touched.
source "${TOP_SRCDIR:?run the tests through ctest, which sets TOP_SRCDIR}/tests/functions.sh"
source "$TOP_SRCDIR/tests/e2e/pattern.sh"
requires nbdkit qemu-system-x86_64 qemu-img nbdcopy nbdinfo
requires_plugin qcow2

cd "$tmpdir"
random_file data.raw 12M
qemu-img convert -c -f raw -O qcow2 -o cluster_size=4096,compression_type=zstd \
  data.raw base.qcow2
qemu-img create -q -f qcow2 -o cluster_size=65536,extended_l2=on \
  -b base.qcow2 -F qcow2 disk.qcow2 16M
qemu-io -f qcow2 -c 'write -P 0x3c 1500k 100k' -c 'write -z 14M 512k' \
  disk.qcow2 >/dev/null
qemu-img convert -f qcow2 -O raw disk.qcow2 before.raw
cp base.qcow2 base.orig

start_nbdkit "$tmpdir/sock" "$(plugin_so qcow2)" file="$tmpdir/disk.qcow2"
rc=0
bash "$TOP_SRCDIR/tests/e2e/guest-run.sh" qemu "$(uri_of "$tmpdir/sock")" || rc=$?
[ $rc != 77 ] || exit 77
[ $rc = 0 ] || fail "guest run failed (status $rc)"
stop_nbdkit

qemu_img_check disk.qcow2
qemu-img convert -f qcow2 -O raw disk.qcow2 after.raw
e2e_verify_backend_raw after.raw || fail "pattern not in the qcow2 image"
end=$((E2E_PATTERN_OFFSET + E2E_PATTERN_LENGTH))
cmp -s -n "$E2E_PATTERN_OFFSET" after.raw before.raw ||
  fail "image changed before the pattern region"
cmp -s -i "$end:$end" after.raw before.raw ||
  fail "image changed after the pattern region"
cmp -s base.qcow2 base.orig || fail "the backing file was modified"
echo PASS
