#!/bin/bash
# SPDX-License-Identifier: BSD-3-Clause
# Make the seed corpora of fuzz_vmdk (tests/fuzz/corpus/vmdk/) and
# fuzz_vmdk_desc (tests/fuzz/corpus/vmdk_desc/) with qemu-img, qemu-io and
# the hand-made image generator of the tests (tests/vmdk/vmdk-gen.py):
# small images (32 KiB virtual, small grains so that files stay small)
# covering sparse versions 1-3, zeroed grains, a disagreeing redundant
# grain directory, streamOptimized with markers and a footer, COWD, and
# qemu-img's descriptors (each subformat, a delta disk).
#   tests/fuzz/make-vmdk-corpus.sh [OUTDIR]
set -euo pipefail
top=$(cd "$(dirname "$0")/../.." && pwd)
out=${1:-$top/tests/fuzz/corpus}
mkdir -p "$out/vmdk" "$out/vmdk_desc"
work=$(mktemp -d /tmp/vmdk-corpus.XXXXXX)
trap 'rm -rf "$work"' EXIT
cd "$work"
gen () { python3 "$top/tests/vmdk/vmdk-gen.py" --size 32768 "$@"; }

gen --out "$out/vmdk/v1-g1.vmdk" --grain 1 --gtes 64 --seed 1
gen --out "$out/vmdk/v2-g2-zero.vmdk" --grain 2 --gtes 32 --version 2 \
  --zero-grain --seed 2
gen --out "$out/vmdk/v3-g4.vmdk" --grain 4 --gtes 128 --version 3 --seed 3
gen --out "$out/vmdk/v1-g1-badrgd.vmdk" --grain 1 --gtes 64 --bad-rgd --seed 4
gen --out "$out/vmdk/stream-g1.vmdk" --grain 1 --gtes 64 --stream \
  --version 3 --seed 5
gen --out "$out/vmdk/stream-g2-zero.vmdk" --grain 2 --gtes 64 --stream \
  --version 3 --zero-grain --seed 6
gen --out "$out/vmdk/cowd-g1.vmdk" --grain 1 --cowd --seed 7

# qemu-img's own: an empty 64 KiB monolithicSparse (one grain), a written
# one, and the descriptors of every subformat.
qemu-img create -q -f vmdk "$out/vmdk/qemu-empty.vmdk" 64K
qemu-img create -q -f vmdk s.vmdk 64K
qemu-io -f vmdk -c 'write -P 0x11 512 1000' s.vmdk >/dev/null
cp s.vmdk "$out/vmdk/qemu-written.vmdk"
for sub in monolithicFlat twoGbMaxExtentSparse twoGbMaxExtentFlat; do
  qemu-img create -q -f vmdk -o subformat=$sub $sub.vmdk 3G
  cp $sub.vmdk "$out/vmdk_desc/$sub.txt"
  cp $sub.vmdk "$out/vmdk/desc-$sub.vmdk"
done
qemu-img create -q -f vmdk -b s.vmdk -F vmdk child.vmdk
dd if=child.vmdk bs=512 skip=1 count=20 status=none | tr -d '\0' \
  > "$out/vmdk_desc/delta.txt"
cat > "$out/vmdk_desc/mixed.txt" <<'EOT'
# Disk DescriptorFile
version=3
CID=fffffffe
parentCID=0badc0de
createType="vmfsSparse"
parentFileNameHint="base.vmdk"

# Extent description
RW 2048 VMFSSPARSE "a-delta.vmdk"
RDONLY 4096 ZERO
NOACCESS 1024 FLAT "b-flat.vmdk" 77
RW 1 VMFS "c.vmdk"
RW 8 SESPARSE "d.vmdk"

ddb.adapterType = "lsilogic"
EOT
ls -l "$out/vmdk" "$out/vmdk_desc"
