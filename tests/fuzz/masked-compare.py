#!/usr/bin/env python3
# SPDX-License-Identifier: BSD-3-Clause
"""masked-compare.py A.raw B.raw OPS: compare two raw images (an image as
read, and its raw mirror) except in the
ranges that the qemu-io requests in OPS trimmed ("discard OFF LEN") and did
not write again ("write ... OFF LEN"): there NBD and QEMU leave the
content unspecified.  Exit 0 if equal elsewhere, else 1, naming the first
difference."""
import sys

CHUNK = 1 << 20


def masked_ranges(ops_path):
    ranges = []                         # disjoint [start, end) intervals

    def remove(s, e):
        out = []
        for a, b in ranges:
            if b <= s or a >= e:
                out.append((a, b))
                continue
            if a < s:
                out.append((a, s))
            if b > e:
                out.append((e, b))
        ranges[:] = out

    for line in open(ops_path):
        w = line.split()
        if not w or w[0].startswith("#"):
            continue
        off, n = int(w[-2]), int(w[-1])
        remove(off, off + n)
        if w[0] == "discard":
            ranges.append((off, off + n))
    return ranges


def main():
    a_path, b_path, ops_path = sys.argv[1:4]
    mask = masked_ranges(ops_path)
    with open(a_path, "rb") as a, open(b_path, "rb") as b:
        pos = 0
        while True:
            x, y = a.read(CHUNK), b.read(CHUNK)
            if not x and not y:
                return 0
            if x != y:
                for i in range(max(len(x), len(y))):
                    p = pos + i
                    if (x[i:i + 1] != y[i:i + 1] and
                            not any(s <= p < e for s, e in mask)):
                        print("content differs at offset %d (masked trims: %s)"
                              % (p, mask))
                        return 1
            pos += CHUNK


sys.exit(main())
