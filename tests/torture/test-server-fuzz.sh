#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# Whole-server fuzzing: images made by qemu-img (and by our filters for
# their own metadata) are damaged by tests/torture/server-mutate.py (a
# seeded PRNG: boundary values in header fields and table entries, bit
# flips, splices, zeroed/0xff runs, descriptor and state-file text
# mutations; checksums mostly recomputed), then each one is served by
# nbdkit with our plugin or filter and driven by real clients, each under
# `timeout`: nbdinfo --map, nbdcopy (full read), qemu-io (reads, writes,
# write-zeroes, discards, flush), and nbdinfo --list for qcow2.
#
# A round fails on: nbdkit dying by a signal, a sanitizer report in its
# log, a client or the server not finishing in time (a hang), a peak RSS
# of nbdkit above the cap, or a refusal at start-up without a message.
# An open refused with an error, or I/O errors, are passes.  Under the
# sanitizer build, ASan also aborts nbdkit on any single allocation above
# the cap (max_allocation_size_mb) and above the RSS cap
# (hard_rss_limit_mb), which catches an allocation sized from metadata
# without a bound even when its pages are never touched.
#
#   SERVER_FUZZ_FORMATS  formats (default: qcow2 qcow2filter vmdk vhdx thin
#                        snapshot)
#   SERVER_FUZZ_ROUNDS   images per format (default 6; e.g. 1000 locally)
#   SERVER_FUZZ_SEED     first seed (default 1); image r of a format uses
#                        seed + r (printed for every failure)
#   SERVER_FUZZ_RSS_MB   RSS cap of nbdkit in MiB (default 1024)
#   SERVER_FUZZ_TIMEOUT  seconds per client (default 60)
#   SERVER_FUZZ_DEADLINE  epoch seconds: start no batch after it (long runs)
#   SERVER_FUZZ_KEEP_GOING=1  record failures and go on (long runs); the
#                        test still fails at the end if any round failed
#   V=1                  print every round's mutation and outcome
#
# A failing round prints FORMAT and seed, and its image set is kept in
# $TOP_BUILDDIR/server-fuzz-failures/FORMAT-SEED/ (the seed images are made
# afresh each run and differ in random data, GUIDs and times, so keep the
# files: the seed alone may not reproduce it).
#
# nbdkit 1.32's own abort when a client hangs up with replies queued
# ("raw_send_socket: Assertion `sock >= 0' failed", fixed in 1.33.10) and
# the exit() deadlock in libp11-kit seen under the sanitizer preload are
# counted apart (see tests/lvm/test-lvm-hostile-server.sh).
source "${TOP_SRCDIR:-$(dirname "$0")/../..}/tests/functions.sh"
requires timeout qemu-img qemu-io nbdinfo nbdcopy
[ -x /usr/bin/python3 ] && export PATH="/usr/bin:$PATH"

formats=${SERVER_FUZZ_FORMATS:-qcow2 qcow2filter vmdk vhdx thin snapshot}
rounds=${SERVER_FUZZ_ROUNDS:-6}
seed0=${SERVER_FUZZ_SEED:-1}
rss_cap=${SERVER_FUZZ_RSS_MB:-1024}
ctimeout=${SERVER_FUZZ_TIMEOUT:-60}
keep_going=${SERVER_FUZZ_KEEP_GOING:-0}
faildir="$TOP_BUILDDIR/server-fuzz-failures"
here="$TOP_SRCDIR/tests/torture"
snapshot_ctl="$TOP_BUILDDIR/filters/snapshot/nbdkit-snapshot-ctl"

for f in $formats; do
  case $f in
    qcow2|vmdk|vhdx) requires_plugin $f ;;
    qcow2filter) requires_filter qcow2 ;;
    thin) requires_filter thin ;;
    snapshot) requires_filter snapshot; [ -x "$snapshot_ctl" ] || skip "nbdkit-snapshot-ctl not built" ;;
    *) fail "unknown format $f" ;;
  esac
done

if [ "$KVM_SANITIZE" = 1 ]; then
  export ASAN_OPTIONS="$ASAN_OPTIONS:hard_rss_limit_mb=$rss_cap:max_allocation_size_mb=$rss_cap:allocator_may_return_null=0"
fi

cd "$tmpdir"
S=seeds
M=$((1024 * 1024))

# --- seed images -------------------------------------------------------------
qio () { qemu-io "$@" > /dev/null; }
fillcmds="-c 'write -P 0x11 0 96k' -c 'write -P 0x22 3M 8k' -c 'write -P 0x33 9000k 1M' -c 'write -z 5M 64k'"
fill () { eval qio -f "$1" $fillcmds '"$2"'; }
# Served by a plugin: a tiny raw with data for converts.
random_file data.raw 256K
truncate -s 16M data.raw

mkseed () { mkdir -p "$S/$1/$2"; echo "$S/$1/$2"; }

seeds_qcow2 () {
  local d
  d=$(mkseed qcow2 plain4k); qemu-img create -q -f qcow2 -o cluster_size=4096 "$d/disk.qcow2" 16M; fill qcow2 "$d/disk.qcow2"
  d=$(mkseed qcow2 v2); qemu-img create -q -f qcow2 -o compat=0.10 "$d/disk.qcow2" 16M; fill qcow2 "$d/disk.qcow2"
  d=$(mkseed qcow2 backing)
  qemu-img create -q -f qcow2 -o cluster_size=8192 "$d/base.qcow2" 16M; fill qcow2 "$d/base.qcow2"
  qemu-img create -q -f qcow2 -o cluster_size=8192 -b base.qcow2 -F qcow2 "$d/disk.qcow2"
  qio -f qcow2 -c 'write -P 0x44 1M 64k' "$d/disk.qcow2"
  d=$(mkseed qcow2 snapshots); qemu-img create -q -f qcow2 -o cluster_size=4096 "$d/disk.qcow2" 16M; fill qcow2 "$d/disk.qcow2"
  qemu-img snapshot -c first "$d/disk.qcow2"
  qio -f qcow2 -c 'write -P 0x55 0 64k' "$d/disk.qcow2"
  qemu-img snapshot -c second "$d/disk.qcow2"
  d=$(mkseed qcow2 bitmaps); qemu-img create -q -f qcow2 "$d/disk.qcow2" 16M; fill qcow2 "$d/disk.qcow2"
  qemu-img bitmap --add "$d/disk.qcow2" b0
  qemu-img bitmap --add -g 65536 "$d/disk.qcow2" b1
  qemu-img bitmap --disable "$d/disk.qcow2" b1
  d=$(mkseed qcow2 compressed); qemu-img convert -q -c -f raw -O qcow2 -o cluster_size=4096 data.raw "$d/disk.qcow2"
  d=$(mkseed qcow2 zstd); qemu-img convert -q -c -f raw -O qcow2 -o compression_type=zstd data.raw "$d/disk.qcow2"
  d=$(mkseed qcow2 extl2); qemu-img create -q -f qcow2 -o extended_l2=on,cluster_size=65536 "$d/disk.qcow2" 16M; fill qcow2 "$d/disk.qcow2"
  d=$(mkseed qcow2 refcount1); qemu-img create -q -f qcow2 -o refcount_bits=1,cluster_size=4096 "$d/disk.qcow2" 16M; fill qcow2 "$d/disk.qcow2"
  d=$(mkseed qcow2 refcount64); qemu-img create -q -f qcow2 -o refcount_bits=64,lazy_refcounts=on "$d/disk.qcow2" 16M; fill qcow2 "$d/disk.qcow2"
  d=$(mkseed qcow2 prealloc); qemu-img create -q -f qcow2 -o preallocation=metadata,cluster_size=4096 "$d/disk.qcow2" 16M
  # The filter serves the same images (and follows the same backing).
  mkdir -p "$S/qcow2filter"; cp -r "$S/qcow2/." "$S/qcow2filter/"
}

seeds_vmdk () {
  local d sub
  for sub in monolithicSparse monolithicFlat twoGbMaxExtentSparse twoGbMaxExtentFlat; do
    d=$(mkseed vmdk $sub)
    qemu-img create -q -f vmdk -o subformat=$sub "$d/disk.vmdk" 16M
    fill vmdk "$d/disk.vmdk"
  done
  d=$(mkseed vmdk stream); qemu-img convert -q -f raw -O vmdk -o subformat=streamOptimized data.raw "$d/disk.vmdk"
  d=$(mkseed vmdk zeroed); qemu-img create -q -f vmdk -o zeroed_grain=on "$d/disk.vmdk" 16M; fill vmdk "$d/disk.vmdk"
  d=$(mkseed vmdk child)
  qemu-img create -q -f vmdk "$d/base.vmdk" 16M; fill vmdk "$d/base.vmdk"
  qemu-img create -q -f vmdk -b base.vmdk -F vmdk "$d/disk.vmdk"
  qio -f vmdk -c 'write -P 0x66 64k 64k' "$d/disk.vmdk"
}

seeds_vhdx () {
  local d sc n=0
  d=$(mkseed vhdx dynamic); qemu-img create -q -f vhdx -o block_size=1M "$d/disk.vhdx" 16M; fill vhdx "$d/disk.vhdx"
  d=$(mkseed vhdx fixed); qemu-img create -q -f vhdx -o block_size=1M,subformat=fixed "$d/disk.vhdx" 4M
  qio -f vhdx -c 'write -P 0x33 4096 4096' "$d/disk.vhdx"
  d=$(mkseed vhdx diff)
  rm -f s.sock; nbdkit -U "$tmpdir/s.sock" "$(plugin_so vhdx)" file="$d/parent.vhdx" create=16M block-size=1M --run 'unset LD_PRELOAD; qemu-io -f raw -c "write -P 0x77 0 2M" "$uri" >/dev/null'
  rm -f s.sock; nbdkit -U "$tmpdir/s.sock" "$(plugin_so vhdx)" file="$d/disk.vhdx" create=0 parent="$d/parent.vhdx" block-size=1M --run 'unset LD_PRELOAD; qemu-io -f raw -c "write -P 0x78 1M 4k" "$uri" >/dev/null'
  for sc in one several wrap bat meta; do
    n=$((n + 1))
    d=$(mkseed vhdx log-$sc)
    qemu-img create -q -f vhdx -o block_size=1M "$d/disk.vhdx" 8M
    qio -f vhdx -c 'write -P 0x44 0 8k' -c 'write -P 0x55 2M 4k' "$d/disk.vhdx"
    python3 "$TOP_SRCDIR/tests/vhdx/vhdx-tool.py" dirty "$d/disk.vhdx" expect.tmp $sc $n
    rm -f expect.tmp
  done
}

seeds_thin () {
  local d
  d=$(mkseed thin external); truncate -s 8M "$d/pool.img"
  rm -f s.sock; nbdkit -U "$tmpdir/s.sock" --filter="$(filter_so thin)" file "$d/pool.img" thin-size=32M thin-metadata="$d/meta.thin" \
    --run 'unset LD_PRELOAD; qemu-io -f raw -c "write -P 0x11 0 200k" -c "write -P 0x22 20M 64k" -c "discard 0 64k" -c flush "$uri" >/dev/null'
  d=$(mkseed thin inpool4k); truncate -s 8M "$d/pool.img"
  rm -f s.sock; nbdkit -U "$tmpdir/s.sock" --filter="$(filter_so thin)" file "$d/pool.img" thin-size=64M thin-chunk=4K \
    --run 'unset LD_PRELOAD; qemu-io -f raw -c "write -P 0x11 0 200k" -c "write -P 0x22 40M 64k" -c flush "$uri" >/dev/null'
}

seeds_snapshot () {
  local d
  d=$(mkseed snapshot chain)
  random_file "$d/base.raw" 1M; truncate -s 8M "$d/base.raw"
  rm -f s.sock c.sock
  nbdkit -U "$tmpdir/s.sock" --filter="$(filter_so snapshot)" file "$d/base.raw" overlay-dir="$d/ov" control="$tmpdir/c.sock" \
    --run "unset LD_PRELOAD; qemu-io -f raw -c 'write -P 0x11 0 64k' \"\$uri\" >/dev/null && '$snapshot_ctl' '$tmpdir/c.sock' create one >/dev/null &&
           qemu-io -f raw -c 'write -P 0x22 1M 64k' \"\$uri\" >/dev/null && '$snapshot_ctl' '$tmpdir/c.sock' create two >/dev/null &&
           qemu-io -f raw -c 'write -P 0x33 2M 4k' \"\$uri\" >/dev/null"
  [ -f "$d/ov/snapshot.state" ] || fail "snapshot seed: no state file"
}

t0=$(date +%s)
for f in $formats; do
  case $f in qcow2filter) [ -d "$S/qcow2filter" ] || { [ -d "$S/qcow2" ] || seeds_qcow2; } ;; *) seeds_$f ;; esac
done
[ -n "${V:-}" ] && find "$S" -type f | sort
echo "seed images made in $(( $(date +%s) - t0 )) s: $(find "$S" -mindepth 2 -maxdepth 2 -type d | wc -l) bases"

# --- serving one image set ---------------------------------------------------
serve_args () {   # serve_args FORMAT DIR: nbdkit arguments (one per line)
  local f=$1 d=$2
  case $f in
    qcow2) printf '%s\n' "$(plugin_so qcow2)" "file=$d/disk.qcow2" ;;
    qcow2filter) printf '%s\n' "--filter=$(filter_so qcow2)" file "$d/disk.qcow2" ;;
    vmdk) printf '%s\n' "$(plugin_so vmdk)" "file=$d/disk.vmdk" ;;
    vhdx) printf '%s\n' "$(plugin_so vhdx)" "file=$d/disk.vhdx" ;;
    thin)
      printf '%s\n' "--filter=$(filter_so thin)" file "$d/pool.img"
      [ -f "$d/meta.thin" ] && printf '%s\n' "thin-metadata=$d/meta.thin" ;;
    snapshot) printf '%s\n' "--filter=$(filter_so snapshot)" file "$d/base.raw" "overlay-dir=$d/ov" ;;
  esac
}

platform_abort () { grep -q "raw_send_socket: Assertion .sock >= 0' failed" "$1"; }
sanitizer_report () { grep -Eq 'AddressSanitizer|LeakSanitizer|runtime error:|requested allocation size|rss limit' "$1"; }
platform_exit_hang () {
  [ "$KVM_SANITIZE" = 1 ] || return 1
  if command -v gdb >/dev/null 2>&1; then
    gdb -p "$1" -batch -ex 'thread apply all bt' 2>/dev/null > "$tmpdir/bt.txt" || :
    grep -q '__libc_setlocale_lock' "$tmpdir/bt.txt" && grep -q '_dl_fini' "$tmpdir/bt.txt"
  else
    [ "$(ls "/proc/$1/task" 2>/dev/null | wc -l)" = 1 ]
  fi
}

declare -A n_served n_refused n_copy_ok n_copy_fail n_mapfail
served=0 refused=0 platform_aborts=0 platform_exit_hangs=0 failures=0
max_rss=0 max_rss_at=""
cur_pid="" cur_bg="" poll_pid=""
cleanup_add '[ -n "$cur_pid" ] && kill -9 $cur_pid; [ -n "$cur_bg" ] && kill -9 $cur_bg; [ -n "$poll_pid" ] && kill -9 $poll_pid'

round_fail () {   # round_fail FORMAT SEED LOG MESSAGE
  local f=$1 s=$2 log=$3 msg=$4
  mkdir -p "$faildir"
  rm -rf "$faildir/$f-$s"; cp -r "work/$s" "$faildir/$f-$s" 2>/dev/null || :
  cp "$log" "$faildir/$f-$s/nbdkit.log" 2>/dev/null || :
  echo "--- nbdkit log (last lines):" >&2; tail -25 "$log" >&2
  echo "FAILED: $f seed $s: $msg (mutation: $what; image set kept in $faildir/$f-$s)" >&2
  failures=$((failures + 1))
  [ "$keep_going" = 1 ] || fail "$f seed $s: $msg (reproduce: SERVER_FUZZ_FORMATS=$f SERVER_FUZZ_SEED=$s SERVER_FUZZ_ROUNDS=1)"
  return 1
}

# client NAME CMD...: a client under timeout; a timeout is a hang.
client () {
  local name=$1 rc=0; shift
  timeout -s KILL "$ctimeout" "$@" >> client.out 2>&1 || rc=$?
  if [ $rc = 137 ] || [ $rc = 124 ]; then
    hung="$name did not finish in $ctimeout s"
    return 1
  fi
  return $rc
}

# The RSS poller: every 0.1 s, VmRSS of PID; over the cap -> note, SIGKILL.
rss_poll () {
  local pid=$1 cap_kb=$((rss_cap * 1024)) k v rest
  while :; do
    while read -r k v rest; do
      if [ "$k" = VmRSS: ] && [ "$v" -gt $cap_kb ]; then
        echo "$v" > "$tmpdir/rss-exceeded"; kill -9 "$pid"; return
      fi
    done < "/proc/$pid/status" || return 0
    sleep 0.1
  done
}

serve_round () {   # serve_round FORMAT SEED
  local f=$1 s=$2 d="$tmpdir/work/$2" sock="$tmpdir/s$2" pidfile="$tmpdir/p$2" log="$tmpdir/log$2"
  local bg pid="" i rc status args hwm size
  mapfile -t args < <(serve_args "$f" "$d")
  rm -f "$sock" "$pidfile" "$tmpdir/rss-exceeded" client.out
  nbdkit -f -U "$sock" -P "$pidfile" "${args[@]}" 2> "$log" &
  bg=$!; cur_bg=$bg
  for (( i=0; i<1200; i++ )); do
    if [ -s "$pidfile" ] && [ -S "$sock" ]; then pid=$(cat "$pidfile"); cur_pid=$pid; break; fi
    kill -0 $bg 2>/dev/null || break
    sleep 0.05
  done
  if [ -z "$pid" ]; then
    if kill -0 $bg 2>/dev/null; then
      kill -9 $bg 2>/dev/null; [ -s "$pidfile" ] && kill -9 "$(cat "$pidfile")"
      round_fail "$f" "$s" "$log" "nbdkit neither served nor exited within 60 s (hang at start-up)"; return
    fi
    status=0; wait $bg || status=$?
    cur_bg=""
    [ $status -lt 128 ] || { round_fail "$f" "$s" "$log" "nbdkit died by signal $((status - 128)) at start-up"; return; }
    sanitizer_report "$log" && { round_fail "$f" "$s" "$log" "sanitizer report at start-up"; return; }
    grep -qi 'error' "$log" || { round_fail "$f" "$s" "$log" "nbdkit refused to start without a message"; return; }
    refused=$((refused + 1)); n_refused[$f]=$(( ${n_refused[$f]:-0} + 1 ))
    outcome="refused at start-up: $(grep -i error "$log" | head -1 | cut -c1-150)"
    return 0
  fi
  served=$((served + 1)); n_served[$f]=$(( ${n_served[$f]:-0} + 1 ))
  rss_poll "$pid" & poll_pid=$!
  local uri="nbd+unix:///?socket=$sock"
  hung=""
  outcome=""
  # Clients.  Each failure other than a timeout is fine (the image may be
  # refused at open, or reads may fail on bad clusters).
  if client nbdinfo-map nbdinfo --map "$uri"; then
    outcome="map ok"
  else
    outcome="map failed"; n_mapfail[$f]=$(( ${n_mapfail[$f]:-0} + 1 ))
  fi
  if [ -z "$hung" ] && [ "$f" = qcow2 ]; then client nbdinfo-list nbdinfo --list "$uri" || :; fi
  if [ -z "$hung" ] && kill -0 "$pid" 2>/dev/null; then
    if client nbdcopy nbdcopy -- "$uri" null:; then
      outcome="$outcome, copy ok"; n_copy_ok[$f]=$(( ${n_copy_ok[$f]:-0} + 1 ))
    else
      outcome="$outcome, copy failed"; n_copy_fail[$f]=$(( ${n_copy_fail[$f]:-0} + 1 ))
    fi
  fi
  if [ -z "$hung" ] && kill -0 "$pid" 2>/dev/null; then
    # Seeded offsets inside the first 16 MiB (most images are that size;
    # qemu-io refuses requests past the end before sending them).
    local o1=$(( (s * 7919) % 250 * 65536 )) o2=$(( (s * 104729) % 4000 * 4096 ))
    if client qemu-io qemu-io -f raw "$uri" \
        -c "read 0 64k" -c "read $o1 128k" -c "write -P 0x5a $o2 4k" \
        -c "write -P 0xa5 $o1 70k" -c "write -z $o2 64k" -c "discard $o1 64k" \
        -c "read $o2 64k" -c "write -P 0x3c 0 4k" -c flush; then
      grep -q 'error\|failed' client.out && outcome="$outcome, io errors" || outcome="$outcome, io ok"
    else
      outcome="$outcome, io failed"
    fi
  fi
  # Peak RSS, then stop it: it must still run and exit promptly.
  hwm=$(awk '/^VmHWM:/ {print $2}' "/proc/$pid/status" 2>/dev/null || echo 0)
  hwm=${hwm:-0}
  if [ "$hwm" -gt "$max_rss" ]; then max_rss=$hwm; max_rss_at="$f seed $s"; fi
  kill "$poll_pid" 2>/dev/null; wait "$poll_pid" 2>/dev/null || :; poll_pid=""
  if [ -n "$hung" ]; then
    kill -9 "$pid" 2>/dev/null; wait $bg || :; cur_pid="" cur_bg=""
    round_fail "$f" "$s" "$log" "hang: $hung"; return
  fi
  if [ -f "$tmpdir/rss-exceeded" ]; then
    wait $bg || :; cur_pid="" cur_bg=""
    round_fail "$f" "$s" "$log" "nbdkit RSS $(cat "$tmpdir/rss-exceeded") KiB above the cap of $rss_cap MiB"; return
  fi
  if kill -0 "$pid" 2>/dev/null; then
    kill "$pid"
    for (( i=0; i<400; i++ )); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
    if kill -0 "$pid" 2>/dev/null; then
      if platform_exit_hang "$pid"; then
        kill -9 "$pid"; wait $bg || :
        platform_exit_hangs=$((platform_exit_hangs + 1))
        cur_pid="" cur_bg=""
        return 0
      fi
      kill -9 "$pid"; wait $bg || :; cur_pid="" cur_bg=""
      round_fail "$f" "$s" "$log" "nbdkit did not exit within 20 s of SIGTERM"; return
    fi
  fi
  status=0; wait $bg || status=$?
  cur_pid="" cur_bg=""
  if sanitizer_report "$log"; then round_fail "$f" "$s" "$log" "sanitizer report"; return; fi
  if [ $status -ge 128 ]; then
    if platform_abort "$log"; then
      platform_aborts=$((platform_aborts + 1))
    else
      round_fail "$f" "$s" "$log" "nbdkit died by signal $((status - 128))"; return
    fi
  fi
  if [ "$hwm" -gt $((rss_cap * 1024)) ]; then
    round_fail "$f" "$s" "$log" "peak RSS $hwm KiB above the cap of $rss_cap MiB"; return
  fi
  return 0
}

# --- the rounds -------------------------------------------------------------
# Batches of up to 10 images per format, the formats taking turns, so that
# a run stopped by SERVER_FUZZ_DEADLINE (epoch seconds: no new batch after
# it) has covered every format alike.
mkdir -p work
batch=10
deadline=${SERVER_FUZZ_DEADLINE:-0}
start=$(date +%s)
declare -A n_done
for (( b=0; b<rounds; b+=batch )); do
  if [ "$deadline" != 0 ] && [ "$(date +%s)" -ge "$deadline" ]; then
    echo "deadline reached after $b images per format"
    break
  fi
  n=$(( rounds - b < batch ? rounds - b : batch ))
  for f in $formats; do
    python3 "$here/server-mutate.py" "$f" "$S" work $((seed0 + b)) $n > muts.txt
    while IFS= read -r line; do
      s=${line%% *}
      what=${line#* }
      serve_round "$f" "$s" || :
      n_done[$f]=$(( ${n_done[$f]:-0} + 1 ))
      [ -n "${V:-}" ] && echo "$f $what -> ${outcome:-}"
      rm -rf "work/$s" "$tmpdir/log$s" "$tmpdir/s$s" "$tmpdir/p$s"
    done < muts.txt
  done
done
for f in $formats; do
  echo "$f: ${n_done[$f]:-0} images (seeds $seed0-$((seed0 + ${n_done[$f]:-0} - 1))):" \
       "served ${n_served[$f]:-0} (map failed: open refused or bad metadata ${n_mapfail[$f]:-0})," \
       "refused at start-up ${n_refused[$f]:-0}," \
       "full copies ok ${n_copy_ok[$f]:-0} / failed cleanly ${n_copy_fail[$f]:-0}"
done
echo "server-fuzz: $(( $(date +%s) - start )) s; peak nbdkit RSS $((max_rss / 1024)) MiB ($max_rss_at), cap $rss_cap MiB;" \
     "nbdkit 1.32 sock>=0 aborts (platform) $platform_aborts, exit deadlocks under the sanitizer preload (platform) $platform_exit_hangs;" \
     "failures $failures"
[ $failures = 0 ] || fail "$failures failing rounds (kept in $faildir)"
echo PASS
