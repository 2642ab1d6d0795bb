#!/bin/bash
# SPDX-License-Identifier: BSD-3-Clause
# Trim and rewrite must not grow a vmdk or vhdx image without bound.
# Neither format has a free list: a grain or block taken out of its table
# is never allocated again.  A guest that trims (fstrim, discard=unmap)
# and later rewrites the same range made the file grow by that much each
# time, until the disk below was full (found by a long concurrency
# torture: the vmdk filter's fixed container ran out of space).  The
# engines now zero or trim such grains and blocks in place.
#
# For each format, as a plugin over a local file and as a filter over
# nbdkit's file plugin (a fixed container with room for the data once and
# a half): four cycles of writing the whole disk then trimming it or
# zeroing it (alternately), then a last write.  The image must not grow
# after the first cycle, a trim or zero must give the space back to the
# file system, and at the end qemu-img check accepts the image and
# qemu-img compare finds it equal to the last data written.
source "${TOP_SRCDIR:?run the tests through ctest, which sets TOP_SRCDIR}/tests/functions.sh"
requires qemu-img python3 du
requires_nbdsh
size=$((8 * 1024 * 1024))

cycles () {
  local name=$1 img=$2 mode=$3
  /usr/bin/python3 - "$(uri_of "$sock")" "$img" "$mode" "$size" \
    "$tmpdir/$name.raw" <<'PY' || fail "$name: see above"
import os, sys, nbd
uri, img, mode, size, mirror = sys.argv[1], sys.argv[2], sys.argv[3], \
    int(sys.argv[4]), sys.argv[5]
h = nbd.NBD()
h.connect_uri(uri)
chunk = 1 << 20

def fill(seed):
    data = bytearray()
    for off in range(0, size, chunk):
        buf = os.urandom(chunk)
        h.pwrite(buf, off)
        data += buf
    h.flush()
    return data

def used():
    st = os.stat(img)
    return st.st_size, st.st_blocks * 512

first = None
for cycle in range(4):
    fill(cycle)
    apparent, alloc = used()
    if first is None:
        first = apparent
    elif mode == "plugin" and apparent > first:
        sys.exit("%s: cycle %d: the file grew from %d to %d bytes"
                 % (img, cycle + 1, first, apparent))
    for off in range(0, size, chunk):
        if cycle % 2:
            h.zero(chunk, off)          # may trim (no NO_HOLE flag)
        else:
            h.trim(chunk, off)
    h.flush()
    after = used()[1]
    if after > alloc - size // 2:
        sys.exit("%s: cycle %d: %s gave back only %d of %d allocated bytes"
                 % (img, cycle + 1, "zero" if cycle % 2 else "trim",
                    alloc - after, alloc))
data = fill(4)
h.shutdown()
with open(mirror, "wb") as f:
    f.write(data)
print("%s %s: 4 cycles, file %d bytes, allocated %d after the last write"
      % (os.path.basename(img), mode, used()[0], used()[1]))
PY
}

check () {
  local name=$1 fmt=$2 img=$3
  qemu-img check -q -f "$fmt" "$img" || fail "$name: qemu-img check"
  qemu-img compare -q -f "$fmt" -F raw "$img" "$tmpdir/$name.raw" ||
    fail "$name: qemu-img compare against the last data written"
}

for fmt in vmdk vhdx; do
  requires_plugin "$fmt"
  requires_filter "$fmt"
  case $fmt in
    vmdk) variants="zeroed_grain=on zeroed_grain=off" ;;
    vhdx) variants="block_size=1M" ;;
  esac
  for opts in $variants; do
    name=$fmt-${opts//=/-}
    img=$tmpdir/$name.$fmt
    qemu-img create -q -f "$fmt" -o "$opts" "$img" $size
    sock=$tmpdir/$name.sock
    start_nbdkit "$sock" "$(plugin_so "$fmt")" "file=$img"
    cycles "$name" "$img" plugin
    stop_nbdkit
    check "$name" "$fmt" "$img"

    name=$name-filter
    img=$tmpdir/$name.$fmt
    qemu-img create -q -f "$fmt" -o "$opts" "$img" $size
    truncate -s $((size * 3 / 2 + 4 * 1024 * 1024)) "$img"
    sock=$tmpdir/$name.sock
    start_nbdkit "$sock" --filter="$(filter_so "$fmt")" file "$img"
    cycles "$name" "$img" filter
    stop_nbdkit
    check "$name" "$fmt" "$img"
  done
done
echo "trim-reuse: OK"
