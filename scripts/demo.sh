#!/bin/bash
# SPDX-License-Identifier: BSD-3-Clause
# The main job, on a fresh Debian 12 machine as root: install what is
# needed, build, install the plugins into nbdkit, create a sample qcow2 with
# qemu-img, serve it with `nbdkit qcow2`, and read it back over NBD with
# nbdinfo, qemu-img and qemu-io.
#   scripts/demo.sh           run the demo and stop the server
#   scripts/demo.sh --serve   leave the server running on 127.0.0.1:10809
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
serve=false
[ "${1:-}" = --serve ] && serve=true

say () { printf '\n\033[1m$ %s\033[0m\n' "$*"; }
run () { say "$*"; "$@"; }

bash scripts/install-deps.sh --build-only
bash scripts/build.sh "$top/build" >/dev/null
cmake --install "$top/build" >/dev/null
echo "installed: $(grep -c -- '-plugin.so$' "$top/build/install_manifest.txt") plugins and $(grep -c -- '-filter.so$' "$top/build/install_manifest.txt") filters into nbdkit's directories"

work=$(mktemp -d /tmp/kvm-demo.XXXXXX)
chmod 0755 "$work"
img=$work/sample.qcow2
sock=$work/nbd.sock

run qemu-img create -q -f qcow2 "$img" 1G
run qemu-io -f qcow2 -c 'write -q -P 0x5a 0 4M' -c 'write -q -P 0xa5 512M 1M' \
    -c 'write -q -z 600M 1M' "$img"

say "nbdkit -U $sock qcow2 file=$img"
nbdkit -U "$sock" -P "$work/nbdkit.pid" qcow2 file="$img"
trap 'kill $(cat "$work/nbdkit.pid") 2>/dev/null || :; rm -rf "$work"' EXIT
uri="nbd+unix:///?socket=$sock"

run nbdinfo "$uri"
run nbdinfo --map "$uri"
run qemu-img info "$uri"
run qemu-io -r -f raw -c 'read -P 0x5a 0 4M' -c 'read -P 0xa5 512M 1M' \
    -c 'read -P 0 600M 1M' "$uri"
run qemu-img compare -f qcow2 -F raw "$img" "$uri"

cat <<EOT

Attach such an export to a guest (this one stops with the demo; run
scripts/demo.sh --serve to keep one on 127.0.0.1:10809):
  qemu-system-x86_64 ... -drive file=$uri,format=raw,if=virtio
or, served over TCP (nbdkit -p 10809 qcow2 file=$img), with libvirt:
  <disk type='network' device='disk'>
    <driver name='qemu' type='raw'/>
    <source protocol='nbd'><host name='127.0.0.1' port='10809'/></source>
    <target dev='vda' bus='virtio'/>
  </disk>
EOT

if $serve; then
  kill "$(cat "$work/nbdkit.pid")"
  trap - EXIT
  echo; echo "Serving $img on nbd://127.0.0.1:10809/ (Ctrl-C to stop)"
  exec nbdkit -f -i 127.0.0.1 -p 10809 qcow2 file="$img"
fi
