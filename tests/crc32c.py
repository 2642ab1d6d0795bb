# SPDX-License-Identifier: BSD-3-Clause
"""CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), as VHDX and the
thin metadata use it, for the Python helpers of the tests:

    sys.path.insert(0, <this directory>)
    from crc32c import crc32c
"""

_TABLE = []
for _i in range(256):
    _c = _i
    for _ in range(8):
        _c = (_c >> 1) ^ (0x82F63B78 if _c & 1 else 0)
    _TABLE.append(_c)


def crc32c(data, crc=0):
    """CRC-32C of DATA, continuing from CRC (0 to start)."""
    crc ^= 0xFFFFFFFF
    t = _TABLE
    for b in data:
        crc = (crc >> 8) ^ t[(crc ^ b) & 0xFF]
    return crc ^ 0xFFFFFFFF
