# SPDX-License-Identifier: BSD-3-Clause
# Verifier for thin-crash-writer.py, run with nbdsh after the restart:
#   nbdsh -u URI -c "V_FIRST=...; V_COUNT=...; V_LOG='...'; exec(open(THIS).read())"
# Every chunk logged durable ("d") and never trimmed reads back
# its pattern; every other chunk the writer may have touched reads as its
# pattern or as zeroes -- never as another chunk's data.
import hashlib

C = 65536


def pattern(v):
    return hashlib.sha256(b"thin%d" % v).digest() * (C // 32)


durable_set, trimmed = set(), set()
for line in open(V_LOG):
    k, v = line.split()
    (durable_set if k == "d" else trimmed).add(int(v))
bad = []
durable = 0
for i in range(V_COUNT):
    v = V_FIRST + 3 * i
    got = h.pread(C, v * C)
    if v in durable_set and v not in trimmed:
        durable += 1
        if got != pattern(v):
            bad.append("chunk %d: durable data lost" % v)
    elif got != pattern(v) and got != bytes(C):
        bad.append("chunk %d: neither its data nor zeroes" % v)
if bad:
    raise SystemExit("\n".join(bad[:20]))
print("verified: %d durable chunks of %d" % (durable, V_COUNT))
