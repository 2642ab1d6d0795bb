#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# kill -9 of nbdkit while two clients write, trim, flush and FUA through
# the thin filter; after a restart every write acknowledged by a flush or
# FUA reads back, nothing reads as another chunk's data, and
# nbdkit-thin-check finds no double mapping, leak or bad block.
# THIN_TEST_SERVE=file (default) or lvm (the pool is an LV served by this
# project's lvm plugin).  THIN_CRASH_ROUNDS (default 3) kills.
source "${TOP_SRCDIR:?run the tests through ctest, which sets TOP_SRCDIR}/tests/functions.sh"
source "$TOP_SRCDIR/tests/thin/thin-lib.sh"

rounds=${THIN_CRASH_ROUNDS:-3}
sock=$tmpdir/c.sock
uri=$(uri_of "$sock")
thin_setup_pool
serve () { thin_serve "$sock" thin-size=1G; }

serve
for (( r = 0; r < rounds; r++ )); do
  : > "$tmpdir/log$r.a"; : > "$tmpdir/log$r.b"
  # Two writers on disjoint chunk sets (offset by one: interleaved).
  firsta=$((r * 3000)); firstb=$((r * 3000 + 1))
  nbdsh -u "$uri" -c "W_FIRST=$firsta; W_COUNT=400; W_LOG='$tmpdir/log$r.a'; exec(open('$thin_srcdir/thin-crash-writer.py').read())" &
  wa=$!
  nbdsh -u "$uri" -c "W_FIRST=$firstb; W_COUNT=400; W_LOG='$tmpdir/log$r.b'; exec(open('$thin_srcdir/thin-crash-writer.py').read())" &
  wb=$!
  # Kill once some writes are durable, at a moment that varies by round.
  for (( i = 0; i < 600; i++ )); do
    [ "$(wc -l < "$tmpdir/log$r.a")" -ge $((20 + r * 15)) ] && break
    kill -0 $wa 2>/dev/null || fail "writer a ended before the kill"
    sleep 0.05
  done
  kill -9 "$nbdkit_pid"
  wait $wa $wb || :
  serve
  for w in a b; do
    first=$firsta; [ $w = b ] && first=$firstb
    nbdsh -u "$uri" -c "V_FIRST=$first; V_COUNT=400; V_LOG='$tmpdir/log$r.$w'; exec(open('$thin_srcdir/thin-crash-verify.py').read())"
  done
  # The checker reads the committed metadata: flush first (a commit).
  nbdsh -u "$uri" -c 'h.flush()'
  thin_check "$(pool_image)"
  # Free most of the round's chunks so that later rounds have room.
  nbdsh -u "$uri" -c "
for v in range($firsta, $firsta + 2400):
    h.trim(65536, v * 65536)
h.flush()
"
done
stop_nbdkit
thin_check "$(pool_image)"
echo PASS
