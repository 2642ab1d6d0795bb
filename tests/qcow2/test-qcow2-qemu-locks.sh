#!/bin/bash
# SPDX-License-Identifier: BSD-3-Clause
# QEMU's image locks (bdev_file.c, qemu_lock_image): an image that a QEMU
# process (here qemu-nbd, as a running guest would) has open for writing
# is refused by the plugin, and an image the plugin is writing is refused
# by qemu-img and qemu-io, as between two QEMU processes.  Without them
# "qemu-img snapshot -c" on a served image went through, and the plugin's
# next writes (with its cached L1 table) landed in the new snapshot's L2
# table: the snapshot changed and the active image lost the write.
# Read-only opens of the plugin (an internal snapshot's export beside the
# read-write active image) do not refuse each other.
source "${TOP_SRCDIR:?run the tests through ctest, which sets TOP_SRCDIR}/tests/functions.sh"
source "$TOP_SRCDIR/tests/qcow2/qcow2-functions.sh"
requires qemu-nbd
requires_nbdsh

cd "$tmpdir"
qemu-img create -q -f qcow2 img.qcow2 64M
qemu-io -c 'write -P 1 0 8M' img.qcow2 >/dev/null
qemu-img snapshot -c s img.qcow2

# start_qemu_nbd IMAGE: qemu-nbd serves IMAGE read-write (as a running
# guest has it open); sets $qbg.
qsock="$tmpdir/qemu.sock"
start_qemu_nbd () {
  rm -f "$qsock" "$qsock.pid"
  qemu-nbd -k "$qsock" -f qcow2 -t --pid-file="$qsock.pid" "$1" &
  qbg=$!
  kill_at_exit $qbg
  for (( i=0; i<200; i++ )); do [ -S "$qsock" ] && [ -s "$qsock.pid" ] && break; sleep 0.05; done
  [ -S "$qsock" ] || fail "qemu-nbd did not start"
}
# refused_at_start WHAT ARGS...: nbdkit with ARGS stops at start-up on
# the lock (its start-up check opens the image).
refused_at_start () {
  local what=$1 out; shift
  out=$(nbdkit_stops 10 -U "$tmpdir/start.sock" "$@" --run true)
  grep -q 'failed to get shared "write" lock' <<<"$out" ||
    fail "$what: no lock error at start-up: $out"
}

# 1. qemu-nbd has the image open read-write: the plugin refuses it, at
#    start-up, and to a client when qemu-nbd opened it after nbdkit
#    started.
new_sock
start_nbdkit "$sock" "$(plugin_so qcow2)" file=img.qcow2
start_qemu_nbd img.qcow2
if PATH="/usr/bin:$PATH" nbdsh -u "$(uri_of "$sock")" -c 'h.pwrite(b"x" * 512, 0)' 2>/dev/null; then
  fail "the plugin wrote into an image that qemu-nbd has open for writing"
fi
stop_nbdkit
refused_at_start "read-write" "$(plugin_so qcow2)" file=img.qcow2
kill $qbg; wait $qbg 2>/dev/null || :

# 2. The plugin has it open read-write (a client connected): QEMU's tools
#    refuse it, --force-share (-U) reads still work, and the plugin's own
#    snapshot export opens beside the active image.
new_sock
start_nbdkit "$sock" "$(plugin_so qcow2)" file=img.qcow2
PATH="/usr/bin:$PATH" nbdsh -u "$(uri_of "$sock")" -c "
import subprocess
h.pwrite(b'\x02' * 65536, 0)
h.flush()
def refused(*cmd):
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode != 0 and 'lock' in r.stderr, (cmd, r.returncode, r.stderr)
refused('qemu-img', 'snapshot', '-c', 'x', 'img.qcow2')
refused('qemu-io', '-c', 'write 0 4k', 'img.qcow2')
refused('qemu-img', 'info', 'img.qcow2')
subprocess.run(['qemu-img', 'info', '-U', 'img.qcow2'], check=True, capture_output=True)
subprocess.run(['nbdcopy', '$(uri_of "$sock" s)', 's.raw'], check=True)
h.pwrite(b'\x03' * 65536, 4 << 20)
h.flush()
"
stop_nbdkit

# 3. Nothing holds it any more: QEMU opens it, nothing was lost.
qemu_img_check img.qcow2
qemu-img snapshot -l img.qcow2 | grep -q ' s ' || fail "snapshot s lost"
[ "$(qemu-img snapshot -l img.qcow2 | grep -c ' x ')" = 0 ] || fail "snapshot x was taken"
qemu-io -c 'read -P 2 0 64k' -c 'read -P 3 4M 64k' -c 'read -P 1 64k 4032k' img.qcow2 |
  grep -q 'verification failed' && fail "data lost"
qemu-io -f raw -c 'read -P 1 0 8M' s.raw | grep -q 'verification failed' && fail "snapshot export"

# 3b. Read-only opens are QEMU's read-only opens: the plugin serving an
#     image read-only, or using it as a backing file, refuses QEMU writers
#     (qemu-img commit into the base, qemu-io write) but not QEMU readers;
#     and it refuses to read an image qemu-nbd is writing.
qemu-img create -q -f qcow2 -b img.qcow2 -F qcow2 top.qcow2
qemu-img create -q -f qcow2 -b img.qcow2 -F qcow2 other.qcow2
qemu-io -c 'write -P 9 0 64k' other.qcow2 >/dev/null
new_sock
start_nbdkit "$sock" "$(plugin_so qcow2)" file=top.qcow2
PATH="/usr/bin:$PATH" nbdsh -u "$(uri_of "$sock")" -c "
import subprocess
def refused(*cmd):
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode != 0 and 'lock' in r.stderr, (cmd, r.returncode, r.stderr)
before = h.pread(65536, 0)
refused('qemu-img', 'commit', 'other.qcow2')
refused('qemu-io', '-c', 'write 0 4k', 'img.qcow2')
subprocess.run(['qemu-img', 'info', 'img.qcow2'], check=True, capture_output=True)
assert h.pread(65536, 0) == before, 'the backing file changed under the export'
"
stop_nbdkit
new_sock
start_nbdkit "$sock" "$(plugin_so qcow2)" file=img.qcow2 -r
start_qemu_nbd img.qcow2
if PATH="/usr/bin:$PATH" nbdsh -u "$(uri_of "$sock")" -c 'h.pread(512, 0)' 2>/dev/null; then
  fail "the plugin read an image that qemu-nbd has open for writing"
fi
stop_nbdkit
refused_at_start "read-only" "$(plugin_so qcow2)" file=img.qcow2 -r

# 3c. locking=off (QEMU's locking=off) takes no locks: the same read-only
#     export of the image qemu-nbd is writing is served, QEMU's tools open
#     it without -U meanwhile, and the format filters' backing files too.
#     The vmdk and vhdx plugins take the same parameter.
new_sock
start_nbdkit "$sock" "$(plugin_so qcow2)" file=img.qcow2 -r locking=off
PATH="/usr/bin:$PATH" nbdsh -u "$(uri_of "$sock")" -c "
assert len(h.pread(512, 0)) == 512
" || fail "locking=off: not served while qemu-nbd writes the image"
stop_nbdkit
cp top.qcow2 top-raw-container.qcow2
for locking in on off; do
  new_sock
  start_nbdkit "$sock" --filter="$(filter_so qcow2)" file top-raw-container.qcow2 \
    qcow2-backing="$tmpdir/img.qcow2" qcow2-locking=$locking -r
  if PATH="/usr/bin:$PATH" nbdsh -u "$(uri_of "$sock")" -c 'h.pread(512, 0)' 2>/dev/null; then
    [ $locking = off ] || fail "qcow2 filter: read a backing file qemu-nbd is writing"
  else
    [ $locking = on ] || fail "qcow2 filter: qcow2-locking=off did not serve it"
  fi
  stop_nbdkit
done
kill $qbg; wait $qbg 2>/dev/null || :
# Served read-only with locking=off and nothing else holding it: QEMU's
# tools open it for writing without -U (locking=on refuses them, 3b).
new_sock
start_nbdkit "$sock" "$(plugin_so qcow2)" file=img.qcow2 -r locking=off
PATH="/usr/bin:$PATH" nbdsh -u "$(uri_of "$sock")" -c "
import subprocess
assert len(h.pread(512, 0)) == 512
r = subprocess.run(['qemu-io', '-c', 'write -P 7 32M 4k', 'img.qcow2'], capture_output=True, text=True)
assert r.returncode == 0 and 'lock' not in r.stderr, r.stderr
" || fail "qcow2 locking=off: the image was locked"
stop_nbdkit
qemu-img create -q -f vmdk lk.vmdk 1M
qemu-img create -q -f vhdx lk.vhdx 1M
for f in vmdk vhdx; do
  new_sock
  start_nbdkit "$sock" "$(plugin_so $f)" file=lk.$f locking=off
  PATH="/usr/bin:$PATH" nbdsh -u "$(uri_of "$sock")" -c "
import subprocess
h.pwrite(b'\\x05' * 4096, 0)
h.flush()
# Nothing locked: qemu-img opens it for writing meanwhile.
r = subprocess.run(['qemu-io', '-c', 'read -P 5 0 4k', 'lk.$f'], capture_output=True, text=True)
assert r.returncode == 0 and 'lock' not in r.stderr, r.stderr
" || fail "$f locking=off: the image was locked"
  stop_nbdkit
done

# 4. One file opened for writing twice by the plugin itself (a VMDK
#    descriptor naming one flat file for two extents): not a conflict.
truncate -s 64M two-flat.img
cat > two.vmdk <<'EOD'
# Disk DescriptorFile
version=1
CID=12345678
parentCID=ffffffff
createType="monolithicFlat"

RW 65536 FLAT "two-flat.img" 0
RW 65536 FLAT "two-flat.img" 65536
EOD
new_sock
start_nbdkit "$sock" "$(plugin_so vmdk)" file=two.vmdk
PATH="/usr/bin:$PATH" nbdsh -u "$(uri_of "$sock")" -c 'h.pwrite(b"\x04" * 4096, 40 << 20); h.flush()' ||
  fail "a VMDK with two extents in one file is refused"
stop_nbdkit
cmp -s <(head -c 4096 /dev/zero | tr '\0' '\4') <(tail -c +$((40 * 1048576 + 1)) two-flat.img | head -c 4096) ||
  fail "VMDK write lost"
echo PASS
