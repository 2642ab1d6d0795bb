#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# Engine smoke test: writing to an image with persistent dirty bitmaps.
# The plugin keeps them valid (as QEMU does): after a write every bitmap
# is still listed, none is left in use, the image checks clean and the
# data is right.  Oracle: qemu-img info/check/compare.  Their content is
# checked by test-qcow2-bitmaps.sh.
source "${TOP_SRCDIR:?run the tests through ctest, which sets TOP_SRCDIR}/tests/functions.sh"
source "$TOP_SRCDIR/tests/qcow2/qcow2-functions.sh"

img=$tmpdir/bm.qcow2
mirror=$tmpdir/bm.raw
qemu-img create -q -f qcow2 "$img" 32M
qemu_io_cmds -f qcow2 -c "write -P 0x11 0 4M" "$img"
qemu-img bitmap --add "$img" b0
qemu-img bitmap --add -g 4096 "$img" b1
qemu_io_cmds -f qcow2 -c "write -P 0x22 8M 4M" "$img"
qemu-img bitmap --add "$img" b2
qemu-img info --output=json "$img" | grep -q '"b1"' || fail "setup: no bitmap"
check_image "$img"
qemu-img convert -O raw "$img" "$mirror"

# Reading does not touch the bitmaps.
new_sock
serve_qcow2 "$sock" "$img" -r
nbdcopy -- "$(uri_of "$sock")" "$tmpdir/read.raw"
stop_server
assert_same "$mirror" "$tmpdir/read.raw"
qemu-img info --output=json "$img" | grep -q '"b1"' ||
  fail "a read-only export modified the bitmaps"

# A write keeps them, valid, leaving a clean image.
new_sock
serve_qcow2 "$sock" "$img"
qemu_io_cmds -f raw -c "write -P 0x33 1M 64k" "$(uri_of "$sock")"
stop_server
qemu_io_cmds -f raw -c "write -P 0x33 1M 64k" "$mirror"
check_image "$img"
info=$(qemu-img info --output=json "$img")
for b in b0 b1 b2; do
  grep -q "\"$b\"" <<<"$info" || fail "bitmap $b lost after a write: $info"
done
grep -q '"in-use"' <<<"$info" && fail "a bitmap is left in use: $info"
out=$(qemu-img compare -f raw "$mirror" "$img" 2>&1) || fail "$out"
# QEMU can add a bitmap again and still finds the image clean.
qemu-img bitmap --add "$img" b3
check_image "$img"
echo "bitmaps: OK"
