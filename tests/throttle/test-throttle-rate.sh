#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# Throttle filter: achieved rates against the configured limits, measured
# with real clients (nbdcopy, fio's nbd engine, libnbd) over a few seconds,
# with generous bounds (±15%): bps-total, bps-read, bps-write, iops-total,
# iops-size, bursts, zero requests counted as I/Os only, and a client
# that reconnects gets no new allowance.  Limits are
# low so that the CPU never limits, even under the sanitizers.
source "${TOP_SRCDIR:?run the tests through ctest, which sets TOP_SRCDIR}/tests/functions.sh"
source "$TOP_SRCDIR/tests/throttle/throttle-functions.sh"
requires fio

# --- bps-total with nbdcopy (4 connections, 64 requests in flight each) ---
serve pattern 1G bps-total=24M
bytes=$(( 96 * MiB ))
t0=$(date +%s.%N)
nbdcopy --no-extents --request-size=262144 "$uri" - |
  head -c $bytes | wc -c > "$tmpdir/count" || :
t1=$(date +%s.%N)
stop_nbdkit
[ "$(cat "$tmpdir/count")" -eq $bytes ] || fail "nbdcopy copied $(cat "$tmpdir/count") bytes"
rate=$(awk -v b=$bytes -v a="$t0" -v z="$t1" 'BEGIN { printf "%.0f", b / (z - a) }')
within "nbdcopy through bps-total=24M (bytes/s)" "$rate" $(( 24 * MiB )) 15

# --- bps-read: reads limited, writes free --------------------------------
serve memory 256M bps-read=16M
read r_bps r_iops < <(client rate "$uri" read 65536 4 1-4)
within "reads with bps-read=16M (bytes/s)" "$r_bps" $(( 16 * MiB )) 15
stop_nbdkit
serve memory 256M bps-read=1M
read w_bps w_iops < <(client rate "$uri" write 65536 4 0-2)
between "writes with only bps-read=1M (bytes/s)" "$w_bps" $(( 8 * MiB )) 1e15
stop_nbdkit

# --- bps-write ------------------------------------------------------------
serve memory 256M bps-write=12M
read w_bps w_iops < <(client rate "$uri" write 65536 4 1-4)
within "writes with bps-write=12M (bytes/s)" "$w_bps" $(( 12 * MiB )) 15
stop_nbdkit

# --- iops-total with fio, then iops-size splitting -----------------------
fio_iops () {
  fio --name=throttle --ioengine=nbd --uri="$uri" \
      --rw=randread --bs="$1" --iodepth=8 --runtime=4 --ramp_time=1 \
      --time_based --size=64M --output-format=json > "$tmpdir/fio.json" ||
    fail "fio failed"
  # fio's nbd engine prints a line before the JSON.
  "$NBDPY" -c '
import json, sys
t = open(sys.argv[1]).read()
print("%.1f" % json.loads(t[t.index("{"):])["jobs"][0]["read"]["iops"])' \
    "$tmpdir/fio.json"
}
serve pattern 1G iops-total=400
within "fio 4k random reads with iops-total=400 (IOPS)" "$(fio_iops 4k)" 400 15
stop_nbdkit
serve pattern 1G iops-total=400 iops-size=4k
within "fio 16k reads, iops-size=4k: 4 I/Os each (IOPS)" "$(fio_iops 16k)" 100 15
stop_nbdkit

# --- burst: 16M/s for a while, then the sustained 4M/s -------------------
# The bucket holds max * max-length = 32M, filled at a net 12M/s: the
# burst lasts ≈ 2.7 s.  Window [0,2): 16M/s (+0.8M for the burst bucket's
# own capacity); window [4,6): 4M/s.
serve pattern 1G \
  bps-total=4M bps-total-max=16M bps-total-max-length=2
{ read b1 i1; read b2 i2; } < <(client rate "$uri" read 65536 4 0-2 4-6)
within "burst window (bytes/s)" "$b1" $(( 17 * MiB )) 15
within "after the burst (bytes/s)" "$b2" $(( 4 * MiB )) 15
stop_nbdkit

# --- zero requests count as I/Os only (default), or as bytes -------------
# bps-write=1M would allow one 1M zero per second if bytes counted;
# iops-write=20 allows 20 a second.
serve memory 1G bps-write=1M iops-write=20
read z_bps z_iops < <(client rate "$uri" zero 1048576 4 1-4)
within "1M zeroes, zero-trim=iops (IOPS)" "$z_iops" 20 15
stop_nbdkit
serve memory 1G bps-write=1M iops-write=20 \
  zero-trim=bytes
read z_bps z_iops < <(client rate "$uri" zero 262144 4 1-4)
within "256K zeroes, zero-trim=bytes (bytes/s)" "$z_bps" $MiB 15
stop_nbdkit
serve memory 1G bps-write=1M iops-write=20 \
  zero-trim=none
read z_bps z_iops < <(client rate "$uri" zero 1048576 4 0-2)
between "1M zeroes, zero-trim=none (IOPS)" "$z_iops" 100 1e15
stop_nbdkit

# --- reconnecting does not refill the allowance ----------------------------
# iops-total=10: 40 reads over 20 connections (2 each, one after another)
# take about 4 s, as over one connection.  When a group was freed with its
# last connection, every new one started with empty buckets, and 2 reads
# fit in them: the whole loop took a fraction of a second.
serve memory 64M iops-total=10
t0=$(date +%s.%N)
"$NBDPY" -c '
import nbd, sys
for i in range(20):
    h = nbd.NBD()
    h.connect_uri(sys.argv[1])
    h.pread(4096, 0)
    h.pread(4096, 4096)
    h.shutdown()
    del h
' "$uri" || fail "reconnecting client failed"
t1=$(date +%s.%N)
stop_nbdkit
el=$(awk -v a="$t0" -v z="$t1" 'BEGIN { printf "%.2f", z - a }')
between "40 reads over 20 connections, iops-total=10 (seconds)" "$el" 3.0 1e9

echo "PASS"
