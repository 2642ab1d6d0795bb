#!/bin/bash
# SPDX-License-Identifier: BSD-3-Clause
# A Ceph RBD image limited the way libvirt's
#   <iotune><total_bytes_sec>104857600</total_bytes_sec>
#           <total_iops_sec>2000</total_iops_sec></iotune>
# would limit it, but for any NBD client (the throttle filter takes
# libvirt's names), on a unix socket.
#
#   throttled-rbd.sh POOL/IMAGE SOCKET
#
# Environment: CEPH_CONF (default /etc/ceph/ceph.conf).  nbdkit writes its
# PID to SOCKET.pid: stop it with kill $(cat SOCKET.pid).
set -euo pipefail
[ $# = 2 ] || { echo "usage: $0 POOL/IMAGE SOCKET" >&2; exit 2; }
pool=${1%%/*} image=${1#*/} sock=$2
rm -f "$sock"          # nbdkit 1.32 leaves its socket behind when killed
nbdkit -U "$sock" -P "$sock.pid" --filter=throttle \
  rbd pool="$pool" image="$image" conf="${CEPH_CONF:-/etc/ceph/ceph.conf}" \
  total_bytes_sec=104857600 total_iops_sec=2000
nbdinfo "nbd+unix:///?socket=$sock"
