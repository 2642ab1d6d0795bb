#!/bin/bash
# SPDX-License-Identifier: BSD-3-Clause
# Migrate a disk image to an LV, an RBD image or a new qcow2 file: one
# nbdcopy between two nbdkit exports, then a comparison of the two.
#
#   migrate.sh SOURCE DEST
#
# SOURCE  an image file: qcow2, raw, vmdk or vhdx (vmdk and vhdx need this
#         project's vmdk / vhdx plugins; without them, convert with
#         qemu-img convert first)
# DEST    qcow2:PATH              a new qcow2 file (must not exist)
#         lvm:PV[,PV...]:VG/LV    an existing LV at least as large as the
#                                 disk (made with lvcreate; need not be
#                                 active)
#         rbd:POOL/IMAGE          an existing RBD image at least as large
#                                 (rbd create --size ...); $CEPH_CONF or
#                                 /etc/ceph/ceph.conf names the cluster
#
# Stop the guest first: the source must not change during the copy.
# nbdcopy skips holes and zeroes of the source, so thin stays thin.
set -euo pipefail

usage () { sed -n '3,20s/^# \{0,1\}//p' "$0" >&2; exit 2; }
[ $# = 2 ] || usage
src=$1 dest=$2
[ -f "$src" ] || { echo "migrate.sh: no such file: $src" >&2; exit 1; }

fmt=$(qemu-img info -U --output=json "$src" |
      python3 -c 'import json,sys; print(json.load(sys.stdin)["format"])')
size=$(qemu-img info -U --output=json "$src" |
       python3 -c 'import json,sys; print(json.load(sys.stdin)["virtual-size"])')
case $fmt in
  raw)            src_server=(nbdkit -r file "$src") ;;
  qcow2)          src_server=(nbdkit -r qcow2 "file=$src") ;;
  vmdk|vhdx)
    nbdkit "$fmt" --version >/dev/null 2>&1 || {
      echo "migrate.sh: nbdkit has no $fmt plugin here; convert first:" >&2
      echo "  qemu-img convert -O qcow2 '$src' converted.qcow2" >&2
      exit 1; }
    src_server=(nbdkit -r "$fmt" "file=$src") ;;
  *) echo "migrate.sh: unsupported source format $fmt" >&2; exit 1 ;;
esac

case $dest in
  qcow2:*)
    path=${dest#qcow2:}
    [ ! -e "$path" ] || { echo "migrate.sh: $path exists" >&2; exit 1; }
    dest_server=(nbdkit qcow2 "file=$path" "create=$size") ;;
  lvm:*:*/*)
    rest=${dest#lvm:}
    pvs=${rest%%:*} vglv=${rest#*:}
    dest_server=(nbdkit lvm)
    IFS=, read -r -a pv_list <<<"$pvs"
    for pv in "${pv_list[@]}"; do dest_server+=("pv=$pv"); done
    dest_server+=("vg=${vglv%%/*}" "lv=${vglv#*/}") ;;
  rbd:*/*)
    rest=${dest#rbd:}
    dest_server=(nbdkit rbd "pool=${rest%%/*}" "image=${rest#*/}"
                 "conf=${CEPH_CONF:-/etc/ceph/ceph.conf}") ;;
  *) usage ;;
esac

echo "migrate.sh: $src ($fmt, $size bytes) -> $dest"
progress=()
[ ! -t 2 ] || progress=(--progress)
# nbdcopy starts both servers (socket activation) and stops them after.
nbdcopy --flush "${progress[@]}" -- [ "${src_server[@]}" ] [ "${dest_server[@]}" ]

# Compare the disk as the guest saw it with the copy.  The destination
# may be larger than the source (an LV rounded up to extents): only the
# source's size is compared.
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
esc () { printf '%s' "${1//,/,,}"; }      # QEMU option syntax
nbdkit -U "$tmp/dest.sock" -r --run "qemu-img compare --image-opts \
    'driver=$fmt,read-only=on,force-share=on,file.driver=file,file.filename=$(esc "$src")' \
    'driver=raw,size=$size,file.driver=nbd,file.path=$(esc "$tmp/dest.sock")'" \
  "${dest_server[@]:1}" ||
  { echo "migrate.sh: the copy differs from the source" >&2; exit 1; }
echo "migrate.sh: done"
