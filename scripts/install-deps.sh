#!/bin/bash
# SPDX-License-Identifier: BSD-3-Clause
# Install every Debian 12 package the build, the tests and the benchmarks
# need.  Idempotent: runs apt-get only when something is missing.
#   scripts/install-deps.sh [--build-only]
set -euo pipefail

build_pkgs=(
  build-essential cmake pkg-config perl python3
  nbdkit nbdkit-plugin-dev libnbd-bin libnbd-dev
  zlib1g-dev libzstd-dev librbd-dev libiscsi-dev libnfs-dev
  qemu-utils
)
test_pkgs=(
  qemu-block-extra qemu-system-x86 libiscsi-bin tgt lvm2 util-linux fio
  python3-libnbd
  ceph-mon ceph-osd ceph-common
  nfs-ganesha nfs-ganesha-vfs rpcbind iproute2
  busybox-static cpio xz-utils zstd kmod
  libvirt-daemon-system libvirt-daemon-system-sysv libvirt-clients
  libvirt-daemon-driver-qemu
  clang libclang-rt-14-dev
  gnuplot-nox
  gdb
  man-db file
)

pkgs=("${build_pkgs[@]}")
[ "${1:-}" = --build-only ] || pkgs+=("${test_pkgs[@]}")

missing=()
for p in "${pkgs[@]}"; do
  status=$(dpkg-query -W -f='${db:Status-Abbrev}' "$p" 2>/dev/null || true)
  [ "${status:0:2}" = ii ] || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all ${#pkgs[@]} packages present"
  exit 0
fi

echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
# --no-install-recommends keeps systemd and desktop bits out; daemons are
# started by the tests themselves, never as services.
apt-get install -y -q --no-install-recommends "${missing[@]}"
