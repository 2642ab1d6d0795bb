#!/usr/bin/env python3
# SPDX-License-Identifier: BSD-3-Clause
"""Patch fields of a qcow2 file to make hostile images for the tests.

  qcow2-hostile.py IMAGE FIELD VALUE [FIELD VALUE]...

FIELD is a header field (version, backing_file_offset, backing_file_size,
cluster_bits, size, crypt_method, l1_size, l1_table_offset,
refcount_table_offset, refcount_table_clusters, nb_snapshots,
snapshots_offset, incompatible_features, compatible_features,
autoclear_features, refcount_order, header_length), or:
  set-incompat-bit N        OR bit N into incompatible_features
  l1 INDEX                  set L1 entry INDEX to VALUE (raw 64-bit)
  l2 INDEX                  set entry INDEX of the first L2 table to VALUE

  qcow2-hostile.py IMAGE --show WHAT

prints the offset of the first L2 table (l2), the first refcount block
(refblock) or the first internal snapshot's L1 table (snapshot-l1).
Values are integers (0x... accepted).  Fields are big-endian as in the
qcow2 specification.
"""
import struct
import sys

FIELDS = {
    "magic": (0, ">I"),
    "version": (4, ">I"),
    "backing_file_offset": (8, ">Q"),
    "backing_file_size": (16, ">I"),
    "cluster_bits": (20, ">I"),
    "size": (24, ">Q"),
    "crypt_method": (32, ">I"),
    "l1_size": (36, ">I"),
    "l1_table_offset": (40, ">Q"),
    "refcount_table_offset": (48, ">Q"),
    "refcount_table_clusters": (56, ">I"),
    "nb_snapshots": (60, ">I"),
    "snapshots_offset": (64, ">Q"),
    "incompatible_features": (72, ">Q"),
    "compatible_features": (80, ">Q"),
    "autoclear_features": (88, ">Q"),
    "refcount_order": (96, ">I"),
    "header_length": (100, ">I"),
}


def get(f, name):
    off, fmt = FIELDS[name]
    f.seek(off)
    return struct.unpack(fmt, f.read(struct.calcsize(fmt)))[0]


def put(f, name, value):
    off, fmt = FIELDS[name]
    f.seek(off)
    f.write(struct.pack(fmt, value))


def show(f, what):
    if what == "l2":
        f.seek(get(f, "l1_table_offset"))
    elif what == "refblock":
        f.seek(get(f, "refcount_table_offset"))
    elif what == "snapshot-l1":
        if get(f, "nb_snapshots") == 0:
            sys.exit("the image has no internal snapshot")
        f.seek(get(f, "snapshots_offset"))
    else:
        sys.exit("unknown --show " + what)
    print(struct.unpack(">Q", f.read(8))[0] & 0x00fffffffffffe00)


def main():
    path = sys.argv[1]
    args = sys.argv[2:]
    if args[:1] == ["--show"]:
        with open(path, "rb") as f:
            show(f, args[1])
        return
    with open(path, "r+b") as f:
        while args:
            name = args.pop(0)
            if name == "set-incompat-bit":
                bit = int(args.pop(0), 0)
                put(f, "incompatible_features",
                    get(f, "incompatible_features") | (1 << bit))
            elif name in ("l1", "l2"):
                idx = int(args.pop(0), 0)
                value = int(args.pop(0), 0) & 0xffffffffffffffff
                l1 = get(f, "l1_table_offset")
                if name == "l1":
                    f.seek(l1 + 8 * idx)
                else:
                    f.seek(l1)
                    l2 = struct.unpack(">Q", f.read(8))[0] & 0x00fffffffffffe00
                    if l2 == 0:
                        sys.exit("first L1 entry is empty")
                    f.seek(l2 + 8 * idx)
                f.write(struct.pack(">Q", value))
            else:
                put(f, name, int(args.pop(0), 0))


if __name__ == "__main__":
    main()
