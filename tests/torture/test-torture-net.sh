#!/bin/bash
# SPDX-License-Identifier: BSD-3-Clause
# The torture of tests/torture/test-torture-stacks.sh (concurrency.py
# against a model, then bad-clients.py) for the plugins that need a
# network service, each against a private one started here:
#   test-torture-net.sh nfs     the nfs plugin on nfs-ganesha (in a
#                               private network namespace)
#   test-torture-net.sh iscsi   the iscsi plugin on a private tgtd
#   test-torture-net.sh rbd     the rbd plugin on a one-node Ceph
# The raw bytes the service holds afterwards must equal the model's
# mirror (the export file, the LUN's backing file, `rbd export`).
# Knobs as in test-torture-stacks.sh.
service=${1:-${TORTURE_SERVICE:-}}
if [ "$service" = nfs ]; then
  source "$(dirname "$0")/../nfs/nfs-server.sh"
  nfs_netns "$0" "$@"
fi
source "${TOP_SRCDIR:?run the tests through ctest, which sets TOP_SRCDIR}/tests/functions.sh"
source "$TOP_SRCDIR/tests/torture/torture-lib.sh"
export TORTURE_ROUNDS=${TORTURE_ROUNDS:-1}
export TORTURE_SECONDS=${TORTURE_SECONDS:-0.5}

case $service in
  nfs)
    requires_plugin nfs
    nfs_server_start "$tmpdir/export"
    random_file "$NFS_DIR/disk.raw" "$torture_size"
    net_args=("$(plugin_so nfs)" "url=$NFS_URL/disk.raw")
    net_dump () { cp "$NFS_DIR/disk.raw" "$1"; }
    ;;
  iscsi)
    source "$TOP_SRCDIR/tests/iscsi/common.sh"
    random_file "$tmpdir/lun.img" "$torture_size"
    tgtd_one_lun "$tmpdir/lun.img"
    net_args=("$(plugin_so iscsi)" "url=$(tgtd_url $IQN 1)")
    net_dump () { cp "$tmpdir/lun.img" "$1"; }
    ;;
  rbd)
    requires_plugin rbd
    requires ceph-mon ceph-osd ceph rbd ceph-authtool monmaptool
    cluster=$tmpdir/ceph
    cleanup_add "bash '$TOP_SRCDIR/tests/rbd/ceph-cluster.sh' stop '$cluster'"
    CEPH_OWNER_PID=$$ CEPH_MEMSTORE_BYTES=$((256 * 1024 * 1024)) \
      bash "$TOP_SRCDIR/tests/rbd/ceph-cluster.sh" start "$cluster" ||
      fail "could not start the test Ceph cluster"
    # shellcheck disable=SC1091
    source "$cluster/env"
    export CEPH_CONF
    random_file "$tmpdir/rbd.orig" "$torture_size"
    rbd import --no-progress "$tmpdir/rbd.orig" img
    net_args=("$(plugin_so rbd)" pool=rbd image=img "conf=$CEPH_CONF")
    net_dump () { rm -f "$1"; rbd export --no-progress img "$1"; }
    ;;
  *) fail "usage: test-torture-net.sh nfs|iscsi|rbd" ;;
esac

seed=${TORTURE_SEED:-$RANDOM}
echo "torture: seed $seed (TORTURE_SEED=$seed to repeat)"
torture_stack "$service" "$seed"
