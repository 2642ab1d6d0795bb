#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# thin-exports=one (the default): the layer below may store every export
# name in the same place, so the one pool is reached under any name, and
# what it reported (watermark crossed, pool full) must not depend on the
# name the client used.
source "${TOP_SRCDIR:?run the tests through ctest, which sets TOP_SRCDIR}/tests/functions.sh"
source "$TOP_SRCDIR/tests/thin/thin-lib.sh"

pool=$tmpdir/pool.img
sock=$tmpdir/w.sock
hooklog=$tmpdir/hook.log
truncate -s 64M "$pool"
: > "$hooklog"
# write_chunks NAME FIRST COUNT: full chunks, on export NAME.
write_chunks () {
  nbdsh -u "$(uri_of "$sock" "$1")" -c "
C = 65536
for v in range($2, $2 + $3):
    h.pwrite(bytes([v % 251 + 1]) * C, v * C)
h.flush()
"
}
hooks () { wc -l < "$hooklog"; }

start_nbdkit "$sock" --filter="$(filter_so thin)" file "$pool" \
  thin-size=1G thin-warn=50% "thin-hook=echo \$THIN_EXPORT >> '$hooklog'" \
  2> "$tmpdir/nbdkit.log"
thin_desc "$(uri_of "$sock" a)" >/dev/null
nphys=$("$thin_check_bin" "$pool" | sed -n 's/.* \([0-9]*\) physical chunks.*/\1/p')
mark=$(( (nphys * 50 + 99) / 100 ))
write_chunks a 0 "$mark"
[ "$(hooks)" = 1 ] || fail "hook did not run at the crossing: $(cat "$hooklog")"
# Hovering at the mark, reconnecting under other names each time: the
# same pool, within 2% of the mark, so no new crossing.
prev=a
for n in b c d; do
  nbdsh -u "$(uri_of "$sock" $prev)" -c "h.trim(65536, ($mark - 1) * 65536); h.flush()"
  write_chunks $n $((mark - 1)) 1
  prev=$n
done
[ "$(hooks)" = 1 ] ||
  fail "hook ran $(hooks) times for one crossing of one pool: $(tr '\n' ' ' < "$hooklog")"
! grep 'already at or above' "$tmpdir/nbdkit.log" ||
  fail "the same pool's crossing was reported again under another name"
stop_nbdkit
echo PASS
