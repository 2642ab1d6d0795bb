#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# The thin filter over nbdkit's file plugin (THIN_TEST_SERVE=lvm: over an
# LV of this project's lvm plugin): a 1 GiB virtual disk over a 64 MiB
# pool.  Writes up to the pool's size read back (nbdcopy vs a raw
# mirror), the next allocating write fails with ENOSPC and changes
# nothing while rewrites work, trim frees chunks that later writes reuse,
# zero writes allocate nothing, the metadata survives a restart, and
# nbdkit-thin-check finds the metadata clean -- and finds planted faults.
source "${TOP_SRCDIR:?run the tests through ctest, which sets TOP_SRCDIR}/tests/functions.sh"
source "$TOP_SRCDIR/tests/thin/thin-lib.sh"

mirror=$tmpdir/mirror.raw
sock=$tmpdir/t.sock
uri=$(uri_of "$sock")
truncate -s 1G "$mirror"
thin_setup_pool
start_thin () { thin_serve "$sock" "$@"; }
compare_mirror () {
  echo "compare ($1) at ${SECONDS}s"
  qemu-img compare -f raw -F raw "$uri" "$mirror" >/dev/null ||
    fail "thin export vs mirror ($1): $(qemu-img compare -f raw -F raw "$uri" "$mirror" 2>&1)"
}

start_thin thin-size=1G
desc=$(thin_desc "$uri")
echo "description: $desc"
grep -q 'virtual 1.0 GiB' <<<"$desc" || fail "description: $desc"
# Physical chunks: from the checker (the metadata was committed at format).
nphys=$("$thin_check_bin" "$(pool_image)" | sed -n 's/.* \([0-9]*\) physical chunks.*/\1/p')
[ -n "$nphys" ] && (( nphys > 1000 && nphys < 1024 )) ||
  fail "unexpected physical chunk count '$nphys'"
echo "pool: $nphys chunks of 64 KiB"

# 1. Fill the pool, mirroring every write; then ENOSPC.
nbdsh -u "$uri" -c "
import os, errno
C = 65536
NV = 16384
P = $nphys
m = open('$mirror', 'r+b')
def w(data, off):
    h.pwrite(data, off)
    m.seek(off); m.write(data)
vs = [(i * 7919) % NV for i in range(NV)]
for i in range(P):
    v = vs[i]
    if i % 5 == 0:      # partial chunk: the rest must read as zeroes
        w(os.urandom(10000), v * C + 1234)
    else:
        w(os.urandom(C), v * C)
h.flush()
# Full: the next allocating write fails with ENOSPC ...
v = vs[P]
try:
    h.pwrite(b'x' * 512, v * C)
    raise SystemExit('allocating write into a full pool succeeded')
except nbd.Error as e:
    assert e.errno in ('ENOSPC', errno.ENOSPC), e
# ... a write spanning a mapped and an unmapped chunk changes neither ...
a = vs[1]
assert (a + 1) not in vs[:P]
before = h.pread(C, a * C)
try:
    h.pwrite(b'y' * (2 * C), a * C)
    raise SystemExit('spanning allocating write succeeded')
except nbd.Error as e:
    assert e.errno in ('ENOSPC', errno.ENOSPC), e
assert h.pread(C, a * C) == before, 'ENOSPC write changed a mapped chunk'
assert h.pread(C, (a + 1) * C) == bytes(C)
# ... rewrites of allocated chunks work, also with FUA ...
for i in (2, 3, 7):
    w(os.urandom(C), vs[i] * C)
w(os.urandom(3000), vs[4] * C + 5000)
data = os.urandom(C); h.pwrite(data, vs[6] * C, nbd.CMD_FLAG_FUA)
m.seek(vs[6] * C); m.write(data)
# ... and all-zero writes and write-zeroes of unmapped chunks succeed.
h.pwrite(bytes(C), vs[P + 1] * C)
h.pwrite(bytes(3 * C), vs[P + 2] * C)
h.zero(4 * C, 900 * 1024 * 1024)
h.flush()
m.close()
"
compare_mirror "full pool"
thin_check "$(pool_image)"
# Progress: on a terminal (script(1) from bsdutils provides one) the
# checker redraws one "\r" line on stderr up to 100%; without a terminal
# (thin_check above captures 2>&1) it draws none.
out=$("$thin_check_bin" "$(pool_image)" 2>&1)
! grep -q 'thin check:' <<<"$out" || fail "progress without a terminal: $out"
out=$(script -qec "$(printf '%q ' "$thin_check_bin" "$(pool_image)")" /dev/null) ||
  fail "nbdkit-thin-check on a terminal: $out"
grep -q $'\r.*thin check: 100%' <<<"$out" || fail "no progress line on a terminal: $out"
[ "$(grep -o 'thin check: *[0-9]*%' <<<"$out" | wc -l)" -ge 3 ] ||
  fail "progress on a terminal: fewer than 3 updates: $out"
grep -q ': clean' <<<"$out" || fail "nbdkit-thin-check on a terminal: $out"
read -r _ mapped _ used _ <<<"$(thin_meta summary "$(pool_image)")"
[ "$mapped" = "$nphys" ] && [ "$used" = "$nphys" ] ||
  fail "metadata: $mapped mapped, $used used, expected $nphys"
grep -q '(100%)' <<<"$(thin_desc "$uri")" || fail "description: $(thin_desc "$uri")"
# block status: exactly the mapped chunks are data.
data_bytes=$(nbdinfo --map --totals "$uri" | awk '$3 == 0 {print $1}')
[ "$data_bytes" = $((nphys * 65536)) ] ||
  fail "block status: $data_bytes data bytes, expected $((nphys * 65536))"

# 2. Trim frees whole chunks, which later writes reuse (without an
# explicit flush in between: a full pool commits to reuse them).
nbdsh -u "$uri" -c "
import os
C = 65536
NV = 16384
P = $nphys
m = open('$mirror', 'r+b')
vs = [(i * 7919) % NV for i in range(NV)]
for i in range(10, 30):
    h.trim(C, vs[i] * C)
    m.seek(vs[i] * C); m.write(bytes(C))
h.trim(1000, vs[40] * C + 100)      # partial: advisory, nothing freed
for i in range(P + 5, P + 25):
    d = os.urandom(C)
    h.pwrite(d, vs[i] * C)
    m.seek(vs[i] * C); m.write(d)
h.flush()
m.close()
"
compare_mirror "after trim and reuse"
thin_check "$(pool_image)"
read -r _ mapped _ used _ <<<"$(thin_meta summary "$(pool_image)")"
[ "$mapped" = "$nphys" ] || fail "after reuse: $mapped mapped, expected $nphys"

# 3. Zero writes allocate nothing; write-zeroes over whole chunks frees
# them (qemu-io as the client) and trims them below.
blocks0=$(stat -c %b "$(pool_image)")
nbdsh -u "$uri" -c "
C = 65536
vs = [(i * 7919) % 16384 for i in range(16384)]
for i in range(50, 80):
    h.zero(C, vs[i] * C)
h.flush()
"
python3 - "$mirror" "$nphys" <<'PY'
import sys
C = 65536
vs = [(i * 7919) % 16384 for i in range(16384)]
with open(sys.argv[1], 'r+b') as m:
    for i in range(50, 80):
        m.seek(vs[i] * C); m.write(bytes(C))
PY
used0=$(thin_meta summary "$(pool_image)" | awk '{print $4}')
if [ "$thin_mode" = file ]; then
  # 30 chunks of 64 KiB punched in the file below (stat counts 512 bytes;
  # allow for the file system's own accounting).
  blocks1=$(stat -c %b "$pool")
  (( blocks0 - blocks1 >= 29 * 128 )) ||
    fail "released chunks were not trimmed below: $blocks0 -> $blocks1 blocks"
fi
[ "$used0" = $((nphys - 30)) ] || fail "write-zeroes freed $((nphys - used0)) chunks, expected 30"
# A run of 48 unmapped chunks (from the independent metadata reader).
z=$(python3 - "$nphys" <<'PY'
import sys
P = int(sys.argv[1])
vs = [(i * 7919) % 16384 for i in range(16384)]
mapped = set(vs[:P]) - set(vs[10:30]) - set(vs[50:80]) | set(vs[P + 5:P + 25])
v = next(v for v in range(16384 - 48) if not mapped & set(range(v, v + 48)))
print(v * 65536)
PY
)
qemu-io -f raw "$uri" >/dev/null <<EOF
write -P 0 $z 1M
write -z $((z + 1048576)) 1M
write -z -u $((z + 2097152)) 512k
write -P 0 $((z + 2621440)) 4k
flush
EOF
used1=$(thin_meta summary "$(pool_image)" | awk '{print $4}')
[ "$used1" = "$used0" ] || fail "zero writes allocated: used $used0 -> $used1"
compare_mirror "after zero writes"

# 4. The metadata survives a restart (thin-size taken from the pool).
stop_nbdkit
start_thin
compare_mirror "after restart"
desc=$(thin_desc "$uri")
grep -q 'virtual 1.0 GiB' <<<"$desc" || fail "after restart: $desc"
stop_nbdkit
thin_check "$(pool_image)"

[ "$thin_mode" = file ] || { echo PASS; exit 0; }

# 5. The checker finds planted faults; the filter refuses inconsistent
# metadata and reclaims a leak.
for fault in double leak range; do
  cp --sparse=always "$pool" "$tmpdir/$fault.img"
  thin_meta plant "$tmpdir/$fault.img" $fault
  set +e
  out=$("$thin_check_bin" "$tmpdir/$fault.img" 2>&1); rc=$?
  set -e
  [ $rc = 1 ] || fail "checker exit $rc on a planted $fault: $out"
  case $fault in
    double) pat='mapped twice' ;;
    leak) pat='(leak)' ;;
    range) pat='outside the pool' ;;
  esac
  grep -qF "$pat" <<<"$out" || fail "checker missed the planted $fault: $out"
done
start_nbdkit "$tmpdir/d.sock" --filter="$(filter_so thin)" file "$tmpdir/double.img"
if nbdinfo "$(uri_of "$tmpdir/d.sock")" >/dev/null 2>&1; then
  fail "the filter served a pool with a double mapping"
fi
start_nbdkit "$tmpdir/l.sock" --filter="$(filter_so thin)" file "$tmpdir/leak.img"
nbdinfo "$(uri_of "$tmpdir/l.sock")" >/dev/null
thin_check "$tmpdir/leak.img"

# A header whose count of used chunks is wrong: the checker reports it,
# the filter corrects it.
cp --sparse=always "$pool" "$tmpdir/used.img"
thin_meta plant "$tmpdir/used.img" used
set +e
out=$("$thin_check_bin" "$tmpdir/used.img" 2>&1); rc=$?
set -e
[ $rc = 1 ] && grep -qF "header says" <<<"$out" ||
  fail "checker exit $rc on a wrong used count: $out"
start_nbdkit "$tmpdir/u.sock" --filter="$(filter_so thin)" file "$tmpdir/used.img"
nbdinfo "$(uri_of "$tmpdir/u.sock")" >/dev/null
thin_check "$tmpdir/used.img"

# A hostile 8 KiB pool whose header (valid, checksummed) claims 2^28
# chunks: the checker reports the metadata cut short without allocating
# the 2 GiB its map would take (bounded here in the normal build; ASan
# reserves more address space than any such bound), and the filter
# refuses the pool.
thin_meta forge "$tmpdir/huge.img" $((1 << 28))
set +e
out=$( [ "$KVM_SANITIZE" = 0 ] && ulimit -v $((512 * 1024))
       "$thin_check_bin" "$tmpdir/huge.img" 2>&1); rc=$?
set -e
[ $rc = 1 ] || fail "checker exit $rc on a truncated hostile pool: $out"
grep -qF "virtual chunks needs" <<<"$out" ||
  fail "checker did not report the truncated metadata: $out"
start_nbdkit "$tmpdir/h.sock" --filter="$(filter_so thin)" file "$tmpdir/huge.img"
if nbdinfo "$(uri_of "$tmpdir/h.sock")" >/dev/null 2>&1; then
  fail "the filter served a pool whose metadata is cut short"
fi

# A header whose seq does not belong in its slot (transaction T is written
# to slot T & 1) is invalid, as if its checksum were wrong: the older slot
# is served.  Otherwise the next commits would rewrite the current slot and
# then publish the other one with the table block of the last transaction
# (chunk 5 * 1023, table block 5) missing: a leak the checker finds.
truncate -s 64M "$tmpdir/slot.img"
start_nbdkit "$tmpdir/ws1.sock" --filter="$(filter_so thin)" file "$tmpdir/slot.img" thin-size=1G
nbdsh -u "$(uri_of "$tmpdir/ws1.sock")" -c "
h.pwrite(b'a' * 65536, 0); h.flush()
h.pwrite(b'b' * 65536, 5 * 1023 * 65536); h.flush()"
stop_nbdkit
thin_meta plant "$tmpdir/slot.img" wrongslot
out=$("$thin_check_bin" -v "$tmpdir/slot.img" 2>&1) ||
  fail "checker on a header in the wrong slot: $out"
grep -qF "does not belong in slot" <<<"$out" ||
  fail "checker did not reject the header in the wrong slot: $out"
start_nbdkit "$tmpdir/ws2.sock" --filter="$(filter_so thin)" file "$tmpdir/slot.img"
nbdsh -u "$(uri_of "$tmpdir/ws2.sock")" -c "
h.pwrite(b'c' * 65536, 65536); h.flush()
h.pwrite(b'd' * 65536, 2 * 65536); h.flush()
assert h.pread(65536, 0) == b'a' * 65536
assert h.pread(65536, 5 * 1023 * 65536) == bytes(65536)  # the older slot"
stop_nbdkit
thin_check "$tmpdir/slot.img"

# 6. A pool with data where the metadata should be is not formatted.
head -c 1M /dev/urandom > "$tmpdir/junk.img"
cp "$tmpdir/junk.img" "$tmpdir/junk.orig"
truncate -s 64M "$tmpdir/junk.img"
start_nbdkit "$tmpdir/j.sock" --filter="$(filter_so thin)" file "$tmpdir/junk.img" thin-size=1G
if nbdinfo "$(uri_of "$tmpdir/j.sock")" >/dev/null 2>&1; then
  fail "the filter formatted a pool holding data"
fi
cmp -n 1M "$tmpdir/junk.img" "$tmpdir/junk.orig" >/dev/null ||
  fail "the filter changed a pool holding data"
echo PASS
