#!/usr/bin/env python3
# SPDX-License-Identifier: BSD-3-Clause
"""Mutate LVM2 metadata text with a seeded PRNG, for the server-level
hostile test (test-lvm-hostile-server.sh).  The mutations aim at the
parser and the model rather than at the checksums (lvm-mda.py recomputes
those): numbers set to boundary values, strings emptied, lengthened or
pointed at other PVs/LVs, segment types swapped, lines and sections
dropped, duplicated or swapped, names made over-long, bytes flipped.

  lvm-mutate.py SEED IN OUT      write the mutated text, print what was done
"""
import random
import re
import sys

NUM = re.compile(rb"-?\d+")
STR = re.compile(rb'"(?:[^"\\\n]|\\.)*"')
TYPES = [b"striped", b"linear", b"mirror", b"raid1", b"zero", b"error",
         b"thin", b"thin-pool", b"snapshot", b"raid5+RESHAPE", b"striped+",
         b"", b" ", b"+", b"str\xffped", b"cache+METADATA_FORMAT"]
BOUNDARY = [0, 1, -1, 2, 127, 128, 4096, 2**31 - 1, 2**31, 2**32 - 1, 2**32,
            2**63 - 1, 2**63, 2**64 - 1, 2**64, -2**63, 10**30]


def pick(rng, pattern, text):
    ms = list(pattern.finditer(text))
    return rng.choice(ms) if ms else None


def names_in(text):
    """PV and LV names: keys followed by '{' (section names)."""
    return [m.group(1) for m in re.finditer(rb"(?m)^\s*([A-Za-z0-9_.+-]+) \{",
                                            text)]


def mutate_once(rng, t):
    kind = rng.choice(["num", "num", "str", "str", "type", "line", "line",
                       "section", "byte", "name", "area", "brace"])
    if kind == "num":
        m = pick(rng, NUM, t)
        if not m:
            return t, "no number"
        n = int(m.group())
        v = rng.choice(BOUNDARY + [n + 1, n - 1, n * 2, n // 2,
                                   rng.randrange(0, 1 << rng.randrange(1, 64))])
        return t[:m.start()] + str(v).encode() + t[m.end():], \
            "number %d -> %d" % (n, v)
    if kind == "str":
        m = pick(rng, STR, t)
        if not m:
            return t, "no string"
        choices = [b"", b"x" * rng.randrange(1, 6000),
                   bytes(rng.randrange(1, 256) for _ in range(rng.randrange(1, 20))).replace(b'"', b"q").replace(b"\\", b"/").replace(b"\0", b"z"),
                   rng.choice(names_in(t) or [b"pv0"])]
        v = rng.choice(choices)
        return t[:m.start()] + b'"' + v + b'"' + t[m.end():], \
            "string %s -> %d bytes" % (m.group()[:20], len(v))
    if kind == "type":
        ms = list(re.finditer(rb'type = "[^"]*"', t))
        if not ms:
            return t, "no type"
        m = rng.choice(ms)
        v = rng.choice(TYPES)
        return t[:m.start()] + b'type = "' + v + b'"' + t[m.end():], \
            "type -> %r" % v
    if kind == "line":
        lines = t.split(b"\n")
        i = rng.randrange(len(lines))
        op = rng.choice(["drop", "dup", "swap"])
        if op == "drop":
            del lines[i]
        elif op == "dup":
            lines.insert(i, lines[i])
        else:
            j = rng.randrange(len(lines))
            lines[i], lines[j] = lines[j], lines[i]
        return b"\n".join(lines), "line %d %s" % (i + 1, op)
    if kind == "section":
        # A whole section (balanced braces) dropped or duplicated,
        # possibly renamed.
        starts = [m.start() for m in re.finditer(rb"(?m)^\s*[A-Za-z0-9_.+-]+ \{", t)]
        if not starts:
            return t, "no section"
        s = rng.choice(starts)
        depth, e = 0, None
        for k in range(t.index(b"{", s), len(t)):
            if t[k:k + 1] == b"{":
                depth += 1
            elif t[k:k + 1] == b"}":
                depth -= 1
                if depth == 0:
                    e = k + 1
                    break
        if e is None:
            return t, "unbalanced"
        sec = t[s:e]
        op = rng.choice(["drop", "dup", "dup-renamed", "dup-many"])
        if op == "drop":
            return t[:s] + t[e:], "section drop"
        if op == "dup":
            return t[:e] + b"\n" + sec + t[e:], "section dup"
        if op == "dup-many":
            n = rng.randrange(2, 200)
            copies = b"".join(re.sub(rb"^(\s*)([A-Za-z0-9_.+-]+)",
                                     lambda m: m.group(1) + m.group(2) + b"_%d" % i,
                                     sec, count=1) + b"\n" for i in range(n))
            return t[:e] + b"\n" + copies + t[e:], "section x%d" % n
        new = re.sub(rb"^(\s*)([A-Za-z0-9_.+-]+)",
                     lambda m: m.group(1) + m.group(2) + b"_copy", sec, count=1)
        return t[:e] + b"\n" + new + t[e:], "section dup renamed"
    if kind == "byte":
        if not t:
            return t, "empty"
        i = rng.randrange(len(t))
        op = rng.choice(["flip", "ins", "del"])
        if op == "flip":
            return t[:i] + bytes([t[i] ^ (1 << rng.randrange(8))]) + t[i + 1:], "byte %d flip" % i
        if op == "ins":
            return t[:i] + bytes([rng.randrange(1, 256)]) + t[i:], "byte %d insert" % i
        return t[:i] + t[i + 1:], "byte %d delete" % i
    if kind == "name":
        ns = names_in(t)
        if not ns:
            return t, "no name"
        old = rng.choice(ns)
        new = rng.choice([b"n" * rng.randrange(100, 6000), b"-lead", b"a@b",
                          b".", b"..", b"x" * 127, b"x" * 128])
        return re.sub(rb"(?m)^(\s*)" + re.escape(old) + rb" \{",
                      lambda m: m.group(1) + new + b" {", t, count=1), \
            "name %s -> %d bytes" % (old[:20], len(new))
    if kind == "area":
        # Point a stripe/mirror area at another PV or LV (stacking, loops).
        ms = list(re.finditer(rb'"([A-Za-z0-9_.+-]+)", (\d+)', t))
        ns = names_in(t)
        if not ms or not ns:
            return t, "no area"
        m = rng.choice(ms)
        v = rng.choice(ns)
        return t[:m.start()] + b'"' + v + b'", ' + m.group(2) + t[m.end():], \
            "area %s -> %s" % (m.group(1)[:20], v[:20])
    # brace: insert or remove one brace/bracket
    i = rng.randrange(len(t) + 1)
    c = rng.choice([b"{", b"}", b"[", b"]", b"=", b'"'])
    return t[:i] + c + t[i:], "insert %r at %d" % (c, i)


def main():
    if len(sys.argv) != 4:
        raise SystemExit(__doc__)
    seed = int(sys.argv[1])
    rng = random.Random(seed)
    t = open(sys.argv[2], "rb").read()
    done = []
    for _ in range(rng.choice([1, 1, 2, 3, 4])):
        t, what = mutate_once(rng, t)
        done.append(what)
    t = t[:900000]              # fits the metadata area
    open(sys.argv[3], "wb").write(t)
    print("; ".join(done))


if __name__ == "__main__":
    main()
