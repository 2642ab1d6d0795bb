#!/usr/bin/env python3
# SPDX-License-Identifier: BSD-3-Clause
"""Where does each byte of an LV live?  The oracle is LVM2 itself: the
layout comes from the real tools' JSON reports

  pvs --reportformat json --units b --nosuffix -o pv_name,pe_start
  vgs --reportformat json --units b --nosuffix -o vg_name,vg_extent_size
  lvs --reportformat json --segments --units b --nosuffix \
      -o vg_name,lv_name,seg_start_pe,seg_size_pe,stripes,stripe_size,seg_pe_ranges

and the chunks are computed with device-mapper's linear/striped rules.

  lvm-layout.py collect OUT.json            run the three reports (LVM env
                                             from the caller) into OUT.json
  lvm-layout.py scatter L.json VG LV DATA DEV=FILE...
                                             write DATA into the PV files
  lvm-layout.py gather  L.json VG LV OUT DEV=FILE...
                                             read the LV from the PV files
  lvm-layout.py size    L.json VG LV       print the LV size in bytes
  lvm-layout.py locate  L.json VG LV OFFSET
                                             print "DEVICE DEVICE_OFFSET" of
                                             an LV byte
"""
import json
import subprocess
import sys


def report(args):
    out = subprocess.run(args, check=True, stdout=subprocess.PIPE).stdout
    return json.loads(out)["report"][0]


def collect(path):
    pvs = report(["pvs", "--reportformat", "json", "--units", "b",
                  "--nosuffix", "-o", "pv_name,pe_start"])["pv"]
    vgs = report(["vgs", "--reportformat", "json", "--units", "b",
                  "--nosuffix", "-o", "vg_name,vg_extent_size"])["vg"]
    segs = report(["lvs", "--reportformat", "json", "--segments", "--units",
                   "b", "--nosuffix", "-o",
                   "vg_name,lv_name,seg_start_pe,seg_size_pe,stripes,"
                   "stripe_size,seg_pe_ranges"])["seg"]
    with open(path, "w") as f:
        json.dump({"pvs": pvs, "vgs": vgs, "segs": segs}, f, indent=1)


def chunks(layout, vg, lv):
    """Yield (lv_offset, length, device, device_offset), in LV order."""
    pe_start = {p["pv_name"]: int(p["pe_start"]) for p in layout["pvs"]}
    es = [int(v["vg_extent_size"]) for v in layout["vgs"]
          if v["vg_name"] == vg][0]
    segs = [s for s in layout["segs"]
            if s["vg_name"] == vg and s["lv_name"] == lv]
    if not segs:
        raise SystemExit("no LV %s/%s in the report" % (vg, lv))
    for s in sorted(segs, key=lambda s: int(s["seg_start_pe"])):
        base = int(s["seg_start_pe"]) * es
        size = int(s["seg_size_pe"]) * es
        n = int(s["stripes"])
        ranges = []
        for r in s["seg_pe_ranges"].split():
            dev, pes = r.rsplit(":", 1)
            ranges.append((dev, int(pes.split("-")[0])))
        assert len(ranges) == n, s
        if n == 1:
            dev, start = ranges[0]
            yield base, size, dev, pe_start[dev] + start * es
            continue
        ss = int(s["stripe_size"])
        for c in range(size // ss):
            dev, start = ranges[c % n]
            row = c // n
            yield base + c * ss, ss, dev, pe_start[dev] + start * es + row * ss


def main():
    cmd = sys.argv[1]
    if cmd == "collect":
        collect(sys.argv[2])
        return
    layout = json.load(open(sys.argv[2]))
    vg, lv = sys.argv[3], sys.argv[4]
    if cmd == "size":
        print(sum(c[1] for c in chunks(layout, vg, lv)))
        return
    if cmd == "locate":
        want = int(sys.argv[5])
        for off, length, dev, doff in chunks(layout, vg, lv):
            if off <= want < off + length:
                print(dev, doff + want - off)
                return
        raise SystemExit("offset outside the LV")
    data_path = sys.argv[5]
    files = dict(a.split("=", 1) for a in sys.argv[6:])
    handles = {}

    def fh(dev):
        if dev not in handles:
            handles[dev] = open(files.get(dev, dev), "r+b")
        return handles[dev]

    if cmd == "scatter":
        with open(data_path, "rb") as d:
            for off, length, dev, doff in chunks(layout, vg, lv):
                d.seek(off)
                buf = d.read(length)
                assert len(buf) == length
                f = fh(dev)
                f.seek(doff)
                f.write(buf)
    elif cmd == "gather":
        with open(data_path, "wb") as d:
            for off, length, dev, doff in chunks(layout, vg, lv):
                f = fh(dev)
                f.seek(doff)
                buf = f.read(length)
                assert len(buf) == length
                d.seek(off)
                d.write(buf)
    else:
        raise SystemExit(__doc__)
    for f in handles.values():
        f.close()


if __name__ == "__main__":
    main()
