#!/bin/bash
# SPDX-License-Identifier: BSD-3-Clause
# Read matrix: images made by qemu-img create/convert and filled by qemu-io
# with a seeded random mix of writes (aligned and not), zero writes (with
# and without unmap), discards and compressed writes, for every
# combination of compat (0.10, 1.1), cluster size (512, 4K, 64K, 2M) and
# refcount bits (1, 16, 64), plus compression types (zlib, zstd),
# extended L2 entries and images converted from raw with -c.  Each image
# is served read-only by the plugin and must read exactly like qemu-img
# convert -O raw of the file (nbdcopy + cmp, qemu-img compare), with a
# block status consistent with qemu-img map.
#
# Chains, data files and snapshots: test-qcow2-read-chains.sh.
#   test-qcow2-read-matrix.sh [SEED]
source "${TOP_SRCDIR:?run the tests through ctest, which sets TOP_SRCDIR}/tests/functions.sh"
source "$TOP_SRCDIR/tests/qcow2/qcow2-functions.sh"

seed=${1:-${QCOW2_SEED:-1}}
echo "seed $seed"
n=0

# one NAME SIZE CLUSTER COMPRESS(0/1) CREATE-OPTIONS
#   qemu-img create -f qcow2 -o OPTIONS, fill with 40 seeded ops, compare
#   through the plugin (read-only, and read-write too for some).
one () {
  local name=$1 size=$2 cs=$3 comp=$4 opts=$5
  local img="$tmpdir/$name.qcow2" sock
  n=$((n+1))
  matrix_case || return 0
  qemu-img create -q -f qcow2 -o "$opts" "$img" "$size" ||
    fail "$name: qemu-img create -o $opts"
  local cflag=()
  [ "$comp" = 1 ] && cflag=(--compress)
  gen_ops --seed $((seed*1000+n)) --size "$size" --cluster "$cs" \
    --count 40 "${cflag[@]}" > "$tmpdir/$name.ops"
  fill_image "$img" qcow2 "$tmpdir/$name.ops"
  check_image "$img"
  new_sock
  serve_qcow2 "$sock" "$img" -r
  ORACLE=(-f qcow2 "$img")
  check_export_read "$(uri_of "$sock")" "$tmpdir/$name"
  stop_server
  # Writable open of an unmodified image must not change what it reads.
  if (( n % 3 == 0 )); then
    new_sock
    serve_qcow2 "$sock" "$img"
    check_export_read "$(uri_of "$sock")" "$tmpdir/$name"
    stop_server
    check_image "$img"
  fi
  echo "ok: $name ($opts)"
  rm -f "$img"
}

# The core matrix.  compat=0.10 only has 16-bit refcounts and no
# compression type field (zlib only).
for cs in 512 4096 65536 2097152; do
  size=$((8*1024*1024)); [ $cs = 2097152 ] && size=$((20*1024*1024 + 4096))
  one "v2-c$cs" $size $cs 1 "compat=0.10,cluster_size=$cs"
  for rb in 1 16 64; do
    one "v3-c$cs-r$rb" $size $cs 1 \
      "compat=1.1,cluster_size=$cs,refcount_bits=$rb"
  done
  one "v3-c$cs-zstd" $size $cs 1 \
    "compat=1.1,cluster_size=$cs,compression_type=zstd"
done

# Extended L2 entries (32 subclusters per cluster, cluster >= 16K), with
# both compression types; many small unaligned writes hit subclusters.
for cs in 16384 65536 2097152; do
  size=$((6*1024*1024 + 512)); [ $cs = 2097152 ] && size=$((16*1024*1024))
  one "xl2-c$cs" $size $cs 1 "compat=1.1,cluster_size=$cs,extended_l2=on"
  one "xl2-c$cs-zstd-r64" $size $cs 1 \
    "compat=1.1,cluster_size=$cs,extended_l2=on,compression_type=zstd,refcount_bits=64"
done

# Preallocation (metadata only, fallocate, full), lazy refcounts.
for pa in metadata falloc full; do
  one "prealloc-$pa" $((6*1024*1024)) 65536 0 "preallocation=$pa"
  one "prealloc-$pa-xl2" $((6*1024*1024)) 65536 0 \
    "preallocation=$pa,extended_l2=on"
done
one "prealloc-metadata-v2" $((4*1024*1024)) 4096 0 \
  "compat=0.10,cluster_size=4096,preallocation=metadata"
one "lazy-refcounts" $((6*1024*1024)) 65536 1 "lazy_refcounts=on"

# Odd virtual sizes (not a multiple of the cluster size).
one "odd-size" $((3*1024*1024 + 1536)) 65536 0 "compat=1.1"
one "odd-size-v2" $((1024*1024 + 512)) 4096 0 "compat=0.10,cluster_size=4096"

# Images converted from raw with compression (qemu-img convert -c), then
# partly overwritten by qemu-io: compressed, normal and zero clusters mix.
python3 - "$tmpdir/src.raw" <<'EOF'
import random, sys
r = random.Random(7)
size = 8 * 1024 * 1024
with open(sys.argv[1], "wb") as f:
    pos = 0
    while pos < size:
        n = r.choice([4096, 65536, 100000, 300000])
        n = min(n, size - pos)
        kind = r.random()
        if kind < 0.3:
            f.write(bytes(n))                       # zeroes: left sparse
        elif kind < 0.6:
            f.write(bytes(r.getrandbits(8) for _ in range(min(n, 4096))) * (n // 4096) + bytes(n % 4096))
        else:
            f.write((b"compressible %d " % pos) * (n // 16) + bytes(n % 16))
        pos += n
EOF
for ct in zlib zstd; do
  for cs in 4096 65536 2097152; do
    for compat in 0.10 1.1; do
      [ $compat = 0.10 ] && [ $ct = zstd ] && continue
      opts="compat=$compat,cluster_size=$cs"
      [ $compat = 1.1 ] && opts="$opts,compression_type=$ct"
      name="conv-$ct-c$cs-$compat"
      img="$tmpdir/$name.qcow2"
      n=$((n+1))
      matrix_case || continue
      qemu-img convert -c -f raw -O qcow2 -o "$opts" "$tmpdir/src.raw" "$img" ||
        fail "qemu-img convert -c -o $opts"
      new_sock
      serve_qcow2 "$sock" "$img" -r
      ORACLE=(-f qcow2 "$img")
      check_export_read "$(uri_of "$sock")" "$tmpdir/$name"
      stop_server
      # Overwrite parts of compressed clusters, then read again.
      gen_ops --seed $((seed*1000+n)) --size $((8*1024*1024)) --cluster "$cs" \
        --count 20 > "$tmpdir/$name.ops"
      fill_image "$img" qcow2 "$tmpdir/$name.ops"
      new_sock
      serve_qcow2 "$sock" "$img" -r
      check_export_read "$(uri_of "$sock")" "$tmpdir/$name"
      stop_server
      echo "ok: $name"
      rm -f "$img"
    done
  done
done

# Resized images: grown (the L1 table is reallocated) and shrunk.
if matrix_case; then
img="$tmpdir/resized.qcow2"
qemu-img create -q -f qcow2 -o cluster_size=4096 "$img" 3M
gen_ops --seed $((seed*1000+900)) --size $((3*1024*1024)) --cluster 4096 \
  --count 30 > "$tmpdir/resized.ops"
fill_image "$img" qcow2 "$tmpdir/resized.ops"
qemu-img resize -q "$img" 40M
qemu-io -f qcow2 -c 'write -P 0x71 39M 1M' -c 'write -P 0x72 2M 2M' "$img" >/dev/null
new_sock
serve_qcow2 "$sock" "$img" -r
ORACLE=(-f qcow2 "$img")
check_export_read "$(uri_of "$sock")" "$tmpdir/resized"
stop_server
qemu-img resize -q --shrink "$img" $((5*1024*1024 + 512))
new_sock
serve_qcow2 "$sock" "$img" -r
check_export_read "$(uri_of "$sock")" "$tmpdir/shrunk"
stop_server
echo "ok: resized (grown, shrunk)"
fi

matrix_summary
echo "read matrix: $((n - matrix_skipped)) images OK"
