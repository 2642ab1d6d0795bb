#!/bin/bash
# SPDX-License-Identifier: BSD-3-Clause
# Where the CPU of a 4 KiB random I/O goes, process by process, for a
# server that forwards each request over a socket to a backend server.
# bench/run.sh reports IOPS and the NBD server's CPU; on a machine whose
# cores are shared by the client, the NBD server and the backend, IOPS
# follow the sum of all three, so this splits it:
#
#   bench/cpu-split.sh [--rounds N] [--runtime SECS] [--pin-backend]
#                      [--syscalls] SETUP...
#
#   nfs       our qcow2 plugin on nfs://  vs  qemu-nbd on nfs:// (QEMU's
#             libnfs driver); backend: nfs-ganesha (tests/nfs/nfs-server.sh)
#             in a private network namespace (root only)
#   nfsfloor  nbdkit's own nbd plugin  vs  qemu-nbd's nbd driver, both
#             forwarding to one upstream qemu-nbd that serves nfs's image
#             through QEMU's libnfs driver; backend: that qemu-nbd and
#             nfs-ganesha (both on CPU 0 with --pin-backend)
#   netfloor  nbdkit's own nbd plugin  vs  qemu-nbd's nbd driver, both
#             forwarding to one upstream `nbdkit memory`: the cost of the
#             two servers' designs for any plugin with a network backend,
#             with no code of this project involved
#   waitfloor netfloor with an upstream qemu-nbd null-co that answers
#             each request after WAIT_US µs (default 50: about what
#             nfs-ganesha spends per request here), without code of this
#             project: a backend that makes both servers wait as nfs does
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
#
# --syscalls also counts, per I/O, the context switches and the system
# calls (futex, sends, receives, polls) of the NBD server and of fio,
# through perf's syscall tracepoints.  They slow both sides down, so the
# IOPS and CPU of such a run are not comparable with one without it.
set -euo pipefail
rounds=3 runtime=5 pin= syscalls=
while [ $# -gt 0 ]; do
  case $1 in
    --rounds) rounds=$2; shift 2 ;;
    --runtime) runtime=$2; shift 2 ;;
    --pin-backend) pin=1; shift ;;
    --syscalls) syscalls=1; shift ;;
    -*) echo "usage: $0 [--rounds N] [--runtime SECS] [--pin-backend] [--syscalls] SETUP..." >&2; exit 2 ;;
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
results=$work/results.tsv sysresults=$work/syscalls.tsv
: > "$results"; : > "$sysresults"

# Events of --syscalls, per process.
sysevents=context-switches
for c in futex sendto sendmsg write writev recvfrom recvmsg read readv \
         poll ppoll epoll_wait epoll_pwait io_uring_enter; do
  sysevents+=,syscalls:sys_enter_$c
done

# cputicks PID...: user + system clock ticks of the processes, summed.
cputicks () { local p t=0; for p; do t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat"))); done; echo $t; }

# With --pin-backend: the NBD server and fio on CPU 1, a backend on CPU 0.
front=()
if [ -n "$pin" ]; then
  [ "$(nproc)" -ge 2 ] || { echo "$0: --pin-backend needs 2 CPUs" >&2; exit 1; }
  front=(taskset -c 1)
fi
pin_backend () { local p; [ -z "$pin" ] || for p; do taskset -a -p -c 0 "$p" >/dev/null; done; }

# measure SETUP NAME BACKEND-PIDS CMD...: serve on $work/s.sock, run fio.
# BACKEND-PIDS: the backend's processes (one word, PIDs separated by
# commas), or 0 for none.
measure () {
  local setup=$1 name=$2 backend=$3; shift 3
  local sock=$work/s.sock i wl
  rm -f "$sock"
  "${front[@]}" "$@" &
  local srv=$!
  for (( i = 0; i < 200; i++ )); do [ -S "$sock" ] && break; sleep 0.05; done
  [ -S "$sock" ] || { echo "$0: $name did not start" >&2; exit 1; }
  for wl in randread randwrite; do
    local s0 b0=0 s1 b1=0 fioperf=() sp=
    s0=$(cputicks $srv); [ "$backend" = 0 ] || b0=$(cputicks ${backend//,/ })
    if [ -n "$syscalls" ]; then
      perf stat -x, -e "$sysevents" -o "$work/srv-sys.txt" -p $srv &
      sp=$!
      fioperf=(perf stat -x, -e "$sysevents" -o "$work/fio-sys.txt")
    fi
    perf stat -a -e context-switches -x, -o "$work/perf.txt" \
      /usr/bin/time -f "%U %S" -o "$work/fio.time" \
      "${fioperf[@]}" "${front[@]}" fio --name=x --ioengine=nbd --uri="nbd+unix:///?socket=$sock" \
        --rw=$wl --bs=4k --iodepth=16 --numjobs=1 --size=256M \
        --time_based --runtime="$runtime" --output-format=json \
        --output="$work/fio.json" > "$work/fio.log" 2>&1
    s1=$(cputicks $srv); [ "$backend" = 0 ] || b1=$(cputicks ${backend//,/ })
    [ -z "$sp" ] || { kill -INT $sp; wait $sp 2>/dev/null || :; }
    # A row of $results and, with --syscalls, one of $sysresults: per I/O
    # "switches futex sends receives polls" of the server, then of fio.
    python3 - "$work" "$setup" "$name" "$wl" "$runtime" "$((s1 - s0))" \
      "$((b1 - b0))" "$(getconf CLK_TCK)" "$results" \
      "${sp:+$sysresults}" <<'EOF'
import json, sys
work, setup, name, wl, runtime, sticks, bticks, hz, res, sysres = sys.argv[1:]
j = json.load(open(work + "/fio.json"))["jobs"][0]
ios = j["read"]["total_ios"] + j["write"]["total_ios"]
u, s = open(work + "/fio.time").read().split()[:2]
cs = [l.split(",")[0] for l in open(work + "/perf.txt") if "context-switches" in l][0]
us = lambda ticks: float(ticks) / float(hz) * 1e6 / ios
with open(res, "a") as out:
    print("\t".join(str(x) for x in (setup, name, wl, ios / float(runtime),
          us(sticks), us(bticks), (float(u) + float(s)) * 1e6 / ios,
          float(cs) / ios)), file=out)

def syscalls(path):
    n = {}
    for l in open(path):
        f = l.split(",")
        if len(f) > 3 and f[0].replace(".", "").isdigit():
            n[f[2].replace("syscalls:sys_enter_", "")] = float(f[0])
    group = lambda *names: sum(n.get(x, 0) for x in names) / ios
    return [group("context-switches"), group("futex"),
            group("sendto", "sendmsg", "write", "writev"),
            group("recvfrom", "recvmsg", "read", "readv"),
            group("poll", "ppoll", "epoll_wait", "epoll_pwait", "io_uring_enter")]

if sysres:
    with open(sysres, "a") as out:
        print("\t".join([setup, name, wl] + ["%.2f" % x for x in
              syscalls(work + "/srv-sys.txt") + syscalls(work + "/fio-sys.txt")]),
              file=out)
EOF
  done
  kill $srv; wait $srv 2>/dev/null || :
}

# start_nfs: the qcow2 image in a private nfs-ganesha (bench/nfs-ns.sh);
# sets anchor and ganesha.  The servers run in its namespace (ns).
start_nfs () {
  [ "$(id -u)" = 0 ] || { echo "$0: nfs needs root" >&2; exit 1; }
  [ -z "${ganesha:-}" ] || return 0
  head -c 256M /dev/urandom > "$work/data.raw"
  nfs_ns_serve_qcow2 "$work" "$work/data.raw" || {
    echo "$0: nfs server did not start: $(cat "$work/nfs-start.log")" >&2
    nfs_ns_stop "$work"; exit 1; }
  local rpcbind
  anchor=$(cat "$work/anchor.pid")
  read -r ganesha rpcbind < "$work/daemons.pid"
  pids+=($anchor $ganesha $rpcbind)
  pin_backend $ganesha
  ns=(nsenter -t $anchor -n -m --)
}

setup_nfs () {
  start_nfs
  local url=nfs://127.0.0.1/export/data.qcow2
  for (( r = 1; r <= rounds; r++ )); do
    measure nfs nbdkit-qcow2-nfs $ganesha "${ns[@]}" nbdkit -f -U "$work/s.sock" \
      "$build/plugins/qcow2/nbdkit-qcow2-plugin.so" file=$url
    measure nfs qemu-nbd $ganesha "${ns[@]}" qemu-nbd -t -e 0 -k "$work/s.sock" \
      -f qcow2 $url
  done
}

# start_upstream CMD...: run the upstream NBD server CMD (serving on
# $work/up.sock) in the background, pinned as a backend; sets upid.
start_upstream () {
  local i
  rm -f "$work/up.sock"
  "$@" &
  upid=$!
  pids+=($upid)
  pin_backend $upid
  for (( i = 0; i < 200; i++ )); do [ -S "$work/up.sock" ] && break; sleep 0.05; done
  [ -S "$work/up.sock" ] || { echo "$0: the upstream server did not start: $*" >&2; exit 1; }
}

# floor_rounds SETUP BACKEND-PIDS: nbdkit's nbd plugin and qemu-nbd's nbd
# driver, each forwarding to the upstream on $work/up.sock; then the
# upstream is stopped.
floor_rounds () {
  for (( r = 1; r <= rounds; r++ )); do
    measure "$1" nbdkit-nbd "$2" nbdkit -f -U "$work/s.sock" nbd socket="$work/up.sock"
    measure "$1" qemu-nbd "$2" qemu-nbd -t -e 0 -k "$work/s.sock" -f raw \
      "nbd+unix:///?socket=$work/up.sock"
  done
  kill $upid; wait $upid 2>/dev/null || :
}

# nfsfloor: as the bench scenario of that name.  The backend is the
# upstream qemu-nbd on nfs:// and nfs-ganesha together.
setup_nfsfloor () {
  start_nfs
  start_upstream "${ns[@]}" qemu-nbd -t -e 0 -k "$work/up.sock" -f qcow2 \
    nfs://127.0.0.1/export/data.qcow2
  floor_rounds nfsfloor $upid,$ganesha
}

setup_netfloor () {
  start_upstream nbdkit -f -U "$work/up.sock" memory size=256M
  nbdcopy -- [ nbdkit pattern size=256M ] "nbd+unix:///?socket=$work/up.sock"
  floor_rounds netfloor $upid
}

# waitfloor: netfloor with an upstream that answers each request after
# WAIT_US microseconds (default 50, about nfs-ganesha's time per request
# here) on a timer, not by computing: qemu-nbd's null-co with latency-ns.
setup_waitfloor () {
  start_upstream qemu-nbd -t -e 0 -k "$work/up.sock" --image-opts \
    driver=null-co,size=256M,read-zeroes=off,latency-ns=$(( ${WAIT_US:-50} * 1000 ))
  floor_rounds waitfloor $upid
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
    nfs|nfsfloor|netfloor|waitfloor|null) echo "cpu-split: $s ($rounds rounds of ${runtime} s)" >&2; setup_$s ;;
    *) echo "$0: unknown setup '$s' (nfs, nfsfloor, netfloor, waitfloor, null)" >&2; exit 2 ;;
  esac
done

# The tables: medians over the rounds of each setup, server and workload.
python3 - "$rounds" "$results" "${syscalls:+$sysresults}" <<'EOF'
import statistics, sys

def medians(path):
    """Rows of PATH grouped by (setup, server, workload), in first-seen
    order, with the median of each numeric column (and the rows)."""
    rows = [l.rstrip("\n").split("\t") for l in open(path) if l.strip()]
    keys = []
    for r in rows:
        if tuple(r[:3]) not in keys:
            keys.append(tuple(r[:3]))
    for key in keys:
        vals = [list(map(float, r[3:])) for r in rows if tuple(r[:3]) == key]
        yield key, vals, [statistics.median(v[i] for v in vals)
                          for i in range(len(vals[0]))]

print("%s rounds; medians; CPU and context switches per I/O\n" % sys.argv[1])
print("| setup | server | workload | IOPS | server µs | backend µs | fio µs | all three µs | context switches (machine) |")
print("|---|---|---|---:|---:|---:|---:|---:|---:|")
for key, vals, med in medians(sys.argv[2]):
    tot = statistics.median(v[1] + v[2] + v[3] for v in vals)
    print("| %s | %s | %s | %.0f | %.1f | %.1f | %.1f | %.1f | %.2f |"
          % (key + (med[0], med[1], med[2], med[3], tot, med[4])))

if sys.argv[3]:
    print("\nPer I/O (medians), with syscall tracing on: context switches and system calls")
    print("(sends: sendto, sendmsg, write, writev; receives: recvfrom, recvmsg, read,")
    print("readv; polls: poll, ppoll, epoll_wait, epoll_pwait, io_uring_enter)\n")
    print("| setup | server | workload | server switches | server futex | server sends | server receives | server polls | fio switches | fio futex | fio sends | fio receives | fio polls |")
    print("|---|---|---|" + "---:|" * 10)
    for key, vals, med in medians(sys.argv[3]):
        print("| %s | %s | %s | " % key + " | ".join("%.2f" % x for x in med) + " |")
EOF
