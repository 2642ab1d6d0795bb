#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# An image on a block device whose size is not a whole number of
# clusters (a partition, a loop device): the device cannot be extended and
# nothing is allocated past its end, so a flush must not try to extend it
# (ftruncate on a block device fails with EINVAL, and every flush that
# wrote metadata failed).
source "${TOP_SRCDIR:?run the tests through ctest, which sets TOP_SRCDIR}/tests/functions.sh"
source "$TOP_SRCDIR/tests/qcow2/qcow2-functions.sh"
requires losetup
requires_root
requires_nbdsh

cd "$tmpdir"
truncate -s $((8 * 1024 * 1024 + 3 * 512)) dev.img   # 8 MiB + 3 sectors
dev=$(losetup -f --show dev.img 2>/dev/null) ||
  skip "loop devices are unavailable (losetup -f failed)"
cleanup_add "losetup -d '$dev'"
qemu-img create -q -f qcow2 "$dev" 4M
new_sock
start_nbdkit "$sock" "$(plugin_so qcow2)" file="$dev"
PATH="/usr/bin:$PATH" nbdsh -u "$(uri_of "$sock")" -c "
h.pwrite(b'a' * 65536, 0)
h.flush()
h.pwrite(b'b' * 65536, 1 << 20)
h.flush()
" || fail "writing to an image on a block device of $(blockdev --getsize64 "$dev") bytes"
stop_nbdkit
qemu-io -f qcow2 -c 'read -P 0x61 0 64k' -c 'read -P 0x62 1M 64k' "$dev" |
  grep -q 'verification failed' && fail "data lost"
qemu_img_check "$dev"
echo PASS
