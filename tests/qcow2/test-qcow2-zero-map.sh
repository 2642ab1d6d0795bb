#!/bin/bash
# SPDX-License-Identifier: BSD-3-Clause
# Zero requests leave the same map as QEMU's.  The same qemu-io
# "write -z" commands (whole clusters, whole subclusters, unaligned
# pieces, ranges across clusters, the odd-sized end of the disk) go
# through the plugin to one copy of an image and through qemu-io to
# another; then qemu-img map of both must agree on every range's data
# and zero flags, qemu-img compare must find them equal, and qemu-img
# check must find no error or leak.  With extended L2, whole subclusters
# are zeroed by their zero bits as QEMU does (before: by writing zeroes,
# so they still showed as data), also in clusters shared with an internal
# snapshot.
source "${TOP_SRCDIR:?run the tests through ctest, which sets TOP_SRCDIR}/tests/functions.sh"
source "$TOP_SRCDIR/tests/qcow2/qcow2-functions.sh"

cd "$tmpdir"
M=$((1024*1024))
size=$((8*M + 4608))              # the last subcluster (2 KiB) is partial

# map_of IMAGE: qemu-img map's ranges by their data and zero flags only
# (neighbours with the same flags merged: where QEMU sets zero bits on a
# subcluster that already read as zeroes, "present" may differ).
map_of () {
  qemu-img map -U --output=json "$1" | python3 -c '
import json, sys
out = []
for e in json.load(sys.stdin):
    k = (e["data"], e["zero"])
    if out and out[-1][2] == k and out[-1][0] + out[-1][1] == e["start"]:
        out[-1][1] += e["length"]
    else:
        out.append([e["start"], e["length"], k])
for s, n, (d, z) in out:
    print(s, n, d, z)'
}

# ops SEED CLUSTER: zero commands, then a few writes over zeroed parts
# and zeroes again (zero bits cleared by a write, set again).
ops () {
  python3 - "$@" "$size" <<'EOF'
import random, sys
seed, cs, size = (int(a) for a in sys.argv[1:4])
sc = cs // 32
r = random.Random(seed)
def z(off, n):
    n = min(n, size - off)
    if n > 0:
        print(f"write -z {off} {n}")
for _ in range(40):
    k = r.randrange(5)
    if k == 0:                                  # whole clusters
        z(r.randrange(size // cs) * cs, cs * r.randint(1, 3))
    elif k == 1:                                # whole subclusters
        z(r.randrange(size // sc) * sc, sc * r.randint(1, 40))
    elif k == 2:                                # unaligned, small
        z(r.randrange(size - 1), r.randint(1, 3 * sc))
    elif k == 3:                                # unaligned, across clusters
        z(r.randrange(size - 1), r.randint(cs, 3 * cs))
    else:                                       # data again
        off = r.randrange(size // 512) * 512
        n = min(512 * r.randint(1, 2 * sc // 512), size - off)
        print(f"write -P {r.randint(1, 255)} {off} {n}")
z(size - 1000, 1000)                            # the odd-sized end
z(size - cs - 3000, 5000)
EOF
}

run_case () {
  local name=$1 opts=$2 cs=$3 backing=${4:-} snap=${5:-}
  local -a b=()
  rm -rf "$name" && mkdir "$name" && cd "$name"
  if [ -n "$backing" ]; then
    cp "$tmpdir/$backing" .
    b=(-b "$backing" -F raw)
  fi
  qemu-img create -q -f qcow2 -o "$opts,cluster_size=$cs" "${b[@]}" \
    "$name.qcow2" $size
  # Data everywhere but one cluster, so that zeroes have something to
  # replace (over a backing file, half the image stays unallocated).
  if [ -n "$backing" ]; then
    qemu_io_cmds -f qcow2 "$name.qcow2" <<<"write -P 0x5a 0 $((4*M))"
  else
    qemu_io_cmds -f qcow2 "$name.qcow2" <<<"write -P 0x5a 0 $size"
    qemu_io_cmds -f qcow2 "$name.qcow2" <<<"write -z $((3*M)) $cs"
  fi
  # Clusters shared with an internal snapshot: a zero must copy them.
  [ -n "$snap" ] && qemu-img snapshot -c s1 "$name.qcow2"
  cd ..
  for seed in 1 2 3; do
    # Copies in directories of their own: an external data file keeps
    # its name.
    rm -rf ours qemu
    cp -r "$name" ours
    cp -r "$name" qemu
    ops $seed "$cs" > ops
    # (QEMU 7.2 opens a relative data file name from its working
    # directory, not the image's: run it from there.)
    (cd qemu && qemu_io_cmds -f qcow2 "$name.qcow2" < ../ops)
    new_sock
    serve_qcow2 "$sock" "$tmpdir/ours/$name.qcow2"
    qemu_io_cmds -f raw "$(uri_of "$sock")" < ops
    stop_server
    (cd ours && check_image "$name.qcow2")
    (cd qemu && qemu-img convert -U -O raw "$name.qcow2" ../qemu.raw) ||
      fail "$name: qemu-img convert"
    out=$(cd ours && qemu-img compare -U -F raw "$name.qcow2" ../qemu.raw 2>&1) ||
      fail "$name seed $seed: qemu-img compare: $out"
    # A raw external data file holds the guest's bytes itself.
    if [ -f "ours/$name.data" ]; then
      cmp -n $size "ours/$name.data" qemu.raw ||
        fail "$name seed $seed: the raw data file differs from the disk"
    fi
    (cd ours && map_of "$name.qcow2") > ours.map
    (cd qemu && map_of "$name.qcow2") > qemu.map
    diff -u qemu.map ours.map > map.diff ||
      fail "$name seed $seed: qemu-img map differs from QEMU's own (- qemu, + ours):
$(head -20 map.diff)"
    echo "$name seed $seed: same map ($(wc -l < ours.map) ranges)"
  done
}

head -c "$size" /dev/urandom > base.raw
run_case xl2-64k extended_l2=on 65536
run_case xl2-32k-backing extended_l2=on 32768 base.raw
run_case xl2-snapshot extended_l2=on 65536 "" snap
run_case xl2-raw-data extended_l2=on,data_file=xl2-raw-data.data,data_file_raw=on 65536
run_case v3-64k compat=1.1 65536
run_case v3-64k-backing compat=1.1 65536 base.raw
exit 0
