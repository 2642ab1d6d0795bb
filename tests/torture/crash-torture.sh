#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# Crash torture: kill -9 of nbdkit at a random moment while four clients
# write, write zeroes, trim, flush and FUA, for every writable format and
# for the thin and snapshot filters, many rounds on the same image each.
# After every kill, with the server down:
#  - the structure is checked by the format's own tool: qemu-img check
#    (qcow2: exit 0, or 3 = leaked clusters, which a crash may leave as in
#    QEMU; vmdk, vhdx: no error at all), nbdkit-thin-check (clean), and
#    qemu-img check of every snapshot layer;
#  - the content (qemu-img convert -O raw, or through a restarted server
#    for the filters) is checked by qcow2-crashwriter check: every
#    request acknowledged by a completed flush or sent with FUA reads
#    back; a 512-byte piece written or zeroed after that holds the old or
#    the new data, never anything else (stale data, another slot's data,
#    garbage).  The writer and checker are the qcow2 crash test's
#    (tests/qcow2/qcow2-crashwriter.c), not copied.
# The per-component crash tests (qcow2-crash, vmdk-crash, vhdx-crash,
# thin-crash, thin-lvm-crash, snapshot-crash) test more images and
# special crash points; this driver runs the same kind of round over all
# targets, many times.
#
# Environment:
#   CRASH_TORTURE_ROUNDS   kills per target (default 2: CI time)
#   CRASH_TORTURE_SEED     seed of the kill delays and writers (default
#                          random; printed)
#   CRASH_TORTURE_TARGETS  space-separated subset of: qcow2 vmdk vhdx
#                          qcow2-filter thin snapshot snapshot-thin
#   CRASH_TORTURE_MAX_MS   kill delay upper bound after the writers have
#                          started, in ms (default 700)
source "${TOP_SRCDIR:?run the tests through ctest, which sets TOP_SRCDIR}/tests/functions.sh"

requires qemu-img nbdcopy nbdinfo
requires_plugin qcow2
requires_plugin vmdk
requires_plugin vhdx
requires_filter qcow2
requires_filter thin
requires_filter snapshot
writer="$TOP_BUILDDIR/tests/qcow2/qcow2-crashwriter"
[ -x "$writer" ] || skip "qcow2-crashwriter not built (libnbd-dev missing)"
thin_check_bin="$TOP_BUILDDIR/filters/thin/nbdkit-thin-check"
snapshot_ctl="$TOP_BUILDDIR/filters/snapshot/nbdkit-snapshot-ctl"
[ -x "$thin_check_bin" ] || fail "nbdkit-thin-check was not built"
[ -x "$snapshot_ctl" ] || fail "nbdkit-snapshot-ctl was not built"

rounds=${CRASH_TORTURE_ROUNDS:-2}
seed=${CRASH_TORTURE_SEED:-$RANDOM}
targets=${CRASH_TORTURE_TARGETS:-qcow2 vmdk vhdx qcow2-filter thin snapshot snapshot-thin}
max_ms=${CRASH_TORTURE_MAX_MS:-700}
echo "crash torture: seed $seed, $rounds rounds per target, targets: $targets"
RANDOM=$seed

M=$((1024 * 1024))
size=$((16 * M))
# Four writers, 4 MiB each; slot sizes: a sector multiple below a
# cluster, one cluster + a sector (crossing boundaries), 3 sectors,
# several clusters.
slots=(4096 $((64 * 1024 + 512)) 1536 $((192 * 1024)))

# ---- targets: setup DIR, serve DIR, check DIR (server down), dump DIR RAW
# (the filters' dump restarts the server, which the next round then uses)

setup_qcow2 () { qemu-img create -q -f qcow2 "$1/img" $size; }
serve_qcow2 () { start_nbdkit "$sock" "$(plugin_so qcow2)" "file=$1/img"; }
check_qcow2 () { qcow2_check "$1/img"; }
dump_qcow2 () { qemu-img convert -f qcow2 -O raw "$1/img" "$2"; }

setup_vmdk () { qemu-img create -q -f vmdk "$1/img" $size; }   # monolithicSparse
serve_vmdk () { start_nbdkit "$sock" "$(plugin_so vmdk)" "file=$1/img"; }
check_vmdk () { strict_check vmdk "$1/img"; }
dump_vmdk () { qemu-img convert -f vmdk -O raw "$1/img" "$2"; }

setup_vhdx () { qemu-img create -q -f vhdx -o subformat=dynamic,block_size=1M "$1/img" $size; }
serve_vhdx () { start_nbdkit "$sock" "$(plugin_so vhdx)" "file=$1/img"; }
check_vhdx () { strict_check vhdx "$1/img"; }
dump_vhdx () { qemu-img convert -f vhdx -O raw "$1/img" "$2"; }

# The qcow2 filter over nbdkit's file plugin: the file is a qcow2 image
# in a container the filter never grows (room for all data + metadata).
setup_qcow2-filter () {
  qemu-img create -q -f qcow2 "$1/img" $size
  truncate -s $((size + 4 * M)) "$1/img"
}
serve_qcow2-filter () { start_nbdkit "$sock" --filter="$(filter_so qcow2)" file "$1/img"; }
check_qcow2-filter () { qcow2_check "$1/img"; }
dump_qcow2-filter () { qemu-img convert -f qcow2 -O raw "$1/img" "$2"; }

# The thin filter over a file pool large enough never to be full.
setup_thin () { truncate -s $((size + 4 * M)) "$1/pool"; }
serve_thin () {
  start_nbdkit "$sock" --filter="$(filter_so thin)" file "$1/pool" thin-size=$size
}
check_thin () { thin_check "$1/pool"; }
dump_thin () { serve_thin "$1"; export_raw "$2"; }

# The snapshot filter over a file of random data (the initial content),
# with one snapshot taken before the first round (a two-layer chain).
setup_snapshot () {
  random_file "$1/below" $size
  cp "$1/below" "$1/initial"
  snapshot_take "$1"
}
serve_snapshot () {
  start_nbdkit "$sock" --filter="$(filter_so snapshot)" file "$1/below" \
    "overlay-dir=$1/ovl" "control=$1/ctl.sock"
}
check_snapshot () { layers_check "$1"; }
dump_snapshot () { serve_snapshot "$1"; export_raw "$2"; snapshot_listed "$1"; }

# The snapshot filter over the thin filter over a file.
setup_snapshot-thin () { truncate -s $((size + 4 * M)) "$1/pool"; snapshot_take "$1"; }
serve_snapshot-thin () {
  start_nbdkit "$sock" --filter="$(filter_so snapshot)" \
    --filter="$(filter_so thin)" file "$1/pool" thin-size=$size \
    "overlay-dir=$1/ovl" "control=$1/ctl.sock"
}
check_snapshot-thin () { layers_check "$1"; thin_check "$1/pool"; }
dump_snapshot-thin () {
  serve_snapshot-thin "$1"; export_raw "$2"; snapshot_listed "$1"
}

# ---- helpers ----------------------------------------------------------------

# new_server_sock: a fresh $sock and its $uri.
new_server_sock () { new_sock; uri=$(uri_of "$sock"); }

# qemu-img check after a crash: leaked clusters (exit 3) are allowed.
qcow2_check () {
  local out rc=0
  out=$(qemu-img check -f qcow2 "$1" 2>&1) || rc=$?
  case $rc in
    0|3) ;;
    *) fail "$target round $round: qemu-img check $1: exit $rc (corruption):
$out" ;;
  esac
}
strict_check () {
  local out rc=0
  out=$(qemu-img check -f "$1" "$2" 2>&1) || rc=$?
  [ $rc = 0 ] && grep -q 'No errors were found' <<<"$out" ||
    fail "$target round $round: qemu-img check -f $1 $2: exit $rc:
$out"
}
thin_check () {
  local out
  out=$("$thin_check_bin" "$1" 2>&1) && grep -q ': clean$' <<<"$out" ||
    fail "$target round $round: nbdkit-thin-check $1: $out"
}
layers_check () {
  local f n=0
  for f in "$1"/ovl/*.qcow2; do
    [ -e "$f" ] || continue
    qcow2_check "$f"
    n=$((n + 1))
  done
  (( n >= 2 )) || fail "$target round $round: $n snapshot layers in $1/ovl"
}
snapshot_take () {
  new_server_sock
  "serve_$target" "$1"
  nbdinfo --size "$uri" > /dev/null        # the chain opens here
  "$snapshot_ctl" "$1/ctl.sock" create before-torture > /dev/null ||
    fail "$target: cannot create a snapshot"
  stop_nbdkit; nbdkit_pid=
}
snapshot_listed () {
  "$snapshot_ctl" "$1/ctl.sock" list | grep -q before-torture ||
    fail "$target round $round: the snapshot is gone: $("$snapshot_ctl" "$1/ctl.sock" list 2>&1)"
}
# export_raw RAW: the export on $uri as a raw file (holes read as zeroes).
export_raw () { rm -f "$1"; nbdcopy -- "$uri" "$1"; }

# ---- one target -------------------------------------------------------------

run_target () {
  target=$1
  local dir=$tmpdir/$target init=() w t0=$SECONDS durable=0
  mkdir -p "$dir"
  nbdkit_pid=
  "setup_$target" "$dir"
  [ -e "$dir/initial" ] && init=(--initial "$dir/initial")
  for (( round = 1; round <= rounds; round++ )); do
    if [ -z "$nbdkit_pid" ]; then
      new_server_sock
      "serve_$target" "$dir"
    fi
    local pids=() i
    for w in 0 1 2 3; do
      "$writer" write "$uri" "$dir/log$w.$round" $((w * 4 * M)) $((4 * M)) \
        "${slots[$w]}" $((round * 10000000)) \
        $((seed * 100000 + round * 10 + w)) 2> "$dir/err$w.$round" &
      pids+=($!)
    done
    # Every writer connected and logged a request (the image opens on the
    # first connection), then a random delay.  (One log per writer and
    # round: the shell's own test, no process per poll.)
    for (( i = 0; i < 600; i++ )); do
      local all=1
      for w in 0 1 2 3; do
        [ -s "$dir/log$w.$round" ] || all=0
      done
      [ $all = 1 ] && break
      sleep 0.05
    done
    [ $all = 1 ] || fail "$target round $round: the writers did not start"
    local ms=$(( RANDOM % (max_ms + 1) ))
    sleep "$(printf '%d.%03d' $((ms / 1000)) $((ms % 1000)))"
    kill -0 "$nbdkit_pid" 2>/dev/null ||
      fail "$target round $round: nbdkit died before the kill"
    for w in 0 1 2 3; do
      kill -0 "${pids[$w]}" 2>/dev/null ||
        fail "$target round $round: writer $w ended before the kill: $(cat "$dir/err$w.$round")"
    done
    kill -9 "$nbdkit_pid"
    nbdkit_pid=
    for w in 0 1 2 3; do
      wait "${pids[$w]}" ||
        fail "$target round $round: writer $w failed: $(cat "$dir/err$w.$round")"
    done
    "check_$target" "$dir"
    new_server_sock
    "dump_$target" "$dir" "$dir/raw"
    local out n=0
    for w in 0 1 2 3; do
      out=$("$writer" check "$dir/raw" $((w * 4 * M)) $((4 * M)) \
              "${slots[$w]}" "${init[@]}" "$dir/log$w".* 2>&1) ||
        fail "$target round $round (seed $seed), writer $w: flushed data lost or foreign data:
$out"
      n=$((n + $(sed -n 's/.*issued, \([0-9]*\) durable.*/\1/p' <<<"$out")))
    done
    durable=$n
    echo "$target round $round: killed $ms ms after the writers started; $durable durable requests so far verified"
  done
  [ -z "$nbdkit_pid" ] || stop_nbdkit
  nbdkit_pid=
  # No durable request at all would make the checks vacuous.
  (( durable > 0 )) || fail "$target: no request ever became durable"
  echo "$target: $rounds kills, $durable durable requests verified, $((SECONDS - t0)) s"
}

for t in $targets; do
  declare -F "setup_$t" > /dev/null || fail "unknown target $t"
done
for t in $targets; do
  run_target "$t"
done
echo "crash torture OK (seed $seed)"
