#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# Kill and restart tgtd while nbdcopy writes through the plugin: the
# session reconnects, in-flight commands are re-issued, the copy succeeds
# and the backing file holds exactly the source data.
source "${TOP_SRCDIR:?run the tests through ctest, which sets TOP_SRCDIR}/tests/functions.sh"
source "$TOP_SRCDIR/tests/iscsi/common.sh"

d=$tmpdir
size=$((256 * 1024 * 1024))
random_file $d/src.img $size
truncate -s $size $d/lun.img

tgtd_one_lun $d/lun.img

sock=$d/sock
start_nbdkit $sock "$(plugin_so iscsi)" url=$(tgtd_url $IQN 1) \
  max-transfer=64K -D iscsi.libiscsi=1
# Small requests keep many commands in flight for longer.
nbdcopy --request-size=65536 --requests=8 $d/src.img "$(uri_of $sock)" &
copy=$!
kill_at_exit $copy
# Restart as soon as data is arriving, and once more if still copying.
for (( i = 0; i < 400; i++ )); do
  [ "$(du -k $d/lun.img | cut -f1)" -gt 1024 ] && break
  sleep 0.01
done
kill -0 $copy 2>/dev/null || fail "copy finished before the restart: test is too fast"
tgtd_restart
restarts=1
if kill -0 $copy 2>/dev/null; then
  tgtd_restart
  restarts=2
fi
echo "restarted tgtd $restarts times during the copy"
wait $copy || fail "nbdcopy failed across the tgtd restarts"
assert_same $d/lun.img $d/src.img "LUN after restarts"

# Read back through the plugin too (same session, reconnected).
nbdcopy "$(uri_of $sock)" $d/back.img
assert_same $d/back.img $d/src.img "read-back after restarts"
stop_nbdkit
echo OK
