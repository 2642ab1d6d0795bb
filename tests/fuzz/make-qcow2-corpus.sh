#!/bin/bash
# SPDX-License-Identifier: BSD-3-Clause
# Make the seed corpus of fuzz_qcow2 (tests/fuzz/corpus/qcow2/) with
# qemu-img and qemu-io: small images (1 MiB virtual, 512 B - 4 KiB
# clusters, so each file stays under 64 KiB; the extended-L2 seeds need
# 16 KiB clusters and are a little larger) covering both versions, all
# refcount widths, compressed clusters (zlib, zstd), zero clusters,
# discards, internal snapshots (also over compressed and shared clusters),
# persistent bitmaps, a backing file name, an external data file (also
# data_file_raw), lazy refcounts and the dirty/corrupt bits.  The names say what each seed is.
#   tests/fuzz/make-qcow2-corpus.sh [OUTDIR]
set -euo pipefail
top=$(cd "$(dirname "$0")/../.." && pwd)
out=${1:-$top/tests/fuzz/corpus/qcow2}
mkdir -p "$out"
work=$(mktemp -d /tmp/qcow2-corpus.XXXXXX)
trap 'rm -rf "$work"' EXIT
cd "$work"

io () { qemu-io -f qcow2 "$@" >/dev/null; }
fill () {   # a mix of data, zero writes, discards and unaligned writes
  io -c 'write -P 0x11 0 8k' -c 'write -P 0x22 100000 3000' \
     -c 'write -z 16k 8k' -c 'write -z -u 4k 2k' -c 'discard 2k 1k' \
     -c 'write -P 0x33 1040384 8192' "$1"
}
mk () {     # mk NAME OPTIONS: create 1M image with OPTIONS and fill it
  qemu-img create -q -f qcow2 -o "$2" "$1.qcow2" 1M
  fill "$1.qcow2"
}

mk v2-c512 compat=0.10,cluster_size=512
mk v2-c2k compat=0.10,cluster_size=2048
mk v3-c512-r1 compat=1.1,cluster_size=512,refcount_bits=1
mk v3-c1k-r64 cluster_size=1024,refcount_bits=64
mk v3-c4k-r8 cluster_size=4096,refcount_bits=8
mk v3-c4k-zstd cluster_size=4096,compression_type=zstd
qemu-img create -q -f qcow2 -o cluster_size=4096 v3-c4k-empty.qcow2 1M

# Compressed clusters (qemu-io write -c into unallocated clusters).
for ct in zlib zstd; do
  qemu-img create -q -f qcow2 -o cluster_size=4096,compression_type=$ct \
    "v3-c4k-compressed-$ct.qcow2" 1M
  io -c 'write -c -P 0x44 0 16k' -c 'write -c -P 0x55 64k 4k' \
     -c 'write -P 0x66 8k 1k' "v3-c4k-compressed-$ct.qcow2"
done
qemu-img create -q -f qcow2 -o compat=0.10,cluster_size=2048 v2-c2k-compressed.qcow2 1M
io -c 'write -c -P 0x77 0 8k' v2-c2k-compressed.qcow2

# Internal snapshots.
qemu-img create -q -f qcow2 -o cluster_size=2048 v3-c2k-snapshots.qcow2 1M
io -c 'write -P 0x11 0 6k' -c 'write -z 8k 2k' v3-c2k-snapshots.qcow2
qemu-img snapshot -c first v3-c2k-snapshots.qcow2
io -c 'write -P 0x88 0 4k' v3-c2k-snapshots.qcow2
qemu-img snapshot -c second v3-c2k-snapshots.qcow2

# Persistent dirty bitmaps (bitmap directory extension, bitmap tables,
# bitmap data clusters): enabled ones that qemu-io's writes mark, a
# disabled one with a larger granularity, one cleared, and one merged.
qemu-img create -q -f qcow2 -o cluster_size=4096 v3-c4k-bitmaps.qcow2 1M
qemu-img bitmap --add v3-c4k-bitmaps.qcow2 b1
qemu-img bitmap --add -g 65536 v3-c4k-bitmaps.qcow2 b2
io -c 'write -P 0x12 0 8k' -c 'write -P 0x13 600k 4k' v3-c4k-bitmaps.qcow2
qemu-img bitmap --disable v3-c4k-bitmaps.qcow2 b2
io -c 'write -P 0x14 900k 4k' v3-c4k-bitmaps.qcow2
qemu-img bitmap --add v3-c4k-bitmaps.qcow2 b3
qemu-img bitmap --merge b1 v3-c4k-bitmaps.qcow2 b3
qemu-img bitmap --clear v3-c4k-bitmaps.qcow2 b1
qemu-img create -q -f qcow2 -o cluster_size=512 v3-c512-bitmap.qcow2 1M
qemu-img bitmap --add -g 512 v3-c512-bitmap.qcow2 small
io -c 'write -P 0x15 0 3k' -c 'write -P 0x16 512k 1k' v3-c512-bitmap.qcow2

# Snapshots over compressed and shared clusters (refcounts above 1, COW
# of shared L2 tables and data), a deleted snapshot (a gap in the ids),
# and a snapshot taken with a bitmap present.
qemu-img create -q -f qcow2 -o cluster_size=1024 v3-c1k-snaps-compressed.qcow2 1M
io -c 'write -c -P 0x21 0 8k' -c 'write -P 0x22 64k 4k' v3-c1k-snaps-compressed.qcow2
qemu-img snapshot -c s1 v3-c1k-snaps-compressed.qcow2
io -c 'write -P 0x23 2k 2k' -c 'write -z 64k 1k' v3-c1k-snaps-compressed.qcow2
qemu-img snapshot -c s2 v3-c1k-snaps-compressed.qcow2
qemu-img snapshot -c s3 v3-c1k-snaps-compressed.qcow2
qemu-img snapshot -d s2 v3-c1k-snaps-compressed.qcow2
io -c 'discard 0 4k' -c 'write -P 0x24 100k 1k' v3-c1k-snaps-compressed.qcow2
cp v3-c4k-bitmaps.qcow2 v3-c4k-bitmaps-snap.qcow2
qemu-img snapshot -c withbitmaps v3-c4k-bitmaps-snap.qcow2
io -c 'write -P 0x25 4k 4k' v3-c4k-bitmaps-snap.qcow2

# Header extensions: backing format name with an external data file in
# raw mode (data_file_raw), and a long backing file name.
qemu-img create -q -f qcow2 -o cluster_size=4096,data_file=data2.raw,data_file_raw=on \
  v3-c4k-datafile-raw.qcow2 1M
io -c 'write -P 0xab 0 8k' v3-c4k-datafile-raw.qcow2
qemu-img create -q -f qcow2 -o cluster_size=4096 -b "$(printf 'b%.0s' $(seq 200)).raw" \
  -F raw -u v3-c4k-long-backing.qcow2 1M
# Lazy refcounts (compatible feature bit), written.
qemu-img create -q -f qcow2 -o cluster_size=2048,lazy_refcounts=on v3-c2k-lazy.qcow2 1M
io -c 'write -P 0x31 0 6k' v3-c2k-lazy.qcow2

# A backing file name (raw, in the same directory) and a backing loop
# onto the fuzz target's own file name.
qemu-img create -q -f raw backing.raw 1M
qemu-img create -q -f qcow2 -o cluster_size=4096 -b backing.raw -F raw \
  v3-c4k-backing.qcow2 1M
io -c 'write -P 0x99 4k 4k' v3-c4k-backing.qcow2
qemu-img create -q -f qcow2 -o cluster_size=4096 v3-c4k-self-backing.qcow2 1M
qemu-img rebase -u -f qcow2 -b img.qcow2 -F qcow2 v3-c4k-self-backing.qcow2

# An external data file (the seed names it; it is absent when fuzzing).
qemu-img create -q -f qcow2 -o cluster_size=4096,data_file=data.raw \
  v3-c4k-datafile.qcow2 1M
io -c 'write -P 0xaa 0 8k' v3-c4k-datafile.qcow2

# Extended L2 entries need 16 KiB clusters.
qemu-img create -q -f qcow2 -o cluster_size=16384,extended_l2=on v3-xl2-16k.qcow2 1M
io -c 'write -P 0xbb 1k 3k' -c 'write -z 20k 1k' v3-xl2-16k.qcow2

# Dirty (bit 0) and corrupt (bit 1) incompatible feature bits.
for b in 0 1; do
  cp v3-c4k-r8.qcow2 "v3-c4k-incompat-bit$b.qcow2"
  python3 - "v3-c4k-incompat-bit$b.qcow2" "$b" <<'EOF'
import struct, sys
with open(sys.argv[1], "r+b") as f:
    f.seek(72)
    v = struct.unpack(">Q", f.read(8))[0] | (1 << int(sys.argv[2]))
    f.seek(72)
    f.write(struct.pack(">Q", v))
EOF
done

for f in *.qcow2; do
  qemu-img check -q "$f" 2>/dev/null || :
  cp "$f" "$out/$f"
done
ls -l "$out"
