#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# thin-warn and thin-hook: the warning and the hook fire once per crossing
# of the watermark (again after usage fell below it and a commit made
# that final); a hook that grows the file below makes the new space usable
# on the same connection; a pool grown by hand after ENOSPC is used too.
source "${TOP_SRCDIR:?run the tests through ctest, which sets TOP_SRCDIR}/tests/functions.sh"
source "$TOP_SRCDIR/tests/thin/thin-lib.sh"

pool=$tmpdir/pool.img
sock=$tmpdir/w.sock
uri=$(uri_of "$sock")
hooklog=$tmpdir/hook.log
truncate -s 64M "$pool"
: > "$hooklog"

# write_chunks FIRST COUNT [EXPECT]: COUNT full chunks at virtual chunks
# FIRST, FIRST+1, ... (fresh data each); EXPECT=enospc: the last one must
# fail with ENOSPC, all before it succeed.
write_chunks () {
  nbdsh -u "$uri" -c "
import os
C = 65536
for v in range($1, $1 + $2):
    try:
        h.pwrite(bytes([v % 251 + 1]) * C, v * C)
    except nbd.Error as e:
        if '${3:-}' == 'enospc' and v == $1 + $2 - 1 and e.errno in ('ENOSPC', 28):
            break
        raise
else:
    if '${3:-}' == 'enospc':
        raise SystemExit('no ENOSPC')
h.flush()
"
}
hooks () { wc -l < "$hooklog"; }
warnings () { grep -c 'reached thin-warn=' "$tmpdir/nbdkit.log" || :; }

start_nbdkit "$sock" -v -D thin.stats=1 --filter="$(filter_so thin)" file "$pool" \
  thin-size=1G thin-warn=50% "thin-hook=echo \$THIN_USED_PERCENT \$THIN_USED_BYTES \$THIN_POOL_BYTES \$THIN_EXPORT >> '$hooklog'" \
  2> "$tmpdir/nbdkit.log"
thin_desc "$uri" >/dev/null   # the first connection formats the pool
nphys=$("$thin_check_bin" "$pool" | sed -n 's/.* \([0-9]*\) physical chunks.*/\1/p')
mark=$(( (nphys * 50 + 99) / 100 ))     # first usage count at >= 50%
echo "pool $nphys chunks, watermark at $mark"

write_chunks 0 $((mark - 1))
[ "$(hooks)" = 0 ] || fail "hook ran below the watermark: $(cat "$hooklog")"
write_chunks $((mark - 1)) 1
[ "$(hooks)" = 1 ] || fail "hook did not run once at the crossing: $(cat "$hooklog")"
read -r pct used poolb _ < "$hooklog"
(( pct >= 50 && used == mark * 65536 && poolb == nphys * 65536 )) ||
  fail "hook environment: $(cat "$hooklog")"
# Hovering at the mark (one chunk trimmed and written again, on one
# connection) does not run the hook again: it re-arms only 2% of the pool
# below the mark.
nbdsh -u "$uri" -c "
C = 65536
for i in range(5):
    h.trim(C, ($mark - 1) * C)
    h.flush()
    h.pwrite(bytes([i + 7]) * C, ($mark - 1) * C)
    h.flush()
"
[ "$(hooks)" = 1 ] || fail "hook ran $(hooks) times while usage hovered at the mark"
# The same across connections: every nbdsh here is a new client, and the
# pool is closed and opened again in between.  What was reported is kept.
for i in 1 2 3; do
  nbdsh -u "$uri" -c "h.trim(65536, ($mark - 1) * 65536); h.flush()"
  write_chunks $((mark - 1)) 1
done
[ "$(hooks)" = 1 ] ||
  fail "hook ran $(hooks) times while clients reconnected at the mark"
write_chunks $mark 100
[ "$(hooks)" = 1 ] || fail "hook ran again without a new crossing"
[ "$(warnings)" = 1 ] || fail "warning count $(warnings), expected 1"
# Below the mark again (trim + flush commits the frees), then across.
nbdsh -u "$uri" -c "
for v in range(0, 300):
    h.trim(65536, v * 65536)
h.flush()
"
[ "$(hooks)" = 1 ] || fail "hook ran while usage fell"
write_chunks 5000 300
[ "$(hooks)" = 2 ] || fail "hook count $(hooks) after the second crossing, expected 2"
[ "$(warnings)" = 2 ] || fail "warning count $(warnings), expected 2"
# Each crossing was reported once; clients connecting above the mark
# after it are not told again.
! grep 'already at or above' "$tmpdir/nbdkit.log" ||
  fail "a reconnection repeated the warning"
# -D thin.stats=1: a usage line with counters at every flush.
grep -q 'thin stats (flush.*used .*allocations [0-9]*, releases 300, commits' \
  "$tmpdir/nbdkit.log" || fail "no thin.stats lines: $(tail -5 "$tmpdir/nbdkit.log")"
stop_nbdkit
thin_check "$pool"
# Opened again while above the mark: no crossing will come, so the
# warning is given at open.
rm -f "$sock"
start_nbdkit "$sock" --filter="$(filter_so thin)" file "$pool" thin-warn=50% \
  2> "$tmpdir/reopen.log"
thin_desc "$uri" >/dev/null
stop_nbdkit
grep -q 'already at or above thin-warn=50%' "$tmpdir/reopen.log" ||
  fail "no warning for a pool opened above the mark: $(cat "$tmpdir/reopen.log")"

# A hook that grows the file below: the same connection keeps writing
# past the old capacity without ENOSPC.
pool2=$tmpdir/pool2.img
truncate -s 64M "$pool2"
rm -f "$sock"
start_nbdkit "$sock" --filter="$(filter_so thin)" file "$pool2" thin-size=1G \
  thin-warn=80% "thin-hook=truncate -s +32M '$pool2' && echo grown >> '$hooklog'"
: > "$hooklog"
write_chunks 0 1400
(( $(hooks) >= 1 )) || fail "the growing hook did not run"
[ "$(stat -c %s "$pool2")" -gt $((64 * 1024 * 1024)) ] || fail "pool2 did not grow"
desc=$(thin_desc "$uri")
echo "after growth: $desc"
nbdsh -u "$uri" -c "
C = 65536
for v in range(0, 1400, 37):
    assert h.pread(C, v * C) == bytes([v % 251 + 1]) * C, v
"
stop_nbdkit
thin_check "$pool2"

# Grown by hand after ENOSPC (no hook): the same connection, after the
# next allocating write, and new connections use the new space.  Before
# that, clients reconnecting to the full pool are not told again.
pool3=$tmpdir/pool3.img
truncate -s 16M "$pool3"
rm -f "$sock"
start_nbdkit "$sock" --filter="$(filter_so thin)" file "$pool3" thin-size=1G \
  2> "$tmpdir/full.log"
# Filled by one client, then found full by others (the pool is closed
# and opened again between clients): "pool full" is logged once.  FILL:
# write chunks from 0 until ENOSPC; v is the first that failed.
FILL="
C = 65536
v = 0
while True:
    try:
        h.pwrite(b'a' * C, v * C)
    except nbd.Error as e:
        assert e.errno in ('ENOSPC', 28), e
        break
    v += 1
"
nbdsh -u "$uri" -c "$FILL"
nbdsh -u "$uri" -c "$FILL"
nbdsh -u "$uri" -c "
import os, time, subprocess
$FILL
full = v
subprocess.run(['truncate', '-s', '32M', '$pool3'], check=True)
time.sleep(1.1)   # the filter asks the layer below at most once a second
for u in range(full, full + 200):
    h.pwrite(b'b' * C, u * C)
h.flush()
for u in range(0, full + 200, 13):
    assert h.pread(C, u * C) == (b'a' if u < full else b'b') * C, u
print('full at', full, 'chunks; 200 more after growing')
"
stop_nbdkit
thin_check "$pool3"
[ "$(grep -c 'pool full' "$tmpdir/full.log")" = 1 ] ||
  fail "'pool full' not logged once: $(grep 'pool full' "$tmpdir/full.log")"
echo PASS
