#!/usr/bin/env bash
# Idle sessions stay logged in when the target pings them.  The target is
# set to send a NOP-In every second on every connection and to drop a
# connection after 3 unanswered pings (Linux LIO does the same every 15 s
# by default).  A client puts 16 reads in flight, so the plugin logs in
# several sessions, then stays idle for 8 s: the target's I_T nexuses
# (one per session) must be exactly the same before and after, and the
# plugin must not have had to reconnect any of them.
source "$TOP_SRCDIR/tests/functions.sh"
source "$TOP_SRCDIR/tests/iscsi/common.sh"

d=$tmpdir
tgtd_random_lun $((16 * 1024 * 1024))
tgtd_cmd --op update --mode target --tid 1 --name nop_interval --value 1
tgtd_cmd --op update --mode target --tid 1 --name nop_count --value 3

sock=$d/sock
start_nbdkit $sock -v "$(plugin_so iscsi)" url=$(tgtd_url $IQN 1) 2>$d/nbdkit.log

export TGTD_CTL
nbdsh -u "$(uri_of $sock)" -c "
import os, re, subprocess, time
def nexuses():
    out = subprocess.run(['tgtadm', '-C', os.environ['TGTD_CTL'], '--lld',
                          'iscsi', '--op', 'show', '--mode', 'target'],
                         check=True, capture_output=True, text=True).stdout
    return sorted(re.findall(r'I_T nexus: (\d+)', out))
def burst():
    bufs = [nbd.Buffer(4096) for i in range(16)]
    for i, b in enumerate(bufs):
        h.aio_pread(b, i * 65536)
    while h.aio_in_flight() > 0:
        h.poll(-1)
    data = open('$d/lun.img', 'rb')
    for i, b in enumerate(bufs):
        data.seek(i * 65536)
        assert b.to_bytearray() == data.read(4096), 'read %d' % i
burst()
before = nexuses()
assert len(before) >= 2, 'expected several sessions, tgtd shows %s' % before
time.sleep(8)
after = nexuses()
assert after == before, 'sessions dropped while idle: %s before, %s after' % (before, after)
burst()
" || fail "idle sessions were not kept alive"

grep -q 'session lost' $d/nbdkit.log &&
  fail "the plugin had to reconnect: $(grep 'session lost' $d/nbdkit.log | head -3)"
stop_nbdkit
echo OK
