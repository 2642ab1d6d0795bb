#!/bin/bash
# SPDX-License-Identifier: BSD-3-Clause
# Make the seed corpora of fuzz_vhdx (tests/fuzz/corpus/vhdx/) and
# fuzz_vhdx_log (tests/fuzz/corpus/vhdx_log/): small VHDX images made by
# qemu-img/qemu-io and by the vhdx plugin's create (dynamic, fixed,
# differencing, 1 and 2 MiB blocks, 512/4096 logical sectors, a partially
# present block with a sector bitmap), and dirty images from
# tests/vhdx/vhdx-tool.py's log generator, each encoded as its non-zero
# 4 KiB sectors (tests/fuzz/vhdx_sparse.h).
#   tests/fuzz/make-vhdx-corpus.sh [BUILD_DIR]
set -euo pipefail
top=$(cd "$(dirname "$0")/../.." && pwd)
build=${1:-$top/build}
out=$top/tests/fuzz/corpus
mkdir -p "$out/vhdx" "$out/vhdx_log"
work=$(mktemp -d /tmp/vhdx-corpus.XXXXXX)
trap 'rm -rf "$work"' EXIT
cd "$work"
tool="$top/tests/vhdx/vhdx-tool.py"
plugin="$build/plugins/vhdx/nbdkit-vhdx-plugin.so"
M=$((1024*1024))

encode () {   # encode IMG OUT: the non-zero 4 KiB sectors as records
  # (at most 12 per MiB, to keep seeds small: payload data is cut short,
  # the structures all fit), and the last sector whole, so that the file
  # has its length (QEMU refuses a block that ends past the end of file)
  python3 - "$1" "$2" <<'PY'
import struct, sys
data = open(sys.argv[1], "rb").read()
out = bytearray()
per_mib = {}
last = (len(data) - 1) // 4096
for i in range(0, len(data), 4096):
    s = data[i:i + 4096].rstrip(b"\0")
    if i // 4096 == last:
        s = data[i:i + 4096]
    if s:
        m = i >> 20
        per_mib[m] = per_mib.get(m, 0) + 1
        if per_mib[m] > 12 and i // 4096 != last:
            continue
        out += struct.pack("<HH", i // 4096, len(s)) + s
open(sys.argv[2], "wb").write(out)
PY
}
io () { qemu-io -f vhdx "$@" >/dev/null; }
fill () { io -c 'write -P 0x11 0 8k' -c 'write -P 0x22 1100000 3000' \
             -c 'write -z 2M 1M' "$1"; }

qemu-img create -q -f vhdx -o block_size=1M q-dyn-1m.vhdx 3M
encode q-dyn-1m.vhdx "$out/vhdx/q-dyn-1m-empty"
fill q-dyn-1m.vhdx
encode q-dyn-1m.vhdx "$out/vhdx/q-dyn-1m-filled"
qemu-img create -q -f vhdx -o block_size=2M,subformat=fixed q-fixed.vhdx 4M
io -c 'write -P 0x33 4096 4096' q-fixed.vhdx
encode q-fixed.vhdx "$out/vhdx/q-fixed-2m"
qemu-img create -q -f vhdx -o block_size=1M,block_state_zero=off q-nozero.vhdx 3M
fill q-nozero.vhdx
encode q-nozero.vhdx "$out/vhdx/q-dyn-nozero"

nb () { rm -f "$work/s"; nbdkit -U "$work/s" "$plugin" "$@" --run true; }
nb file=c-dyn-4k.vhdx create=3M logical-sector-size=4096 block-size=1M
encode c-dyn-4k.vhdx "$out/vhdx/c-dyn-4k"
nb file=c-parent.vhdx create=2M block-size=1M
nb file=c-child.vhdx create=0 parent="$work/c-parent.vhdx" block-size=1M
encode c-child.vhdx "$out/vhdx/c-diff-empty"
qemu-img convert -f vhdx -O raw c-parent.vhdx c-parent.raw
python3 "$tool" partial c-child.vhdx c-parent.raw c-partial.raw 3
encode c-child.vhdx "$out/vhdx/c-diff-partial"

for sc in one several wrap bat meta zero stale badcrc; do
  qemu-img create -q -f vhdx -o block_size=1M l-$sc.vhdx 3M
  io -c 'write -P 0x44 0 8k' -c 'write -P 0x55 2M 4k' l-$sc.vhdx
  python3 "$tool" dirty l-$sc.vhdx l-$sc.expect $sc 1
  encode l-$sc.vhdx "$out/vhdx_log/$sc"
done
# The targets repair the checksums of even-length inputs (vhdx_fix.h): an
# odd length keeps this seed's bad entry checksum (a trailing byte shorter
# than a record is ignored).
if [ $(( $(stat -c %s "$out/vhdx_log/badcrc") % 2 )) = 0 ]; then
  printf '\0' >> "$out/vhdx_log/badcrc"
fi
cp "$out/vhdx_log/several" "$out/vhdx/dirty-several"
ls -l "$out/vhdx" "$out/vhdx_log"
