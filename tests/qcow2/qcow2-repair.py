#!/usr/bin/env python3
# SPDX-License-Identifier: BSD-3-Clause
# Hand-made damage to qcow2 images for test-qcow2-repair.sh, at offsets
# computed from the header (qcow2 spec, QEMU docs/interop/qcow2.txt):
#   qcow2-repair.py getrc IMG HOSTOFF          refcount of a host cluster
#   qcow2-repair.py setrc IMG HOSTOFF VALUE    set it (the refcount block
#                                              covering it must exist)
#   qcow2-repair.py incompat IMG [+N|-N ...]   print / set / clear
#                                              incompatible feature bits
#   qcow2-repair.py copied IMG GUESTOFF        set OFLAG_COPIED on the
#                                              active L1 and L2 entries
#                                              mapping GUESTOFF
#   qcow2-repair.py l2copied IMG GUESTOFF      print 1/0: OFLAG_COPIED of
#                                              that L2 entry
import struct
import sys

COPIED = 1 << 63
L1_MASK = 0x00fffffffffffe00


def header(f):
    f.seek(0)
    h = f.read(104)
    magic, version = struct.unpack('>II', h[:8])
    assert magic == 0x514649fb, 'not qcow2'
    cluster_bits = struct.unpack('>I', h[20:24])[0]
    l1_size = struct.unpack('>I', h[36:40])[0]
    l1_off, rt_off = struct.unpack('>QQ', h[40:56])
    order = struct.unpack('>I', h[96:100])[0] if version >= 3 else 4
    incompat = struct.unpack('>Q', h[72:80])[0] if version >= 3 else 0
    return dict(version=version, cb=cluster_bits, cs=1 << cluster_bits,
                l1_size=l1_size, l1_off=l1_off, rt_off=rt_off, order=order,
                extl2=bool(incompat & 16))


def rc_location(f, h, host):
    bits = 1 << h['order']
    per = h['cs'] * 8 // bits
    idx = host >> h['cb']
    f.seek(h['rt_off'] + 8 * (idx // per))
    block = struct.unpack('>Q', f.read(8))[0] & ~0x1ff
    assert block, 'no refcount block for %#x' % host
    return block, idx % per, bits


def getrc(f, h, host):
    block, i, bits = rc_location(f, h, host)
    if bits >= 8:
        f.seek(block + i * bits // 8)
        return int.from_bytes(f.read(bits // 8), 'big')
    f.seek(block + i * bits // 8)
    b = f.read(1)[0]
    sh = (i * bits) % 8
    return (b >> sh) & ((1 << bits) - 1)


def setrc(f, h, host, v):
    block, i, bits = rc_location(f, h, host)
    assert v < (1 << bits)
    f.seek(block + i * bits // 8)
    if bits >= 8:
        f.write(v.to_bytes(bits // 8, 'big'))
        return
    b = f.read(1)[0]
    sh = (i * bits) % 8
    b = (b & ~(((1 << bits) - 1) << sh)) | (v << sh)
    f.seek(block + i * bits // 8)
    f.write(bytes([b]))


def l2_pos(f, h, guest):
    esize = 16 if h['extl2'] else 8
    per = h['cs'] // esize
    cl = guest >> h['cb']
    l1i = cl // per
    f.seek(h['l1_off'] + 8 * l1i)
    l1e = struct.unpack('>Q', f.read(8))[0]
    l2 = l1e & L1_MASK
    assert l2, 'guest offset %#x has no L2 table' % guest
    return h['l1_off'] + 8 * l1i, l1e, l2 + esize * (cl % per)


def main():
    cmd, img = sys.argv[1], sys.argv[2]
    with open(img, 'r+b') as f:
        h = header(f)
        if cmd == 'getrc':
            print(getrc(f, h, int(sys.argv[3], 0)))
        elif cmd == 'setrc':
            setrc(f, h, int(sys.argv[3], 0), int(sys.argv[4], 0))
        elif cmd == 'incompat':
            assert h['version'] >= 3
            f.seek(72)
            v = struct.unpack('>Q', f.read(8))[0]
            for a in sys.argv[3:]:
                bit = 1 << int(a[1:])
                v = v | bit if a[0] == '+' else v & ~bit
            f.seek(72)
            f.write(struct.pack('>Q', v))
            print(v)
        elif cmd in ('copied', 'l2copied'):
            l1pos, l1e, l2pos = l2_pos(f, h, int(sys.argv[3], 0))
            f.seek(l2pos)
            e = struct.unpack('>Q', f.read(8))[0]
            if cmd == 'l2copied':
                print(1 if e & COPIED else 0)
                return
            f.seek(l1pos)
            f.write(struct.pack('>Q', l1e | COPIED))
            f.seek(l2pos)
            f.write(struct.pack('>Q', e | COPIED))
        else:
            sys.exit('unknown command ' + cmd)


main()
