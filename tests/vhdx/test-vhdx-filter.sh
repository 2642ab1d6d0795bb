#!/bin/bash
# SPDX-License-Identifier: BSD-3-Clause
# nbdkit --filter=vhdx over other plugins.
#  - file plugin: a qemu-io-filled image reads as QEMU reads it; seeded
#    writes through the filter (the container has room to spare at its
#    end: the filter cannot grow it) leave an image that qemu-img compare
#    finds equal to a raw mirror and qemu-img check accepts; a dirty log
#    is replayed read-only without touching the file.
#  - data plugin (an in-memory export loaded from the image): reads, and
#    writes read back through the filter equal to the mirror.
#  - a container without room: an allocating write fails (no crash).
source "${TOP_SRCDIR:?run the tests through ctest, which sets TOP_SRCDIR}/tests/functions.sh"
source "$TOP_SRCDIR/tests/vhdx/vhdx-functions.sh"
requires_filter vhdx
F=$(filter_so vhdx)
cd "$tmpdir"
M=$((1024*1024))
size=$((20*M))

qemu-img create -q -f vhdx -o block_size=1M img.vhdx $size
gen_ops --mode fill --seed 3 --size $size --count 20 --cluster $M > fill.ops
qemu_io_cmds -f vhdx img.vhdx < fill.ops
qemu-img convert -f vhdx -O raw img.vhdx want.raw

new_sock
start_nbdkit "$sock" --filter="$F" file img.vhdx -r
nbdcopy "$(uri_of "$sock")" got.raw
[ "$(nbdinfo --json "$(uri_of "$sock")" | python3 -c 'import json,sys; print(json.load(sys.stdin)["exports"][0]["block_size_minimum"])')" = 512 ] ||
  fail "minimum block size"
stop_nbdkit
assert_same want.raw got.raw "filter over file"
echo "ok read over file"

# Writes over the file plugin, with room at the end of the container.
cp img.vhdx w.vhdx
truncate -s +$((24*M)) w.vhdx
cp want.raw mirror.raw
gen_ops --mode mirror --seed 9 --size $size --count 50 --cluster $M > w.ops
new_sock
start_nbdkit "$sock" --filter="$F" file w.vhdx
qemu_io_cmds -f raw "$(uri_of "$sock")" < w.ops
stop_nbdkit
qemu_io_cmds -f raw mirror.raw < w.ops
qemu_img_check -f vhdx w.vhdx
out=$(qemu-img compare -f vhdx -F raw w.vhdx mirror.raw 2>&1) || fail "compare: $out"
echo "ok write over file"

# Over the data plugin: the image's bytes in memory, with room to grow.
new_sock
start_nbdkit "$sock" --filter="$F" data "<$tmpdir/img.vhdx" size=$((48*M))
uri=$(uri_of "$sock")
nbdcopy "$uri" mem0.raw
assert_same want.raw mem0.raw "filter over data"
cp want.raw mirror2.raw
qemu_io_cmds -f raw "$uri" < w.ops
nbdcopy "$uri" mem1.raw
stop_nbdkit
qemu_io_cmds -f raw mirror2.raw < w.ops
assert_same mirror2.raw mem1.raw "writes over data"
echo "ok data plugin"

# No room: allocating writes fail, the server survives, data stays.
cp img.vhdx full.vhdx
new_sock
start_nbdkit "$sock" --filter="$F" file full.vhdx
uri=$(uri_of "$sock")
b=$(vtool info full.vhdx | python3 -c 'import json,sys; print([i for i, e in enumerate(json.load(sys.stdin)["bat"]) if e[0] != 6][0])')
out=$(qemu-io -f raw "$uri" -c "write -P 0x66 $((b*M)) 64k" 2>&1 || :)
grep -qiE 'error|fail' <<<"$out" || fail "an allocating write into a full container succeeded: $out"
kill -0 $nbdkit_pid || fail "the filter died on a full container"
stop_nbdkit
qemu_img_check -f vhdx full.vhdx
echo "ok full container"

# A dirty log, replayed read-only through the filter.
cp img.vhdx d.vhdx
vtool dirty d.vhdx d.expect.vhdx several 4
qemu-img convert -f vhdx -O raw d.expect.vhdx d.want
sum=$(md5 d.vhdx)
new_sock
start_nbdkit "$sock" --filter="$F" file d.vhdx -r
nbdcopy "$(uri_of "$sock")" d.got
stop_nbdkit
assert_same d.want d.got "read-only replay through the filter"
[ "$(md5 d.vhdx)" = "$sum" ] || fail "read-only replay changed the file"
echo "ok log"
