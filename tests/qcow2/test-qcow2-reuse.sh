#!/bin/bash
# SPDX-License-Identifier: BSD-3-Clause
# Freed clusters are allocated again: a client writes a region, trims it,
# writes another region, and so on (with flushes between, so the trimmed
# clusters reach refcount 0), then makes partial writes into fresh guest
# clusters (which land in reused host clusters and must not show what
# those clusters held before).  The same requests go to a raw mirror,
# trims as zero writes (trimmed clusters of an image without a backing
# file read as zeroes).  Afterwards:
#  - qemu-img check finds no errors and no leaks,
#  - qemu-img compare finds the image equal to the mirror,
#  - the image file is no larger than after the first region was written
#    (plus 1 MiB of slack for metadata): without reuse it would hold every
#    region ever written.
# Cases: 64K clusters, 4K clusters, 64K clusters with extended L2; a
# freed L2 table's cluster reused for a new L2 table; a trim with no
# flush after it before a clean shutdown (see the end).
source "${TOP_SRCDIR:?run the tests through ctest, which sets TOP_SRCDIR}/tests/functions.sh"
source "$TOP_SRCDIR/tests/qcow2/qcow2-functions.sh"
requires nbdsh

cd "$tmpdir"
M=$((1024*1024))
size=$((64*M))

run_case () {
  local name=$1 opts=$2
  qemu-img create -q -f qcow2 -o "$opts" "$name.qcow2" $size
  truncate -s $size "$name.raw"
  new_sock
  serve_qcow2 "$sock" "$name.qcow2"
  PATH="/usr/bin:$PATH" timeout 300 nbdsh -u "$(uri_of "$sock")" -c "
import os
M = 1024 * 1024
mirror = os.open('$name.raw', os.O_WRONLY)
def write(data, off):
    h.pwrite(data, off)
    os.pwrite(mirror, data, off)
def trim(length, off):
    h.trim(length, off)
    os.pwrite(mirror, bytes(length), off)
def pattern(seed, length):
    return bytes((seed * 7 + i * 13) & 0xff for i in range(251)) * (length // 251) + \
        bytes(length % 251)

write(pattern(1, 16 * M), 0)
h.flush()
first = os.stat('$name.qcow2').st_size
print('after the first region:', first)
for cycle, base in enumerate((16 * M, 32 * M, 48 * M), start=2):
    prev = base - 16 * M
    trim(16 * M, prev)
    h.flush()                   # the trimmed clusters reach refcount 0 here
    h.flush()
    write(pattern(cycle, 16 * M), base)
    h.flush()
# Partial writes into unallocated guest clusters of the first region (now
# trimmed): the host clusters they get are among those freed here.
trim(8 * M, 48 * M)
h.flush()
h.flush()
for i in range(64):
    write(pattern(100 + i, 3000), i * 200 * 1024 + 1000)
h.flush()
os.close(mirror)
last = os.stat('$name.qcow2').st_size
print('at the end:', last)
assert last <= first + M, \
    'image grew from %d to %d bytes: freed clusters were not reused' % (first, last)
" || fail "$name: workload through the plugin failed"
  stop_server
  check_image "$name.qcow2"
  local out
  out=$(qemu-img compare -f qcow2 -F raw "$name.qcow2" "$name.raw" 2>&1) ||
    fail "$name: image differs from the mirror: $out"
  echo "ok: $name"
}

run_case c64k cluster_size=65536
run_case c4k cluster_size=4096
run_case ext-l2 cluster_size=65536,extended_l2=on

# A freed metadata cluster reused for a new table.  An L2 table whose L1
# entry lacks the COPIED flag (refcount 1: qemu-img check calls that an
# error, but it is readable) is copied on the first write, and the old
# table's cluster is freed at the flush.  The next L2 table allocated (for
# another 2 MiB range, 4K clusters) gets that cluster, and must start
# empty, not with the old table's entries still cached.
qemu-img create -q -f qcow2 -o cluster_size=4096 stale.qcow2 8M
qemu_io_cmds -f qcow2 -c 'write -P 0xaa 0 1M' stale.qcow2
python3 - stale.qcow2 <<'EOF'
import struct, sys
with open(sys.argv[1], 'r+b') as f:
    l1_offset = struct.unpack('>Q', f.read(48)[40:48])[0]
    f.seek(l1_offset)
    e = struct.unpack('>Q', f.read(8))[0]
    assert e >> 63, 'L1[0] of a fresh image should have COPIED set'
    f.seek(l1_offset)
    f.write(struct.pack('>Q', e & ~(1 << 63)))
EOF
truncate -s 8M stale.raw
qemu_io_cmds -f raw -c 'write -P 0xaa 0 1M' -c 'write -P 0x11 0 4k' \
  -c 'write -P 0x22 4M 4k' -c 'write -P 0x33 6M 4k' stale.raw
new_sock
serve_qcow2 "$sock" stale.qcow2
qemu_io_cmds -f raw -c 'write -P 0x11 0 4k' -c flush -c 'write -P 0x22 4M 4k' \
  -c flush -c 'write -P 0x33 6M 4k' -c flush "$(uri_of "$sock")"
stop_server
check_image stale.qcow2
out=$(qemu-img compare -f qcow2 -F raw stale.qcow2 stale.raw 2>&1) ||
  fail "stale: image differs from the mirror: $out"
echo "ok: stale"

# A trim that no flush followed, then a clean shutdown: the clusters it
# freed are freed on disk too (qemu-img check finds no leak).
qemu-img create -q -f qcow2 unflushed.qcow2 16M
new_sock
serve_qcow2 "$sock" unflushed.qcow2
PATH="/usr/bin:$PATH" nbdsh -u "$(uri_of "$sock")" -c '
h.pwrite(b"\x11" * (1 << 20), 0)
h.flush()
h.trim(512 * 1024, 0)
h.shutdown()' || fail "unflushed: workload"
stop_server
check_image unflushed.qcow2
echo "ok: unflushed trim"

# The last cluster of a disk whose size is not a multiple of the cluster
# size is whole for a trim or zero that reaches the end (as in QEMU):
# freed, or marked zero, not kept as data.
for op in trim zero; do
  qemu-img create -q -f qcow2 "tail-$op.qcow2" $((64 * 1024 + 512))
  qemu-io -f qcow2 -c "write -P 0x11 0 $((64 * 1024 + 512))" "tail-$op.qcow2" >/dev/null
  new_sock
  serve_qcow2 "$sock" "tail-$op.qcow2"
  PATH="/usr/bin:$PATH" nbdsh -u "$(uri_of "$sock")" \
    -c "h.$op(512, 65536)" -c 'h.flush()' || fail "tail $op"
  stop_server
  check_image "tail-$op.qcow2"
  qemu-img map --output=json "tail-$op.qcow2" | python3 -c '
import json, sys
m = [e for e in json.load(sys.stdin) if e["start"] + e["length"] > 65536]
sys.exit(0 if m and all(not e["data"] and e["zero"] for e in m) else repr(m))' ||
    fail "tail $op: the last cluster is still data"
  qemu-io -f qcow2 -r -c "read -P 0x11 0 65536" -c "read -P 0 65536 512" \
    "tail-$op.qcow2" >/dev/null || fail "tail $op: wrong data"
done
echo "ok: the last, partial cluster trimmed and zeroed whole"
echo OK
