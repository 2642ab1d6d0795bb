#!/bin/bash
# SPDX-License-Identifier: BSD-3-Clause
# bench-charts: bench/chart.py draws a scenario's ratios as a PNG with
# gnuplot.  Made-up results in bench/run.sh's TSV format: the data file
# handed to gnuplot must hold the medians of the per-round ratios to the
# ceiling (computed here by hand), and the PNG must be a real image of the
# chart's size.  Bad input (no results, no reference) must fail.
source "${TOP_SRCDIR:-$(cd "$(dirname "$0")/../.." && pwd)}/tests/functions.sh" || exit 1
requires gnuplot python3 file

cd "$tmpdir"
printf 'scenario\tround\tserver\tworkload\tvalue\tunit\tserver_cpu_s\twork\n' > r.tsv
# rounds 1..3; server "ceil" the reference; "plug" at 0.5, 0.6, 0.7 of it
# on seqread and 2, 3, 10 on randread; other scenarios must be ignored.
# Server CPU seconds per 1000 units of work: plug/ceil 2, 1, 0.5 on
# seqread (median 1) and 3 on randread.
while read -r rd srv wl v cpu; do
  printf 's1\t%s\t%s\t%s\t%s\tMiB/s\t%s\t1000\n' "$rd" "$srv" "$wl" "$v" "$cpu" >> r.tsv
done <<'DATA'
1 ceil seqread 1000 1
1 plug seqread 500 2
1 ceil randread 100 1
1 plug randread 200 3
2 ceil seqread 500 1
2 plug seqread 300 1
2 ceil randread 100 1
2 plug randread 300 3
3 ceil seqread 1000 2
3 plug seqread 700 1
3 ceil randread 10 1
3 plug randread 100 3
DATA
printf 's2\t1\tplug\tseqread\t1\tMiB/s\t\t\n' >> r.tsv
printf 'description\tmade up\nceiling\tceil\nserver\tplug\nserver\tceil\n' > meta
printf 'workload\tseqread\tMiB/s\tseq read\nworkload\trandread\tIOPS\trand read\n' >> meta

# Capture what gnuplot is given (a wrapper first on PATH records its
# script and data, then runs the real gnuplot).
real=$(type -P gnuplot)
mkdir bin
cat > bin/gnuplot <<EOF2
#!/bin/bash
tee "$tmpdir/script.gp" | "$real" "\$@"
EOF2
chmod +x bin/gnuplot
PATH=$tmpdir/bin:$PATH python3 "$TOP_SRCDIR/bench/chart.py" r.tsv meta s1 out.png ||
  fail "chart.py failed"
file out.png | grep -q 'PNG image data, 900 x 760' || fail "not the PNG chart: $(file out.png)"
[ "$(stat -c %s out.png)" -gt 5000 ] || fail "suspiciously small PNG"
grep -q 'throughput relative to ceil (median of 3 rounds)' script.gp ||
  fail "title: $(grep title script.gp)"
grep -q 'title "plug"' script.gp && grep -q 'title "ceil (ceiling)"' script.gp ||
  fail "series titles: $(grep title script.gp)"

# The numbers drawn: chart.py also writes its data where KVM_CHART_DATA
# says.  Medians of the per-round ratios to "ceil": throughput seqread
# 0.5, 0.6, 0.7 -> 0.6, randread 2, 3, 10 -> 3; CPU per unit of work
# seqread 2, 1, 0.5 -> 1, randread 3.
printf 'seqread 0.6000 1.0000\nrandread 3.0000 1.0000\n' > ratios.txt
printf 'cpu:seqread 1.0000 1.0000\ncpu:randread 3.0000 1.0000\n' >> ratios.txt
KVM_CHART_DATA=$tmpdir/data.tsv python3 "$TOP_SRCDIR/bench/chart.py" r.tsv meta s1 out2.png >/dev/null ||
  fail "chart.py failed (second run)"
diff <(tr '\t' ' ' < data.tsv) ratios.txt || fail "wrong ratios in the chart data"

# Failures: unknown scenario, no reference.
if python3 "$TOP_SRCDIR/bench/chart.py" r.tsv meta nosuch x.png 2>/dev/null; then
  fail "chart.py accepted a scenario without results"
fi
grep -v '^ceiling' meta > meta2
if python3 "$TOP_SRCDIR/bench/chart.py" r.tsv meta2 s1 x.png 2>/dev/null; then
  fail "chart.py accepted a scenario without a ceiling or peer"
fi
echo PASS
