#!/bin/bash
# SPDX-License-Identifier: BSD-3-Clause
# Stacks of filters that the per-module tests do not make:
# - each of this project's filters given twice (--filter=X --filter=X):
#   nbdkit 1.32 registers one loaded module twice, whose instances would
#   share all their state (a qcow2 inside a qcow2 hung the server): the
#   server refuses to start, with a message;
# - the qcow2 filter over a layer that takes only 4 KiB-aligned requests
#   (nbdkit's blocksize-policy filter): the open fails with a message that
#   names the blocksize filter, and with that filter in between, writes
#   and reads work and the image passes qemu-img check.
source "${TOP_SRCDIR:?run the tests through ctest, which sets TOP_SRCDIR}/tests/functions.sh"
requires qemu-img qemu-io nbdinfo
for f in qcow2 vmdk vhdx thin snapshot throttle; do requires_filter $f; done
cd "$tmpdir"

# 1. Twice.
qemu-img create -q -f qcow2 img.qcow2 64M
for f in qcow2 vmdk vhdx thin snapshot throttle; do
  case $f in
    thin) extra=(thin-size=64M) ;;
    snapshot) extra=("overlay-dir=$tmpdir/ovl-$f") ;;
    *) extra=() ;;
  esac
  rc=0
  out=$(nbdkit_fails 10 -U "$tmpdir/twice.sock" --filter="$(filter_so $f)" \
          --filter="$(filter_so $f)" file img.qcow2 "${extra[@]}" \
          --run 'nbdinfo "$uri"' 2>&1) || rc=$?
  [ $rc != 0 ] || fail "$f given twice was served"
  grep -q "the $f filter cannot be stacked on itself" <<<"$out" ||
    fail "$f given twice: unclear error: $out"
done
echo "ok: each filter refused twice"

# 2. A layer below with a 4 KiB minimum block size.
policy=(--filter=blocksize-policy)
params=(blocksize-minimum=4096 blocksize-error-policy=error)
truncate -s 16M img.qcow2
rc=0
out=$(nbdkit_fails 20 -U "$tmpdir/bs.sock" --filter="$(filter_so qcow2)" "${policy[@]}" \
        file img.qcow2 "${params[@]}" --run 'nbdinfo "$uri"' 2>&1) || rc=$?
[ $rc != 0 ] || fail "the qcow2 filter opened over a 4 KiB minimum block size"
grep -q "takes only requests aligned to 4096 bytes.*--filter=blocksize" <<<"$out" ||
  fail "unclear error over a 4 KiB minimum block size: $out"
start_nbdkit "$tmpdir/bs2.sock" --filter="$(filter_so qcow2)" --filter=blocksize \
  "${policy[@]}" file img.qcow2 "${params[@]}"
qemu-io -f raw -c "write -q -P 0x33 1000 5000" -c "read -q -P 0x33 1000 5000" \
  "$(uri_of "$tmpdir/bs2.sock")" || fail "the qcow2 filter over the blocksize filter"
stop_nbdkit
qemu_img_check -f qcow2 img.qcow2
qemu-io -f qcow2 -r -c 'read -q -P 0x33 1000 5000' img.qcow2 ||
  fail "the write through the blocksize filter is not in the image"
echo "ok: a layer with a minimum block size"
echo PASS
