#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# Growing an LV used as the thin pool (--filter=thin over this project's
# lvm plugin), with lvm2's own lvextend on a VG on a loop device:
#  1. a connection fills the pool to ENOSPC; lvextend by hand; the SAME
#     connection then writes into the new space (until ENOSPC again, as
#     many chunks as the LV grew by), and a new connection to the same
#     server (no restart) sees the grown pool and every byte written;
#  2. thin-warn + thin-hook=lvextend: the hook grows the LV while one
#     connection writes twice the LV's first size without ENOSPC.
# Each time: data written before the growth reads back, nbdkit-thin-check
# finds the metadata clean, vgck accepts the VG and lvs reports the LV
# size that the filter reports as its pool.
source "${TOP_SRCDIR:?run the tests through ctest, which sets TOP_SRCDIR}/tests/functions.sh"
source "$TOP_SRCDIR/tests/thin/thin-lib.sh"
source "$TOP_SRCDIR/tests/lvm/lvm-lib.sh"
requires vgck

M=$((1024 * 1024))
C=65536
sock=$tmpdir/g.sock
uri=$(uri_of "$sock")
pv=$tmpdir/pv.img
truncate -s 96M "$pv"
lvm_attach "$pv" loop
lvm_q pvcreate -q "$loop"
lvm_q vgcreate -q -s 4m tvg "$loop"
pe_start=$(pvs --noheadings --units b --nosuffix -o pe_start "$loop" | tr -d ' ')
[ -n "$pe_start" ] || fail "cannot read pe_start of $loop"

lv_bytes () {
  lvs --noheadings --units b --nosuffix -o lv_size "tvg/$1" | tr -d ' '
}
# lv_image LV: a file holding the LV's bytes now (the LV must be one
# linear segment; lvs tells where it starts).
lv_image () {
  local seg pe
  seg=$(lvs --noheadings --segments -o seg_pe_ranges "tvg/$1" | tr -d ' ')
  [[ $seg =~ ^$loop:([0-9]+)-[0-9]+$ ]] ||
    fail "LV $1 is not one linear segment: $seg"
  pe=${BASH_REMATCH[1]}
  dd if="$pv" of="$tmpdir/$1.img" bs=1M iflag=skip_bytes \
     skip=$((pe_start + pe * 4 * M)) count=$(( $(lv_bytes "$1") / M )) \
     status=none
  echo "$tmpdir/$1.img"
}
# pool_mib: the pool size in the export description ("pool N.N MiB").
pool_mib () {
  thin_desc "$uri" | sed -n 's/.*pool \([0-9.]*\) MiB.*/\1/p'
}
# after LV: vgck accepts the VG; the checker, run on as many bytes as lvs
# says the LV has, finds the metadata clean and counts as many physical
# chunks as the filter reports for its pool.
after () {
  local lv=$1 img out nphys
  lvm_q vgck tvg
  nbdsh -u "$uri" -c 'h.flush()'
  img=$(lv_image "$lv")
  thin_check "$img"
  out=$("$thin_check_bin" "$img")
  nphys=$(sed -n 's/.* \([0-9]*\) physical chunks.*/\1/p' <<<"$out")
  [ -n "$nphys" ] || fail "no chunk count in: $out"
  [ "$(pool_mib)" = "$(awk "BEGIN { printf \"%.1f\", $nphys / 16 }")" ] ||
    fail "lvs: $lv has $(lv_bytes "$lv") bytes ($nphys chunks); the filter: $(thin_desc "$uri")"
  echo "$lv: $(lv_bytes "$lv") bytes in lvs, $nphys pool chunks, vgck clean"
}
# nbdkit's log on failure.
logfail () { fail "$1; nbdkit log: $(tail -30 "$tmpdir/nbdkit.log")"; }
serve () {
  local lv=$1; shift
  rm -f "$sock"
  start_nbdkit "$sock" --filter="$(filter_so thin)" "$(plugin_so lvm)" \
    "pv=$pv" vg=tvg "lv=$lv" thin-size=1G -v "$@" 2>> "$tmpdir/nbdkit.log"
}

# --- 1. grown by hand after ENOSPC -----------------------------------------
lvm_q lvcreate -q -an -Zn -L 8M -n tlv tvg
serve tlv
nbdsh -u "$uri" -c "
import subprocess, time
C = $C
def fill(v):
    while True:
        try:
            h.pwrite(bytes([v % 251 + 1]) * C, v * C)
        except nbd.Error as e:
            assert e.errno in ('ENOSPC', 28), e
            return v
        v += 1
full1 = fill(0)
# Still full: rewrites work, new chunks do not.
h.pwrite(b'r' * C, 0)
try:
    h.pwrite(b'x' * C, full1 * C)
    raise SystemExit('no ENOSPC at chunk %d' % full1)
except nbd.Error as e:
    assert e.errno in ('ENOSPC', 28), e
subprocess.run(['lvextend', '-q', '-L', '+8M', 'tvg/tlv', '$loop'],
               check=True, stdout=subprocess.DEVNULL)
time.sleep(1.1)   # the filter asks the layer below at most once a second
full2 = fill(full1)
h.flush()
grown = full2 - full1
print('full at %d chunks; %d more on the same connection after lvextend'
      % (full1, grown))
assert grown == 8 * 1024 * 1024 // C, grown
for v in range(0, full2):
    want = b'r' * C if v == 0 else bytes([v % 251 + 1]) * C
    assert h.pread(C, v * C) == want, v
open('$tmpdir/full2', 'w').write(str(full2))
" || logfail "growth by hand"
full2=$(cat "$tmpdir/full2")
# A new connection to the same server: the grown pool, the same data.
nbdsh -u "$uri" -c "
C = $C
for v in range(1, $full2):
    assert h.pread(C, v * C) == bytes([v % 251 + 1]) * C, v
"
echo "new connection: $(thin_desc "$uri")"
[ "$(lv_bytes tlv)" = $((16 * M)) ] || fail "lvs: tlv is $(lv_bytes tlv) bytes"
after tlv
stop_nbdkit

# --- 2. grown by thin-hook -------------------------------------------------
lvm_q lvcreate -q -an -Zn -L 8M -n hlv tvg
hooklog=$tmpdir/hook.log
: > "$hooklog"
serve hlv thin-warn=75% \
  "thin-hook=lvextend -q -L +8M tvg/hlv '$loop' >/dev/null && echo \$THIN_POOL_BYTES >> '$hooklog'"
nbdsh -u "$uri" -c "
C = $C
n = 16 * 1024 * 1024 // C      # twice the LV's first size
for v in range(n):
    h.pwrite(bytes([v % 249 + 7]) * C, v * C)
h.flush()
for v in range(n):
    assert h.pread(C, v * C) == bytes([v % 249 + 7]) * C, v
print('%d chunks written without ENOSPC' % n)
" || logfail "growth by thin-hook"
hooks=$(wc -l < "$hooklog")
(( hooks >= 2 )) || fail "the hook ran $hooks times: $(cat "$hooklog")"
echo "hook ran $hooks times (pool bytes seen: $(tr '\n' ' ' < "$hooklog"))"
(( $(lv_bytes hlv) == (8 + 8 * hooks) * M )) ||
  fail "lvs: hlv is $(lv_bytes hlv) bytes after $hooks hooks"
after hlv
stop_nbdkit

# Restarted: the metadata and data of both pools are still there.
serve tlv
nbdsh -u "$uri" -c "
C = $C
for v in range(1, $full2, 7):
    assert h.pread(C, v * C) == bytes([v % 251 + 1]) * C, v
"
after tlv
stop_nbdkit
# --- 3. never another LV ----------------------------------------------------
# The filter asks for the pool size again through a shared context, in
# which the lvm plugin opens its default LV (lv=), not the connection's:
# so it does that only for a connection to the default export.  With a
# larger default LV than the full pool of the connection's LV, the filter
# must keep ENOSPC and leave the default LV untouched.
lvm_q lvcreate -q -an -Zn -L 32M -n big tvg
log_from=$(( $(wc -l < "$tmpdir/nbdkit.log") + 1 ))
serve big
nbdsh -u "$(uri_of "$sock" hlv)" -c "
import time
C = $C
v = 256
while True:
    try:
        h.pwrite(b'h' * C, v * C)
    except nbd.Error as e:
        assert e.errno in ('ENOSPC', 28), e
        break
    v += 1
time.sleep(1.1)
try:
    h.pwrite(b'h' * C, v * C)
    raise SystemExit('a write past the full pool of hlv succeeded')
except nbd.Error as e:
    assert e.errno in ('ENOSPC', 28), e
h.flush()
print('hlv full at %d chunks, still ENOSPC' % v)
" || logfail "another LV as the pool"
! tail -n +$log_from "$tmpdir/nbdkit.log" | grep -q "export 'hlv': the layer below has" ||
  logfail "the filter took another LV's size as the pool of hlv"
cmp -n $((32 * M)) "$(lv_image big)" /dev/zero ||
  fail "the default LV 'big' was written through the export hlv"
stop_nbdkit
echo PASS
