#!/bin/bash
# SPDX-License-Identifier: BSD-3-Clause
# e2e: the harness must notice a disk that loses writes.  nbdkit's "null"
# plugin accepts writes and discards them, so the guest's O_DIRECT
# read-back cannot match the pattern: guest-run.sh must fail (status 1,
# neither success nor skip).  Also checks the argument checks.
source "${TOP_SRCDIR:?run the tests through ctest, which sets TOP_SRCDIR}/tests/functions.sh"
requires nbdkit qemu-system-x86_64 nbdcopy nbdinfo

run="$TOP_SRCDIR/tests/e2e/guest-run.sh"

# Too small an export is refused before any boot.
start_nbdkit "$tmpdir/small" memory 1M
rc=0; bash "$run" qemu "$(uri_of "$tmpdir/small")" >"$tmpdir/out" 2>&1 || rc=$?
cat "$tmpdir/out"
[ $rc = 1 ] || fail "a 1 MiB export: expected status 1, got $rc"
grep -q 'at least 4 MiB' "$tmpdir/out" || fail "no clear message for a small export"
stop_nbdkit

# Usage errors.
rc=0; bash "$run" bogus "$(uri_of "$tmpdir/small")" 2>/dev/null || rc=$?
[ $rc = 2 ] || fail "bad runner: expected status 2, got $rc"

# Writes that vanish.
start_nbdkit "$tmpdir/sock" null 8M
rc=0; bash "$run" qemu "$(uri_of "$tmpdir/sock")" >"$tmpdir/out" 2>&1 || rc=$?
cat "$tmpdir/out"
[ $rc = 77 ] && exit 77
[ $rc = 1 ] || fail "writes were lost, but guest-run.sh returned $rc"
grep -q 'E2E DONE' "$tmpdir/out" || fail "the guest did not run to the end"
grep -q 'read back wrong data' "$tmpdir/out" || fail "the failure was not the read-back check"
echo "PASS"
