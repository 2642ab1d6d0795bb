#!/usr/bin/env python3
# SPDX-License-Identifier: BSD-3-Clause
"""Read and rewrite the committed metadata text of an LVM2 PV (image file or
block device), for tests that need hostile or unusual metadata with valid
checksums.  Written from the on-disk format description (label in sectors
0-3, PV header, mda header with a raw_locn ring buffer).

  lvm-mda.py uuid PV                 print the PV UUID (32 chars)
  lvm-mda.py dump PV                 print the committed text (first mda)
  lvm-mda.py info PV                 print mda start/size and text offset/size
  lvm-mda.py write PV TEXTFILE [--offset N] [--bad-text-checksum]
                                     store TEXTFILE as the committed text of
                                     every mda of PV (at ring offset N; the
                                     text wraps around the end of the ring
                                     if it does not fit)
  lvm-mda.py break-header PV         corrupt the first mda header (checksum
                                     left stale)
  lvm-mda.py zero-mda-size PV        record every mda's size as 0 in the PV
                                     header (label checksum recomputed)
"""
import struct
import sys

SECTOR = 512
INITIAL_CRC = 0xF597A6CF
MAGIC = b" LVM2 x[5A%r0N*>"


def _table():
    t = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0xEDB88320 if c & 1 else c >> 1
        t.append(c)
    return t


TABLE = _table()


def crc(data, c=INITIAL_CRC):
    for b in data:
        c = TABLE[(c ^ b) & 0xFF] ^ (c >> 8)
    return c


def read_at(f, off, n):
    f.seek(off)
    return f.read(n)


def label(f):
    for s in range(4):
        sec = read_at(f, s * SECTOR, SECTOR)
        if sec[:8] == b"LABELONE":
            off = struct.unpack_from("<I", sec, 20)[0]
            uuid = sec[off:off + 32].decode()
            p = off + 40
            lists = []
            for _ in range(2):
                areas = []
                while True:
                    o, sz = struct.unpack_from("<QQ", sec, p)
                    p += 16
                    if o == 0:
                        break
                    areas.append((o, sz))
                lists.append(areas)
            return uuid, lists[0], lists[1]
    raise SystemExit("no LVM2 label")


def zero_mda_sizes(f):
    for s in range(4):
        sec = bytearray(read_at(f, s * SECTOR, SECTOR))
        if sec[:8] != b"LABELONE":
            continue
        p = struct.unpack_from("<I", sec, 20)[0] + 40
        for lst in range(2):
            while True:
                o, _ = struct.unpack_from("<QQ", sec, p)
                if o == 0:
                    p += 16
                    break
                if lst == 1:
                    struct.pack_into("<Q", sec, p + 8, 0)
                p += 16
        struct.pack_into("<I", sec, 16, crc(bytes(sec[20:])))
        f.seek(s * SECTOR)
        f.write(bytes(sec))
        return
    raise SystemExit("no LVM2 label")


def mda_header(f, start):
    h = bytearray(read_at(f, start, 512))
    if h[4:20] != MAGIC:
        raise SystemExit("bad mda magic at %d" % start)
    mstart, msize = struct.unpack_from("<QQ", h, 24)
    toff, tsize, tcsum, tflags = struct.unpack_from("<QQII", h, 40)
    return h, msize, toff, tsize


def read_text(f, start):
    h, msize, toff, tsize = mda_header(f, start)
    first = min(tsize, msize - toff)
    data = read_at(f, start + toff, first)
    if tsize > first:
        data += read_at(f, start + 512, tsize - first)
    return data


def write_text(f, start, text, offset=None, bad_checksum=False):
    h, msize, toff, tsize = mda_header(f, start)
    if offset is None:
        offset = toff
    ring = msize - 512
    if len(text) > ring or not (512 <= offset < msize):
        raise SystemExit("text does not fit")
    first = min(len(text), msize - offset)
    f.seek(start + offset)
    f.write(text[:first])
    if len(text) > first:
        f.seek(start + 512)
        f.write(text[first:])
    c = crc(text)
    if bad_checksum:
        c ^= 0x1
    struct.pack_into("<QQII", h, 40, offset, len(text), c, 0)
    struct.pack_into("<I", h, 0, crc(bytes(h[4:512])))
    f.seek(start)
    f.write(bytes(h))


def main():
    if len(sys.argv) < 3:
        raise SystemExit(__doc__)
    cmd, path = sys.argv[1], sys.argv[2]
    with open(path, "r+b") as f:
        uuid, data, mdas = label(f)
        if cmd == "uuid":
            print(uuid)
        elif cmd == "dump":
            sys.stdout.buffer.write(read_text(f, mdas[0][0]).rstrip(b"\0"))
        elif cmd == "info":
            for start, size in mdas:
                h, msize, toff, tsize = mda_header(f, start)
                print(start, msize, toff, tsize)
        elif cmd == "write":
            text = open(sys.argv[3], "rb").read()
            args = sys.argv[4:]
            offset = None
            bad = False
            while args:
                a = args.pop(0)
                if a == "--offset":
                    offset = int(args.pop(0))
                elif a == "--bad-text-checksum":
                    bad = True
                else:
                    raise SystemExit("unknown option " + a)
            for start, size in mdas:
                write_text(f, start, text, offset, bad)
        elif cmd == "zero-mda-size":
            zero_mda_sizes(f)
        elif cmd == "break-header":
            start = mdas[0][0]
            f.seek(start + 30)
            b = f.read(1)
            f.seek(start + 30)
            f.write(bytes([b[0] ^ 0xFF]))
        else:
            raise SystemExit(__doc__)


if __name__ == "__main__":
    main()
