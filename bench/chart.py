#!/usr/bin/env python3
# SPDX-License-Identifier: BSD-3-Clause
"""PNG chart of one benchmark scenario (used by bench/run.sh --charts).

usage: chart.py RESULTS_TSV META_FILE SCENARIO OUT.png

Same inputs as table.py.  One group of bars per workload, one bar per
server: its throughput relative to the scenario's ceiling (or, without a
ceiling, to its peer), as the median of the per-round ratios -- the
ratio columns of the table, drawn.  1.0 is the reference; a dashed line
marks it.  Rendered by gnuplot (pngcairo terminal, Debian package
gnuplot-nox); exit status 1 if gnuplot fails or there are no results.
"""
import os
import statistics
import subprocess
import sys
import tempfile


def main():
    if len(sys.argv) != 5:
        sys.exit("usage: chart.py RESULTS_TSV META_FILE SCENARIO OUT.png")
    results, meta_path, scenario, out = sys.argv[1:5]
    desc, peer, ceiling, servers, workloads = "", "", "", [], []
    with open(meta_path) as f:
        for line in f:
            p = line.rstrip("\n").split("\t")
            if p[0] == "description":
                desc = p[1]
            elif p[0] == "peer":
                peer = p[1]
            elif p[0] == "ceiling":
                ceiling = p[1]
            elif p[0] == "server":
                servers.append(p[1])
            elif p[0] == "workload":
                workloads.append((p[1], p[2], p[3]))
    ref = ceiling or peer
    if not ref:
        sys.exit(f"chart.py: scenario {scenario} has neither a ceiling nor a peer")

    data = {}    # data[workload][server][round] = value
    rounds = set()
    with open(results) as f:
        next(f, None)
        for line in f:
            p = line.rstrip("\n").split("\t")
            if len(p) < 6 or p[0] != scenario:
                continue
            data.setdefault(p[3], {}).setdefault(p[2], {})[int(p[1])] = float(p[4])
            rounds.add(int(p[1]))
    if not data:
        sys.exit(f"chart.py: no results for scenario {scenario}")

    rows = []
    for wl, unit, _ in workloads:
        per = data.get(wl, {})
        refvals = per.get(ref, {})
        row = [wl]
        for s in servers:
            r = [v / refvals[k] for k, v in per.get(s, {}).items()
                 if refvals.get(k, 0) > 0]
            row.append("%.4f" % statistics.median(r) if r else "NaN")
        rows.append(row)

    def label(s):
        tags = [t for t, x in (("peer", peer), ("ceiling", ceiling)) if s == x]
        return f"{s} ({', '.join(tags)})" if tags else s

    def q(s):   # a gnuplot string literal
        return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'

    n = len(rounds)
    title = f"{scenario}: throughput relative to {ref} (median of {n} round{'s' if n != 1 else ''})"
    with tempfile.TemporaryDirectory() as tmp:
        dat = os.path.join(tmp, "data")
        with open(dat, "w") as f:
            for row in rows:
                f.write("\t".join(row) + "\n")
        if os.environ.get("KVM_CHART_DATA"):      # for tests/bench
            with open(os.environ["KVM_CHART_DATA"], "w") as f:
                for row in rows:
                    f.write("\t".join(row) + "\n")
        plots = []
        for i, s in enumerate(servers):
            src = q(dat) if i == 0 else "''"
            using = f"{i + 2}:xtic(1)" if i == 0 else f"{i + 2}"
            plots.append(f"{src} using {using} title {q(label(s))}")
        ymax = max([float(x) for row in rows for x in row[1:] if x != "NaN"] + [1.0])
        script = "\n".join([
            "set terminal pngcairo size 900,420 font 'sans,10'",
            f"set output {q(out)}",
            f"set title {q(title)}",
            "set style data histograms",
            "set style histogram clustered gap 1",
            "set style fill solid 0.85 border -1",
            "set boxwidth 0.9",
            "set key outside right top vertical",
            "set grid ytics",
            f"set yrange [0:{ymax * 1.15:.3f}]",
            f"set ylabel {q('÷ ' + ref + ' (higher is faster)')}",
            "set xtics nomirror",
            "set arrow from graph 0, first 1 to graph 1, first 1 nohead dt 2 lw 1.5 lc rgb '#444444' front",
            "plot " + ", \\\n     ".join(plots),
        ]) + "\n"
        r = subprocess.run(["gnuplot"], input=script, text=True,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        if r.returncode != 0:
            sys.stderr.write(r.stderr)
            sys.exit(f"chart.py: gnuplot failed for {scenario}")
    if desc:
        print(f"chart.py: {out}: {scenario} ({desc[:60]}...)" if len(desc) > 60
              else f"chart.py: {out}: {scenario} ({desc})")


if __name__ == "__main__":
    main()
