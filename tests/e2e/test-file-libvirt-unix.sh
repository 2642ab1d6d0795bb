#!/bin/bash
# SPDX-License-Identifier: BSD-3-Clause
# e2e: as test-file-libvirt.sh, but libvirt's QEMU (user libvirt-qemu)
# reaches nbdkit over a unix socket (<host transport='unix' .../>).
source "${TOP_SRCDIR:?run the tests through ctest, which sets TOP_SRCDIR}/tests/functions.sh"
source "$TOP_SRCDIR/tests/e2e/pattern.sh"
source "$TOP_SRCDIR/tests/e2e/lib-file.sh"
requires_root
requires nbdkit virsh libvirtd virtlogd qemu-system-x86_64 nbdcopy nbdinfo

file_test libvirt unix
echo PASS
