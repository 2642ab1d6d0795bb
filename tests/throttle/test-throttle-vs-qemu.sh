#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# Throttle filter against QEMU's own throttling: the same sequence of
# requests (qemu-io, one at a time) takes about as long through QEMU's
# throttle block driver with a throttle-group as through nbdkit with the
# filter and the same limits: sustained rate, burst (max, max-length),
# and iops with iops-size.  Compared as a ratio of the two durations,
# with generous bounds.
source "${TOP_SRCDIR:?run the tests through ctest, which sets TOP_SRCDIR}/tests/functions.sh"
source "$TOP_SRCDIR/tests/throttle/throttle-functions.sh"
requires qemu-io

disk=$tmpdir/disk.raw
random_file "$disk" 64M

# reads N SIZE: N sequential read commands of SIZE bytes (wrapping at
# 64 MiB).
reads () {
  local i n=$1 sz=$2
  for (( i = 0; i < n; i++ )); do
    echo "read $(( (i * sz) % (64 << 20) )) $sz"
  done > "$tmpdir/cmds"
}

now () { date +%s.%N; }

# compare WHAT "QEMU throttle-group properties" "filter parameters"
compare () {
  local what=$1 qprops=$2 fparams=$3 t0 t1 tq to
  t0=$(now)
  qemu-io --object "throttle-group,id=tg0,$qprops" --image-opts \
    "driver=throttle,throttle-group=tg0,file.driver=file,file.filename=$disk" \
    < "$tmpdir/cmds" > "$tmpdir/q.out" || fail "qemu-io (QEMU throttle) failed"
  t1=$(now)
  tq=$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')
  # shellcheck disable=SC2086
  serve file "$disk" $fparams
  t0=$(now)
  qemu-io -f raw "$uri" < "$tmpdir/cmds" > "$tmpdir/o.out" ||
    fail "qemu-io (through the filter) failed"
  t1=$(now)
  stop_nbdkit
  to=$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')
  local n
  n=$(wc -l < "$tmpdir/cmds")
  [ "$(grep -c 'read [0-9]*/[0-9]* bytes' "$tmpdir/q.out")" = "$n" ] ||
    fail "not every read completed through QEMU: $(tail -3 "$tmpdir/q.out")"
  [ "$(grep -c 'read [0-9]*/[0-9]* bytes' "$tmpdir/o.out")" = "$n" ] ||
    fail "not every read completed through the filter: $(tail -3 "$tmpdir/o.out")"
  echo "$what: QEMU ${tq}s, filter ${to}s"
  between "$what: filter time ÷ QEMU time" \
    "$(awk -v a="$to" -v b="$tq" 'BEGIN { printf "%.3f", a / b }')" 0.8 1.25
}

# 10 MiB at 4 MiB/s.
reads 160 65536
compare "bps-total=4M" "x-bps-total=4194304" "bps-total=4M"

# 48 MiB with a burst: 16 MiB/s until the 32 MiB burst allowance is used
# (≈ 2.7 s), then 4 MiB/s.  Without the burst model: 12 s; without the
# burst-rate bucket: under 1 s.
reads 768 65536
compare "burst" \
  "x-bps-total=4194304,x-bps-total-max=16777216,x-bps-total-max-length=2" \
  "bps-total=4M bps-total-max=16M bps-total-max-length=2"

# 32 KiB reads count as 2 I/Os with iops-size=16k: 60 reads at 50 IOPS.
reads 60 32768
compare "iops-size" "x-iops-total=50,x-iops-size=16384" \
  "iops-total=50 iops-size=16k"

# Reads limited by bps-read only.
reads 96 65536
compare "bps-read=2M" "x-bps-read=2097152" "bps-read=2M"
echo PASS
