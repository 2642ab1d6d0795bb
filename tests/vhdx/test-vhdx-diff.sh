#!/bin/bash
# SPDX-License-Identifier: BSD-3-Clause
# Differencing disks.  A child created by the plugin (create=0
# type=differencing parent=...) over a qemu-io-filled parent, written
# through the plugin with a seeded workload, reads as parent + writes
# (mirror: qemu-img convert of the parent + the same qemu-io commands); the
# parent stays byte-identical.  A PARTIALLY_PRESENT block with a sector
# bitmap (made from the specification by vhdx-tool.py partial) reads its
# set sectors from the child and the others from the parent, also after a
# write into that block, and it keeps its place in the file when written,
# zeroed or trimmed.  A parent whose DataWriteGuid no longer matches
# the child's parent_linkage is refused with a clear message unless
# ignore-parent-linkage=true; a parent outside the child's directory is
# refused unless allow-parent-path= names its directory.  parent=none
# serves the child read-only.
source "${TOP_SRCDIR:?run the tests through ctest, which sets TOP_SRCDIR}/tests/functions.sh"
source "$TOP_SRCDIR/tests/vhdx/vhdx-functions.sh"
requires_nbdsh
cd "$tmpdir"
M=$((1024*1024))
size=$((24*M))

qemu-img create -q -f vhdx -o block_size=1M parent.vhdx $size
gen_ops --mode fill --seed 5 --size $size --count 20 --cluster $M > fill.ops
qemu_io_cmds -f vhdx parent.vhdx < fill.ops
qemu-img convert -f vhdx -O raw parent.vhdx parent.raw
psum=$(md5 parent.vhdx)

# Create the child through the plugin and write into it.
new_sock
serve "$sock" child.vhdx create=0 type=differencing parent="$tmpdir/parent.vhdx" block-size=1M
[ "$(nbdinfo --size "$(uri_of "$sock")")" = $size ] || fail "child size"
nbdcopy "$(uri_of "$sock")" child0.got
assert_same parent.raw child0.got "fresh child"
cp parent.raw mirror.raw
gen_ops --mode mirror --seed 7 --size $size --count 50 --cluster $M > w.ops
qemu_io_cmds -f raw "$(uri_of "$sock")" < w.ops
stop_nbdkit
qemu_io_cmds -f raw mirror.raw < w.ops
[ "$(md5 parent.vhdx)" = "$psum" ] || fail "writing the child changed the parent"
new_sock
serve "$sock" child.vhdx -r
nbdcopy "$(uri_of "$sock")" child.got
stop_nbdkit
assert_same mirror.raw child.got "child = parent + writes"
echo "ok child written"

# parent=none: read-only (a write would fill the rest of a new block with
# zeroes where the parent has data), and the child is left as it was.
csum=$(md5 child.vhdx)
new_sock
serve "$sock" child.vhdx parent=none
nbdinfo "$(uri_of "$sock")" | grep -q 'is_read_only: true' ||
  fail "parent=none served the child writable"
if qemu-io -f raw -c 'write 0 512' "$(uri_of "$sock")" >/dev/null 2>&1; then
  fail "a write with parent=none succeeded"
fi
stop_nbdkit
[ "$(md5 child.vhdx)" = "$csum" ] || fail "parent=none changed the child"
echo "ok parent=none is read-only"

# Sector bitmaps: a fresh child with one partially present block.
new_sock
serve "$sock" part.vhdx create=0 parent="$tmpdir/parent.vhdx" block-size=1M -r
stop_nbdkit
vtool partial part.vhdx parent.raw part.want 11
new_sock
serve "$sock" part.vhdx
nbdcopy "$(uri_of "$sock")" part.got
assert_same part.want part.got "partially present block"
# A write into the partially present block (copy-on-write of the rest).
printf 'write -P 0x5a %d 3000\nflush\n' $((M + 1000)) > p.ops
qemu_io_cmds -f raw "$(uri_of "$sock")" < p.ops
stop_nbdkit
qemu_io_cmds -f raw part.want < p.ops
new_sock
serve "$sock" part.vhdx -r
nbdcopy "$(uri_of "$sock")" part2.got
stop_nbdkit
assert_same part.want part2.got "after writing into the partial block"
echo "ok sector bitmap"

# A partially present block keeps its place in the file when it is
# written into, zeroed or trimmed whole, and then written again: the file
# does not grow (completing it elsewhere, or dropping its entry, would
# leave its old space unused for good).  Zeroed or trimmed, it reads as
# zeroes, not as the parent.
for op in write zero trim; do
  rm -f "pz-$op.vhdx"
  new_sock
  serve "$sock" "pz-$op.vhdx" create=0 parent="$tmpdir/parent.vhdx" block-size=1M -r
  stop_nbdkit
  vtool partial "pz-$op.vhdx" parent.raw "pz-$op.want" 13
  size0=$(stat -c %s "pz-$op.vhdx")
  case $op in
    write) sent="h.pwrite(b'\x5a' * 3072, $((M + 1024)))"
           want="write -P 0x5a $((M + 1024)) 3072" ;;
    zero)  sent="h.zero($M, $M)"; want="write -z $M $M" ;;
    trim)  sent="h.trim($M, $M)"; want="write -z $M $M" ;;
  esac
  new_sock
  serve "$sock" "pz-$op.vhdx"
  nbdsh -u "$(uri_of "$sock")" -c "$sent" \
    -c "h.pwrite(b'\x3c' * 4096, $((M + 512)))" -c "h.flush()" ||
    fail "$op into the partially present block"
  stop_nbdkit
  printf '%s\nwrite -P 0x3c %d 4096\n' "$want" $((M + 512)) |
    qemu_io_cmds -f raw "pz-$op.want"
  [ "$(stat -c %s "pz-$op.vhdx")" = "$size0" ] ||
    fail "$op: the file grew from $size0 to $(stat -c %s "pz-$op.vhdx") bytes"
  new_sock
  serve "$sock" "pz-$op.vhdx" -r
  nbdcopy "$(uri_of "$sock")" "pz-$op.got"
  stop_nbdkit
  assert_same "pz-$op.want" "pz-$op.got" "partially present block after $op"
done
echo "ok partially present blocks stay in place"

# Linkage: change the parent (a write gives it a new DataWriteGuid).
cp parent.vhdx parent.orig
new_sock
serve "$sock" parent.vhdx
printf 'write -P 0x77 0 4096\n' | qemu_io_cmds -f raw "$(uri_of "$sock")"
stop_nbdkit
new_sock
if nbdkit -U "$sock" "$VHDX_PLUGIN" file=child.vhdx -r --run 'nbdinfo --size "$uri"' > link.out 2>&1; then
  fail "a child whose parent changed was opened"
fi
grep -q "DataWriteGuid" link.out || fail "no clear linkage message: $(cat link.out)"
new_sock
nbdkit -U "$sock" "$VHDX_PLUGIN" file=child.vhdx -r ignore-parent-linkage=true \
  --run 'nbdinfo --size "$uri"' > /dev/null 2>&1 || fail "ignore-parent-linkage=true did not open"
mv parent.orig parent.vhdx
echo "ok linkage"

# Confinement: the parent in another directory, named by absolute path.
# Creating the child there needs the parent's directory allowed too (the
# plugin opens the new image at start-up); without it, nbdkit stops and
# leaves no child behind.
mkdir -p other kid
cp parent.vhdx other/p.vhdx
out=$(nbdkit_stops 20 -U "$tmpdir/c.sock" "$VHDX_PLUGIN" file=kid/c.vhdx create=0 \
        parent="$tmpdir/other/p.vhdx" -r --run true)
grep -q "the new image cannot be opened: removed" <<<"$out" ||
  fail "no clear message: $out"
[ ! -e kid/c.vhdx ] || fail "the child that cannot be opened was left"
new_sock
serve "$sock" kid/c.vhdx create=0 parent="$tmpdir/other/p.vhdx" \
  allow-parent-path="$tmpdir/other" -r
stop_nbdkit
# Served again: the parent's directory must still be allowed.
out=$(nbdkit_stops 20 -U "$tmpdir/c.sock" "$VHDX_PLUGIN" file=kid/c.vhdx -r \
        --run true)
grep -qi "parent" <<<"$out" || fail "no clear message: $out"
new_sock
nbdkit -U "$sock" "$VHDX_PLUGIN" file=kid/c.vhdx -r allow-parent-path="$tmpdir/other" \
  --run 'nbdcopy "$uri" kid.got' || fail "allow-parent-path= did not allow the parent"
assert_same parent.raw kid.got "child in another directory"
echo "ok confinement"

# The locator holds the way from the child's directory to the parent, in
# Windows form, and no Linux path as absolute_win32_path: the pair still
# opens after both directories moved together.
python3 - kid/c.vhdx <<'PY' || fail "parent locator of kid/c.vhdx"
import sys
data = open(sys.argv[1], 'rb').read()
u = lambda s: s.encode('utf-16-le')
assert u('relative_path') in data and u('..\\other\\p.vhdx') in data, 'relative_path'
assert u('absolute_win32_path') not in data, 'absolute_win32_path written'
PY
mkdir moved
mv kid other moved/
new_sock
nbdkit -U "$sock" "$VHDX_PLUGIN" file=moved/kid/c.vhdx -r \
  allow-parent-path="$tmpdir/moved/other" --run 'nbdcopy "$uri" moved.got' ||
  fail "the child did not find its parent after the pair moved"
assert_same parent.raw moved.got "child and parent moved together"
echo "ok relative parent locator"
