#!/bin/bash
# SPDX-License-Identifier: BSD-3-Clause
# The snapshot filter over this project's qcow2 plugin (a qcow2 image of
# random data below): operations and commit against the model; the image
# unchanged until commit (qemu-img compare with the original data) and
# holding the model's data after it (qemu-img convert).
source "${TOP_SRCDIR:?run the tests through ctest, which sets TOP_SRCDIR}/tests/functions.sh"
source "$TOP_SRCDIR/tests/snapshot/snapshot-lib.sh"
requires_plugin qcow2

size=$((16 * 1024 * 1024))
random_file "$tmpdir/below.orig" $size
qemu-img convert -f raw -O qcow2 "$tmpdir/below.orig" "$tmpdir/below.qcow2"
snapshot_model --size $size --seed 13 --rounds "${SNAPSHOT_TEST_ROUNDS:-15}" \
  --commit --initial "$tmpdir/below.orig" \
  --below-check "qemu-img compare -q -f qcow2 -F raw '$tmpdir/below.qcow2' '$tmpdir/below.orig'" \
  --below-dump "qemu-img convert -f qcow2 -O raw '$tmpdir/below.qcow2'" \
  -- "$(plugin_so qcow2)" "file=$tmpdir/below.qcow2"
qemu-img check -q "$tmpdir/below.qcow2" || fail "qemu-img check of the plugin's image"
