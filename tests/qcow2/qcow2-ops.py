#!/usr/bin/env python3
# SPDX-License-Identifier: BSD-3-Clause
"""Seeded random qemu-io workloads for the qcow2 tests.

Prints qemu-io commands, one per line, to be fed to `qemu-io ... < FILE`.

  qcow2-ops.py --seed S --size BYTES [--count N] [--cluster C]
               [--mode fill|mirror] [--patterns DIR] [--compress]
               [--region START:LEN]

Modes:
  fill    commands that build image content directly (qemu-io -f qcow2 on
          the image file): pattern writes, writes from random pattern
          files, zero writes with and without unmap, discards and (with
          --compress) compressed cluster writes.  The oracle then reads the
          resulting file, so discarded content needs no special care.
  mirror  commands sent both through the NBD export and to a raw mirror
          file: the same mix plus flushes and FUA writes.  Discarded
          (trimmed) ranges have undefined content in NBD, so at the end
          every range that was ever discarded is overwritten (with data or
          with zeroes), which makes the final content fully defined.

Offsets and lengths mix cluster-aligned, sector-aligned and arbitrary byte
values.  --patterns DIR creates seeded random pattern files there (odd
sizes, so the repetition never lines up with sectors) used by `write -s`.
"""

import argparse
import os
import random
import sys

PATTERN_SIZES = [1021, 4093, 65537, 511, 12289, 131101, 3, 777]


def make_patterns(d, rng):
    os.makedirs(d, exist_ok=True)
    paths = []
    for i, n in enumerate(PATTERN_SIZES):
        p = os.path.join(d, "pat%d" % i)
        if not os.path.exists(p) or os.path.getsize(p) != n:
            with open(p, "wb") as f:
                f.write(bytes(rng.getrandbits(8) for _ in range(n)))
        paths.append(p)
    return paths


class Gen:
    def __init__(self, args):
        self.rng = random.Random(args.seed)
        self.size = args.size
        self.cluster = args.cluster
        self.mode = args.mode
        self.compress = args.compress
        if args.region:
            s, l = args.region.split(":")
            self.rstart, self.rlen = int(s, 0), int(l, 0)
        else:
            self.rstart, self.rlen = 0, args.size
        assert self.rstart + self.rlen <= self.size
        self.patterns = (make_patterns(args.patterns, random.Random(1234))
                         if args.patterns else [])
        self.trimmed = []       # (start, end) of every discard

    def length(self):
        r = self.rng.random()
        if r < 0.35:
            n = self.rng.randint(1, 4096)
        elif r < 0.7:
            n = self.rng.randint(1, 256 * 1024)
        elif r < 0.85:
            n = self.rng.choice([512, 4096, self.cluster, 2 * self.cluster,
                                 65536])
        else:
            n = self.rng.randint(1, 2 * 1024 * 1024)
        return max(1, min(n, self.rlen))

    def range(self):
        n = self.length()
        r = self.rng.random()
        if r < 0.3:
            align = self.cluster
        elif r < 0.6:
            align = 512
        else:
            align = 1
        off = self.rng.randrange(0, self.rlen - n + 1)
        off -= off % align
        if align > 1 and self.rng.random() < 0.7:
            n = max(align, n - n % align)
            n = min(n, self.rlen - off)
        return self.rstart + off, n

    def data_write(self, off, n, flags=""):
        if self.patterns and self.rng.random() < 0.45:
            p = self.rng.choice(self.patterns)
            return "write -q%s -s %s %d %d" % (flags, p, off, n)
        return "write -q%s -P 0x%02x %d %d" % (flags, self.rng.randint(1, 255),
                                              off, n)

    def op(self):
        r = self.rng.random()
        off, n = self.range()
        if r < 0.50:
            return [self.data_write(off, n)]
        if r < 0.60:
            return ["write -q -z %d %d" % (off, n)]
        if r < 0.70:
            return ["write -q -z -u %d %d" % (off, n)]
        if r < 0.80:
            self.trimmed.append((off, off + n))
            return ["discard -q %d %d" % (off, n)]
        if self.mode == "fill":
            return [self.data_write(off, n)]
        # mirror mode
        if r < 0.88:
            return ["flush"]
        return [self.data_write(off, n, "f")]

    def compressed(self, count):
        """Compressed writes of whole clusters.  QEMU can only compress
        into unallocated clusters, so these come first, on distinct
        clusters."""
        out = []
        nclus = self.rlen // self.cluster
        used = set()
        short = [q for q in self.patterns if os.path.getsize(q) < 5000]
        for _ in range(count):
            if nclus == 0:
                break
            c = self.rng.randrange(nclus)
            k = self.rng.randint(1, min(4, nclus - c))
            if any(c + i in used for i in range(k)):
                continue
            used.update(c + i for i in range(k))
            coff = self.rstart + c * self.cluster
            # Compressible data: a pattern, or a short repeated file.
            if short and self.rng.random() < 0.5:
                out.append("write -q -c -s %s %d %d"
                           % (self.rng.choice(short), coff, k * self.cluster))
            else:
                out.append("write -q -c -P 0x%02x %d %d"
                           % (self.rng.randint(1, 255), coff,
                              k * self.cluster))
        return out

    def fixup(self):
        """Overwrite every discarded range so the content is defined."""
        out = []
        merged = []
        for s, e in sorted(self.trimmed):
            if merged and s <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], e)
            else:
                merged.append([s, e])
        for s, e in merged:
            if self.rng.random() < 0.3:
                out.append("write -q -z %d %d" % (s, e - s))
            else:
                out.append(self.data_write(s, e - s))
        return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--size", type=lambda x: int(x, 0), required=True)
    ap.add_argument("--count", type=int, default=50)
    ap.add_argument("--cluster", type=lambda x: int(x, 0), default=65536)
    ap.add_argument("--mode", choices=["fill", "mirror"], default="fill")
    ap.add_argument("--patterns")
    ap.add_argument("--compress", action="store_true")
    ap.add_argument("--region")
    args = ap.parse_args()
    g = Gen(args)
    cmds = []
    if args.compress and args.mode == "fill":
        cmds += g.compressed(max(1, args.count // 4))
    for _ in range(args.count):
        cmds += g.op()
    if args.mode == "mirror":
        cmds += g.fixup()
        cmds.append("flush")
    sys.stdout.write("\n".join(cmds) + "\n")


if __name__ == "__main__":
    main()
