# SPDX-License-Identifier: BSD-3-Clause
# Scenario "nfsfloor": nbdkit's thread-per-request model against QEMU's
# event loop on an NFS backend, with no code of this project in the path.
# An upstream qemu-nbd serves the nfs scenario's qcow2 image through
# QEMU's own libnfs driver (nfs-ganesha in a private namespace, as in
# nfs.sh); in front of it, nbdkit's own nbd plugin and qemu-nbd's nbd
# driver forward every request to that upstream.  Both sides have the
# same backend processes and the RPCs reach nfs-ganesha from QEMU's
# event loop on both; only the front server differs
# (docs/benchmarks.md, "nfs: the backend on its own CPU").

# The NFS server and the image come from the nfs scenario.
source "$BENCH_DIR/scenarios/nfs.sh"
_bench_labels=()
_bench_cmds=()
DESCRIPTION="NFS backend, no code of this project: nbdkit nbd plugin vs qemu-nbd nbd driver, both forwarding to one upstream qemu-nbd on the nfs:// qcow2 (nfs-ganesha)"
PEER=qemu-nbd
CEILING=
WORKLOADS="randread randwrite"

# nfs.sh's prepare, kept under another name.
eval "nfs_$(declare -f prepare)"

prepare () {
  nfs_prepare
  UPSOCK=$WORKDIR/upstream.sock
  bench_daemon upstream nsenter -t "$(cat "$WORKDIR/anchor.pid")" -n -m -- \
    qemu-nbd -t -e 0 -k "$UPSOCK" -f qcow2 "$NFS_URL/data.qcow2"
  bench_wait_for 20 nbdinfo --size "nbd+unix:///?socket=$UPSOCK" ||
    bench_die "upstream qemu-nbd did not start"
}

bench_server nbdkit-nbd 'serve_nbdkit nbd socket="$WORKDIR/upstream.sock"'
bench_server qemu-nbd   'serve_qemu_nbd -f raw "nbd+unix:///?socket=$WORKDIR/upstream.sock"'
