# SPDX-License-Identifier: BSD-3-Clause
# Scenario "nfsfloor": nbdkit's thread-per-request model against QEMU's
# event loop on an NFS backend, with no code of this project in the path.
# An upstream qemu-nbd serves a qcow2 image (as in nfs.sh) through QEMU's
# own libnfs driver from a private nfs-ganesha (bench/nfs-ns.sh); in
# front of it, nbdkit's own nbd plugin and qemu-nbd's nbd driver forward
# every request to that upstream.  Both sides have the same backend
# processes and the RPCs reach nfs-ganesha from QEMU's event loop on
# both; only the front server differs (docs/benchmarks.md, "nfs: the
# backend on its own CPU").

DESCRIPTION="NFS backend, no code of this project: nbdkit nbd plugin vs qemu-nbd nbd driver, both forwarding to one upstream qemu-nbd on the nfs:// qcow2 (nfs-ganesha)"
PEER=qemu-nbd
WORKLOADS="randread randwrite"

scenario_requires () {
  bench_requires nbdkit qemu-nbd qemu-img nbdinfo ganesha.nfsd rpcbind \
    rpcinfo ip unshare nsenter
  ls /usr/lib/*/qemu/block-nfs.so >/dev/null 2>&1 ||
    bench_skip "QEMU's nfs block driver is not installed (qemu-block-extra)"
  [ "$(id -u)" = 0 ] || bench_skip "needs root (network namespace)"
}

# shellcheck source=bench/nfs-ns.sh
source "$BENCH_DIR/nfs-ns.sh"

prepare () {
  make_random_raw "$WORKDIR/data.raw"
  nfs_ns_serve_qcow2 "$WORKDIR" "$WORKDIR/data.raw" ||
    bench_die "nfs server did not start: $(cat "$WORKDIR/nfs-start.log")"
  UPSOCK=$WORKDIR/upstream.sock
  bench_daemon upstream nsenter -t "$(cat "$WORKDIR/anchor.pid")" -n -m -- \
    qemu-nbd -t -e 0 -k "$UPSOCK" -f qcow2 nfs://127.0.0.1/export/data.qcow2
  bench_wait_for 20 nbdinfo --size "nbd+unix:///?socket=$UPSOCK" ||
    bench_die "upstream qemu-nbd did not start"
}

cleanup () { nfs_ns_stop "$WORKDIR"; }

bench_server nbdkit-nbd 'serve_nbdkit nbd socket="$WORKDIR/upstream.sock"'
bench_server qemu-nbd   'serve_qemu_nbd -f raw "nbd+unix:///?socket=$WORKDIR/upstream.sock"'
