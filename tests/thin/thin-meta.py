#!/usr/bin/env python3
# SPDX-License-Identifier: BSD-3-Clause
# An independent reader of the thin pool metadata (format in
# common/thin/thin.h), for the tests: summarise it, or plant a fault that
# nbdkit-thin-check must find.
#   thin-meta.py summary POOL      -> "mapped N used M seq S slot K"
#   thin-meta.py plant POOL double|leak|range|wrongslot|used
#   thin-meta.py forge POOL NV  -> a new 8 KiB POOL: only a header, valid
#                                  and consistent, claiming NV chunks of 4 KiB
import os
import struct
import sys

BLK = 4096
TPB = 1023
BPB = 4092 * 8

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from crc32c import crc32c  # noqa: E402


def block_crc(seed, blk):
    return crc32c(struct.pack("<I", seed) + blk[:BLK - 4])


def headers(f):
    best = None
    for s in range(2):
        f.seek(s * BLK)
        h = f.read(BLK)
        if h[:8] != b"NBDKTHIN":
            continue
        if struct.unpack_from("<I", h, BLK - 4)[0] != crc32c(h[:BLK - 4]):
            continue
        seq, vsize, chunk, flags, nv, doff, tb, bb, body = struct.unpack_from(
            "<QQIIQQIIQ", h, 16)
        d = dict(slot=s, seq=seq, vsize=vsize, chunk=chunk, nv=nv,
                 doff=doff, tb=tb, bb=bb, body=body)
        if best is None or seq > best["seq"]:
            best = d
    if best is None:
        sys.exit("no valid header")
    return best


def body_off(h, slot):
    return 2 * BLK + slot * h["body"]


def read_block(f, h, idx):
    f.seek(body_off(h, h["slot"]) + idx * BLK)
    return bytearray(f.read(BLK))


def write_block(f, h, idx, blk, seed):
    struct.pack_into("<I", blk, BLK - 4, block_crc(seed, blk))
    f.seek(body_off(h, h["slot"]) + idx * BLK)
    f.write(blk)


def entries(f, h):
    out = []
    for i in range(h["tb"]):
        blk = read_block(f, h, i)
        assert struct.unpack_from("<I", blk, BLK - 4)[0] == block_crc(i, blk)
        out += list(struct.unpack_from("<%dI" % TPB, blk, 0))
    return out[:h["nv"]]


def bits(f, h):
    out = []
    for j in range(h["bb"]):
        blk = read_block(f, h, h["tb"] + j)
        for k in range(BPB):
            out.append((blk[k >> 3] >> (k & 7)) & 1)
    return out[:h["nv"]]


def forge(path, nv):
    tb = -(-nv // TPB)
    bb = -(-nv // BPB)
    body = (tb + bb) * BLK
    doff = -(-(2 * BLK + 2 * body) // BLK) * BLK
    h = bytearray(BLK)
    h[:8] = b"NBDKTHIN"
    struct.pack_into("<IIQQIIQQIIQQQ", h, 8, 1, BLK, 2, nv * BLK, BLK, 0,
                     nv, doff, tb, bb, body, 0, 0)
    struct.pack_into("<I", h, BLK - 4, crc32c(bytes(h[:BLK - 4])))
    with open(path, "wb") as f:
        f.write(h + bytes(BLK))


def main():
    cmd, path = sys.argv[1], sys.argv[2]
    if cmd == "forge":
        forge(path, int(sys.argv[3]))
        return
    with open(path, "r+b") as f:
        h = headers(f)
        e = entries(f, h)
        b = bits(f, h)
        if cmd == "summary":
            print("mapped %d used %d seq %d slot %d" %
                  (sum(1 for x in e if x), sum(b), h["seq"], h["slot"]))
            return
        kind = sys.argv[3]
        if kind in ("wrongslot", "used"):
            # The current header, its seq raised by one (transaction T
            # belongs in slot T & 1, so this one is in the wrong slot), or
            # its count of used chunks raised by 3.
            f.seek(h["slot"] * BLK)
            hb = bytearray(f.read(BLK))
            if kind == "wrongslot":
                struct.pack_into("<Q", hb, 16, h["seq"] + 1)
            else:
                used = struct.unpack_from("<Q", hb, 72)[0]
                struct.pack_into("<Q", hb, 72, used + 3)
            struct.pack_into("<I", hb, BLK - 4, crc32c(bytes(hb[:BLK - 4])))
            f.seek(h["slot"] * BLK)
            f.write(hb)
            return
        mapped = [v for v, x in enumerate(e) if x]
        free_v = [v for v, x in enumerate(e) if not x]
        if kind == "double":
            # An unmapped virtual chunk pointed at a mapped physical one.
            v, p1 = free_v[0], e[mapped[0]]
            blk = read_block(f, h, v // TPB)
            struct.pack_into("<I", blk, 4 * (v % TPB), p1)
            write_block(f, h, v // TPB, blk, v // TPB)
        elif kind == "range":
            v = free_v[0]
            blk = read_block(f, h, v // TPB)
            struct.pack_into("<I", blk, 4 * (v % TPB), h["nv"])
            write_block(f, h, v // TPB, blk, v // TPB)
        elif kind == "leak":
            used = set(x - 1 for x in e if x)
            p = next(p for p in range(h["nv"]) if p not in used)
            j = p // BPB
            blk = read_block(f, h, h["tb"] + j)
            k = p % BPB
            blk[k >> 3] |= 1 << (k & 7)
            write_block(f, h, h["tb"] + j, blk, 0x80000000 | j)
        else:
            sys.exit("unknown fault " + kind)


main()
