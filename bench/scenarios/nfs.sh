# SPDX-License-Identifier: BSD-3-Clause
# Scenario "nfs": a fully allocated qcow2 image ($SIZE of random data) in
# the export of a private nfs-ganesha (tests/nfs/nfs-server.sh), served by
# our qcow2 plugin with file=nfs://... (libnfs, common/bdev/bdev_nfs.c) and
# by qemu-nbd through QEMU's own nfs driver (libnfs too, qemu-block-extra)
# on the same URL.  The "ceiling" is our qcow2 plugin on the same image
# read locally (no NFS at all).  ganesha, the NBD server and the client
# share the 2 cores: ganesha's CPU time is in every NFS number.
#
# The NFS server runs in a namespace of its own (bench/nfs-ns.sh), and so
# do the NBD servers that use it.

DESCRIPTION="qcow2 on NFS (nfs-ganesha VFS): qcow2 plugin file=nfs:// vs qemu-nbd nfs:// driver; ceiling qcow2 plugin on the local file"
PEER=qemu-nbd
CEILING=qcow2-local
WORKLOADS="seqread randread randwrite"

scenario_requires () {
  bench_requires nbdkit qemu-nbd qemu-img ganesha.nfsd rpcbind rpcinfo ip \
    unshare nsenter python3
  bench_requires_plugin qcow2
  ls /usr/lib/*/qemu/block-nfs.so >/dev/null 2>&1 ||
    bench_skip "QEMU's nfs block driver is not installed (qemu-block-extra)"
  [ "$(id -u)" = 0 ] || bench_skip "needs root (network namespace)"
}

# shellcheck source=bench/nfs-ns.sh
source "$BENCH_DIR/nfs-ns.sh"
NFS_URL=nfs://127.0.0.1/export

prepare () {
  make_random_raw "$WORKDIR/data.raw"
  nfs_ns_serve_qcow2 "$WORKDIR" "$WORKDIR/data.raw" ||
    bench_die "nfs server did not start: $(cat "$WORKDIR/nfs-start.log")"
  bench_log "nfs: ganesha and rpcbind (pids $(cat "$WORKDIR/daemons.pid")) in the namespace of pid $(cat "$WORKDIR/anchor.pid")"
}

cleanup () { nfs_ns_stop "$WORKDIR"; }

# The servers run inside the namespace (nsenter execs them: same PID).
in_ns () { nfs_ns_exec "$WORKDIR" "$@"; }

bench_server nfs-qcow2   'in_ns nbdkit -f -U "$SOCK" "$(plugin_so qcow2)" file="$NFS_URL/data.qcow2"'
bench_server qemu-nbd    'in_ns qemu-nbd -t -e 0 -k "$SOCK" -f qcow2 "$NFS_URL/data.qcow2"'
bench_server qcow2-local 'serve_nbdkit "$(plugin_so qcow2)" file="$WORKDIR/export/data.qcow2"'
