#!/bin/bash
# SPDX-License-Identifier: BSD-3-Clause
# Write matrix: a seeded random mix of writes (aligned and not, some with
# FUA), zero writes with and without may-trim (qemu-io write -z / -z -u),
# trims and flushes is sent through the plugin with
#   qemu-io -f raw nbd+unix:///?socket=S
# and applied identically to a raw mirror file.  Trimmed ranges have
# undefined content, so the workload ends by overwriting every trimmed
# range (qcow2-ops.py --mode mirror).  Afterwards the image must pass
# qemu-img check with no errors and no leaks and qemu-img compare equal to
# the mirror; the export (restarted) must read like the mirror too.
#
# Cases: defaults, compat 0.10, small clusters (512, 4K), 2M clusters,
# extended L2, refcount bits 1 and 64, zstd, compressed source images
# (overwriting compressed clusters), qcow2 over qcow2 and qcow2 over raw,
# an external data file, and an image with internal snapshots (their
# content must not change).
#   test-qcow2-write-matrix.sh [SEED]
source "${TOP_SRCDIR:?run the tests through ctest, which sets TOP_SRCDIR}/tests/functions.sh"
source "$TOP_SRCDIR/tests/qcow2/qcow2-functions.sh"

seed=${1:-${QCOW2_SEED:-1}}
echo "seed $seed"
cd "$tmpdir"
M=$((1024*1024))
n=0

# mirror_run NAME IMG MIRROR SIZE CLUSTER COUNT [serve params...]
#   MIRROR must already hold the image's current content (raw).
mirror_run () {
  local name=$1 img=$2 mirror=$3 size=$4 cs=$5 count=$6; shift 6
  n=$((n+1))
  gen_ops --mode mirror --seed $((seed*1000+n)) --size "$size" \
    --cluster "$cs" --count "$count" > "$name.ops"
  new_sock
  serve_qcow2 "$sock" "$img" "$@"
  qemu_io_cmds -f raw "$(uri_of "$sock")" < "$name.ops"
  stop_server
  qemu_io_cmds -f raw "$mirror" < "$name.ops"
  check_image "$img"
  local out
  out=$(qemu-img compare -f qcow2 -F raw "$img" "$mirror" 2>&1) ||
    fail "$name: image differs from the mirror after the workload: $out"
  # And through the plugin again (fresh open).
  new_sock
  serve_qcow2 "$sock" "$img" -r "$@"
  nbdcopy -- "$(uri_of "$sock")" "$name.back.raw"
  stop_server
  assert_same "$mirror" "$name.back.raw" "$name: export after reopen vs mirror"
  rm -f "$name.back.raw"
  echo "ok: $name"
}

# case NAME SIZE CLUSTER CREATE-OPTIONS [COUNT]: empty image, prefilled by
# qemu-io (so writes also hit existing clusters), then the workload.
case_empty () {
  local name=$1 size=$2 cs=$3 opts=$4 count=${5:-80}
  # Not in this filter mode (see matrix_case): its two seeds go unused.
  matrix_case || { n=$((n+2)); return 0; }
  qemu-img create -q -f qcow2 -o "$opts" "$name.qcow2" "$size"
  n=$((n+1))
  gen_ops --seed $((seed*1000+n)) --size "$size" --cluster "$cs" --count 15 \
    > "$name.pre"
  fill_image "$name.qcow2" qcow2 "$name.pre"
  qemu-img convert -f qcow2 -O raw "$name.qcow2" "$name.mirror"
  mirror_run "$name" "$name.qcow2" "$name.mirror" "$size" "$cs" "$count"
  rm -f "$name.qcow2" "$name.mirror"
}

case_empty default $((8*M)) 65536 compat=1.1
case_empty v2 $((8*M)) 65536 compat=0.10
case_empty v2-c512 $((4*M)) 512 compat=0.10,cluster_size=512
case_empty c512-r1 $((4*M)) 512 cluster_size=512,refcount_bits=1
case_empty c4k-r64 $((8*M)) 4096 cluster_size=4096,refcount_bits=64
case_empty c2m $((12*M + 512)) $((2*M)) cluster_size=2M 40
case_empty xl2-16k $((8*M)) 16384 cluster_size=16384,extended_l2=on
case_empty xl2-64k-zstd $((8*M)) 65536 extended_l2=on,compression_type=zstd
case_empty xl2-2m $((8*M)) $((2*M)) cluster_size=2M,extended_l2=on 40
case_empty odd-size $((5*M + 3*512)) 4096 cluster_size=4096
case_empty c512-r64 $((6*M)) 512 cluster_size=512,refcount_bits=64
case_empty prealloc-meta $((8*M)) 65536 preallocation=metadata
case_empty prealloc-falloc-xl2 $((8*M)) 65536 preallocation=falloc,extended_l2=on
case_empty prealloc-full-v2 $((4*M)) 4096 preallocation=full,compat=0.10,cluster_size=4096
case_empty lazy-refcounts $((8*M)) 65536 lazy_refcounts=on

# Compressed source images: every data cluster is compressed; the
# workload overwrites (partly) compressed clusters.
qemu-img create -q -f raw src.raw $((8*M))
n=$((n+1))
gen_ops --seed $((seed*1000+n)) --size $((8*M)) --count 40 > src.ops
fill_image src.raw raw src.ops
for ct in zlib zstd; do
  for cs in 4096 65536; do
    name=comp-$ct-$cs
    matrix_case || { n=$((n+1)); continue; }
    qemu-img convert -c -f raw -O qcow2 \
      -o "compression_type=$ct,cluster_size=$cs" src.raw "$name.qcow2"
    cp src.raw "$name.mirror"
    mirror_run "$name" "$name.qcow2" "$name.mirror" $((8*M)) "$cs" 80
    rm -f "$name.qcow2" "$name.mirror"
  done
done
if matrix_case; then
qemu-img convert -c -f raw -O qcow2 -o compat=0.10 src.raw comp-v2.qcow2
cp src.raw comp-v2.mirror
mirror_run comp-v2 comp-v2.qcow2 comp-v2.mirror $((8*M)) 65536 80
else n=$((n+1)); fi

# Backing files: qcow2 over qcow2 (4K clusters over 64K, v3 over v2), and
# qcow2 over raw; the overlay is longer than its backing.  Zero writes
# and trims must not expose backing data where zeroes were written.
qemu-img create -q -f qcow2 -o compat=0.10 b-base.qcow2 $((6*M))
n=$((n+1))
gen_ops --seed $((seed*1000+n)) --size $((6*M)) --count 30 --compress \
  > b-base.ops
fill_image b-base.qcow2 qcow2 b-base.ops
cp b-base.qcow2 b-base.orig
if matrix_case; then
qemu-img create -q -f qcow2 -o cluster_size=4096 -b b-base.qcow2 -F qcow2 \
  b-top.qcow2 $((8*M))
qemu-img convert -f qcow2 -O raw b-top.qcow2 b-top.mirror
mirror_run b-qcow2 b-top.qcow2 b-top.mirror $((8*M)) 4096 100
cmp b-base.qcow2 b-base.orig || fail "the backing file was modified"
else n=$((n+1)); fi

# compat=0.10 overlay: no zero flag, so zero writes and trims over backing
# data must store real zeroes.
if matrix_case; then
qemu-img create -q -f qcow2 -o compat=0.10,cluster_size=4096 -b b-base.qcow2 \
  -F qcow2 b2-top.qcow2 $((6*M))
qemu-img convert -f qcow2 -O raw b2-top.qcow2 b2-top.mirror
mirror_run b-qcow2-v2 b2-top.qcow2 b2-top.mirror $((6*M)) 4096 100
cmp b-base.qcow2 b-base.orig || fail "the backing file was modified"
else n=$((n+1)); fi

if matrix_case; then
qemu-img create -q -f raw r-base.raw $((6*M))
n=$((n+1))
gen_ops --seed $((seed*1000+n)) --size $((6*M)) --count 30 > r-base.ops
fill_image r-base.raw raw r-base.ops
cp r-base.raw r-base.orig
qemu-img create -q -f qcow2 -o extended_l2=on -b r-base.raw -F raw \
  r-top.qcow2 $((8*M))
qemu-img convert -f qcow2 -O raw r-top.qcow2 r-top.mirror
mirror_run r-raw r-top.qcow2 r-top.mirror $((8*M)) 65536 100
cmp r-base.raw r-base.orig || fail "the raw backing file was modified"
else n=$((n+2)); fi

# An external data file (not raw: the qcow2 metadata maps it).
qemu-img create -q -f qcow2 -o data_file=df.data,cluster_size=4096 df.qcow2 $((6*M))
if qcow2_filter_mode; then
  # An image inside another plugin's export has no directory: the filter
  # refuses a data file name instead of following it.
  new_sock
  out=$(nbdkit -U "$sock" --filter="$(filter_so qcow2)" file file=df.qcow2 \
          --run 'nbdinfo "$uri"' 2>&1) &&
    fail "the filter served an image with an external data file"
  grep -q 'df.data' <<<"$out" ||
    fail "refusal of an external data file does not name it: $out"
  echo "ok: data-file refused by the filter"
else
qemu-img convert -f qcow2 -O raw df.qcow2 df.mirror
mirror_run data-file df.qcow2 df.mirror $((6*M)) 4096 80

# data_file_raw=on: the data file itself must be the disk content.
qemu-img create -q -f qcow2 -o data_file=dfr.data,data_file_raw=on,cluster_size=65536 \
  dfr.qcow2 $((6*M))
qemu-img convert -f qcow2 -O raw dfr.qcow2 dfr.mirror
mirror_run data-file-raw dfr.qcow2 dfr.mirror $((6*M)) 65536 80
assert_same dfr.data dfr.mirror "raw external data file vs mirror"
fi

# O_DIRECT and a small metadata cache (when the file system has O_DIRECT).
if ! matrix_case; then
  n=$((n+1))
elif dd if=/dev/zero of=direct.test bs=4096 count=1 oflag=direct 2>/dev/null; then
  qemu-img create -q -f qcow2 -o cluster_size=4096 direct.qcow2 $((8*M))
  truncate -s $((8*M)) direct.mirror
  mirror_run direct direct.qcow2 direct.mirror $((8*M)) 4096 80 direct=true cache=1M
elif [ "${CI:-}" = true ]; then
  fail "no O_DIRECT on $tmpdir: direct=true cannot be exercised, and CI=true"
else
  echo "note: no O_DIRECT on $tmpdir, direct=true not exercised"
fi

# Large requests (32 MiB) over 512-byte clusters (an L2 table maps only
# 32 KiB) with the smallest metadata cache: one request dirties ~1000 L2
# tables.
if matrix_case; then
qemu-img create -q -f qcow2 -o cluster_size=512 big.qcow2 $((64*M))
truncate -s $((64*M)) big.mirror
head -c $((32*M)) /dev/urandom > big.src
cat > big.ops <<OPS
write -q -s $tmpdir/big.src 1000 $((32*M))
write -q -z -u 5000000 20000000
write -q -z 40000000 3000000
discard -q 100 10000000
write -q -s $tmpdir/big.src 0 10000100
write -q -P 0x61 $((60*M)) $((4*M))
flush
OPS
new_sock
serve_qcow2 "$sock" big.qcow2 cache=4K
qemu_io_cmds -f raw "$(uri_of "$sock")" < big.ops
stop_server
qemu_io_cmds -f raw big.mirror < big.ops
check_image big.qcow2
out=$(qemu-img compare -f qcow2 -F raw big.qcow2 big.mirror 2>&1) ||
  fail "large requests: image differs from the mirror: $out"
rm -f big.qcow2 big.mirror big.src
echo "ok: large requests, tiny cache"
fi

# Internal snapshots keep their content while the active image changes.
if matrix_case; then
qemu-img create -q -f qcow2 snap.qcow2 $((6*M))
n=$((n+1))
gen_ops --seed $((seed*1000+n)) --size $((6*M)) --count 30 > snap.pre
fill_image snap.qcow2 qcow2 snap.pre
qemu-img snapshot -c s1 snap.qcow2
qemu-img convert -l snapshot.name=s1 -f qcow2 -O raw snap.qcow2 snap.s1.raw
cp snap.s1.raw snap.mirror
mirror_run snapshots snap.qcow2 snap.mirror $((6*M)) 65536 80
qemu-img convert -l snapshot.name=s1 -f qcow2 -O raw snap.qcow2 snap.s1.after
assert_same snap.s1.raw snap.s1.after "snapshot s1 after writes to the active layer"
fi

matrix_summary
echo "write matrix: OK"
