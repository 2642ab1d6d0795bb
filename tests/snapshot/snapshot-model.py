# SPDX-License-Identifier: BSD-3-Clause
# Model-based test driver for nbdkit-snapshot-filter: runs nbdkit with the
# filter over a plugin, drives it over NBD (libnbd's Python bindings) and
# nbdkit-snapshot-ctl, and checks every byte against a model kept here.
#
#   snapshot-model.py [options] -- PLUGIN [PLUGIN-ARGS...]
#
# Phases (each optional):
#   --rounds N       random writes / zeroes / trims with create, revert,
#                    delete, restarts; default export and every @NAME
#                    export compared with the model after each operation,
#                    a reader of @NAME running while another connection
#                    writes, writes to @NAME refused, list checked
#   --commit         commit, then the chain and (--below-dump) the plugin's
#                    data compared with the model
#   --crash-writes N kill -9 during writes: flushed data intact, unflushed
#                    sectors old or new
#   --crash-ops      every crash point of every operation
#                    (KVM_SNAPSHOT_CRASH_AT) and kill -9 at random times
#                    during operations: the chain reopens to the state
#                    before or after
# The layer below must be persistent for the crash phases and for
# restarts in general (for the memory plugin, --no-restart).
# --below-check CMD runs CMD (server stopped) and fails unless it exits 0
# (the plugin's data untouched); --below-dump CMD runs CMD OUT, which
# writes the plugin's data as raw bytes to OUT.
import argparse
import os
import random
import signal
import subprocess
import sys
import threading
import time

import nbd

ap = argparse.ArgumentParser()
ap.add_argument("--filter", required=True)
ap.add_argument("--ctl", required=True)
ap.add_argument("--dir", required=True)
ap.add_argument("--size", type=int, required=True)
ap.add_argument("--seed", type=int, default=1)
ap.add_argument("--rounds", type=int, default=0)
ap.add_argument("--no-restart", action="store_true")
ap.add_argument("--commit", action="store_true")
ap.add_argument("--crash-writes", type=int, default=0)
ap.add_argument("--crash-ops", action="store_true")
ap.add_argument("--crash-random", type=int, default=4)
ap.add_argument("--below-check")
ap.add_argument("--below-dump")
ap.add_argument("--initial", help="raw file with the plugin's initial data")
ap.add_argument("plugin", nargs=argparse.REMAINDER)
a = ap.parse_args()
if a.plugin and a.plugin[0] == "--":
    a.plugin = a.plugin[1:]

rng = random.Random(a.seed)
SIZE = a.size
CL = 65536
sock = os.path.join(a.dir, "nbd.sock")
ctlsock = os.path.join(a.dir, "ctl.sock")
ovl = os.path.join(a.dir, "overlay")
pidfile = os.path.join(a.dir, "nbdkit.pid")
logf = os.path.join(a.dir, "nbdkit.log")


def fail(msg):
    print("FAIL: " + msg, file=sys.stderr, flush=True)
    if os.path.exists(logf):
        with open(logf, errors="replace") as f:
            tail = f.read()[-3000:]
        print("--- nbdkit log (tail) ---\n" + tail, file=sys.stderr)
    stop_server(kill=True)
    sys.exit(1)


def log(msg):
    print(msg, flush=True)


# ---- server ---------------------------------------------------------------

server = None


def start_server(crash_at=None):
    global server
    for p in (sock, pidfile):
        if os.path.exists(p):
            os.unlink(p)
    env = dict(os.environ)
    env.pop("KVM_SNAPSHOT_CRASH_AT", None)
    if crash_at:
        env["KVM_SNAPSHOT_CRASH_AT"] = crash_at
    pre = os.environ.get("KVM_SANITIZER_PRELOAD")
    if pre:
        env["LD_PRELOAD"] = pre + (":" + env["LD_PRELOAD"]
                                   if env.get("LD_PRELOAD") else "")
    cmd = ["nbdkit", "-f", "-v", "-U", sock, "-P", pidfile,
           "--filter=" + a.filter] + a.plugin + \
          ["overlay-dir=" + ovl, "control=" + ctlsock]
    with open(logf, "a") as lf:
        lf.write("=== start %s\n" % (crash_at or ""))
        server = subprocess.Popen(cmd, stdout=lf, stderr=lf, env=env)
    for _ in range(1200):
        if os.path.exists(pidfile) and os.path.exists(sock):
            return
        if server.poll() is not None:
            fail("nbdkit exited during start-up (status %d)" % server.returncode)
        time.sleep(0.05)
    fail("nbdkit did not start")


def stop_server(kill=False):
    global server
    if not server:
        return
    if server.poll() is None:
        server.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        try:
            server.wait(120)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
            s, server = server, None
            if not kill:
                fail("nbdkit did not stop on SIGTERM")
            return
    rc = server.returncode
    server = None
    if not kill and rc != 0:
        fail("nbdkit exited with status %d" % rc)


def wait_dead():
    """The server killed itself at a crash point."""
    global server
    try:
        server.wait(120)
    except subprocess.TimeoutExpired:
        fail("the server did not reach its crash point")
    if server.returncode != -signal.SIGKILL:
        fail("server ended with %d, not SIGKILL" % server.returncode)
    server = None


def connect(export=""):
    h = nbd.NBD()
    h.set_export_name(export)
    h.connect_unix(sock)
    return h


def ctl(*args, expect=0):
    p = subprocess.run([a.ctl, ctlsock] + list(args), capture_output=True,
                       text=True, timeout=300)
    if expect is not None and p.returncode != expect:
        fail("nbdkit-snapshot-ctl %s: exit %d (wanted %d): %s%s" %
             (" ".join(args), p.returncode, expect, p.stdout, p.stderr))
    return p


# ---- model ----------------------------------------------------------------

if a.initial:
    with open(a.initial, "rb") as f:
        model = bytearray(f.read())
    assert len(model) == SIZE
else:
    model = bytearray(SIZE)
snaps = {}          # name -> bytes
order = []          # snapshot names, oldest first
counter = [0]


def read_all(h):
    out = bytearray()
    step = 4 << 20
    for off in range(0, SIZE, step):
        out += h.pread(min(step, SIZE - off), off)
    return out


def compare(got, want, what):
    if got != want:
        i = next(i for i in range(len(want)) if got[i] != want[i])
        fail("%s differs from the model at byte %d (got %d, want %d)" %
             (what, i, got[i], want[i]))


def verify(h=None, what="chain"):
    own = h is None
    if own:
        h = connect()
    compare(read_all(h), model, what)
    if own:
        h.shutdown()
    for n in order:
        v = connect("@" + n)
        if not v.is_read_only():
            fail("@%s is not read-only" % n)
        compare(read_all(v), snaps[n], "@" + n)
        v.shutdown()
    lines = ctl("list").stdout.splitlines()
    names = [l.split()[0] for l in lines]
    if names != order:
        fail("list shows %s, the model %s" % (names, order))
    for l in lines:
        f = l.split()
        if len(f) != 3 or not f[1].endswith("Z") or not f[2].isdigit():
            fail("bad list line: %r" % l)


def random_io(h, n):
    for _ in range(n):
        k = rng.randrange(10)
        ln = rng.randrange(1, 300000)
        off = rng.randrange(0, SIZE - ln)
        if k == 0:                      # trim of whole clusters: zeroes
            off -= off % CL
            ln = max(CL, ln - ln % CL)
            ln = min(ln, SIZE - off)
            h.trim(ln, off)
            model[off:off + ln] = bytes(ln)
        elif k == 1:
            h.zero(ln, off, nbd.CMD_FLAG_NO_HOLE if rng.randrange(2) else 0)
            model[off:off + ln] = bytes(ln)
        else:
            data = rng.randbytes(ln)
            h.pwrite(data, off, nbd.CMD_FLAG_FUA if rng.randrange(8) == 0
                     else 0)
            model[off:off + ln] = data
    h.flush()


def new_name():
    counter[0] += 1
    return "snap-%d" % counter[0]


def check_layers(crashed=False):
    """qemu-img check on every layer (server stopped).  After a crash,
    leaked clusters (exit status 3: "waste of disk space, but no harm to
    data", which the qcow2 engine's crash safety allows) are accepted;
    corruption never is."""
    files = sorted(f for f in os.listdir(ovl) if f.endswith(".qcow2"))
    if not files:
        fail("no layer files")
    for f in files:
        p = subprocess.run(["qemu-img", "check", "-f", "qcow2",
                            os.path.join(ovl, f)], capture_output=True,
                           text=True)
        if p.returncode != 0 and not (crashed and p.returncode == 3):
            fail("qemu-img check %s: %d %s%s" % (f, p.returncode, p.stdout,
                                                  p.stderr))


def restart():
    stop_server()
    check_layers()
    if a.below_check:
        if subprocess.run(a.below_check, shell=True).returncode != 0:
            fail("the layer below was modified before a commit")
    start_server()


# ---- phase: operations ---------------------------------------------------

def concurrent_reader(name):
    """@NAME reads frozen data while another connection writes."""
    v = connect("@" + name)
    w = connect()
    stop = threading.Event()
    errors = []

    def reader():
        try:
            while not stop.is_set():
                off = rng.randrange(0, SIZE - CL)
                if v.pread(CL, off) != snaps[name][off:off + CL]:
                    errors.append(off)
                    return
        except nbd.Error as e:
            errors.append(str(e))

    t = threading.Thread(target=reader)
    t.start()
    random_io(w, 30)
    stop.set()
    t.join()
    if errors:
        fail("@%s changed while the default export was written: %s" %
             (name, errors[0]))
    try:
        v.pwrite(b"x" * 512, 0)
        fail("a write to @%s was accepted" % name)
    except nbd.Error:
        pass
    compare(read_all(v), snaps[name], "@%s after concurrent writes" % name)
    v.shutdown()
    w.shutdown()


def atomic_create():
    """create while another connection writes: every write acknowledged
    before the create was sent is in the snapshot, none sent after the
    create returned is; writes in between may be either (each write goes
    to its own 4 KiB block)."""
    name = new_name()
    nblocks = SIZE // 4096
    old = bytes(model)
    log_ = []                            # (sent, acked, offset, data)
    stop = threading.Event()
    created = threading.Event()
    h = connect()

    # The create starts once an eighth of the blocks are written; the
    # last quarter waits for it to return.  (With a fixed delay instead, a
    # fast machine wrote every block before the create: nothing after.)
    def writer():
        for i in range(nblocks):
            if stop.is_set():
                return
            if i == nblocks * 3 // 4:
                created.wait(60)
            off = i * 4096
            data = (b"%08d" % i) * 512
            t = time.monotonic()
            h.pwrite(data, off)
            log_.append((t, time.monotonic(), off, data))

    t = threading.Thread(target=writer)
    t.start()
    deadline = time.monotonic() + 60
    while len(log_) < nblocks // 8 and time.monotonic() < deadline:
        time.sleep(0.001)
    t0 = time.monotonic()
    ctl("create", name)
    t1 = time.monotonic()
    created.set()
    while (sum(1 for sent, _, _, _ in list(log_) if sent > t1) < 16 and
           t.is_alive() and time.monotonic() < deadline):
        time.sleep(0.001)
    stop.set()
    t.join()
    h.shutdown()
    v = connect("@" + name)
    got = read_all(v)
    v.shutdown()
    before = after = between = 0
    for sent, acked, off, data in log_:
        blk = bytes(got[off:off + 4096])
        if acked < t0:
            before += 1
            if blk != data:
                fail("a write acknowledged before create is not in the "
                     "snapshot (offset %d)" % off)
        elif sent > t1:
            after += 1
            if blk != old[off:off + 4096]:
                fail("a write sent after create returned is in the "
                     "snapshot (offset %d)" % off)
        else:
            between += 1
        model[off:off + 4096] = data
    written = set(off for _, _, off, _ in log_)
    for off in range(0, SIZE, 4096):
        if off not in written and got[off:off + 4096] != old[off:off + 4096]:
            fail("create: block %d changed without a write" % off)
    snaps[name] = bytes(got)
    order.append(name)
    if before == 0 or after == 0:
        fail("create during writes: %d writes before, %d after: the test "
             "proved nothing" % (before, after))
    log("create during writes: %d before, %d during, %d after: ok" %
        (before, between, after))


def phase_ops():
    start_server()
    verify(what="new chain")
    h = connect()
    random_io(h, 20)
    h.shutdown()
    if not a.no_restart:
        restart()
    verify(what="chain after restart")
    atomic_create()
    verify(what="chain after create during writes")
    for r in range(a.rounds):
        h = connect()
        random_io(h, rng.randrange(5, 20))
        h.shutdown()
        choice = rng.randrange(6)
        if choice <= 1 and len(order) < 6 or not order:
            n = new_name()
            ctl("create", n)
            snaps[n] = bytes(model)
            order.append(n)
            op = "create " + n
        elif choice == 2:
            n = rng.choice(order)
            ctl("revert", n)
            model[:] = snaps[n]
            i = order.index(n)
            for m in order[i + 1:]:
                del snaps[m]
            del order[i + 1:]
            op = "revert " + n
        elif choice == 3:
            n = rng.choice(order)
            ctl("delete", n)
            del snaps[n]
            order.remove(n)
            op = "delete " + n
        elif choice == 4:
            n = rng.choice(order)
            concurrent_reader(n)
            op = "concurrent @" + n
        else:
            if not a.no_restart:
                restart()
            op = "restart"
        verify(what="chain after %s (round %d)" % (op, r))
        log("round %d: %s ok (%d snapshots)" % (r, op, len(order)))
    # Errors of the server are reported with exit status 1, usage errors
    # the tool sees itself (an unknown command) with 2.
    ctl("revert", "no-such-snapshot", expect=1)
    ctl("delete", "no-such-snapshot", expect=1)
    if order:
        ctl("create", order[0], expect=1)
    ctl("create", "../bad", expect=1)
    ctl("frobnicate", expect=2)
    stop_server()
    check_layers()
    if a.below_check and \
            subprocess.run(a.below_check, shell=True).returncode != 0:
        fail("the layer below was modified before a commit")


def phase_commit():
    start_server()
    h = connect()
    random_io(h, 10)
    h.shutdown()
    if not order:
        n = new_name()
        ctl("create", n)
        snaps[n] = bytes(model)
        order.append(n)
        h = connect()
        random_io(h, 10)
        h.shutdown()
    ctl("commit")
    snaps.clear()
    order.clear()
    verify(what="chain after commit")
    stop_server()
    check_layers()
    if a.below_dump:
        out = os.path.join(a.dir, "below.dump")
        if subprocess.run(a.below_dump + " " + out, shell=True).returncode:
            fail("below-dump failed")
        with open(out, "rb") as f:
            compare(bytearray(f.read()), model, "the plugin's data after commit")
        os.unlink(out)
    if a.below_dump:                    # the plugin keeps its data
        start_server()
        verify(what="chain restarted after commit")
        stop_server()
    log("commit ok")


# ---- phase: crashes ------------------------------------------------------

SECTOR = 512


def phase_crash_writes():
    for it in range(a.crash_writes):
        start_server()
        h = connect()
        random_io(h, 10)               # ends with a flush
        flushed = bytes(model)
        cand = {}                       # sector -> set of possible contents
        for _ in range(40):
            ln = rng.randrange(1, 400) * SECTOR
            off = rng.randrange(0, (SIZE - ln) // SECTOR) * SECTOR
            data = rng.randbytes(ln)
            for s in range(off // SECTOR, (off + ln) // SECTOR):
                if s not in cand:
                    cand[s] = {flushed[s * SECTOR:(s + 1) * SECTOR]}
                d = (s * SECTOR) - off
                cand[s].add(data[d:d + SECTOR])
            model[off:off + ln] = data
            h.aio_pwrite(data, off)
        time.sleep(rng.random() * 0.05)
        stop_server(kill=True)
        del h
        start_server()
        h = connect()
        got = read_all(h)
        for s in range(SIZE // SECTOR):
            g = bytes(got[s * SECTOR:(s + 1) * SECTOR])
            if s in cand:
                if g not in cand[s]:
                    fail("crash during writes: sector %d is neither old nor "
                         "written data" % s)
            elif g != flushed[s * SECTOR:(s + 1) * SECTOR]:
                fail("crash during writes: flushed sector %d lost" % s)
        model[:] = got
        h.shutdown()
        verify(what="chain after a crash during writes")
        stop_server()
        check_layers(crashed=True)
        log("crash during writes %d ok (%d sectors in flight)" % (it, len(cand)))


def ensure_snapshots(k):
    h = connect()
    while len(order) < k:
        random_io(h, 8)
        n = new_name()
        ctl("create", n)
        snaps[n] = bytes(model)
        order.append(n)
    random_io(h, 8)
    h.shutdown()


def op_outcome(op, name):
    """(model, snaps, order) after OP."""
    m, s, o = bytearray(model), dict(snaps), list(order)
    if op == "create":
        s[name] = bytes(m)
        o.append(name)
    elif op == "revert":
        m[:] = s[name]
        i = o.index(name)
        for x in o[i + 1:]:
            del s[x]
        del o[i + 1:]
    elif op == "delete":
        del s[name]
        o.remove(name)
    elif op == "commit":
        s, o = {}, []
    return m, s, o


def check_state(want, what):
    global model, snaps, order
    model, snaps, order = bytearray(want[0]), dict(want[1]), list(want[2])
    verify(what=what)


def state_matches(st):
    h = connect()
    got = read_all(h)
    h.shutdown()
    names = [l.split()[0] for l in ctl("list").stdout.splitlines()]
    return got == st[0] and names == st[2]


# crash point -> (operation, state after restart)
POINTS = [
    ("create-layer", "create", "before"), ("create-state", "create", "after"),
    ("revert-layer", "revert", "before"), ("revert-state", "revert", "after"),
    ("revert-drop", "revert", "after"),
    ("delete-merge", "delete", "before"), ("delete-merged", "delete", "before"),
    ("delete-state", "delete", "after"),
    ("commit-marked", "commit", "after"), ("commit-copy", "commit", "after"),
    ("commit-copied", "commit", "after"), ("commit-layer", "commit", "after"),
    ("commit-state", "commit", "after"), ("commit-drop", "commit", "after"),
]


def run_op(op, name):
    return ctl(op, name, expect=None) if name else ctl(op, expect=None)


def pick(op):
    if op == "create":
        return new_name()
    if op == "revert":
        return order[0]
    if op == "delete":
        return order[-1] if rng.randrange(2) else order[0]
    return None


def phase_crash_ops():
    for point, op, when in POINTS:
        start_server()
        ensure_snapshots(3)
        stop_server()
        start_server(crash_at=point)
        # A client connection opens the chain.
        h = connect()
        random_io(h, 4)
        h.shutdown()
        name = pick(op)
        before = (bytearray(model), dict(snaps), list(order))
        after = op_outcome(op, name)
        p = run_op(op, name)
        if p.returncode == 0:
            fail("%s reached no crash point %s" % (op, point))
        wait_dead()
        start_server()
        want = after if when == "after" else before
        if not state_matches(want):
            other = before if when == "after" else after
            fail("crash at %s: the chain is not in the %s state%s" %
                 (point, when, " (it is in the other one)"
                  if state_matches(other) else ""))
        check_state(want, "chain after a crash at " + point)
        stop_server()
        check_layers(crashed=True)
        log("crash at %s: %s state ok" % (point, when))
    # kill -9 at random times during operations.
    for it in range(a.crash_random):
        start_server()
        ensure_snapshots(3)
        h = connect()
        random_io(h, 30)
        h.shutdown()
        op = rng.choice(["create", "revert", "delete", "commit"])
        name = pick(op)
        before = (bytearray(model), dict(snaps), list(order))
        after = op_outcome(op, name)
        args = [a.ctl, ctlsock, op] + ([name] if name else [])
        p = subprocess.Popen(args, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
        time.sleep(rng.random() * 0.2)
        stop_server(kill=True)
        p.wait()
        start_server()
        if state_matches(after):
            check_state(after, "chain after kill -9 during " + op)
            res = "after"
        elif state_matches(before):
            check_state(before, "chain after kill -9 during " + op)
            res = "before"
        else:
            fail("kill -9 during %s: the chain is neither before nor after" % op)
        stop_server()
        check_layers(crashed=True)
        log("kill -9 during %s %s: %s state ok" % (op, name or "", res))


if a.rounds:
    phase_ops()
if a.commit:
    phase_commit()
if a.crash_writes:
    phase_crash_writes()
if a.crash_ops:
    phase_crash_ops()
stop_server()
log("ok")
