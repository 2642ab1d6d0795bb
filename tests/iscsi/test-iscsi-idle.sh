#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# Idle sessions stay logged in when the target pings them.  The target is
# set to send a NOP-In every 2 seconds on every connection and to drop a
# connection after 2 unanswered pings, so a session that nobody answers
# for is gone within about 6 s (Linux LIO pings every 15 s by default).
# tgtd gives every ping a new target transfer tag and accepts only the
# answer to the latest one: an answer must arrive before the next ping.
# The plugin tends idle sessions once a second, so a 1-second interval
# would race with it (answers landing just after the next ping, seen
# under load); 2 s leaves it a full tick.
#
# First the plugin must hold several sessions, whatever the timing: tgtd
# is stopped (SIGSTOP) while a client puts N reads in flight, so no read
# can complete and give its session back, and each read beyond the first
# must log in a session of its own (the kernel still completes the TCP
# handshakes).  Once N connections to the portal are established, tgtd
# resumes and every read completes.  Then the connection stays idle for
# 10 s: the target's I_T nexuses (one per session) must be exactly the
# same before and after, and the plugin must not have had to reconnect
# any of them.
source "${TOP_SRCDIR:?run the tests through ctest, which sets TOP_SRCDIR}/tests/functions.sh"
source "$TOP_SRCDIR/tests/iscsi/common.sh"

d=$tmpdir
tgtd_random_lun $((16 * 1024 * 1024))
tgtd_cmd --op update --mode target --tid 1 --name nop_interval --value 2
tgtd_cmd --op update --mode target --tid 1 --name nop_count --value 2

sock=$d/sock
start_nbdkit $sock -v "$(plugin_so iscsi)" url=$(tgtd_url $IQN 1) 2>$d/nbdkit.log

export TGTD_CTL TGTD_PID TGTD_PORT
PATH="/usr/bin:$PATH" timeout 120 nbdsh -u "$(uri_of $sock)" -c "
import os, re, signal, subprocess, time
N = 4                           # reads held in flight = sessions needed
tgtd = int(os.environ['TGTD_PID'])
port = int(os.environ['TGTD_PORT'])
data = open('$d/lun.img', 'rb').read()

def nexuses():
    out = subprocess.run(['tgtadm', '-C', os.environ['TGTD_CTL'], '--lld',
                          'iscsi', '--op', 'show', '--mode', 'target'],
                         check=True, capture_output=True, text=True).stdout
    return sorted(re.findall(r'I_T nexus: (\d+)', out))

# Established TCP connections to the portal, counted on the client side
# (remote port = the portal): the kernel completes them even while tgtd
# is stopped.
def connections():
    n = 0
    with open('/proc/net/tcp') as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            if fields[3] == '01' and int(fields[2].split(':')[1], 16) == port:
                n += 1
    return n

# Poll until cond() holds, for at most timeout seconds.
def wait_until(cond, timeout, what):
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError('after %d s: %s' % (timeout, what()))
        h.poll(50)              # also lets libnbd send what it queued

def check(bufs, what):
    for i, b in enumerate(bufs):
        assert b.to_bytearray() == data[i * 65536:i * 65536 + 4096], \
            '%s: read %d' % (what, i)

def burst():
    bufs = [nbd.Buffer(4096) for i in range(16)]
    for i, b in enumerate(bufs):
        h.aio_pread(b, i * 65536)
    while h.aio_in_flight() > 0:
        h.poll(-1)
    check(bufs, 'burst')

wait_until(lambda: len(nexuses()) == 1, 20,
           lambda: 'expected the first session only, tgtd shows %s' % nexuses())

# N reads held in flight by a stopped target.
os.kill(tgtd, signal.SIGSTOP)
try:
    bufs = [nbd.Buffer(4096) for i in range(N)]
    for i, b in enumerate(bufs):
        h.aio_pread(b, i * 65536)
    wait_until(lambda: connections() >= N, 30,
               lambda: 'expected %d connections to the portal with %d reads '
                       'in flight, found %d' % (N, N, connections()))
    assert h.aio_in_flight() == N, \
        'a read completed while the target was stopped'
finally:
    os.kill(tgtd, signal.SIGCONT)
while h.aio_in_flight() > 0:
    h.poll(-1)
check(bufs, 'held reads')

# Every login has completed by now (each read ran on its own session);
# poll anyway rather than rely on when tgtd lists a nexus.
wait_until(lambda: len(nexuses()) >= N, 20,
           lambda: 'expected >= %d sessions, tgtd shows %s' % (N, nexuses()))
before = nexuses()
print('sessions (I_T nexuses):', before)
time.sleep(10)
after = nexuses()
assert after == before, 'sessions dropped while idle: %s before, %s after' % (before, after)
burst()
" || fail "idle sessions were not kept alive"

grep -q 'session lost' $d/nbdkit.log &&
  fail "the plugin had to reconnect: $(grep 'session lost' $d/nbdkit.log | head -3)"
stop_nbdkit
echo OK
