#!/usr/bin/env python3
# SPDX-License-Identifier: BSD-3-Clause
"""Seeded mutation of whole images for tests/torture/test-server-fuzz.sh.

  server-mutate.py FORMAT SEEDDIR OUTDIR SEED COUNT

For each seed S in SEED .. SEED+COUNT-1: pick one base image set from
SEEDDIR/FORMAT/ (a directory per base, files named by convention: see
test-server-fuzz.sh), copy it to OUTDIR/S/ and damage its metadata
regions (headers, tables, descriptors, state text) with a PRNG seeded by
S: boundary values at field offsets, bit flips, splices of other metadata,
zeroed or 0xff runs; text by numbers, words, lines.  Checksums (VHDX
headers, region tables and log entries, thin blocks) are mostly
recomputed so that the parsers behind them see the damage.  Prints one
line per seed: "S BASE: what was done".  The same seed and base set give
the same output (the mutation depends only on S and the base files).
"""

import os
import random
import re
import shutil
import struct
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from crc32c import crc32c  # noqa: E402


BOUNDARY = [0, 1, 2, 3, 7, 8, 0x7F, 0x80, 0xFF, 0x100, 0x1FF, 0x200, 0x1000,
            0x7FFF, 0x8000, 0xFFFF, 0x10000, 0x100000, 0x7FFFFFFF, 0x80000000,
            0xFFFFFFFF, 0x100000000, 1 << 40, 1 << 62, (1 << 63) - 1, 1 << 63,
            (1 << 64) - 1, (1 << 64) - 512, 9, 16, 63, 64, 65, 512, 4095, 4097,
            1 << 20, 1 << 30, 1 << 31, 1 << 32]


class Img:
    """One file being mutated: its bytes and a list of (offset, length,
    weight, kind) regions; kind 'bin-be', 'bin-le' or 'text'; fields is an
    optional list of (offset, width) of known fields."""

    def __init__(self, path):
        self.path = path
        with open(path, "rb") as f:
            self.b = bytearray(f.read())
        self.regions = []
        self.fields = []        # (offset, width, endian)
        self.fixups = []        # callables run after mutation (checksums)

    def add(self, off, length, weight, kind):
        if length <= 0 or off < 0 or off >= len(self.b):
            return
        length = min(length, len(self.b) - off)
        self.regions.append((off, length, weight, kind))

    def write(self, path):
        # Sparse: skip 4 KiB blocks of zeroes.
        with open(path, "wb") as f:
            n = len(self.b)
            z = bytes(4096)
            for o in range(0, n, 4096):
                blk = self.b[o:o + 4096]
                if blk != z[:len(blk)]:
                    f.seek(o)
                    f.write(blk)
            f.truncate(n)


def u(b, off, fmt):
    if off < 0 or off + struct.calcsize(fmt) > len(b):
        return 0
    return struct.unpack_from(fmt, b, off)[0]


# --- region finders ---------------------------------------------------------
QCOW2_FIELDS = [(4, 4), (8, 8), (16, 4), (20, 4), (24, 8), (32, 4), (36, 4),
                (40, 8), (48, 8), (56, 4), (60, 4), (64, 8), (72, 8), (80, 8),
                (88, 8), (96, 4), (100, 4), (104, 1)]


def regions_qcow2(im, rng):
    b = im.b
    if b[:4] != b"QFI\xfb":
        im.add(0, 4096, 1, "bin-be")
        return
    cb = u(b, 20, ">I")
    cs = 1 << cb if 9 <= cb <= 21 else 65536
    for off, w in QCOW2_FIELDS:
        im.fields.append((off, w, ">"))
    im.add(0, min(cs, 4096), 6, "bin-be")
    l1s, l1o = u(b, 36, ">I"), u(b, 40, ">Q")
    im.add(l1o, min(l1s, 8192) * 8, 3, "bin-be")
    rto, rtc = u(b, 48, ">Q"), u(b, 56, ">I")
    im.add(rto, min(rtc, 16) * cs, 2, "bin-be")
    if 0 < rto < len(b):
        rb = u(b, rto, ">Q")
        im.add(rb, cs, 2, "bin-be")
    nsn, sno = u(b, 60, ">I"), u(b, 64, ">Q")
    if nsn:
        im.add(sno, min(cs, 65536), 3, "bin-be")
        # Each snapshot's L1 table.
        p = sno
        for _ in range(min(nsn, 8)):
            sl1o, sl1s = u(b, p, ">Q"), u(b, p + 8, ">I")
            im.add(sl1o, min(sl1s, 1024) * 8, 1, "bin-be")
            idl, nml, ex = u(b, p + 12, ">H"), u(b, p + 14, ">H"), u(b, p + 36, ">I")
            im.fields += [(p, 8, ">"), (p + 8, 4, ">"), (p + 12, 2, ">"),
                          (p + 14, 2, ">"), (p + 36, 4, ">")]
            p += 40 + ex + idl + nml
            p = (p + 7) & ~7
    # L2 tables named by the L1 table.
    l2s = []
    for i in range(min(l1s, 4096)):
        e = u(b, l1o + 8 * i, ">Q") & 0x00FFFFFFFFFFFE00
        if e:
            l2s.append(e)
    for e in rng.sample(l2s, min(len(l2s), 4)):
        im.add(e, cs, 3, "bin-be")
    # Header extensions (v3: from header_length; v2: 72).
    ver = u(b, 4, ">I")
    p = u(b, 100, ">I") if ver >= 3 else 72
    for _ in range(32):
        if p + 8 > min(len(b), cs):
            break
        t, ln = u(b, p, ">I"), u(b, p + 4, ">I")
        im.fields += [(p, 4, ">"), (p + 4, 4, ">")]
        if t == 0:
            break
        if t == 0x23852875 and ln >= 24:   # bitmaps
            nb, dsz, doff = u(b, p + 8, ">I"), u(b, p + 16, ">Q"), u(b, p + 24, ">Q")
            im.fields += [(p + 8, 4, ">"), (p + 16, 8, ">"), (p + 24, 8, ">")]
            im.add(doff, min(dsz, 65536), 4, "bin-be")
            q = doff
            for _ in range(min(nb, 8)):
                bto, bts = u(b, q, ">Q"), u(b, q + 8, ">I")
                im.fields += [(q, 8, ">"), (q + 8, 4, ">"), (q + 12, 4, ">"),
                              (q + 16, 1, ">"), (q + 17, 1, ">"),
                              (q + 18, 2, ">"), (q + 20, 4, ">")]
                im.add(bto, min(bts, 512) * 8, 2, "bin-be")
                ext, nml = u(b, q + 20, ">I"), u(b, q + 18, ">H")
                q += (24 + ext + nml + 7) & ~7
        if t == 0x44415441:                # external data file name
            pass
        p += 8 + ((ln + 7) & ~7)
    bfo, bfs = u(b, 8, ">Q"), u(b, 16, ">I")
    if bfs:
        im.add(bfo, min(bfs, 1024), 1, "text")


VMDK_FIELDS = [(4, 4), (8, 4), (12, 8), (20, 8), (28, 8), (36, 8), (44, 4),
               (48, 8), (56, 8), (64, 8), (72, 1), (77, 2)]


def regions_vmdk(im, rng):
    b = im.b
    if b[:4] == b"KDMV":
        for off, w in VMDK_FIELDS:
            im.fields.append((off, w, "<"))
        im.add(0, 512, 6, "bin-le")
        cap, grain = u(b, 12, "<Q"), u(b, 20, "<Q")
        do, ds = u(b, 28, "<Q"), u(b, 36, "<Q")
        if do and ds:
            im.add(do * 512, min(ds, 64) * 512, 4, "text")
        gtes = u(b, 44, "<I") or 512
        gd, rgd = u(b, 56, "<Q"), u(b, 48, "<Q")
        if gd == (1 << 64) - 1 and len(b) >= 1536:
            # streamOptimized with a footer: header copy 1024 bytes from
            # the end, the marker before it.
            f = len(b) - 1024
            for off, w in VMDK_FIELDS:
                im.fields.append((f + off, w, "<"))
            im.add(len(b) - 1536, 1536, 5, "bin-le")
            gd = u(b, f + 56, "<Q")
        ngt = 1
        if grain and gtes:
            ngt = max(1, -(-cap // (grain * gtes)))
        for g in (gd, rgd):
            if g and g * 512 < len(b):
                im.add(g * 512, min(ngt, 4096) * 4, 3, "bin-le")
                gts = [u(b, g * 512 + 4 * i, "<I") for i in range(min(ngt, 64))]
                gts = [x for x in gts if x]
                for x in rng.sample(gts, min(len(gts), 3)):
                    im.add(x * 512, gtes * 4, 2, "bin-le")
        # stream markers at grain boundaries are left alone (data).
    elif b[:4] == b"COWD":
        im.add(0, 2048, 6, "bin-le")
    else:
        im.kind_text_file = True        # a descriptor file
        im.add(0, min(len(b), 65536), 5, "text")


def regions_vhdx(im, rng):
    b = im.b
    K = 1024
    im.add(0, 1024, 1, "bin-le")
    for h in (64 * K, 128 * K):
        for off, w in [(8, 8), (64, 2), (66, 2), (68, 4), (72, 8)]:
            im.fields.append((h + off, w, "<"))
        im.add(h, 128, 4, "bin-le")
        im.fixups.append(("crc", h, 4096, 4))
    for r in (192 * K, 256 * K):
        n = u(b, r + 8, "<I")
        im.fields.append((r + 8, 4, "<"))
        for i in range(min(n, 16)):
            e = r + 16 + 32 * i
            im.fields += [(e + 16, 8, "<"), (e + 24, 4, "<"), (e + 28, 4, "<")]
        im.add(r, 16 + 32 * max(n, 2), 3, "bin-le")
        im.fixups.append(("crc", r, 64 * K, 4))
    # Regions of the current table.
    r = 192 * K
    n = u(b, r + 8, "<I")
    for i in range(min(n, 16)):
        e = r + 16 + 32 * i
        guid = bytes(b[e:e + 16])
        off, ln = u(b, e + 16, "<Q"), u(b, e + 24, "<I")
        if guid[:4] == bytes.fromhex("06a27c8b"):       # metadata
            im.add(off, 64 * K, 4, "bin-le")
            cnt = u(b, off + 10, "<H")
            im.fields.append((off + 10, 2, "<"))
            for j in range(min(cnt, 32)):
                m = off + 32 + 32 * j
                im.fields += [(m + 16, 4, "<"), (m + 20, 4, "<"), (m + 24, 4, "<")]
                io, il = u(b, m + 16, "<I"), u(b, m + 20, "<I")
                if il <= 4096:
                    im.add(off + io, il, 3, "bin-le")
                    for k in range(0, min(il, 32), 4):
                        im.fields.append((off + io + k, 4, "<"))
        elif guid[:4] == bytes.fromhex("6677c22d"):     # BAT
            im.add(off, min(ln, 65536), 3, "bin-le")
    # The log (when one was written: a non-zero log GUID).
    for h in (64 * K, 128 * K):
        lo, ll = u(b, h + 72, "<Q"), u(b, h + 68, "<I")
        if any(b[h + 48:h + 64]) and lo and lo < len(b):
            p = lo
            for _ in range(16):
                if p + 64 > min(len(b), lo + ll) or b[p:p + 4] != b"loge":
                    break
                el = u(b, p + 8, "<I")
                im.fields += [(p + 8, 4, "<"), (p + 12, 4, "<"), (p + 16, 8, "<"),
                              (p + 24, 4, "<"), (p + 48, 8, "<"), (p + 56, 8, "<")]
                dc = u(b, p + 24, "<I")
                for d in range(min(dc, 32)):
                    q = p + 64 + 32 * d
                    im.fields += [(q + 4, 4, "<"), (q + 8, 8, "<"), (q + 16, 8, "<"),
                                  (q + 24, 8, "<")]
                im.add(p, min(el, 8192), 4, "bin-le")
                if el < 4096 or el % 4096:
                    break
                im.fixups.append(("crc", p, el, 4))
                p += el
            break


def regions_thin(im, rng, base=0):
    b = im.b
    p = base
    if b[p:p + 8] != b"NBDKTHIN":
        im.add(0, 8192, 1, "bin-le")
        return
    tb, bb = u(b, p + 56, "<I"), u(b, p + 60, "<I")
    # Header blocks at 0 and 4096; the body of slot k at 8192 + k * body
    # (common/thin/thin_meta.c: thin_body_off).
    body = (tb + bb) * 4096
    for h in (0, 4096):
        for off, w in [(8, 4), (12, 4), (16, 8), (24, 8), (32, 4), (36, 4),
                       (40, 8), (48, 8), (56, 4), (60, 4), (64, 8), (72, 8),
                       (80, 8)]:
            im.fields.append((h + off, w, "<"))
        im.add(h, 96, 5, "bin-le")
        im.fixups.append(("crc", h, 4096, 4092))
    for s in range(2):
        bo = 8192 + s * body
        for i in range(min(tb, 64)):
            im.add(bo + 4096 * i, 4092, 2, "bin-le")
            im.fixups.append(("thincrc", bo + 4096 * i, i))
        for j in range(min(bb, 16)):
            im.add(bo + 4096 * (tb + j), 4092, 1, "bin-le")
            im.fixups.append(("thincrc", bo + 4096 * (tb + j), 0x80000000 | j))


# --- mutations ----------------------------------------------------------------
def pick_region(im, rng, kinds=None):
    rs = [r for r in im.regions if kinds is None or r[3] in kinds]
    if not rs:
        return None
    tot = sum(r[2] for r in rs)
    x = rng.uniform(0, tot)
    for r in rs:
        x -= r[2]
        if x <= 0:
            return r
    return rs[-1]


def boundary_value(rng, im):
    v = rng.choice(BOUNDARY + [len(im.b), len(im.b) + 1, len(im.b) - 1,
                               len(im.b) // 512, len(im.b) // 512 + 1])
    if rng.random() < 0.2:
        v += rng.choice([-1, 1])
    return v


def put(im, off, width, endian, v):
    if off < 0 or off + width > len(im.b):
        return
    v &= (1 << (8 * width)) - 1
    im.b[off:off + width] = v.to_bytes(width, "big" if endian == ">" else "little")


def mut_binary(im, rng):
    r = rng.random()
    if im.fields and r < 0.35:
        off, w, e = rng.choice(im.fields)
        v = boundary_value(rng, im)
        if rng.random() < 0.3:      # add/subtract a little
            old = int.from_bytes(im.b[off:off + w], "big" if e == ">" else "little")
            v = old + rng.choice([-1, 1, -512, 512, 1 << rng.randrange(8 * w)])
        put(im, off, w, e, v)
        return "field@%d/%d=%#x" % (off, w, v & ((1 << (8 * w)) - 1))
    reg = pick_region(im, rng, ("bin-be", "bin-le"))
    if reg is None:
        return mut_text(im, rng)
    off, ln, _, kind = reg
    e = ">" if kind == "bin-be" else "<"
    r = rng.random()
    if r < 0.3:
        p = off + rng.randrange(ln)
        bit = rng.randrange(8)
        im.b[p] ^= 1 << bit
        return "flip@%d.%d" % (p, bit)
    if r < 0.6:
        w = rng.choice([1, 2, 4, 8])
        p = off + rng.randrange(max(1, ln // w)) * w
        v = boundary_value(rng, im)
        put(im, p, w, e, v)
        return "val@%d/%d=%#x" % (p, w, v & ((1 << (8 * w)) - 1))
    if r < 0.8:
        # Splice: copy bytes from another region (or elsewhere here).
        src = pick_region(im, rng) or reg
        n = min(rng.choice([8, 16, 32, 64, 512, 4096]), ln, src[1])
        s = src[0] + rng.randrange(max(1, src[1] - n + 1))
        d = off + rng.randrange(max(1, ln - n + 1))
        im.b[d:d + n] = im.b[s:s + n]
        return "splice %d->%d/%d" % (s, d, n)
    n = min(rng.choice([4, 8, 64, 512]), ln)
    d = off + rng.randrange(max(1, ln - n + 1))
    fill = rng.choice([0, 0xFF])
    im.b[d:d + n] = bytes([fill]) * n
    return "fill %#x@%d/%d" % (fill, d, n)


TEXT_WORDS = [b"RW", b"RDONLY", b"NOACCESS", b"FLAT", b"SPARSE", b"ZERO",
              b"VMFS", b"VMFSSPARSE", b"SESPARSE", b"monolithicSparse",
              b"monolithicFlat", b"twoGbMaxExtentSparse", b"streamOptimized",
              b"vmfs", b"custom", b"layer", b"top", b"size", b"next-id",
              b"committing", b"end", b"ffffffff", b"\"\"", b"\"../x\"",
              b"\"/etc/passwd\"", b"x" * 300, b"-1", b"0", b"18446744073709551615"]


def mut_text(im, rng):
    reg = pick_region(im, rng, ("text",))
    if reg is None:
        return mut_binary(im, rng) if im.regions else "none"
    off, ln, _, _ = reg
    t = bytes(im.b[off:off + ln])
    end = len(t.rstrip(b"\0"))
    body = t[:end]
    r = rng.random()
    lines = body.split(b"\n")
    what = ""
    if r < 0.35:
        nums = list(re.finditer(rb"\d+", body))
        if nums:
            m = rng.choice(nums)
            v = str(boundary_value(rng, im)).encode()
            body = body[:m.start()] + v + body[m.end():]
            what = "num %s->%s" % (m.group().decode(), v.decode())
    elif r < 0.55:
        words = list(re.finditer(rb"[A-Za-z\"][A-Za-z0-9_.\"/-]*", body))
        if words:
            m = rng.choice(words)
            w = rng.choice(TEXT_WORDS)
            body = body[:m.start()] + w + body[m.end():]
            what = "word %s->%s" % (m.group()[:20].decode("latin1"), w[:20].decode())
    elif r < 0.7 and len(lines) > 1:
        i = rng.randrange(len(lines))
        j = rng.randrange(len(lines))
        op = rng.choice(["dup", "del", "swap"])
        if op == "dup":
            lines.insert(j, lines[i])
        elif op == "del":
            del lines[i]
        else:
            lines[i], lines[j] = lines[j], lines[i]
        body = b"\n".join(lines)
        what = "line %s %d %d" % (op, i, j)
    elif r < 0.8:
        i = rng.randrange(len(lines))
        lines[i] = (lines[i] * rng.choice([2, 10, 50]))[:4096]
        body = b"\n".join(lines)
        what = "long line %d" % i
    if not what:
        if not body:
            return "none"
        p = rng.randrange(len(body))
        bb = bytearray(body)
        bb[p] ^= 1 << rng.randrange(8)
        body = bytes(bb)
        what = "flip@%d" % p
    # In an image the text keeps its space; a file may change length.
    if im.kind_text_file:
        im.b[:] = body
    else:
        body = body[:ln]
        im.b[off:off + ln] = body + bytes(ln - len(body))
    return what


def fix_checksums(im, rng):
    if rng.random() < 0.15:
        return "checksums left stale" if im.fixups else ""
    for fx in im.fixups:
        if fx[0] == "crc":
            _, off, ln, ck = fx
            if off + ln > len(im.b) or ln > (1 << 24):
                continue
            blk = bytearray(im.b[off:off + ln])
            if ck == 4092:
                im.b[off + 4092:off + 4096] = struct.pack("<I", crc32c(blk[:4092]))
            else:
                blk[ck:ck + 4] = bytes(4)
                im.b[off + ck:off + ck + 4] = struct.pack("<I", crc32c(blk))
        elif fx[0] == "thincrc":
            _, off, seed = fx
            if off + 4096 > len(im.b):
                continue
            c = crc32c(im.b[off:off + 4092], crc32c(struct.pack("<I", seed)))
            im.b[off + 4092:off + 4096] = struct.pack("<I", c)
    return ""


# --- per format: which files, which finder ----------------------------------
def choose_target(fmt, files, rng):
    """(file, finder) to mutate in a base set (list of file names)."""
    def has(n):
        return n in files
    if fmt in ("qcow2", "qcow2filter"):
        if has("base.qcow2") and rng.random() < 0.2:
            return "base.qcow2", regions_qcow2
        return "disk.qcow2", regions_qcow2
    if fmt == "vmdk":
        # Descriptors and sparse extents; never the data of flat extents.
        cands = [f for f in files if f.endswith(".vmdk") and not f.endswith("-flat.vmdk")
                 and not re.search(r"-f\d{3}\.vmdk$", f)]
        f = "disk.vmdk" if rng.random() < 0.7 or len(cands) < 2 else rng.choice(cands)
        return f, regions_vmdk
    if fmt == "vhdx":
        if has("parent.vhdx") and rng.random() < 0.2:
            return "parent.vhdx", regions_vhdx
        return "disk.vhdx", regions_vhdx
    if fmt == "thin":
        if has("meta.thin"):
            return "meta.thin", regions_thin
        return "pool.img", regions_thin
    if fmt == "snapshot":
        layers = [f for f in files if f.startswith("ov/layer-")]
        if layers and rng.random() < 0.5:
            return rng.choice(layers), regions_qcow2
        return "ov/snapshot.state", None
    raise SystemExit("unknown format " + fmt)


def list_files(d):
    out = []
    for root, _, fs in os.walk(d):
        for f in fs:
            out.append(os.path.relpath(os.path.join(root, f), d))
    return sorted(out)


def one(fmt, seeddir, outdir, seed):
    rng = random.Random(seed * 7919 + 17)
    bases = sorted(os.listdir(os.path.join(seeddir, fmt)))
    base = rng.choice(bases)
    src = os.path.join(seeddir, fmt, base)
    dst = os.path.join(outdir, str(seed))
    if os.path.exists(dst):
        shutil.rmtree(dst)
    shutil.copytree(src, dst)
    files = list_files(src)
    target, finder = choose_target(fmt, files, rng)
    path = os.path.join(dst, target)
    if not os.path.exists(path):
        return "%d %s: no %s" % (seed, base, target)
    im = Img(path)
    im.kind_text_file = finder is None
    if finder is None:
        im.add(0, len(im.b), 1, "text")
    else:
        finder(im, rng)
    whats = []
    for _ in range(rng.choice([1, 1, 1, 2, 2, 3, 4, 8])):
        if finder is None or (im.regions and rng.random() < 0.1 and
                              any(r[3] == "text" for r in im.regions)):
            whats.append(mut_text(im, rng))
        else:
            whats.append(mut_binary(im, rng))
    ck = fix_checksums(im, rng)
    if ck:
        whats.append(ck)
    os.unlink(path)
    im.write(path)
    return "%d %s %s: %s" % (seed, base, target,
                             "; ".join(w if len(w) < 80 else w[:77] + "..." for w in whats))


def main():
    fmt, seeddir, outdir, seed, count = sys.argv[1:6]
    for s in range(int(seed), int(seed) + int(count)):
        print(one(fmt, seeddir, outdir, s), flush=True)


if __name__ == "__main__":
    main()
