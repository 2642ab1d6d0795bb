#!/usr/bin/env python3
# SPDX-License-Identifier: BSD-3-Clause
"""Hand-made images that claim huge sizes or counts, one per resource
limit (docs/hardening.md "Resource limits"), for
tests/torture/test-resource-limits.sh.

  make-hostile.py CASE DIR [BASE]

writes the image(s) of CASE into DIR.  Cases that patch a real image take
it as BASE (made by qemu-img or by our filters in the test).  Files are
sparse: a case never needs more than a few MiB of disk.
"""

import importlib.util
import os
import shutil
import struct
import sys

here = os.path.dirname(os.path.abspath(__file__))
_spec = importlib.util.spec_from_file_location(
    "vhdx_tool", os.path.join(here, "..", "vhdx", "vhdx-tool.py"))
vt = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(vt)
crc32c = vt.crc32c


def patch(path, off, fmt, *vals):
    with open(path, "r+b") as f:
        f.seek(off)
        f.write(struct.pack(fmt, *vals))


def grow(path, size):
    with open(path, "r+b") as f:
        f.truncate(max(size, os.path.getsize(path)))


# --- qcow2 (header fields big-endian, see docs/interop or QEMU's spec) -----
def qcow2(case, d, base):
    p = os.path.join(d, "disk.qcow2")
    shutil.copyfile(base, p)
    if case == "qcow2-size":            # 2^63 bytes
        patch(p, 24, ">Q", 1 << 63)
    elif case == "qcow2-l1":            # 2^24 L1 entries = 128 MiB
        patch(p, 36, ">I", 1 << 24)
    elif case == "qcow2-rt":            # refcount table of 2^20 clusters
        patch(p, 56, ">I", 1 << 20)
    elif case == "qcow2-snapshots":     # 10^9 snapshots
        patch(p, 60, ">IQ", 10 ** 9, 1 << 20)
        grow(p, 2 << 20)
    elif case == "qcow2-snaptable":
        # 520 snapshots of 128 KiB each (IDs and names of 65535 bytes):
        # a 68 MB table, above the 64 MiB limit, in a sparse file.
        off, n = 1 << 20, 520
        with open(p, "r+b") as f:
            pos = off
            for i in range(n):
                f.seek(pos)
                f.write(struct.pack(">QIHHIIQII", 0, 0, 65535, 65535, 0, 0, 0, 0, 0))
                f.seek(pos + 40)
                f.write(b"%d" % i)
                pos += (40 + 2 * 65535 + 7) & ~7
            f.truncate(pos + (1 << 20))
        patch(p, 60, ">IQ", n, off)
    else:
        raise SystemExit("unknown case " + case)


# --- vmdk (little-endian sparse header) --------------------------------------
def vmdk_sparse(path, cap, grain, gtes, gd_fill, desc_name):
    ngd = -(-cap // (grain * gtes))
    gd = 64
    gt = gd + -(-min(ngd, gd_fill) * 4 // 512)
    desc = ('# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\n'
            'createType="monolithicSparse"\n\nRW %d SPARSE "%s"\n\n'
            'ddb.virtualHWVersion = "4"\n' % (min(cap, (1 << 54) - 1), desc_name)).encode()
    h = bytearray(512)
    struct.pack_into("<IIIQQQQIQQQ", h, 0, 0x564d444b, 1, 0, cap, grain, 1, 20,
                     gtes, 0, gd, gt + gtes * 4 // 512 + 1)
    with open(path, "wb") as f:
        f.write(h)
        f.seek(512)
        f.write(desc)
        if gd_fill:
            f.seek(gd * 512)
            f.write(struct.pack("<I", gt) * min(ngd, gd_fill))
        f.seek(gt * 512)
        f.write(bytes(gtes * 4))
        f.truncate(gt * 512 + gtes * 4 + 512)


def vmdk(case, d, base):
    p = os.path.join(d, "disk.vmdk")
    if case == "vmdk-capacity":         # 2^62 sectors = 2^71 bytes
        vmdk_sparse(p, 1 << 62, 128, 512, 0, "disk.vmdk")
    elif case == "vmdk-gd":             # 2^30 grain tables
        vmdk_sparse(p, 1 << 42, 1, 4096, 0, "disk.vmdk")
    elif case == "vmdk-gtmem":
        # 2^20 directory entries, all naming one 16 KiB table: 16 GiB of
        # tables if each were loaded (a 4 MiB file).
        vmdk_sparse(p, 1 << 32, 1, 4096, 1 << 20, "disk.vmdk")
    elif case == "vmdk-extents":        # 5000 ZERO extents
        with open(p, "w") as f:
            f.write('# Disk DescriptorFile\nversion=1\nCID=fffffffe\n'
                    'parentCID=ffffffff\ncreateType="monolithicFlat"\n\n')
            for _ in range(5000):
                f.write("RW 2048 ZERO\n")
    elif case == "vmdk-desc":           # a 2 MiB descriptor
        with open(p, "w") as f:
            f.write('# Disk DescriptorFile\nversion=1\nCID=fffffffe\n'
                    'parentCID=ffffffff\ncreateType="monolithicFlat"\n\n'
                    'RW 2048 ZERO\n')
            f.write(("#" + "x" * 1023 + "\n") * 2048)
    elif case == "vmdk-total":          # three extents of 2^53 sectors
        with open(p, "w") as f:
            f.write('# Disk DescriptorFile\nversion=1\nCID=fffffffe\n'
                    'parentCID=ffffffff\ncreateType="monolithicFlat"\n\n')
            f.write('RW 9007199254740992 ZERO\n' * 3)
    else:
        raise SystemExit("unknown case " + case)


# --- vhdx ---------------------------------------------------------------------
def vhdx(case, d, base):
    p = os.path.join(d, "disk.vhdx")
    shutil.copyfile(base, p)
    with open(p, "r+b") as f:
        g = vt.geometry(f)
        h = vt.read_headers(f)
    if case in ("vhdx-size", "vhdx-bat"):
        off, _ = g["items"][vt.DISK_SIZE]
        # 2^63 bytes; or 64 TiB (the size limit) in 1 MiB blocks, whose BAT
        # has more than 2^26 entries.
        patch(p, off, "<Q", (1 << 63) if case == "vhdx-size" else 64 << 40)
        if case == "vhdx-bat":
            off, _ = g["items"][vt.FILE_PARAMS]
            patch(p, off, "<I", 1 << 20)
    elif case in ("vhdx-log", "vhdx-logheaders"):
        # A log to replay of 128 MiB (the limit is 64 MiB); or one of
        # 64 MiB whose first 1024 sectors are each an entry header
        # claiming the whole log, with a wrong checksum: checking them
        # all would checksum 64 GiB.
        log_len = (128 << 20) if case == "vhdx-log" else (64 << 20)
        guid = bytes(range(1, 17))
        with open(p, "r+b") as f:
            for slot_off in (64 * 1024, 128 * 1024):
                f.seek(slot_off)
                hb = bytearray(f.read(4096))
                if hb[:4] != b"head":
                    continue
                hb[48:64] = guid                         # log GUID
                struct.pack_into("<I", hb, 68, log_len)  # log length
                struct.pack_into("<Q", hb, 72, 8 << 20)  # log offset
                hb[4:8] = bytes(4)
                struct.pack_into("<I", hb, 4, crc32c(hb))
                f.seek(slot_off)
                f.write(hb)
            f.truncate(max(os.path.getsize(p), (8 << 20) + log_len))
            if case == "vhdx-logheaders":
                for i in range(1024):
                    e = bytearray(64)
                    e[0:4] = b"loge"
                    struct.pack_into("<IIIQI", e, 4, 0xdeadbeef, log_len,
                                     0, 1000 + i, 0)
                    e[32:48] = guid
                    f.seek((8 << 20) + i * 4096)
                    f.write(e)
    else:
        raise SystemExit("unknown case " + case)
    del h


# --- thin metadata (little-endian; common/thin/thin.h) -----------------------
def thin_header(vsize, chunk, external):
    nv = -(-vsize // chunk)
    tb = -(-nv // 1023)
    bb = -(-nv // (4092 * 8))
    body = (tb + bb) * 4096
    data_off = 0 if external else -(-(2 * 4096 + 2 * body) // chunk) * chunk
    b = bytearray(4096)
    b[:8] = b"NBDKTHIN"
    struct.pack_into("<IIQQIIQQIIQQQ", b, 8, 1, 4096, 1, vsize, chunk,
                     1 if external else 0, nv, data_off, tb & 0xFFFFFFFF,
                     bb & 0xFFFFFFFF, body, 0, 0)
    struct.pack_into("<I", b, 4092, crc32c(bytes(b[:4092])))
    return bytes(b)


def thin(case, d, base):
    meta = os.path.join(d, "meta.thin")
    with open(os.path.join(d, "pool.img"), "wb") as f:
        f.truncate(8 << 20)
    if case == "thin-size":             # 2^63 bytes in 4 KiB chunks
        hdr = thin_header((1 << 63) - 4096, 4096, True)
    elif case == "thin-short":
        # 2^28 chunks of 4 KiB (1 TiB; the most chunks allowed): 1 GiB of
        # metadata claimed, 8 KiB present.
        hdr = thin_header(1 << 40, 4096, True)
    else:
        raise SystemExit("unknown case " + case)
    with open(meta, "wb") as f:
        f.write(hdr)
        f.write(hdr)


# --- snapshot state -----------------------------------------------------------
def snapshot(case, d, base):
    ov = os.path.join(d, "ov")
    os.makedirs(ov, exist_ok=True)
    with open(os.path.join(d, "base.raw"), "wb") as f:
        f.truncate(8 << 20)
    with open(os.path.join(ov, "snapshot.state"), "w") as f:
        f.write("nbdkit-snapshot-chain 1\n")
        if case == "snapshot-layers":   # 10^6 layers
            n = 10 ** 6
            f.write("size %d\nnext-id %d\n" % (8 << 20, n + 1))
            for i in range(1, n):
                f.write("layer %d 0 s%d\n" % (i, i))
            f.write("top %d\nend\n" % n)
        elif case == "snapshot-size":   # a recorded size of 2^63 - 1
            f.write("size %d\nnext-id 2\ntop 1\nend\n" % ((1 << 63) - 1))
        else:
            raise SystemExit("unknown case " + case)


def main():
    case, d = sys.argv[1], sys.argv[2]
    base = sys.argv[3] if len(sys.argv) > 3 else None
    os.makedirs(d, exist_ok=True)
    {"qcow2": qcow2, "vmdk": vmdk, "vhdx": vhdx, "thin": thin,
     "snapshot": snapshot}[case.split("-")[0]](case, d, base)


if __name__ == "__main__":
    main()
