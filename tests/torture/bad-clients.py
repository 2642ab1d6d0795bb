#!/usr/bin/python3
# SPDX-License-Identifier: BSD-3-Clause
"""Clients that misbehave, against one nbdkit server.

  bad-clients.py [OPTIONS] -- NBDKIT-ARGS...

Starts `nbdkit -f -U SOCK NBDKIT-ARGS...` itself (stderr to a log), then
for ROUNDS rounds runs every scenario below, each followed by a check
that the server still serves a well-behaved client the same bytes:

  inflight-libnbd   libnbd, many aio reads and writes, handle closed
                    without waiting (nbd_close: the socket just closes)
  inflight-raw      a raw socket: requests pipelined, then close or reset
                    (SO_LINGER 0) without reading a reply
  half-header       part of a request header, then close
  half-write        a write header and part of its payload, then close
  oversized         requests longer than the server's maximum, past the
                    end, of unknown type, with bad magic; then a write
                    whose length is 4 GiB - 1 with no payload
  flood             FLOOD connections at once, in every handshake state,
                    then all dropped

Writes only go to the first half of the export ("scratch"); the second
half must never change.

nbdkit 1.32 (Debian 12) aborts in its own socket code when a client
hangs up while replies are queued:
  nbdkit: ...: raw_send_socket: Assertion `sock >= 0' failed.
(fixed upstream in 1.33.10).  A server that dies with exactly that, by
SIGABRT, with no sanitizer report or other error in its log, is counted
as a known nbdkit abort and restarted; any other death, a sanitizer
report, a changed byte or a server that stops answering is a failure.

Prints one summary line and writes the count of known aborts to
DIR/known-aborts; exit 0 on success, 1 on failure.
"""

import argparse
import os
import random
import re
import resource
import signal
import socket
import struct
import subprocess
import sys
import time

import nbd

p = argparse.ArgumentParser(usage=__doc__.split("\n\n")[1])
p.add_argument("--dir", required=True, help="private directory (socket, logs)")
p.add_argument("--rounds", type=int,
               default=int(os.environ.get("TORTURE_ROUNDS", "2")))
p.add_argument("--flood", type=int, default=48)
p.add_argument("--seed", type=int, default=1)
p.add_argument("--name", default="")
p.add_argument("--scenarios", default="inflight-libnbd,inflight-raw,"
               "half-header,half-write,oversized,flood")
p.add_argument("--max-known-aborts", type=int, default=-1,
               help="fail when nbdkit's known abort happens more often "
               "(default: any number)")
p.add_argument("nbdkit_args", nargs="+")
args = p.parse_args()
rng = random.Random(args.seed)
sock_path = os.path.join(args.dir, "bad.sock")
uri = "nbd+unix:///?socket=" + sock_path

KNOWN_ABORT = re.compile(r"raw_send_socket: Assertion `sock >= 0' failed\.")
# Anything in the log that means a bug (ours or not) rather than the
# known abort.
BAD_SIGNS = re.compile(r"AddressSanitizer|LeakSanitizer|ThreadSanitizer|"
                       r"runtime error:|Segmentation fault|double free|"
                       r"corrupted|Assertion `(?!sock >= 0)")


def log(msg):
    print("bad-clients.py %s: %s" % (args.name, msg), flush=True)


def die(msg):
    print("bad-clients.py %s: FAIL: %s" % (args.name, msg), file=sys.stderr,
          flush=True)
    stop_server(check=False)
    sys.exit(1)


# --- the server --------------------------------------------------------------
server = None
server_log = None
server_starts = 0
known_aborts = []       # scenario names
core_checked = []       # those whose core's backtrace was checked


def core_on():
    resource.setrlimit(resource.RLIMIT_CORE,
                       (resource.RLIM_INFINITY, resource.RLIM_INFINITY))


def core_backtrace():
    """The backtrace of the thread that got the signal, from the core
    file the dead server left in DIR (None without a core or gdb)."""
    cores = [f for f in os.listdir(args.dir)
             if f == "core" or f.startswith("core.")]
    if not cores:
        return None
    core = os.path.join(args.dir, cores[0])
    try:
        exe = subprocess.run(["sh", "-c", "command -v nbdkit"],
                             capture_output=True, text=True).stdout.strip()
        bt = subprocess.run(["gdb", "-nx", "-batch", "-iex",
                             "set debuginfod enabled off", "-ex", "bt",
                             exe, core],
                            capture_output=True, text=True,
                            timeout=300).stdout
    except (FileNotFoundError, subprocess.TimeoutExpired):
        bt = None
    os.unlink(core)
    return bt


def start_server():
    global server, server_log, server_starts
    server_starts += 1
    if os.path.exists(sock_path):
        os.unlink(sock_path)        # nbdkit 1.32 leaves it after a crash
    logname = os.path.join(args.dir, "nbdkit.%d.log" % server_starts)
    server_log = logname
    env = dict(os.environ)
    pre = env.get("KVM_SANITIZER_PRELOAD")
    if pre:
        env["LD_PRELOAD"] = pre + (":" + env["LD_PRELOAD"]
                                   if env.get("LD_PRELOAD") else "")
    for f in os.listdir(args.dir):
        if f == "core" or f.startswith("core."):
            os.unlink(os.path.join(args.dir, f))
    with open(logname, "wb") as lf:
        # A core file in DIR (kernel.core_pattern "core") for the
        # backtrace of a death; the sanitizer runtimes disable it.
        server = subprocess.Popen(["nbdkit", "-f", "-U", sock_path]
                                  + args.nbdkit_args,
                                  stdin=subprocess.DEVNULL, stdout=lf,
                                  stderr=lf, env=env, cwd=args.dir,
                                  preexec_fn=core_on)
    for _ in range(1200):
        if os.path.exists(sock_path):
            try:
                s = socket.socket(socket.AF_UNIX)
                s.connect(sock_path)
                s.close()
                return
            except OSError:
                pass
        if server.poll() is not None:
            die("nbdkit exited during start-up (%d): %s"
                % (server.returncode, read_log()))
        time.sleep(0.05)
    die("nbdkit did not start")


def read_log():
    try:
        with open(server_log, errors="replace") as f:
            return f.read()
    except OSError:
        return ""


exit_hangs = 0


def exit_hang_known(pid):
    """With the sanitizer runtimes preloaded only, nbdkit 1.32's exit()
    can deadlock after clients hung up (libp11-kit's destructor:
    freelocale waits for __libc_setlocale_lock; the stock memory plugin
    does it too, docs/fuzzing.md).  Recognised by its stack (gdb) or,
    without gdb, by one thread left."""
    if not os.environ.get("KVM_SANITIZER_PRELOAD"):
        return False
    try:
        bt = subprocess.run(["gdb", "-nx", "-p", str(pid), "-batch", "-iex",
                             "set debuginfod enabled off", "-ex",
                             "thread apply all bt"], capture_output=True,
                            text=True, timeout=120).stdout
        return "__libc_setlocale_lock" in bt and "_dl_fini" in bt
    except FileNotFoundError:
        return len(os.listdir("/proc/%d/task" % pid)) == 1
    except (subprocess.TimeoutExpired, OSError):
        return False


def stop_server(check=True):
    global exit_hangs
    if server is None or server.poll() is not None:
        return
    server.send_signal(signal.SIGTERM)
    try:
        server.wait(3)
    except subprocess.TimeoutExpired:
        if check and exit_hang_known(server.pid):
            exit_hangs += 1
            server.kill()
            server.wait()
            return
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
            if check:
                die("nbdkit did not exit within 30 s of SIGTERM")
    if check and server.returncode != 0:
        classify_death("shutdown")


def classify_death(scenario):
    """The server is gone: a known nbdkit abort (counted, restarted) or a
    failure."""
    text = read_log()
    rc = server.returncode
    bt = core_backtrace()
    if (rc == -signal.SIGABRT and KNOWN_ABORT.search(text)
            and not BAD_SIGNS.search(text)):
        # The failing frame: nbdkit's raw_send_socket, and none of our
        # modules (the .so files named on the command line) on the
        # aborting thread's stack.
        ours = [os.path.basename(a) for a in args.nbdkit_args
                if a.endswith(".so") or "--filter=/" in a]
        ours = [o.replace("--filter=", "") for o in ours]
        if os.environ.get("TOP_SRCDIR"):
            ours.append(os.environ["TOP_SRCDIR"] + "/")   # frames with source
        if bt is not None:
            frames = "\n".join(l for l in bt.splitlines()
                               if l.startswith("#"))
            if "raw_send_socket" not in frames or any(o in frames
                                                      for o in ours):
                die("nbdkit aborted with the known message, but the "
                    "aborting thread's stack is not the known one:\n" + bt)
            core_checked.append(scenario)
        known_aborts.append(scenario)
        return
    if bt:
        text += "\nbacktrace of the core:\n" + bt
    die("nbdkit died (exit status %s) after scenario %s; log %s:\n%s"
        % (rc, scenario, server_log, text[-4000:]))


def server_alive(scenario):
    """After a scenario: restart the server if it hit the known abort."""
    if server.poll() is None:
        return True
    classify_death(scenario)
    start_server()
    return False


# --- well-behaved checks ----------------------------------------------------
h = nbd.NBD()
start_server()
h.connect_uri(uri)
size = h.get_size()
can_write = not h.is_read_only()
half = (size // 2) // 4096 * 4096
if half < 1 << 20:
    die("export too small (%d bytes)" % size)
protected = h.pread(min(size - half, 1 << 20), half)
h.shutdown()
del h


def check_served(scenario):
    """A well-behaved client still reads the protected half unchanged."""
    for attempt in range(3):
        server_alive(scenario)      # restarted after the known abort
        c = nbd.NBD()
        try:
            c.connect_uri(uri)
            got = c.pread(len(protected), half)
            c.shutdown()
        except nbd.Error as e:
            # Did the server die meanwhile (then server_alive tells how)?
            try:
                server.wait(2)
            except subprocess.TimeoutExpired:
                die("after %s: a well-behaved client failed: %s"
                    % (scenario, e))
            continue
        if got != protected:
            die("after %s: the protected half of the export changed"
                % scenario)
        return
    die("after %s: the server does not serve" % scenario)


# --- raw NBD ------------------------------------------------------------------
REQ_MAGIC = 0x25609513
CMD_READ, CMD_WRITE, CMD_DISC, CMD_FLUSH = 0, 1, 2, 3


def raw_connect(handshake=True):
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(30)
    s.connect(sock_path)
    if not handshake:
        return s
    hello = recv_exact(s, 18)
    if hello[:16] != b"NBDMAGICIHAVEOPT":
        raise OSError("not a newstyle NBD server: %r" % hello)
    s.sendall(struct.pack(">I", 3))     # FIXED_NEWSTYLE | NO_ZEROES
    s.sendall(b"IHAVEOPT" + struct.pack(">II", 1, 0))   # EXPORT_NAME ""
    exp = recv_exact(s, 10)
    return s


def recv_exact(s, n):
    b = b""
    while len(b) < n:
        d = s.recv(n - len(b))
        if not d:
            raise OSError("server closed the connection")
        b += d
    return b


def req(cmd, off, length, handle=1, flags=0, magic=REQ_MAGIC):
    return struct.pack(">IHHQQI", magic, flags, cmd, handle, off, length)


def close_rudely(s):
    if s is None:
        return
    if rng.random() < 0.5:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                     struct.pack("ii", 1, 0))
    s.close()


def scratch(n):
    return rng.randrange(0, (half - n) // 512 + 1) * 512


# --- scenarios ----------------------------------------------------------------
def sc_inflight_libnbd():
    c = nbd.NBD()
    c.connect_uri(uri)
    bufs = []
    for i in range(rng.randrange(16, 64)):
        n = rng.choice([4096, 65536, 262144])
        if can_write and rng.random() < 0.3:
            b = nbd.Buffer.from_bytearray(rng.randbytes(n))
            c.aio_pwrite(b, scratch(n))
        else:
            b = nbd.Buffer(n)
            c.aio_pread(b, rng.randrange(0, (size - n) // 512 + 1) * 512)
        bufs.append(b)
    # Let some replies arrive (or none), then hang up with the rest queued.
    for _ in range(rng.randrange(0, 3)):
        c.poll(0)
    del c


def sc_inflight_raw():
    s = raw_connect()
    data = b""
    for i in range(rng.randrange(8, 64)):
        n = rng.choice([512, 65536, 1 << 20])
        if can_write and rng.random() < 0.3:
            data += req(CMD_WRITE, scratch(n), n, i) + rng.randbytes(n)
        else:
            data += req(CMD_READ, rng.randrange(0, (size - n) // 512 + 1) * 512,
                        n, i)
        if rng.random() < 0.1:
            data += req(CMD_FLUSH, 0, 0, i + 1000)
    # Send what the socket takes without blocking (a server busy sending
    # replies nobody reads stops reading requests), maybe read a little.
    s.setblocking(False)
    try:
        while data:
            data = data[s.send(data):]
    except OSError:
        pass
    if rng.random() < 0.5:
        s.settimeout(0.2)
        try:
            s.recv(rng.choice([1, 100, 70000]))
        except OSError:
            pass
    close_rudely(s)


def sc_half_header():
    s = raw_connect()
    whole = req(CMD_READ, 0, 4096)
    s.sendall(whole[:rng.randrange(1, len(whole))])
    if rng.random() < 0.3:
        time.sleep(0.05)
    close_rudely(s)


def sc_half_write():
    s = raw_connect()
    n = rng.choice([4096, 65536, 1 << 20])
    if not can_write:
        n = 4096
    s.sendall(req(CMD_WRITE, scratch(n), n) + rng.randbytes(rng.randrange(0, n)))
    if rng.random() < 0.3:
        time.sleep(0.05)
    close_rudely(s)


def sc_oversized():
    # Each of these gets an error reply or a disconnect, never a crash.
    for r in (req(CMD_READ, 0, 0x7fffffff),         # longer than the maximum
              req(CMD_READ, size, 512),             # past the end
              req(CMD_READ, 2**64 - 512, 1024),     # offset wraps
              req(CMD_READ, 0, 0),                  # empty
              req(99, 0, 512),                      # unknown command
              req(CMD_FLUSH, 0, 512, flags=0x8000), # unknown flag
              req(CMD_READ, 0, 512, magic=0xdeadbeef),  # bad magic
              req(CMD_WRITE, 0, 0xffffffff)):       # 4 GiB - 1, no payload
        s = None
        try:
            s = raw_connect()
            s.sendall(r)
            s.settimeout(10)
            s.recv(64)
        except OSError:
            pass
        close_rudely(s)
    # Option phase: a huge option length, then nothing.
    s = None
    try:
        s = raw_connect(handshake=False)
        recv_exact(s, 18)
        s.sendall(struct.pack(">I", 3) + b"IHAVEOPT" +
                  struct.pack(">II", 7, 0xfffffff0))
        s.settimeout(5)
        s.recv(64)
    except OSError:
        pass
    close_rudely(s)


def sc_flood():
    socks = []
    for i in range(args.flood):
        try:
            s = socket.socket(socket.AF_UNIX)
            s.settimeout(10)
            s.connect(sock_path)
        except OSError:
            continue        # backlog full: fine
        socks.append(s)
        k = rng.randrange(5)
        try:
            if k >= 1:
                recv_exact(s, 18)
            if k >= 2:
                s.sendall(struct.pack(">I", 3))
            if k >= 3:
                s.sendall(b"IHAVEOPT" + struct.pack(">II", 1, 0))
                recv_exact(s, 10)
            if k >= 4:
                s.sendall(req(CMD_READ, 0, 65536) * 4)
        except OSError:
            pass
    # A well-behaved client while the flood holds its connections.
    check_served("flood (during)")
    for s in socks:
        close_rudely(s)


SCENARIOS = {
    "inflight-libnbd": sc_inflight_libnbd,
    "inflight-raw": sc_inflight_raw,
    "half-header": sc_half_header,
    "half-write": sc_half_write,
    "oversized": sc_oversized,
    "flood": sc_flood,
}
chosen = args.scenarios.split(",")
for name in chosen:
    if name not in SCENARIOS:
        die("unknown scenario %s" % name)

t0 = time.monotonic()
runs = 0
for rnd in range(args.rounds):
    order = list(chosen)
    rng.shuffle(order)
    for name in order:
        try:
            SCENARIOS[name]()
        except (OSError, nbd.Error) as e:
            # The server hung up on us, or died: check_served tells which.
            pass
        runs += 1
        check_served(name)
stop_server()

by = {}
for sc in known_aborts:
    by[sc] = by.get(sc, 0) + 1
log("%d rounds, %d scenario runs in %.1f s; nbdkit 1.32's known abort "
    "(raw_send_socket) %d times%s%s;%s no other failure"
    % (args.rounds, runs, time.monotonic() - t0, len(known_aborts),
       (" (" + ", ".join("%s %d" % kv for kv in sorted(by.items())) + ")")
       if by else "",
       (" (%d checked in a core's backtrace)" % len(core_checked))
       if core_checked else "",
       " the sanitizer-preload exit hang once;" if exit_hangs else ""))
# For the caller's checks of the storage (a crash may leak clusters).
with open(os.path.join(args.dir, "known-aborts"), "w") as f:
    f.write("%d\n" % len(known_aborts))
if args.max_known_aborts >= 0 and len(known_aborts) > args.max_known_aborts:
    die("the known nbdkit abort happened %d times (limit %d)"
        % (len(known_aborts), args.max_known_aborts))
