#!/bin/bash
# SPDX-License-Identifier: BSD-3-Clause
# Torture of every writable stack of this project that needs no network
# service (issue #22), each stack set up once for both parts:
#
# 1. concurrency.py: several connections with many requests in flight
#    each (reads, writes, FUA, zeroes, trims, flushes), checked against a
#    model; then the storage below checked by real tools (qemu-img check
#    and compare against the model's raw mirror, cmp of the LV's or the
#    file's bytes, the thin checker, a restarted server, a snapshot
#    commit).
# 2. bad-clients.py: hang-ups with many requests in flight, half-written,
#    oversized and malformed requests, a flood of connections; the server
#    must keep serving the same bytes to a well-behaved client, and the
#    storage below must check clean afterwards.  nbdkit 1.32.5's own
#    abort when a client hangs up with replies queued (fixed in nbdkit
#    1.33.10) is recognised and counted apart; any other death or a
#    sanitizer report fails (README "Known limits", docs/hardening.md).
#
# Before that, the model's self-test, and the model must catch a server
# that loses writes (nbdkit's tmpdisk plugin: a disk per connection).
#
# The stacks (tests/torture/torture-lib.sh): TORTURE_DEFAULT_STACKS, set
# by ctest, or TORTURE_STACKS.  Knobs: TORTURE_SECONDS per stack (default 0.5),
# TORTURE_CONNS (4), TORTURE_DEPTH (8), TORTURE_ROUNDS of bad clients (1),
# TORTURE_SIZE_MB (16), TORTURE_SEED, TORTURE_PARTS ("concurrency bad"),
# TORTURE_SELFCHECK (1: the tmpdisk check first).
source "${TOP_SRCDIR:?run the tests through ctest, which sets TOP_SRCDIR}/tests/functions.sh"
source "$TOP_SRCDIR/tests/torture/torture-lib.sh"
export TORTURE_ROUNDS=${TORTURE_ROUNDS:-1}
export TORTURE_SECONDS=${TORTURE_SECONDS:-0.5}

if [ "${TORTURE_SELFCHECK:-1}" = 1 ]; then
  # The model's rules on made-up sectors (a torn sector is accepted, a
  # byte from nowhere is not), then on a server that loses writes.
  concurrency --self-test || fail "concurrency.py --self-test"
  sock=$tmpdir/tmpdisk.sock
  start_nbdkit "$sock" tmpdisk 16M command='truncate -s $size "$disk"'
  if concurrency "$(uri_of "$sock")" --seconds 0.5 --conns 2 --readback-all \
       --name tmpdisk \
       2>"$tmpdir/tmpdisk.err"; then
    fail "concurrency.py did not notice a disk per connection"
  fi
  grep -q 'differs' "$tmpdir/tmpdisk.err" ||
    fail "tmpdisk: $(cat "$tmpdir/tmpdisk.err")"
  stop_nbdkit
  echo "torture: concurrency.py caught a server with a disk per connection"
fi

stacks=${TORTURE_STACKS:-${TORTURE_DEFAULT_STACKS:-}}
[ -n "$stacks" ] || fail "no stacks named"
seed=${TORTURE_SEED:-$RANDOM}
echo "torture: seed $seed (TORTURE_SEED=$seed to repeat)"
for s in $stacks; do
  torture_stack "$s" "$seed"
done
