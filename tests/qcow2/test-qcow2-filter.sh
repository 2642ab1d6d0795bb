#!/bin/bash
# SPDX-License-Identifier: BSD-3-Clause
# The qcow2 filter beyond the shared read/write matrices (which run it over
# the file and lvm plugins through QCOW2_TEST_SERVE):
# - a full container: allocating writes fail with ENOSPC, everything
#   written before reads back, overwrites and trims still work, trimmed
#   space is reused, and qemu-img check finds no error and no leak; over
#   nbdkit's file plugin and over an LV of the lvm plugin;
# - several connections writing at once (nbdcopy) into one image;
# - backing files: refused unless named, qcow2-backing=PATH and =none;
# - a read-only plugin gives a read-only export;
# - a write the layer below fails leaves the old content and no leak.
source "${TOP_SRCDIR:?run the tests through ctest, which sets TOP_SRCDIR}/tests/functions.sh"
source "$TOP_SRCDIR/tests/qcow2/qcow2-functions.sh"
source "$TOP_SRCDIR/tests/lvm/lvm-lib.sh"
requires_filter qcow2
requires fallocate
cd "$tmpdir"
M=$((1024*1024))

# serve_filter SOCK PLUGIN-ARGS...: the qcow2 filter over a plugin.
serve_filter () {
  local s=$1; shift
  start_nbdkit "$s" --filter="$(filter_so qcow2)" "$@"
}

# fill_until_full URI MIRROR: write 64 KiB clusters at 1 MiB strides
# (each needs a new data cluster) until the export says ENOSPC; applies
# the successful writes to MIRROR.  Sets $written.
fill_until_full () {
  local uri=$1 mirror=$2 out i
  written=0
  for (( i=0; i<64; i++ )); do
    out=$(qemu-io -f raw -c "write -q -P $((i+1)) $((i*M)) 64k" "$uri" 2>&1) || :
    if grep -q 'No space left on device' <<<"$out"; then
      return 0
    fi
    [ -z "$out" ] || fail "write $i: $out"
    qemu-io -f raw -c "write -q -P $((i+1)) $((i*M)) 64k" "$mirror" >/dev/null
    written=$((written+1))
  done
  fail "no ENOSPC after 64 allocating writes into a small container"
}

# enospc_case NAME IMAGE SERVE-ARGS...: IMAGE is the container's content
# for the oracles (the file itself, or a copy of the LV made by COPYBACK).
enospc_case () {
  local name=$1 img=$2; shift 2
  truncate -s 64M "$name.mirror"
  new_sock
  serve_filter "$sock" "$@"
  local uri; uri=$(uri_of "$sock")
  fill_until_full "$uri" "$name.mirror"
  (( written >= 10 )) || fail "$name: only $written clusters fitted"
  # The last write failed and left nothing: still reads as zeroes.
  qemu-io -f raw -c "read -q -P 0 $((written*M)) 64k" "$uri" ||
    fail "$name: the failed write left data behind"
  # Overwrites of allocated clusters still work.
  qemu_io_cmds -f raw -c "write -q -P 0x77 0 64k" "$uri"
  qemu_io_cmds -f raw -c "write -q -P 0x77 0 64k" "$name.mirror"
  # Trim frees clusters that later writes reuse.
  qemu_io_cmds -f raw -c "discard -q $M 64k" -c "discard -q $((2*M)) 64k" \
    -c flush "$uri"
  qemu_io_cmds -f raw -c "write -q -z $M 64k" -c "write -q -z $((2*M)) 64k" \
    "$name.mirror"
  qemu_io_cmds -f raw -c "write -q -P 0x55 $((40*M)) 64k" -c flush "$uri"
  qemu_io_cmds -f raw -c "write -q -P 0x55 $((40*M)) 64k" "$name.mirror"
  nbdcopy -- "$uri" "$name.back.raw"
  stop_server
  assert_same "$name.mirror" "$name.back.raw" "$name: export vs mirror"
  $COPYBACK
  check_image "$img"
  local out
  out=$(qemu-img compare -f qcow2 -F raw "$img" "$name.mirror" 2>&1) ||
    fail "$name: image differs from the mirror: $out"
  echo "ok: $name ($written clusters, then ENOSPC)"
}

# Over the file plugin: a 64 MiB image in a 1.5 MiB container.
qemu-img create -q -f qcow2 full.qcow2 64M
truncate -s 1536K full.qcow2
COPYBACK=: enospc_case file-full full.qcow2 file file=full.qcow2

# Over the lvm plugin: the same image in a 4 MiB LV holding old data
# (which must never show through).
lvm_lv_mb=4
truncate -s 32M pv2.img
lvm_attach pv2.img loop2
lvm_q pvcreate -q "$loop2"
lvm_q vgcreate -q -s 4m fvg "$loop2"
lvm_q lvcreate -q -an -Zn -L ${lvm_lv_mb}M -n flv fvg
off=$(pvs --noheadings --units b --nosuffix -o pe_start "$loop2" | tr -d ' ')
head -c $((lvm_lv_mb*M)) /dev/urandom |
  dd of=pv2.img bs=1M oflag=seek_bytes seek="$off" conv=notrunc status=none
qemu-img create -q -f qcow2 lvfull.qcow2 64M
dd if=lvfull.qcow2 of=pv2.img bs=1M oflag=seek_bytes seek="$off" \
   conv=notrunc status=none
copy_lv_back () {
  dd if=pv2.img of=lvfull.qcow2 bs=1M iflag=skip_bytes,count_bytes \
     skip="$off" count=$((lvm_lv_mb*M)) status=none
}
COPYBACK=copy_lv_back enospc_case lvm-full lvfull.qcow2 \
  "$(plugin_so lvm)" pv="$tmpdir/pv2.img" vg=fvg lv=flv

# Several connections at once: nbdcopy with 4 connections and 8 requests
# in flight each writes a random file into an empty image.
qemu-img create -q -f qcow2 -o cluster_size=4096 mc.qcow2 32M
truncate -s 48M mc.qcow2
random_file mc.src 32M
new_sock
serve_filter "$sock" file file=mc.qcow2
nbdcopy --connections=4 --requests=8 -- mc.src "$(uri_of "$sock")" ||
  fail "nbdcopy into the filter"
stop_server
check_image mc.qcow2
out=$(qemu-img compare -f qcow2 -F raw mc.qcow2 mc.src 2>&1) ||
  fail "multi-connection copy: $out"
echo "ok: 4 connections writing at once"

# Backing files.
qemu-img create -q -f raw base.raw 8M
qemu-io -f raw -c 'write -q -P 0x42 0 8M' base.raw
qemu-img create -q -f qcow2 -b base.raw -F raw top.qcow2 8M
qemu-io -f qcow2 -c 'write -q -P 0x43 1M 1M' top.qcow2
truncate -s 16M top.qcow2
new_sock
out=$(nbdkit -U "$sock" --filter="$(filter_so qcow2)" file file=top.qcow2 \
        --run 'nbdinfo "$uri"' 2>&1) &&
  fail "an image naming a backing file was served without qcow2-backing="
grep -q "backing file 'base.raw'" <<<"$out" ||
  fail "the refusal does not name the backing file: $out"
echo "ok: backing file refused unless named"

new_sock
serve_filter "$sock" file file=top.qcow2 qcow2-backing="$tmpdir/base.raw"
ORACLE=(-f qcow2 top.qcow2)
check_export_read "$(uri_of "$sock")" "$tmpdir/bk"
stop_server
echo "ok: qcow2-backing=PATH reads like qemu-img"

new_sock
serve_filter "$sock" file file=top.qcow2 qcow2-backing=none -r
nbdcopy -- "$(uri_of "$sock")" none.raw
stop_server
qemu-img create -q -f raw expect.raw 8M
qemu-io -f raw -c 'write -q -P 0x43 1M 1M' expect.raw
assert_same expect.raw none.raw "qcow2-backing=none"
echo "ok: qcow2-backing=none"

# The backing file's own backing file outside its directory: refused,
# and the message names the parameter this filter takes.
mkdir -p sub
qemu-img create -q -f qcow2 -b ../base.raw -F raw sub/mid.qcow2 8M
new_sock
out=$(nbdkit -U "$sock" --filter="$(filter_so qcow2)" file file=top.qcow2 \
        qcow2-backing="$tmpdir/sub/mid.qcow2" --run 'nbdinfo "$uri"' 2>&1) &&
  fail "a backing file's escaping backing file was followed"
grep -q "refusing file '\.\./base\.raw'.*qcow2-allow-backing-path=DIR" <<<"$out" ||
  fail "the refusal does not name qcow2-allow-backing-path: $out"
new_sock
serve_filter "$sock" file file=top.qcow2 qcow2-backing="$tmpdir/sub/mid.qcow2" \
  qcow2-allow-backing-path="$tmpdir" -r
nbdcopy -- "$(uri_of "$sock")" allowed.raw
stop_server
qemu-img create -q -f qcow2 -b sub/mid.qcow2 -F qcow2 oracle.qcow2 8M
qemu-io -f qcow2 -c 'write -q -P 0x43 1M 1M' oracle.qcow2
out=$(qemu-img compare -f raw -F qcow2 allowed.raw oracle.qcow2 2>&1) ||
  fail "qcow2-allow-backing-path: $out"
echo "ok: a backing file's backing confined; qcow2-allow-backing-path= allows it"

# A plugin that cannot write (eval with get_size and pread only): a
# read-only export, the image untouched; the same with nbdkit -r.
cp full.qcow2 ro.qcow2
new_sock
serve_filter "$sock" eval get_size="stat -c %s $tmpdir/ro.qcow2" \
  pread="dd if=$tmpdir/ro.qcow2 bs=64K iflag=skip_bytes,count_bytes skip=\$4 count=\$3 status=none"
nbdcopy -- "$(uri_of "$sock")" ro.raw || fail "reading through eval"
out=$(qemu-io -f raw -c 'write -q 0 64k' "$(uri_of "$sock")" 2>&1) &&
  fail "a write through a read-only plugin succeeded"
stop_server
new_sock
serve_filter "$sock" -r file file=ro.qcow2
out=$(qemu-io -f raw -c 'write -q 0 64k' "$(uri_of "$sock")" 2>&1) &&
  fail "a write with nbdkit -r succeeded"
stop_server
cmp full.qcow2 ro.qcow2 || fail "the read-only image was modified"
qemu-img convert -f qcow2 -O raw ro.qcow2 ro.expect
assert_same ro.expect ro.raw "read through a read-only plugin"
echo "ok: read-only plugin, read-only export"

# One write larger than the room left, into a container whose free space
# holds old bytes (0xee): it fails with ENOSPC part-way, and the clusters
# it had already mapped hold its data, never the container's old bytes.
qemu-img create -q -f qcow2 stale.qcow2 64M
head -c $((4*M)) /dev/zero | tr '\0' '\356' > stale.img
dd if=stale.qcow2 of=stale.img conv=notrunc status=none
new_sock
serve_filter "$sock" file file=stale.img
out=$(qemu-io -f raw -c 'write -P 0x11 0 8M' "$(uri_of "$sock")" 2>&1) || :
grep -q 'No space left on device' <<<"$out" ||
  fail "an 8 MiB write into a 4 MiB container: $out"
PATH="/usr/bin:$PATH" nbdsh -u "$(uri_of "$sock")" -c '
d = h.pread(8 << 20, 0)
bad = set(d) - {0, 0x11}
assert not bad, "after the failed write the disk shows bytes %r" % sorted(bad)
h.flush()' || fail "old container bytes shown after a failed write"
stop_server
qemu_img_check -f qcow2 stale.img
echo "ok: a write cut short by ENOSPC shows no old container bytes"

# A data write that the layer below fails (nbdkit's error filter, EIO):
# the disk keeps its old content (zeroes, or the backing file's bytes),
# never the container's old bytes, and no cluster leaks.  Whole clusters,
# a partial one, several at once, whole subclusters (extended L2), and a
# compressed one.  Before: whole clusters read the container's 0xee, or
# zeroes where the backing file has data, and every failed partial write
# leaked a cluster.
head -c $((64*M)) /dev/zero | tr '\0' '\252' > eio-base.raw
eio_case () {
  local name=$1 opts=$2; shift 2
  qemu-img create -q -f qcow2 -o "$opts" "$name.qcow2" 64M
  head -c $((16*M)) /dev/zero | tr '\0' '\356' > "$name.img"
  dd if="$name.qcow2" of="$name.img" conv=notrunc status=none
  rm -f "$tmpdir/E"
  new_sock
  start_nbdkit "$sock" --filter="$(filter_so qcow2)" --filter=error \
    file "file=$name.img" error-pwrite=EIO error-pwrite-rate=100% \
    "error-pwrite-file=$tmpdir/E" "$@"
  PATH="/usr/bin:$PATH" nbdsh -u "$(uri_of "$sock")" -c "
import os
old = h.pread(8 << 20, 0)
h.pwrite(b'\x33' * 512, 12 << 20)           # the image's first write
h.flush()
open('$tmpdir/E', 'w').close()
for off, n in ((0, 65536), (1 << 20, 4096), (2 << 20, 3 * 65536),
               (4 << 20, 8192)):
    try:
        h.pwrite(b'\x11' * n, off)
        raise AssertionError('write at %d succeeded' % off)
    except nbd.Error:
        pass
os.unlink('$tmpdir/E')
d = h.pread(8 << 20, 0)
assert d == old, 'after failed writes: bytes %r' % sorted(set(d) - set(old))
h.pwrite(b'\x22' * 65536, 5 << 20)
h.flush()
" || fail "$name: a failed write changed what the disk reads"
  stop_server
  qemu_img_check -f qcow2 "$name.img"
  echo "ok: $name: failed writes leave the old content, no leak"
}
eio_case eio-plain cluster_size=65536
eio_case eio-backing cluster_size=65536 "qcow2-backing=$tmpdir/eio-base.raw"
eio_case eio-xl2 extended_l2=on,cluster_size=65536 \
  "qcow2-backing=$tmpdir/eio-base.raw"

echo "qcow2 filter: OK"
