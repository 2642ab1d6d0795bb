# SPDX-License-Identifier: BSD-3-Clause
# Scenario "iscsi": one LUN exported by a private tgtd (started in prepare
# with tests/iscsi/tgtd.sh, stopped in cleanup), backed by a raw file in
# $WORKDIR, served by our iscsi plugin and by qemu-nbd through QEMU's own
# iSCSI driver (libiscsi too, qemu-block-extra).  The ceiling is nbdkit's
# file plugin on the LUN's backing file (no iSCSI at all).
#
# tgtd, the NBD server and the client share the 2 cores: tgtd's CPU time is
# in every iSCSI number.

DESCRIPTION="iSCSI LUN (tgtd, file-backed): iscsi plugin vs qemu-nbd iscsi:// driver; ceiling nbdkit file on the backing file"
PEER=qemu-nbd
CEILING=nbdkit-file

scenario_requires () {
  bench_requires nbdkit qemu-nbd tgtd tgtadm python3
  bench_requires_plugin iscsi
  ls /usr/lib/*/qemu/block-iscsi.so >/dev/null 2>&1 ||
    bench_skip "QEMU's iscsi block driver is not installed (qemu-block-extra)"
}

ISCSI_IQN=iqn.2026-11.example:bench

prepare () {
  # shellcheck source=../../tests/iscsi/tgtd.sh
  source "$SRCDIR/tests/iscsi/tgtd.sh"
  make_random_raw "$WORKDIR/lun.raw"
  tgtd_start || bench_die "could not start tgtd"
  tgtd_cmd --op new --mode target --tid 1 -T $ISCSI_IQN || bench_die "tgtadm"
  tgtd_cmd --op new --mode logicalunit --tid 1 --lun 1 -b "$WORKDIR/lun.raw" ||
    bench_die "tgtadm"
  tgtd_cmd --op bind --mode target --tid 1 -I ALL || bench_die "tgtadm"
  ISCSI_URL="iscsi://127.0.0.1:$TGTD_PORT/$ISCSI_IQN/1"
  bench_log "iscsi: tgtd pid $TGTD_PID on port $TGTD_PORT, LUN 1 = $WORKDIR/lun.raw"
}

cleanup () {
  if declare -F tgtd_stop >/dev/null; then tgtd_stop; fi
}

bench_server iscsi-plugin 'serve_nbdkit "$(plugin_so iscsi)" url="$ISCSI_URL"'
bench_server qemu-nbd     'serve_qemu_nbd -f raw --cache=none "$ISCSI_URL"'
bench_server nbdkit-file  'serve_nbdkit file "$WORKDIR/lun.raw"'
