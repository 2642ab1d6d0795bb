#!/usr/bin/python3
# SPDX-License-Identifier: BSD-3-Clause
"""Concurrency torture of one NBD export, checked against a model.

Opens CONNS connections to URI and keeps up to DEPTH requests in flight
on each (libnbd's aio interface, one event loop over all handles) for
SECONDS: reads, writes (some with FUA), write-zeroes (with and without
NO_HOLE), trims and flushes at random offsets and lengths.

The model: the export is cut into UNIT-byte units; a write, zero or trim
takes every unit it touches for itself until it completes, so at most one
modifying request is in flight per byte and the expected content is
always known.  Reads are free to overlap writes: each sector a read
returns must be the content before the read was issued or the data of a
modifying request that was in flight at some point during the read (any
content for a trim, whose result NBD leaves undefined), or, byte by byte,
a mix of these: a sector is not atomic (a read racing a write through
the page cache can see it torn).

At the end: flush on every connection, overwrite the sectors still
undefined after trims (so that the whole content is defined), flush,
read everything back over all connections and compare with the model,
and write the model to MIRROR (a raw file) for the caller's qemu-img
compare against the image.

Exit status 0 when every request succeeded and every byte matched;
1 with a description of the first difference otherwise.
"""

import argparse
import os
import random
import select
import subprocess
import sys
import time

import nbd

p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
p.add_argument("uri", nargs="?",
               help="NBD URI of the export (nbd+unix:///?socket=S)")
p.add_argument("--conns", type=int,
               default=int(os.environ.get("TORTURE_CONNS", "4")))
p.add_argument("--depth", type=int,
               default=int(os.environ.get("TORTURE_DEPTH", "8")))
p.add_argument("--seconds", type=float,
               default=float(os.environ.get("TORTURE_SECONDS", "1")))
p.add_argument("--seed", type=int, default=1)
p.add_argument("--unit", type=int, default=32768,
               help="ownership unit in bytes (default 32 KiB)")
p.add_argument("--max-len", type=int, default=160 * 1024,
               help="longest request in bytes")
p.add_argument("--initial", help="raw file with the export's content "
               "before the run (default: read it through the export)")
p.add_argument("--mirror", help="write the final expected content here")
p.add_argument("--no-trim", action="store_true")
p.add_argument("--no-zero", action="store_true")
p.add_argument("--hang", type=float, default=120,
               help="fail when no request completes for this long")
p.add_argument("--name", default="", help="label for the summary line")
p.add_argument("--readback-all", action="store_true",
               help="read every chunk back on every connection, not one")
p.add_argument("--during", help="shell command to run (once, in the "
               "background) halfway through; it must exit 0")
p.add_argument("--self-test", action="store_true",
               help="check the model's rules on made-up data and exit")
args = p.parse_args()
if not args.uri and not args.self_test:
    p.error("the NBD URI is required")
gran = 512

rng = random.Random(args.seed)


def die(msg):
    print("concurrency.py %s: FAIL: %s" % (args.name, msg), file=sys.stderr)
    sys.exit(1)


def torn_ok(got, old, pos, alts):
    """A sector torn by a write in flight: every byte is the byte before
    the read or the byte of a modification in flight at the same place.
    Neither NBD nor the kernel's buffered I/O makes a sector atomic (seen
    with the qcow2 filter over nbdkit's file plugin under load: bytes
    0-495 as before, 496-511 from the write in flight)."""
    cands = [old]
    for m in alts:
        if m.off <= pos < m.off + m.n:
            if m.data is None:
                return True
            mo = pos - m.off
            cands.append(m.data[mo:mo + gran])
    if len(cands) == 1:
        return False
    return all(any(d[k] == got[k] for d in cands) for k in range(gran))


def describe_sector(got, old, pos, alts):
    """Say what a wrong sector holds, byte run by byte run: the content
    before the read, a modification's data, zeroes, or none of these."""
    cands = [("before", old)]
    for m in alts:
        if m.off <= pos < m.off + m.n and m.data is not None:
            mo = pos - m.off
            cands.append(("%s [%d, +%d)" % (m.kind, m.off, m.n),
                          m.data[mo:mo + gran]))
    cands.append(("zeroes", bytes(gran)))
    runs = []
    for k in range(gran):
        src = next((name for name, d in cands if d[k] == got[k]), "other")
        if runs and runs[-1][0] == src:
            runs[-1][2] = k + 1
        else:
            runs.append([src, k, k + 1])
    return "; ".join("bytes %d-%d: %s" % (a, b - 1, s) for s, a, b in runs)


def self_test():
    """Check the torn-sector rule on made-up sectors (--self-test)."""
    class M:
        pass
    w = M()
    w.kind, w.off, w.n, w.data = "write", 4096, 1024, bytes(range(256)) * 4
    old = bytes(512)
    torn = old[:496] + w.data[496:512]
    alien = torn[:100] + b"\xff" + torn[101:]
    t = M()
    t.kind, t.off, t.n, t.data = "trim", 0, 8192, None
    checks = [
        ("a sector torn by a write in flight", torn_ok(torn, old, 4096, [w])),
        ("a byte from nowhere", not torn_ok(alien, old, 4096, [w])),
        ("a torn sector with no write in flight",
         not torn_ok(torn, old, 4096, [])),
        ("a write elsewhere", not torn_ok(torn, old, 8192, [w])),
        ("anything under a trim in flight", torn_ok(alien, old, 4096, [t])),
        ("the description", describe_sector(alien, old, 4096, [w]) ==
         "bytes 0-99: before; bytes 100-100: other; bytes 101-495: before; "
         "bytes 496-511: write [4096, +1024)"),
    ]
    bad = [name for name, ok in checks if not ok]
    if bad:
        die("self-test: " + ", ".join(bad))
    print("concurrency.py: self-test OK (%d checks)" % len(checks))
    sys.exit(0)


if args.self_test:
    self_test()

# --- connections -------------------------------------------------------------
class Conn:
    def __init__(self, i):
        self.i = i
        self.h = nbd.NBD()
        self.h.set_handle_name("torture%d" % i)
        self.h.connect_uri(args.uri)
        self.ops = {}           # cookie -> op


conns = [Conn(i) for i in range(args.conns)]
h0 = conns[0].h
size = h0.get_size()
can_trim = h0.can_trim() and not args.no_trim
can_zero = h0.can_zero() and not args.no_zero
can_flush = h0.can_flush()
can_fua = h0.can_fua()
readonly = h0.is_read_only()
if readonly:
    die("the export is read-only")
try:
    gran = max(gran, h0.get_block_size(nbd.SIZE_MINIMUM))
except nbd.Error:
    pass
if size % gran or size < args.unit:
    die("export size %d is not a multiple of %d or below one unit"
        % (size, gran))
nunits = size // args.unit
usable = nunits * args.unit      # modifying requests stay below this

# --- the model ---------------------------------------------------------------
if args.initial:
    with open(args.initial, "rb") as f:
        model = bytearray(f.read())
    if len(model) != size:
        die("--initial is %d bytes, the export %d" % (len(model), size))
else:
    model = bytearray(size)
    chunk = 4 << 20
    for off in range(0, size, chunk):
        n = min(chunk, size - off)
        model[off:off + n] = h0.pread(n, off)
nsect = size // gran
defined = bytearray(b"\1") * nsect      # 0 after a trim
unit_busy = bytearray(nunits)
reads_in_flight = {}    # id(op) -> read op
mods_in_flight = {}     # id(op) -> modifying op

stats = dict(read=0, write=0, fua=0, zero=0, trim=0, flush=0,
             overlaps=0, torn=0, bytes=0)


class Op:
    __slots__ = ("kind", "off", "n", "data", "buf", "snap", "snapdef",
                 "alts", "flags", "units")


def overlap(a, b):
    return a.off < b.off + b.n and b.off < a.off + a.n


def rand_range(lo, hi):
    """A random gran-aligned [off, off+n) inside [lo, hi)."""
    maxn = min(args.max_len, hi - lo)
    # Mostly small requests, some long ones.
    if rng.random() < 0.7:
        n = rng.randrange(1, max(2, min(maxn, 16384) // gran + 1)) * gran
    else:
        n = rng.randrange(1, maxn // gran + 1) * gran
    n = min(n, maxn)
    off = lo + rng.randrange(0, (hi - lo - n) // gran + 1) * gran
    return off, n


def issue(c):
    """Issue one random request on connection c.  False if none fitted."""
    r = rng.random()
    op = Op()
    op.flags = 0
    if r < 0.40:
        op.kind = "read"
        op.off, op.n = rand_range(0, size)
        op.buf = nbd.Buffer(op.n)
        op.snap = bytes(model[op.off:op.off + op.n])
        op.snapdef = bytes(defined[op.off // gran:(op.off + op.n) // gran])
        op.alts = [m for m in mods_in_flight.values() if overlap(op, m)]
        cookie = c.h.aio_pread(op.buf, op.off)
        reads_in_flight[id(op)] = op
    elif r < 0.96 or not can_flush:
        if r < 0.75:
            op.kind = "write"
        elif r < 0.87:
            op.kind = "zero" if can_zero else "write"
        else:
            op.kind = "trim" if can_trim else "write"
        # Find free units (a few tries, then give up for now).
        for _ in range(8):
            off, n = rand_range(0, usable)
            u0, u1 = off // args.unit, (off + n - 1) // args.unit
            if not any(unit_busy[u0:u1 + 1]):
                break
        else:
            return False
        op.off, op.n = off, n
        op.units = (u0, u1)
        for u in range(u0, u1 + 1):
            unit_busy[u] = 1
        if can_fua and rng.random() < 0.2:
            op.flags |= nbd.CMD_FLAG_FUA
        if op.kind == "write":
            op.data = rng.randbytes(n)
            op.buf = nbd.Buffer.from_bytearray(op.data)
            cookie = c.h.aio_pwrite(op.buf, off, flags=op.flags)
        elif op.kind == "zero":
            op.data = bytes(n)
            if rng.random() < 0.5:
                op.flags |= nbd.CMD_FLAG_NO_HOLE
            cookie = c.h.aio_zero(n, off, flags=op.flags)
        else:
            op.data = None
            cookie = c.h.aio_trim(n, off, flags=op.flags)
        mods_in_flight[id(op)] = op
        for rd in reads_in_flight.values():
            if overlap(rd, op):
                rd.alts.append(op)
    else:
        op.kind = "flush"
        op.off = op.n = 0
        cookie = c.h.aio_flush()
    c.ops[cookie] = op
    return True


def check_read(op):
    got = op.buf.to_bytearray()
    if op.alts:
        stats["overlaps"] += 1
    if got == op.snap:
        return
    for s in range(op.n // gran):
        a, b = s * gran, (s + 1) * gran
        if not op.snapdef[s]:
            continue        # trimmed before the read: anything goes
        if got[a:b] == op.snap[a:b]:
            continue
        pos = op.off + a
        ok = False
        for m in op.alts:
            if m.off <= pos < m.off + m.n:
                if m.data is None:
                    ok = True
                    break
                mo = pos - m.off
                if got[a:b] == m.data[mo:mo + gran]:
                    ok = True
                    break
        if not ok:
            ok = torn_ok(got[a:b], op.snap[a:b], pos, op.alts)
            stats["torn"] += ok
        if not ok:
            die("read of [%d, +%d): sector at %d differs from the model "
                "(%d overlapping modifications in flight): %s"
                % (op.off, op.n, pos, len(op.alts),
                   describe_sector(got[a:b], op.snap[a:b], pos, op.alts)))


def complete(c, cookie):
    op = c.ops.pop(cookie)
    try:
        c.h.aio_command_completed(cookie)
    except nbd.Error as e:
        die("%s [%d, +%d) flags %#x on connection %d failed: %s"
            % (op.kind, op.off, op.n, op.flags, c.i, e))
    stats[op.kind] += 1
    stats["bytes"] += op.n
    if op.flags & nbd.CMD_FLAG_FUA:
        stats["fua"] += 1
    if op.kind == "read":
        del reads_in_flight[id(op)]
        check_read(op)
    elif op.kind in ("write", "zero", "trim"):
        del mods_in_flight[id(op)]
        s0, s1 = op.off // gran, (op.off + op.n) // gran
        if op.data is None:
            defined[s0:s1] = bytes(s1 - s0)
        else:
            model[op.off:op.off + op.n] = op.data
            defined[s0:s1] = b"\1" * (s1 - s0)
        u0, u1 = op.units
        unit_busy[u0:u1 + 1] = bytes(u1 - u0 + 1)


during = None


def run_loop(deadline, refill):
    """Drive all handles until nothing is in flight (and, while refill is
    true and before deadline, keep every connection DEPTH deep)."""
    global during
    last_progress = time.monotonic()
    while True:
        now = time.monotonic()
        if args.during and during is None and now >= deadline - args.seconds / 2:
            during = subprocess.Popen(args.during, shell=True)
        if refill and now < deadline:
            for c in conns:
                tries = 0
                while len(c.ops) < args.depth and tries < 4:
                    if not issue(c):
                        tries += 1
        if not any(c.ops for c in conns):
            return
        rl, wl, fdmap = [], [], {}
        for c in conns:
            if not c.ops:
                continue
            fd = c.h.aio_get_fd()
            fdmap[fd] = c
            d = c.h.aio_get_direction()
            if d & nbd.AIO_DIRECTION_READ:
                rl.append(fd)
            if d & nbd.AIO_DIRECTION_WRITE:
                wl.append(fd)
        r, w, _ = select.select(rl, wl, [], 1.0)
        for fd in r:
            fdmap[fd].h.aio_notify_read()
        for fd in w:
            fdmap[fd].h.aio_notify_write()
        done = 0
        for c in conns:
            while c.ops:
                cookie = c.h.aio_peek_command_completed()
                if cookie <= 0:
                    break
                complete(c, cookie)
                done += 1
        now = time.monotonic()
        if done:
            last_progress = now
        elif now - last_progress > args.hang:
            die("no request completed for %.0f s (%d in flight): hang"
                % (args.hang, sum(len(c.ops) for c in conns)))


t0 = time.monotonic()
run_loop(t0 + args.seconds, True)
elapsed = time.monotonic() - t0
if during is not None and during.wait() != 0:
    die("--during command failed (exit %d): %s" % (during.returncode,
                                                   args.during))

# --- final check -------------------------------------------------------------
if can_flush:
    for c in conns:
        c.h.flush()
# Define what trims left undefined, then flush again.
s = 0
while s < nsect:
    if defined[s]:
        s += 1
        continue
    e = s
    while e < nsect and not defined[e] and e - s < 256:
        e += 1
    data = rng.randbytes((e - s) * gran)
    conns[s % len(conns)].h.pwrite(data, s * gran)
    model[s * gran:e * gran] = data
    defined[s:e] = b"\1" * (e - s)
    s = e
if can_flush:
    for c in conns:
        c.h.flush()

# Read everything back, 1 MiB per request, spread over the connections.
chunk = 1 << 20
pending = []
for i, off in enumerate(range(0, size, chunk)):
    n = min(chunk, size - off)
    for c in (conns if args.readback_all else [conns[i % len(conns)]]):
        buf = nbd.Buffer(n)
        pending.append((c, c.h.aio_pread(buf, off), off, n, buf))
    if len(pending) >= 4 * len(conns) or off + n == size:
        for c, cookie, o, n, b in pending:
            while not c.h.aio_command_completed(cookie):
                c.h.poll(-1)
            if b.to_bytearray() != model[o:o + n]:
                got = b.to_bytearray()
                first = next(k for k in range(n) if got[k] != model[o + k])
                die("read-back after flush: byte %d differs from the model"
                    % (o + first))
        pending = []

for c in conns:
    c.h.shutdown()

if args.mirror:
    with open(args.mirror, "wb") as f:
        f.write(model)

print("concurrency.py %s: %d conns x depth %d, %.1f s: %d reads, %d writes "
      "(%d FUA), %d zeroes, %d trims, %d flushes, %.1f MiB, %d reads "
      "overlapped writes (%d torn sectors); read-back OK"
      % (args.name, args.conns, args.depth, elapsed, stats["read"],
         stats["write"], stats["fua"], stats["zero"], stats["trim"],
         stats["flush"], stats["bytes"] / 1048576, stats["overlaps"],
         stats["torn"]))
