# SPDX-License-Identifier: BSD-3-Clause
# fast-zero.py URI: write 64 KiB at 1 MiB, then a zero of 1 MiB there with
# the fast-zero flag, sent even if the export did not advertise it (strict
# mode off).  Success must leave zeroes, ENOTSUP the data unchanged; any
# other error, or a server gone, fails.  Prints "advertised BOOL" and
# "result done|ENOTSUP".
import errno
import sys

import nbd

h = nbd.NBD()
h.set_strict_mode(0)
h.connect_uri(sys.argv[1])
print("advertised", h.can_fast_zero())
h.pwrite(b"\x5a" * 65536, 1 << 20)
try:
    h.zero(1 << 20, 1 << 20, nbd.CMD_FLAG_FAST_ZERO)
    assert h.pread(65536, 1 << 20) == bytes(65536), \
        "fast zero succeeded but did not zero"
    print("result done")
except nbd.Error as e:
    assert e.errnum == errno.ENOTSUP, "fast zero failed with %s" % e
    assert h.pread(65536, 1 << 20) == b"\x5a" * 65536, \
        "a refused fast zero changed the data"
    print("result ENOTSUP")
h.pread(512, 0)            # still serving
h.shutdown()
