# SPDX-License-Identifier: BSD-3-Clause
# A private NFS server (nfs-ganesha with its VFS backend, plus rpcbind) on
# loopback, for tests and benchmarks.  rpcbind cannot be bound to loopback
# alone, so everything runs inside a private network namespace (and mount
# namespace, with its own /run for rpcbind's lock file): a script first
# re-executes itself there, then sources tests/functions.sh:
#
#   source "$(dirname "$0")/nfs-server.sh"
#   nfs_netns "$0" "$@"          # re-exec under `unshare -n`, lo up
#   source "${TOP_SRCDIR:?run the tests through ctest, which sets TOP_SRCDIR}/tests/functions.sh"
#   nfs_server_start "$tmpdir/export"   # sets NFS_URL=nfs://127.0.0.1/export
#   ... nbdkit qcow2 file="$NFS_URL/disk.qcow2" ...
#   nfs_server_restart           # kill -9 and start again (same export)
#   nfs_server_stop
#
# The export directory is served as /export (NFSv3 and v4, root not
# squashed).  Daemons run in the foreground, are stopped by PID (and killed
# at exit through cleanup_add), and inherit no descriptors above stderr.

NFS_URL=""
NFS_DIR=""
NFS_STATE=""
NFS_RPCBIND_PID=""
NFS_GANESHA_PID=""

_nfs_fail () {
  if declare -F fail >/dev/null; then fail "$@"; fi
  echo "nfs-server.sh: $*" >&2
  exit 1
}

# nfs_netns SCRIPT ARGS...: unless already done, re-execute SCRIPT inside
# a new network namespace (as root); then bring loopback up.
nfs_netns () {
  if [ "${KVM_NFS_NETNS:-}" != 1 ]; then
    if [ "$(id -u)" != 0 ] || ! command -v unshare >/dev/null ||
         ! command -v ip >/dev/null; then
      if [ "${CI:-}" = true ]; then
        echo "FAIL (would skip, but CI=true): needs root, unshare and ip" >&2
        exit 1
      fi
      echo "SKIP: needs root, unshare and ip (private network namespace)" >&2
      exit 77
    fi
    KVM_NFS_NETNS=1 exec unshare -n -m --propagation private -- bash "$@"
  fi
  ip link set lo up
  # rpcbind keeps its lock and socket in /run (rpcbind.lock, rpcbind.sock):
  # a private /run lets several servers run side by side.
  if [ "${KVM_NFS_RUN_PRIVATE:-}" != 1 ]; then
    mount -t tmpfs -o mode=0755,size=16m kvm-nfs-run /run
    mkdir -p /run/lock
    export KVM_NFS_RUN_PRIVATE=1
  fi
}

# Run a daemon in the foreground with no inherited descriptors above 2,
# output to LOG.  Prints nothing; the caller takes $!.
_nfs_spawn () {
  local log=$1; shift
  python3 - "$log" "$@" <<'EOF' &
import os, sys
log = sys.argv[1]
fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
os.dup2(fd, 1); os.dup2(fd, 2)
os.closerange(3, 65536)
os.execvp(sys.argv[2], sys.argv[2:])
EOF
}

# Kill PID at exit if it is still that process (kill_at_exit of
# tests/functions.sh; PIDs are reused by parallel tests).
_nfs_at_exit () {
  if declare -F kill_at_exit >/dev/null; then
    kill_at_exit "$1"
  fi
}

_nfs_wait_rpc () {   # PROGRAM VERSION PID
  local i
  for (( i = 0; i < 200; i++ )); do
    kill -0 "$3" 2>/dev/null || return 1
    rpcinfo -T tcp 127.0.0.1 "$1" "$2" >/dev/null 2>&1 && return 0
    sleep 0.05
  done
  return 1
}

_nfs_launch () {
  _nfs_spawn "$NFS_STATE/rpcbind.log" rpcbind -f
  NFS_RPCBIND_PID=$!
  _nfs_at_exit "$NFS_RPCBIND_PID"
  _nfs_wait_rpc 100000 2 "$NFS_RPCBIND_PID" ||
    _nfs_fail "rpcbind did not start ($(cat "$NFS_STATE/rpcbind.log"))"
  rm -f "$NFS_STATE/ganesha.pid"
  _nfs_spawn "$NFS_STATE/ganesha.out" ganesha.nfsd -F -f "$NFS_STATE/ganesha.conf" \
    -L "$NFS_STATE/ganesha.log" -p "$NFS_STATE/ganesha.pid"
  NFS_GANESHA_PID=$!
  _nfs_at_exit "$NFS_GANESHA_PID"
  _nfs_wait_rpc 100003 3 "$NFS_GANESHA_PID" ||
    _nfs_fail "ganesha did not start: $(tail -5 "$NFS_STATE/ganesha.log" 2>/dev/null)"
  _nfs_wait_rpc 100005 3 "$NFS_GANESHA_PID" ||
    _nfs_fail "ganesha's MOUNT service did not start"
}

# nfs_server_start DIR: export DIR (created if missing) as /export.
nfs_server_start () {
  command -v ganesha.nfsd >/dev/null && command -v rpcbind >/dev/null &&
    command -v rpcinfo >/dev/null ||
    { if declare -F skip >/dev/null; then
        skip "nfs-ganesha, nfs-ganesha-vfs and rpcbind are needed"
      fi; _nfs_fail "nfs-ganesha and rpcbind are needed"; }
  [ -d /usr/lib/x86_64-linux-gnu/ganesha ] || [ -n "${NFS_GANESHA_PLUGINS:-}" ] ||
    _nfs_fail "no ganesha FSAL directory (nfs-ganesha-vfs)"
  NFS_DIR=$(mkdir -p "$1" && cd "$1" && pwd -P)
  NFS_STATE=$(mktemp -d "${tmpdir:-/tmp}/nfsd.XXXXXX")
  mkdir -p "$NFS_STATE/recovery"
  cat > "$NFS_STATE/ganesha.conf" <<EOF
NFS_CORE_PARAM {
  NFS_Port = 2049; MNT_Port = 20048; Protocols = 3, 4;
  Enable_NLM = false; Enable_RQUOTA = false; Enable_UDP = false;
  mount_path_pseudo = true;
  Plugins_Dir = ${NFS_GANESHA_PLUGINS:-/usr/lib/x86_64-linux-gnu/ganesha};
}
NFSV4 { Graceless = true; RecoveryRoot = $NFS_STATE/recovery; Only_Numeric_Owners = true; }
NFS_KRB5 { Active_krb5 = false; }
MDCACHE { Use_Getattr_Directory_Invalidation = true; }
EXPORT {
  Export_Id = 1; Path = $NFS_DIR; Pseudo = /export;
  Access_Type = RW; Squash = No_Root_Squash; SecType = sys;
  Protocols = 3, 4; Transports = TCP; Attr_Expiration_Time = 0;
  FSAL { Name = VFS; }
}
EOF
  _nfs_launch
  NFS_URL=nfs://127.0.0.1/export
}

_nfs_kill () {   # PID: TERM, wait, then KILL
  local i
  [ -n "$1" ] || return 0
  kill "$1" 2>/dev/null || return 0
  for (( i = 0; i < 100; i++ )); do
    kill -0 "$1" 2>/dev/null || break
    sleep 0.05
  done
  kill -9 "$1" 2>/dev/null || :
  wait "$1" 2>/dev/null || :
}

nfs_server_stop () {
  _nfs_kill "$NFS_GANESHA_PID"
  _nfs_kill "$NFS_RPCBIND_PID"
  NFS_GANESHA_PID="" NFS_RPCBIND_PID=""
}

# nfs_server_kill: the server dies at once (SIGKILL), rpcbind stays.
nfs_server_kill () {
  [ -n "$NFS_GANESHA_PID" ] && kill -9 "$NFS_GANESHA_PID" 2>/dev/null
  wait "$NFS_GANESHA_PID" 2>/dev/null || :
  NFS_GANESHA_PID=""
}

# nfs_server_restart: the server crashes (SIGKILL; a clean stop of
# ganesha takes seconds) and rpcbind stops, then both start again with the
# same export.
nfs_server_restart () {
  nfs_server_kill
  nfs_server_stop
  _nfs_launch
}
