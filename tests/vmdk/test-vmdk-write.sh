#!/bin/bash
# SPDX-License-Identifier: BSD-3-Clause
# Write matrix: for each writable subformat (monolithicSparse with and
# without zeroed grains, monolithicFlat, twoGbMaxExtentSparse,
# twoGbMaxExtentFlat) and for a delta disk over a vmdk parent, a seeded mix
# of writes, zero writes (with and without may-trim), discards, FUA writes
# and flushes goes through the plugin and, identically, to a raw mirror
# (qcow2-ops.py --mode mirror overwrites discarded ranges at the end).
# Then qemu-img compare finds the image equal to the mirror, qemu-img
# check accepts it, and the descriptor's CID has changed (once).
#   test-vmdk-write.sh [SEED]    VMDK_TEST_ROUNDS=N for more rounds
source "${TOP_SRCDIR:?run the tests through ctest, which sets TOP_SRCDIR}/tests/functions.sh"
source "$TOP_SRCDIR/tests/vmdk/vmdk-functions.sh"

seed=${1:-${VMDK_SEED:-1}}
rounds=${VMDK_TEST_ROUNDS:-1}
echo "seed $seed rounds $rounds"
size=$((6*1024*1024 + 4096))
n=0

cid_of () { grep -a -m1 '^CID=' "$1" | cut -d= -f2; }

# run NAME IMAGE [CREATE-OPTIONS]: prefill with qemu-io, mirror workload
# through the plugin, compare.
run () {
  local name=$1 img=$2 desc=$2
  local mirror="$tmpdir/$name.raw"
  n=$((n+1))
  gen_ops --seed $((seed*1000+n)) --size $size --count 15 > "$tmpdir/$name.pre"
  qemu_io_cmds -f vmdk "$img" < "$tmpdir/$name.pre"
  qemu-img convert -U -O raw -f vmdk "$img" "$mirror" || fail "convert $img"
  local cid0; cid0=$(cid_of "$desc")
  [ -n "$cid0" ] || fail "$name: no CID in $desc"
  for (( r=0; r<rounds; r++ )); do
    gen_ops --mode mirror --seed $((seed*1000+n*10+r)) --size $size \
      --count 60 > "$tmpdir/$name.ops"
    serve_vmdk "$img"
    qemu_io_cmds -f raw "$(uri_of "$sock")" < "$tmpdir/$name.ops"
    stop_server
    qemu_io_cmds -f raw "$mirror" < "$tmpdir/$name.ops"
    local out
    out=$(qemu-img compare -f vmdk -F raw "$img" "$mirror" 2>&1) ||
      fail "$name: image differs from the mirror: $out"
    check_image "$img"
  done
  local cid1; cid1=$(cid_of "$desc")
  [ "$cid0" != "$cid1" ] || fail "$name: CID not updated by the writes"
  # And the plugin reads it back like the mirror.
  serve_vmdk "$img" -r
  nbdcopy -- "$(uri_of "$sock")" "$tmpdir/$name.back" || fail nbdcopy
  assert_same "$mirror" "$tmpdir/$name.back" "$name read back"
  stop_server
  rm -f "$mirror" "$tmpdir/$name.back"
  echo "ok: $name"
}

for sub in monolithicSparse monolithicFlat twoGbMaxExtentSparse \
           twoGbMaxExtentFlat; do
  img="$tmpdir/$sub.vmdk"
  qemu-img create -q -f vmdk -o subformat=$sub "$img" $size
  run "$sub" "$img"
done
img="$tmpdir/zg.vmdk"
qemu-img create -q -f vmdk -o zeroed_grain=on "$img" $size
run zeroed-grain "$img"

# A delta disk: writes land in the child, the parent stays untouched.
qemu-img create -q -f vmdk "$tmpdir/parent.vmdk" $size
gen_ops --seed $((seed*1000+77)) --size $size --count 30 > "$tmpdir/p.ops"
qemu_io_cmds -f vmdk "$tmpdir/parent.vmdk" < "$tmpdir/p.ops"
sum0=$(md5sum < "$tmpdir/parent.vmdk")
qemu-img create -q -f vmdk -b parent.vmdk -F vmdk "$tmpdir/child.vmdk"
run delta "$tmpdir/child.vmdk"
[ "$(md5sum < "$tmpdir/parent.vmdk")" = "$sum0" ] ||
  fail "the parent changed while writing its child"
qemu-img create -q -f vmdk -o zeroed_grain=on -b parent.vmdk -F vmdk \
  "$tmpdir/child-zg.vmdk"
run delta-zeroed-grain "$tmpdir/child-zg.vmdk"

# A descriptor naming one sparse extent file twice: both extents would
# append grains at the end of the one file, over each other.  QEMU will
# not write it (its image locks refuse the second open); the plugin
# serves it read-only, with a message.  Two flat ranges of one file stay
# writable (qcow2-qemu-locks).
mkdir "$tmpdir/dup"
qemu-img create -q -f vmdk -o subformat=twoGbMaxExtentSparse \
  "$tmpdir/dup/d.vmdk" 64M
line=$(grep -a '^RW .* SPARSE "d-s001.vmdk"' "$tmpdir/dup/d.vmdk") ||
  fail "no extent line in the descriptor"
sed -i "/^RW .* SPARSE \"d-s001.vmdk\"/a $line" "$tmpdir/dup/d.vmdk"
[ "$(grep -ac 'SPARSE "d-s001.vmdk"' "$tmpdir/dup/d.vmdk")" = 2 ] ||
  fail "could not duplicate the extent line"
if qemu-io -c 'write 0 4k' "$tmpdir/dup/d.vmdk" >/dev/null 2>&1; then
  fail "QEMU wrote an image naming one sparse file twice (the oracle changed?)"
fi
served_read_only "$tmpdir/dup/d.vmdk" "another extent also uses" \
  "one sparse extent file named twice"
echo "all ok"
