# SPDX-License-Identifier: BSD-3-Clause
# A private nfs-ganesha (tests/nfs/nfs-server.sh) for benchmarks, sourced
# by bench/scenarios/nfs.sh, nfsfloor.sh and bench/cpu-split.sh.
# rpcbind cannot be bound to loopback only, so ganesha and rpcbind run in
# a network (and mount) namespace of their own, held open by an anchor
# process; NBD servers that use the export run in it too (nfs_ns_exec),
# and clients reach them through unix sockets, which do not depend on
# the network namespace.  Needs root.

_nfs_ns_src=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

# nfs_ns_start DIR: export DIR/export at nfs://127.0.0.1/export.  Writes
# DIR/anchor.pid and DIR/daemons.pid ("GANESHA-PID RPCBIND-PID"), the
# server's output to DIR/nfs-start.log; non-zero if it did not start.
nfs_ns_start () {
  local dir=$1 anchor i
  unshare -n -m --propagation private -- sleep 1000000 </dev/null >/dev/null 2>&1 &
  anchor=$!
  disown "$anchor"              # killed by nfs_ns_stop: no "Killed" notice
  echo "$anchor" > "$dir/anchor.pid"
  for (( i = 0; i < 100; i++ )); do
    [ "$(readlink "/proc/$anchor/ns/net")" != "$(readlink /proc/self/ns/net)" ] && break
    sleep 0.05
  done
  # Inside: loopback up, a private /run, the daemons (left running).
  nsenter -t "$anchor" -n -m -- env KVM_NFS_NETNS=1 SRCDIR="$_nfs_ns_src" \
    DIR="$dir" bash -c '
      source "$SRCDIR/tests/nfs/nfs-server.sh"
      nfs_netns
      tmpdir=$DIR nfs_server_start "$DIR/export"
      echo "$NFS_GANESHA_PID $NFS_RPCBIND_PID" > "$DIR/daemons.pid"' \
    > "$dir/nfs-start.log" 2>&1
}

# nfs_ns_serve_qcow2 DIR RAW: RAW converted to DIR/export/data.qcow2 (RAW
# removed) and served by nfs_ns_start DIR as
# nfs://127.0.0.1/export/data.qcow2; non-zero if either step failed.
nfs_ns_serve_qcow2 () {
  mkdir -p "$1/export"
  qemu-img convert -f raw -O qcow2 "$2" "$1/export/data.qcow2" || return 1
  rm -f "$2"
  nfs_ns_start "$1"
}

# nfs_ns_stop DIR: kill what nfs_ns_start started.
nfs_ns_stop () {
  local p
  for p in $(cat "$1/daemons.pid" 2>/dev/null) $(cat "$1/anchor.pid" 2>/dev/null); do
    kill -9 "$p" 2>/dev/null || :
  done
}

# nfs_ns_exec DIR CMD...: exec CMD in the namespace (same PID).
nfs_ns_exec () {
  local dir=$1; shift
  exec nsenter -t "$(cat "$dir/anchor.pid")" -n -m -- "$@"
}
