#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# Hostile, unusual and unsupported metadata.  The metadata text made by the
# real tools is edited and stored back with valid checksums
# (tests/lvm/lvm-mda.py); where the edit is a legal layout (wrapped ring,
# raid1, snapshot), the real lvs must accept it too.
source "${TOP_SRCDIR:-$(dirname "$0")/../..}/tests/functions.sh"
source "$TOP_SRCDIR/tests/lvm/lvm-lib.sh"

cd "$tmpdir"
truncate -s 32M a.img b.img
lvm_attach a.img LA; lvm_attach b.img LB
lvm_q pvcreate -q "$LA" "$LB"
lvm_q vgcreate -q -s 1m vgb "$LA" "$LB"
lvm_q lvcreate -q -an -Zn -L 8M -n good vgb "$LA"
lvm_q lvcreate -q -an -Zn -L 4M -n other vgb "$LA"
lvm_mda dump a.img > orig.vg
lvm_mda dump b.img | cmp - orig.vg || fail "PVs hold different metadata"
grep -q '^vgb {' orig.vg || fail "unexpected metadata text"
lvm_layout collect layout.json
random_file good.data 8M
lvm_layout scatter layout.json vgb good good.data "$LA=a.img" "$LB=b.img"
cp a.img a0.img; cp b.img b0.img

# vg_edit OUT PYTHON-EXPR: OUT = orig.vg transformed by the expression
# (over the text t; re is imported).
vg_edit () {
  python3 -c 'import re,sys; t=open("orig.vg").read(); t='"$2"'; open(sys.argv[1],"w").write(t)' "$1"
}
# store TEXTFILE [ARGS]: fresh copies of both PVs carrying TEXTFILE.
store () {
  local f=$1; shift
  cp a0.img a.img; cp b0.img b.img
  lvm_mda write a.img "$f" "$@"; lvm_mda write b.img "$f" "$@"
}
# fresh_sock: a new unix socket path in $tmpdir for one nbdkit --run (not
# the default TCP port 10809, which tests run in parallel would share;
# nbdkit 1.32 leaves the socket file behind, so never the same name twice).
fresh_sock () { mktemp -u "$tmpdir/sXXXXXX"; }
serve () { nbdkit -U "$(fresh_sock)" "$(plugin_so lvm)" pv=a.img pv=b.img "$@"; }
# expect_fail WHAT REGEX ARGS...: the plugin must fail (at start-up or when
# opening the export) with a message matching REGEX, and not crash.
expect_fail () {
  local what=$1 re=$2 rc=0; shift 2
  serve "$@" --run 'nbdinfo "$uri" >/dev/null' > out.txt 2> err.txt || rc=$?
  [ $rc != 0 ] || fail "$what: accepted"
  [ $rc -lt 128 ] || { cat err.txt; fail "$what: crashed (status $rc)"; }
  grep -Eq "$re" err.txt || { cat err.txt; fail "$what: no message matching '$re'"; }
  echo "ok: $what: $(grep -E "$re" err.txt | head -1)"
}

# Sanity: the untouched copy serves the data.
serve lv=good --run 'nbdcopy "$uri" good.out'
assert_same good.out good.data "good LV"
# Read-only: readonly=true (PVs opened read-only) and nbdkit -r.
serve readonly=true lv=good --run 'nbdinfo "$uri"' | grep 'is_read_only: true' >/dev/null ||
  fail "readonly=true export is writable"
nbdkit -U "$(fresh_sock)" -r "$(plugin_so lvm)" pv=a.img pv=b.img lv=good --run 'nbdinfo "$uri"' |
  grep 'is_read_only: true' >/dev/null || fail "nbdkit -r export is writable"
chmod 0444 a.img b.img
if [ "$(id -u)" != 0 ]; then   # root ignores file modes
  serve lv=good --run 'nbdinfo "$uri"' | grep 'is_read_only: true' >/dev/null ||
    fail "read-only PV files served writable"
fi
chmod 0644 a.img b.img

# --- damaged metadata areas ------------------------------------------------
cp a0.img a.img; cp b0.img b.img
lvm_mda break-header a.img; lvm_mda break-header b.img
expect_fail "bad mda header checksum" "header at offset [0-9]+ has a bad checksum" lv=good

store orig.vg --bad-text-checksum
expect_fail "bad text checksum" "metadata text .*bad checksum" lv=good

head -c $(( $(stat -c %s orig.vg) / 2 )) orig.vg > trunc.vg
store trunc.vg
expect_fail "truncated text" "cannot parse the metadata text: line [0-9]+" lv=good

printf 'vgb {\n id = "x" seqno = [ ' > garbage.vg
head -c 3000 /dev/urandom | base64 >> garbage.vg
store garbage.vg
expect_fail "garbage text" "cannot parse the metadata text" lv=good

vg_edit deep.vg '"a {" * 100 + "}" * 100'
store deep.vg
expect_fail "deep nesting" "nesting too deep" lv=good

# --- absurd values ----------------------------------------------------------
vg_edit ext.vg 're.sub(r"extent_count = 8\b", "extent_count = 999999999999", t, 1)'
store ext.vg
expect_fail "absurd extent_count" "which has only [0-9]+" lv=good

vg_edit pec.vg 're.sub(r"pe_count = \d+", "pe_count = 9223372036854775807", t, 1)'
store pec.vg
expect_fail "absurd pe_count" "overflows" lv=good

vg_edit es.vg 're.sub(r"extent_size = \d+", "extent_size = 0", t, 1)'
store es.vg
expect_fail "zero extent_size" "extent_size 0 sectors out of range" lv=good

vg_edit big.vg 're.sub(r"extent_count = 8\b", "extent_count = 99999999999999999999999", t, 1)'
store big.vg
expect_fail "number overflow" "number out of range" lv=good

# A segment beyond the end of the device (metadata says the PV is larger).
vg_edit past.vg 're.sub(r"\"pv0\", 0\n", "\"pv0\", 500000\n", re.sub(r"pe_count = \d+", "pe_count = 1000000", t, 1), 1)'
grep -q '"pv0", 500000' past.vg || fail "edit failed"
store past.vg
expect_fail "segment past PV end" "lie past the end of .*a.img" lv=good
# ... the other LV is still served.
serve lv=other --run 'nbdinfo --size "$uri"' > size.txt
[ "$(cat size.txt)" = 4194304 ] || fail "other LV not served next to a bad one"

# Extents over a metadata area (pe_start 8 sectors: the area's start) are
# refused, also when the PV header records the area's size as 0 (the
# size is then the one in the area's own header).
vg_edit mdaov.vg 're.sub(r"pe_start = \d+", "pe_start = 8", t)'
grep -q 'pe_start = 8$' mdaov.vg || fail "edit failed"
store mdaov.vg
expect_fail "extents over the metadata area" "extents overlap the metadata area" lv=good
lvm_mda zero-mda-size a.img; lvm_mda zero-mda-size b.img
lvm_mda info a.img > /dev/null
expect_fail "extents over a metadata area of size 0 in the PV header" \
  "extents overlap the metadata area" lv=good

# --- inconsistent copies ----------------------------------------------------
vg_edit other.vg 're.sub(r"creation_host = \"[^\"]*\"", "creation_host = \"elsewhere\"", t, 1)'
cp a0.img a.img; cp b0.img b.img
lvm_mda write b.img other.vg
expect_fail "same seqno, different text" \
  "inconsistent: the metadata on .*a.img \\(PV UUID .*\\) and on .*b.img \\(PV UUID .*\\) both have seqno" lv=good
# A higher seqno on one PV wins (older copies are stale, not inconsistent).
vg_edit newer.vg 're.sub(r"seqno = (\d+)", lambda m: "seqno = %d" % (int(m.group(1)) + 1), t, 1)'
cp a0.img a.img; cp b0.img b.img
lvm_mda write b.img newer.vg
serve lv=good --run 'nbdcopy "$uri" good.out'
assert_same good.out good.data "good LV with one stale copy"

# --- unsupported segment types ------------------------------------------------
for type in thin thin-pool cache cache-pool raid5 raid6 raid10 vdo integrity writecache snapshot; do
  vg_edit unsup.vg 're.sub(r"type = \"striped\"", "type = \"'$type'\"", t, 1)'
  store unsup.vg
  expect_fail "segment type $type" "LV good: segment type '$type' is not supported" lv=good
  serve --run 'nbdinfo --list "$uri"' > list.txt
  grep -q '^export="other":' list.txt || fail "other LV not listed next to a $type LV"
  ! grep -q '^export="good":' list.txt || fail "$type LV listed"
done

# --- legal layouts the tools cannot create here ------------------------------
# 1. Text wrapping around the end of the metadata ring buffer.
read -r mstart msize toff tsize < <(lvm_mda info a0.img | head -1)
wrap_off=$(( msize - 1024 ))
[ "$(stat -c %s orig.vg)" -gt 1024 ] || fail "metadata too short to wrap"
store orig.vg --offset $wrap_off
serve lv=good --run 'nbdcopy "$uri" good.out'
assert_same good.out good.data "good LV with wrapped metadata"
# lvm2 agrees that this is valid metadata (the loop devices see the files).
lvs --noheadings -o lv_name vgb > lvs.txt 2>lvs.err || { cat lvs.err; fail "lvs rejects the wrapped metadata"; }
grep -qw good lvs.txt && grep -qw other lvs.txt || fail "lvs does not see the LVs in wrapped metadata"

# 2. raid1 (read-only, one healthy leg) and a snapshot (origin read-only,
# exception store refused).
uuid () { printf '%s-%s-%s-%s-%s-%s-%s' "$1$1$1$1$1$1" "$1$1$1$1" "$1$1$1$1" "$1$1$1$1" "$1$1$1$1" "$1$1$1$1" "$1$1$1$1$1$1"; }
sub_lv () {  # NAME UUIDCHAR PV START COUNT
  cat <<EOF
$1 {
id = "$(uuid $2)"
status = ["READ", "WRITE"]
flags = []
segment_count = 1
segment1 {
start_extent = 0
extent_count = $5
type = "striped"
stripe_count = 1
stripes = [
"$3", $4
]
}
}
EOF
}
{
  cat <<EOF
r1 {
id = "$(uuid R)"
status = ["READ", "WRITE", "VISIBLE"]
flags = []
segment_count = 1
segment1 {
start_extent = 0
extent_count = 4
type = "raid1"
device_count = 2
region_size = 1024
raids = [
"r1_rmeta_0", "r1_rimage_0",
"r1_rmeta_1", "r1_rimage_1"
]
}
}
mi {
id = "$(uuid M)"
status = ["READ", "WRITE", "VISIBLE"]
flags = []
segment_count = 1
segment1 {
start_extent = 0
extent_count = 2
type = "mirror"
mirror_count = 2
region_size = 1024
mirrors = [
"mi_mimage_0", 0,
"mi_mimage_1", 0
]
}
}
snapshot0 {
id = "$(uuid S)"
status = ["READ"]
flags = []
segment_count = 1
segment1 {
start_extent = 0
extent_count = 8
type = "snapshot"
chunk_size = 8
origin = "good"
cow_store = "other"
}
}
EOF
  sub_lv r1_rmeta_0 a pv1 0 1
  sub_lv r1_rimage_0 b pv1 1 4
  sub_lv r1_rmeta_1 c pv0 20 1
  sub_lv r1_rimage_1 d pv0 21 4
  sub_lv mi_mimage_0 e pv1 5 2
  sub_lv mi_mimage_1 f pv0 25 2
} > newlvs.txt
python3 -c '
import re,sys
t=open("orig.vg").read()
new=open("newlvs.txt").read()
t=re.sub(r"(logical_volumes \{\n)", lambda m: m.group(1) + new, t, count=1)
open("legal.vg","w").write(t)'
store legal.vg
# lvm2 accepts it and sees a raid1 LV and a snapshot.
lvs -a --noheadings -o lv_name,segtype,origin vgb > lvs.txt 2>lvs.err || { cat lvs.err; fail "lvs rejects raid1/snapshot metadata"; }
grep -Eq 'r1 +raid1' lvs.txt || { cat lvs.txt; fail "lvs does not see r1 as raid1"; }
grep -Eq 'mi +mirror' lvs.txt || { cat lvs.txt; fail "lvs does not see mi as a mirror"; }
grep -Eq 'other +[a-z]+ +good' lvs.txt || { cat lvs.txt; fail "lvs does not see other as a snapshot of good"; }

pe_a=$(pvs --noheadings --units b --nosuffix -o pe_start "$LA" | tr -d ' ')
pe_b=$(pvs --noheadings --units b --nosuffix -o pe_start "$LB" | tr -d ' ')
random_file leg0.data 4M; random_file leg1.data 4M
dd if=leg0.data of=b.img bs=1M seek=$(( pe_b / 1048576 + 1 )) conv=notrunc status=none
dd if=leg1.data of=a.img bs=1M seek=$(( pe_a / 1048576 + 21 )) conv=notrunc status=none
rm -f r1.out; serve lv=r1 --run 'nbdcopy "$uri" r1.out && nbdinfo "$uri"' > info.txt
assert_same r1.out leg0.data "raid1 read from the first leg"
grep -q 'is_read_only: true' info.txt || fail "raid1 LV not read-only"
# Leg 0's PV missing: refused (the other leg may be out of sync, which
# the metadata does not say), unless degraded=true, which reads it.
if nbdkit -U "$(fresh_sock)" "$(plugin_so lvm)" pv=a.img lv=r1 \
     --run 'nbdinfo "$uri"' > out.txt 2> err.txt; then
  fail "raid1 served from another leg without degraded=true"
fi
grep -q "first leg of its mirror or raid1 lies on a missing PV" err.txt ||
  fail "unclear error for a missing first leg: $(cat err.txt)"
nbdkit -U "$(fresh_sock)" "$(plugin_so lvm)" pv=a.img degraded=true lv=r1 \
  --run 'nbdcopy "$uri" r1.out'
assert_same r1.out leg1.data "raid1 read from the healthy leg (degraded=true)"
# The same for a (non-raid) mirror.
random_file mleg0.data 2M; random_file mleg1.data 2M
dd if=mleg0.data of=b.img bs=1M seek=$(( pe_b / 1048576 + 5 )) conv=notrunc status=none
dd if=mleg1.data of=a.img bs=1M seek=$(( pe_a / 1048576 + 25 )) conv=notrunc status=none
rm -f mi.out; serve lv=mi --run 'nbdcopy "$uri" mi.out && nbdinfo "$uri"' > info.txt
assert_same mi.out mleg0.data "mirror read from the first leg"
grep -q 'is_read_only: true' info.txt || fail "mirror LV not read-only"
nbdkit -U "$(fresh_sock)" "$(plugin_so lvm)" pv=a.img lv=mi \
  --run 'nbdinfo --list "$uri"' > list.txt
! grep -q '^export="mi":' list.txt || fail "mirror without its first leg listed"
nbdkit -U "$(fresh_sock)" "$(plugin_so lvm)" pv=a.img degraded=true lv=mi \
  --run 'nbdcopy "$uri" mi.out'
assert_same mi.out mleg1.data "mirror read from the healthy leg (degraded=true)"
# Snapshot: the origin is served read-only, the exception store refused.
rm -f good.out; serve lv=good --run 'nbdcopy "$uri" good.out && nbdinfo "$uri"' > info.txt
assert_same good.out good.data "snapshot origin"
grep -q 'is_read_only: true' info.txt || fail "snapshot origin not read-only"
expect_fail "snapshot exception store" "exception store of a snapshot" lv=other
# A snapshot being merged back into its origin (lvconvert --merge, as lvm2
# writes it: merging_store): the origin is refused, not served raw.
python3 -c '
t = open("legal.vg").read()
assert "cow_store = \"other\"" in t
open("merging.vg", "w").write(t.replace("cow_store = \"other\"", "merging_store = \"other\""))'
store merging.vg
lvs -a --noheadings -o lv_name,lv_attr vgb > lvs.txt 2>lvs.err || { cat lvs.err; fail "lvs rejects merging metadata"; }
expect_fail "origin of a merging snapshot" "a snapshot is being merged into LV good" lv=good
expect_fail "store of a merging snapshot" "exception store of a snapshot" lv=other

# An LV of a VG with a system ID (lvm2 writes WRITE_LOCKED instead of
# WRITE): served read-only, and the log says why.
python3 - <<'EOF' || fail "edit failed"
import re
t = open("orig.vg").read()
t2 = re.sub(r'(good \{\n\s*id = "[^"]*"\n\s*status = \[)"READ", "WRITE", "VISIBLE"\](\n\s*flags = \[)\]',
            r'\1"READ", "VISIBLE"]\2"WRITE_LOCKED"]', t, count=1)
assert t2 != t
open("locked.vg", "w").write(t2)
EOF
store locked.vg
serve lv=good --run 'nbdinfo "$uri"' > info.txt 2> err.txt
grep -q 'is_read_only: true' info.txt || fail "WRITE_LOCKED LV served writable"
grep -q "served read-only: its volume group has a system ID" err.txt ||
  fail "no reason given for a WRITE_LOCKED LV: $(cat err.txt)"
echo "ok: WRITE_LOCKED LV: $(grep 'served read-only' err.txt)"

# One PV whose header lists the same metadata area 8 times, its text a
# valid VG with an array of 2 million numbers: the areas are parsed one at
# a time (each parsed copy used to be kept until the scan's end: over
# 1 GB for this 5 MB file), so nbdkit's peak memory stays that of one.
python3 - big-mda.img 8 2000000 "$lvm_srcdir/lvm-mda.py" <<'EOF'
import importlib.machinery, struct, sys
m = importlib.machinery.SourceFileLoader("mda", sys.argv[4]).load_module()
out, nmda, nelem = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
text = (b'big {\nid = "' + b"A" * 32 + b'"\nseqno = 1\njunk = [' +
        b"1," * nelem + b"1]\n}\n")
MDA = 4096
S = (512 + len(text) + 4096 + 511) // 512 * 512
size = MDA + S + (1 << 20)
img = bytearray(size)
h = bytearray(512)
h[4:20] = m.MAGIC
struct.pack_into("<IQQ", h, 20, 1, MDA, S)
struct.pack_into("<QQII", h, 40, 512, len(text), m.crc(text), 0)
struct.pack_into("<I", h, 0, m.crc(bytes(h[4:])))
img[MDA:MDA + 512] = h
img[MDA + 512:MDA + 512 + len(text)] = text
sec = bytearray(512)
sec[0:8] = b"LABELONE"
struct.pack_into("<Q", sec, 8, 1)
struct.pack_into("<I", sec, 20, 32)
sec[24:32] = b"LVM2 001"
p = 32
sec[p:p + 32] = b"B" * 32
struct.pack_into("<Q", sec, p + 32, size)
p += 40
struct.pack_into("<QQ", sec, p, MDA + S, 0)
p += 32
for i in range(nmda):
    struct.pack_into("<QQ", sec, p, MDA, S)
    p += 16
struct.pack_into("<I", sec, 16, m.crc(bytes(sec[20:])))
img[512:1024] = sec
open(out, "wb").write(img)
EOF
# (With the sanitizer preload of functions.sh's nbdkit wrapper; the run
# must end by itself, without a signal or a sanitizer report.)
peak=$(KVM_SANITIZER_PRELOAD=${KVM_SANITIZER_PRELOAD:-} python3 -c '
import os, re, resource, subprocess, sys
env = dict(os.environ)
if env.get("KVM_SANITIZER_PRELOAD"):
    env["LD_PRELOAD"] = env["KVM_SANITIZER_PRELOAD"]
r = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL,
                   stderr=subprocess.PIPE, env=env)
err = r.stderr.decode(errors="replace")
if r.returncode < 0 or re.search("Sanitizer|runtime error", err):
    sys.exit("nbdkit status %d: %s" % (r.returncode, err[-2000:]))
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024)' \
  nbdkit -U "$(fresh_sock)" "$(plugin_so lvm)" pv=big-mda.img --run 'nbdinfo --list "$uri"') ||
  fail "8 copies of a large metadata area: nbdkit did not end cleanly"
[ "$peak" -lt 700 ] || fail "8 copies of a large metadata area: nbdkit peaked at $peak MiB"
echo "ok: 8 copies of a large metadata area: peak $peak MiB"

echo PASS
