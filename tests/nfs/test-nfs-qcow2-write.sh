#!/bin/bash
# SPDX-License-Identifier: BSD-3-Clause
# Write matrix on NFS: tests/qcow2/test-qcow2-write-matrix.sh (seeded
# writes, zeroes, trims, flushes through the plugin and onto a raw mirror;
# then qemu-img check and qemu-img compare against the mirror) with every
# image served as file=nfs://127.0.0.1/export/... from a private
# nfs-ganesha (QCOW2_TEST_SERVE=nfs in tests/qcow2/qcow2-functions.sh):
# containers grow on the server, backing files and external data files
# are opened beside the image on the export.
#   test-nfs-qcow2-write.sh [SEED]
source "$(dirname "$0")/nfs-server.sh"
nfs_netns "$0" "$@"
: "${TOP_SRCDIR:=$(cd "$(dirname "$0")/../.." && pwd)}"
export QCOW2_TEST_SERVE=nfs TOP_SRCDIR
exec bash "$TOP_SRCDIR/tests/qcow2/test-qcow2-write-matrix.sh" "$@"
