#!/usr/bin/env python3
# SPDX-License-Identifier: BSD-3-Clause
"""Compare the block status of an NBD export with qemu-img map.

  qcow2-mapcmp.py QEMU_MAP.json NBDINFO_MAP.json CONTENT.raw
                  [--skip-depth D]... [--lenient-past DEPTH]

QEMU_MAP.json   `qemu-img map --output=json IMAGE` (the oracle)
NBDINFO_MAP.json `nbdinfo --map --json URI` (base:allocation of the export)
CONTENT.raw     `qemu-img convert -O raw IMAGE` (the oracle's content)

Both maps are normalised to per-byte-range "zero" / "data" lists and
compared with these rules:

1. The export's extents are contiguous and cover exactly [0, size).
2. Soundness: every range the export reports with the ZERO flag really
   reads as zeroes in the oracle's content.
3. Completeness: every range qemu reports as zero=true, data=false (a hole,
   an unallocated or zero (sub)cluster, known from metadata) is reported
   with the ZERO flag by the export.  Allocated-zero vs hole differences
   are legitimate, so the HOLE flag is not compared, and qemu's zero=true
   on allocated data (zero detection in the host file) is not required.
   --skip-depth D exempts ranges that qemu resolved at backing depth D (use
   it for a raw base, whose holes only SEEK_HOLE can see).

Prints a summary; exits 1 with the first differences on failure.
"""

import argparse
import json
import sys


def load_nbd(path):
    with open(path) as f:
        ext = json.load(f)
    out = []
    for e in ext:
        out.append((e["offset"], e["offset"] + e["length"], e["type"]))
    return out


def load_qemu(path):
    with open(path) as f:
        ext = json.load(f)
    out = []
    for e in ext:
        out.append((e["start"], e["start"] + e["length"], e))
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("qemu_map")
    ap.add_argument("nbd_map")
    ap.add_argument("content")
    ap.add_argument("--skip-depth", type=int, action="append", default=[])
    ap.add_argument("--no-qemu", action="store_true",
                    help="no qemu map (snapshots): rules 1 and 2 only")
    args = ap.parse_args()

    qm = load_qemu(args.qemu_map)
    nm = load_nbd(args.nbd_map)
    with open(args.content, "rb") as f:
        data = f.read()
    size = len(data)
    errors = []

    # 1. coverage
    pos = 0
    for s, e, t in nm:
        if s != pos or e <= s:
            errors.append("export extents not contiguous at %d: %d..%d"
                          % (pos, s, e))
            break
        pos = e
    if pos != size and not errors:
        errors.append("export extents end at %d, size is %d" % (pos, size))
    qpos = 0 if not args.no_qemu else size
    for s, e, _ in qm:
        if s != qpos:
            errors.append("qemu map not contiguous at %d" % qpos)
            break
        qpos = e
    if qpos != size:
        errors.append("qemu map ends at %d, content size is %d" % (qpos, size))

    # 2. soundness: ZERO ranges read as zero
    zero_bytes = 0
    for s, e, t in nm:
        if t & 2:
            zero_bytes += e - s
            chunk = data[s:e]
            if chunk.count(0) != len(chunk):
                nz = next(i for i, b in enumerate(chunk) if b)
                errors.append("export reports ZERO at %d..%d but byte %d is "
                              "0x%02x" % (s, e, s + nz, chunk[nz]))

    # 3. completeness: qemu's metadata zeroes are ZERO in the export
    def nbd_zero_covers(s, e):
        """First sub-range of [s,e) the export does not flag ZERO."""
        for ns, ne, t in nm:
            if ne <= s or ns >= e:
                continue
            if not (t & 2):
                return max(s, ns), min(e, ne)
        return None

    must_zero = 0
    for s, e, q in qm:
        if not q.get("zero") or q.get("data"):
            continue
        if q.get("present", True) and q.get("depth") in args.skip_depth:
            continue
        must_zero += e - s
        bad = nbd_zero_covers(s, e)
        if bad:
            errors.append("qemu: %d..%d zero (depth %s, present %s); export "
                          "says data at %d..%d"
                          % (s, e, q.get("depth"), q.get("present"),
                             bad[0], bad[1]))

    print("map: size %d, export %d extents (%d zero bytes), qemu %d extents "
          "(%d bytes must be zero)" % (size, len(nm), zero_bytes, len(qm),
                                       must_zero))
    if errors:
        for m in errors[:20]:
            print("MAP MISMATCH: " + m, file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
