#!/bin/bash
# SPDX-License-Identifier: BSD-3-Clause
# Serve vm.qcow2 (and its backing chain) over a unix socket and boot QEMU
# from it.  The guest sees a plain virtio disk; qcow2 is handled by nbdkit.
set -euo pipefail
img=${1:?usage: $0 IMAGE.qcow2}
dir=$(mktemp -d)
nbdkit -U "$dir/sock" -P "$dir/pid" qcow2 file="$img"
trap 'kill $(cat "$dir/pid"); rm -rf "$dir"' EXIT
qemu-system-x86_64 -m 1024 -machine accel=kvm:tcg \
  -drive file="nbd+unix:///?socket=$dir/sock",format=raw,if=virtio,cache=none
