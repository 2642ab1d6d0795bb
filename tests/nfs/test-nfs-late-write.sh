#!/bin/bash
# SPDX-License-Identifier: BSD-3-Clause
# A write that timed out must not be applied by the server after a later
# write (common/bdev/bdev_nfs.c, late_add and drain_late): the NFS server
# (ganesha) is stopped (SIGSTOP) while a 16 MiB write A is sent; A fails
# with EIO after timeout=2 s, but its WRITE calls stay queued in the
# server's socket.  The server resumes, and writes B over the start of A,
# sent on the other connections of the pool, are acknowledged and
# flushed: they must read back (A applied late would overwrite them).
# Which the server runs first is a race: four rounds, B every 256 KiB of
# the first 4 MiB.  For the nfs plugin (raw) and the qcow2 plugin.
source "$(dirname "$0")/nfs-server.sh"
nfs_netns "$0" "$@"
source "${TOP_SRCDIR:?run the tests through ctest, which sets TOP_SRCDIR}/tests/functions.sh"
requires_nbdsh
requires qemu-img
requires_plugin nfs
requires_plugin qcow2

nfs_server_start "$tmpdir/export"
cd "$NFS_DIR"

late_write () {   # WHAT PLUGIN ARG
  local what=$1 client; shift
  rm -f "$tmpdir"/stop* "$tmpdir"/cont*
  local sock="$tmpdir/$what.sock"
  start_nbdkit "$sock" "$@" 2>"$tmpdir/$what.log"
  D="$tmpdir" nbdsh -u "$(uri_of "$sock")" -c '
import os, time
d = os.environ["D"]
M = 1024 * 1024
def mark(n): open(os.path.join(d, n), "w").close()
def wait(n):
    while not os.path.exists(os.path.join(d, n)):
        time.sleep(0.01)
# Several NFS connections in the pool: concurrent requests.
h.pwrite(bytes(16 * M), 0)
cs = [h.aio_pwrite(bytearray(M), i * M) for i in range(8)]
done = set()
while len(done) < len(cs):
    h.poll(-1)
    done |= {c for c in cs if c not in done and h.aio_command_completed(c)}
h.flush()
for r in range(4):
    a, b = b"%d" % (2 * r), b"%d" % (2 * r + 1)
    mark("stop%d" % r); wait("stopped%d" % r)
    t = time.time()
    try:
        h.pwrite(a * 16 * M, 0)
        print("A: succeeded with the server stopped")
    except nbd.Error as e:
        print("A: failed after %.1f s" % (time.time() - t))
    mark("cont%d" % r)
    offs = range(0, 4 * M, M // 4)
    for o in offs:
        h.pwrite(b * 65536, o)
    h.flush()
    time.sleep(1)
    lost = [o for o in offs if h.pread(65536, o) != b * 65536]
    print("round %d: B %s" % (r, "LOST at %s" % lost if lost else "ok"))
' > "$tmpdir/client.out" 2>&1 &
  client=$!
  local m i
  for m in stop0 cont0 stop1 cont1 stop2 cont2 stop3 cont3; do
    for (( i = 0; i < 6000; i++ )); do
      [ -e "$tmpdir/$m" ] && break
      kill -0 $client 2>/dev/null ||
        fail "$what: client ended early: $(cat "$tmpdir/client.out")"
      sleep 0.01
    done
    [ -e "$tmpdir/$m" ] || fail "$what: client did not reach $m"
    if [ ${m#stop} != $m ]; then
      kill -STOP "$NFS_GANESHA_PID"
      touch "$tmpdir/stopped${m#stop}"
    else
      sleep 0.3
      kill -CONT "$NFS_GANESHA_PID"
    fi
  done
  wait $client || fail "$what: client failed: $(cat "$tmpdir/client.out")"
  stop_nbdkit
  cat "$tmpdir/client.out"
  [ "$(grep -c '^A: failed' "$tmpdir/client.out")" = 4 ] ||
    fail "$what: a write with the server stopped did not fail"
  ! grep -q LOST "$tmpdir/client.out" ||
    fail "$what: a write acknowledged and flushed after one that timed out was overwritten by it"
  [ "$(grep -c ': B ok$' "$tmpdir/client.out")" = 4 ] ||
    fail "$what: missing reads: $(cat "$tmpdir/client.out")"
  echo "ok: $what: a write that timed out was not applied over later ones"
}

truncate -s 64M disk.raw
late_write raw "$(plugin_so nfs)" "url=$NFS_URL/disk.raw?timeout=2"

qemu-img create -q -f qcow2 disk.qcow2 64M
late_write qcow2 "$(plugin_so qcow2)" "file=$NFS_URL/disk.qcow2?timeout=2"
out=$(qemu-img check disk.qcow2 2>&1) || fail "qemu-img check: $out"
echo "nfs late write: OK"
