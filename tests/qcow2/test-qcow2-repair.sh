#!/bin/bash
# SPDX-License-Identifier: BSD-3-Clause
# Dirty images (issue #19): an image with the dirty bit (lazy refcounts not
# written back) is repaired on a read-write open, served read-only as it is
# otherwise; the corrupt bit still refuses writes.  Oracle: qemu-img
# check/convert/compare/info and qemu-io.
#  1. lazy_refcounts=on, a snapshot, qemu-io writes then aborts (no
#     flush): refcounts too low, leaks, wrong OFLAG_COPIED.
#  2. hand-made damage (qcow2-repair.py): a leaked cluster, refcounts too
#     high, OFLAG_COPIED set on clusters shared with a snapshot; over
#     several geometries (refcount widths, extended L2, compressed
#     clusters, a refcount table of several clusters).
#  3. persistent bitmaps are counted (kept); the corrupt bit.
# After a repair: the content is what qemu-img convert read before it,
# qemu-img check is clean, the dirty bit is clear, the snapshot is intact,
# and writes through the plugin land (qemu-img compare with a raw mirror).
source "${TOP_SRCDIR:?run the tests through ctest, which sets TOP_SRCDIR}/tests/functions.sh"
source "$TOP_SRCDIR/tests/qcow2/qcow2-functions.sh"

qcow2_filter_mode && skip "plugin only (the filter shares the engine)"
[ -n "${QCOW2_TEST_PEER:-}" ] && skip "uses plugin parameters"
rp () { python3 "$qdir/qcow2-repair.py" "$@"; }
M=$((1024*1024))

# dirty IMAGE: is the dirty flag set (qemu-img info)?
dirty () {
  qemu-img info -U --output=json "$1" | python3 -c '
import json, sys
sys.exit(0 if json.load(sys.stdin).get("dirty-flag") else 1)'
}

# expect_damage IMAGE: qemu-img check must see the damage (else the test
# would prove nothing).
expect_damage () {
  local out rc=0
  out=$(qemu-img check -U "$1" 2>&1) || rc=$?
  [ $rc != 0 ] || grep -qE 'ERROR|Leaked' <<<"$out" ||
    fail "setup: qemu-img check finds nothing wrong with $1: $out"
}

# serve_log IMAGE LOG [PARAMS...]: serve IMAGE with the plugin, nbdkit's
# debug output to LOG; sets $sock.
serve_log () {
  local img=$1 log=$2; shift 2
  new_sock
  start_nbdkit "$sock" -v "$(plugin_so qcow2)" "file=$img" "$@" 2>>"$log"
}

# repair_and_check IMAGE TAG [SNAPSHOT [SHARED]]: serve IMAGE read-write: the
# content is what QEMU read before, the repair is logged; after stopping,
# qemu-img check is clean, the dirty bit clear and OFLAG_COPIED clear at
# guest offset SHARED; writes through the plugin (also over clusters
# shared with SNAPSHOT) land and leave the snapshot as it was.
repair_and_check () {
  local img=$1 tag=$2 snap=${3:-} shared=${4:-} w=$tmpdir/$2
  dirty "$img" || fail "$tag: setup: the dirty bit is not set"
  rm -f "$w.before.raw" "$w.snap.raw" "$w.export.raw"
  qemu-img convert -U -O raw "$img" "$w.before.raw" ||
    fail "$tag: qemu-img convert before the repair"
  if [ -n "$snap" ]; then
    qemu-img convert -U -O raw -l "snapshot.name=$snap" "$img" "$w.snap.raw" ||
      fail "$tag: qemu-img convert of snapshot $snap"
  fi
  local log=$w.log
  : > "$log"
  serve_log "$img" "$log"
  nbdcopy -- "$(uri_of "$sock")" "$w.export.raw" ||
    fail "$tag: nbdcopy from the repaired export"
  assert_same "$w.before.raw" "$w.export.raw" "$tag: content after the repair"
  stop_server
  grep -q 'repaired the refcounts of the dirty image' "$log" ||
    fail "$tag: no repair summary in the log: $(grep -i qcow2 "$log" | tail -5)"
  check_image "$img"
  dirty "$img" && fail "$tag: the dirty bit is still set"
  out=$(qemu-img compare -U -f qcow2 "$img" -F raw "$w.before.raw" 2>&1) ||
    fail "$tag: qemu-img compare after the repair: $out"
  if [ -n "$shared" ]; then
    [ "$(rp l2copied "$img" "$shared")" = 0 ] ||
      fail "$tag: OFLAG_COPIED still set on a shared cluster at $shared"
  fi

  # Writes after the repair: sectors, whole clusters, over everything.
  serve_log "$img" "$log"
  local ops=(-c "write -P 0x5a 0 64k" -c "write -P 0x5b 1536 3584"
    -c "write -P 0x5c 1M 1M" -c "write -z 3M 256k" -c "discard 5M 128k"
    -c "write -P 0x5d 7M 192k" -c "write -P 0x5e 20M 4M")
  qemu_io_cmds -f raw "${ops[@]}" "$(uri_of "$sock")"
  stop_server
  qemu_io_cmds -f raw "${ops[@]}" "$w.before.raw"
  check_image "$img"
  out=$(qemu-img compare -U -f qcow2 "$img" -F raw "$w.before.raw" 2>&1) ||
    fail "$tag: qemu-img compare after writes: $out"
  if [ -n "$snap" ]; then
    rm -f "$w.snap2.raw"
    qemu-img convert -U -O raw -l "snapshot.name=$snap" "$img" "$w.snap2.raw" ||
      fail "$tag: qemu-img convert of snapshot $snap after writes"
    assert_same "$w.snap.raw" "$w.snap2.raw" \
      "$tag: snapshot $snap after writes through the repaired image"
  fi
  echo "$tag: repaired, checked, written (at ${SECONDS}s)"
}

# --- 1. a writer with lazy refcounts aborted ------------------------------
img=$tmpdir/lazy.qcow2
qemu-img create -q -f qcow2 -o lazy_refcounts=on "$img" 64M
qemu_io_cmds -f qcow2 -c "write -P 0x11 0 8M" -c "write -P 0x12 30M 2M" "$img"
qemu-img snapshot -c s1 "$img"
# abort(3) after the writes, without any flush: refcounts not written.
( ulimit -c 0
  qemu-io -f qcow2 -c "write -P 0x22 1M 3M" -c "write -P 0x33 20M 5M" \
    -c "write -P 0x44 31M 64k" -c "discard 6M 1M" -c abort "$img" \
    >/dev/null 2>&1 ) && fail "qemu-io abort did not abort"
expect_damage "$img"

# Read-only: served as it is, the file untouched.
cp "$img" "$tmpdir/lazy.copy"
rm -f "$tmpdir/ro.raw" "$tmpdir/ro.oracle.raw"
serve_log "$img" /dev/null -r
nbdcopy -- "$(uri_of "$sock")" "$tmpdir/ro.raw"
stop_server
qemu-img convert -U -O raw "$img" "$tmpdir/ro.oracle.raw"
assert_same "$tmpdir/ro.oracle.raw" "$tmpdir/ro.raw" "read-only dirty export"
cmp "$img" "$tmpdir/lazy.copy" >/dev/null ||
  fail "a read-only open modified the dirty image"

repair_and_check "$img" lazy s1

# A writer killed with SIGKILL: qemu-io reads its commands from a FIFO;
# after two writes have completed (the image is dirty then), a long write
# starts and qemu-io is killed in the middle of it, once the file has
# grown.  The kill is timing: if qemu-io was too fast or too slow for it
# to leave damage that qemu-img check sees, the setup is tried again.
img=$tmpdir/killed.qcow2
# wrote_n N: wait until qemu-io has reported N completed writes (it
# reads one command per arrival of data on the FIFO).
wrote_n () {
  local i
  for (( i=0; i<600; i++ )); do
    [ "$(grep -c 'wrote' "$tmpdir/qio.out")" -ge "$1" ] && return 0
    sleep 0.05
  done
  fail "qemu-io did not complete its writes: $(cat "$tmpdir/qio.out")"
}
damaged=
for attempt in 1 2 3 4 5; do
  rm -f "$img" "$tmpdir/qio.in"
  qemu-img create -q -f qcow2 -o lazy_refcounts=on,cluster_size=4096 "$img" 64M
  qemu_io_cmds -f qcow2 -c "write -P 0x11 0 4M" "$img"
  mkfifo "$tmpdir/qio.in"
  qemu-io -f qcow2 "$img" < "$tmpdir/qio.in" > "$tmpdir/qio.out" 2>&1 &
  qpid=$!
  kill_at_exit $qpid
  exec 7>"$tmpdir/qio.in"
  echo "write -P 0x66 4M 8M" >&7
  wrote_n 1
  echo "write -P 0x67 16M 4M" >&7
  wrote_n 2
  size0=$(stat -c %s "$img")
  echo "write -P 0x68 0 48M" >&7
  for (( i=0; i<2000; i++ )); do
    (( $(stat -c %s "$img") > size0 + 1048576 )) && break
    sleep 0.005
  done
  kill -9 "$qpid"
  wait "$qpid" 2>/dev/null || :
  exec 7>&-
  rc=0
  out=$(qemu-img check -U "$img" 2>&1) || rc=$?
  if [ $rc != 0 ] || grep -qE 'ERROR|Leaked' <<<"$out"; then
    damaged=1
    break
  fi
  echo "killed writer, attempt $attempt: no damage left, again"
done
[ -n "$damaged" ] || expect_damage "$img"       # fails, with the output
repair_and_check "$img" killed

# --- 2. hand-made damage --------------------------------------------------
# damage TAG CREATE-OPTIONS [compress]
damage () {
  local tag=$1 opts=$2 compress=${3:-} img=$tmpdir/$1.qcow2
  local src=$tmpdir/$tag.src.qcow2
  qemu-img create -q -f qcow2 -o "$opts" "$src" 64M
  qemu_io_cmds -f qcow2 -c "write -P 0x21 0 2M" -c "write -P 0x22 8M 3M" \
    -c "write -z 12M 1M" -c "write -P 0x23 40M 512k" "$src"
  if [ -n "$compress" ]; then
    qemu-img convert -c -O qcow2 -o "$opts" "$src" "$img"
  else
    mv "$src" "$img"
  fi
  qemu_io_cmds -f qcow2 -c "write -P 0x24 1M 64k" "$img"
  qemu-img snapshot -c s1 "$img"
  qemu_io_cmds -f qcow2 -c "write -P 0x25 8M 64k" "$img"
  check_image "$img"

  local cs
  cs=$(qemu-img info --output=json "$img" |
       python3 -c 'import json,sys; print(json.load(sys.stdin)["cluster-size"])')
  # A leaked cluster: past the end of the image, refcount 1.
  local size end
  size=$(stat -c %s "$img")
  end=$(( (size + cs - 1) / cs * cs ))
  truncate -s $((end + 2*cs)) "$img"
  rp setrc "$img" "$end" 1 2>/dev/null ||
    echo "$tag: no refcount block covers the end of the file, no leak made"
  # A data cluster used once (mapped at 40M, written after the snapshot
  # was not: shared; use the one written after it at 8M): refcount +1.
  local host rc
  host=$(qemu-img map --output=json "$img" | python3 -c '
import json, sys
for e in json.load(sys.stdin):
    if e["start"] <= 8*1024*1024 < e["start"] + e["length"] and "offset" in e:
        print(e["offset"] + 8*1024*1024 - e["start"]); break')
  [ -n "$host" ] || fail "$tag: setup: no host offset for 8M"
  rc=$(rp getrc "$img" "$host")
  [ "$rc" = 1 ] || fail "$tag: setup: refcount of $host is $rc, not 1"
  rp setrc "$img" "$host" 2
  # The L1 table's cluster: too high as well.
  local l1
  l1=$(python3 -c '
import struct, sys
with open(sys.argv[1], "rb") as f:
    f.seek(40); print(struct.unpack(">Q", f.read(8))[0])' "$img")
  rc=$(rp getrc "$img" "$l1")
  rp setrc "$img" "$l1" $((rc + 1))
  # OFLAG_COPIED on a cluster shared with the snapshot (at 0): a write
  # there in place would change the snapshot.
  rp copied "$img" 0
  [ "$(rp l2copied "$img" 0)" = 1 ] || fail "$tag: setup: COPIED not set"
  rp incompat "$img" +0 >/dev/null
  expect_damage "$img"

  # Read-only: nothing changes.
  cp "$img" "$tmpdir/$tag.copy"
  serve_log "$img" /dev/null -r
  rm -f "$tmpdir/$tag.ro.raw"
  nbdcopy -- "$(uri_of "$sock")" "$tmpdir/$tag.ro.raw"
  stop_server
  cmp "$img" "$tmpdir/$tag.copy" >/dev/null ||
    fail "$tag: a read-only open modified the dirty image"

  repair_and_check "$img" "$tag" s1 0
}

damage d64k "cluster_size=65536"
damage d4k-r4 "cluster_size=4096,refcount_bits=4"
damage d16k-extl2 "cluster_size=16384,extended_l2=on,refcount_bits=8"
damage d64k-zlib "cluster_size=65536" compress
damage d512-r64 "cluster_size=512,refcount_bits=64"

# --- persistent bitmaps: counted, so kept -----------------------------------
img=$tmpdir/bitmaps.qcow2
qemu-img create -q -f qcow2 "$img" 64M
qemu_io_cmds -f qcow2 -c "write -P 0x31 0 8M" "$img"
qemu-img bitmap --add "$img" bm0
qemu-img bitmap --add -g 4096 "$img" bm1
qemu_io_cmds -f qcow2 -c "write -P 0x32 16M 1M" "$img"
rp incompat "$img" +0 >/dev/null
qemu-img convert -U -O raw "$img" "$tmpdir/bitmaps.before.raw"
serve_log "$img" /dev/null
rm -f "$tmpdir/bitmaps.raw"
nbdcopy -- "$(uri_of "$sock")" "$tmpdir/bitmaps.raw"
stop_server
assert_same "$tmpdir/bitmaps.before.raw" "$tmpdir/bitmaps.raw" "bitmaps: content"
check_image "$img"
dirty "$img" && fail "bitmaps: the dirty bit is still set"
for b in bm0 bm1; do
  qemu-img info -U --output=json "$img" | grep -q "\"$b\"" ||
    fail "bitmaps: bitmap $b lost by the repair"
done
echo "bitmaps: repaired, bitmaps kept"

# --- 3. the corrupt bit -----------------------------------------------------
img=$tmpdir/corrupt.qcow2
qemu-img create -q -f qcow2 "$img" 16M
qemu_io_cmds -f qcow2 -c "write -P 0x77 0 1M" "$img"
rp incompat "$img" +1 >/dev/null
qemu-img convert -U -O raw "$img" "$tmpdir/corrupt.oracle.raw"
cp "$img" "$tmpdir/corrupt.copy"
log=$tmpdir/corrupt.log
serve_log "$img" "$log"
rm -f "$tmpdir/corrupt.raw"
nbdcopy -- "$(uri_of "$sock")" "$tmpdir/corrupt.raw"
assert_same "$tmpdir/corrupt.oracle.raw" "$tmpdir/corrupt.raw" "corrupt image content"
if qemu-io -f raw -c "write -P 0x78 0 64k" "$(uri_of "$sock")" 2>&1 |
     grep -qE '^wrote'; then
  fail "a write to an image marked corrupt succeeded"
fi
stop_server
grep -q 'marked corrupt' "$log" || fail "no message about the corrupt bit"
cmp "$img" "$tmpdir/corrupt.copy" >/dev/null ||
  fail "the image marked corrupt was modified"
# Corrupt and dirty: still no writes, no repair.
rp incompat "$img" +0 >/dev/null
cp "$img" "$tmpdir/corrupt.copy"
serve_log "$img" "$log"
if qemu-io -f raw -c "write -P 0x78 0 64k" "$(uri_of "$sock")" 2>&1 |
     grep -qE '^wrote'; then
  fail "a write to a dirty image marked corrupt succeeded"
fi
stop_server
cmp "$img" "$tmpdir/corrupt.copy" >/dev/null ||
  fail "the dirty image marked corrupt was modified"
echo "corrupt: read-only, unmodified"
