#!/usr/bin/env python3
# SPDX-License-Identifier: BSD-3-Clause
"""Hand-made VMDK images, written from VMware's "Virtual Disk Format 1.1"
specification, for what qemu-img does not create.

  vmdk-gen.py --out IMG --raw RAW --size BYTES [--seed S]
              [--grain SECTORS] [--gtes N] [--version 1|2|3]
              [--zero-grain] [--bad-rgd] [--stream] [--cowd]
              [--hostile KIND]
  vmdk-gen.py --sesparse --out IMG --raw RAW --size BYTES [--seed S]
              [--parent P --parent-raw PRAW]

IMG    the image (a monolithic sparse file; with --cowd a VMFSSPARSE
       "COWD" file)
RAW    the content the image must read as (written by this generator; the
       tests also compare it with qemu-img convert -O raw where QEMU reads
       the image)

Grains are, at random: unallocated (zeroes), data, or (--zero-grain)
zeroed-grain entries (GTE 1).  --bad-rgd fills the redundant grain
directory with entries that disagree with the primary one (readers must
use the primary).  --stream writes a streamOptimized image: deflate
compressed grains behind grain markers, GT/GD/footer/end-of-stream
markers and a header whose GD offset is -1 (the footer holds the real
one).

--sesparse writes a descriptor IMG (createType seSparse) and its SESPARSE
extent IMG-without-.vmdk + "-sesparse.vmdk", laid out as QEMU reads the
format (block/vmdk.c; VMware does not document it): a constant and a
volatile header, a grain directory of u64 entries (0: no table, else
0x10000000 << 32 | table index), 4096-entry tables of u64 grain entries
(0: unallocated; top nibble 1 or 2: zeroes; 3: data, a 60-bit grain
number with its low 12 bits in bits 48-59), 4 KiB grains.  Tables and
grains are placed out of order; one grain number is above 4095 (sparse
file).  The second table is left unallocated (directory entry 0).  With
--parent, unallocated grains read from P (a VMDK whose content is PRAW,
CID 12345678).

--hostile KIND corrupts the result (for the security test): truncated,
grain0, grain-huge, gtes0, gtes-huge, gd-past-eof, gt-past-eof,
capacity-huge, gde-huge, bad-newline, stream-nofooter, stream-badzlib,
marker-huge, version9.
"""

import argparse
import random
import struct
import zlib

SECTOR = 512


def sectors(n):
    return (n + SECTOR - 1) // SECTOR


def descriptor(size, create_type, name, cid=0x12345678):
    return ("# Disk DescriptorFile\nversion=1\nCID=%08x\nparentCID=ffffffff\n"
            "createType=\"%s\"\n\n# Extent description\n"
            "RW %d SPARSE \"%s\"\n\n# The Disk Data Base\n#DDB\n\n"
            "ddb.virtualHWVersion = \"4\"\nddb.adapterType = \"ide\"\n"
            % (cid, create_type, size // SECTOR, name)).encode()


def header(version, flags, capacity, grain, doff, dsize, gtes, rgd, gd,
           overhead, compress=0):
    h = struct.pack("<IIIQQQQIQQQB4sH", 0x564d444b, version, flags, capacity,
                    grain, doff, dsize, gtes, rgd, gd, overhead, 0,
                    b"\n \r\n", compress)
    return h + b"\0" * (SECTOR - len(h))


def plan(args, rng, gbytes, ngrains):
    """Per grain: None (unallocated), 'Z' (zero grain) or bytes."""
    kinds = []
    for g in range(ngrains):
        r = rng.random()
        if r < 0.4:
            kinds.append(None)
        elif r < 0.55 and args.zero_grain:
            kinds.append("Z")
        else:
            # Compressible for a third of them, random otherwise.
            if rng.random() < 0.33:
                b = bytes([rng.randrange(1, 256)]) * gbytes
            else:
                b = rng.randbytes(gbytes)
            kinds.append(b)
    return kinds


def sparse(args, rng):
    gsec = args.grain
    gbytes = gsec * SECTOR
    size = args.size
    ngrains = (size + gbytes - 1) // gbytes
    gtes = args.gtes
    ngt = (ngrains + gtes - 1) // gtes
    kinds = plan(args, rng, gbytes, ngrains)
    flags = 1 | 2 | (4 if args.zero_grain else 0)
    if args.stream:
        flags |= (1 << 16) | (1 << 17)
    desc = descriptor(size, "streamOptimized" if args.stream
                      else "monolithicSparse", args.out.split("/")[-1])
    doff, dsize = 1, 20
    assert len(desc) <= dsize * SECTOR
    gd_sectors = sectors(ngt * 4)
    gt_sectors = sectors(gtes * 4)
    img = bytearray()

    def put(off, data):
        if len(img) < off + len(data):
            img.extend(b"\0" * (off + len(data) - len(img)))
        img[off:off + len(data)] = data

    raw = bytearray(size)
    capacity = size // SECTOR
    if not args.stream:
        rgd = doff + dsize
        rgt = rgd + gd_sectors
        gd = rgt + ngt * gt_sectors
        gt = gd + gd_sectors
        end = gt + ngt * gt_sectors
        overhead = (end + gsec - 1) // gsec * gsec
        put(0, header(args.version, flags, capacity, gsec, doff, dsize, gtes,
                      rgd, gd, overhead))
        put(doff * SECTOR, desc)
        put(overhead * SECTOR - 1, b"\0")
        gtab = [0] * (ngt * gtes)
        for g, k in enumerate(kinds):
            if k is None:
                continue
            if k == "Z":
                gtab[g] = 1
                continue
            pos = sectors(len(img))
            put(pos * SECTOR, k)
            gtab[g] = pos
            lo = g * gbytes
            raw[lo:lo + gbytes] = k[:max(0, min(gbytes, size - lo))]
        for t in range(ngt):
            ent = struct.pack("<%dI" % gtes, *gtab[t * gtes:(t + 1) * gtes])
            put((gt + t * gt_sectors) * SECTOR, ent)
            put((rgt + t * gt_sectors) * SECTOR,
                b"\xff" * len(ent) if args.bad_rgd else ent)
        put(gd * SECTOR, struct.pack("<%dI" % ngt,
                                     *[gt + t * gt_sectors
                                       for t in range(ngt)]))
        if args.bad_rgd:
            # Every redundant entry points at the same garbage table.
            put(rgd * SECTOR, struct.pack("<%dI" % ngt, *([rgt] * ngt)))
        else:
            put(rgd * SECTOR, struct.pack("<%dI" % ngt,
                                          *[rgt + t * gt_sectors
                                            for t in range(ngt)]))
    else:
        # streamOptimized: header (GD at end), descriptor, grains, GTs, GD,
        # footer, end of stream.
        overhead = 128
        put(0, header(args.version, flags, capacity, gsec, doff, dsize, gtes,
                      0, 0xffffffffffffffff, overhead, 1))
        put(doff * SECTOR, desc)
        put(overhead * SECTOR - 1, b"\0")
        gtab = [0] * (ngt * gtes)
        for g, k in enumerate(kinds):
            if k is None:
                continue
            if k == "Z":
                gtab[g] = 1
                continue
            pos = sectors(len(img))
            lo = g * gbytes
            data = zlib.compress(k)
            if args.hostile == "stream-badzlib" and g == 0:
                data = b"\x78\x9c" + b"\xff" * 40
            ln = len(data)
            if args.hostile == "marker-huge":
                ln = 0xfffffff0
            put(pos * SECTOR, struct.pack("<QI", lo // SECTOR, ln) + data)
            gtab[g] = pos
            raw[lo:lo + gbytes] = k[:max(0, min(gbytes, size - lo))]
        gts = []
        for t in range(ngt):
            pos = sectors(len(img))
            put(pos * SECTOR, struct.pack("<QII", gt_sectors, 0, 1))
            ent = struct.pack("<%dI" % gtes, *gtab[t * gtes:(t + 1) * gtes])
            put((pos + 1) * SECTOR, ent + b"\0" * (gt_sectors * SECTOR
                                                    - len(ent)))
            gts.append(pos + 1)
        pos = sectors(len(img))
        put(pos * SECTOR, struct.pack("<QII", gd_sectors, 0, 2))
        gdd = struct.pack("<%dI" % ngt, *gts)
        put((pos + 1) * SECTOR, gdd + b"\0" * (gd_sectors * SECTOR - len(gdd)))
        gdpos = pos + 1
        pos = sectors(len(img))
        if args.hostile != "stream-nofooter":
            put(pos * SECTOR, struct.pack("<QII", 1, 0, 3))
            put((pos + 1) * SECTOR,
                header(args.version, flags, capacity, gsec, doff, dsize,
                       gtes, 0, gdpos, overhead, 1))
            put((pos + 2) * SECTOR, struct.pack("<QII", 0, 0, 0))
            put((pos + 3) * SECTOR - 1, b"\0")
    return img, raw


def cowd(args, rng):
    gsec = args.grain
    gbytes = gsec * SECTOR
    size = args.size
    ngrains = (size + gbytes - 1) // gbytes
    gtes = 4096
    ngt = (ngrains + gtes - 1) // gtes
    kinds = plan(args, rng, gbytes, ngrains)
    gd = 4
    gt = gd + sectors(ngt * 4)
    img = bytearray()

    def put(off, data):
        if len(img) < off + len(data):
            img.extend(b"\0" * (off + len(data) - len(img)))
        img[off:off + len(data)] = data
    raw = bytearray(size)
    h = struct.pack("<IIIIIIIIIII", 0x44574f43, 1, 3, size // SECTOR, gsec,
                    gd, ngt, 0, 0, 0, 0)
    put(0, h + b"\0" * (4 * SECTOR - len(h)))
    # QEMU looks for the CID lines of a descriptor at byte 512.
    put(SECTOR, b"CID=0badc0de\nparentCID=ffffffff\n")
    put((gt + ngt * 32) * SECTOR - 1, b"\0")
    gtab = [0] * (ngt * gtes)
    for g, k in enumerate(kinds):
        if k is None or k == "Z":
            continue
        pos = sectors(len(img))
        put(pos * SECTOR, k)
        gtab[g] = pos
        lo = g * gbytes
        raw[lo:lo + gbytes] = k[:max(0, min(gbytes, size - lo))]
    for t in range(ngt):
        put((gt + t * 32) * SECTOR,
            struct.pack("<4096I", *gtab[t * gtes:(t + 1) * gtes]))
    put(gd * SECTOR, struct.pack("<%dI" % ngt,
                                 *[gt + t * 32 for t in range(ngt)]))
    struct.pack_into("<I", img, 28, sectors(len(img)))
    return img, raw

def sesparse(args, rng):
    gbytes = 8 * SECTOR
    size = args.size
    ngrains = (size + gbytes - 1) // gbytes
    gtes = 4096
    ngt = (ngrains + gtes - 1) // gtes
    kinds = []
    for g in range(ngrains):
        r = rng.random()
        if g // gtes == 1 or (g % gtes) >= 1024 or r < 0.35:
            kinds.append(None)
        elif r < 0.55:
            kinds.append(rng.choice((0x1000000000000000, 0x2000000000000000)))
        elif rng.random() < 0.3:
            kinds.append(bytes([rng.randrange(1, 256)]) * gbytes)
        else:
            kinds.append(rng.randbytes(gbytes))
    if args.parent_raw:
        with open(args.parent_raw, "rb") as f:
            raw = bytearray(f.read()[:size])
        raw.extend(b"\0" * (size - len(raw)))
    else:
        raw = bytearray(size)
    gdsec = max(1, sectors(ngt * 8))
    gd, gt = 2, 2 + gdsec
    grains = gt + ngt * 64
    # Tables that hold anything, at shuffled table indexes.
    used = [t for t in range(ngt)
            if any(k is not None for k in kinds[t * gtes:(t + 1) * gtes])]
    tidx = dict(zip(used, rng.sample(range(ngt), len(used))))
    data = [g for g, k in enumerate(kinds) if isinstance(k, bytes)]
    nums = rng.sample(range(2 * len(data) + 1), len(data))
    if nums:
        nums[rng.randrange(len(nums))] = 4096 + 77
    pieces = []
    gtab = [0] * (ngt * gtes)
    for g, k in enumerate(kinds):
        if isinstance(k, int):
            gtab[g] = k
    for g, n in zip(data, nums):
        gtab[g] = 0x3000000000000000 | ((n & 0xfff) << 48) | (n >> 12)
        pieces.append(((grains + n * 8) * SECTOR, kinds[g]))
        lo = g * gbytes
        raw[lo:lo + gbytes] = kinds[g][:max(0, min(gbytes, size - lo))]
    for g, k in enumerate(kinds):
        if isinstance(k, int):
            lo = g * gbytes
            raw[lo:lo + gbytes] = bytes(max(0, min(gbytes, size - lo)))
    gdents = [0] * ngt
    for t, i in tidx.items():
        gdents[t] = (0x10000000 << 32) | i
        pieces.append(((gt + i * 64) * SECTOR,
                       struct.pack("<4096Q", *gtab[t * gtes:(t + 1) * gtes])))
    pieces.append((gd * SECTOR, struct.pack("<%dQ" % ngt, *gdents)))
    end = grains + (max(nums) + 1) * 8 if nums else grains
    h = struct.pack("<26Q", 0xcafebabe, 0x0000000200000001, size // SECTOR,
                    8, 64, 0, 0, 0, 0, 0, 1, 1, 0, 0, 0, 0,
                    gd, gdsec, gt, ngt * 64, 0, 0, 0, 0, grains, end - grains)
    pieces.append((0, h + b"\0" * (SECTOR - len(h))))
    v = struct.pack("<4Q", 0xcafecafe, len(used), 1, 0)
    pieces.append((SECTOR, v + b"\0" * (SECTOR - len(v))))
    base = args.out[:-5] if args.out.endswith(".vmdk") else args.out
    ext = base + "-sesparse.vmdk"
    with open(ext, "wb") as f:
        f.truncate(end * SECTOR)
        for off, b in pieces:
            f.seek(off)
            f.write(b)
    parent = ""
    if args.parent:
        parent = "parentFileNameHint=\"%s\"\n" % args.parent
    desc = ("# Disk DescriptorFile\nversion=1\nCID=%08x\nparentCID=%s\n"
            "createType=\"seSparse\"\n%s\n# Extent description\n"
            "RW %d SESPARSE \"%s\"\n\n# The Disk Data Base\n#DDB\n\n"
            "ddb.virtualHWVersion = \"4\"\nddb.adapterType = \"ide\"\n"
            % (rng.getrandbits(32), "12345678" if args.parent else "ffffffff",
               parent, size // SECTOR, ext.rsplit("/", 1)[-1])).encode()
    return desc, raw


def corrupt(img, kind):
    def set64(off, v):
        struct.pack_into("<Q", img, off, v)

    def set32(off, v):
        struct.pack_into("<I", img, off, v)
    if kind == "truncated":
        del img[300:]
    elif kind == "grain0":
        set64(20, 0)
    elif kind == "grain-huge":
        set64(20, 1 << 40)
    elif kind == "gtes0":
        set32(44, 0)
    elif kind == "gtes-huge":
        set32(44, 0xffffffff)
    elif kind == "gd-past-eof":
        set64(56, 0xfffffff0)
    elif kind == "capacity-huge":
        set64(12, 0xffffffffffffffff)
    elif kind == "bad-newline":
        img[73:77] = b"\n \n\n"
    elif kind == "version9":
        set32(4, 9)
    elif kind in ("gt-past-eof", "gde-huge"):
        gd = struct.unpack_from("<Q", img, 56)[0]
        gt = struct.unpack_from("<I", img, gd * SECTOR)[0]
        if kind == "gde-huge":
            set32(gd * SECTOR, 0xfffffff0)
        else:
            for i in range(8):
                set32(gt * SECTOR + 4 * i, 0xffffff00 + i)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--raw")
    ap.add_argument("--size", type=lambda x: int(x, 0), required=True)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--grain", type=int, default=128)
    ap.add_argument("--gtes", type=int, default=512)
    ap.add_argument("--version", type=int, default=1)
    ap.add_argument("--zero-grain", action="store_true")
    ap.add_argument("--bad-rgd", action="store_true")
    ap.add_argument("--stream", action="store_true")
    ap.add_argument("--cowd", action="store_true")
    ap.add_argument("--hostile")
    ap.add_argument("--sesparse", action="store_true")
    ap.add_argument("--parent")
    ap.add_argument("--parent-raw")
    args = ap.parse_args()
    args.size -= args.size % SECTOR
    rng = random.Random(args.seed)
    if args.sesparse:
        img, raw = sesparse(args, rng)
    else:
        img, raw = cowd(args, rng) if args.cowd else sparse(args, rng)
    if args.hostile and args.hostile not in ("stream-nofooter",
                                             "stream-badzlib", "marker-huge"):
        corrupt(img, args.hostile)
    with open(args.out, "wb") as f:
        f.write(img)
    if args.raw:
        with open(args.raw, "wb") as f:
            f.write(raw)


if __name__ == "__main__":
    main()
