#!/usr/bin/env python3
# SPDX-License-Identifier: BSD-3-Clause
# NBD load generator for the throttle filter tests (libnbd's Python
# bindings, python3-libnbd).  Each worker is one NBD connection in its own
# thread keeping DEPTH requests in flight; completion times are recorded,
# and rates are computed over a time window, never compared with exact
# wall-clock values.
#
#   client.py rate URI OP BS DEPTH WINDOW...
#       one connection, running until the end of the last WINDOW
#       ("START-END" in seconds from the start); prints one line
#       "<bytes/s> <requests/s>" per window
#   client.py share SECONDS SKIP BS SPEC...
#       several connections at once, SPEC = DEPTH@URI; prints each
#       connection's bytes/s, one per line
#   client.py file URI FILE SECONDS PHASE...
#       one connection reading all along; before each phase the throttle
#       FILE is rewritten (PHASE = file content with '\n' escapes,
#       "@remove" to delete it, "@keep" to leave it), then after 1 s of
#       settling the rate is measured for SECONDS; prints one bytes/s per
#       phase
#
# OP is read, write or zero.

import os
import sys
import threading
import time

import nbd


class Worker(threading.Thread):
    def __init__(self, uri, op, bs, depth, stop):
        super().__init__(daemon=True)
        self.uri, self.op, self.bs, self.depth = uri, op, bs, depth
        self.stop = stop
        self.events = []            # (completion time, bytes)
        self.error = None
        self.ready = threading.Event()

    def run(self):
        try:
            self._run()
        except Exception as e:      # reported by the main thread
            self.error = e
            self.ready.set()

    def _run(self):
        h = nbd.NBD()
        h.connect_uri(self.uri)
        size = h.get_size()
        nblocks = max(1, size // self.bs)
        buf = nbd.Buffer(self.bs)
        if self.op == "write":
            buf = nbd.Buffer.from_bytearray(bytearray(os.urandom(self.bs)))
        state = {"inflight": 0, "next": 0}
        events = self.events

        def done(err):
            if err.value != 0:
                self.error = RuntimeError("request failed: errno %d"
                                          % err.value)
            events.append((time.monotonic(), self.bs))
            state["inflight"] -= 1
            return 1

        self.ready.set()
        while not self.stop.is_set() and self.error is None:
            while state["inflight"] < self.depth:
                off = (state["next"] % nblocks) * self.bs
                state["next"] += 1
                state["inflight"] += 1
                if self.op == "read":
                    h.aio_pread(buf, off, completion=done)
                elif self.op == "write":
                    h.aio_pwrite(buf, off, completion=done)
                else:
                    h.aio_zero(self.bs, off, completion=done)
            h.poll(-1)
        while state["inflight"] > 0:
            h.poll(-1)
        h.shutdown()

    def bytes_between(self, t0, t1):
        return sum(b for (t, b) in self.events if t0 <= t < t1)

    def count_between(self, t0, t1):
        return sum(1 for (t, b) in self.events if t0 <= t < t1)


def start(workers):
    for w in workers:
        w.start()
    for w in workers:
        w.ready.wait(30)
        if w.error:
            raise w.error


def finish(workers, stop):
    stop.set()
    for w in workers:
        w.join(60)
        if w.error:
            raise w.error


def cmd_rate(uri, op, bs, depth, *windows):
    bs, depth = int(bs), int(depth)
    wins = [tuple(float(x) for x in w.split("-")) for w in windows]
    stop = threading.Event()
    w = Worker(uri, op, bs, depth, stop)
    start([w])
    t0 = time.monotonic()
    time.sleep(max(e for (s, e) in wins))
    finish([w], stop)
    for (s, e) in wins:
        print("%.0f %.1f" % (w.bytes_between(t0 + s, t0 + e) / (e - s),
                             w.count_between(t0 + s, t0 + e) / (e - s)))


def cmd_share(secs, skip, bs, *specs):
    secs, skip, bs = float(secs), float(skip), int(bs)
    stop = threading.Event()
    workers = []
    for spec in specs:
        depth, uri = spec.split("@", 1)
        workers.append(Worker(uri, "read", bs, int(depth), stop))
    start(workers)
    t0 = time.monotonic()
    time.sleep(secs)
    t1 = time.monotonic()
    finish(workers, stop)
    dt = t1 - (t0 + skip)
    for w in workers:
        print("%.0f" % (w.bytes_between(t0 + skip, t1) / dt))


def cmd_file(uri, path, secs, *phases):
    secs = float(secs)
    stop = threading.Event()
    w = Worker(uri, "read", 65536, 4, stop)
    start([w])
    for p in phases:
        if p == "@remove":
            os.unlink(path)
        elif p == "@keep":
            pass
        else:
            tmp = path + ".tmp"
            with open(tmp, "w") as f:
                f.write(p.replace("\\n", "\n"))
            os.rename(tmp, path)
        time.sleep(1.0)
        t0 = time.monotonic()
        time.sleep(secs)
        t1 = time.monotonic()
        if w.error:
            raise w.error
        if not w.is_alive():
            raise RuntimeError("the connection ended")
        print("%.0f" % (w.bytes_between(t0, t1) / (t1 - t0)), flush=True)
    finish([w], stop)


if __name__ == "__main__":
    cmds = {"rate": cmd_rate, "share": cmd_share, "file": cmd_file}
    if len(sys.argv) < 2 or sys.argv[1] not in cmds:
        sys.exit("usage: client.py rate|share|file ... (see the comment)")
    cmds[sys.argv[1]](*sys.argv[2:])
