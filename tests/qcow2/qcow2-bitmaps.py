#!/usr/bin/env python3
# SPDX-License-Identifier: BSD-3-Clause
# Helper of test-qcow2-bitmaps.sh (persistent dirty bitmaps).
#
#   qcow2-bitmaps.py ops --seed N --size BYTES --count N [--flush-every K]
#       Print qemu-io commands: writes (-P), write-zeroes (-z) and
#       discards at seeded offsets and lengths (unaligned ones included,
#       overwrites of earlier ranges included), a flush every K commands.
#
#   qcow2-bitmaps.py expect GRANULARITY SIZE OPSFILE...
#       The dirty ranges a bitmap of GRANULARITY must show after the
#       commands of OPSFILE(s): every written, zeroed or discarded range
#       rounded out to the granularity, merged.  One "offset length" a line.
#
#   qcow2-bitmaps.py dirty MAPJSON
#       The dirty ranges of "nbdinfo --map=qemu:dirty-bitmap:NAME --json",
#       merged, in the same form.
#
#   qcow2-bitmaps.py covers GRANULARITY MAPJSON BEFORE.raw AFTER.raw
#       Exit 1 (naming the first one) if a granularity unit whose content
#       differs between the two raw images is not dirty in MAPJSON.
import json
import random
import sys


def merge(ranges):
    out = []
    for off, ln in sorted(ranges):
        if ln <= 0:
            continue
        if out and off <= out[-1][0] + out[-1][1]:
            end = max(out[-1][0] + out[-1][1], off + ln)
            out[-1][1] = end - out[-1][0]
        else:
            out.append([off, ln])
    return out


def cmd_ops(args):
    seed = size = count = None
    flush_every = 0
    i = 0
    while i < len(args):
        a = args[i]
        if a == "--seed":
            seed = int(args[i + 1])
        elif a == "--size":
            size = int(args[i + 1])
        elif a == "--count":
            count = int(args[i + 1])
        elif a == "--flush-every":
            flush_every = int(args[i + 1])
        else:
            sys.exit("ops: unknown argument %s" % a)
        i += 2
    rnd = random.Random(seed)
    done = []
    for n in range(count):
        if done and rnd.random() < 0.25:
            # Over (part of) an earlier range: in-place writes.
            off, ln = rnd.choice(done)
            ln = max(1, min(ln, rnd.randint(1, ln)))
        else:
            if rnd.random() < 0.5:
                off = rnd.randrange(0, size // 512) * 512
                ln = rnd.randint(1, 128) * 512
            else:
                off = rnd.randrange(0, size)
                ln = rnd.randint(1, 300 * 1024)
            ln = min(ln, size - off)
        done.append((off, ln))
        r = rnd.random()
        if r < 0.7:
            print("write -P 0x%02x %d %d" % (rnd.randint(1, 255), off, ln))
        elif r < 0.85:
            print("write -z %d %d" % (off, ln))
        else:
            print("discard %d %d" % (off, ln))
        if flush_every and (n + 1) % flush_every == 0:
            print("flush")


def read_ops(path):
    out = []
    with open(path) as f:
        for line in f:
            w = line.split()
            if not w or w[0] == "flush":
                continue
            nums = [x for x in w[1:] if not x.startswith("-") and
                    not x.startswith("0x")]
            out.append((int(nums[0]), int(nums[1])))
    return out


def cmd_expect(args):
    g, size = int(args[0]), int(args[1])
    rs = []
    for path in args[2:]:
        for off, ln in read_ops(path):
            a = off // g * g
            b = min(-(-(off + ln) // g) * g, size)
            rs.append((a, b - a))
    for off, ln in merge(rs):
        print(off, ln)


def dirty_ranges(mapjson):
    with open(mapjson) as f:
        m = json.load(f)
    return merge([(e["offset"], e["length"]) for e in m
                   if e["type"] & 1])


def cmd_dirty(args):
    for off, ln in dirty_ranges(args[0]):
        print(off, ln)


def cmd_covers(args):
    g = int(args[0])
    dirty = dirty_ranges(args[1])
    with open(args[2], "rb") as a, open(args[3], "rb") as b:
        unit = 0
        changed = 0
        while True:
            x, y = a.read(g), b.read(g)
            if not x and not y:
                break
            if x != y:
                changed += 1
                off = unit * g
                if not any(d <= off < d + ln for d, ln in dirty):
                    sys.exit("changed unit at %d (granularity %d) is not "
                             "dirty in the bitmap" % (off, g))
            unit += 1
    print("%d changed units, all dirty" % changed)


cmds = {"ops": cmd_ops, "expect": cmd_expect, "dirty": cmd_dirty,
        "covers": cmd_covers}
if len(sys.argv) < 2 or sys.argv[1] not in cmds:
    sys.exit(__doc__ if __doc__ else "usage: see the comment at the top")
cmds[sys.argv[1]](sys.argv[2:])
