#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# A throwaway one-node Ceph cluster for the rbd tests and benchmarks.
#
#   tests/rbd/ceph-cluster.sh start DIR   # prints nothing on success
#   tests/rbd/ceph-cluster.sh stop DIR
#
# "start" creates DIR (must not hold a running cluster), writes
# DIR/ceph.conf, DIR/client.admin.keyring and DIR/env (shell assignments:
# CEPH_CONF, CEPH_PORT, CEPH_POOL, CEPH_ADMIN_KEY), starts one monitor and
# one memstore OSD bound to 127.0.0.1 on a free port, with cephx, creates
# the pool "rbd" (8 PGs, size 1) and initialises it for RBD.  Nothing is
# written outside DIR; no systemd.  The daemons' PIDs are in
# DIR/run/{mon,osd}.pid and "stop" kills them by PID (OSD first).
#
# Environment: CEPH_MEMSTORE_BYTES (OSD capacity in RAM, default 1 GiB),
# CEPH_START_TIMEOUT (seconds, default 60), CEPH_OWNER_PID (if set, a
# watchdog stops the cluster once that process has gone, e.g. a test
# script killed by a ctest timeout before its own cleanup could run).
#
# Needs: ceph-mon, ceph-osd, ceph-common (ceph, rbd, ceph-authtool,
# monmaptool), python3 (free port), uuidgen or /proc uuid.

set -euo pipefail

die () { echo "ceph-cluster.sh: $*" >&2; exit 1; }

[ $# -eq 2 ] || die "usage: ceph-cluster.sh start|stop DIR"
cmd=$1
dir=$2
self=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/$(basename "${BASH_SOURCE[0]}")

# Kill one daemon by its PID file and wait until it has gone.
stop_daemon () {
  local pidfile=$1 pid i
  [ -s "$pidfile" ] || return 0
  pid=$(cat "$pidfile")
  if kill -0 "$pid" 2>/dev/null; then
    # A throwaway cluster: one second for a clean exit, then SIGKILL.
    kill "$pid" 2>/dev/null || :
    for (( i=0; i<20; i++ )); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.05
    done
    kill -9 "$pid" 2>/dev/null || :
    for (( i=0; i<100; i++ )); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.02
    done
  fi
  rm -f "$pidfile"
}

do_stop () {
  [ -d "$dir" ] || return 0
  [ "${1:-}" = from-watchdog ] || stop_daemon "$dir/run/watchdog.pid"
  stop_daemon "$dir/run/osd.pid"
  stop_daemon "$dir/run/mon.pid"
}

# Start a daemon in the background with every inherited file descriptor
# above 2 closed (otherwise it would hold a harness pipe or lock forever),
# and record its PID.
spawn () {
  local pidfile=$1 log=$2; shift 2
  (
    for fd in /proc/$BASHPID/fd/*; do
      fd=${fd##*/}
      if [ "$fd" -gt 2 ]; then eval "exec $fd>&-" 2>/dev/null || :; fi
    done
    exec "$@" </dev/null >>"$log" 2>&1
  ) &
  echo $! > "$pidfile"
}

new_uuid () {
  if command -v uuidgen >/dev/null 2>&1; then uuidgen
  else cat /proc/sys/kernel/random/uuid; fi
}

do_start () {
  local c
  for c in ceph-mon ceph-osd ceph rbd ceph-authtool monmaptool python3; do
    command -v "$c" >/dev/null 2>&1 || die "$c not installed (need ceph-mon ceph-osd ceph-common)"
  done
  mkdir -p "$dir"
  dir=$(cd "$dir" && pwd)
  [ ! -s "$dir/run/mon.pid" ] || die "$dir already has a cluster"
  mkdir -p "$dir/mon" "$dir/osd" "$dir/run" "$dir/log"

  local port fsid osd_uuid conf=$dir/ceph.conf
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  fsid=$(new_uuid)
  osd_uuid=$(new_uuid)

  cat > "$conf" <<EOF
[global]
fsid = $fsid
mon host = [v2:127.0.0.1:$port]
public addr = 127.0.0.1
ms bind msgr1 = false
ms bind ipv6 = false
ms bind retry count = 2
ms bind retry delay = 1
auth cluster required = cephx
auth service required = cephx
auth client required = cephx
keyring = $dir/client.admin.keyring
run dir = $dir/run
crash dir = $dir/run
admin socket = $dir/run/\$name.\$pid.asok
log to stderr = false
err to stderr = false
osd pool default size = 1
osd pool default min size = 1
osd pool default pg autoscale mode = off
osd crush chooseleaf type = 0
mon allow pool size one = true
mon warn on pool no redundancy = false

[mon]
mon data = $dir/mon
keyring = $dir/mon/keyring
log file = $dir/log/mon.log
mon cluster log file = $dir/log/cluster.log
mon allow pool delete = true
paxos propose interval = 0.01
paxos min wait = 0.01

[osd]
osd data = $dir/osd
keyring = $dir/osd/keyring
log file = $dir/log/osd.log
osd objectstore = memstore
memstore device bytes = ${CEPH_MEMSTORE_BYTES:-1073741824}
osd max object name len = 256
osd max object namespace len = 64
EOF

  # ceph-authtool and monmaptool read CEPH_CONF; keep them off any
  # system configuration.
  local admin_key mon_key
  CEPH_CONF=/dev/null ceph-authtool --create-keyring "$dir/mon.keyring" \
    --gen-key -n mon. --cap mon 'allow *' >/dev/null
  CEPH_CONF=/dev/null ceph-authtool --create-keyring "$dir/client.admin.keyring" \
    --gen-key -n client.admin --cap mon 'allow *' --cap osd 'allow *' \
    --cap mgr 'allow *' >/dev/null
  CEPH_CONF=/dev/null ceph-authtool --create-keyring "$dir/osd.keyring" \
    --gen-key -n osd.0 --cap mon 'allow profile osd' --cap osd 'allow *' \
    --cap mgr 'allow profile osd' >/dev/null
  CEPH_CONF=/dev/null ceph-authtool "$dir/mon.keyring" \
    --import-keyring "$dir/client.admin.keyring" >/dev/null
  CEPH_CONF=/dev/null ceph-authtool "$dir/mon.keyring" \
    --import-keyring "$dir/osd.keyring" >/dev/null
  mkdir -p "$dir/osd"
  cp "$dir/osd.keyring" "$dir/osd/keyring"
  CEPH_CONF=/dev/null monmaptool --create --fsid "$fsid" \
    --addv a "[v2:127.0.0.1:$port]" "$dir/monmap" >/dev/null

  ceph-mon -c "$conf" --mkfs -i a --monmap "$dir/monmap" \
    --keyring "$dir/mon.keyring" >>"$dir/log/mkfs.log" 2>&1 \
    || die "ceph-mon --mkfs failed (see $dir/log/mkfs.log)"
  spawn "$dir/run/mon.pid" "$dir/log/mon.out" ceph-mon -f -c "$conf" -i a

  local timeout=${CEPH_START_TIMEOUT:-60}
  local ceph=(ceph -c "$conf" --connect-timeout 10)
  local deadline=$(( SECONDS + timeout ))

  # Register the OSD (its key is already in the monitor's keyring),
  # make its store and start it.
  until "${ceph[@]}" osd new "$osd_uuid" 0 >/dev/null 2>>"$dir/log/start.log"; do
    kill -0 "$(cat "$dir/run/mon.pid")" 2>/dev/null \
      || die "ceph-mon exited (see $dir/log/mon.log, $dir/log/mon.out)"
    [ $SECONDS -lt $deadline ] || die "monitor not reachable after ${timeout}s"
    sleep 0.1
  done
  ceph-osd -c "$conf" -i 0 --mkfs --osd-uuid "$osd_uuid" \
    >>"$dir/log/mkfs.log" 2>&1 || die "ceph-osd --mkfs failed (see $dir/log/mkfs.log)"
  spawn "$dir/run/osd.pid" "$dir/log/osd.out" ceph-osd -f -c "$conf" -i 0

  # Without a mgr "ceph -s" shows nothing useful: wait on the OSD map.
  until "${ceph[@]}" osd dump 2>/dev/null | grep -q '^osd\.0 up'; do
    kill -0 "$(cat "$dir/run/osd.pid")" 2>/dev/null \
      || die "ceph-osd exited (see $dir/log/osd.log, $dir/log/osd.out)"
    [ $SECONDS -lt $deadline ] || die "OSD not up after ${timeout}s"
    sleep 0.1
  done

  "${ceph[@]}" osd pool create rbd 8 8 replicated --size 1 \
    >/dev/null 2>>"$dir/log/start.log" \
    || die "pool creation failed (see $dir/log/start.log)"
  rbd -c "$conf" pool init rbd 2>>"$dir/log/start.log" \
    || die "rbd pool init failed (see $dir/log/start.log)"

  if [ -n "${CEPH_OWNER_PID:-}" ]; then
    spawn "$dir/run/watchdog.pid" "$dir/log/watchdog.out" \
      bash -c 'while kill -0 "$1" 2>/dev/null; do sleep 1; done
               exec bash "$2" stop-from-watchdog "$3"' \
      _ "$CEPH_OWNER_PID" "$self" "$dir"
  fi

  admin_key=$(CEPH_CONF=/dev/null ceph-authtool -p -n client.admin "$dir/client.admin.keyring")
  cat > "$dir/env" <<EOF
CEPH_CONF=$conf
CEPH_PORT=$port
CEPH_POOL=rbd
CEPH_ADMIN_KEY=$admin_key
EOF
}

case $cmd in
  start)
    # On any failure, stop whatever was started.
    trap 'rc=$?; [ $rc -eq 0 ] || do_stop; exit $rc' EXIT
    do_start ;;
  stop) do_stop ;;
  stop-from-watchdog) do_stop from-watchdog; rm -f "$dir/run/watchdog.pid" ;;
  *) die "usage: ceph-cluster.sh start|stop DIR" ;;
esac
