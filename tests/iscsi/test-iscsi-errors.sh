#!/usr/bin/env bash
# SCSI errors from a real target reach the NBD client as the documented
# errno: the LUN is made read-only in tgtd while a client is connected
# (the plugin still believes it writable), so the next WRITE gets CHECK
# CONDITION / DATA PROTECT, which must arrive as EPERM, not EIO; reads go
# on working and writes work again once the LUN is writable.
source "$TOP_SRCDIR/tests/functions.sh"
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
echo OK
