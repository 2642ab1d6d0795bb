#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# Throttle filter: parameters.  Bad values and inconsistent limits stop
# nbdkit with a clear error; libvirt <iotune> names are accepted; data
# passes through unchanged (reads and writes, with and without limits);
# plugin parameters still reach the plugin.
source "${TOP_SRCDIR:?run the tests through ctest, which sets TOP_SRCDIR}/tests/functions.sh"
source "$TOP_SRCDIR/tests/throttle/throttle-functions.sh"

# expect_error "MESSAGE REGEX" FILTER-ARGS...
expect_error () {
  local re=$1; shift
  if nbdkit -U "$tmpdir/never.sock" --filter="$THROTTLE" memory 1M "$@" \
       --run true 2> "$tmpdir/err"; then
    fail "nbdkit accepted: $*"
  fi
  grep -qE "$re" "$tmpdir/err" || fail "for '$*', expected /$re/, got: $(cat "$tmpdir/err")"
  echo "ok: $* -> $(grep -m1 error "$tmpdir/err")"
}
expect_error "bps-total: could not parse rate 'fast'" bps-total=fast
expect_error "iops-read: '1k' is not a whole number" iops-read=1k
expect_error "iops-total: '-5' is not a whole number" iops-total=-5
expect_error "bps-write-max needs bps-write" bps-write-max=10M
expect_error "iops-total-max \\(10\\) cannot be lower than iops-total \\(20\\)" \
  iops-total=20 iops-total-max=10
expect_error "bps-read-max-length needs bps-read-max" bps-read=1M bps-read-max-length=5
expect_error "bps-read-max-length: '0' must be a whole number" \
  bps-read=1M bps-read-max=2M bps-read-max-length=0
expect_error "too large" iops-write=10000000000000000
expect_error "scope must be 'group' or 'connection'" scope=process-wide
expect_error "group-by must be 'none' or 'export'" group-by=client
expect_error "export-group must be EXPORT:GROUP" export-group=disk
expect_error "zero-trim must be 'iops', 'bytes' or 'none'" zero-trim=sometimes
expect_error "scope=connection cannot be combined" scope=connection group-by=export
expect_error "group name must be non-empty" group=

# Help lists the parameters.
nbdkit --filter="$THROTTLE" memory --help > "$tmpdir/help" 2>&1 || :
grep -q 'bps-total' "$tmpdir/help" && grep -q 'throttle-file' "$tmpdir/help" ||
  fail "--help does not describe the filter: $(cat "$tmpdir/help")"

# libvirt names: total_bytes_sec=8M limits like bps-total=8M.
serve pattern 1G total_bytes_sec=8388608 read_iops_sec=100000 group_name=vm1 \
  -v 2> "$tmpdir/log"
read -r bps iops < <(client rate "$uri" read 65536 4 1-3)
stop_nbdkit
within "total_bytes_sec=8388608 (bytes/s)" "$bps" 8388608 15
grep -q 'new group "vm1"' "$tmpdir/log" || fail "group_name was not used"

# Data integrity through the filter: copy a random image out of the file
# plugin, and into an empty one, with limits and without.
random_file "$tmpdir/src.img" 8M
for limits in "" "bps-total=64M iops-total=4000 iops-size=64k"; do
  # shellcheck disable=SC2086
  serve file "$tmpdir/src.img" $limits
  nbdcopy --no-extents "$uri" "$tmpdir/out.img"
  stop_nbdkit
  assert_same "$tmpdir/src.img" "$tmpdir/out.img" "read through the filter ($limits)"
  truncate -s 8M "$tmpdir/dst.img"
  # shellcheck disable=SC2086
  serve file "$tmpdir/dst.img" $limits
  nbdcopy "$tmpdir/src.img" "$uri"
  stop_nbdkit
  assert_same "$tmpdir/src.img" "$tmpdir/dst.img" "written through the filter ($limits)"
  rm -f "$tmpdir/out.img" "$tmpdir/dst.img"
  echo "ok: data unchanged through the filter (limits: ${limits:-none})"
done

# Plugin parameters pass through the filter.
serve memory 3M bps-total=1G
[ "$(nbdinfo --size "$uri")" = 3145728 ] || fail "plugin did not get size=3M"
stop_nbdkit
echo PASS
