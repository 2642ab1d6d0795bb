# SPDX-License-Identifier: BSD-3-Clause
# Crash-test client for the thin filter, run with nbdsh:
#   nbdsh -u URI -c "W_FIRST=...; W_COUNT=...; W_LOG='...'; exec(open(THIS).read())"
# Writes W_COUNT full chunks at virtual chunks W_FIRST + 3*i (each written
# once, content derived from its index), trims some of the earlier ones,
# flushes every 8 writes (some writes carry FUA instead) and appends what
# is durable to W_LOG *after* the flush or FUA write returned:
#   "d V" chunk V holds its pattern for good; "t V" V is (about to be)
#   trimmed: logged before the trim is sent.
# It keeps going until the server is killed.
import hashlib

C = 65536


def pattern(v):
    return hashlib.sha256(b"thin%d" % v).digest() * (C // 32)


log = open(W_LOG, "a", buffering=1)
pending = []
try:
    for i in range(W_COUNT):
        v = W_FIRST + 3 * i
        if i % 11 == 5:
            h.pwrite(pattern(v), v * C, nbd.CMD_FLAG_FUA)
            log.write("d %d\n" % v)
        else:
            h.pwrite(pattern(v), v * C)
            pending.append("d %d" % v)
        if i % 7 == 6:
            t = W_FIRST + 3 * (i - 4)
            log.write("t %d\n" % t)     # before: it may take effect
            h.trim(C, t * C)
        if i % 8 == 7:
            h.flush()
            for p in pending:
                log.write(p + "\n")
            pending = []
except nbd.Error:
    pass
