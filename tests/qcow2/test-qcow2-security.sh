#!/bin/bash
# SPDX-License-Identifier: BSD-3-Clause
# Security: paths inside an image (backing files, external data files)
# must stay inside the image's directory unless allow-backing-path allows
# more (the CVE-2024-32498 class), and hostile headers (huge L1, offsets
# past EOF, bad cluster bits / refcount order / header length, unknown
# incompatible features, encryption, the corrupt bit, backing loops,
# metadata pointing outside the file) give a clear error: never a crash,
# a hang or data from elsewhere.
source "${TOP_SRCDIR:?run the tests through ctest, which sets TOP_SRCDIR}/tests/functions.sh"
source "$TOP_SRCDIR/tests/qcow2/qcow2-functions.sh"

M=$((1024*1024))
hostile="$qdir/qcow2-hostile.py"
mkdir "$tmpdir/img" "$tmpdir/elsewhere" "$tmpdir/allowed"
cd "$tmpdir/img"

# Host files that hostile images try to expose.
printf 'root:x:0:0:SECRET-PASSWD-LINE\n' > "$tmpdir/elsewhere/passwd"
truncate -s 1M "$tmpdir/elsewhere/passwd"
{ printf 'SECRET-OUTSIDE'; head -c $((M - 14)) /dev/urandom; } > "$tmpdir/outside.raw"
cp "$tmpdir/outside.raw" "$tmpdir/outside.data"

# refused NAME IMAGE REGEX [params]: the plugin stops at start-up (it
# opens the image to check it), or, for the filter, opening IMAGE fails
# for the client and the server survives; the log matches REGEX, and no
# secret leaks to the client.
refused () {
  local name=$1 img=$2 re=$3; shift 3
  local log="$tmpdir/$name.log" rc=0
  new_sock
  if qcow2_checked_at_start; then
    serve_qcow2_stops "$sock" "$img" "$@" >"$log"
    grep -qE -- "$re" "$log" ||
      fail "$name: expected an error matching '$re', log: $(grep -i error "$log" | head -5)"
    echo "ok: $name refused at start-up: $(grep -m1 -E -- "$re" "$log" | sed 's/.*error: //')"
    return
  fi
  serve_qcow2 "$sock" "$img" "$@" 2>"$log"
  timeout 60 nbdcopy -- "$(uri_of "$sock")" "$tmpdir/$name.out" \
    >/dev/null 2>&1 || rc=$?
  [ $rc = 124 ] && fail "$name: client hung"
  [ $rc != 0 ] || fail "$name: the image was served (expected refusal: $re)"
  if [ -f "$tmpdir/$name.out" ] && grep -q SECRET "$tmpdir/$name.out"; then
    fail "$name: secret data reached the client"
  fi
  kill -0 "$nbdkit_pid" 2>/dev/null || fail "$name: nbdkit died: $(tail -5 "$log")"
  stop_server
  grep -qE -- "$re" "$log" ||
    fail "$name: expected an error matching '$re', log: $(grep -i error "$log" | head -5)"
  echo "ok: $name refused: $(grep -m1 -E -- "$re" "$log" | sed 's/.*error: //')"
}

# allowed NAME IMAGE [params]: the image is served and reads like QEMU
# reads it (QEMU itself follows any path).
allowed () {
  local name=$1 img=$2; shift 2
  new_sock
  serve_qcow2 "$sock" "$img" -r "$@"
  ORACLE=(-f qcow2 "$img")
  check_export_read "$(uri_of "$sock")" "$tmpdir/$name" --no-map
  stop_server
  echo "ok: $name allowed with $*"
}

# --- path confinement -------------------------------------------------------
qemu-img create -q -f qcow2 -b ../outside.raw -F raw rel.qcow2 $M
qemu-img create -q -f qcow2 -b "$tmpdir/elsewhere/passwd" -F raw abs.qcow2 $M
ln -s ../outside.raw inlink.raw
qemu-img create -q -f qcow2 -b inlink.raw -F raw link.qcow2 $M
qemu-img create -q -f qcow2 -o data_file=../outside.data,data_file_raw=on \
  df.qcow2 $M
cp "$tmpdir/outside.raw" "$tmpdir/outside.data"   # create truncated it
qemu-img create -q -f qcow2 -b ../outside.raw -F raw mid.qcow2 $M
qemu-img create -q -f qcow2 -b mid.qcow2 -F qcow2 top.qcow2 $M

refused rel-backing rel.qcow2 "refusing file '\.\./outside\.raw'.*allow-backing-path=DIR"
refused abs-backing abs.qcow2 "refusing file '$tmpdir/elsewhere/passwd'"
refused symlink-backing link.qcow2 "refusing file 'inlink\.raw'"
refused data-file df.qcow2 "refusing file '\.\./outside\.data'"
refused deep-backing top.qcow2 "refusing file '\.\./outside\.raw'"
# A directory that is not the target does not help; a prefix of the
# target's name is not its directory.
refused rel-other-dir rel.qcow2 "refusing file" allow-backing-path="$tmpdir/allowed"
mkdir "$tmpdir/elsewhe"
refused abs-prefix abs.qcow2 "refusing file" allow-backing-path="$tmpdir/elsewhe"

allowed rel-backing rel.qcow2 allow-backing-path="$tmpdir"
allowed abs-backing abs.qcow2 allow-backing-path="$tmpdir/elsewhere"
allowed abs-backing-any abs.qcow2 allow-backing-path=any
allowed symlink-backing link.qcow2 allow-backing-path="$tmpdir/allowed" \
  allow-backing-path="$tmpdir"
allowed data-file df.qcow2 allow-backing-path="$tmpdir"
# The export list (internal snapshots) opens the image too, with the same
# allowed paths.
new_sock
serve_qcow2 "$sock" df.qcow2 -r allow-backing-path="$tmpdir"
nbdinfo --list "$(uri_of "$sock")" > /dev/null ||
  fail "nbdinfo --list of an image whose data file is allowed"
stop_server
echo "ok: export list with an allowed data file"
allowed deep-backing top.qcow2 allow-backing-path="$tmpdir"
# A data file found only in an allowed directory is not written: a shared
# golden image named as an image's data file would take the guest's
# writes.  The image is served read-only, with a message.
dsum=$(md5sum < "$tmpdir/outside.data")
new_sock
serve_qcow2 "$sock" df.qcow2 allow-backing-path="$tmpdir" 2>"$tmpdir/df-rw.log"
nbdinfo "$(uri_of "$sock")" | grep -q 'is_read_only: true' ||
  fail "a data file in an allowed directory: the image was served writable"
qemu-io -f raw -c 'write -P 0x58 0 4096' "$(uri_of "$sock")" >/dev/null 2>&1 &&
  fail "a data file in an allowed directory: a write succeeded"
stop_server
[ "$(md5sum < "$tmpdir/outside.data")" = "$dsum" ] ||
  fail "a data file in an allowed directory was written"
grep -q "external data file .* lies outside the image's directory, in a directory allowed for reading: serving the image read-only" \
  "$tmpdir/df-rw.log" || fail "no message for the shared data file: $(cat "$tmpdir/df-rw.log")"
echo "ok: a data file found only in an allowed directory is read-only"
# A FIFO named as a backing file is refused at once (its open would wait
# for a writer for ever, and the server with it).
mkfifo fifo
qemu-img create -q -f qcow2 -u -b fifo -F raw fifo.qcow2 $M
refused fifo-backing fifo.qcow2 "fifo: not a regular file or block device"
# backing=none never opens the escaping backing file.
new_sock
serve_qcow2 "$sock" rel.qcow2 -r backing=none
nbdcopy -- "$(uri_of "$sock")" "$tmpdir/none.out"
stop_server
grep -q SECRET "$tmpdir/none.out" && fail "backing=none read the backing file"
# In-directory backing files (relative, absolute, in a subdirectory) work.
mkdir sub
qemu-img create -q -f raw sub/base.raw $M
qemu-io -f raw -c 'write -P 0x5a 4096 8192' sub/base.raw >/dev/null
qemu-img create -q -f qcow2 -b sub/base.raw -F raw insub.qcow2 $M
qemu-img create -q -f qcow2 -b "$tmpdir/img/sub/base.raw" -F raw inabs.qcow2 $M
allowed in-dir-relative insub.qcow2
allowed in-dir-absolute inabs.qcow2

# --- hostile headers ----------------------------------------------------------
# A valid small image with data, copied and patched per case.
qemu-img create -q -f qcow2 -o cluster_size=4096 good.qcow2 $M
qemu-io -f qcow2 -c 'write -P 0x11 0 64k' -c 'write -P 0x22 512k 4k' good.qcow2 >/dev/null
l1=$(python3 -c 'import struct,sys; f=open(sys.argv[1],"rb"); f.seek(40); print(struct.unpack(">Q",f.read(8))[0])' good.qcow2)

# hdr NAME REGEX FIELD VALUE...: patch a copy of good.qcow2, expect refusal.
hdr () {
  local name=$1 re=$2; shift 2
  cp good.qcow2 "h-$name.qcow2"
  python3 "$hostile" "h-$name.qcow2" "$@"
  refused "hdr-$name" "h-$name.qcow2" "$re"
}
hdr huge-l1 "L1 table is too large|L1 table" l1_size 0xffffffff
hdr l1-past-eof "L1|beyond|past|end of the file|corrupt" l1_table_offset $((1 << 50))
hdr l1-unaligned "L1 table offset is not cluster aligned|L1" l1_table_offset $((l1 + 8))
hdr cluster-bits-63 "unsupported cluster size" cluster_bits 63
hdr cluster-bits-8 "unsupported cluster size" cluster_bits 8
hdr refcount-order-7 "invalid refcount order" refcount_order 7
hdr header-length-small "invalid header length" header_length 50
hdr header-length-huge "invalid header length|header" header_length 0xfffffff0
hdr unknown-incompat "unsupported incompatible feature bit 20" set-incompat-bit 20
hdr version-4 "unsupported qcow2 version" version 4
hdr bad-magic "not a qcow2 image|bad magic" magic 0x51464900
hdr crypt-aes "encrypt" crypt_method 1
hdr backing-past-eof "backing file name" backing_file_offset $((1 << 40)) backing_file_size 100
hdr backing-in-header "backing file name" backing_file_offset 8 backing_file_size 1024
hdr huge-size "too large|L1 table" size $((1 << 62))
hdr refcount-past-eof "refcount table" refcount_table_offset $((1 << 50))
hdr snapshots-past-eof "snapshot" nb_snapshots 1000 snapshots_offset $((1 << 40))
hdr snapshots-too-many "snapshot" nb_snapshots 0xffffffff snapshots_offset 4096
# A snapshot table in the header: the engine's writes would change it.
# So would L1 updates an L1 table in the header or in the refcount table.
hdr l1-in-header "L1 table .* overlaps the header" l1_table_offset 0
hdr l1-in-refcount-table "L1 table .* overlaps the header" l1_table_offset \
  "$(python3 -c 'import struct,sys; f=open(sys.argv[1],"rb"); f.seek(48); print(struct.unpack(">Q",f.read(8))[0])' good.qcow2)"
hdr refcount-table-in-header "refcount table .* overlaps the header" refcount_table_offset 0
hdr snapshots-in-header "snapshot table at 0 overlaps" nb_snapshots 1 snapshots_offset 0

# Metadata pointing outside the file or into the header: reading those
# ranges either fails with a "corrupt image" error, or (where QEMU itself
# reads such entries as zeroes) returns exactly what QEMU returns.  The
# server survives either way.
# bad_data NAME hostile-args...
bad_data () {
  local name=$1; shift
  local img="d-$name.qcow2" log="$tmpdir/d-$name.log" rc=0
  cp good.qcow2 "$img"
  python3 "$hostile" "$img" "$@"
  new_sock
  serve_qcow2 "$sock" "$img" -r 2>"$log"
  timeout 60 nbdcopy -- "$(uri_of "$sock")" "$tmpdir/$name.out" \
    >/dev/null 2>&1 || rc=$?
  [ $rc = 124 ] && fail "data-$name: client hung"
  kill -0 "$nbdkit_pid" 2>/dev/null || fail "data-$name: nbdkit died: $(tail -5 "$log")"
  stop_server
  if [ $rc != 0 ]; then
    grep -qE "corrupt (image|compressed)" "$log" ||
      fail "data-$name: read failed without a clear error: $(grep error "$log" | head -3)"
    echo "ok: data-$name: $(grep -m1 -E "corrupt (image|compressed)" "$log" | sed "s/.*error: //")"
  else
    qemu-img convert -f qcow2 -O raw "$img" "$tmpdir/$name.qemu" ||
      fail "data-$name: the plugin served an image QEMU cannot read"
    assert_same "$tmpdir/$name.qemu" "$tmpdir/$name.out" "data-$name vs QEMU"
    echo "ok: data-$name: reads like QEMU"
  fi
}
bad_data l2-past-eof l1 0 $(( (1 << 63) | (1 << 45) ))
bad_data l2-unaligned l1 0 $(( (1 << 63) | 8192 + 512 ))
bad_data l2-at-zero l1 0 $(( 1 << 63 ))
bad_data data-past-eof l2 0 $(( (1 << 63) | (1 << 44) ))
bad_data data-at-zero l2 1 $(( 1 << 63 ))
bad_data data-unaligned l2 2 $(( (1 << 63) | 4096 + 512 ))
bad_data data-in-l1 l2 4 $(( (1 << 63) | l1 ))
# A compressed descriptor whose extent runs far past the end of the file.
bad_data compressed-past-eof l2 3 $(( (1 << 62) | (15 << 58) | (1 << 50) ))
bad_data compressed-in-header l2 5 $(( (1 << 62) | (15 << 58) | 16 ))
# At least the L2 cases must be refused outright (checked above through
# the log); make sure one of them really was.
grep -q "corrupt image" "$tmpdir/d-l2-past-eof.log" ||
  fail "an L2 table past the end of the file was not reported"

# Overwriting a cluster whose entry names the header or the L1 table
# (without a reference of its own) must not drop their reference: at zero
# they would be punched and reused (found by fuzz_qcow2: the header of
# such an image was zeroed).  The write may fail; the rest of the image
# must read as before, for QEMU too.
# bad_write NAME GUEST-OFFSET hostile-args...
bad_write () {
  local name=$1 goff=$2; shift 2
  local img="w-$name.qcow2" log="$tmpdir/w-$name.log"
  cp good.qcow2 "$img"
  python3 "$hostile" "$img" "$@"
  new_sock
  serve_qcow2 "$sock" "$img" 2>"$log"
  timeout 60 qemu-io -f raw -c "write -P 0x33 $goff 4096" -c flush \
    "$(uri_of "$sock")" >/dev/null 2>&1 || :
  kill -0 "$nbdkit_pid" 2>/dev/null || fail "write-$name: nbdkit died: $(tail -5 "$log")"
  stop_server
  qemu-io -f qcow2 -r -c 'read -P 0x11 0 16k' -c 'read -P 0x22 512k 4k' \
    "$img" >/dev/null 2>&1 ||
    fail "write-$name: the rest of the image was damaged: $(grep error "$log" | head -3)"
  echo "ok: write-$name: $(grep -m1 -E "corrupt image" "$log" | sed "s/.*error: //")"
}
bad_write compressed-in-header $((5 * 4096)) l2 5 $(( (1 << 62) | (15 << 58) | 16 ))
bad_write shares-l1 $((4 * 4096)) l2 4 $l1

# A data entry naming other metadata as its own cluster (with the copied
# flag, so the engine may write in place): an active L2 table, a refcount
# block, an internal snapshot's L1 table.  QEMU's overlap checks refuse
# such writes; so must the engine, or the guest's data lands in the
# tables.  A discard must not release the table's cluster either.
# meta_hit NAME IMAGE QEMU-IO-CMD META-OFFSET hostile-args...
cluster_sum () { dd if="$1" bs=4096 skip=$(($2 / 4096)) count=1 status=none | sha256sum; }
meta_hit () {
  local name=$1 img="m-$1.qcow2" cmd=$3 meta=$4 log="$tmpdir/m-$1.log"
  cp "$2" "$img"; shift 4
  python3 "$hostile" "$img" "$@"
  local before; before=$(cluster_sum "$img" "$meta")
  new_sock
  serve_qcow2 "$sock" "$img" 2>"$log"
  timeout 60 qemu-io -f raw -c "$cmd" -c flush "$(uri_of "$sock")" \
    >/dev/null 2>&1 || :
  kill -0 "$nbdkit_pid" 2>/dev/null || fail "meta-$name: nbdkit died: $(tail -5 "$log")"
  stop_server
  grep -qE "corrupt image: .* overlaps" "$log" ||
    fail "meta-$name: '$cmd' was not refused: $(grep error "$log" | head -3)"
  if [[ $cmd == write* ]]; then
    [ "$(cluster_sum "$img" "$meta")" = "$before" ] ||
      fail "meta-$name: '$cmd' changed the metadata cluster at $meta"
  fi
  qemu-io -f qcow2 -r -c 'read -P 0x11 0 16k' -c 'read -P 0x22 512k 4k' \
    "$img" >/dev/null 2>&1 ||
    fail "meta-$name: the rest of the image was damaged"
  echo "ok: meta-$name: $(grep -m1 -E "overlaps" "$log" | sed "s/.*error: //")"
}
l2=$(python3 "$hostile" good.qcow2 --show l2)
rb=$(python3 "$hostile" good.qcow2 --show refblock)
cp good.qcow2 snap.qcow2
qemu-img snapshot -c s1 snap.qcow2
sl1=$(python3 "$hostile" snap.qcow2 --show snapshot-l1)
copied=$((1 << 63))
meta_hit write-l2 good.qcow2 "write -P 0x33 16k 4k" $l2 l2 4 $((copied | l2))
meta_hit write-refblock good.qcow2 "write -P 0x33 16k 4k" $rb l2 4 $((copied | rb))
meta_hit write-snapshot-l1 snap.qcow2 "write -P 0x33 16k 4k" $sl1 \
  l2 4 $((copied | sl1))
# Where the snapshot's L1 table spans two clusters (2 GiB of 2 MiB L2
# ranges), a hit on its second cluster.
qemu-img create -q -f qcow2 -o cluster_size=4096 snap2.qcow2 2G
qemu-io -f qcow2 -c 'write -P 0x11 0 64k' -c 'write -P 0x22 512k 4k' \
  snap2.qcow2 >/dev/null
qemu-img snapshot -c s1 snap2.qcow2
sl1=$(( $(python3 "$hostile" snap2.qcow2 --show snapshot-l1) + 4096 ))
meta_hit write-snapshot-l1-second snap2.qcow2 "write -P 0x33 16k 4k" $sl1 \
  l2 4 $((copied | sl1))
meta_hit discard-l2 good.qcow2 "discard 16k 4k" $l2 l2 4 $((copied | l2))
meta_hit discard-refblock good.qcow2 "discard 16k 4k" $rb l2 4 $((copied | rb))
# An L1 entry naming the refcount block as its L2 table: the engine's
# update of that "L2 table" and of the refcounts must not be written over
# each other.
cp good.qcow2 m-l2-is-refblock.qcow2
python3 "$hostile" m-l2-is-refblock.qcow2 l1 0 $((copied | rb))
new_sock
serve_qcow2 "$sock" m-l2-is-refblock.qcow2 2>"$tmpdir/m-l2-is-refblock.log"
timeout 60 qemu-io -f raw -c "write -P 0x33 600k 4k" -c flush \
  "$(uri_of "$sock")" >/dev/null 2>&1 || :
kill -0 "$nbdkit_pid" 2>/dev/null || fail "meta-l2-is-refblock: nbdkit died"
stop_server
grep -qE "corrupt image: (L2 table|refcount block) at $(printf %#x $rb) overlaps (a refcount block|an L2 table)" \
  "$tmpdir/m-l2-is-refblock.log" ||
  fail "meta-l2-is-refblock: not refused: $(grep error "$tmpdir/m-l2-is-refblock.log" | head -3)"
echo "ok: meta-l2-is-refblock refused"

# Encrypted with LUKS (made by qemu-img).  qemu-img calibrates its PBKDF
# by timing its own CPU use and gives up ("Unable to get accurate CPU
# usage") when a sample measures 0 ms, which happens on a loaded machine
# (five tries in a row failed once, with the sanitizer build running
# beside): try up to 20 times, a moment apart.
for (( try = 1; try <= 20; try++ )); do
  [ $try = 1 ] || sleep 0.2
  rm -f luks.qcow2
  qemu-img create -q -f qcow2 --object secret,id=sec0,data=x \
    -o encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=10 \
    luks.qcow2 $M 2>luks.err && break
  grep -q "accurate CPU usage" luks.err && [ $try -lt 20 ] ||
    { cat luks.err >&2; fail "qemu-img could not create a LUKS image"; }
done
refused luks luks.qcow2 "encrypted"

# Backing loops: a -> b -> a, and an image that is its own backing file.
qemu-img create -q -f qcow2 loop-a.qcow2 $M
qemu-img create -q -f qcow2 -b loop-a.qcow2 -F qcow2 loop-b.qcow2 $M
qemu-img rebase -u -f qcow2 -b loop-b.qcow2 -F qcow2 loop-a.qcow2
refused loop-ab loop-a.qcow2 "backing chain|loop"
qemu-img create -q -f qcow2 loop-self.qcow2 $M
qemu-img rebase -u -f qcow2 -b loop-self.qcow2 -F qcow2 loop-self.qcow2
refused loop-self loop-self.qcow2 "backing chain|loop"

# --- the corrupt bit: read-only -----------------------------------------------
cp good.qcow2 corrupt.qcow2
python3 "$hostile" corrupt.qcow2 set-incompat-bit 1
sum_before=$(sha256sum < corrupt.qcow2)
new_sock
serve_qcow2 "$sock" corrupt.qcow2
if qemu-io -f raw -c 'write -P 0x33 0 4096' "$(uri_of "$sock")" >/dev/null 2>&1; then
  fail "write to an image with the corrupt bit succeeded"
fi
[ "$(nbdinfo --json "$(uri_of "$sock")" | python3 -c 'import json,sys; print(json.load(sys.stdin)["exports"][0]["is_read_only"])')" = True ] ||
  fail "corrupt image not exported read-only"
ORACLE=(-f qcow2 corrupt.qcow2)
check_export_read "$(uri_of "$sock")" "$tmpdir/corrupt" --no-map
stop_server
[ "$(sha256sum < corrupt.qcow2)" = "$sum_before" ] ||
  fail "the plugin modified an image with the corrupt bit"
echo "ok: corrupt bit -> read-only"

# --- the dirty bit (lazy refcounts not written back): served unchanged
#     read-only; repaired on a read-write open (more in
#     test-qcow2-repair.sh).
cp good.qcow2 dirty.qcow2
python3 "$hostile" dirty.qcow2 set-incompat-bit 0
cp dirty.qcow2 dirty-before.qcow2
new_sock
serve_qcow2 "$sock" dirty.qcow2 -r
ORACLE=(-f qcow2 dirty-before.qcow2)
check_export_read "$(uri_of "$sock")" "$tmpdir/dirty" --no-map
stop_server
cmp dirty.qcow2 dirty-before.qcow2 >/dev/null ||
  fail "a read-only open modified an image with the dirty bit"
new_sock
serve_qcow2 "$sock" dirty.qcow2
check_export_read "$(uri_of "$sock")" "$tmpdir/dirty-rw" --no-map
stop_server
check_image dirty.qcow2
qemu-img info --output=json dirty.qcow2 | grep -q '"dirty-flag": false' ||
  fail "the dirty bit is still set after a read-write open"
echo "ok: dirty bit -> unchanged read-only, repaired read-write"

echo "security: OK"
