#!/bin/bash
# SPDX-License-Identifier: BSD-3-Clause
# The writes, zero writes and trims the qcow2, vmdk and vhdx fuzz targets
# send through our engines must leave, on each seed image that qemu-img
# check finds clean, an image that qemu-img check finds clean and that
# reads like a raw mirror of the same requests (trimmed ranges aside), and
# every request must succeed where QEMU's succeeds
# (tests/fuzz/differential.sh).  Long runs: the same script over the
# corpus grown by tests/fuzz/run.sh.
source "${TOP_SRCDIR:?run the tests through ctest, which sets TOP_SRCDIR}/tests/functions.sh"
requires qemu-img qemu-io python3

# fmt:least  the seeds that must be compared (not skipped), so that the
# test cannot pass on nothing; vhdx seeds are cut short to keep them small,
# which qemu-img check reports, so only one of them counts.
for want in qcow2:15 vmdk:4 vhdx:1; do
  fmt=${want%:*} least=${want#*:}
  out=$(bash "$TOP_SRCDIR/tests/fuzz/differential.sh" -b "$TOP_BUILDDIR" \
          "$fmt" "$TOP_SRCDIR/tests/fuzz/corpus/$fmt" 2>&1) ||
    fail "$fmt: $out"
  echo "$out" | tail -1
  n=$(sed -n "s/^$fmt: [0-9]* inputs; \([0-9]*\) compared.*/\1/p" <<<"$out")
  [ "${n:-0}" -ge "$least" ] ||
    fail "$fmt: only ${n:-0} seeds compared with QEMU (at least $least): $out"
done
