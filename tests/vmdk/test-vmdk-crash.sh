#!/bin/bash
# SPDX-License-Identifier: BSD-3-Clause
# Crash test (as tests/qcow2/test-qcow2-crash.sh, with its writer
# qcow2-crashwriter, a generic NBD client): four clients write, zero, trim
# and flush disjoint regions through the plugin while nbdkit is killed
# with SIGKILL at a random moment, repeatedly on the same image.  After
# each crash qemu-img check must accept the image, and every request
# acknowledged before a completed flush (or sent with FUA) must read back
# through QEMU.  Images: monolithicSparse, one with zeroed grains over a
# vmdk parent full of data (partial grains copied from the parent), and
# twoGbMaxExtentSparse.
#   test-vmdk-crash.sh [SEED] [ITERATIONS]
source "${TOP_SRCDIR:?run the tests through ctest, which sets TOP_SRCDIR}/tests/functions.sh"
source "$TOP_SRCDIR/tests/vmdk/vmdk-functions.sh"

writer="$TOP_BUILDDIR/tests/qcow2/qcow2-crashwriter"
[ -x "$writer" ] || skip "qcow2-crashwriter not built (libnbd-dev missing)"

seed=${1:-${VMDK_SEED:-$RANDOM}}
iters=${2:-${VMDK_CRASH_ITERS:-3}}
echo "seed $seed, $iters iterations per image"
RANDOM=$seed
M=$((1024*1024))
size=$((16*M))
slots=(4096 $((64*1024 + 512)) 1536 $((192*1024)))

run_crashes () {
  local img=$1 tag=$2; shift 2
  local init=("$@") it w total=0
  for (( it=1; it<=iters; it++ )); do
    serve_vmdk "$img"
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
      wait "$w" || fail "$tag: a writer failed: $(tail -5 "$tmpdir/$tag.writer.err")"
    done
    check_image "$img"
    rm -f "$tmpdir/$tag.raw"
    qemu-img convert -O raw -f vmdk "$img" "$tmpdir/$tag.raw" ||
      fail "$tag iteration $it: qemu-img convert failed"
    total=0
    local out
    for w in 0 1 2 3; do
      out=$("$writer" check "$tmpdir/$tag.raw" $((w*4*M)) $((4*M)) \
              "${slots[$w]}" "${init[@]}" "$tmpdir/$tag.log$w") ||
        fail "$tag iteration $it, writer $w: durable data lost:
$out"
      total=$((total + $(sed -n 's/.*issued, \([0-9]*\) durable.*/\1/p' <<<"$out")))
    done
    echo "$tag iteration $it: $total durable requests OK"
  done
  [ "$total" -gt 0 ] || fail "$tag: no request ever became durable"
}

qemu-img create -q -f vmdk "$tmpdir/crash1.vmdk" $size
run_crashes "$tmpdir/crash1.vmdk" crash1

qemu-img create -q -f raw "$tmpdir/base.raw" $size
gen_ops --seed "$seed" --size $size --count 30 > "$tmpdir/base.ops"
qemu_io_cmds -f raw "$tmpdir/base.raw" < "$tmpdir/base.ops"
qemu-img convert -f raw -O vmdk "$tmpdir/base.raw" "$tmpdir/base.vmdk"
qemu-img create -q -f vmdk -o zeroed_grain=on -b base.vmdk -F vmdk \
  "$tmpdir/crash2.vmdk"
run_crashes "$tmpdir/crash2.vmdk" crash2 --initial "$tmpdir/base.raw"

qemu-img create -q -f vmdk -o subformat=twoGbMaxExtentSparse \
  "$tmpdir/crash3.vmdk" $size
iters=$(( (iters + 1) / 2 )) run_crashes "$tmpdir/crash3.vmdk" crash3
echo "crash test OK"
