#!/bin/bash
# SPDX-License-Identifier: BSD-3-Clause
# Paths inside a VMDK stay inside its directory (the CVE-2024-32498
# class): a FLAT extent naming an absolute path, a "../" path or a symlink
# that leads out of the directory, and a parent outside it, are refused
# with a message naming the reference; allow-path=DIR (or any) allows
# them.  Then malformed images (vmdk-gen.py --hostile, and hostile
# descriptors) give errors, never a crash.
source "${TOP_SRCDIR:?run the tests through ctest, which sets TOP_SRCDIR}/tests/functions.sh"
source "$TOP_SRCDIR/tests/vmdk/vmdk-functions.sh"

mkdir -p "$tmpdir/img" "$tmpdir/outside"
secret="$tmpdir/outside/secret.raw"
head -c 1048576 /dev/urandom > "$secret"

# try IMAGE [PARAMS...]: serve IMAGE and copy it; sets $out (messages)
# and $rc (0: the copy worked).  A crash fails the test.  One request at a
# time: nbdkit 1.32 aborts when a client hangs up with replies queued
# (fixed in nbdkit 1.33.10), which nbdcopy does on its
# first read error.  Images the plugin cannot open stop nbdkit at
# start-up; nbdkit_fails bounds the exit deadlock that may follow under
# the sanitizer preload (status 137 there, with the error printed).
try () {
  local img=$1; shift
  rm -f "$tmpdir/copy.raw" "$tmpdir/t.sock"
  rc=0
  out=$(nbdkit_fails 60 -U "$tmpdir/t.sock" -r "$(plugin_so vmdk)" "file=$img" "$@" \
        --run "nbdcopy --connections=1 --requests=1 \"\$uri\" '$tmpdir/copy.raw'") || rc=$?
  if [ $rc = 137 ] && [ -n "${KVM_SANITIZER_PRELOAD:-}" ] &&
     grep -q "error" <<<"$out"; then
    rc=1                        # the exit deadlock after an error
  fi
  if (( rc >= 128 )) || grep -qE 'Sanitizer|runtime error' <<<"$out"; then
    fail "nbdkit crashed on $img ($*): rc $rc: $out"
  fi
}

refused () {
  local what=$1 img=$2 ref=$3
  try "$img"
  [ $rc != 0 ] || fail "$what: served without allow-path"
  grep -q "refusing" <<<"$out" && grep -qF "$ref" <<<"$out" ||
    fail "$what: unclear message: $out"
  [ ! -s "$tmpdir/copy.raw" ] || ! cmp -s "$tmpdir/copy.raw" "$secret" ||
    fail "$what: the secret leaked"
  # At start-up: the plugin opens the image there to check it.
  rm -f "$tmpdir/t.sock"
  out=$(nbdkit_stops 10 -U "$tmpdir/t.sock" -r "$(plugin_so vmdk)" "file=$img" \
          --run true)
  grep -q "refusing" <<<"$out" || fail "$what: not refused at start-up: $out"
  for allow in "allow-path=$tmpdir/outside" allow-path=any; do
    try "$img" "$allow"
    [ $rc = 0 ] || fail "$what: refused with $allow: $out"
    cmp -s "$tmpdir/copy.raw" "${4:-$secret}" ||
      fail "$what: wrong content with $allow"
  done
  echo "ok: $what refused, allowed with allow-path"
}

flat_desc () {
  printf '# Disk DescriptorFile\nversion=1\nCID=12345678\nparentCID=ffffffff\ncreateType="monolithicFlat"\n\nRW 2048 FLAT "%s" 0\n' "$1"
}
flat_desc "$secret" > "$tmpdir/img/abs.vmdk"
refused "absolute FLAT extent" "$tmpdir/img/abs.vmdk" "$secret"
flat_desc ../outside/secret.raw > "$tmpdir/img/dotdot.vmdk"
refused "../ FLAT extent" "$tmpdir/img/dotdot.vmdk" ../outside/secret.raw
ln -s ../outside/secret.raw "$tmpdir/img/link.raw"
flat_desc link.raw > "$tmpdir/img/link.vmdk"
refused "symlink FLAT extent" "$tmpdir/img/link.vmdk" link.raw
# A SPARSE extent and a parent outside the directory.
qemu-img create -q -f vmdk "$tmpdir/outside/p.vmdk" 1M
qemu-io -f vmdk -c "write -P 0x61 0 1M" "$tmpdir/outside/p.vmdk" >/dev/null
qemu-img convert -O raw "$tmpdir/outside/p.vmdk" "$tmpdir/p.raw"
printf '# Disk DescriptorFile\nversion=1\nCID=12345678\nparentCID=ffffffff\ncreateType="twoGbMaxExtentSparse"\n\nRW 2048 SPARSE "../outside/p.vmdk"\n' \
  > "$tmpdir/img/sparse.vmdk"
refused "../ SPARSE extent" "$tmpdir/img/sparse.vmdk" ../outside/p.vmdk \
  "$tmpdir/p.raw"
qemu-img create -q -f vmdk -b ../outside/p.vmdk -F vmdk "$tmpdir/img/child.vmdk"
refused "parent ../outside/p.vmdk" "$tmpdir/img/child.vmdk" \
  ../outside/p.vmdk "$tmpdir/p.raw"
# Inside the directory, through a symlink that stays inside: fine.
cp "$secret" "$tmpdir/img/in.raw"
ln -s in.raw "$tmpdir/img/inlink.raw"
flat_desc inlink.raw > "$tmpdir/img/ok.vmdk"
try "$tmpdir/img/ok.vmdk"
[ $rc = 0 ] && cmp -s "$tmpdir/copy.raw" "$secret" ||
  fail "an extent inside the directory was refused: $out"
echo "ok: symlink inside the directory allowed"

# Extents found only in an allowed directory are read, never written
# (a shared golden image named as a FLAT or SPARSE extent would take the
# guest's writes): the image is served read-only, with a message; with
# allow-path=any it stays writable.
for img in abs sparse; do
  cp "$tmpdir/outside/p.vmdk" "$tmpdir/p.before"
  sum=$(md5sum < "$secret")
  new_sock
  # (qemu-io runs outside nbdkit: under --run it would get the sanitizer
  # preload, and QEMU's coroutines hang under ASan.)
  start_nbdkit "$sock" "$(plugin_so vmdk)" "file=$tmpdir/img/$img.vmdk" \
    "allow-path=$tmpdir/outside" 2>"$tmpdir/shared-$img.log"
  nbdinfo "$(uri_of "$sock")" | grep -q 'is_read_only: true' ||
    fail "$img.vmdk: an extent in an allowed directory was served writable"
  qemu-io -f raw -c "write -P 0x58 0 4096" "$(uri_of "$sock")" >/dev/null 2>&1 &&
    fail "$img.vmdk: a write into a shared extent succeeded"
  stop_nbdkit
  grep -q "extent .* lies outside the image's directory, in a directory allowed for reading: serving the image read-only" \
    "$tmpdir/shared-$img.log" || fail "$img.vmdk: no message: $(cat "$tmpdir/shared-$img.log")"
  [ "$(md5sum < "$secret")" = "$sum" ] && cmp -s "$tmpdir/outside/p.vmdk" "$tmpdir/p.before" ||
    fail "$img.vmdk: the shared extent changed"
done
new_sock
start_nbdkit "$sock" "$(plugin_so vmdk)" "file=$tmpdir/img/sparse.vmdk" allow-path=any
nbdinfo "$(uri_of "$sock")" | grep -q 'is_read_only: false' ||
  fail "allow-path=any: served read-only"
stop_nbdkit
echo "ok: extents in an allowed directory are read-only (writable with allow-path=any)"

# Malformed images: an error (no crash, no hang).
hostile () {
  local what=$1 img=$2
  try "$img"
  [ $rc != 0 ] || fail "$what: served without an error"
  grep -qi "error" <<<"$out" || fail "$what: no error message: $out"
  echo "ok: $what -> $(grep -i -m1 error <<<"$out" | cut -c1-150)"
}
for kind in truncated grain0 grain-huge gtes0 gtes-huge gd-past-eof \
            capacity-huge bad-newline version9; do
  python3 "$vdir/vmdk-gen.py" --out "$tmpdir/h.vmdk" --size 1048576 \
    --hostile $kind
  hostile "$kind" "$tmpdir/h.vmdk"
done
# These open, but reading the damaged grains fails.
for kind in gt-past-eof gde-huge; do
  python3 "$vdir/vmdk-gen.py" --out "$tmpdir/h.vmdk" --size 1048576 \
    --hostile $kind --seed 3
  hostile "$kind" "$tmpdir/h.vmdk"
done
for kind in stream-nofooter stream-badzlib marker-huge; do
  python3 "$vdir/vmdk-gen.py" --out "$tmpdir/h.vmdk" --size 1048576 \
    --stream --hostile $kind --seed 5
  hostile "$kind" "$tmpdir/h.vmdk"
done
# Grain tables that point into the image's own metadata: the writes that
# would land there are refused, so the header, the embedded descriptor and
# the grain directories survive (QEMU writes there, and then cannot open
# the image).  poke IMAGE WHAT: the redundant directory's first table, or
# the first table's grain 1, made to point at sector 1 (the descriptor).
poke () {
  python3 - "$1" "$2" <<'PY'
import struct, sys
path, what = sys.argv[1], sys.argv[2]
with open(path, "r+b") as f:
    h = f.read(512)
    rgd, gd = struct.unpack_from("<QQ", h, 48)
    if what == "rgd-in-descriptor":
        f.seek(48)
        f.write(struct.pack("<Q", 1))
        sys.exit(0)
    if what == "blank-descriptor":
        f.seek(512)
        f.write(b"\0")
        sys.exit(0)
    if what == "rgd":
        f.seek(rgd * 512)
    else:
        f.seek(gd * 512)
        gt = struct.unpack("<I", f.read(4))[0]
        f.seek(gt * 512 + 4)
    f.write(struct.pack("<I", 1))
PY
}
for what in rgd gte; do
  python3 "$vdir/vmdk-gen.py" --out "$tmpdir/w.vmdk" --raw "$tmpdir/w.raw" \
    --size 1048576 --seed 3
  poke "$tmpdir/w.vmdk" $what
  serve_vmdk "$tmpdir/w.vmdk"
  out=$(qemu-io -f raw -c "write -P 0x77 0 128k" "$(uri_of "$sock")" 2>&1 || :)
  stop_server
  grep -qiE "error|failed" <<<"$out" ||
    fail "$what into the descriptor: the write succeeded: $out"
  qemu-img info -f vmdk "$tmpdir/w.vmdk" >/dev/null 2>&1 ||
    fail "$what into the descriptor: the image no longer opens in QEMU"
  try "$tmpdir/w.vmdk"
  [ $rc = 0 ] || fail "$what into the descriptor: the plugin no longer opens it: $out"
  echo "ok: a $what pointing into the descriptor: write refused, image intact"
done
# The same with the descriptor area holding no text (it starts with a NUL):
# the header still reserves it, and nothing may be written there (else a
# text would appear that does not parse).  Grains of one sector, so that
# the grain poked to sector 1 covers only the descriptor area.
python3 "$vdir/vmdk-gen.py" --out "$tmpdir/w.vmdk" --raw "$tmpdir/w.raw" \
  --size 1048576 --seed 3 --grain 1
poke "$tmpdir/w.vmdk" blank-descriptor
poke "$tmpdir/w.vmdk" gte
serve_vmdk "$tmpdir/w.vmdk"
qemu-io -f raw -c "write -P 0x77 0 128k" "$(uri_of "$sock")" >/dev/null 2>&1 || :
stop_server
try "$tmpdir/w.vmdk"
[ $rc = 0 ] || fail "a gte into a blank descriptor area: the plugin no longer opens it: $out"
echo "ok: a gte pointing into a blank descriptor area: image intact"

# Tables that point at other tables or past the end of the file, in an
# image made by qemu-img (64 KiB grains; the file ends after grain 0's
# data): a grain table entry naming its own table (a write there would
# replace the table with guest data), a grain table entry and a redundant
# directory entry naming the end of the file, where the engine puts the
# next grain it allocates (the write through the entry, or the redundant
# table's update, would land in that grain).
# gt_poke IMAGE WHAT: set grain table 0's entry 1 to its own sector
# (gte-own-table), its entry 2 to the end of the file (gte-past-end), or
# the redundant directory's entry 0 to the end of the file (rgd-past-end).
gt_poke () {
  python3 - "$1" "$2" <<'PY'
import os, struct, sys
path, what = sys.argv[1], sys.argv[2]
end = os.path.getsize(path) // 512
with open(path, "r+b") as f:
    rgd, gd = struct.unpack_from("<QQ", f.read(512), 48)
    f.seek(gd * 512)
    gt = struct.unpack("<I", f.read(4))[0]
    if what == "gte-own-table":
        f.seek(gt * 512 + 4)
        f.write(struct.pack("<I", gt))
    elif what == "gte-past-end":
        f.seek(gt * 512 + 8)
        f.write(struct.pack("<I", end))
    else:
        f.seek(rgd * 512)
        f.write(struct.pack("<I", end))
PY
}
gt_case () {   # gt_case WHAT QEMU-IO-ARGS...: write through the plugin
  local what=$1; shift
  qemu-img create -q -f vmdk "$tmpdir/g.vmdk" 1M
  qemu-io -f vmdk -c "write -P 0x44 0 64k" "$tmpdir/g.vmdk" >/dev/null
  gt_poke "$tmpdir/g.vmdk" "$what"
  serve_vmdk "$tmpdir/g.vmdk" 2>"$tmpdir/g.log"
  qemu-io -f raw "$@" "$(uri_of "$sock")" >/dev/null 2>&1 || :
  stop_server
}
gt_case gte-own-table -c "write -P 0x77 64k 64k"
grep -q "data grain at byte .* overlaps the grain table" "$tmpdir/g.log" ||
  fail "a gte naming its own table: the write was not refused: $(cat "$tmpdir/g.log")"
qemu-io -f vmdk -r -c "read -P 0x44 0 64k" "$tmpdir/g.vmdk" >/dev/null ||
  fail "a gte naming its own table: the table was written over"
echo "ok: a gte naming its own grain table: write refused, table intact"
gt_case gte-past-end -c "write -P 0x11 512k 64k" -c "write -P 0x22 128k 4k"
grep -q "points past the end of the file (as it was opened)" "$tmpdir/g.log" ||
  fail "a gte past the end: the write was not refused: $(cat "$tmpdir/g.log")"
qemu-io -f vmdk -r -c "read -P 0x11 512k 64k" "$tmpdir/g.vmdk" >/dev/null ||
  fail "a gte past the end: the write through it landed in a new grain"
echo "ok: a gte naming the end of the file never names a new grain"
# A redundant table past the end (a file cut short): whatever updated it
# later, we or QEMU, would write into a grain allocated there.  Served
# read-only, the image unchanged.
gt_case rgd-past-end -c "write -P 0x11 512k 64k"
grep -q "redundant grain table 0 lies past the end of the file: serving it read-only" \
  "$tmpdir/g.log" || fail "a redundant table past the end: no message: $(cat "$tmpdir/g.log")"
qemu-io -f vmdk -r -c "read -P 0 512k 64k" -c "read -P 0x44 0 64k" \
  "$tmpdir/g.vmdk" >/dev/null ||
  fail "a redundant table past the end: the image was written"
echo "ok: a redundant grain table past the end of the file: read-only"

# The file cut in the middle of its last grain (grain 0's data): new
# grains go at the end of the file rounded up to a whole grain (as in
# QEMU), after that grain, so writing it in place (which grows the file)
# before or after them lands in no other grain.  Where the grain does not
# lie at a multiple of the grain size (moved one sector on), a new grain
# does land in its tail: written after that, it is refused.
cut_case () {   # cut_case MISALIGN QEMU-IO-ARGS...
  local misalign=$1; shift
  qemu-img create -q -f vmdk "$tmpdir/c.vmdk" 1M
  qemu-io -f vmdk -c "write -P 0x44 0 64k" "$tmpdir/c.vmdk" >/dev/null
  [ "$misalign" = 0 ] || python3 - "$tmpdir/c.vmdk" <<'PY'
import struct, sys
with open(sys.argv[1], "r+b") as f:
    rgd, gd = struct.unpack_from("<QQ", f.read(512), 48)
    for d in (gd, rgd):
        f.seek(d * 512)
        gt = struct.unpack("<I", f.read(4))[0]
        f.seek(gt * 512)
        sec = struct.unpack("<I", f.read(4))[0]
        f.seek(gt * 512)
        f.write(struct.pack("<I", sec + 1))
    f.seek(sec * 512)
    data = f.read(65536)
    f.seek((sec + 1) * 512)
    f.write(data)
PY
  truncate -s -32k "$tmpdir/c.vmdk"
  serve_vmdk "$tmpdir/c.vmdk" 2>"$tmpdir/c.log"
  qemu-io -f raw "$@" "$(uri_of "$sock")" >/dev/null 2>&1 || :
  stop_server
}
for order in "0 512k" "512k 0"; do
  set -- $order
  cut_case 0 -c "write -P 0x55 $1 64k" -c "write -P 0x66 $2 64k"
  qemu-io -f vmdk -r -c "read -P 0x55 $1 64k" -c "read -P 0x66 $2 64k" \
    "$tmpdir/c.vmdk" >/dev/null ||
    fail "a cut-short last grain ($order): a grain landed in another: $(cat "$tmpdir/c.log")"
done
echo "ok: a cut-short last grain grows the file, new grains go after it"
cut_case 1 -c "write -P 0x11 512k 64k" -c "write -P 0x55 0 64k"
grep -q "last grain of .* runs past the end of the file, into grains" \
  "$tmpdir/c.log" ||
  fail "a misaligned cut-short last grain written last: not refused: $(cat "$tmpdir/c.log")"
qemu-io -f vmdk -r -c "read -P 0x11 512k 64k" "$tmpdir/c.vmdk" >/dev/null ||
  fail "a misaligned cut-short last grain written last: it overwrote the new grain"
echo "ok: a misaligned cut-short last grain, written after a new grain, is refused"

# A descriptor line whose size is not its sparse extent's capacity (found
# by test-server-fuzz.sh: 2^40 sectors for a 16 MiB extent, a 512 TiB
# disk that no client could map in time): the header's capacity counts,
# as in QEMU, so both read the same disk.
for claim in 1099511627776 2048; do
  qemu-img create -q -f vmdk -o subformat=twoGbMaxExtentSparse \
    "$tmpdir/img/split.vmdk" 16M
  qemu-io -f vmdk -c "write -P 0x66 1M 64k" -c "write -P 0x67 15M 64k" \
    "$tmpdir/img/split.vmdk" >/dev/null
  sed -i "s/^RW 32768 SPARSE/RW $claim SPARSE/" "$tmpdir/img/split.vmdk"
  grep -q "^RW $claim SPARSE" "$tmpdir/img/split.vmdk" ||
    fail "making a descriptor line of $claim sectors"
  qemu-img convert -f vmdk -O raw "$tmpdir/img/split.vmdk" "$tmpdir/split.qemu"
  try "$tmpdir/img/split.vmdk"
  [ $rc = 0 ] || fail "a line of $claim sectors: not served: $out"
  cmp "$tmpdir/copy.raw" "$tmpdir/split.qemu" ||
    fail "a line of $claim sectors: reads unlike QEMU ($(stat -c %s "$tmpdir/copy.raw") bytes, QEMU $(stat -c %s "$tmpdir/split.qemu"))"
done
echo "ok: a descriptor line unlike its sparse extent's capacity reads as in QEMU"

# A CID shorter than 8 digits, and other bytes after the text's NUL: the
# first write rewrites the CID with 8 digits, and the longer text must
# still end where it should (it ran on into those bytes).
python3 "$vdir/vmdk-gen.py" --out "$tmpdir/w.vmdk" --raw "$tmpdir/w.raw" \
  --size 1048576 --seed 3
python3 - "$tmpdir/w.vmdk" <<'PY'
import re, struct, sys
with open(sys.argv[1], "r+b") as f:
    h = f.read(512)
    doff, dsize = struct.unpack_from("<QQ", h, 28)
    f.seek(doff * 512)
    area = f.read(dsize * 512)
    text = area.split(b"\0")[0]
    text = re.sub(rb"\nCID=[0-9a-fA-F]+\n", b"\nCID=12c\n", text)
    f.seek(doff * 512)
    # Past the NUL, a line that would not parse were the text to run on.
    f.write(text + b"\0XXXX\nRW 64 SPARSE \"bad\n")
PY
qemu-img info -f vmdk "$tmpdir/w.vmdk" >/dev/null || fail "short CID: not an image QEMU opens"
serve_vmdk "$tmpdir/w.vmdk"
qemu-io -f raw -c "write -P 0x77 0 4k" "$(uri_of "$sock")" >/dev/null ||
  fail "short CID: the write failed"
stop_server
try "$tmpdir/w.vmdk"
[ $rc = 0 ] || fail "short CID: the plugin no longer opens the image: $out"
qemu-img info -f vmdk "$tmpdir/w.vmdk" >/dev/null ||
  fail "short CID: QEMU no longer opens the image"
echo "ok: a short CID is rewritten in place, and the text still ends"

# The redundant directory itself in the descriptor: served read-only.
python3 "$vdir/vmdk-gen.py" --out "$tmpdir/w.vmdk" --raw "$tmpdir/w.raw" \
  --size 1048576 --seed 3
poke "$tmpdir/w.vmdk" rgd-in-descriptor
served_read_only "$tmpdir/w.vmdk" \
  "overlap the header, the descriptor or each other" \
  "a redundant directory in the descriptor"

# Hostile descriptors.
d="$tmpdir/img/d.vmdk"
desc_head='# Disk DescriptorFile\nversion=1\nCID=1\nparentCID=ffffffff\ncreateType="monolithicFlat"\n'
printf "$desc_head" > "$d"
for ((k=0; k<5000; k++)); do echo 'RW 1 ZERO'; done >> "$d"
hostile "5000 extents" "$d"
printf "${desc_head}RW 18446744073709551615 ZERO\n" > "$d"
hostile "extent size 2^64-1" "$d"
printf "${desc_head}RW 9223372036854775807 ZERO\nRW 9223372036854775807 ZERO\n" > "$d"
hostile "extent sizes overflowing" "$d"
printf "${desc_head}RW 4096 FLAT \"in.raw\" 18446744073709551615\n" > "$d"
hostile "FLAT offset 2^64-1" "$d"
printf "${desc_head}RW 4096 FLAT \"in.raw\" 4096\n" > "$d"
hostile "FLAT extent past the end of its file" "$d"
printf "${desc_head}RW 4096 SPARSE \"in.raw\"\n" > "$d"
hostile "SPARSE extent without a header" "$d"
printf "${desc_head}RW 4096 FLAT \"\"\n" > "$d"
hostile "empty extent file name" "$d"
printf "${desc_head}RW 4096 FLAT \"in.raw\n" > "$d"
hostile "unterminated file name" "$d"
printf "${desc_head}RW 4096 WEIRD \"in.raw\"\n" > "$d"
hostile "unknown extent type" "$d"
printf '# Disk DescriptorFile\nversion=1\ncreateType="monolithicFlat"\n' > "$d"
hostile "no extents" "$d"
printf "${desc_head}RW 4096 SESPARSE \"in.raw\"\n" > "$d"
hostile "SESPARSE extent without a header" "$d"
# seSparse images with one field spoiled (1 MiB: the grain directory at
# sector 2, one grain table at sector 3, grains from sector 67).
# se_poke OFFSET VALUE: a fresh image with the u64 at OFFSET set to VALUE.
se_poke () {
  python3 "$vdir/vmdk-gen.py" --sesparse --out "$tmpdir/se.vmdk" \
    --size 1048576 --seed 3 || fail "vmdk-gen.py --sesparse"
  python3 -c 'import struct, sys
f = open(sys.argv[1], "r+b"); f.seek(int(sys.argv[2], 0))
f.write(struct.pack("<Q", int(sys.argv[3], 0)))' \
    "$tmpdir/se-sesparse.vmdk" "$1" "$2" || fail "se_poke $*"
}
for p in "16 0xffffffffffffffff:capacity 2^64-1 sectors" \
         "24 16:grain size 16" "48 1:reserved field" \
         "80 0x7fffffffffffffff:volatile header offset" \
         "128 0x7fffffffffffffff:grain directory offset" \
         "136 0:grain directory size 0" "300 1:header padding" \
         "536 1:journal replay pending" \
         "1024 0x20000000ffffffff:grain directory entry flags" \
         "1024 0x10000000ffffffff:grain table index 2^32-1" \
         "1536 0x4000000000000000:grain entry state 4" \
         "1536 0x0000000000000001:unallocated grain entry with bits" \
         "1536 0x3fffffffffffffff:grain number 2^60-1"; do
  se_poke ${p%%:*}
  hostile "seSparse: ${p#*:}" "$tmpdir/se.vmdk"
done
qemu-img create -q -f vmdk "$tmpdir/img/loop.vmdk" 1M
perl -pi -e 's/ddb.toolsVersion = "2147483647"/parentFileNameHint="loop.vmdk" /' \
  "$tmpdir/img/loop.vmdk"
grep -aq 'parentFileNameHint="loop.vmdk"' "$tmpdir/img/loop.vmdk" ||
  fail "making a self-parent"
hostile "an image that is its own parent" "$tmpdir/img/loop.vmdk"
echo "all ok"
