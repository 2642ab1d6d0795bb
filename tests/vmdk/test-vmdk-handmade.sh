#!/bin/bash
# SPDX-License-Identifier: BSD-3-Clause
# Images qemu-img does not write, made by vmdk-gen.py from the spec:
# grain sizes other than 64 KiB, grain tables of other lengths, header
# versions 1-3, zeroed-grain entries, a redundant grain directory that
# disagrees with the primary one, streamOptimized images with other grain
# sizes, VMFSSPARSE ("COWD") files and seSparse (SESPARSE) extents, with
# and without a parent.  Each must read through the plugin
# exactly as the generator says, and QEMU (qemu-img convert -O raw), which
# reads all of them, must agree.  Writes into a written grain of a
# non-default image are checked against a mirror as well.
source "${TOP_SRCDIR:?run the tests through ctest, which sets TOP_SRCDIR}/tests/functions.sh"
source "$TOP_SRCDIR/tests/vmdk/vmdk-functions.sh"

seed=${VMDK_SEED:-1}
size=$((3*1024*1024 + 7*512))
i=0
one () {
  i=$((i+1))
  local img="$tmpdir/h$i.vmdk" raw="$tmpdir/h$i.raw"
  python3 "$vdir/vmdk-gen.py" --out "$img" --raw "$raw" --size $size \
    --seed $((seed*100+i)) "$@" || fail "vmdk-gen.py $*"
  qemu-img convert -U -O raw -f vmdk "$img" "$tmpdir/q.raw" ||
    fail "qemu-img cannot read the generated image ($*)"
  assert_same "$raw" "$tmpdir/q.raw" "generator vs QEMU ($*)"
  serve_vmdk "$img" -r
  nbdcopy -- "$(uri_of "$sock")" "$tmpdir/o.raw" || fail "nbdcopy ($*)"
  assert_same "$raw" "$tmpdir/o.raw" "plugin vs generator ($*)"
  stop_server
  # Extents that cannot be written (compressed, COWD, seSparse, version 3)
  # make the export read-only even without -r; the others stay writable.
  local want=false
  case " $* " in
    *" --stream "*|*" --cowd "*|*" --sesparse "*|*" --version 3 "*) want=true ;;
  esac
  serve_vmdk "$img"
  nbdinfo "$(uri_of "$sock")" | grep -q "is_read_only: $want" ||
    fail "($*) served without -r: not is_read_only: $want"
  stop_server
  echo "ok: $*"
}

for g in 1 8 16 256 1024; do one --grain $g; done
one --grain 32 --gtes 128
one --grain 8 --gtes 64 --version 2 --zero-grain
for v in 1 2 3; do one --version $v --zero-grain --grain 16; done
one --bad-rgd
one --bad-rgd --zero-grain --version 2 --grain 32
one --stream --version 3
one --stream --version 3 --grain 16 --zero-grain
one --stream --version 1 --grain 256
one --cowd --grain 8
one --cowd --grain 1

# seSparse: 33 MiB, so that there are three grain tables, the second one
# unallocated; then over a parent (unallocated grains read from it, zero
# grains do not).
size=$((33*1024*1024 + 7*512))
one --sesparse
python3 "$vdir/vmdk-gen.py" --out "$tmpdir/sep.vmdk" --raw "$tmpdir/sep.raw" \
  --size $size --grain 16 --seed $((seed*100+98)) || fail "vmdk-gen.py parent"
one --sesparse --parent sep.vmdk --parent-raw "$tmpdir/sep.raw"
# Read-only: a write through a read-write export fails cleanly.
serve_vmdk "$tmpdir/h$i.vmdk"
out=$(qemu-io -f raw -c "write 0 4096" "$(uri_of "$sock")" 2>&1 || :)
grep -qiE 'failed|error|denied|read-only' <<<"$out" ||
  fail "a write into a seSparse image succeeded: $out"
stop_server
qemu-img convert -U -O raw -f vmdk "$tmpdir/h$i.vmdk" "$tmpdir/q.raw"
assert_same "$tmpdir/h$i.raw" "$tmpdir/q.raw" "seSparse after a refused write"
echo "ok: seSparse write refused"
size=$((3*1024*1024 + 7*512))

# Writing into a version 2 image with 8-sector grains, 64-entry tables and
# zeroed grains, through the plugin and into a mirror.
img="$tmpdir/w.vmdk"
python3 "$vdir/vmdk-gen.py" --out "$img" --raw "$tmpdir/w.raw" --size $size \
  --grain 8 --gtes 64 --version 2 --zero-grain --seed 7
gen_ops --mode mirror --seed $((seed*100+99)) --size $size --cluster 4096 \
  --count 50 > "$tmpdir/w.ops"
serve_vmdk "$img"
qemu_io_cmds -f raw "$(uri_of "$sock")" < "$tmpdir/w.ops"
stop_server
qemu_io_cmds -f raw "$tmpdir/w.raw" < "$tmpdir/w.ops"
out=$(qemu-img compare -f vmdk -F raw "$img" "$tmpdir/w.raw" 2>&1) ||
  fail "written hand-made image differs from the mirror: $out"
check_image "$img"
echo "ok: writes into 4 KiB grains"

# A version 3 (non-compressed) image opened for writing: served, but its
# sparse extent refuses writes (as QEMU refuses to open it read-write).
python3 "$vdir/vmdk-gen.py" --out "$tmpdir/v3.vmdk" --size $size --version 3
serve_vmdk "$tmpdir/v3.vmdk"
out=$(qemu-io -f raw -c "write 0 4096" "$(uri_of "$sock")" 2>&1 || :)
grep -qiE 'failed|error|denied|read-only' <<<"$out" ||
  fail "a write into a version 3 image succeeded: $out"
stop_server
echo "all ok"
