#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# Persistent dirty bitmaps (qcow2 "bitmaps" extension) kept valid by the
# plugin.  Bitmaps are made with qemu-img; guest writes go through the
# plugin; the oracles are QEMU's: qemu-img info (flags, no "in-use"),
# qemu-img check, and the bitmap's content as qemu-nbd -B exports it
# (nbdinfo --map=qemu:dirty-bitmap:NAME), which must equal every written,
# zeroed or discarded range rounded out to the granularity.
#   1. granularities 512 B, 64 KiB, 1 MiB (cluster sizes 64K, 512, 2M),
#      two sessions (bits accumulate), flushes in between;
#   2. one image with many bitmaps (512 B .. 2 GiB, one disabled);
#   3. kill -9 of the server while writing: a bitmap is in use
#      (inconsistent), and one that is not must cover every changed unit;
#      a bitmap in use stays so, a new one next to it works;
#   4. full + bitmap-driven incremental backup, restore = current disk;
#      qemu-img convert --bitmaps copies the same bitmap;
#   5. a bitmap this engine must not touch (unknown type, disabled) is
#      preserved; an "auto" one with unknown flags clears the autoclear bit;
#      a table entry pointing at the L1 table is never written through.
#   test-qcow2-bitmaps.sh [SEED]
source "${TOP_SRCDIR:?run the tests through ctest, which sets TOP_SRCDIR}/tests/functions.sh"
source "$TOP_SRCDIR/tests/qcow2/qcow2-functions.sh"
requires qemu-nbd
requires_nbdsh

seed=${1:-${QCOW2_SEED:-$RANDOM}}
echo "seed $seed"
RANDOM=$seed
M=$((1024*1024))
size=$((64*M))
bmpy () { python3 "$qdir/qcow2-bitmaps.py" "$@"; }

# bitmap_flags IMG NAME: the flags qemu-img info lists (e.g. "auto"),
# space-separated; "missing" if there is no such bitmap.
bitmap_flags () {
  qemu-img info -U --output=json "$1" | python3 -c '
import json, sys
d = json.load(sys.stdin)
bms = d.get("format-specific", {}).get("data", {}).get("bitmaps", [])
for b in bms:
    if b["name"] == sys.argv[1]:
        print(" ".join(b["flags"]) or "none"); break
else:
    print("missing")' "$2"
}

# assert_valid IMG NAME...: each bitmap is listed and not in use.
assert_valid () {
  local img=$1 n f; shift
  for n in "$@"; do
    f=$(bitmap_flags "$img" "$n")
    case " $f " in
      *" missing "*) fail "$img: bitmap $n is gone: $(qemu-img info -U "$img")" ;;
      *" in-use "*) fail "$img: bitmap $n is in use after a clean stop" ;;
    esac
  done
}

# bitmap_map IMG NAME OUT: the dirty ranges of bitmap NAME ("offset
# length" lines) as qemu-nbd -B exports it.
bitmap_map () {
  local img=$1 name=$2 out=$3 qs="$tmpdir/qn.sock" i
  rm -f "$qs"
  qemu-nbd -r -B "$name" -k "$qs" -f qcow2 -t "$img" 2>"$out.err" &
  local p=$!
  kill_at_exit $p
  for (( i=0; i<200; i++ )); do
    [ -S "$qs" ] && break
    kill -0 $p 2>/dev/null || fail "qemu-nbd -B $name $img: $(cat "$out.err")"
    sleep 0.05
  done
  nbdinfo --map="qemu:dirty-bitmap:$name" --json "$(uri_of "$qs")" \
    > "$out.json" || fail "nbdinfo --map=qemu:dirty-bitmap:$name ($img)"
  kill $p; wait $p 2>/dev/null || :
  bmpy dirty "$out.json" > "$out"
}

# assert_map IMG NAME GRANULARITY OPSFILE...: the bitmap shows exactly the
# ranges of the qemu-io command files, rounded to the granularity.
assert_map () {
  local img=$1 name=$2 g=$3; shift 3
  bmpy expect "$g" "$size" "$@" > "$tmpdir/expect.$name"
  bitmap_map "$img" "$name" "$tmpdir/got.$name"
  if ! cmp -s "$tmpdir/expect.$name" "$tmpdir/got.$name"; then
    fail "$img: bitmap $name (granularity $g) differs from the written ranges:
$(diff "$tmpdir/expect.$name" "$tmpdir/got.$name" | head -20)"
  fi
}

# write_through_plugin IMG OPSFILE: the qemu-io commands through the
# plugin, then a clean stop.  (The content is checked by the backup round
# trip below: what a discard leaves is up to the format.)
write_through_plugin () {
  new_sock
  serve_qcow2 "$sock" "$1"
  fill_image "$(uri_of "$sock")" raw "$2"
  stop_server
}

# --- 1. one bitmap, three granularities ------------------------------------
for spec in 512:65536 65536:512 1048576:2097152; do
  g=${spec%:*} cs=${spec#*:}
  img=$tmpdir/g$g.qcow2
  qemu-img create -q -f qcow2 -o cluster_size=$cs "$img" $size
  # Data before the bitmap: later writes over it are in place (fast path)
  # or partial-cluster ones.
  qemu_io_cmds -f qcow2 -c "write -P 0x5a 0 8M" -c "write -P 0xa5 40M 3M" "$img"
  qemu-img bitmap --add -g "$g" "$img" b
  [ "$(bitmap_flags "$img" b)" = auto ] || fail "setup: bitmap b is not auto"
  bmpy ops --seed $((seed + g)) --size $size --count 40 --flush-every 7 \
    > "$tmpdir/g$g.ops1"
  bmpy ops --seed $((seed + g + 1)) --size $size --count 25 \
    > "$tmpdir/g$g.ops2"
  write_through_plugin "$img" "$tmpdir/g$g.ops1"
  assert_valid "$img" b
  check_image "$img"
  assert_map "$img" b "$g" "$tmpdir/g$g.ops1"
  # A second session adds to the same bitmap.
  write_through_plugin "$img" "$tmpdir/g$g.ops2"
  assert_valid "$img" b
  check_image "$img"
  assert_map "$img" b "$g" "$tmpdir/g$g.ops1" "$tmpdir/g$g.ops2"
  echo "granularity $g (clusters $cs): OK"
done

# --- 2. many bitmaps ----------------------------------------------------------
img=$tmpdir/many.qcow2
qemu-img create -q -f qcow2 -o cluster_size=4096 "$img" $size
grans=(512 4096 65536 1048576 2147483648)
for g in "${grans[@]}"; do qemu-img bitmap --add -g "$g" "$img" "g$g"; done
for (( i=0; i<24; i++ )); do
  qemu-img bitmap --add -g $((512 << (i % 12))) "$img" "m$i"
done
qemu-img bitmap --add --disable "$img" off
bmpy ops --seed $((seed + 7)) --size $size --count 30 --flush-every 10 \
  > "$tmpdir/many.ops"
write_through_plugin "$img" "$tmpdir/many.ops"
check_image "$img"
for g in "${grans[@]}"; do
  assert_valid "$img" "g$g"
  assert_map "$img" "g$g" "$g" "$tmpdir/many.ops"
done
for i in 0 5 11 23; do
  assert_valid "$img" "m$i"
  assert_map "$img" "m$i" $((512 << (i % 12))) "$tmpdir/many.ops"
done
# The disabled bitmap records nothing.
[ "$(bitmap_flags "$img" off)" = none ] || fail "bitmap off: flags changed"
bitmap_map "$img" off "$tmpdir/got.off"
[ ! -s "$tmpdir/got.off" ] || fail "the disabled bitmap changed: $(cat "$tmpdir/got.off")"
echo "many bitmaps: OK"

# --- 3. kill -9 while writing -------------------------------------------------
writer="$TOP_BUILDDIR/tests/qcow2/qcow2-crashwriter"
img=$tmpdir/kill.qcow2
qemu-img create -q -f qcow2 "$img" $((16*M))
# 3a. A write acknowledged, no flush, the server killed (by the client,
# before it disconnects): in use.
qemu-img bitmap --add "$img" k0
new_sock
serve_qcow2 "$sock" "$img"
PATH="/usr/bin:$PATH" nbdsh -u "$(uri_of "$sock")" \
  -c 'h.pwrite(b"\x77" * 65536, 1048576)' \
  -c "import os, signal; os.kill($nbdkit_pid, signal.SIGKILL)" ||
  : # the server is gone before nbdsh disconnects
for (( i=0; i<100; i++ )); do
  kill -0 "$nbdkit_pid" 2>/dev/null || break
  sleep 0.05
done
f=$(bitmap_flags "$img" k0)
case " $f " in *" in-use "*) ;; *) fail "killed while writing: bitmap k0 is '$f', not in use" ;; esac
# The bitmap stays in use (inconsistent) through the plugin; one added
# next to it is kept valid.
qemu-img bitmap --add -g 4096 "$img" k1
printf 'write -P 0x12 3145728 5000\nwrite -z 9437184 65536\n' > "$tmpdir/kill.ops"
write_through_plugin "$img" "$tmpdir/kill.ops"
f=$(bitmap_flags "$img" k0)
case " $f " in *" in-use "*) ;; *) fail "an inconsistent bitmap became '$f'" ;; esac
assert_valid "$img" k1
size=$((16*M)) assert_map "$img" k1 4096 "$tmpdir/kill.ops"
check_image "$img"

# 3b. Crash-test writers killed at a random moment: each bitmap is in use,
# or covers every unit whose content changed.
if [ -x "$writer" ]; then
  inuse=0
  for it in 1 2 3 4; do
    for b in k0 k1 c0 c1; do
      [ "$(bitmap_flags "$img" $b)" = missing ] ||
        qemu-img bitmap --remove "$img" $b
    done
    qemu-img bitmap --add -g 65536 "$img" c0
    qemu-img bitmap --add -g 512 "$img" c1
    rm -f "$tmpdir/before.raw" "$tmpdir/after.raw"
    qemu-img convert -O raw "$img" "$tmpdir/before.raw"
    new_sock
    serve_qcow2 "$sock" "$img"
    pids=()
    for w in 0 1; do
      "$writer" write "$(uri_of "$sock")" "$tmpdir/kill.log$w" \
        $((w*8*M)) $((8*M)) $((w ? 4096 : 70144)) $((it*10000000)) \
        $((seed*10 + it*2 + w)) 2>>"$tmpdir/kill.writer.err" &
      pids+=($!)
    done
    ms=$(( 200 + RANDOM % 1000 ))
    sleep "$(printf '%d.%03d' $((ms/1000)) $((ms%1000)))"
    kill -9 "$nbdkit_pid"
    for w in "${pids[@]}"; do
      wait "$w" || fail "a crash writer failed: $(tail -3 "$tmpdir/kill.writer.err")"
    done
    rc=0; out=$(qemu-img check "$img" 2>&1) || rc=$?
    case $rc in 0|3) ;; *) fail "iteration $it: qemu-img check exit $rc: $out" ;; esac
    qemu-img convert -O raw "$img" "$tmpdir/after.raw"
    for b in c0:65536 c1:512; do
      f=$(bitmap_flags "$img" ${b%:*})
      case " $f " in
        *" in-use "*) inuse=$((inuse+1)) ;;
        " auto ")
          bitmap_map "$img" ${b%:*} "$tmpdir/got.kill"
          bmpy covers ${b#*:} "$tmpdir/got.kill.json" "$tmpdir/before.raw" \
            "$tmpdir/after.raw" >/dev/null ||
            fail "iteration $it: bitmap ${b%:*} is valid but incomplete" ;;
        *) fail "iteration $it: bitmap ${b%:*} is '$f'" ;;
      esac
    done
    # Leaked clusters (exit 3) are allowed after a crash: repair them so
    # that the next round's check sees only its own.
    qemu-img check -q -r leaks "$img" >/dev/null 2>&1 || :
  done
  [ $inuse -gt 0 ] || fail "no kill ever left a bitmap in use"
  echo "kill -9: OK ($inuse of 8 bitmaps in use)"
else
  echo "kill -9 (random): skipped, qcow2-crashwriter not built"
fi

# --- 4. full + incremental backup ---------------------------------------------
img=$tmpdir/vm.qcow2
qemu-img create -q -f qcow2 "$img" $size
qemu_io_cmds -f qcow2 -c "write -P 0x31 0 20M" -c "write -P 0x32 30M 10M" "$img"
# The full backup, and the bitmap that tracks what changes after it.
qemu-img convert -O raw "$img" "$tmpdir/full.raw"
qemu-img bitmap --add -g 65536 "$img" inc
bmpy ops --seed $((seed + 11)) --size $size --count 30 --flush-every 5 \
  > "$tmpdir/vm.ops1"
bmpy ops --seed $((seed + 12)) --size $size --count 20 > "$tmpdir/vm.ops2"
write_through_plugin "$img" "$tmpdir/vm.ops1"
write_through_plugin "$img" "$tmpdir/vm.ops2"
assert_valid "$img" inc
check_image "$img"
qemu-img convert -O raw "$img" "$tmpdir/now.raw"
cmp -s "$tmpdir/full.raw" "$tmpdir/now.raw" && fail "backup: nothing changed"
# Incremental: only the dirty ranges, read from qemu-nbd's export of the
# image (the bitmap exported with it, as a backup tool does).
bitmap_map "$img" inc "$tmpdir/inc.map"
[ -s "$tmpdir/inc.map" ] || fail "backup: empty bitmap"
cp "$tmpdir/full.raw" "$tmpdir/restore.raw"
qs="$tmpdir/qinc.sock"
qemu-nbd -r -B inc -k "$qs" -f qcow2 -t "$img" &
qinc=$!
kill_at_exit $qinc
for (( i=0; i<200; i++ )); do [ -S "$qs" ] && break; sleep 0.05; done
MAP="$tmpdir/inc.map" DEST="$tmpdir/restore.raw" \
  nbdsh -u "$(uri_of "$qs")" -c '
import os
with open(os.environ["MAP"]) as m, open(os.environ["DEST"], "r+b") as d:
    for line in m:
        off, ln = map(int, line.split())
        for o in range(off, off + ln, 4 << 20):
            d.seek(o)
            d.write(h.pread(min(4 << 20, off + ln - o), o))
' || fail "backup: reading the dirty ranges"
kill $qinc; wait $qinc 2>/dev/null || :
assert_same "$tmpdir/now.raw" "$tmpdir/restore.raw" "full + incremental restore"
# qemu-img convert --bitmaps carries the same bitmap.
qemu-img convert --bitmaps -O qcow2 "$img" "$tmpdir/copy.qcow2"
bitmap_map "$tmpdir/copy.qcow2" inc "$tmpdir/copy.map"
cmp -s "$tmpdir/inc.map" "$tmpdir/copy.map" ||
  fail "qemu-img convert --bitmaps: the copy's bitmap differs"
echo "backup round trip: OK"

# --- 5. bitmaps this engine must not update -----------------------------------
# dir_entries IMG: "name offset-in-file entry-bytes-hex" of each directory
# entry (the spec's layout, read here independently of the project).
dir_entries () {
  python3 - "$1" <<'EOF'
import struct, sys
d = open(sys.argv[1], "rb").read()
hl = struct.unpack(">I", d[100:104])[0]
p = hl
while p + 8 <= len(d):
    t, l = struct.unpack(">II", d[p:p + 8])
    if t == 0:
        break
    if t == 0x23852875:
        nb, _, ds, do = struct.unpack(">IIQQ", d[p + 8:p + 32])
        q = do
        for i in range(nb):
            to, ts, fl, ty, gb, ns, es = struct.unpack(">QIIBBHI", d[q:q + 24])
            n = (24 + ns + es + 7) & ~7
            name = d[q + 24 + es:q + 24 + es + ns].decode()
            tab = d[to:to + 8 * ts]
            print(name, q, d[q:q + n].hex(), tab.hex())
            q += n
    p += 8 + ((l + 7) & ~7)
EOF
}
# patch_entry IMG NAME FIELD-OFFSET BYTES-HEX: overwrite bytes of an entry.
patch_entry () {
  local pos
  pos=$(dir_entries "$1" | awk -v n="$2" '$1 == n { print $2 }')
  [ -n "$pos" ] || fail "no directory entry $2 in $1"
  python3 -c '
import sys
f = open(sys.argv[1], "r+b"); f.seek(int(sys.argv[2])); f.write(bytes.fromhex(sys.argv[3]))' \
    "$1" $((pos + $3)) "$4"
}
# 5a. A disabled bitmap of an unknown type (2) is left as it is; the
# others are kept valid.
img=$tmpdir/foreign.qcow2
qemu-img create -q -f qcow2 "$img" $size
qemu-img bitmap --add "$img" a0
qemu-img bitmap --add --disable "$img" x
qemu-img bitmap --add -g 512 "$img" a1
patch_entry "$img" x 16 02
before=$(dir_entries "$img" | awk '$1 == "x" { print $3, $4 }')
bmpy ops --seed $((seed + 21)) --size $size --count 15 > "$tmpdir/foreign.ops"
write_through_plugin "$img" "$tmpdir/foreign.ops"
after=$(dir_entries "$img" | awk '$1 == "x" { print $3, $4 }')
[ "$before" = "$after" ] || fail "unknown-type bitmap changed: $before -> $after"
# QEMU refuses type 2; as type 1 again, everything checks.
patch_entry "$img" x 16 01
check_image "$img"
assert_valid "$img" a0 a1
assert_map "$img" a0 65536 "$tmpdir/foreign.ops"
assert_map "$img" a1 512 "$tmpdir/foreign.ops"
bitmap_map "$img" x "$tmpdir/got.x"
[ ! -s "$tmpdir/got.x" ] || fail "the unknown-type bitmap got bits"
# 5b. An enabled ("auto") bitmap with an unknown flag cannot be kept
# valid: the autoclear bit is cleared, so QEMU ignores all bitmaps (and
# drops them at its next read-write open); never a bitmap that looks valid.
img=$tmpdir/unknown.qcow2
qemu-img create -q -f qcow2 "$img" $size
qemu-img bitmap --add "$img" u0
qemu-img bitmap --add "$img" u1
patch_entry "$img" u0 12 0000000a         # auto | bit 3
qemu-img info "$img" >/dev/null 2>&1 && fail "setup: QEMU accepts flag bit 3"
write_through_plugin "$img" "$tmpdir/foreign.ops"
out=$(qemu-img info -U --output=json "$img" 2>&1) ||
  fail "qemu-img info after the write: $out"
[ "$(bitmap_flags "$img" u1)" = missing ] ||
  fail "bitmap u1 still listed as valid: $(qemu-img info -U "$img")"
rc=0; out=$(qemu-img check "$img" 2>&1) || rc=$?
case $rc in 0|3) ;; *) fail "qemu-img check exit $rc: $out" ;; esac
# 5c. A hostile table entry pointing at the L1 table: the bitmap is not
# written there (the image is given up on as in 5b), the data is intact.
img=$tmpdir/hostile.qcow2
qemu-img create -q -f qcow2 "$img" $size
qemu-img bitmap --add "$img" h0
pos=$(dir_entries "$img" | awk '$1 == "h0" { print $2 }')
python3 -c '
import struct, sys
f = open(sys.argv[1], "r+b")
f.seek(40); l1 = struct.unpack(">Q", f.read(8))[0]
f.seek(int(sys.argv[2])); tab = struct.unpack(">Q", f.read(8))[0]
f.seek(tab); f.write(struct.pack(">Q", l1))' "$img" "$pos"
printf 'write -P 0x3c 0 65536\nwrite -P 0x3d 30000000 70000\nflush\n' \
  > "$tmpdir/hostile.ops"
write_through_plugin "$img" "$tmpdir/hostile.ops"
qemu_io_cmds -f qcow2 -c "read -P 0x3c 0 65536" \
  -c "read -P 0x3d 30000000 70000" "$img"
echo "foreign bitmaps: OK"
echo "bitmaps: OK"
