#!/bin/bash
# SPDX-License-Identifier: BSD-3-Clause
# A flush of the layer below that fails as a connection ends.  The plugin
# below (eval over a file, its flush failing while the file E exists) has
# no multi-conn, so each filter (qcow2, vmdk, vhdx, thin, snapshot)
# flushes a connection's context in .finalize when the connection wrote
# through it.  When that flush fails, nbdkit must still finalize the
# layers below and keep serving: before, the filters' .finalize returned
# -1, nbdkit 1.32 then skipped .finalize of the layers below, and
# nbdkit's multi-conn filter aborted the server in its .close
# ("multi_conn_close: Assertion `h->group == NULL' failed").  The writes
# made through that context may not be durable: the next flush of the
# layer below fails (once) instead of succeeding.
source "${TOP_SRCDIR:?run the tests through ctest, which sets TOP_SRCDIR}/tests/functions.sh"
requires_nbdsh
requires qemu-img
for f in qcow2 vmdk vhdx thin snapshot; do requires_filter $f; done
cd "$tmpdir"
M=$((1024*1024))

# serve SOCK FILTER IMAGE ARGS...: FILTER over nbdkit's multi-conn filter
# (multi-conn-mode=disable) over eval on IMAGE.
serve () {
  local s=$1 f=$2 img=$3; shift 3
  start_nbdkit "$s" --filter="$(filter_so "$f")" --filter=multi-conn eval \
    get_size="stat -c %s $tmpdir/$img" \
    pread="dd if=$tmpdir/$img bs=64K iflag=skip_bytes,count_bytes skip=\$4 count=\$3 status=none" \
    pwrite="dd of=$tmpdir/$img bs=64K oflag=seek_bytes iflag=count_bytes seek=\$4 count=\$3 conv=notrunc status=none" \
    can_write="exit 0" can_flush="exit 0" \
    flush="if [ -e $tmpdir/E ]; then echo 'EIO injected flush error' >&2; exit 1; fi; sync $tmpdir/$img" \
    multi-conn-mode=disable "$@"
}

# Another connection holds the engine open meanwhile (so the failing
# flush is the connection's own, not the engine's close).
hold () {
  local i
  touch "$tmpdir/hold"; rm -f "$tmpdir/held"
  nbdsh -u "$1" -c "
import os, time
h.pread(512, 0)
open('$tmpdir/held', 'w').close()
while os.path.exists('$tmpdir/hold'): time.sleep(0.05)
" & holder=$!
  for (( i=0; i<600; i++ )); do [ -e "$tmpdir/held" ] && return; sleep 0.05; done
  fail "the holding connection did not start"
}
unhold () { rm -f "$tmpdir/hold"; wait "$holder" || fail "$1: holder failed"; }

# lost_mark / wait_lost WHAT: nbdkit (its errors in $log) has reported a
# failed flush as a connection ended since lost_mark.  The flush runs
# when nbdkit notices that the client has gone: no fixed sleep (a late
# flush, under load or the sanitizers, would find E removed already).
log="$tmpdir/nbdkit.log"
: > "$log"
lost_mark () { nlost=$(grep -c "as a connection ends" "$log" || :); }
wait_lost () {
  local i
  for (( i=0; i<1200; i++ )); do
    (( $(grep -c "as a connection ends" "$log" || :) > nlost )) && return
    sleep 0.05
  done
  fail "$1: no failed flush reported as the connection ended"
}

# lost_flush_fails URI [PYTHON]: on URI the next flush fails with EIO
# (the one after it works), then PYTHON runs in the same nbdsh.
lost_flush_fails () {
  nbdsh -u "$1" -c "
try:
    h.flush()
    raise AssertionError('the flush after a lost flush succeeded')
except nbd.Error as e:
    assert e.errno == 'EIO', e.errno
h.flush()
${2-}
"
}

for f in qcow2 vmdk vhdx thin; do
  rm -f E
  case $f in
    thin) truncate -s $((16*M)) c.img; extra=(thin-size=64M) ;;
    *) qemu-img create -q -f $f c.img 64M; truncate -s +$((16*M)) c.img; extra=() ;;
  esac
  new_sock; serve "$sock" $f c.img "${extra[@]}" 2>>"$log"
  uri=$(uri_of "$sock")
  hold "$uri"
  lost_mark
  nbdsh -u "$uri" -c "
h.pwrite(b'\x5a' * 65536, 1 << 20)
open('$tmpdir/E', 'w').close()
" || fail "$f: writer failed"
  wait_lost $f
  kill -0 "$nbdkit_pid" 2>/dev/null ||
    fail "$f: nbdkit died when a connection's last flush failed"
  rm -f E
  lost_flush_fails "$uri" "assert h.pread(65536, 1 << 20) == b'\x5a' * 65536" ||
    fail "$f: after the failed flush at the end of a connection"
  unhold $f
  stop_nbdkit
  echo "ok: $f: a connection's failed last flush: server alive, next flush EIO"
  rm -f c.img
done

# The snapshot filter writes below only in a commit: one whose flush
# fails leaves the context to be flushed at the end of the connection.
{
  rm -f E; truncate -s $((16*M)) base.img
  new_sock; serve "$sock" snapshot base.img overlay-dir="$tmpdir/ov" \
    control="$tmpdir/ctl" 2>>"$log"
  uri=$(uri_of "$sock")
  hold "$uri"
  lost_mark
  ctl="$TOP_BUILDDIR/filters/snapshot/nbdkit-snapshot-ctl"
  nbdsh -u "$uri" -c "
import subprocess
h.pwrite(b'\x5a' * 65536, 1 << 20)
h.flush()
open('$tmpdir/E', 'w').close()
r = subprocess.run(['$ctl', '$tmpdir/ctl', 'commit'], capture_output=True)
assert r.returncode != 0, 'commit succeeded while flushes fail'
" || fail "snapshot: writer failed"
  wait_lost snapshot
  kill -0 "$nbdkit_pid" 2>/dev/null ||
    fail "snapshot: nbdkit died when a connection's last flush failed"
  rm -f E
  # The commit goes through once flushes work again.
  for i in 1 2 3; do "$ctl" "$tmpdir/ctl" commit >/dev/null 2>&1 && break; done ||
    fail "snapshot: no commit succeeded once flushes work"
  nbdsh -u "$uri" -c "assert h.pread(65536, 1 << 20) == b'\x5a' * 65536" ||
    fail "snapshot: data lost"
  unhold snapshot
  stop_nbdkit
  cmp -n $((65536)) -i $M:0 base.img <(head -c 65536 /dev/zero | tr '\0' '\132') ||
    fail "snapshot: the commit did not reach the plugin"
  echo "ok: snapshot: a connection's failed last flush after a failed commit"
}

# The failed flush is remembered for its export only: with one image per
# export name (FILTER-exports=per-name, the eval plugin on $name.img), a
# lost flush on export "bad" fails the next flush of "bad", not that of
# "good", whose writes are durable.  Before, one flag per filter: the
# next flush of any export ("good") failed, and that of "bad" succeeded.
for f in qcow2 thin; do
  rm -f E.bad
  for e in bad good; do
    case $f in
      thin) truncate -s $((16*M)) $e.img ;;
      *) qemu-img create -q -f $f $e.img 64M; truncate -s +$((16*M)) $e.img ;;
    esac
  done
  [ $f = thin ] && extra=(thin-size=64M) || extra=()
  new_sock
  start_nbdkit "$sock" --filter="$(filter_so $f)" --filter=multi-conn eval \
    open='echo $3' \
    get_size="stat -c %s $tmpdir/\$2.img" \
    pread="dd if=$tmpdir/\$2.img bs=64K iflag=skip_bytes,count_bytes skip=\$4 count=\$3 status=none" \
    pwrite="dd of=$tmpdir/\$2.img bs=64K oflag=seek_bytes iflag=count_bytes seek=\$4 count=\$3 conv=notrunc status=none" \
    can_write="exit 0" can_flush="exit 0" \
    flush="if [ -e $tmpdir/E.\$2 ]; then echo 'EIO injected flush error' >&2; exit 1; fi; sync $tmpdir/\$2.img" \
    multi-conn-mode=disable $f-exports=per-name "${extra[@]}" 2>>"$log"
  bad="nbd+unix:///bad?socket=$sock" good="nbd+unix:///good?socket=$sock"
  hold "$bad"
  lost_mark
  nbdsh -u "$bad" -c "
h.pwrite(b'\x5a' * 65536, 1 << 20)
open('$tmpdir/E.bad', 'w').close()
" || fail "$f per-name: writer failed"
  wait_lost "$f per-name"
  rm -f E.bad
  nbdsh -u "$good" -c "
h.pwrite(b'\x11' * 65536, 0)
h.flush()
" || fail "$f per-name: a lost flush of export 'bad' failed a flush of 'good'"
  lost_flush_fails "$bad" ||
    fail "$f per-name: export 'bad', after its failed flush"
  unhold "$f per-name"
  stop_nbdkit
  echo "ok: $f per-name: a lost flush fails the next flush of its export only"
  rm -f bad.img good.img
done

echo "finalize flush error: OK"
