#!/usr/bin/env python3
# SPDX-License-Identifier: BSD-3-Clause
"""Exit 0 if two data grains of a hosted sparse VMDK file overlap in the
file (damage that qemu-img check does not report: writes through one
grain then show through the other, in QEMU as in our engine), else 1.

  vmdk-overlapping-grains.py IMAGE
"""
import struct
import sys


def main():
    with open(sys.argv[1], "rb") as f:
        h = f.read(512)
        if len(h) < 512 or h[:4] != b"KDMV":
            return 1
        cap, grain = struct.unpack_from("<QQ", h, 12)
        ngte = struct.unpack_from("<I", h, 44)[0]
        gd = struct.unpack_from("<Q", h, 56)[0]
        flags = struct.unpack_from("<I", h, 8)[0]
        if grain == 0 or ngte == 0 or grain > 1 << 20 or ngte > 1 << 16:
            return 1
        if flags & (1 << 16):   # compressed grains are packed closer
            return 1
        ngrains = (cap + grain - 1) // grain
        ngd = (ngrains + ngte - 1) // ngte
        if ngd > 1 << 16:
            return 1
        f.seek(gd * 512)
        raw = f.read(4 * ngd)
        if len(raw) < 4 * ngd:
            return 1
        starts = []
        for i, gt in enumerate(struct.unpack("<%dI" % ngd, raw)):
            if gt == 0:
                continue
            f.seek(gt * 512)
            raw = f.read(4 * ngte)
            raw += b"\0" * (4 * ngte - len(raw))
            for j, e in enumerate(struct.unpack("<%dI" % ngte, raw)):
                if i * ngte + j >= ngrains:
                    break
                if e == 0 or (e == 1 and flags & 4):
                    continue
                starts.append(e)
    starts.sort()
    return 0 if any(b - a < grain for a, b in zip(starts, starts[1:])) else 1


if __name__ == "__main__":
    sys.exit(main())
