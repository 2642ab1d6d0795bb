#!/bin/bash
# SPDX-License-Identifier: BSD-3-Clause
# The vmdk filter over nbdkit's file plugin (and, for one read and one
# write workload, over nbdkit's data plugin, which holds the image in RAM:
# any plugin can carry the container): a monolithicSparse image and
# a streamOptimized one read like qemu-img convert; a seeded write
# workload into a monolithicSparse image (with room to grow in the file)
# leaves an image that qemu-img compare finds equal to a raw mirror and
# qemu-img check accepts; a delta disk needs vmdk-backing= (then reads like
# QEMU's chain); a descriptor naming extent files is refused; a container
# without room refuses allocating writes (ENOSPC) and stays consistent.
source "${TOP_SRCDIR:?run the tests through ctest, which sets TOP_SRCDIR}/tests/functions.sh"
source "$TOP_SRCDIR/tests/vmdk/vmdk-functions.sh"
requires_filter vmdk

size=$((6*1024*1024))
serve_filter () {
  local img=$1; shift
  new_sock
  start_nbdkit "$sock" --filter="$(filter_so vmdk)" file "file=$img" "$@"
}

img="$tmpdir/m.vmdk"
qemu-img create -q -f vmdk "$img" $size
gen_ops --seed 11 --size $size --count 30 > "$tmpdir/fill.ops"
qemu_io_cmds -f vmdk "$img" < "$tmpdir/fill.ops"
serve_filter "$img" -r
check_read "$img" "$tmpdir/w"
stop_server
echo "ok: monolithicSparse read through the filter"

so="$tmpdir/so.vmdk"
qemu-img convert -O vmdk -o subformat=streamOptimized -f vmdk "$img" "$so"
serve_filter "$so" -r
check_read "$so" "$tmpdir/w"
stop_server
echo "ok: streamOptimized read through the filter"

# Another plugin below the filter: nbdkit-data-plugin, the image loaded
# into RAM with 4x its virtual size of room to grow; reads like QEMU, then
# a seeded write workload reads back like a raw mirror (the RAM copy dies
# with nbdkit, so the comparison is through the export).
qemu-img convert -U -O raw -f vmdk "$img" "$tmpdir/dmirror.raw"
new_sock
start_nbdkit "$sock" --filter="$(filter_so vmdk)" data "data=<$img" \
  size=$(( $(stat -c %s "$img") + 4*size ))
check_read "$img" "$tmpdir/w"
gen_ops --mode mirror --seed 13 --size $size --count 40 > "$tmpdir/d.ops"
qemu_io_cmds -f raw "$(uri_of "$sock")" < "$tmpdir/d.ops"
cp "$tmpdir/dmirror.raw" "$tmpdir/dorig.raw"
qemu_io_cmds -f raw "$tmpdir/dmirror.raw" < "$tmpdir/d.ops"
out=$(qemu-img compare -f raw -F raw "$(uri_of "$sock")" \
      "$tmpdir/dmirror.raw" 2>&1) ||
  fail "written through the filter over the data plugin: differs: $out"
! cmp -s "$tmpdir/dmirror.raw" "$tmpdir/dorig.raw" ||
  fail "the workload changed nothing"
stop_server
echo "ok: read and writes through the filter over the data plugin"

# Writes: room to grow after the image (the filter cannot grow the file).
qemu-img convert -U -O raw -f vmdk "$img" "$tmpdir/mirror.raw"
truncate -s +$((4*size)) "$img"
gen_ops --mode mirror --seed 12 --size $size --count 60 > "$tmpdir/w.ops"
serve_filter "$img"
qemu_io_cmds -f raw "$(uri_of "$sock")" < "$tmpdir/w.ops"
stop_server
qemu_io_cmds -f raw "$tmpdir/mirror.raw" < "$tmpdir/w.ops"
out=$(qemu-img compare -f vmdk -F raw "$img" "$tmpdir/mirror.raw" 2>&1) ||
  fail "written through the filter: differs from the mirror: $out"
check_image "$img"
echo "ok: writes through the filter"

# A delta disk: refused without vmdk-backing=, read with it.
qemu-img create -q -f vmdk -b m.vmdk -F vmdk "$tmpdir/c.vmdk"
qemu-io -f vmdk -c "write -P 0x3c 100k 300k" "$tmpdir/c.vmdk" >/dev/null
rm -f "$tmpdir/x.sock"
out=$(nbdkit -U "$tmpdir/x.sock" -r --filter="$(filter_so vmdk)" file \
      "file=$tmpdir/c.vmdk" --run 'nbdinfo "$uri"' 2>&1) &&
  fail "a delta disk was served without vmdk-backing"
grep -q "parent 'm.vmdk'" <<<"$out" || fail "unclear message: $out"
serve_filter "$tmpdir/c.vmdk" -r "vmdk-backing=$img"
check_read "$tmpdir/c.vmdk" "$tmpdir/w"
stop_server
echo "ok: delta disk with vmdk-backing="

# A descriptor that names extent files.
qemu-img create -q -f vmdk -o subformat=monolithicFlat "$tmpdir/f.vmdk" 1M
rm -f "$tmpdir/x.sock"
out=$(nbdkit -U "$tmpdir/x.sock" -r --filter="$(filter_so vmdk)" file \
      "file=$tmpdir/f.vmdk" --run 'nbdinfo "$uri"' 2>&1) &&
  fail "a descriptor with extent files was served by the filter"
grep -q "f-flat.vmdk" <<<"$out" || fail "unclear message: $out"
echo "ok: descriptor with extent files refused"

# No room to grow: allocating writes fail, the image stays valid.
full="$tmpdir/full.vmdk"
qemu-img create -q -f vmdk "$full" $size
serve_filter "$full"
out=$(qemu-io -f raw -c "write -P 0x11 0 1M" "$(uri_of "$sock")" 2>&1 || :)
grep -qiE "space|failed|error" <<<"$out" ||
  fail "an allocating write into a full container succeeded: $out"
stop_server
check_image "$full"
echo "ok: full container"
echo "all ok"
