#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# Metadata changes while serving: lvextend, lvreduce, lvrename, lvchange
# -pr on the host (real lvm2 tools) while connections are open.  New
# connections see the current metadata; an open connection keeps its
# size, keeps working while its extents still belong to its LV, and fails
# once they do not; it stops writing once the LV is read-only.
source "${TOP_SRCDIR:-$(dirname "$0")/../..}/tests/functions.sh"
source "$TOP_SRCDIR/tests/lvm/lvm-lib.sh"
requires /usr/bin/python3
/usr/bin/python3 -c 'import nbd' 2>/dev/null || skip "python3-libnbd not installed"

cd "$tmpdir"
truncate -s 64M p.img
lvm_attach p.img L
lvm_q pvcreate -q "$L"
lvm_q vgcreate -q -s 1m vgc "$L"
lvm_q lvcreate -q -an -Zn -L 8M -n a vgc
lvm_q lvcreate -q -an -Zn -L 8M -n b vgc
lvm_layout collect layout.json
random_file a.data 8M
lvm_layout scatter layout.json vgc a a.data "$L=p.img"

start_nbdkit "$tmpdir/s" "$(plugin_so lvm)" pv=p.img recheck=100
export SOCK="$tmpdir/s"
/usr/bin/python3 - <<'EOF'
import os, subprocess, sys, time
import nbd

sock = os.environ["SOCK"]
data = open("a.data", "rb").read()

def conn(name):
    h = nbd.NBD()
    h.set_export_name(name)
    h.connect_unix(sock)
    return h

def lvm(*args):
    subprocess.run(args, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)

def read_all(h):
    return b"".join(h.pread(1 << 20, o) for o in range(0, h.get_size(), 1 << 20))

def expect_fail(h, what):
    try:
        h.pread(4096, 0)
    except nbd.Error as e:
        print("ok:", what, "->", e.string)
        return
    sys.exit("FAIL: " + what + ": read succeeded")

h1 = conn("a")
assert h1.get_size() == 8 << 20
assert read_all(h1) == data, "initial read"

# lvextend: the old connection keeps its size and data, a new one sees
# the new size; the old extents are still the LV's first 8 MiB.
lvm("lvextend", "-q", "-L", "+4M", "vgc/a")
time.sleep(0.3)
assert h1.get_size() == 8 << 20
assert read_all(h1) == data, "old connection after lvextend"
h2 = conn("a")
assert h2.get_size() == 12 << 20, h2.get_size()
assert read_all(h2)[:8 << 20] == data, "new connection after lvextend"
print("ok: lvextend")

# lvchange -pr: an open connection stops writing (reads go on), a new
# one is read-only.
hb = conn("b")
assert not hb.is_read_only()
hb.pwrite(b"x" * 4096, 0)
lvm("lvchange", "-q", "-pr", "vgc/b")
time.sleep(0.3)
try:
    hb.pwrite(b"y" * 4096, 0)
    sys.exit("FAIL: a write after lvchange -pr succeeded")
except nbd.Error as e:
    print("ok: write after lvchange -pr ->", e.string)
assert hb.pread(4096, 0) == b"x" * 4096, "read after lvchange -pr"
hb2 = conn("b")
assert hb2.is_read_only(), "new connection after lvchange -pr"
hb.shutdown()
hb2.shutdown()
print("ok: lvchange -pr")

# lvrename keeps the LV (same UUID): open connections continue.
lvm("lvrename", "-q", "vgc", "a", "c")
time.sleep(0.3)
assert read_all(h1) == data, "old connection after lvrename"
h3 = conn("c")
assert h3.get_size() == 12 << 20
try:
    conn("a")
    sys.exit("FAIL: old name still served")
except nbd.Error:
    pass
print("ok: lvrename")

# lvreduce: the connections that may now reach freed extents fail.
lvm("lvreduce", "-q", "-f", "-L", "6M", "vgc/c")
time.sleep(0.3)
expect_fail(h1, "8 MiB connection after lvreduce to 6 MiB")
expect_fail(h2, "12 MiB connection after lvreduce")
h4 = conn("c")
assert h4.get_size() == 6 << 20
assert read_all(h4) == data[:6 << 20], "new connection after lvreduce"
print("ok: lvreduce")

# lvremove: even a connection sized within the remaining LV stops.
lvm("lvremove", "-q", "-f", "vgc/c")
time.sleep(0.3)
expect_fail(h4, "connection to a removed LV")
for h in (h1, h2, h3, h4):
    h.shutdown()
EOF
stop_nbdkit

# With recheck=0 the check happens only for new connections, which must
# still see the current metadata.
lvm_q lvcreate -q -an -Zn -L 3M -n d vgc
start_nbdkit "$tmpdir/s2" "$(plugin_so lvm)" pv=p.img recheck=0
[ "$(nbdinfo --size "$(uri_of "$tmpdir/s2" d)")" = 3145728 ] || fail "d size"
lvm_q lvextend -q -L +2M vgc/d
[ "$(nbdinfo --size "$(uri_of "$tmpdir/s2" d)")" = 5242880 ] ||
  fail "new connection does not see lvextend"
stop_nbdkit
echo PASS
