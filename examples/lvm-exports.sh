#!/bin/bash
# SPDX-License-Identifier: BSD-3-Clause
# Export every logical volume of a volume group found on disks or disk
# image files, with no device-mapper and no activation: one NBD export per
# LV, named after it.
#
#   lvm-exports.sh VG PV [PV...]        e.g. lvm-exports.sh vg0 /dev/sdb /dev/sdc
#
# Environment: NBD_ADDR (default 127.0.0.1), NBD_PORT (default 10809),
# PIDFILE (default /run/nbdkit-lvm-VG.pid).  Stop with kill $(cat PIDFILE).
set -euo pipefail
[ $# -ge 2 ] || { sed -n '7p' "$0" | sed 's/^# *//' >&2; exit 2; }
vg=$1; shift
pvargs=()
for pv in "$@"; do pvargs+=("pv=$pv"); done
addr=${NBD_ADDR:-127.0.0.1} port=${NBD_PORT:-10809}
pidfile=${PIDFILE:-/run/nbdkit-lvm-$vg.pid}

nbdkit -i "$addr" -p "$port" -P "$pidfile" lvm "${pvargs[@]}" vg="$vg"
nbdinfo --list "nbd://$addr:$port"
echo "QEMU: -drive file=nbd://$addr:$port/LV,format=raw,if=virtio,cache=none"
echo "stop: kill \$(cat $pidfile)"
