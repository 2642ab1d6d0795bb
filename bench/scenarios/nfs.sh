# SPDX-License-Identifier: BSD-3-Clause
# Scenario "nfs": a fully allocated qcow2 image ($SIZE of random data) in
# the export of a private nfs-ganesha (tests/nfs/nfs-server.sh), served by
# our qcow2 plugin with file=nfs://... (libnfs, common/bdev/bdev_nfs.c) and
# by qemu-nbd through QEMU's own nfs driver (libnfs too, qemu-block-extra)
# on the same URL.  The "ceiling" is our qcow2 plugin on the same image
# read locally (no NFS at all).  ganesha, the NBD server and the client
# share the 2 cores: ganesha's CPU time is in every NFS number.
#
# rpcbind cannot be bound to loopback only, so ganesha, rpcbind and the
# NBD servers run in a private network (and mount) namespace held open by
# an anchor process (nsenter); fio reaches the servers through their unix
# sockets, which do not depend on the network namespace.

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

NFS_URL=nfs://127.0.0.1/export

prepare () {
  mkdir -p "$WORKDIR/export"
  make_random_raw "$WORKDIR/data.raw"
  qemu-img convert -f raw -O qcow2 "$WORKDIR/data.raw" "$WORKDIR/export/data.qcow2"
  rm -f "$WORKDIR/data.raw"
  unshare -n -m --propagation private -- sleep 1000000 &
  NFS_ANCHOR=$!
  echo "$NFS_ANCHOR" > "$WORKDIR/anchor.pid"
  local i
  for (( i = 0; i < 100; i++ )); do
    [ "$(readlink "/proc/$NFS_ANCHOR/ns/net")" != "$(readlink /proc/self/ns/net)" ] && break
    sleep 0.05
  done
  # Inside: loopback up, a private /run, the daemons (left running).
  nsenter -t "$NFS_ANCHOR" -n -m -- env KVM_NFS_NETNS=1 SRCDIR="$SRCDIR" \
    WORKDIR="$WORKDIR" bash -c '
      source "$SRCDIR/tests/nfs/nfs-server.sh"
      nfs_netns
      tmpdir=$WORKDIR nfs_server_start "$WORKDIR/export"
      echo "$NFS_GANESHA_PID $NFS_RPCBIND_PID" > "$WORKDIR/daemons.pid"' \
    > "$WORKDIR/nfs-start.log" 2>&1 ||
    bench_die "nfs server did not start: $(cat "$WORKDIR/nfs-start.log")"
  bench_log "nfs: ganesha and rpcbind (pids $(cat "$WORKDIR/daemons.pid")) in the namespace of pid $NFS_ANCHOR"
}

cleanup () {
  local p
  for p in $(cat "$WORKDIR/daemons.pid" 2>/dev/null); do kill -9 "$p" 2>/dev/null || :; done
  [ -s "$WORKDIR/anchor.pid" ] && kill -9 "$(cat "$WORKDIR/anchor.pid")" 2>/dev/null || :
}

# The servers run inside the namespace (nsenter execs them: same PID).
in_ns () { exec nsenter -t "$(cat "$WORKDIR/anchor.pid")" -n -m -- "$@"; }

bench_server nfs-qcow2   'in_ns nbdkit -f -U "$SOCK" "$(plugin_so qcow2)" file="$NFS_URL/data.qcow2"'
bench_server qemu-nbd    'in_ns qemu-nbd -t -e 0 -k "$SOCK" -f qcow2 "$NFS_URL/data.qcow2"'
bench_server qcow2-local 'serve_nbdkit "$(plugin_so qcow2)" file="$WORKDIR/export/data.qcow2"'
