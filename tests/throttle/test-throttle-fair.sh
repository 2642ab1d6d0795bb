#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# Throttle filter: fairness and scope.  Four concurrent connections with
# very different queue depths (1, 2, 4, 8 requests in flight) share one
# group: each must get between 15% and 35% of the limit (nbdkit's own rate
# filter, for comparison, gives them shares proportional to their depth).
# scope=connection gives each connection the whole limit; group-by=export
# and export-group split or share limits between exports.  Statistics
# appear with -D throttle.stats=1.
source "${TOP_SRCDIR:?run the tests through ctest, which sets TOP_SRCDIR}/tests/functions.sh"
source "$TOP_SRCDIR/tests/throttle/throttle-functions.sh"

# --- four connections in one group ---------------------------------------
serve pattern 1G bps-total=16M
client share 5 1 65536 1@"$uri" 2@"$uri" 4@"$uri" 8@"$uri" > "$tmpdir/share"
stop_nbdkit
total=$(awk '{ s += $1 } END { print s }' "$tmpdir/share")
within "four connections together (bytes/s)" "$total" $(( 16 * MiB )) 15
i=0
while read -r r; do
  i=$((i + 1))
  share=$(awk -v r="$r" -v t="$total" 'BEGIN { printf "%.3f", r / t }')
  between "share of connection $i" "$share" 0.15 0.35
done < "$tmpdir/share"
[ $i = 4 ] || fail "expected 4 results, got $i"

# --- scope=connection: each connection has its own limit -----------------
serve pattern 1G bps-total=6M scope=connection
{ read -r a; read -r b; } < <(client share 4 1 65536 4@"$uri" 4@"$uri")
stop_nbdkit
within "scope=connection, connection 1 (bytes/s)" "$a" $(( 6 * MiB )) 15
within "scope=connection, connection 2 (bytes/s)" "$b" $(( 6 * MiB )) 15

# --- group-by=export: exports a and b are throttled separately -----------
serve pattern 1G bps-total=6M group-by=export
{ read -r a; read -r b; } < <(client share 4 1 65536 \
  4@"nbd+unix:///a?socket=$sock" 4@"nbd+unix:///b?socket=$sock")
stop_nbdkit
within "group-by=export, export a (bytes/s)" "$a" $(( 6 * MiB )) 15
within "group-by=export, export b (bytes/s)" "$b" $(( 6 * MiB )) 15

# --- export-group puts a and b in one group; c keeps its own -------------
serve -v -D nbdkit.backend.datapath=0 -D throttle.stats=1 pattern 1G bps-total=6M group-by=export \
  export-group=a:shared export-group=b:shared 2> "$tmpdir/log"
{ read -r a; read -r b; read -r c; } < <(client share 4 1 65536 \
  4@"nbd+unix:///a?socket=$sock" 4@"nbd+unix:///b?socket=$sock" \
  4@"nbd+unix:///c?socket=$sock")
stop_nbdkit
within "export-group a+b shared (bytes/s)" "$((a + b))" $(( 6 * MiB )) 15
within "export c alone (bytes/s)" "$c" $(( 6 * MiB )) 15
between "a's part of the shared group" \
  "$(awk -v a="$a" -v b="$b" 'BEGIN { print a / (a + b) }')" 0.3 0.7

# Statistics per group at debug level.
grep -q 'throttle: stats .* group "shared": admitted [1-9][0-9]* reads' "$tmpdir/log" ||
  fail "no statistics for group shared: $(cat "$tmpdir/log")"
grep -q 'group "c": admitted [1-9][0-9]* reads .* delayed [1-9]' "$tmpdir/log" ||
  fail "no statistics for group c"
grep -q 'throttle: stats (periodic) group' "$tmpdir/log" ||
  fail "no periodic statistics"
echo "ok: statistics: $(grep -m1 'closed) group "shared"' "$tmpdir/log")"

echo PASS
