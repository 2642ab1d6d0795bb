# SPDX-License-Identifier: BSD-3-Clause
# Scenario "rbd": one RBD image on a throwaway one-node Ceph cluster
# (one monitor + one memstore OSD on 127.0.0.1, started by
# tests/rbd/ceph-cluster.sh in prepare, stopped in cleanup), served by our
# rbd plugin and by qemu-nbd through QEMU's rbd driver.
#
# Both servers use librbd underneath and talk to the same OSD, so the
# comparison measures the NBD-server side: how many librbd requests each
# keeps in flight and what each costs per request.  Peer as in the NOTES:
# qemu-nbd --cache=none (QEMU then turns librbd's cache off); our plugin
# is shown with librbd's default cache and with ceph.rbd_cache=false (the
# like-for-like row).  The data lives in the OSD's RAM: the OSD's CPU
# time is part of every number (2 cores shared by client, server, OSD).

DESCRIPTION="Ceph RBD (one memstore OSD): rbd plugin vs qemu-nbd rbd: driver (--cache=none)"
PEER=qemu-nbd

scenario_requires () {
  bench_requires nbdkit qemu-nbd ceph-mon ceph-osd ceph rbd ceph-authtool monmaptool python3
  bench_requires_plugin rbd
  [ -f /usr/lib/x86_64-linux-gnu/qemu/block-rbd.so ] ||
    ls /usr/lib/*/qemu/block-rbd.so >/dev/null 2>&1 ||
    bench_skip "QEMU's rbd block driver is not installed (qemu-block-extra)"
}

prepare () {
  CEPH_DIR=$WORKDIR/ceph
  # Room for the image plus the OSD's own objects.
  CEPH_MEMSTORE_BYTES=$(( SIZE * 2 + 268435456 )) CEPH_OWNER_PID=$$ \
    bash "$SRCDIR/tests/rbd/ceph-cluster.sh" start "$CEPH_DIR" ||
    bench_die "could not start the Ceph cluster (logs in $CEPH_DIR/log)"
  CEPH_CONF_FILE=$CEPH_DIR/ceph.conf
  make_random_raw "$WORKDIR/data.raw"
  CEPH_CONF=$CEPH_CONF_FILE rbd import --no-progress "$WORKDIR/data.raw" bench ||
    bench_die "rbd import failed"
  rm -f "$WORKDIR/data.raw"
  bench_log "rbd: image rbd/bench of $SIZE bytes, cluster in $CEPH_DIR"
}

cleanup () {
  [ -z "${CEPH_DIR:-}" ] || bash "$SRCDIR/tests/rbd/ceph-cluster.sh" stop "$CEPH_DIR" || :
}

bench_server rbd-plugin 'serve_nbdkit "$(plugin_so rbd)" pool=rbd image=bench conf="$CEPH_CONF_FILE"'
bench_server rbd-plugin-nocache 'serve_nbdkit "$(plugin_so rbd)" pool=rbd image=bench conf="$CEPH_CONF_FILE" ceph.rbd_cache=false'
bench_server qemu-nbd 'serve_qemu_nbd -f raw --cache=none "rbd:rbd/bench:conf=$CEPH_CONF_FILE"'
