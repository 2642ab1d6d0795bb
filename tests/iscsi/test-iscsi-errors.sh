#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# SCSI errors from a real target reach the NBD client as the documented
# errno: the LUN is made read-only in tgtd while a client is connected
# (the plugin still believes it writable), so the next WRITE gets CHECK
# CONDITION / DATA PROTECT, which must arrive as EPERM, not EIO; reads go
# on working and writes work again once the LUN is writable.
# Then a LUN whose backing file lives on a full 1 MiB tmpfs: tgtd's own
# pwrite fails with ENOSPC and it answers MEDIUM ERROR, which must arrive
# as EIO, while the data already written stays readable.
# Last, a LUN that shrinks under a connected client (tgtd replaces it with
# a smaller one): a write past the new end gets ILLEGAL REQUEST / LBA OUT
# OF RANGE, which must arrive as ENOSPC; writes inside still work.
source "${TOP_SRCDIR:?run the tests through ctest, which sets TOP_SRCDIR}/tests/functions.sh"
source "$TOP_SRCDIR/tests/iscsi/common.sh"

d=$tmpdir
tgtd_random_lun $((8 * 1024 * 1024))

sock=$d/sock
start_nbdkit $sock "$(plugin_so iscsi)" url=$(tgtd_url $IQN 1) 2>$d/nbdkit.log

export TGTD_CTL
PATH="/usr/bin:$PATH" timeout 120 nbdsh -u "$(uri_of $sock)" -c "
import errno, os, subprocess
def lun_readonly(v):
    subprocess.run(['tgtadm', '-C', os.environ['TGTD_CTL'], '--lld', 'iscsi',
                    '--op', 'update', '--mode', 'logicalunit', '--tid', '1',
                    '--lun', '1', '--params', 'readonly=%d' % v], check=True)
assert not h.is_read_only()
h.pwrite(b'A' * 4096, 0)
lun_readonly(1)
try:
    h.pwrite(b'B' * 4096, 8192)
except nbd.Error as e:
    assert e.errnum == errno.EPERM, 'write to a write-protected LUN: %s' % e
else:
    raise AssertionError('write to a write-protected LUN succeeded')
assert h.pread(4096, 0) == b'A' * 4096, 'read while write-protected'
lun_readonly(0)
h.pwrite(b'C' * 4096, 8192)
h.flush()
" || fail "errors from the target did not map as documented"

grep -q 'DATA PROTECT' $d/nbdkit.log ||
  fail "the error message does not name the sense key: $(grep -i error $d/nbdkit.log | tail -3)"
head -c 4096 $d/lun.img | cmp - <(printf 'A%.0s' $(seq 4096)) || fail "first write missing"
dd if=$d/lun.img bs=4096 skip=2 count=1 status=none |
  cmp - <(printf 'C%.0s' $(seq 4096)) || fail "write after the LUN became writable again missing"
stop_nbdkit

# --- MEDIUM ERROR: the target's backing store is full ----------------------
mkdir $d/full
mount -t tmpfs -o size=1m tmpfs $d/full ||
  skip "cannot mount a tmpfs (needs root) for the full-backing-store case"
cleanup_add "umount -l '$d/full'"
truncate -s 8M $d/full/lun2.img
tgtd_cmd --op new --mode logicalunit --tid 1 --lun 2 -b $d/full/lun2.img
start_nbdkit $d/sock2 "$(plugin_so iscsi)" url=$(tgtd_url $IQN 2) 2>$d/nbdkit2.log

PATH="/usr/bin:$PATH" timeout 120 nbdsh -u "$(uri_of $d/sock2)" -c "
import errno
h.pwrite(b'M' * 262144, 0)
h.flush()
failed = None
for i in range(1, 8):        # 8 MiB LUN, 1 MiB of space behind it
    try:
        h.pwrite(b'N' * 1048576, i * 1048576)
    except nbd.Error as e:
        failed = e
        break
assert failed is not None, 'writing 7 MiB to a LUN with 1 MiB of backing store succeeded'
assert failed.errnum == errno.EIO, 'write to a full backing store: %s' % failed
assert h.pread(262144, 0) == b'M' * 262144, 'data written before the store filled'
" || fail "MEDIUM ERROR from the target did not arrive as EIO"

grep -q 'MEDIUM ERROR' $d/nbdkit2.log ||
  fail "the error message does not name the sense key: $(grep -i error $d/nbdkit2.log | tail -3)"
head -c 262144 $d/full/lun2.img | cmp - <(head -c 262144 /dev/zero | tr '\0' M) ||
  fail "data written before the store filled is not in the backing file"
stop_nbdkit

# --- LBA OUT OF RANGE: the LUN shrinks under the client ---------------------
random_file $d/lun3.img $((8 * 1024 * 1024))
random_file $d/lun3-small.img $((2 * 1024 * 1024))
tgtd_cmd --op new --mode logicalunit --tid 1 --lun 3 -b $d/lun3.img
start_nbdkit $d/sock3 "$(plugin_so iscsi)" url=$(tgtd_url $IQN 3) 2>$d/nbdkit3.log

PATH="/usr/bin:$PATH" timeout 120 nbdsh -u "$(uri_of $d/sock3)" -c "
import errno, os, subprocess
def lun3(op, *args):
    subprocess.run(['tgtadm', '-C', os.environ['TGTD_CTL'], '--lld', 'iscsi',
                    '--op', op, '--mode', 'logicalunit', '--tid', '1',
                    '--lun', '3'] + list(args), check=True)
assert h.get_size() == 8 * 1024 * 1024
lun3('delete')
lun3('new', '-b', '$d/lun3-small.img')
try:
    h.pwrite(b'O' * 4096, 4 * 1024 * 1024)
except nbd.Error as e:
    assert e.errnum == errno.ENOSPC, 'write past the end of a shrunk LUN: %s' % e
else:
    raise AssertionError('write past the end of a shrunk LUN succeeded')
h.pwrite(b'P' * 4096, 4096)
h.flush()
" || fail "LBA OUT OF RANGE from the target did not arrive as ENOSPC"

grep -q 'ILLEGAL REQUEST' $d/nbdkit3.log ||
  fail "the error message does not name the sense key: $(grep -i error $d/nbdkit3.log | tail -3)"
dd if=$d/lun3-small.img bs=4096 skip=1 count=1 status=none |
  cmp - <(head -c 4096 /dev/zero | tr '\0' P) || fail "write inside the shrunk LUN missing"
[ "$(stat -c %s $d/lun3-small.img)" = $((2 * 1024 * 1024)) ] ||
  fail "the shrunk LUN's backing file grew"
stop_nbdkit
echo OK
