#!/usr/bin/env python3
# SPDX-License-Identifier: BSD-3-Clause
"""Markdown table for one benchmark scenario (used by bench/run.sh).

usage: table.py RESULTS_TSV META_FILE SCENARIO

RESULTS_TSV: scenario, round, server, workload, value, unit (header line).
META_FILE: lines "description\tTEXT", "peer\tLABEL", "ceiling\tLABEL",
"server\tLABEL" (in column order), "workload\tNAME\tUNIT\tDESCRIPTION".

Server columns show the median over rounds and the spread (largest
deviation from the median, in percent).  Ratio columns show the median of
the per-round ratios: runs of the same round are close in time, so the
pairing cancels part of the noise of a shared machine.
"""
import statistics
import sys


def fmt_value(v, unit):
    if unit == "IOPS":
        return "%.0f" % v
    if unit in ("µs/IO", "ms/GiB"):
        return "%.1f" % v if v < 100 else "%.0f" % v
    return "%.0f" % v if v >= 100 else "%.3g" % v


def main():
    results, meta_path, scenario = sys.argv[1:4]
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

    # data[workload][server][round] = value; cost[...] = server CPU per
    # unit of work (µs per I/O for IOPS workloads, ms per GiB for MiB/s).
    data = {}
    cost = {}
    rounds = set()
    with open(results) as f:
        next(f, None)
        for line in f:
            p = line.rstrip("\n").split("\t")
            if len(p) < 6 or p[0] != scenario:
                continue
            rnd, srv, wl, val = int(p[1]), p[2], p[3], float(p[4])
            data.setdefault(wl, {}).setdefault(srv, {})[rnd] = val
            if len(p) >= 8 and p[6] and p[7] and float(p[7]) > 0:
                cpu, work = float(p[6]), float(p[7])
                c = cpu * 1e6 / work if p[5] == "IOPS" else cpu * 1e3 / (work / 1024)
                cost.setdefault(wl, {}).setdefault(srv, {})[rnd] = c
            rounds.add(rnd)

    print(desc)
    print()
    if not data:
        print("No results.")
        return

    ratios = []  # (numerator, denominator)
    if peer:
        ratios += [(s, peer) for s in servers if s != peer]
    if ceiling:
        ratios += [(s, ceiling) for s in servers if s not in (peer, ceiling)]

    def label(s):
        tags = []
        if s == peer:
            tags.append("peer")
        if s == ceiling:
            tags.append("ceiling")
        return "%s (%s)" % (s, ", ".join(tags)) if tags else s

    print_table(servers, ratios, workloads, data, rounds, label, None)
    n = len(rounds)
    print()
    print("%d round%s; ± is the largest deviation of a round from the median."
          % (n, "" if n == 1 else "s"))
    if cost:
        print()
        print("Server CPU time per unit of work (user+system of the server "
              "process, all threads; lower is cheaper; ratio < 1: cheaper "
              "than the reference):")
        print()
        print_table(servers, ratios, workloads, cost, rounds, label,
                    {"IOPS": "µs/IO", "MiB/s": "ms/GiB"})


def print_table(servers, ratios, workloads, data, rounds, label, units):
    head = ["workload", "unit"] + [label(s) for s in servers] + \
           ["%s ÷ %s" % r for r in ratios]
    print("| " + " | ".join(head) + " |")
    print("|---|---|" + "---:|" * (len(servers) + len(ratios)))
    for wl, unit, wdesc in workloads:
        if units:
            unit = units[unit]
        row = ["%s (%s)" % (wl, wdesc), unit]
        per = data.get(wl, {})
        for s in servers:
            vals = list(per.get(s, {}).values())
            if not vals:
                row.append("–")
                continue
            med = statistics.median(vals)
            cell = fmt_value(med, unit)
            if len(vals) > 1 and med > 0:
                spread = max(abs(v - med) for v in vals) / med * 100
                cell += " ±%.0f%%" % spread
            row.append(cell)
        for num, den in ratios:
            a, b = per.get(num, {}), per.get(den, {})
            rs = [a[r] / b[r] for r in sorted(rounds) if r in a and r in b and b[r] > 0]
            row.append("%.2f" % statistics.median(rs) if rs else "–")
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
