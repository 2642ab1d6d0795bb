#!/bin/bash
# SPDX-License-Identifier: BSD-3-Clause
# Concurrency: multi-connection writers and readers on one export.
#  1. nbdcopy --connections=4 copies a 64 MiB disk (random data with zero
#     ranges) into an empty image; QEMU must see the same content and a
#     clean image.
#  2. Four qemu-io clients, each on its own connection, run seeded random
#     workloads (writes, zero writes, trims, flushes) on disjoint regions
#     at the same time, while three readers copy the whole export
#     repeatedly and check a region nobody writes.  Afterwards the image
#     must pass qemu-img check and equal a raw mirror of the same
#     workloads.
# Done for 64K clusters (default cache) and for 4K clusters with extended
# L2 off and a tiny metadata cache (constant eviction).
source "${TOP_SRCDIR:?run the tests through ctest, which sets TOP_SRCDIR}/tests/functions.sh"
source "$TOP_SRCDIR/tests/qcow2/qcow2-functions.sh"

seed=${1:-${QCOW2_SEED:-1}}
echo "seed $seed"
cd "$tmpdir"
M=$((1024*1024))
size=$((64*M))

head -c $size /dev/urandom > src.raw
qemu-io -f raw -c 'write -z 4M 3M' -c 'write -z 20M 8M' -c 'write -z 63M 1M' \
  -c 'write -P 0 40M 100k' src.raw >/dev/null

# run CASE CREATE-OPTS [serve params...]
run () {
  local tag=$1 opts=$2; shift 2
  local img="$tag.qcow2" out

  # 1. multi-connection copy in
  qemu-img create -q -f qcow2 -o "$opts" "$img" $size
  new_sock
  serve_qcow2 "$sock" "$img" "$@"
  nbdcopy --connections=4 --requests=16 -- src.raw "$(uri_of "$sock")" ||
    fail "$tag: nbdcopy into the export failed"
  stop_server
  check_image "$img"
  out=$(qemu-img compare -f qcow2 -F raw "$img" src.raw 2>&1) ||
    fail "$tag: image differs from the source after nbdcopy: $out"
  echo "ok: $tag nbdcopy --connections=4"

  # 2. concurrent writers on disjoint regions + readers
  cp src.raw "$tag.mirror"
  local w pids=() r
  for w in 0 1 2 3; do
    gen_ops --mode mirror --seed $((seed*10 + w)) --size $size \
      --region $((w*12*M)):$((12*M)) --count 150 > "$tag.ops$w"
  done
  new_sock
  serve_qcow2 "$sock" "$img" "$@"
  local uri; uri=$(uri_of "$sock")
  for w in 0 1 2 3; do
    ( qemu_io_cmds -f raw "$uri" < "$tag.ops$w" ) > "$tag.w$w.err" 2>&1 &
    pids+=($!)
  done
  # Readers: the last 16 MiB are never written in this phase.
  for r in 0 1 2; do
    (
      for i in 1 2 3; do
        nbdcopy -- "$uri" "$tag.read$r" || exit 1
        cmp -n $((16*M)) -i $((48*M)) "$tag.read$r" src.raw || exit 2
      done
    ) > "$tag.r$r.err" 2>&1 &
    pids+=($!)
  done
  for w in "${pids[@]}"; do
    wait "$w" || fail "$tag: a concurrent client failed: $(cat "$tag".[wr]*.err)"
  done
  stop_server
  for w in 0 1 2 3; do
    qemu_io_cmds -f raw "$tag.mirror" < "$tag.ops$w"
  done
  check_image "$img"
  out=$(qemu-img compare -f qcow2 -F raw "$img" "$tag.mirror" 2>&1) ||
    fail "$tag: image differs from the mirror after concurrent writers: $out"
  rm -f "$tag".read*
  echo "ok: $tag concurrent writers and readers"
}

run c64k "cluster_size=65536"
run c4k-tinycache "cluster_size=4096,refcount_bits=1" cache=64K
run xl2 "cluster_size=32768,extended_l2=on"

# 3. An internal snapshot is read (its own export) while the active image
#    is written through other connections: the snapshot must not change
#    (its clusters are shared until the writes copy them).
qemu-img create -q -f qcow2 -o cluster_size=4096 snap.qcow2 $((16*M))
head -c $((16*M)) src.raw > snap.src
qemu-img convert -n -f raw -O qcow2 snap.src snap.qcow2
qemu-img snapshot -c base snap.qcow2
qemu-img convert -l snapshot.name=base -f qcow2 -O raw snap.qcow2 snap.base.raw
cp snap.base.raw snap.mirror
gen_ops --mode mirror --seed $((seed*10 + 7)) --size $((16*M)) --cluster 4096 \
  --count 200 > snap.ops
new_sock
serve_qcow2 "$sock" snap.qcow2
pids=()
( qemu_io_cmds -f raw "$(uri_of "$sock")" < snap.ops ) > snap.w.err 2>&1 &
pids+=($!)
for r in 0 1; do
  (
    for i in 1 2 3 4; do
      nbdcopy -- "nbd+unix:///base?socket=$sock" "snap.read$r" || exit 1
      cmp snap.read$r snap.base.raw || exit 2
    done
  ) > "snap.r$r.err" 2>&1 &
  pids+=($!)
done
for p in "${pids[@]}"; do
  wait "$p" || fail "snapshot under writes: a client failed: $(cat snap.*.err)"
done
stop_server
qemu_io_cmds -f raw snap.mirror < snap.ops
check_image snap.qcow2
out=$(qemu-img compare -f qcow2 -F raw snap.qcow2 snap.mirror 2>&1) ||
  fail "active image differs from the mirror after writes next to a snapshot: $out"
qemu-img convert -l snapshot.name=base -f qcow2 -O raw snap.qcow2 snap.after.raw
assert_same snap.base.raw snap.after.raw "snapshot after concurrent writes"
echo "ok: snapshot export read during writes to the active image"

echo "stress: OK"
