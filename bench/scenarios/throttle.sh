# SPDX-License-Identifier: BSD-3-Clause
# Scenario "throttle": our throttle filter against nbdkit's own rate
# filter, over the nbdkit file plugin on a raw image.
#  - overhead with no limit: throttle (no limit) and rate (no rate) against
#    the bare file plugin (the ceiling), on sequential 1 MiB and random
#    4 KiB reads;
#  - accuracy: achieved vs configured rate for a bytes limit (throttle
#    bps-total, rate's rate= in bits) and an I/O limit (throttle
#    iops-total; the rate filter has none), with the server CPU each
#    costs.
# Limits are chosen so that the CPU never limits on a 2-core machine.

BPS_MIB=64                      # bytes limit, MiB/s
IOPS=2000                       # I/O limit

DESCRIPTION="throttle filter vs nbdkit rate filter over the file plugin (limits: ${BPS_MIB} MiB/s, ${IOPS} IOPS)"
PEER=rate-off
CEILING=file
WORKLOADS="seqread randread"

scenario_requires () {
  bench_requires nbdkit fio
  bench_requires_filter throttle
  [ -f "$(nbdkit --dump-config | sed -n 's/^filterdir=//p')/nbdkit-rate-filter.so" ] ||
    bench_skip "nbdkit rate filter not installed"
}

prepare () { make_random_raw "$WORKDIR/disk.raw"; }

bench_server file          'serve_nbdkit file "$WORKDIR/disk.raw"'
bench_server throttle-off  'serve_nbdkit --filter="$(filter_so throttle)" file "$WORKDIR/disk.raw"'
bench_server rate-off      'serve_nbdkit --filter=rate file "$WORKDIR/disk.raw"'
bench_server throttle-bps  'serve_nbdkit --filter="$(filter_so throttle)" file "$WORKDIR/disk.raw" bps-total=${BPS_MIB}M'
# The rate filter counts bits per second.
bench_server rate-bps      'serve_nbdkit --filter=rate file "$WORKDIR/disk.raw" rate=$((BPS_MIB * 8))M'
bench_server throttle-iops 'serve_nbdkit --filter="$(filter_so throttle)" file "$WORKDIR/disk.raw" iops-total=$IOPS'

# Achieved vs configured, and server CPU per unit of work (results TSV:
# scenario round server workload value unit cpu_seconds work).
report () {
  local tsv=$1
  echo "Achieved vs configured rate (median of $ROUNDS round(s), ${RUNTIME} s each; goal: within ±2%):"
  echo
  echo "| server | workload | configured | achieved | achieved ÷ configured | server CPU per unit |"
  echo "|---|---|---|---|---|---|"
  local row label wl conf unit v
  for row in "throttle-bps seqread $BPS_MIB MiB/s" \
             "rate-bps seqread $BPS_MIB MiB/s" \
             "throttle-iops randread $IOPS IOPS"; do
    read -r label wl conf unit <<<"$row"
    v=$(bench_median "$tsv" "$label" "$wl")
    [ -n "$v" ] || continue
    python3 - "$tsv" "$SCENARIO" "$label" "$wl" "$conf" "$unit" "$v" <<'EOF'
import sys, statistics
tsv, scen, label, wl, conf, unit, v = sys.argv[1:8]
conf, v = float(conf), float(v)
cpu = []
with open(tsv) as f:
    for line in f:
        p = line.rstrip("\n").split("\t")
        if len(p) >= 8 and p[0] == scen and p[2] == label and p[3] == wl:
            try:
                work = float(p[7])
                if work > 0:
                    cpu.append(float(p[6]) / work)
            except ValueError:
                pass
per = ""
if cpu:
    c = statistics.median(cpu)
    per = ("%.1f µs per I/O" % (c * 1e6)) if unit == "IOPS" \
        else ("%.2f ms per MiB" % (c * 1e3))
print("| %s | %s | %g %s | %.1f %s | %.3f | %s |"
      % (label, wl, conf, unit, v, unit, v / conf, per))
EOF
  done
  echo
  echo "Overhead with no limit: throughput and server CPU per unit of work,"
  echo "each ÷ the bare file plugin (medians of per-round ratios; goal:"
  echo "throughput ≥ 0.98, CPU ≤ 1.02 — on a loaded machine the CPU ratio is"
  echo "the steadier measure):"
  echo
  echo "| workload | throttle-off ÷ file | rate-off ÷ file | CPU: throttle-off ÷ file | CPU: rate-off ÷ file |"
  echo "|---|---|---|---|---|"
  python3 - "$tsv" "$SCENARIO" <<'EOF2'
import sys, statistics, collections
tsv, scen = sys.argv[1:3]
val = collections.defaultdict(dict)
cpu = collections.defaultdict(dict)
with open(tsv) as f:
    for line in f:
        p = line.rstrip("\n").split("\t")
        if len(p) < 8 or p[0] != scen:
            continue
        try:
            rnd, label, wl = p[1], p[2], p[3]
            val[(wl, rnd)][label] = float(p[4])
            if float(p[7]) > 0:
                cpu[(wl, rnd)][label] = float(p[6]) / float(p[7])
        except ValueError:
            pass
def ratio(d, wl, a, b):
    r = [d[k][a] / d[k][b] for k in d
         if k[0] == wl and a in d[k] and b in d[k] and d[k][b] > 0]
    return "%.3f" % statistics.median(r) if r else "-"
for wl in ("seqread", "randread"):
    print("| %s | %s | %s | %s | %s |" % (
        wl, ratio(val, wl, "throttle-off", "file"),
        ratio(val, wl, "rate-off", "file"),
        ratio(cpu, wl, "throttle-off", "file"),
        ratio(cpu, wl, "rate-off", "file")))
EOF2
}
