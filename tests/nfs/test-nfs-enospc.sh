#!/bin/bash
# SPDX-License-Identifier: BSD-3-Clause
# A full export: the server's NFS3ERR_NOSPC reaches the NBD client as
# ENOSPC (libnfs 4.0 reports it as EFAULT, which nbdkit sent as EINVAL:
# call_cb in common/bdev/bdev_nfs.c), with the reason in nbdkit's log;
# a qcow2 image stays consistent (qemu-img check) and what was
# acknowledged reads back.  The export is an 8 MiB tmpfs (private mount
# namespace of nfs_netns).
source "$(dirname "$0")/nfs-server.sh"
nfs_netns "$0" "$@"
source "${TOP_SRCDIR:?run the tests through ctest, which sets TOP_SRCDIR}/tests/functions.sh"
requires_nbdsh
requires qemu-img
requires_plugin nfs
requires_plugin qcow2

mkdir -p "$tmpdir/export"
mount -t tmpfs -o size=8m kvm-nfs-full "$tmpdir/export" ||
  skip "cannot mount a tmpfs"
cleanup_add "umount -l '$tmpdir/export'"
nfs_server_start "$tmpdir/export"
cd "$NFS_DIR"

fill () {   # WHAT PLUGIN ARG
  local what=$1; shift
  local sock="$tmpdir/$what.sock"
  start_nbdkit "$sock" "$@" 2>"$tmpdir/$what.log"
  nbdsh -u "$(uri_of "$sock")" -c '
import errno
M = 1024 * 1024
h.pwrite(b"x" * M, 0)
h.flush()
try:
    for i in range(1, 32):
        h.pwrite(bytes([i]) * M, i * M)
    print("no error")
except nbd.Error as e:
    print("error:", errno.errorcode.get(e.errno, e.errno))
assert h.pread(M, 0) == b"x" * M
try:
    h.flush()           # qcow2: may need room for its tables
except nbd.Error as e:
    assert "(ENOSPC)" in str(e) or "(EIO)" in str(e), e
' > "$tmpdir/client.out" 2>&1 || fail "$what: client: $(cat "$tmpdir/client.out")"
  stop_nbdkit
  cat "$tmpdir/client.out"
  grep -qx 'error: ENOSPC' "$tmpdir/client.out" ||
    fail "$what: a full export gave $(cat "$tmpdir/client.out"), not ENOSPC"
  grep -q 'NFS3ERR_NOSPC' "$tmpdir/$what.log" ||
    fail "$what: nbdkit did not say why: $(grep -m1 error "$tmpdir/$what.log")"
  echo "ok: $what: ENOSPC"
}

truncate -s 64M disk.raw
fill raw "$(plugin_so nfs)" "url=$NFS_URL/disk.raw"
truncate -s 0 disk.raw   # ganesha may keep it open: free its blocks
rm -f disk.raw

qemu-img create -q -f qcow2 disk.qcow2 64M
fill qcow2 "$(plugin_so qcow2)" "file=$NFS_URL/disk.qcow2"
out=$(qemu-img check disk.qcow2 2>&1); echo "$out"
echo "$out" | grep -qE 'ERROR|corrupt' && fail "qemu-img check: $out"
echo "ok: qcow2: the image is consistent after ENOSPC"
echo "nfs enospc: OK"
