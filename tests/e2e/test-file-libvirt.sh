#!/bin/bash
# SPDX-License-Identifier: BSD-3-Clause
# e2e: a raw file served by nbdkit's own "file" plugin over TCP on
# 127.0.0.1 is the network disk of a transient libvirt domain.  The
# non-empty export name (ignored by the file plugin) exercises the name
# path of libvirt and QEMU.
source "${TOP_SRCDIR:?run the tests through ctest, which sets TOP_SRCDIR}/tests/functions.sh"
source "$TOP_SRCDIR/tests/e2e/pattern.sh"
source "$TOP_SRCDIR/tests/e2e/lib-file.sh"
requires_root
requires nbdkit virsh libvirtd virtlogd qemu-system-x86_64 nbdcopy nbdinfo

file_test libvirt tcp e2e
echo PASS
