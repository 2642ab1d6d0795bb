#!/bin/bash
# SPDX-License-Identifier: BSD-3-Clause
# Crash test on NFS: tests/qcow2/test-qcow2-crash.sh (writers on several
# connections, nbdkit killed with SIGKILL at random moments, then
# qemu-img check and every acknowledged-and-flushed write read back) with
# the images served as file=nfs://127.0.0.1/export/... from a private
# nfs-ganesha (QCOW2_TEST_SERVE=nfs).  Flushes are NFS COMMITs here.
#   test-nfs-qcow2-crash.sh [SEED] [ITERATIONS]
source "$(dirname "$0")/nfs-server.sh"
nfs_netns "$0" "$@"
: "${TOP_SRCDIR:=$(cd "$(dirname "$0")/../.." && pwd)}"
export QCOW2_TEST_SERVE=nfs TOP_SRCDIR
# Two iterations per image by default (the local crash test runs five).
exec bash "$TOP_SRCDIR/tests/qcow2/test-qcow2-crash.sh" "${1:-}" "${2:-2}"
