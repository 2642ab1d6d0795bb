#!/bin/bash
# SPDX-License-Identifier: BSD-3-Clause
# A write racing a trim of the same range, a flush and a write elsewhere,
# all in flight at once (qcow2-trim-race.py): the write elsewhere must
# read back as written, and qemu-img check must find the image clean.
# The writes' data goes out after the engine's lock is dropped; a flush
# must not free (and so hand to the other write) a cluster that data is
# still on its way into.  The image lives in /dev/shm: the race needs
# fast punches and writes to show (tmpfs: within tens of rounds before
# the fix; a slower disk rarely shows it).
source "${TOP_SRCDIR:?run the tests through ctest, which sets TOP_SRCDIR}/tests/functions.sh"
source "$TOP_SRCDIR/tests/qcow2/qcow2-functions.sh"
requires_nbdsh
requires qemu-img

shm=$(mktemp -d /dev/shm/kvmt.XXXXXX) || fail "no /dev/shm"
cleanup_add "rm -rf '$shm'"
qemu-img create -q -f qcow2 "$shm/r.qcow2" 1G
new_sock
serve_qcow2 "$sock" "$shm/r.qcow2"
PATH="/usr/bin:$PATH" python3 "$TOP_SRCDIR/tests/qcow2/qcow2-trim-race.py" \
  "$sock" "${QCOW2_TRIM_RACE_ROUNDS:-100}" || fail "the racing write's data landed elsewhere"
stop_server
check_image "$shm/r.qcow2"
echo OK
