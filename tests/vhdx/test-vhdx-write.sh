#!/bin/bash
# SPDX-License-Identifier: BSD-3-Clause
# Writes: seeded random writes, zero writes (with and without may-trim),
# trims and flushes sent through the plugin and applied to a raw mirror
# (qcow2-ops.py --mode mirror; trimmed ranges are overwritten at the end,
# NBD leaves them undefined).  Afterwards qemu-img compare must find the
# image equal to the mirror and qemu-img check must accept it.  Images:
# qemu-img-made dynamic (1 MiB and 32 MiB blocks) and fixed, and ones the
# plugin creates itself (create=, dynamic and fixed, 512 and 4096 logical
# sectors; qemu-img info must report them as vhdx of the right size).
# Last, parallel allocating writes over 4 connections (nbdcopy) into an
# empty image.  VHDX_TEST_ROUNDS=N repeats each case with N seeds
# (default 1).
source "${TOP_SRCDIR:?run the tests through ctest, which sets TOP_SRCDIR}/tests/functions.sh"
source "$TOP_SRCDIR/tests/vhdx/vhdx-functions.sh"
cd "$tmpdir"
M=$((1024*1024))
rounds=${VHDX_TEST_ROUNDS:-1}
n=0

# run NAME IMG SIZE: the workload through the plugin and on the mirror.
run () {
  local name=$1 img=$2 size=$3 r
  for (( r=0; r<rounds; r++ )); do
    n=$((n+1))
    truncate -s $size $name.mirror
    [ -z "${mirror_from:-}" ] || qemu-img convert -f vhdx -O raw "$mirror_from" $name.mirror
    gen_ops --mode mirror --seed $((n*131)) --size $size --count 60 \
      --cluster $M > $name.ops
    new_sock
    serve "$sock" "$img"
    qemu_io_cmds -f raw "$(uri_of "$sock")" < $name.ops
    stop_nbdkit
    qemu_io_cmds -f raw $name.mirror < $name.ops
    qemu_img_check -f vhdx "$img"
    out=$(qemu-img compare -f vhdx -F raw "$img" $name.mirror 2>&1) ||
      fail "$name: qemu-img compare: $out"
    echo "ok $name round $r"
  done
}

# qemu-img-created images.
for spec in dynamic:1M dynamic:32M fixed:1M; do
  sub=${spec%:*} bs=${spec#*:}
  name=q-$sub-$bs
  size=$((40*M + 8192))
  [ $bs = 32M ] && size=$((70*M))
  qemu-img create -q -f vhdx -o subformat=$sub,block_size=$bs $name.vhdx $size
  run $name $name.vhdx $size
done

# Images the plugin creates.
for spec in dynamic:512:1M dynamic:4096:2M fixed:512:1M; do
  IFS=: read -r sub lss bs <<<"$spec"
  name=c-$sub-$lss
  size=$((30*M))
  new_sock
  serve "$sock" $name.vhdx create=$size type=$sub logical-sector-size=$lss block-size=$bs
  [ "$(nbdinfo --size "$(uri_of "$sock")")" = $size ] || fail "$name: size"
  stop_nbdkit
  vtool info $name.vhdx > $name.info
  python3 - $name.info $size $lss <<'PY' || fail "$name: structures: $(cat $name.info)"
import json, sys
i = json.load(open(sys.argv[1]))
assert i["size"] == int(sys.argv[2]) and i["lss"] == int(sys.argv[3]), i
PY
  if [ $lss = 512 ]; then
    # QEMU 7.2 opens only 512-byte logical sectors.
    qemu-img info --output=json $name.vhdx > $name.qinfo
    python3 -c 'import json,sys; i=json.load(open(sys.argv[1])); assert i["format"]=="vhdx" and i["virtual-size"]==int(sys.argv[2]), i' $name.qinfo $size ||
      fail "$name: qemu-img info: $(cat $name.qinfo)"
    run $name $name.vhdx $size
  else
    # Mirror test without QEMU: read back through the plugin.
    truncate -s $size $name.mirror
    gen_ops --mode mirror --seed 99 --size $size --count 60 --cluster $M > $name.ops
    new_sock
    serve "$sock" $name.vhdx
    qemu_io_cmds -f raw "$(uri_of "$sock")" < $name.ops
    stop_nbdkit
    qemu_io_cmds -f raw $name.mirror < $name.ops
    new_sock
    serve "$sock" $name.vhdx -r
    nbdcopy "$(uri_of "$sock")" $name.got
    stop_nbdkit
    assert_same $name.mirror $name.got "$name"
    echo "ok $name"
  fi
done

# create= never overwrites an existing file.
sum=$(md5 c-dynamic-512.vhdx)
new_sock
serve "$sock" c-dynamic-512.vhdx create=1M -r
stop_nbdkit
[ "$(md5 c-dynamic-512.vhdx)" = "$sum" ] || fail "create= changed an existing image"
# ... and its options without create= are refused, not ignored.
out=$(nbdkit_fails 30 -U "$tmpdir/opts.sock" "$VHDX_PLUGIN" file=c-dynamic-512.vhdx \
      type=fixed --run true) && fail "type= without create= accepted"
grep -q "options of create=SIZE" <<<"$out" || fail "type= without create=: $out"

# A size in whole logical sectors: rounded up, as qemu-img rounds it.
for lss in 512 4096; do
  rm -f "odd-$lss.vhdx"
  new_sock
  serve "$sock" "odd-$lss.vhdx" create=1000 logical-sector-size=$lss
  [ "$(nbdinfo --size "$(uri_of "$sock")")" = $(( (1000 + lss - 1) / lss * lss )) ] ||
    fail "create=1000 with $lss-byte sectors: size $(nbdinfo --size "$(uri_of "$sock")")"
  stop_nbdkit
done
[ "$(qemu-img info --output=json odd-512.vhdx | python3 -c 'import json,sys; print(json.load(sys.stdin)["virtual-size"])')" = 1024 ] ||
  fail "create=1000: qemu-img does not see 1024 bytes"
echo "ok create= options and sizes"

# Parallel allocating writes: nbdcopy writes random data over several
# connections with many requests in flight (multi-conn, PARALLEL thread
# model), into an empty dynamic image with 1 MiB blocks.
random_file par.raw $((24*M))
qemu-img create -q -f vhdx -o block_size=1M par.vhdx $((24*M))
new_sock
serve "$sock" par.vhdx
nbdcopy --connections=4 --requests=32 --request-size=65536 par.raw "$(uri_of "$sock")"
stop_nbdkit
qemu_img_check -f vhdx par.vhdx
out=$(qemu-img compare -f vhdx -F raw par.vhdx par.raw 2>&1) || fail "parallel writes: $out"
echo "ok parallel writes"
