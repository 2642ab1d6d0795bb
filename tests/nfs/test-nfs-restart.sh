#!/bin/bash
# SPDX-License-Identifier: BSD-3-Clause
# Server restarts and a server that is gone, under file=nfs://:
#  1. nbdcopy reads a qcow2 image from the export while the NFS server
#     crashes (ganesha killed with SIGKILL, rpcbind stopped) and starts
#     again: the copy completes and equals the source;
#  2. the same for a copy into an empty qcow2 image (allocating writes,
#     the container growing on the server): afterwards qemu-img check is
#     clean and qemu-img compare finds the image equal to the source;
#  3. with the server stopped and timeout=3, a read fails with an I/O
#     error within seconds (no hang) and nbdkit says why; once the server
#     is back the next read works (reconnect).
# nbdkit's rate filter (100 Mbit/s) slows the copies so that the restart lands in the
# middle of them.
source "$(dirname "$0")/nfs-server.sh"
nfs_netns "$0" "$@"
source "${TOP_SRCDIR:?run the tests through ctest, which sets TOP_SRCDIR}/tests/functions.sh"
requires_plugin qcow2
requires qemu-img qemu-io nbdcopy cmp

M=$((1024*1024))
nfs_server_start "$tmpdir/export"
cd "$NFS_DIR"
head -c $((40*M)) /dev/urandom > "$tmpdir/src.raw"
qemu-img convert -f raw -O qcow2 "$tmpdir/src.raw" data.qcow2

# copy_with_restart WHAT NBDCOPY-ARGS...: run the copy, restart the server
# one second in, the copy must succeed and must have lasted past it.
copy_with_restart () {
  local what=$1; shift
  local t0=$SECONDS
  nbdcopy "$@" &
  local cp=$!
  sleep 1
  kill -0 $cp 2>/dev/null || fail "$what: the copy ended before the restart"
  nfs_server_restart
  echo "$what: server restarted after $((SECONDS - t0)) s"
  wait $cp || fail "$what: the copy failed across the restart"
  echo "$what: copy done after $((SECONDS - t0)) s"
}

# 1. Reading.
sock="$tmpdir/r.sock"
start_nbdkit "$sock" --filter=rate "$(plugin_so qcow2)" -r \
  "file=$NFS_URL/data.qcow2?timeout=60" rate=$((100*M)) 2>"$tmpdir/r.log"
copy_with_restart read -- "$(uri_of "$sock")" "$tmpdir/out.raw"
stop_nbdkit
assert_same "$tmpdir/src.raw" "$tmpdir/out.raw" "read across a server restart"
grep -q 'reconnect' "$tmpdir/r.log" ||
  echo "note: no reconnection was logged (nbdkit runs without -v)"
echo "ok: read copy survived a server restart"

# 2. Writing into an empty image.
qemu-img create -q -f qcow2 new.qcow2 $((40*M))
sock="$tmpdir/w.sock"
start_nbdkit "$sock" --filter=rate "$(plugin_so qcow2)" \
  "file=$NFS_URL/new.qcow2?timeout=60" rate=$((100*M))
copy_with_restart write -- "$tmpdir/src.raw" "$(uri_of "$sock")"
stop_nbdkit
out=$(qemu-img check new.qcow2 2>&1) || fail "qemu-img check after the restart: $out"
grep -q 'No errors were found' <<<"$out" || fail "qemu-img check: $out"
out=$(qemu-img compare -f raw -F qcow2 "$tmpdir/src.raw" new.qcow2 2>&1) ||
  fail "image written across a restart differs: $out"
echo "ok: write copy survived a server restart (qemu-img check and compare)"

# 3. Server gone: EIO within the timeout, then reconnect, on one NBD
# connection (so the same open image) driven step by step.
requires_nbdsh
sock="$tmpdir/g.sock"
start_nbdkit "$sock" "$(plugin_so qcow2)" -r "file=$NFS_URL/data.qcow2?timeout=3" \
  2>"$tmpdir/g.log"
step () {   # wait for marker $1 from the client
  local i
  for (( i = 0; i < 1200; i++ )); do
    [ -e "$tmpdir/$1" ] && return 0
    kill -0 "$client" 2>/dev/null || fail "client ended early: $(cat "$tmpdir/client.out")"
    sleep 0.05
  done
  fail "client did not reach $1"
}
D="$tmpdir" nbdsh -u "$(uri_of "$sock")" -c '
import os, time
d = os.environ["D"]
def mark(n): open(os.path.join(d, n), "w").close()
def wait(n):
    while not os.path.exists(os.path.join(d, n)):
        time.sleep(0.05)
h.pread(65536, 0)
mark("r1"); wait("down")
t = time.time()
try:
    h.pread(65536, 20 * 1024 * 1024)
    print("gone: read succeeded")
except nbd.Error as e:
    print("gone: error after %.1f s: %s" % (time.time() - t, e))
mark("r2"); wait("back")
h.pread(65536, 30 * 1024 * 1024)
print("back: read ok")
' > "$tmpdir/client.out" 2>&1 &
client=$!
step r1
nfs_server_stop
touch "$tmpdir/down"
step r2
_nfs_launch
touch "$tmpdir/back"
wait $client || fail "client failed: $(cat "$tmpdir/client.out")"
cat "$tmpdir/client.out"
t=$(sed -n 's/^gone: error after \([0-9]*\)\..*/\1/p' "$tmpdir/client.out")
[ -n "$t" ] || fail "read with the server gone did not fail"
[ "$t" -le 20 ] || fail "read with the server gone took $t s (timeout=3)"
grep -q 'no working connection to the NFS server within 3 s' "$tmpdir/g.log" ||
  fail "nbdkit did not say why: $(grep error "$tmpdir/g.log" | head -3)"
grep -q '^back: read ok' "$tmpdir/client.out" || fail "no read after the server came back"
stop_nbdkit
echo "ok: server gone: I/O error after $t s ($(grep -m1 'within 3 s' "$tmpdir/g.log" | sed 's/.*error: //')); reconnected once it was back"

echo "nfs restart: OK"
