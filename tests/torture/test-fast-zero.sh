#!/bin/bash
# SPDX-License-Identifier: BSD-3-Clause
# A zero request with the fast-zero flag, on every local writable export.
# nbdkit 1.32 does not check the flag against what the export advertised,
# and aborts (an assertion in backend_zero) when a layer that did not
# advertise fast zero gets one: a single client request took the whole
# server down.  So every export advertises fast zero, and answers such a
# request at once: done fast, or ENOTSUP (NBD's "it would be slow").
# The data must be zeroes afterwards when it succeeded, unchanged when it
# did not, and the server must still serve.
source "${TOP_SRCDIR:?run the tests through ctest, which sets TOP_SRCDIR}/tests/functions.sh"
requires_plugin qcow2
requires_plugin vmdk
requires_plugin vhdx
requires_filter qcow2
requires_filter vmdk
requires_filter vhdx
requires_filter thin
requires_filter snapshot
requires_filter throttle
requires qemu-img qemu-io
requires_nbdsh    # (the system python3 with the nbd module)
cd "$tmpdir"
M=$((1024*1024))

# fast_zero NAME: tests/fast-zero.py on the server on $sock, which is
# stopped after.
fast_zero () {
  check_fast_zero "$1" "$(uri_of "$sock")"
  stop_nbdkit
}

# Plugins: images where a zero is cheap (qcow2 v3) and where it is not
# (qcow2 v2 with a backing file, vmdk, vhdx).
qemu-img create -q -f qcow2 v3.qcow2 8M
qemu-img create -q -f raw base.raw 8M
qemu-img create -q -f qcow2 -o compat=0.10 -b base.raw -F raw v2.qcow2 8M
qemu-img create -q -f vmdk d.vmdk 8M
qemu-img create -q -f vhdx -o block_size=1M d.vhdx 8M
for img in v3.qcow2 v2.qcow2; do
  new_sock; start_nbdkit "$sock" "$(plugin_so qcow2)" "file=$img"
  fast_zero "qcow2 plugin, $img"
done
new_sock; start_nbdkit "$sock" "$(plugin_so vmdk)" file=d.vmdk
fast_zero "vmdk plugin"
new_sock; start_nbdkit "$sock" "$(plugin_so vhdx)" file=d.vhdx
fast_zero "vhdx plugin"

# Filters over nbdkit's file plugin (a container with room to grow).
qemu-img create -q -f qcow2 c.qcow2 8M
qemu-img create -q -f vmdk c.vmdk 8M
qemu-img create -q -f vhdx -o block_size=1M c.vhdx 8M
for f in qcow2 vmdk vhdx; do
  truncate -s +16M "c.$f"
  new_sock; start_nbdkit "$sock" --filter="$(filter_so "$f")" file "c.$f"
  fast_zero "$f filter"
done
truncate -s 32M pool.raw
new_sock; start_nbdkit "$sock" --filter="$(filter_so thin)" file pool.raw thin-size=8M
fast_zero "thin filter"
truncate -s 8M below.raw
mkdir ovl
new_sock; start_nbdkit "$sock" --filter="$(filter_so snapshot)" file below.raw overlay-dir=ovl
fast_zero "snapshot filter"
new_sock; start_nbdkit "$sock" --filter="$(filter_so throttle)" "$(plugin_so vmdk)" \
  file=d.vmdk iops-total=100000
fast_zero "throttle filter over the vmdk plugin"
# Over nbdkit's own file plugin, which need not advertise fast zero (and
# aborts, in 1.32, on one it did not): the throttle filter answers it.
truncate -s 8M plain.raw
new_sock; start_nbdkit "$sock" --filter="$(filter_so throttle)" file plain.raw \
  iops-total=100000
fast_zero "throttle filter over nbdkit's file plugin"
