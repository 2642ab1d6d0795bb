#!/bin/bash
# SPDX-License-Identifier: BSD-3-Clause
# The harness's stop_nbdkit (tests/functions.sh) must fail a test when
# the server does not end cleanly after SIGTERM (a crash, an abort or a
# sanitizer report at shutdown), and pass when it does: otherwise every
# test that stops its server could not see a crash in an unload or close
# path.  The bad ending is simulated by an "nbdkit" first on PATH that
# runs the real one and then exits 3.
source "${TOP_SRCDIR:?run the tests through ctest, which sets TOP_SRCDIR}/tests/functions.sh"
requires nbdkit nbdinfo
real=$(type -P nbdkit)   # the executable (nbdkit is also a function here)

# stop_nbdkit must run in this shell (it waits for the server's job, a
# child of this shell), so its call of fail is caught here instead.
failed=""
eval "real_$(declare -f fail)"
stop_and_catch () {
  failed=""
  fail () { failed="$*"; }
  stop_nbdkit
  eval "$(declare -f real_fail | sed 1s/real_fail/fail/)"
}

# A clean stop passes.
start_nbdkit "$tmpdir/a.sock" null size=1M
nbdinfo --size "$(uri_of "$tmpdir/a.sock")" > /dev/null
stop_and_catch
[ -z "$failed" ] || fail "stop_nbdkit failed on a server that exited with status 0: $failed"
echo "ok: clean stop passes"

# A server whose process ends with status 3 after SIGTERM fails.
mkdir "$tmpdir/bin"
printf '#!/bin/bash\n"%s" "$@"\nexit 3\n' "$real" > "$tmpdir/bin/nbdkit"
chmod +x "$tmpdir/bin/nbdkit"
PATH="$tmpdir/bin:$PATH"
start_nbdkit "$tmpdir/b.sock" null size=1M
nbdinfo --size "$(uri_of "$tmpdir/b.sock")" > /dev/null
stop_and_catch
[ -n "$failed" ] || fail "stop_nbdkit passed although the server exited with status 3"
grep -q "exited with status 3 after SIGTERM" <<< "$failed" ||
  fail "no clear message: $failed"
echo "ok: a bad exit fails the test: $failed"

# Status 134 (SIGABRT) fails too, unless the test declared that nbdkit
# 1.32.5's known abort may happen (KVM_NBDKIT_ABORT_OK=1).
printf '#!/bin/bash\n"%s" "$@"\nexit 134\n' "$real" > "$tmpdir/bin/nbdkit"
start_nbdkit "$tmpdir/c.sock" null size=1M
stop_and_catch
grep -q "exited with status 134" <<< "$failed" ||
  fail "an abort at shutdown did not fail the test: '$failed'"
KVM_NBDKIT_ABORT_OK=1
start_nbdkit "$tmpdir/d.sock" null size=1M
stop_and_catch 2> "$tmpdir/d.err"
[ -z "$failed" ] || fail "KVM_NBDKIT_ABORT_OK=1 but an abort failed the test: $failed"
grep -q "aborted at shutdown" "$tmpdir/d.err" ||
  fail "the tolerated abort was not reported: $(cat "$tmpdir/d.err")"
echo "ok: an abort fails, unless KVM_NBDKIT_ABORT_OK=1 (then it is reported)"
echo PASS
