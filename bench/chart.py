#!/usr/bin/env python3
# SPDX-License-Identifier: BSD-3-Clause
"""PNG chart of one benchmark scenario (used by bench/run.sh --charts).

usage: chart.py RESULTS_TSV META_FILE SCENARIO OUT.png

Same inputs as table.py.  Two panels, one group of bars per workload and
one bar per server, each relative to the scenario's ceiling (or, without
a ceiling, to its peer) as the median of the per-round ratios -- the
ratio columns of the table, drawn: on top the throughput (higher is
faster), below the server CPU time per unit of work (lower is cheaper;
steadier than throughput on a loaded machine; drawn when the results
have it).  1.0 is the reference; a dashed line marks it.  Rendered by gnuplot (pngcairo terminal, Debian package
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
    cost = {}    # server CPU seconds per unit of work, same keys
    rounds = set()
    with open(results) as f:
        next(f, None)
        for line in f:
            p = line.rstrip("\n").split("\t")
            if len(p) < 6 or p[0] != scenario:
                continue
            data.setdefault(p[3], {}).setdefault(p[2], {})[int(p[1])] = float(p[4])
            if len(p) >= 8 and p[6] and p[7] and float(p[7]) > 0:
                cost.setdefault(p[3], {}).setdefault(p[2], {})[int(p[1])] = \
                    float(p[6]) / float(p[7])
            rounds.add(int(p[1]))
    if not data:
        sys.exit(f"chart.py: no results for scenario {scenario}")

    def ratio_rows(table):
        rows = []
        for wl, unit, _ in workloads:
            per = table.get(wl, {})
            refvals = per.get(ref, {})
            row = [wl]
            for s in servers:
                r = [v / refvals[k] for k, v in per.get(s, {}).items()
                     if refvals.get(k, 0) > 0]
                row.append("%.4f" % statistics.median(r) if r else "NaN")
            rows.append(row)
        return rows

    rows = ratio_rows(data)
    crows = ratio_rows(cost) if cost else []

    def label(s):
        tags = [t for t, x in (("peer", peer), ("ceiling", ceiling)) if s == x]
        return f"{s} ({', '.join(tags)})" if tags else s

    def q(s):   # a gnuplot string literal
        return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'

    n = len(rounds)
    title = f"{scenario}: throughput relative to {ref} (median of {n} round{'s' if n != 1 else ''})"
    def panel(dat, rows, ylabel, ptitle, origin, height, with_key):
        plots = []
        for i, s in enumerate(servers):
            src = q(dat) if i == 0 else "''"
            using = f"{i + 2}:xtic(1)" if i == 0 else f"{i + 2}"
            t = f"title {q(label(s))}" if with_key else "notitle"
            plots.append(f"{src} using {using} {t}")
        ymax = max([float(x) for row in rows for x in row[1:] if x != "NaN"] + [1.0])
        return [
            f"set origin 0,{origin}",
            f"set size 1,{height}",
            f"set title {q(ptitle)}",
            f"set yrange [0:{ymax * 1.15:.3f}]",
            f"set ylabel {q(ylabel)}",
            "plot " + ", \\\n     ".join(plots),
        ]

    with tempfile.TemporaryDirectory() as tmp:
        dat = os.path.join(tmp, "data")
        cdat = os.path.join(tmp, "cost")
        for path, rr in ((dat, rows), (cdat, crows)):
            with open(path, "w") as f:
                for row in rr:
                    f.write("\t".join(row) + "\n")
        if os.environ.get("KVM_CHART_DATA"):      # for tests/bench
            with open(os.environ["KVM_CHART_DATA"], "w") as f:
                for row in rows:
                    f.write("\t".join(row) + "\n")
                for row in crows:
                    f.write("\t".join(["cpu:" + row[0]] + row[1:]) + "\n")
        height = 760 if crows else 420
        script = [
            f"set terminal pngcairo size 900,{height} font 'sans,10'",
            f"set output {q(out)}",
            "set style data histograms",
            "set style histogram clustered gap 1",
            "set style fill solid 0.85 border -1",
            "set boxwidth 0.9",
            "set key outside right top vertical",
            "set grid ytics",
            "set xtics nomirror",
            "set lmargin at screen 0.08",        # same plot area in both panels
            "set rmargin at screen 0.74",
            "set arrow 1 from graph 0, first 1 to graph 1, first 1 nohead dt 2 lw 1.5 lc rgb '#444444' front",
        ]
        if crows:
            script += ["set multiplot"]
            script += panel(dat, rows, "÷ " + ref + " (higher is faster)", title, 0.5, 0.5, True)
            script += panel(cdat, crows, "÷ " + ref + " (lower is cheaper)",
                            f"{scenario}: server CPU time per unit of work relative to {ref}",
                            0.0, 0.5, False)
            script += ["unset multiplot"]
        else:
            script += panel(dat, rows, "÷ " + ref + " (higher is faster)", title, 0.0, 1.0, True)
        r = subprocess.run(["gnuplot"], input="\n".join(script) + "\n", text=True,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        if r.returncode != 0:
            sys.stderr.write(r.stderr)
            sys.exit(f"chart.py: gnuplot failed for {scenario}")
    if desc:
        print(f"chart.py: {out}: {scenario} ({desc[:60]}...)" if len(desc) > 60
              else f"chart.py: {out}: {scenario} ({desc})")


if __name__ == "__main__":
    main()
