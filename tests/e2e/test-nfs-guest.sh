#!/bin/bash
# SPDX-License-Identifier: BSD-3-Clause
# e2e: a real guest (tests/e2e harness, QEMU runner, unix socket) whose
# disk is a qcow2 overlay on an NFS server, served by the qcow2 plugin with
# file=nfs://127.0.0.1/export/vm/disk.qcow2 (no mount): the overlay and its
# compressed base live in the export of a private nfs-ganesha, the base is
# found beside the overlay on the export.  Afterwards QEMU reads the local
# files of the export: qemu-img check is clean, the pattern is in the
# image, every other byte is unchanged, the base was not touched.  The
# whole script runs in a private network namespace (tests/nfs/nfs-server.sh).
source "$TOP_SRCDIR/tests/nfs/nfs-server.sh"
nfs_netns "$0" "$@"
source "${TOP_SRCDIR:?run the tests through ctest, which sets TOP_SRCDIR}/tests/functions.sh"
source "$TOP_SRCDIR/tests/e2e/pattern.sh"
requires nbdkit qemu-system-x86_64 qemu-img nbdcopy nbdinfo
requires_plugin qcow2

nfs_server_start "$tmpdir/export"
mkdir "$NFS_DIR/vm"
cd "$NFS_DIR/vm"
random_file "$tmpdir/data.raw" 12M
qemu-img convert -c -f raw -O qcow2 -o cluster_size=4096 "$tmpdir/data.raw" base.qcow2
qemu-img create -q -f qcow2 -o cluster_size=65536 -b base.qcow2 -F qcow2 disk.qcow2 16M
qemu-io -f qcow2 -c 'write -P 0x3c 1500k 100k' -c 'write -z 14M 512k' \
  disk.qcow2 >/dev/null
qemu-img convert -f qcow2 -O raw disk.qcow2 "$tmpdir/before.raw"
cp base.qcow2 "$tmpdir/base.orig"

start_nbdkit "$tmpdir/sock" "$(plugin_so qcow2)" "file=$NFS_URL/vm/disk.qcow2?timeout=30"
rc=0
bash "$TOP_SRCDIR/tests/e2e/guest-run.sh" qemu "$(uri_of "$tmpdir/sock")" || rc=$?
[ $rc != 77 ] || exit 77
[ $rc = 0 ] || fail "guest run failed (status $rc)"
stop_nbdkit

qemu_img_check disk.qcow2
qemu-img convert -f qcow2 -O raw disk.qcow2 "$tmpdir/after.raw"
e2e_verify_backend_raw "$tmpdir/after.raw" || fail "pattern not in the qcow2 image on NFS"
end=$((E2E_PATTERN_OFFSET + E2E_PATTERN_LENGTH))
cmp -s -n "$E2E_PATTERN_OFFSET" "$tmpdir/after.raw" "$tmpdir/before.raw" ||
  fail "image changed before the pattern region"
cmp -s -i "$end:$end" "$tmpdir/after.raw" "$tmpdir/before.raw" ||
  fail "image changed after the pattern region"
cmp -s base.qcow2 "$tmpdir/base.orig" || fail "the backing file was modified"
echo PASS
