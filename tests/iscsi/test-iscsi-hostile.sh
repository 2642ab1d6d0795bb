#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# A target that lies: tests/iscsi/fake-target.py answers with values the
# plugin must not trust (tgtd cannot be made to).  Each case needs a clear
# error or a sane result, never a crash, a hang, or stale memory sent to
# the client as data:
#   - impossible block sizes and capacities, a LUN that is not a disk:
#     the connection is refused with a message naming the problem;
#   - a READ answered with less data than asked, flagged as residual or
#     not flagged at all: EIO, not the buffer's old contents;
#   - a READ that makes libiscsi drop the connection every time (too much
#     data; or the target hangs up on every READ), and a WRITE whose R2T
#     asks for data outside the transfer: EIO after a bounded number of
#     reconnects, and nbdkit still stops;
#   - extreme or truncated Block Limits VPD: data still reads correctly,
#     the preferred block size is a power of 2;
#   - GET LBA STATUS descriptors that skip, wrap, overflow or run past
#     the end: a map that covers the disk exactly, data intact;
#   - REPORT LUNS with a length beyond its data, duplicate and unusable
#     LUN addresses;
#   - a LUN of 2^33 blocks that rejects FUA writes: no fall back to
#     10-byte CDBs, writes land at their LBA;
#   - a READ answered RECOVERED ERROR without data: EIO;
#   - no SYNCHRONIZE CACHE: a flush fails unless the LUN has no cache;
#   - a WRITE that never completes: ABORT TASK before the EIO.
# The "good" profile first shows that the fake target itself works, so
# the failures below are the plugin's reaction to the lies alone.
source "${TOP_SRCDIR:?run the tests through ctest, which sets TOP_SRCDIR}/tests/functions.sh"

requires_plugin iscsi
requires python3 nbdinfo nbdcopy nbdsh timeout cmp

requires_nbdsh

d=$tmpdir
size=$((4 * 1024 * 1024))

# The fake target's disk: byte at offset o is (o // 512 + o) & 255.
python3 -c "
import sys
ramp = bytes(range(256)) * 3
sys.stdout.buffer.write(b''.join(ramp[b & 255:(b & 255) + 512]
                                 for b in range($size // 512)))
" > $d/expected

# target PROFILE: start the fake target; sets target_url (LUN 0).
target () {
  rm -f $d/port
  python3 "$TOP_SRCDIR/tests/iscsi/fake-target.py" $d/port "$1" \
    2>$d/target-$1.log &
  local pid=$!
  kill_at_exit $pid TERM
  for (( i=0; i<100; i++ )); do
    [ -s $d/port ] && break
    kill -0 $pid 2>/dev/null || fail "fake target ($1) did not start"
    sleep 0.05
  done
  target_pid=$pid
  target_url=iscsi://127.0.0.1:$(cat $d/port)/iqn.2026-11.example:fake
}

# serve PROFILE [PARAMS...]: fake target + nbdkit on $sock, log $log.
serve () {
  local profile=$1; shift
  target $profile
  sock=$d/$profile.sock
  log=$d/$profile.log
  start_nbdkit $sock "$(plugin_so iscsi)" url=$target_url/0 timeout=10 \
    "$@" 2>$log
}

# finish: nbdkit must still be running, and stop within 10 s.
finish () {
  kill -0 $nbdkit_pid 2>/dev/null || fail "$1: nbdkit died (see $log)"
  kill $nbdkit_pid
  for (( i=0; i<200; i++ )); do
    kill -0 $nbdkit_pid 2>/dev/null || break
    sleep 0.05
  done
  ! kill -0 $nbdkit_pid 2>/dev/null || fail "$1: nbdkit did not stop"
  kill $target_pid 2>/dev/null || :
}

expect_log () {
  grep -q -- "$2" $log || { cat $log >&2; fail "$1: no \"$2\" in the log"; }
}

# --- the fake target works ---------------------------------------------------
serve good
nbdcopy "$(uri_of $sock)" $d/out
cmp $d/out $d/expected || fail "good: data differs from the fake target's"
nbdsh -u "$(uri_of $sock)" -c "
exp = open('$d/expected', 'rb').read()
h.pwrite(b'W' * 1536, 1024)
assert h.pread(4096, 0) == exp[:1024] + b'W' * 1536 + exp[2560:4096]
"
finish good

# --- LUNs that cannot be served ---------------------------------------------
for c in "block-size-0:unsupported logical block size 0 " \
         "block-size-520:unsupported logical block size 520 " \
         "block-size-1m:unsupported logical block size 1048576 " \
         "last-lba-max:READ CAPACITY(16) returned an invalid last LBA" \
         "capacity-overflow:LUN capacity of 4611686018427387905 blocks of 4096 bytes is too large" \
         "not-a-disk:is not a block device (peripheral qualifier 0, device type 5)"; do
  profile=${c%%:*} msg=${c#*:}
  serve $profile
  if timeout 60 nbdinfo "$(uri_of $sock)" >$d/info 2>&1; then
    fail "$profile: nbdinfo succeeded: $(cat $d/info)"
  fi
  expect_log $profile "$msg"
  finish $profile
done

# --- short reads -------------------------------------------------------------
# nbdkit hands the plugin a buffer it does not clear.  A write first
# leaves 64 KiB of 'M' in freed memory, where nbdkit is likely to put the
# read's buffer: before the plugin checked, the read returned them.
for c in "short-read-flagged:the target transferred 32768 bytes fewer than the 65536 asked for" \
         "short-read-silent:the target reported success but did not send all the data"; do
  profile=${c%%:*} msg=${c#*:}
  serve $profile
  nbdsh -u "$(uri_of $sock)" -c "
import errno
h.pwrite(b'M' * 65536, 65536)
try:
    buf = h.pread(65536, 131072)
except nbd.Error as e:
    assert e.errnum == errno.EIO, e
else:
    raise AssertionError('short read returned data: %r' % buf[-16:])
"
  expect_log $profile "$msg"
  finish $profile
done

# eio_within_60s PROFILE PYTHON-CALL LOG-MESSAGE: on a fresh server for
# PROFILE, the call must fail with EIO, within 60 s, and the log must say
# why; then nbdkit must stop.
eio_within_60s () {
  local profile=$1 call=$2 msg=$3 start
  serve $profile
  start=$SECONDS
  PATH="/usr/bin:$PATH" timeout 120 nbdsh -u "$(uri_of $sock)" -c "
import errno
try:
    h.$call
except nbd.Error as e:
    assert e.errnum == errno.EIO, e
else:
    raise AssertionError('the request succeeded')
" || fail "$profile: $call did not fail with EIO (or hung)"
  [ $((SECONDS - start)) -lt 60 ] || fail "$profile: $call took $((SECONDS - start)) s"
  expect_log $profile "$msg"
  finish $profile
}

# --- reads that break the connection every time ------------------------------
for profile in long-read drop-on-read; do
  eio_within_60s $profile "pread(4096, 0)" \
    "READ at LBA 0, 8 blocks failed: the connection to the target broke 4 times"
done

# --- writes driven by R2T ------------------------------------------------------
# The target asks for the data: correctly; for 64 KiB after the end of
# the transfer; for 2 GiB.  libiscsi must not send memory beyond the
# client's buffer (under ASan the socket calls' buffers are checked); the
# bad requests make it drop the connection, so the write fails like a bad
# READ.
serve r2t-exact
nbdsh -u "$(uri_of $sock)" -c "
h.pwrite(b'Q' * 65536, 131072)
assert h.pread(65536, 131072) == b'Q' * 65536
"
finish r2t-exact
for profile in r2t-beyond r2t-huge; do
  eio_within_60s $profile "pwrite(b'Q' * 65536, 131072)" \
    "WRITE at LBA 256, 128 blocks failed: the connection to the target broke 4 times"
done

# --- limits --------------------------------------------------------------------
for profile in limits-extreme vpd-b0-truncated; do
  serve $profile
  nbdinfo --json "$(uri_of $sock)" > $d/info.json
  python3 -c "
import json, sys
e = json.load(open('$d/info.json'))['exports'][0]
p = e['block_size_preferred']
assert p & (p - 1) == 0 and p >= e['block_size_minimum'], e
assert e['export-size'] == $size, e
" || fail "$profile: bad block sizes: $(cat $d/info.json)"
  nbdcopy "$(uri_of $sock)" $d/out
  cmp $d/out $d/expected || fail "$profile: data differs"
  finish $profile
done

# --- FUA and 16-byte CDBs on a LUN of 2^33 blocks -----------------------------
# A rejected FUA write is no sign that 16-byte CDBs are missing: the
# write succeeds (FUA emulated by a flush, or retried without FUA), and a
# later write past 2^32 blocks reaches its own LBA, not LBA 5.
for profile in big-lio big-fua-rejected; do
  serve $profile
  PATH="/usr/bin:$PATH" nbdsh -u "$(uri_of $sock)" -c "
h.pwrite(b'A' * 512, 0, nbd.CMD_FLAG_FUA)
h.pwrite(b'B' * 512, ((1 << 32) + 5) * 512)
assert h.pread(512, 5 * 512) == bytes(512), 'LBA 5 was written'
assert h.pread(512, ((1 << 32) + 5) * 512) == b'B' * 512
assert h.pread(512, 0) == b'A' * 512
" || fail "$profile: FUA or high LBA writes went wrong (see $log, $d/target-$profile.log)"
  ! grep -q "WRITE(10)" $d/target-$profile.log ||
    fail "$profile: the plugin fell back to 10-byte CDBs"
  finish $profile
done

# --- READ answered RECOVERED ERROR without data ------------------------------------
eio_within_60s recovered-read "pread(4096, 0)" \
  "READ at LBA 0, 8 blocks: the target"

# --- no SYNCHRONIZE CACHE -------------------------------------------------------------
# With a write cache (WCE) a flush cannot be done: it fails.  Without one
# there is nothing to flush.
eio_within_60s no-sync-cache "flush()" \
  "rejects SYNCHRONIZE CACHE and does not report that it has no write cache"
serve no-sync-cache-no-wce
PATH="/usr/bin:$PATH" nbdsh -u "$(uri_of $sock)" -c "
h.pwrite(b'F' * 512, 0)
h.flush()
" || fail "no-sync-cache-no-wce: flush failed"
finish no-sync-cache-no-wce

# --- a WRITE that times out is aborted before the error is reported ---------------
serve write-hangs timeout=2
start=$SECONDS
PATH="/usr/bin:$PATH" timeout 60 nbdsh -u "$(uri_of $sock)" -c "
import errno
try:
    h.pwrite(b'T' * 4096, 0)
except nbd.Error as e:
    assert e.errnum == errno.EIO, e
else:
    raise AssertionError('the write succeeded')
" || fail "write-hangs: the write did not fail with EIO"
grep -q "FAKE: TMF function=1" $d/target-write-hangs.log ||
  fail "write-hangs: no ABORT TASK for the timed-out WRITE: $(cat $d/target-write-hangs.log)"
echo "ok: timed-out WRITE aborted ($((SECONDS - start)) s)"
finish write-hangs

# --- GET LBA STATUS ----------------------------------------------------------------
# Expected maps (start length type): the plugin believes a descriptor only
# when it starts where the previous one ended and has blocks; anything it
# cannot use is reported as data.
check_map () {
  local profile=$1; shift
  serve $profile
  nbdinfo --map "$(uri_of $sock)" | awk '{ print $1, $2, $3 }' > $d/map
  printf '%s\n' "$@" > $d/map.expected
  cmp -s $d/map $d/map.expected ||
    fail "$profile: map $(tr '\n' ';' < $d/map) expected $(tr '\n' ';' < $d/map.expected)"
  nbdcopy "$(uri_of $sock)" $d/out
  cmp $d/out $d/expected || fail "$profile: data differs"
  finish $profile
}
check_map lba-status-hostile "0 $size 0"
check_map lba-status-overflow "0 $size 1"
check_map lba-status-wrap "0 4096 0" "4096 $((size - 4096)) 1"
check_map lba-status-past-end "0 $((size - 512)) 1" "$((size - 512)) 512 0"

# --- REPORT LUNS -------------------------------------------------------------------
target report-luns-overlong
start_nbdkit $d/rl.sock "$(plugin_so iscsi)" url=$target_url 2>$d/rl.log
log=$d/rl.log
if timeout 60 nbdinfo --list "$(uri_of $d/rl.sock)" >$d/list 2>&1; then
  fail "report-luns-overlong: the list succeeded: $(cat $d/list)"
fi
expect_log report-luns-overlong "cannot parse REPORT LUNS data"
finish report-luns-overlong

target report-luns-odd
start_nbdkit $d/rl2.sock "$(plugin_so iscsi)" url=$target_url 2>$d/rl2.log
log=$d/rl2.log
timeout 60 nbdinfo --list --json "$(uri_of $d/rl2.sock)" > $d/list.json
python3 -c "
import json
names = [e['export-name'] for e in json.load(open('$d/list.json'))['exports']]
assert names == ['0', '1'], names
" || fail "report-luns-odd: exports $(cat $d/list.json)"
finish report-luns-odd

echo "PASS"
