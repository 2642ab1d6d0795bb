#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# Resource limits (docs/hardening.md "Resource limits"): for each cap on
# an allocation sized from image metadata, a hand-made image
# (tests/torture/make-hostile.py) claims far more: 2^63 bytes, 10^9
# snapshots, 10^6 layers, an L1 table of 128 MiB, 16 GiB of grain
# tables, a 128 MiB log...  Served by our plugin or filter, the open must
# fail within seconds, with nbdkit's peak RSS bounded, and with a message
# that names the limit.  Each case also runs under the sanitizer build,
# where ASan aborts on any single allocation above RL_RSS_MB.
#
#   RL_RSS_MB     peak RSS allowed for nbdkit in MiB (default 256)
#   RL_SECONDS    time allowed for the failed open (default 20: generous
#                 for a loaded 2-core machine; each case prints its time)
#   RL_CASES      only these cases (default: all)
source "${TOP_SRCDIR:-$(dirname "$0")/../..}/tests/functions.sh"
requires timeout qemu-img nbdinfo
[ -x /usr/bin/python3 ] && export PATH="/usr/bin:$PATH"
requires_plugin qcow2; requires_plugin vmdk; requires_plugin vhdx
requires_filter qcow2; requires_filter thin; requires_filter snapshot

rss_mb=${RL_RSS_MB:-256}
limit_s=${RL_SECONDS:-20}
if [ "$KVM_SANITIZE" = 1 ]; then
  export ASAN_OPTIONS="$ASAN_OPTIONS:max_allocation_size_mb=$rss_mb:allocator_may_return_null=0"
fi
gen="$TOP_SRCDIR/tests/torture/make-hostile.py"
cd "$tmpdir"

qemu-img create -q -f qcow2 base.qcow2 16M
qemu-img create -q -f vhdx -o block_size=8M base.vhdx 16M

# meter OUT SECONDS CMD...: run CMD, killed after SECONDS; write "STATUS
# MILLISECONDS PEAK-RSS-KIB" to OUT (the peak RSS even of a killed CMD).
meter () {
  python3 - "$@" <<'PY'
import resource, subprocess, sys, time
out, secs, cmd = sys.argv[1], float(sys.argv[2]), sys.argv[3:]
t0 = time.monotonic()
try:
    rc = subprocess.run(cmd, timeout=secs).returncode
except subprocess.TimeoutExpired:
    rc = 137
ms = int((time.monotonic() - t0) * 1000)
kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
with open(out, "w") as f:
    f.write("%d %d %d\n" % (rc if rc >= 0 else 128 - rc, ms, kib))
PY
}

# case NAME 'REGEX' NBDKIT-ARGS...: make the image, serve it, connect.
# REGEX must match nbdkit's error output (grep -E).  The plugins open the
# image at start-up to check it, and stop there: their time and peak RSS
# are those of the whole nbdkit run.  Under the sanitizer preload nbdkit
# 1.32 may deadlock in exit() after that error; the run is then killed at
# RL_SECONDS, and passes if the error was printed before.
ncases=0
run_case () {
  local name=$1 regex=$2; shift 2
  if [ -n "${RL_CASES:-}" ] && ! grep -qw -- "$name" <<< "$RL_CASES"; then return 0; fi
  local d="$tmpdir/$name" sock="$tmpdir/$name.sock" pidfile="$tmpdir/$name.pid"
  local base=""
  case $name in qcow2*) base=base.qcow2 ;; vhdx*) base=base.vhdx ;; esac
  python3 "$gen" "$name" "$d" $base
  local args=() a
  for a in "$@"; do args+=("${a//@/$d/}"); done
  rm -f "$sock" "$pidfile" "$d.meter"
  meter "$d.meter" "$limit_s" \
    env ${KVM_SANITIZER_PRELOAD:+LD_PRELOAD="$KVM_SANITIZER_PRELOAD"} \
    nbdkit -f -U "$sock" -P "$pidfile" "${args[@]}" 2> "$d.log" &
  local bg=$! pid="" i
  kill_at_exit $bg
  for (( i=0; i<600; i++ )); do
    [ -s "$pidfile" ] && [ -S "$sock" ] && { pid=$(cat "$pidfile"); break; }
    kill -0 $bg 2>/dev/null || break
    sleep 0.05
  done
  local t0 t1 rc=0 hwm=0 ms st
  t0=$(date +%s%N)
  if [ -n "$pid" ]; then
    timeout -s KILL 120 nbdinfo --size "nbd+unix:///?socket=$sock" > "$d.out" 2> "$d.err" || rc=$?
    t1=$(date +%s%N)
    hwm=$(awk '/^VmHWM:/ {print $2}' "/proc/$pid/status" 2>/dev/null || echo 0)
    kill -0 "$pid" 2>/dev/null || { cat "$d.log"; fail "$name: nbdkit died"; }
    kill -9 "$pid"
    wait $bg 2>/dev/null || :
    ms=$(( (t1 - t0) / 1000000 ))
  else
    # Refused at start-up.
    wait $bg 2>/dev/null || :
    read -r st ms hwm < "$d.meter" || fail "$name: no measurement"
    [ "$st" != 0 ] || fail "$name: nbdkit exited 0 without serving"
    (( st < 128 )) || [ "$st" = 137 ] ||
      { cat "$d.log"; fail "$name: nbdkit died of signal $((st - 128))"; }
    if [ "$st" = 137 ]; then
      [ -n "${KVM_SANITIZER_PRELOAD:-}" ] && grep -Eq -- "$regex" "$d.log" ||
        { cat "$d.log"; fail "$name: the open did not finish in $limit_s s"; }
      ms=0            # the exit deadlock: the error came within the limit
    fi
    rc=1
  fi
  [ $rc != 137 ] || fail "$name: the open did not finish in 120 s"
  [ $rc != 0 ] || { cat "$d.log"; fail "$name: the image was opened (size $(cat "$d.out"))"; }
  grep -Eq 'AddressSanitizer|runtime error:|requested allocation size' "$d.log" &&
    { cat "$d.log"; fail "$name: sanitizer report"; }
  grep -Eq -- "$regex" "$d.log" || { cat "$d.log"; fail "$name: no message matching /$regex/"; }
  [ $ms -le $((limit_s * 1000)) ] || fail "$name: the open took $ms ms (more than $limit_s s)"
  [ "${hwm:-0}" -le $((rss_mb * 1024)) ] || fail "$name: nbdkit peak RSS $hwm KiB (more than $rss_mb MiB)"
  echo "ok: $name: refused in $ms ms, nbdkit peak RSS $((hwm / 1024)) MiB: $(grep -Eo -- "$regex.*" "$d.log" | head -1 | cut -c1-110)"
  ncases=$((ncases + 1))
  rm -rf "$d"
}

qcow2p=$(plugin_so qcow2) vmdkp=$(plugin_so vmdk) vhdxp=$(plugin_so vhdx)
thinf=--filter=$(filter_so thin) snapf=--filter=$(filter_so snapshot) qcow2f=--filter=$(filter_so qcow2)

run_case qcow2-size 'virtual size 9223372036854775808 is too large \(the limit is 2\^61' "$qcow2p" file=@disk.qcow2
run_case qcow2-l1 'L1 table is too large \(16777216 entries; the limit is 32 MiB' "$qcow2p" file=@disk.qcow2
run_case qcow2-rt 'refcount table of 1048576 clusters is too large \(the limit is 8 MiB' "$qcow2p" file=@disk.qcow2
run_case qcow2-snapshots 'too many snapshots \(1000000000; the limit is 65536' "$qcow2p" file=@disk.qcow2
run_case qcow2-snaptable 'snapshot table is larger than the limit of 64 MiB' "$qcow2p" file=@disk.qcow2
# The same engine behind the filter.
run_case qcow2-snapshots 'too many snapshots \(1000000000; the limit is 65536' "$qcow2f" file @disk.qcow2
run_case vmdk-capacity 'capacity of 4611686018427387904 sectors is too large \(the limit is' "$vmdkp" file=@disk.vmdk
run_case vmdk-gd 'grain tables \(1073741824\); the limit is 67108864' "$vmdkp" file=@disk.vmdk
run_case vmdk-gtmem 'name 16384 MiB of grain tables .* more than the limit of 256 MiB' "$vmdkp" file=@disk.vmdk
run_case vmdk-extents 'too many extents \(at most 4096\)' "$vmdkp" file=@disk.vmdk
run_case vmdk-desc 'is larger than a descriptor may be: the limit is 1048576 bytes' "$vmdkp" file=@disk.vmdk
run_case vmdk-total 'total size too large' "$vmdkp" file=@disk.vmdk
run_case vhdx-size 'virtual disk size 9223372036854775808 .*at most 64 TiB' "$vhdxp" file=@disk.vhdx
run_case vhdx-bat 'BAT of [0-9]+ entries is too large \(the limit is 67108864 entries' "$vhdxp" file=@disk.vhdx
run_case vhdx-log 'the log must be replayed but is 134217728 bytes \(at most 67108864\)' "$vhdxp" file=@disk.vhdx
run_case vhdx-logheaders 'more entry headers than a log written in order can \(over 4 times its size' "$vhdxp" file=@disk.vhdx
run_case thin-size 'chunks of 4096 bytes \(at most 268435456' "$thinf" file @pool.img thin-metadata=@meta.thin
run_case thin-short 'the metadata of 268435456 virtual chunks needs [0-9]+ bytes, but the device has 8192' "$thinf" file @pool.img thin-metadata=@meta.thin
run_case snapshot-layers 'more than 256 layers \(the limit\)' "$snapf" file @base.raw overlay-dir=@ov
run_case snapshot-size 'the snapshot chain was made over 9223372036854775807 bytes' "$snapf" file @base.raw overlay-dir=@ov

[ $ncases -gt 0 ] || fail "no case ran"
echo "resource-limits: $ncases cases refused in bounded time and memory"
echo PASS
