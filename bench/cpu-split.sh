#!/bin/bash
# SPDX-License-Identifier: BSD-3-Clause
# Where the CPU of a 4 KiB random I/O goes, process by process, for a
# server that forwards each request over a socket to a backend server.
# bench/run.sh reports IOPS and the NBD server's CPU; on a machine whose
# cores are shared by the client, the NBD server and the backend, IOPS
# follow the sum of all three, so this splits it:
#
#   bench/cpu-split.sh [--rounds N] [--runtime SECS] [--pin-backend] SETUP...
#
#   nfs       our qcow2 plugin on nfs://  vs  qemu-nbd on nfs:// (QEMU's
#             libnfs driver); backend: nfs-ganesha (tests/nfs/nfs-server.sh)
#             in a private network namespace (root only)
#   netfloor  nbdkit's own nbd plugin  vs  qemu-nbd's nbd driver, both
#             forwarding to one upstream `nbdkit memory`: the cost of the
#             two servers' designs for any plugin with a network backend,
#             with no code of this project involved
#   null      nbdkit null  vs  qemu-nbd null-co: no backend at all
#
# For each server, workload (randread, randwrite; fio nbd engine, 4 KiB,
# iodepth 16) and round it measures IOPS, and per I/O: the NBD server's
# CPU, the backend's CPU, fio's CPU (user + system, from /proc and
# getrusage) and the context switches of the whole machine (perf stat
# -a).  Servers alternate within each round; medians are printed.
# Nothing is asserted: it is a measurement (docs/benchmarks.md).
#
# --pin-backend gives the backend server (nfs-ganesha, the upstream
# nbdkit) CPU 0 and the NBD server and fio CPU 1, as if the backend were
# another machine: its CPU no longer competes with the NBD server's.
set -euo pipefail
rounds=3 runtime=5 pin=
while [ $# -gt 0 ]; do
  case $1 in
    --rounds) rounds=$2; shift 2 ;;
    --runtime) runtime=$2; shift 2 ;;
    --pin-backend) pin=1; shift ;;
    -*) echo "usage: $0 [--rounds N] [--runtime SECS] [--pin-backend] SETUP..." >&2; exit 2 ;;
    *) break ;;
  esac
done
[ $# -gt 0 ] || set -- nfs netfloor null
top=$(cd "$(dirname "$0")/.." && pwd)
build=${BUILD:-$top/build}
# shellcheck source=bench/nfs-ns.sh
source "$top/bench/nfs-ns.sh"
for c in fio nbdkit qemu-nbd perf python3 nbdcopy; do
  command -v $c >/dev/null || { echo "$0: $c is needed" >&2; exit 1; }
done
work=$(mktemp -d /dev/shm/cpusplit.XXXXXX)
pids=()
trap 'for p in "${pids[@]}"; do kill -9 $p 2>/dev/null || :; done; rm -rf "$work"' EXIT
results=$work/results.tsv
: > "$results"

cputicks () { awk '{print $14 + $15}' "/proc/$1/stat"; }

# With --pin-backend: the NBD server and fio on CPU 1, a backend on CPU 0.
front=()
if [ -n "$pin" ]; then
  [ "$(nproc)" -ge 2 ] || { echo "$0: --pin-backend needs 2 CPUs" >&2; exit 1; }
  front=(taskset -c 1)
fi
pin_backend () { [ -z "$pin" ] || taskset -a -p -c 0 "$1" >/dev/null; }

# measure SETUP NAME BACKEND-PID CMD...: serve on $work/s.sock, run fio.
measure () {
  local setup=$1 name=$2 backend=$3; shift 3
  local sock=$work/s.sock i wl
  rm -f "$sock"
  "${front[@]}" "$@" &
  local srv=$!
  for (( i = 0; i < 200; i++ )); do [ -S "$sock" ] && break; sleep 0.05; done
  [ -S "$sock" ] || { echo "$0: $name did not start" >&2; exit 1; }
  for wl in randread randwrite; do
    local s0 b0=0 s1 b1=0
    s0=$(cputicks $srv); [ "$backend" = 0 ] || b0=$(cputicks "$backend")
    perf stat -a -e context-switches -x, -o "$work/perf.txt" \
      /usr/bin/time -f "%U %S" -o "$work/fio.time" \
      "${front[@]}" fio --name=x --ioengine=nbd --uri="nbd+unix:///?socket=$sock" \
        --rw=$wl --bs=4k --iodepth=16 --numjobs=1 --size=256M \
        --time_based --runtime="$runtime" --output-format=json \
        --output="$work/fio.json" > "$work/fio.log" 2>&1
    s1=$(cputicks $srv); [ "$backend" = 0 ] || b1=$(cputicks "$backend")
    python3 - "$work" "$setup" "$name" "$wl" "$runtime" "$((s1 - s0))" \
      "$((b1 - b0))" "$(getconf CLK_TCK)" >> "$results" <<'EOF'
import json, sys
work, setup, name, wl, runtime, sticks, bticks, hz = sys.argv[1:]
j = json.load(open(work + "/fio.json"))["jobs"][0]
ios = j["read"]["total_ios"] + j["write"]["total_ios"]
u, s = open(work + "/fio.time").read().split()[:2]
cs = [l.split(",")[0] for l in open(work + "/perf.txt") if "context-switches" in l][0]
us = lambda ticks: float(ticks) / float(hz) * 1e6 / ios
print("\t".join(str(x) for x in (setup, name, wl, ios / float(runtime),
      us(sticks), us(bticks), (float(u) + float(s)) * 1e6 / ios,
      float(cs) / ios)))
EOF
  done
  kill $srv; wait $srv 2>/dev/null || :
}

setup_nfs () {
  [ "$(id -u)" = 0 ] || { echo "$0: nfs needs root" >&2; exit 1; }
  mkdir -p "$work/export"
  head -c 256M /dev/urandom > "$work/data.raw"
  qemu-img convert -f raw -O qcow2 "$work/data.raw" "$work/export/data.qcow2"
  rm "$work/data.raw"
  # The servers run in the namespace of the NFS server (bench/nfs-ns.sh).
  nfs_ns_start "$work" || {
    echo "$0: nfs server did not start: $(cat "$work/nfs-start.log")" >&2
    nfs_ns_stop "$work"; exit 1; }
  local anchor ganesha rpcbind
  anchor=$(cat "$work/anchor.pid")
  read -r ganesha rpcbind < "$work/daemons.pid"
  pids+=($anchor $ganesha $rpcbind)
  pin_backend $ganesha
  local url=nfs://127.0.0.1/export/data.qcow2 ns=(nsenter -t $anchor -n -m --)
  for (( r = 1; r <= rounds; r++ )); do
    measure nfs nbdkit-qcow2-nfs $ganesha "${ns[@]}" nbdkit -f -U "$work/s.sock" \
      "$build/plugins/qcow2/nbdkit-qcow2-plugin.so" file=$url
    measure nfs qemu-nbd $ganesha "${ns[@]}" qemu-nbd -t -e 0 -k "$work/s.sock" \
      -f qcow2 $url
  done
}

setup_netfloor () {
  nbdkit -f -U "$work/up.sock" memory size=256M &
  local up=$!
  pids+=($up)
  pin_backend $up
  local i
  for (( i = 0; i < 200; i++ )); do [ -S "$work/up.sock" ] && break; sleep 0.05; done
  nbdcopy -- [ nbdkit pattern size=256M ] "nbd+unix:///?socket=$work/up.sock"
  for (( r = 1; r <= rounds; r++ )); do
    measure netfloor nbdkit-nbd $up nbdkit -f -U "$work/s.sock" nbd socket="$work/up.sock"
    measure netfloor qemu-nbd $up qemu-nbd -t -e 0 -k "$work/s.sock" -f raw \
      "nbd+unix:///?socket=$work/up.sock"
  done
}

setup_null () {
  for (( r = 1; r <= rounds; r++ )); do
    measure null nbdkit-null 0 nbdkit -f -U "$work/s.sock" null size=256M
    measure null qemu-nbd 0 qemu-nbd -t -e 0 -k "$work/s.sock" \
      --image-opts driver=null-co,size=256M,read-zeroes=off
  done
}

for s in "$@"; do
  case $s in
    nfs|netfloor|null) echo "cpu-split: $s ($rounds rounds of ${runtime} s)" >&2; setup_$s ;;
    *) echo "$0: unknown setup '$s' (nfs, netfloor, null)" >&2; exit 2 ;;
  esac
done

python3 - "$results" "$rounds" <<'EOF'
import statistics, sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
print("%s rounds; medians; CPU and context switches per I/O\n" % sys.argv[2])
print("| setup | server | workload | IOPS | server µs | backend µs | fio µs | all three µs | context switches (machine) |")
print("|---|---|---|---:|---:|---:|---:|---:|---:|")
seen = []
for r in rows:
    if tuple(r[:3]) not in seen:
        seen.append(tuple(r[:3]))
for key in seen:
    vals = [list(map(float, r[3:])) for r in rows if tuple(r[:3]) == key]
    med = [statistics.median(v[i] for v in vals) for i in range(5)]
    tot = statistics.median(v[1] + v[2] + v[3] for v in vals)
    print("| %s | %s | %s | %.0f | %.1f | %.1f | %.1f | %.1f | %.2f |"
          % (key + (med[0], med[1], med[2], med[3], tot, med[4])))
EOF
