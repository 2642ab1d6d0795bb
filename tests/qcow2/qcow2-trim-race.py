# SPDX-License-Identifier: BSD-3-Clause
# A write racing a trim of the same range, then a flush and a write of
# another range, all in flight together: the other range must read back
# exactly as written (the racing pair's own range may hold either).
# Usage: qcow2-trim-race.py SOCKET ROUNDS (tests/qcow2/test-qcow2-trim-race.sh)
import sys
import nbd

sock, rounds = sys.argv[1], int(sys.argv[2])
C = 65536
N = 256                                 # clusters per range
A, B = 0, 512 << 20
h = nbd.NBD()
h.connect_unix(sock)


def wait_all(cookies):
    for c in cookies:
        while not h.aio_command_completed(c):
            h.poll(-1)


for r in range(rounds):
    for i in range(1, N, 2):            # every other cluster allocated
        h.pwrite(b'\x01' * C, A + i * C)
    h.flush()
    w2 = b'\xbb' * (N * C)
    wait_all([h.aio_pwrite(b'\xaa' * (N * C), A), h.aio_trim(N * C, A),
              h.aio_flush(), h.aio_pwrite(w2, B)])
    got = h.pread(N * C, B)
    if got != w2:
        bad = sum(got[i * C:(i + 1) * C] != w2[:C] for i in range(N))
        sys.exit("round %d: %d clusters of the other range hold data of "
                 "the racing write" % (r, bad))
    h.trim(N * C, B)
    h.trim(N * C, A)
    h.flush()
h.shutdown()
