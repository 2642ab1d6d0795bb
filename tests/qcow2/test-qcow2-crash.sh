#!/bin/bash
# SPDX-License-Identifier: BSD-3-Clause
# Crash test: several clients (one NBD connection each, disjoint regions)
# write, zero, trim and flush through the plugin while nbdkit is killed
# with SIGKILL at a random moment; repeated on the same image.  After each
# crash:
#  - qemu-img check must not report corruption (exit 0, or 3 = leaks only;
#    exit 2 = corruption fails the test), and
#  - every request acknowledged before a completed flush (or sent with
#    FUA) must read back (qemu-img convert -O raw, checked by
#    qcow2-crashwriter check against the clients' logs).
# Three images: default options; 16K clusters with extended L2 over a
# qcow2 backing file full of data (COW from the backing under crashes);
# 512-byte clusters with 64-bit refcounts (refcount table growth).
#   test-qcow2-crash.sh [SEED] [ITERATIONS]
source "${TOP_SRCDIR:?run the tests through ctest, which sets TOP_SRCDIR}/tests/functions.sh"
source "$TOP_SRCDIR/tests/qcow2/qcow2-functions.sh"

writer="$TOP_BUILDDIR/tests/qcow2/qcow2-crashwriter"
[ -x "$writer" ] || skip "qcow2-crashwriter not built (libnbd-dev missing)"

seed=${1:-${QCOW2_SEED:-$RANDOM}}
iters=${2:-5}
echo "seed $seed, $iters iterations per image"
RANDOM=$seed
M=$((1024*1024))
size=$((16*M))
# Writer regions (4 MiB each) and slot sizes: sector-sized, cluster-sized,
# crossing cluster boundaries, several clusters.
slots=(4096 $((64*1024 + 512)) 1536 $((192*1024)))

# run_crashes IMAGE TAG [--initial RAW]
run_crashes () {
  local img=$1 tag=$2; shift 2
  local init=("$@") it w
  for (( it=1; it<=iters; it++ )); do
    new_sock
    serve_qcow2 "$sock" "$img"
    local pids=() sizes=()
    for w in 0 1 2 3; do
      sizes+=("$(stat -c %s "$tmpdir/$tag.log$w" 2>/dev/null || echo 0)")
    done
    for w in 0 1 2 3; do
      "$writer" write "$(uri_of "$sock")" "$tmpdir/$tag.log$w" \
        $((w*4*M)) $((4*M)) "${slots[$w]}" $((it*10000000)) \
        $((seed*100 + it*10 + w)) 2>>"$tmpdir/$tag.writer.err" &
      pids+=($!)
    done
    # Once every writer has connected and logged its first request (the
    # image opens on the first connection: slower on NFS or under the
    # sanitizers), let them work for 0.2 .. 1.5 s, then kill the server.
    local t
    for (( t = 0; t < 600; t++ )); do
      local all=1
      for w in 0 1 2 3; do
        [ "$(stat -c %s "$tmpdir/$tag.log$w" 2>/dev/null || echo 0)" -gt "${sizes[$w]}" ] || all=0
      done
      [ $all = 1 ] && break
      sleep 0.05
    done
    local ms=$(( 200 + RANDOM % 1300 ))
    sleep "$(printf '%d.%03d' $((ms/1000)) $((ms%1000)))"
    kill -9 "$nbdkit_pid"
    for w in "${pids[@]}"; do
      wait "$w" || fail "$tag: a writer failed (see below)
$(tail -5 "$tmpdir/$tag.writer.err")"
    done

    local rc=0 out
    out=$(qemu-img check "$img" 2>&1) || rc=$?
    case $rc in
      0|3) ;;
      *) fail "$tag iteration $it: qemu-img check exit $rc (corruption):
$out" ;;
    esac
    rm -f "$tmpdir/$tag.raw"
    qemu-img convert -O raw "$img" "$tmpdir/$tag.raw" ||
      fail "$tag iteration $it: qemu-img convert failed"
    local total=0
    for w in 0 1 2 3; do
      out=$("$writer" check "$tmpdir/$tag.raw" $((w*4*M)) $((4*M)) \
              "${slots[$w]}" "${init[@]}" "$tmpdir/$tag.log$w") ||
        fail "$tag iteration $it, writer $w: durable data lost:
$out"
      # checked N slots (...), N requests issued, N durable, ...
      [ -n "${QCOW2_CRASH_VERBOSE:-}" ] && echo "  writer $w: $out"
      total=$((total + $(sed -n 's/.*issued, \([0-9]*\) durable.*/\1/p' <<<"$out")))
    done
    echo "$tag iteration $it: check exit $rc, $total durable requests so far OK"
  done
  # No progress at all would make the checks vacuous.
  [ "$total" -gt 0 ] || fail "$tag: no request ever became durable"
}

# Image 1: defaults (64K clusters), empty.
qemu-img create -q -f qcow2 "$tmpdir/crash1.qcow2" $size
run_crashes "$tmpdir/crash1.qcow2" crash1

# Image 2: extended L2 over a backing file full of data.
qemu-img create -q -f raw "$tmpdir/base.raw" $size
gen_ops --seed "$seed" --size $size --count 30 > "$tmpdir/base.ops"
fill_image "$tmpdir/base.raw" raw "$tmpdir/base.ops"
qemu-img convert -f raw -O qcow2 -o cluster_size=4096 "$tmpdir/base.raw" \
  "$tmpdir/base.qcow2"
qemu-img create -q -f qcow2 -o cluster_size=16384,extended_l2=on \
  -b base.qcow2 -F qcow2 "$tmpdir/crash2.qcow2" $size
run_crashes "$tmpdir/crash2.qcow2" crash2 --initial "$tmpdir/base.raw"

# Image 3: 512-byte clusters with 64-bit refcounts: a refcount block maps
# only 32 KiB, so allocation keeps growing and moving the refcount table.
qemu-img create -q -f qcow2 -o cluster_size=512,refcount_bits=64 \
  "$tmpdir/crash3.qcow2" $size
iters=$(( (iters + 1) / 2 )) run_crashes "$tmpdir/crash3.qcow2" crash3

echo "crash test OK"
