#!/bin/bash
# SPDX-License-Identifier: BSD-3-Clause
# e2e: a raw file served by nbdkit's own "file" plugin is the disk of a
# real guest started directly with QEMU: over a unix socket, then over TCP.
source "${TOP_SRCDIR:?run the tests through ctest, which sets TOP_SRCDIR}/tests/functions.sh"
source "$TOP_SRCDIR/tests/e2e/pattern.sh"
source "$TOP_SRCDIR/tests/e2e/lib-file.sh"
requires nbdkit qemu-system-x86_64 nbdcopy nbdinfo

file_test qemu unix
file_test qemu tcp
echo PASS
