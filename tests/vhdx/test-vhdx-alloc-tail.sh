#!/bin/bash
# SPDX-License-Identifier: BSD-3-Clause
# Regression (found by tests/torture/concurrency.py): the first write into
# a dynamic block that ends inside the block's last 4 KiB, but not at its
# end, lost its tail: the engine wrote the data, then 4 KiB of zeroes at
# the block's end (to make the file cover the block) over it.  Plugin and
# filter (a container with room, where new blocks are zeroed first),
# 1 MiB blocks, writes through qemu-io vs a raw mirror (qemu-img compare,
# qemu-img check).
source "${TOP_SRCDIR:?run the tests through ctest, which sets TOP_SRCDIR}/tests/functions.sh"
source "$TOP_SRCDIR/tests/vhdx/vhdx-functions.sh"
requires_filter vhdx
cd "$tmpdir"
M=$((1024*1024)) K=1024
# Each write is the first one into its block(s).
cat > ops <<EOF2
write -P 0x11 $((2*M - 15*K)) $((14*K))
write -P 0x22 $((3*M - 4*K)) $((3*K + 512))
write -P 0x33 $((4*M - 512*3)) 1024
write -P 0x44 $((5*M + 100*K)) $((M - 100*K - 2*K))
write -P 0x55 $((6*M - 8*K)) $((M + 4*K + 512))
write -P 0x66 $((8*M)) $((M - 512))
EOF2
truncate -s $((16*M)) mirror.raw
qemu_io_cmds -f raw mirror.raw < ops
for how in plugin filter; do
  qemu-img create -q -f vhdx -o block_size=1M $how.vhdx $((16*M))
  new_sock
  if [ $how = plugin ]; then
    serve "$sock" $how.vhdx
  else
    truncate -s $((40*M)) $how.vhdx
    start_nbdkit "$sock" --filter="$(filter_so vhdx)" file $how.vhdx
  fi
  qemu_io_cmds -f raw "$(uri_of "$sock")" < ops
  stop_nbdkit
  qemu_img_check -f vhdx $how.vhdx
  out=$(qemu-img compare -f vhdx -F raw $how.vhdx mirror.raw 2>&1) ||
    fail "$how: qemu-img compare: $out"
  echo "ok $how"
done
