#!/usr/bin/env python3
# SPDX-License-Identifier: BSD-3-Clause
"""VHDX structures for the tests, written from [MS-VHDX] (not from any
implementation), used as an independent oracle beside QEMU.

  vhdx-tool.py info IMG                 JSON: current header, regions,
                                        metadata items, BAT states
  vhdx-tool.py set-lss IMG 512|4096     patch the logical sector size item
                                        (qemu-img cannot create 4096)
  vhdx-tool.py dirty IMG SCENARIO SEED  append a log to IMG (see loggen)
"""

import json
import struct
import os
import sys
import uuid

MiB = 1 << 20

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from crc32c import crc32c  # noqa: E402


def guid(s):
    """On-disk bytes of a GUID string (mixed-endian, as Windows stores)."""
    return uuid.UUID(s).bytes_le


BAT_GUID = guid("2DC27766-F623-4200-9D64-115E9BFD4A08")
META_GUID = guid("8B7CA206-4790-4B9A-B8FE-575F050F886E")
FILE_PARAMS = guid("CAA16737-FA36-4D43-B3B6-33F0AA44E76B")
DISK_SIZE = guid("2FA54224-CD1B-4876-B211-5DBED83BF4B8")
LSS = guid("8141BF1D-A96F-4709-BA47-F233A8FAAB5F")
PSS = guid("CDA348C7-445D-4471-9CC9-E9885251C556")


def read_headers(f):
    """(slot, header dict) of the current header."""
    best = None
    for slot, off in ((1, 64 * 1024), (2, 128 * 1024)):
        f.seek(off)
        h = bytearray(f.read(4096))
        if h[:4] != b"head":
            continue
        ck = struct.unpack_from("<I", h, 4)[0]
        h[4:8] = b"\0\0\0\0"
        if crc32c(h) != ck:
            continue
        seq = struct.unpack_from("<Q", h, 8)[0]
        d = dict(slot=slot, seq=seq, raw=bytes(h),
                 file_guid=h[16:32], data_guid=h[32:48], log_guid=h[48:64],
                 log_len=struct.unpack_from("<I", h, 68)[0],
                 log_off=struct.unpack_from("<Q", h, 72)[0])
        if best is None or seq > best["seq"]:
            best = d
    if best is None:
        sys.exit("no valid header")
    return best


def write_header(f, slot, h):
    h = bytearray(h)
    h[4:8] = b"\0\0\0\0"
    struct.pack_into("<I", h, 4, crc32c(h))
    f.seek(64 * 1024 * slot)
    f.write(h)


def regions(f):
    f.seek(192 * 1024)
    t = f.read(64 * 1024)
    n = struct.unpack_from("<I", t, 8)[0]
    r = {}
    for i in range(n):
        g, off, ln, fl = struct.unpack_from("<16sQII", t, 16 + 32 * i)
        r[g] = (off, ln)
    return r[BAT_GUID], r[META_GUID]


def metadata(f, meta_off):
    f.seek(meta_off)
    t = f.read(64 * 1024)
    assert t[:8] == b"metadata"
    n = struct.unpack_from("<H", t, 10)[0]
    items = {}
    for i in range(n):
        g, off, ln = struct.unpack_from("<16sII", t, 32 + 32 * i)
        items[g] = (meta_off + off, ln)
    return items


def geometry(f):
    (bat_off, bat_len), (meta_off, meta_len) = regions(f)
    it = metadata(f, meta_off)

    def u(g, fmt):
        f.seek(it[g][0])
        return struct.unpack(fmt, f.read(struct.calcsize(fmt)))[0]
    bs = u(FILE_PARAMS, "<I")
    f.seek(it[FILE_PARAMS][0] + 4)
    flags = struct.unpack("<I", f.read(4))[0]
    size = u(DISK_SIZE, "<Q")
    lss = u(LSS, "<I")
    cr = (1 << 23) * lss // bs
    return dict(bat_off=bat_off, bat_len=bat_len, meta_off=meta_off,
                meta_len=meta_len, block_size=bs, size=size, lss=lss,
                chunk_ratio=cr, has_parent=bool(flags & 2),
                items=it)


def cmd_info(path):
    with open(path, "rb") as f:
        h = read_headers(f)
        g = geometry(f)
        nblocks = -(-g["size"] // g["block_size"])
        f.seek(g["bat_off"])
        states = []
        for b in range(nblocks):
            i = b + b // g["chunk_ratio"]
            f.seek(g["bat_off"] + 8 * i)
            e = struct.unpack("<Q", f.read(8))[0]
            states.append([e & 7, (e >> 20) << 20])
    print(json.dumps(dict(
        seq=h["seq"], slot=h["slot"],
        log_guid=str(uuid.UUID(bytes_le=bytes(h["log_guid"]))),
        data_guid=str(uuid.UUID(bytes_le=bytes(h["data_guid"]))),
        file_guid=str(uuid.UUID(bytes_le=bytes(h["file_guid"]))),
        log_off=h["log_off"], log_len=h["log_len"],
        block_size=g["block_size"], size=g["size"], lss=g["lss"],
        bat_off=g["bat_off"], meta_off=g["meta_off"],
        has_parent=g["has_parent"], bat=states)))


def cmd_set_lss(path, lss):
    with open(path, "r+b") as f:
        g = geometry(f)
        off, ln = g["items"][LSS]
        f.seek(off)
        f.write(struct.pack("<I", int(lss)))


# ---- log generator ([MS-VHDX] 2.3.1: entries, descriptors, data sectors)

def log_entry(seq, tail, log_guid, flushed, last, descs):
    """One log entry.  DESCS: ("data", file_off, 4096 bytes) or
    ("zero", file_off, length)."""
    nd = len(descs)
    assert 64 + 32 * nd <= 4096
    hdr = bytearray(4096)
    datas = []
    for i, d in enumerate(descs):
        o = 64 + 32 * i
        if d[0] == "data":
            sec = d[2]
            assert len(sec) == 4096
            struct.pack_into("<4s4s8sQQ", hdr, o, b"desc", sec[4092:4096],
                             sec[0:8], d[1], seq)
            ds = bytearray(4096)
            struct.pack_into("<4sI", ds, 0, b"data", seq >> 32)
            ds[8:4092] = sec[8:4092]
            struct.pack_into("<I", ds, 4092, seq & 0xFFFFFFFF)
            datas.append(bytes(ds))
        else:
            struct.pack_into("<4sIQQQ", hdr, o, b"zero", 0, d[2], d[1], seq)
    length = 4096 * (1 + len(datas))
    struct.pack_into("<4sIIIQII16sQQ", hdr, 0, b"loge", 0, length, tail,
                     seq, nd, 0, log_guid, flushed, last)
    e = bytearray(bytes(hdr) + b"".join(datas))
    struct.pack_into("<I", e, 4, crc32c(e))
    return bytes(e)


def apply_descs(f, descs):
    for d in descs:
        f.seek(d[1])
        f.write(d[2] if d[0] == "data" else bytes(d[2]))


def cmd_dirty(path, expect_path, scenario, seed):
    """Make PATH dirty: write a log for SCENARIO into it and set the log
    GUID; write to EXPECT_PATH the file as it must be after replay."""
    import random
    import shutil
    rng = random.Random(int(seed))
    with open(path, "rb") as f:
        h = read_headers(f)
        g = geometry(f)
        f.seek(0, 2)
        fsize = f.tell()
        f.seek(g["bat_off"])
        nblocks = -(-g["size"] // g["block_size"])
        bat = []
        for b in range(nblocks):
            f.seek(g["bat_off"] + 8 * (b + b // g["chunk_ratio"]))
            bat.append(struct.unpack("<Q", f.read(8))[0])
    bs = g["block_size"]
    present = [b for b in range(nblocks) if bat[b] & 7 == 6]
    absent = [b for b in range(nblocks) if bat[b] & 7 != 6]
    assert present and absent, "image needs present and absent blocks"

    def rsec():
        return bytes(rng.randrange(256) for _ in range(16)) * 256

    def payload_sector(b=None):
        b = rng.choice(present) if b is None else b
        off = (bat[b] >> 20 << 20) + 4096 * rng.randrange(bs // 4096)
        return off

    flushed = fsize // MiB * MiB
    last = -(-fsize // MiB) * MiB
    log_guid = uuid.UUID(int=rng.getrandbits(128)).bytes_le
    L = h["log_len"]
    entries = []          # (log offset, seq, descs, corrupt)
    applied = []          # descriptor lists that replay must apply
    seq0 = rng.randrange(1, 1 << 40)

    def bat_update(b, new_off, state=6):
        """A data descriptor rewriting the BAT sector holding block b."""
        i = b + b // g["chunk_ratio"]
        soff = g["bat_off"] + (8 * i) // 4096 * 4096
        with open(path, "rb") as f:
            f.seek(soff)
            sec = bytearray(f.read(4096))
        # Earlier BAT updates to the same sector in this scenario.
        for ds in applied:
            for d in ds:
                if d[0] == "data" and d[1] == soff:
                    sec = bytearray(d[2])
        struct.pack_into("<Q", sec, 8 * i % 4096, (new_off) | state)
        return ("data", soff, bytes(sec))

    if scenario == "one":
        descs = [("data", payload_sector(), rsec()),
                 ("data", payload_sector(), rsec())]
        entries.append((0, seq0, descs, False))
        applied.append(descs)
    elif scenario == "bat":
        # Allocate an absent block at the end of the file: its first
        # sector through the log, the rest zeroes past the old end.
        b = rng.choice(absent)
        new = -(-fsize // MiB) * MiB
        last = new + bs
        descs = [("data", new, rsec())]
        applied.append(descs)
        descs2 = [bat_update(b, new)]
        descs += descs2
        entries.append((0, seq0, descs, False))
    elif scenario == "meta":
        # Virtual disk size one block smaller (metadata item update).
        off, ln = g["items"][DISK_SIZE]
        sec_off = off // 4096 * 4096
        with open(path, "rb") as f:
            f.seek(sec_off)
            sec = bytearray(f.read(4096))
        struct.pack_into("<Q", sec, off % 4096, g["size"] - bs)
        descs = [("data", sec_off, bytes(sec)),
                 ("data", payload_sector(), rsec())]
        entries.append((0, seq0, descs, False))
        applied.append(descs)
    elif scenario == "zero":
        o = payload_sector()
        descs = [("zero", o // 65536 * 65536, 65536),
                 ("data", payload_sector(), rsec()),
                 ("zero", (bat[present[-1]] >> 20 << 20), 8192)]
        entries.append((0, seq0, descs, False))
        applied.append(descs)
    elif scenario in ("several", "badcrc", "stale"):
        same = payload_sector()
        pos = 0
        for k in range(3):
            descs = [("data", same, rsec()), ("data", payload_sector(), rsec())]
            if k == 1:
                descs.append(("zero", payload_sector(), 4096))
            corrupt = scenario == "badcrc" and k == 2
            entries.append((pos, seq0 + k, descs, corrupt))
            if not corrupt:
                applied.append(descs)
            pos += 4096 * (1 + sum(d[0] == "data" for d in descs))
        if scenario == "stale":
            # A valid entry of an older sequence further on in the log,
            # left over from before: its tail names itself, so it forms a
            # sequence of its own, but an older one; never replayed.
            descs = [("data", same, rsec()), ("zero", payload_sector(), 8192)]
            entries.append((L - 16384, seq0 - 7, descs, False))
    elif scenario == "wrap":
        # Three entries; the second one runs over the end of the log and
        # continues at its start.
        e1 = [("data", payload_sector(), rsec())]
        e2 = [("data", payload_sector(), rsec()),
              ("data", payload_sector(), rsec())]
        e3 = [("data", payload_sector(), rsec())]
        entries.append((L - 12288, seq0, e1, False))
        entries.append((L - 4096, seq0 + 1, e2, False))
        entries.append((8192, seq0 + 2, e3, False))
        applied += [e1, e2, e3]
    else:
        sys.exit("unknown scenario " + scenario)

    # Tail of every active entry: the first active entry.
    tail = entries[0][0]
    shutil.copyfile(path, expect_path)
    with open(path, "r+b") as f:
        log = bytearray(L)
        for (pos, seq, descs, corrupt) in entries:
            t = pos if seq < seq0 else tail
            e = bytearray(log_entry(seq, t, log_guid, flushed, last, descs))
            if corrupt:
                e[100] ^= 0x55
            for i in range(len(e)):
                log[(pos + i) % L] = e[i]
        f.seek(h["log_off"])
        f.write(log)
        hh = bytearray(h["raw"])
        hh[48:64] = log_guid
        write_header(f, h["slot"], hh)
    with open(expect_path, "r+b") as f:
        for descs in applied:
            apply_descs(f, descs)
        f.seek(0, 2)
        if f.tell() < last:
            f.truncate(last)


def cmd_partial(child, parent_raw, expect_raw, seed):
    """Give differencing disk CHILD a PARTIALLY_PRESENT block (payload
    block 1) with a sector bitmap ([MS-VHDX] 2.5.1) that marks a seeded
    random set of its sectors present; write to EXPECT_RAW what the disk
    must read as: PARENT_RAW with those sectors replaced."""
    import random
    import shutil
    rng = random.Random(int(seed))
    with open(child, "r+b") as f:
        g = geometry(f)
        assert g["has_parent"]
        bs, lss, cr = g["block_size"], g["lss"], g["chunk_ratio"]
        f.seek(0, 2)
        end = -(-f.tell() // MiB) * MiB
        blk = 1
        data = bytes(rng.randrange(256) for _ in range(4096)) * (bs // 4096)
        f.seek(end)
        f.write(data)
        sbm_off = end + bs
        bits = bytearray(MiB)
        present = []
        nsec = bs // lss
        k = 0
        while k < nsec:
            run = rng.choice([1, 1, 3, 8, 100])
            on = rng.random() < 0.5
            for j in range(k, min(nsec, k + run)):
                if on:
                    s = blk * nsec + j          # sector index in chunk 0
                    bits[s >> 3] |= 1 << (s & 7)
                    present.append(j)
            k += run
        f.seek(sbm_off)
        f.write(bits)
        f.seek(g["bat_off"] + 8 * (blk + blk // cr))
        f.write(struct.pack("<Q", end | 7))
        f.seek(g["bat_off"] + 8 * cr)
        f.write(struct.pack("<Q", sbm_off | 6))
    shutil.copyfile(parent_raw, expect_raw)
    with open(expect_raw, "r+b") as f:
        for j in present:
            f.seek(blk * bs + j * lss)
            f.write(data[j * lss:(j + 1) * lss])


def _rewrite_regions(f, fn):
    """Apply FN(table bytearray) to both region tables, fix the CRCs."""
    for off in (192 * 1024, 256 * 1024):
        f.seek(off)
        t = bytearray(f.read(64 * 1024))
        fn(t)
        t[4:8] = b"\0\0\0\0"
        struct.pack_into("<I", t, 4, crc32c(t))
        f.seek(off)
        f.write(t)


def cmd_corrupt(path, what):
    """Damage IMG in one way (for the hostile-image tests)."""
    with open(path, "r+b") as f:
        h = read_headers(f)
        g = geometry(f)
        if what in ("hdr-both", "hdr-current"):
            slots = (1, 2) if what == "hdr-both" else (h["slot"],)
            for sl in slots:
                f.seek(64 * 1024 * sl + 200)
                b = f.read(1)
                f.seek(64 * 1024 * sl + 200)
                f.write(bytes([b[0] ^ 0xFF]))
        elif what in ("region1", "region-both"):
            for off in ((192,) if what == "region1" else (192, 256)):
                f.seek(off * 1024 + 20)
                b = f.read(1)
                f.seek(off * 1024 + 20)
                f.write(bytes([b[0] ^ 0xFF]))
        elif what == "region-overlap":
            def fn(t):
                n = struct.unpack_from("<I", t, 8)[0]
                for i in range(n):
                    if t[16 + 32 * i:32 + 32 * i] == BAT_GUID:
                        struct.pack_into("<Q", t, 32 + 32 * i, g["meta_off"])
            _rewrite_regions(f, fn)
        elif what == "bat-eof":
            f.seek(g["bat_off"])
            f.write(struct.pack("<Q", (1 << 40) | 6))
        elif what == "bat-state":
            f.seek(g["bat_off"])
            f.write(struct.pack("<Q", 5))
        elif what in ("lss", "block-size", "size-huge"):
            item = {"lss": LSS, "block-size": FILE_PARAMS,
                    "size-huge": DISK_SIZE}[what]
            f.seek(g["items"][item][0])
            f.write(struct.pack("<Q" if what == "size-huge" else "<I",
                                {"lss": 1000, "block-size": 3 << 20,
                                 "size-huge": 1 << 62}[what]))
        elif what == "meta-in-tail":
            # The metadata region moved into the space of the last payload
            # block that lies past the end of the disk (QEMU refuses it:
            # a block's space is the whole block).
            bs, size = g["block_size"], g["size"]
            last = (size - 1) // bs
            f.seek(g["bat_off"] + 8 * (last + last // g["chunk_ratio"]))
            e = struct.unpack("<Q", f.read(8))[0]
            need = size - last * bs
            assert e & 7 == 6 and need < bs and need % MiB == 0, \
                "needs a fully present last block that ends mid-block"
            dest = (e >> 20 << 20) + need
            f.seek(g["meta_off"])
            meta = f.read(g["meta_len"])
            f.seek(dest)
            f.write(meta)

            def fn(t):
                n = struct.unpack_from("<I", t, 8)[0]
                for i in range(n):
                    if t[16 + 32 * i:32 + 32 * i] == META_GUID:
                        struct.pack_into("<Q", t, 32 + 32 * i, dest)
            _rewrite_regions(f, fn)
        elif what == "meta-oob":
            f.seek(g["meta_off"])
            t = bytearray(f.read(64 * 1024))
            n = struct.unpack_from("<H", t, 10)[0]
            for i in range(n):
                if t[32 + 32 * i:48 + 32 * i] == DISK_SIZE:
                    struct.pack_into("<I", t, 48 + 32 * i, g["meta_len"] - 4)
            f.seek(g["meta_off"])
            f.write(t)
        else:
            sys.exit("unknown damage " + what)


if __name__ == "__main__":
    c = sys.argv[1]
    if c == "info":
        cmd_info(sys.argv[2])
    elif c == "dirty":
        cmd_dirty(sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5])
    elif c == "partial":
        cmd_partial(*sys.argv[2:6])
    elif c == "corrupt":
        cmd_corrupt(sys.argv[2], sys.argv[3])
    elif c == "set-lss":
        cmd_set_lss(sys.argv[2], sys.argv[3])
    else:
        sys.exit("unknown command " + c)
