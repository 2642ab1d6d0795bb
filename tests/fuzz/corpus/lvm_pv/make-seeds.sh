#!/bin/bash
# Regenerate the seeds: small PV images (label, PV header, one metadata
# area) with real lvm2 metadata, one with the text wrapping around the end
# of the ring.  Needs root (loop device) and lvm2; writes into this dir.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
top=$here/../../../..
t=$(mktemp -d); trap 'losetup -d "$dev" 2>/dev/null; rm -rf "$t"' EXIT
truncate -s 8M "$t/pv.img"
dev=$(losetup -f --show "$t/pv.img")
cfg="devices{filter=[\"a|^$dev\$|\",\"r|.*|\"]} global{activation=0} backup{backup=0 archive=0}"
export LVM_SUPPRESS_FD_WARNINGS=1
pvcreate -q --config "$cfg" --metadatasize 16k "$dev"
vgcreate -q --config "$cfg" -s 1m vgf "$dev"
lvcreate -q --config "$cfg" -an -Zn -L 2M -n a vgf
losetup -d "$dev"
python3 "$top/tests/lvm/lvm-mda.py" dump "$t/pv.img" > "$t/text"
# Shrink the metadata area to 8 KiB (PV header, mda header and label
# checksums updated) and keep only the bytes the reader touches.
python3 - "$t/pv.img" "$here/pv-small.img" <<'PY'
import struct, sys
img = bytearray(open(sys.argv[1], "rb").read())
def crc(data, c=0xF597A6CF):
    for b in data:
        c ^= b
        for _ in range(8):
            c = (c >> 1) ^ 0xEDB88320 if c & 1 else c >> 1
    return c
lab = 512
off = struct.unpack_from("<I", img, lab + 20)[0]
p = lab + off + 40
while struct.unpack_from("<Q", img, p)[0]:
    p += 16
p += 16                                   # data list terminator
start = struct.unpack_from("<Q", img, p)[0]
struct.pack_into("<Q", img, p + 8, 8192)  # mda size in the PV header
struct.pack_into("<I", img, lab + 16, crc(bytes(img[lab + 20:lab + 512])))
struct.pack_into("<Q", img, start + 32, 8192)
struct.pack_into("<QQII", img, start + 40, 0, 0, 0, 0)
struct.pack_into("<I", img, start, crc(bytes(img[start + 4:start + 512])))
open(sys.argv[2], "wb").write(bytes(img[:start + 8192]))
PY
cp "$here/pv-small.img" "$here/pv-wrapped.img"
python3 "$top/tests/lvm/lvm-mda.py" write "$here/pv-small.img" "$t/text" --offset 512
python3 "$top/tests/lvm/lvm-mda.py" write "$here/pv-wrapped.img" "$t/text" --offset $((8192 - 600))
