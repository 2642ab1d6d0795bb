#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# Acceptance test of the rbd plugin against a real throwaway Ceph cluster
# (one monitor, one memstore OSD, cephx; started here, stopped by PID).
# Ground truth comes from the rbd CLI (rbd import/export/diff/info/ls).
source "${TOP_SRCDIR:?run the tests through ctest, which sets TOP_SRCDIR}/tests/functions.sh"

requires ceph-mon ceph-osd ceph rbd ceph-authtool monmaptool \
  nbdinfo nbdcopy nbdsh qemu-io python3 timeout
requires_plugin rbd

# nbdsh runs "python3 -m nbd": run it with an interpreter that has libnbd's
# python module (a python3 earlier on PATH, e.g. pyenv's, may lack it).
for py in python3 /usr/bin/python3; do
  if "$py" -c 'import nbd' 2>/dev/null; then nbdsh_py=$py; break; fi
done
[ -n "${nbdsh_py:-}" ] || skip "python3 module nbd (python3-libnbd) not installed"
nbdsh () { "$nbdsh_py" -m nbd "$@"; }   # what /usr/bin/nbdsh runs
plugin=$(plugin_so rbd)

# --- the cluster -------------------------------------------------------------
cluster=$tmpdir/ceph
cleanup_add "bash '$TOP_SRCDIR/tests/rbd/ceph-cluster.sh' stop '$cluster'"
CEPH_OWNER_PID=$$ bash "$TOP_SRCDIR/tests/rbd/ceph-cluster.sh" start "$cluster" \
  || fail "could not start the test Ceph cluster"
# shellcheck disable=SC1091
source "$cluster/env"
export CEPH_CONF            # for the rbd CLI
conf=$CEPH_CONF
MiB=1048576

# rbd_export IMAGE FILE: "rbd export" refuses to overwrite a file.
rbd_export () { rm -f "$2"; rbd export --no-progress "$1" "$2"; }

# Images: a random one imported with "rbd import", an empty one to write
# through the plugin, one more for the listing, one in a namespace.
# img1: 8 MiB random, 4 MiB of zeroes (rbd import leaves that object
# unallocated: a hole in the extents), 4 MiB random.
{ head -c 8M /dev/urandom; head -c 4M /dev/zero; head -c 4M /dev/urandom; } \
  > "$tmpdir/data"
rbd import --no-progress "$tmpdir/data" img1
rbd create --size 16M img2
rbd create --size 4M img3
rbd namespace create rbd/ns1
rbd create --size 4M rbd/ns1/nsimg

# check_extents IMAGE URI [EXPECTED]: the allocated objects in nbdinfo
# --map are exactly those of "rbd diff --whole-object" (and, if given,
# the comma-separated object numbers EXPECTED, so that the comparison
# is not vacuous).
check_extents () {   # IMAGE URI [EXPECTED]
  nbdinfo --map --json "$2" > "$tmpdir/map.json"
  rbd diff --whole-object --format json "$1" > "$tmpdir/diff.json"
  python3 - "$tmpdir/map.json" "$tmpdir/diff.json" "$(rbd info --format json "$1")" "${3-}" <<'EOF'
import json, sys
m = json.load(open(sys.argv[1]))
d = json.load(open(sys.argv[2]))
info = json.loads(sys.argv[3])
obj, size = info["object_size"], info["size"]
def objs(ranges):
    s = set()
    for off, ln in ranges:
        for o in range(off // obj, (off + ln + obj - 1) // obj):
            s.add(o)
    return s
data_map = objs((e["offset"], e["length"]) for e in m if not (e["type"] & 1))
data_diff = objs((e["offset"], e["length"]) for e in d if e["exists"] == "true")
covered = sum(e["length"] for e in m)
if covered != size:
    sys.exit(f"map covers {covered} bytes, image has {size}")
if data_map != data_diff:
    sys.exit(f"allocated objects differ: nbdinfo --map {sorted(data_map)} "
             f"rbd diff {sorted(data_diff)}")
if sys.argv[4] != "":
    want = {int(x) for x in sys.argv[4].split(",")}
    if data_map != want:
        sys.exit(f"allocated objects {sorted(data_map)}, expected {sorted(want)}")
print(f"   allocated objects {sorted(data_map)} of {size // obj}")
EOF
}

# --- serving the pool --------------------------------------------------------
new_sock
start_nbdkit "$sock" "$plugin" pool=rbd conf="$conf"

echo "== nbdinfo --list shows the pool's images"
nbdinfo --list --json "$(uri_of "$sock")" > "$tmpdir/list.json"
python3 - "$tmpdir/list.json" <<'EOF' > "$tmpdir/list.txt"
import json, sys
d = json.load(open(sys.argv[1]))
for e in d["exports"]:
    print(e["export-name"])
EOF
rbd ls rbd | sort > "$tmpdir/rbdls.txt"
sort "$tmpdir/list.txt" | diff -u "$tmpdir/rbdls.txt" - \
  || fail "nbdinfo --list differs from rbd ls"

echo "== data from rbd import reads back identically"
nbdcopy -- "$(uri_of "$sock" img1)" "$tmpdir/img1.read"
assert_same "$tmpdir/data" "$tmpdir/img1.read" "img1 through the plugin"
check_extents img1 "$(uri_of "$sock" img1)" 0,1,3 || fail "extents of img1 differ from rbd diff"

echo "== export description: size and features as rbd info says"
desc=$(nbdinfo --json "$(uri_of "$sock" img1)" |
         python3 -c 'import json,sys; print(json.load(sys.stdin)["exports"][0]["description"])')
echo "   $desc"
info_features=$(rbd info --format json img1 |
                  python3 -c 'import json,sys; print(",".join(sorted(json.load(sys.stdin)["features"])))')
[[ $desc == *"$((16*MiB)) bytes"* ]] || fail "description lacks the size: $desc"
[[ $desc == *"features $info_features"* ]] \
  || fail "description features differ from rbd info ($info_features): $desc"

echo "== connections share the image handle; description outlives its opener"
nbdsh -c "
import time
def conn():
    c = nbd.NBD()
    c.set_full_info(True)
    c.connect_uri('$(uri_of "$sock" img1)')
    return c
a = conn()
b = conn()          # shares a's image handle
a.shutdown(); del a
time.sleep(0.5)     # the server closes a's connection
c = conn()          # still shared with b
d = c.get_export_description()
assert d == '$desc', d
assert c.pread(4096, 0) == open('$tmpdir/data', 'rb').read(4096)
"

echo "== no export name and no image=: clear error"
if nbdinfo "$(uri_of "$sock")" > "$tmpdir/noname.out" 2>&1; then
  fail "an empty export name was accepted without image="
fi
echo "== unknown export name fails"
if nbdinfo "$(uri_of "$sock" nosuchimage)" >/dev/null 2>&1; then
  fail "a missing image was served"
fi

# mirror_writes CMDS FILE: apply the "write [-f] -P PAT OFF LEN" lines of
# a qemu-io script to FILE.
mirror_writes () {
  python3 - "$1" "$2" <<'EOF'
import sys
with open(sys.argv[2], "r+b") as f:
    for line in open(sys.argv[1]):
        w = line.split()
        if w[0] != "write":
            continue
        off, ln, pat = int(w[-2]), int(w[-1]), int(w[-3])
        f.seek(off); f.write(bytes([pat]) * ln)
EOF
}

echo "== data written through the plugin (multi-conn nbdcopy) is in rbd export"
random_file "$tmpdir/w" 16M
nbdcopy --connections=4 -- "$tmpdir/w" "$(uri_of "$sock" img2)"
rbd_export img2 "$tmpdir/img2.export"
assert_same "$tmpdir/w" "$tmpdir/img2.export" "rbd export after nbdcopy"

echo "== seeded random writes with FUA/flush, mirrored on a local file"
cp "$tmpdir/w" "$tmpdir/mirror"
python3 - > "$tmpdir/cmds" <<'EOF'
import random
r = random.Random(4242)
for i in range(60):
    off = r.randrange(0, 16 * 1048576 - 70000)
    ln = r.randrange(1, 70000)
    pat = r.randrange(1, 255)
    fua = "-f " if i % 3 == 0 else ""
    print(f"write {fua}-P {pat} {off} {ln}")
    if i % 10 == 9:
        print("flush")
EOF
qemu-io -f raw "$(uri_of "$sock" img2)" < "$tmpdir/cmds" > "$tmpdir/qemu-io.out" \
  || fail "qemu-io writes failed"
grep -qi 'error\|fail' "$tmpdir/qemu-io.out" && fail "qemu-io: $(grep -i 'error\|fail' "$tmpdir/qemu-io.out" | head -3)"
mirror_writes "$tmpdir/cmds" "$tmpdir/mirror"
rbd_export img2 "$tmpdir/img2.export"
assert_same "$tmpdir/mirror" "$tmpdir/img2.export" "rbd export after qemu-io writes"

# zero/trim with nbdsh; apply the same to the mirror.
zero_mirror () {   # OFF LEN
  python3 -c "
import sys
with open('$tmpdir/mirror','r+b') as f:
    f.seek($1); f.write(bytes($2))"
}
check_zero_trim () {   # LABEL URI
  nbdsh -u "$2" -c "
h.zero(1000, 12345)                          # unaligned, inside an object
h.zero(5 * 1048576 + 7, 3 * 1048576 - 3)     # spans objects, unaligned ends
h.zero(65536, 9 * 1048576, nbd.CMD_FLAG_NO_HOLE)   # allocated zeroes
h.zero(4096, 10 * 1048576, nbd.CMD_FLAG_FUA)
h.trim(4 * 1048576, 12 * 1048576)            # one whole 4 MiB object
h.flush()
"
  zero_mirror 12345 1000
  zero_mirror $((3*MiB-3)) $((5*MiB+7))
  zero_mirror $((9*MiB)) 65536
  zero_mirror $((10*MiB)) 4096
  zero_mirror $((12*MiB)) $((4*MiB))
  rbd_export img2 "$tmpdir/img2.export"
  assert_same "$tmpdir/mirror" "$tmpdir/img2.export" "rbd export after zero/trim ($1)"
  # The zeroed and trimmed ranges read back as zeroes through the plugin.
  nbdcopy -- "$2" "$tmpdir/img2.read"
  assert_same "$tmpdir/mirror" "$tmpdir/img2.read" "plugin read after zero/trim ($1)"
}
echo "== write-zeroes and trim read back as zeroes (rbd_aio_write_zeroes)"
check_zero_trim native "$(uri_of "$sock" img2)"

echo "== extents match rbd diff --whole-object"
# After the trim, object 3 ([12M,16M)) no longer exists.
check_extents img2 "$(uri_of "$sock" img2)" 0,2 || fail "extents of img2 differ from rbd diff"
check_extents img3 "$(uri_of "$sock" img3)" || fail "extents of img3 differ from rbd diff"

echo "== namespace= serves images of a RADOS namespace"
stop_nbdkit
new_sock; sockns=$sock
start_nbdkit "$sockns" "$plugin" pool=rbd namespace=ns1 conf="$conf"
nbdinfo --list "$(uri_of "$sockns")" | grep -q 'export="nsimg"' \
  || fail "namespace image not listed"
nbdinfo --list "$(uri_of "$sockns")" | grep -q 'export="img1"' \
  && fail "image outside the namespace listed"
stop_nbdkit

echo "== zero fallback (discard whole objects + explicit zeroes)"
random_file "$tmpdir/w2" 16M
new_sock; sock2=$sock
start_nbdkit "$sock2" -D rbd.zero_fallback=1 "$plugin" pool=rbd image=img2 conf="$conf" \
  id=admin keyring="$cluster/client.admin.keyring"
nbdcopy -- "$tmpdir/w2" "$(uri_of "$sock2")"
cp "$tmpdir/w2" "$tmpdir/mirror"
check_zero_trim fallback "$(uri_of "$sock2")"
stop_nbdkit

echo "== zero fallback on a striped image: zeroes, not skipped discards"
# 64 KiB objects in stripes of 4 KiB over 4 objects: an object-aligned
# 64 KiB range is 16 KiB in each of 4 objects, which librbd's discard
# (64 KiB granularity) would skip while reporting success.
rbd create --size 4M --object-size 64K --stripe-unit 4K --stripe-count 4 imgs
random_file "$tmpdir/ws" 4M
new_sock; sock2=$sock
start_nbdkit "$sock2" -D rbd.zero_fallback=1 "$plugin" pool=rbd image=imgs conf="$conf"
nbdcopy -- "$tmpdir/ws" "$(uri_of "$sock2")"
nbdsh -u "$(uri_of "$sock2")" -c "
h.zero(65536, 65536)
h.flush()
assert h.pread(65536, 65536) == bytes(65536), 'the zeroed range still holds data'
" || fail "zero fallback on a striped image"
stop_nbdkit

echo "== a write past the end of an image shrunk while served fails"
rbd create --size 8M imgshrink
new_sock; sock2=$sock
start_nbdkit "$sock2" "$plugin" pool=rbd image=imgshrink conf="$conf"
nbdsh -u "$(uri_of "$sock2")" -c "
import errno, subprocess
h.pwrite(b'x' * 4096, 6 * 1048576)
subprocess.run(['rbd', 'resize', '--no-progress', '--allow-shrink',
                '--size', '4M', 'imgshrink'], check=True)
# Across the new end: librbd stores the first half and reports success.
try:
    h.pwrite(b'y' * 4096, 4 * 1048576 - 2048)
except nbd.Error as e:
    assert e.errnum == errno.EIO, e
else:
    raise AssertionError('a write across the new end succeeded')
h.pwrite(b'z' * 4096, 1048576)
" || fail "write past the end of a shrunk image"
stop_nbdkit

echo "== librbd cache off: zero-copy writes land intact"
# With rbd_cache=false the plugin lets librbd send write buffers without
# copying them; several connections with many writes in flight must still
# leave exactly the data written.
random_file "$tmpdir/w3" 16M
new_sock; sock2=$sock
start_nbdkit "$sock2" -v "$plugin" pool=rbd image=img2 conf="$conf" \
  ceph.rbd_cache=false 2>"$tmpdir/zc.log"
nbdcopy --connections=4 --requests=32 -- "$tmpdir/w3" "$(uri_of "$sock2")"
qemu-io -f raw "$(uri_of "$sock2")" < "$tmpdir/cmds" > "$tmpdir/qemu-io.out" \
  || fail "qemu-io writes failed"
cp "$tmpdir/w3" "$tmpdir/mirror"
mirror_writes "$tmpdir/cmds" "$tmpdir/mirror"
stop_nbdkit
grep -q 'writes are zero-copy' "$tmpdir/zc.log" ||
  fail "zero-copy writes not in effect: $(grep 'rbd_cache=' "$tmpdir/zc.log")"
rbd_export img2 "$tmpdir/img2.export"
assert_same "$tmpdir/mirror" "$tmpdir/img2.export" "rbd export after zero-copy writes"

echo "== snapshot: frozen data, read-only"
rbd snap create --no-progress img1@s1
new_sock; sock2=$sock
start_nbdkit "$sock2" "$plugin" pool=rbd image=img1 conf="$conf"
nbdsh -u "$(uri_of "$sock2")" -c 'h.pwrite(b"\xAA" * 65536, 1048576); h.flush()'
stop_nbdkit
rbd_export img1 "$tmpdir/img1.export"
cmp -s "$tmpdir/data" "$tmpdir/img1.export" && fail "write to img1 had no effect"
new_sock; sock3=$sock
start_nbdkit "$sock3" "$plugin" pool=rbd image=img1 snapshot=s1 conf="$conf"
nbdcopy -- "$(uri_of "$sock3")" "$tmpdir/snap.read"
assert_same "$tmpdir/data" "$tmpdir/snap.read" "snapshot content"
nbdinfo "$(uri_of "$sock3")" | grep -q 'is_read_only: true' \
  || fail "snapshot export not read-only"
if nbdsh -u "$(uri_of "$sock3")" -c 'h.pwrite(b"x" * 512, 0)' 2>"$tmpdir/ro.err"; then
  fail "a write to the snapshot export succeeded"
fi
echo "   write refused: $(tail -1 "$tmpdir/ro.err")"
rbd_export img1@s1 "$tmpdir/snap.export"
assert_same "$tmpdir/data" "$tmpdir/snap.export" "snapshot after refused write"
check_extents img1@s1 "$(uri_of "$sock3")" 0,1,3 || fail "snapshot extents differ from rbd diff"
stop_nbdkit

echo "== clone of a protected snapshot reads through to its parent"
rbd snap protect img1@s1
rbd clone img1@s1 clone1
new_sock; sock3=$sock
start_nbdkit "$sock3" "$plugin" pool=rbd image=clone1 conf="$conf"
nbdcopy -- "$(uri_of "$sock3")" "$tmpdir/clone.read"
assert_same "$tmpdir/data" "$tmpdir/clone.read" "clone content (parent data)"
desc=$(nbdinfo "$(uri_of "$sock3")" | sed -n 's/^\s*description: //p')
[[ $desc == *"parent rbd/img1@s1"* ]] || fail "clone description lacks the parent: $desc"
# Extents of a clone include the parent's data.
check_extents clone1 "$(uri_of "$sock3")" 0,1,3 || fail "clone extents differ from rbd diff"
# Writes go to the clone only.
nbdsh -u "$(uri_of "$sock3")" -c 'h.pwrite(b"\x55" * 4096, 8192); h.flush()'
stop_nbdkit
cp "$tmpdir/data" "$tmpdir/clone.mirror"
python3 -c "
with open('$tmpdir/clone.mirror','r+b') as f: f.seek(8192); f.write(b'\x55'*4096)"
rbd_export clone1 "$tmpdir/clone.export"
assert_same "$tmpdir/clone.mirror" "$tmpdir/clone.export" "clone after write"
rbd_export img1@s1 "$tmpdir/snap.export"
assert_same "$tmpdir/data" "$tmpdir/snap.export" "parent after write to clone"

echo "== daemonised nbdkit (connects after the fork)"
new_sock; sock4=$sock
nbdkit -U "$sock4" -P "$tmpdir/daemon.pid" "$plugin" pool=rbd image=img2 conf="$conf"
for (( i=0; i<200; i++ )); do [ -s "$tmpdir/daemon.pid" ] && break; sleep 0.05; done
dpid=$(cat "$tmpdir/daemon.pid")
kill_at_exit $dpid
nbdcopy -- "$(uri_of "$sock4")" "$tmpdir/daemon.read"
rbd_export img2 "$tmpdir/img2.export"
assert_same "$tmpdir/img2.export" "$tmpdir/daemon.read" "daemonised read"
stop_nbdkit "$dpid"

# --- failures: clear message, no hang ----------------------------------------
# expect_failure LABEL PATTERN nbdkit-args...: nbdkit must exit non-zero
# by itself (not through the 60 s guard) and print PATTERN.
expect_failure () {
  local label=$1 pattern=$2 rc=0; shift 2
  rm -rf "$tmpdir/f"; mkdir "$tmpdir/f"
  timeout -k 5 60 bash -c 'source "${TOP_SRCDIR:?run the tests through ctest, which sets TOP_SRCDIR}/tests/functions.sh"; nbdkit "$@"' _ \
    -f -U "$tmpdir/f/sock" "$plugin" "$@" > "$tmpdir/f/out" 2>&1 || rc=$?
  [ $rc -ne 0 ] || fail "$label: nbdkit started"
  [ $rc -ne 124 ] || fail "$label: nbdkit hung (killed after 60 s)"
  grep -q -- "$pattern" "$tmpdir/f/out" \
    || fail "$label: expected '$pattern' in: $(cat "$tmpdir/f/out")"
  echo "   $label: $(grep -- "$pattern" "$tmpdir/f/out" | head -1)"
}
echo "== errors"
bad_key=$(CEPH_CONF=/dev/null ceph-authtool --gen-print-key)
expect_failure "wrong key" "authentication failed" \
  pool=rbd image=img1 conf="$conf" key="$bad_key"
echo "$bad_key" > "$tmpdir/badkey"
expect_failure "wrong key from file" "authentication failed" \
  pool=rbd image=img1 conf="$conf" key=+"$tmpdir/badkey"
expect_failure "unknown client id" "authentication failed" \
  pool=rbd image=img1 conf="$conf" id=nobody
expect_failure "missing pool" "pool 'nopool' does not exist" \
  pool=nopool image=img1 conf="$conf"
expect_failure "missing image" "image 'nope' not found in pool 'rbd'" \
  pool=rbd image=nope conf="$conf"
expect_failure "missing snapshot" "snapshot 'nosnap' of image 'img1' not found" \
  pool=rbd image=img1 snapshot=nosnap conf="$conf"
expect_failure "missing namespace" "namespace 'nons' does not exist in pool 'rbd'" \
  pool=rbd namespace=nons conf="$conf"
expect_failure "image outside the namespace" "image 'img1' not found in pool 'rbd' namespace ns1" \
  pool=rbd namespace=ns1 image=img1 conf="$conf"
expect_failure "bad ceph option" "cannot set Ceph option" \
  pool=rbd image=img1 conf="$conf" ceph.no_such_option_xyz=1
expect_failure "missing conf" "cannot read Ceph configuration" \
  pool=rbd image=img1 conf="$tmpdir/nonexistent.conf"
expect_failure "connect-timeout=0" "connect-timeout=0: must be at least 1 second" \
  pool=rbd image=img1 conf="$conf" connect-timeout=0
dead_port=$(free_port)
expect_failure "unreachable monitor" "timed out" \
  pool=rbd image=img1 conf="$conf" mon-host="[v2:127.0.0.1:$dead_port]" \
  connect-timeout=2

echo "== fast zero: advertised, answered with ENOTSUP, the server lives"
new_sock
start_nbdkit "$sock" "$plugin" pool=rbd image=img2 conf="$conf"
check_fast_zero "rbd plugin" "$(uri_of "$sock")"
stop_nbdkit

echo "== OSD down: start-up fails within connect-timeout instead of hanging"
kill -9 "$(cat "$cluster/run/osd.pid")"
expect_failure "OSD down (image)" "did not answer within 2 s" \
  pool=rbd image=img1 conf="$conf" connect-timeout=2
expect_failure "OSD down (pool)" "did not answer within 2 s" \
  pool=rbd conf="$conf" connect-timeout=2
expect_failure "OSD down (op-timeout)" "cannot open image 'img1' in pool 'rbd': Connection timed out" \
  pool=rbd image=img1 conf="$conf" op-timeout=2

echo "PASS"
