#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# Throttle filter: throttle-file=PATH is re-read when it changes, while a
# connection stays open and busy: new limits take effect within a second,
# malformed content keeps the previous limits and logs an error, removing
# the file returns to the command-line limits; [GROUP] sections give
# groups their own limits.  A malformed file at start is a start-up error;
# a FIFO at the path is refused and never blocks.
source "${TOP_SRCDIR:?run the tests through ctest, which sets TOP_SRCDIR}/tests/functions.sh"
source "$TOP_SRCDIR/tests/throttle/throttle-functions.sh"
requires qemu-io nbdinfo

limits=$tmpdir/limits
printf 'bps-total=4M\n' > "$limits"
serve pattern 1G bps-total=8M throttle-file="$limits" 2> "$tmpdir/log"
# Phases (each measured over 2 s, one second after the change).
client file "$uri" "$limits" 2 \
  '@keep' \
  '# faster\nbps-total = 16M\n' \
  'bps-total=16M\nbps-read=lots\n' \
  '@remove' \
  'iops-total=40 # 40 x 64K\n' > "$tmpdir/rates"
stop_nbdkit
{ read -r p1; read -r p2; read -r p3; read -r p4; read -r p5; } < "$tmpdir/rates"
within "initial file, bps-total=4M" "$p1" $(( 4 * MiB )) 15
within "file changed to 16M" "$p2" $(( 16 * MiB )) 15
within "malformed file keeps 16M" "$p3" $(( 16 * MiB )) 15
within "file removed: command line 8M" "$p4" $(( 8 * MiB )) 15
within "file with iops-total=40 (and command line bps 8M)" "$p5" $(( 40 * 65536 )) 15
grep -q "throttle: $limits: line 2: bps-read: .*keeping the previous limits" "$tmpdir/log" ||
  fail "no clear error for the malformed file: $(cat "$tmpdir/log")"
[ "$(grep -c 'keeping the previous limits' "$tmpdir/log")" = 1 ] ||
  fail "the error should be logged once per bad version"
echo "ok: error logged: $(grep 'keeping the previous' "$tmpdir/log")"

# [GROUP] sections: per-group limits over the file's defaults, with one
# group per export; a change of one section reaches its group only.
printf 'bps-total=4M\n[fast]\nbps-total=12M\n' > "$limits"
serve pattern 1G bps-total=1M group-by=export throttle-file="$limits"
{ read -r f; read -r s; } < <(client share 4 1 65536 \
  4@"nbd+unix:///fast?socket=$sock" 4@"nbd+unix:///slow?socket=$sock")
within "section [fast]" "$f" $(( 12 * MiB )) 15
within "export slow: the file's default" "$s" $(( 4 * MiB )) 15
printf 'bps-total=4M\n[fast]\nbps-total=12M\n[slow]\nbps-total=8M\n' > "$limits.new"
mv "$limits.new" "$limits"
sleep 0.5
{ read -r f; read -r s; } < <(client share 4 1 65536 \
  4@"nbd+unix:///fast?socket=$sock" 4@"nbd+unix:///slow?socket=$sock")
stop_nbdkit
within "section [fast], unchanged" "$f" $(( 12 * MiB )) 15
within "section [slow] added" "$s" $(( 8 * MiB )) 15

# A malformed file at start-up stops nbdkit with a clear error.
printf 'bps-total=1M\nbps-total-max=512K\n' > "$limits"
if nbdkit -U "$tmpdir/bad.sock" --filter="$THROTTLE" pattern 1G \
     throttle-file="$limits" --run true 2> "$tmpdir/err"; then
  fail "nbdkit started with a malformed throttle file"
fi
grep -q "bps-total-max .* cannot be lower than bps-total" "$tmpdir/err" ||
  fail "unclear start-up error: $(cat "$tmpdir/err")"
echo "ok: start-up error: $(grep throttle "$tmpdir/err")"

# A FIFO at the path (no writer) is refused, at start-up and when it
# appears later, without blocking the request that looks at it or the
# shutdown.
rm -f "$limits"
mkfifo "$limits"
# (nbdkit is the wrapper of functions.sh, which a timeout(1) would skip:
# a hang is caught by ctest's timeout.)
if nbdkit -U "$tmpdir/fifo.sock" --filter="$THROTTLE" pattern 1G \
     throttle-file="$limits" --run true 2> "$tmpdir/err"; then
  fail "nbdkit started with a FIFO as its throttle file"
fi
grep -q "throttle: $limits: not a regular file" "$tmpdir/err" ||
  fail "unclear start-up error for a FIFO: $(cat "$tmpdir/err")"
rm -f "$limits"
serve pattern 1G throttle-file="$limits" 2> "$tmpdir/log4"
mkfifo "$limits"
sleep 1.2                               # past the file's check interval
timeout 10 nbdinfo --size "$uri" > /dev/null ||
  fail "a request hung on the FIFO"
timeout 10 qemu-io -r -f raw -c 'read 0 1M' "$uri" > /dev/null ||
  fail "reads hung on the FIFO"
grep -q "not a regular file" "$tmpdir/log4" ||
  fail "no error for the FIFO: $(cat "$tmpdir/log4")"
stop_nbdkit
rm -f "$limits"
echo "ok: a FIFO as the throttle file is refused"
echo PASS
