# SPDX-License-Identifier: BSD-3-Clause
# Run by /usr/bin/python3 (libnbd bindings): writes rounds of distinct 4 KiB..64 KiB regions (each
# written once, with a pattern naming its round) across the disk, flushes
# after every round and appends "ROUND OFFSET LENGTH BYTE" lines of the
# flushed round to the journal (fsync'd).  Killed from outside at any
# moment; the journal then lists what must have survived.
import os
import nbd
import random
import sys

sock, journal, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
h = nbd.NBD()
h.connect_unix(sock)
size = h.get_size()
rng = random.Random(seed)
slots = list(range(size // 65536))
rng.shuffle(slots)
j = open(journal, "a")
rnd = 0
while slots:
    rnd += 1
    done = []
    for _ in range(8):
        if not slots:
            break
        s = slots.pop()
        ln = rng.choice([4096, 65536, 12288])
        b = rng.randrange(1, 256)
        h.pwrite(bytes([b]) * ln, s * 65536)
        done.append((s * 65536, ln, b))
    h.flush()
    for (o, ln, b) in done:
        j.write("%d %d %d %d\n" % (rnd, o, ln, b))
    j.flush()
    os.fsync(j.fileno())
