# SPDX-License-Identifier: BSD-3-Clause
# Helpers for the throttle filter tests; source after tests/functions.sh.

requires_filter throttle
requires nbdkit nbdcopy

# A Python 3 that has libnbd's bindings (python3-libnbd): the system one,
# even when another python3 comes first on PATH.
NBDPY=""
for _p in python3 /usr/bin/python3; do
  if command -v "$_p" >/dev/null 2>&1 && "$_p" -c 'import nbd' 2>/dev/null; then
    NBDPY=$_p
    break
  fi
done
[ -n "$NBDPY" ] || skip "python3 module nbd (python3-libnbd) not installed"

client () { "$NBDPY" "$TOP_SRCDIR/tests/throttle/client.py" "$@"; }

THROTTLE=$(filter_so throttle)

# within WHAT VALUE EXPECTED PERCENT: |VALUE - EXPECTED| <= PERCENT% of
# EXPECTED, else fail.
within () {
  awk -v v="$2" -v e="$3" -v p="$4" 'BEGIN {
    d = v - e; if (d < 0) d = -d;
    exit !(d <= e * p / 100) }' ||
    fail "$1: $2 is not within $4% of $3"
  echo "ok: $1: $2 (expected $3 ±$4%)"
}

# between WHAT VALUE LOW HIGH
between () {
  awk -v v="$2" -v l="$3" -v h="$4" 'BEGIN { exit !(v >= l && v <= h) }' ||
    fail "$1: $2 is not between $3 and $4"
  echo "ok: $1: $2 (between $3 and $4)"
}

MiB=1048576

# serve ARGS...: start nbdkit with the throttle filter on a fresh socket
# (nbdkit 1.32 leaves its socket behind) and set $uri and $sock.
_nserve=0
serve () {
  _nserve=$((_nserve + 1))
  sock=$tmpdir/s$_nserve
  start_nbdkit "$sock" --filter="$THROTTLE" "$@"
  uri=$(uri_of "$sock")
}
