#!/bin/bash
# SPDX-License-Identifier: BSD-3-Clause
# tests/e2e/prepare.sh: obtain the guest kernel and build the initramfs for
# the e2e harness, once, into a cache directory.  Idempotent, fast when
# everything is cached, safe to run concurrently (flock).
#
# On success prints two lines on stdout:
#   KERNEL=/path/to/vmlinux (or vmlinuz when no PVH ELF could be extracted)
#   INITRD=/path/to/initrd-HASH.img
# Progress and errors go to stderr.  Exit 77 when the kernel cannot be
# obtained (no network, no apt lists) outside CI; with CI=true, exit 1.
#
# Environment:
#   KVM_E2E_CACHE       cache directory (default /var/cache/nbdkit-kvm-storage/e2e,
#                       or ${XDG_CACHE_HOME:-~/.cache}/nbdkit-kvm-storage/e2e
#                       when that is not writable)
#   KVM_E2E_KERNEL_DEB  use this linux-image .deb instead of downloading one
#   KVM_E2E_REFRESH=1   download the current kernel even if one is cached

set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PATH=$PATH:/usr/sbin:/sbin        # modinfo, libvirtd, virtlogd
# Modules the guest loads (their dependencies are added automatically).
modules_wanted="virtio_pci virtio_blk"

msg () { echo "e2e-prepare: $*" >&2; }
die () { msg "ERROR: $*"; exit 1; }
unavailable () {
  msg "cannot obtain the guest kernel: $*"
  if [ "${CI:-}" = true ]; then exit 1; fi
  exit 77
}

for c in busybox dpkg-deb modinfo sha256sum flock od xz file; do
  command -v "$c" >/dev/null 2>&1 || unavailable "$c not installed"
done
busybox_bin=$(command -v busybox)
# The initramfs needs a static busybox (package busybox-static).
if LC_ALL=C file -L "$busybox_bin" 2>/dev/null | grep -q 'dynamically linked'; then
  unavailable "$busybox_bin is not static (install busybox-static)"
fi

# --- cache directory and lock -----------------------------------------------
cache=${KVM_E2E_CACHE:-}
if [ -z "$cache" ]; then
  cache=/var/cache/nbdkit-kvm-storage/e2e
  if ! mkdir -p "$cache" 2>/dev/null || [ ! -w "$cache" ]; then
    cache=${XDG_CACHE_HOME:-$HOME/.cache}/nbdkit-kvm-storage/e2e
  fi
fi
mkdir -p "$cache" || die "cannot create $cache"
# libvirt's QEMU runs as another user: it must be able to read the files.
chmod 0755 "$cache" 2>/dev/null || :
umask 022

exec 9>>"$cache/.lock"
flock -w 900 9 || die "timed out waiting for the lock on $cache/.lock"

# --- kernel ------------------------------------------------------------------
# extract_vmlinux BZIMAGE OUT: the ELF vmlinux inside a bzImage, using the
# payload_offset/payload_length fields of the x86 boot protocol header.
extract_vmlinux () {
  local bz=$1 out=$2 setup_sects poff plen magic dec
  [ "$(od -An -c -j $((0x202)) -N4 "$bz" | tr -d ' ')" = HdrS ] || return 1
  setup_sects=$(od -An -tu1 -j $((0x1f1)) -N1 "$bz" | tr -d ' ')
  [ "$setup_sects" != 0 ] || setup_sects=4
  read -r poff plen < <(od -An -tu4 -j $((0x248)) -N8 "$bz")
  poff=$(( (setup_sects + 1) * 512 + poff ))
  magic=$(od -An -tx1 -j "$poff" -N4 "$bz" | tr -d ' \n')
  case $magic in
    fd377a58) dec="xz -dc --single-stream" ;;
    1f8b*)    dec="gzip -dc" ;;
    28b52ffd) dec="zstd -dcq" ;;
    02214c18) dec="lz4 -dc" ;;
    *) msg "unknown kernel compression (magic $magic)"; return 1 ;;
  esac
  command -v "${dec%% *}" >/dev/null 2>&1 || { msg "${dec%% *} not installed"; return 1; }
  # Decompressors may complain about the 4-byte size trailer: judge by
  # the result, which must be an ELF file.
  tail -c +$((poff + 1)) "$bz" | head -c "$plen" | $dec > "$out.tmp" 2>/dev/null || :
  [ "$(head -c 4 "$out.tmp" | od -An -tx1 | tr -d ' \n')" = 7f454c46 ] || {
    rm -f "$out.tmp"; return 1; }
  mv "$out.tmp" "$out"
}

# install_kernel DEB: unpack, pick the kernel and the modules, into
# $cache/kernel-VERSION, then point $cache/kernel at it.
install_kernel () {
  local deb=$1 work kver src kdir m
  work=$(mktemp -d "$cache/unpack.XXXXXX")
  trap 'rm -rf "$work"' EXIT
  msg "unpacking $(basename "$deb")"
  dpkg-deb -x "$deb" "$work/root" || die "dpkg-deb -x $deb failed"
  src=$(ls -d "$work"/root/lib/modules/*/ 2>/dev/null | head -n1)
  [ -n "$src" ] || die "no lib/modules in $deb"
  kver=$(basename "$src")
  [ -f "$work/root/boot/vmlinuz-$kver" ] || die "no boot/vmlinuz-$kver in $deb"
  kdir=$cache/kernel-$kver
  rm -rf "$kdir.new"
  mkdir -p "$kdir.new/modules"
  cp "$work/root/boot/vmlinuz-$kver" "$kdir.new/vmlinuz"
  cp "$work/root/boot/config-$kver" "$kdir.new/config" 2>/dev/null || :
  if grep -q '^CONFIG_PVH=y' "$kdir.new/config" 2>/dev/null &&
     extract_vmlinux "$kdir.new/vmlinuz" "$kdir.new/vmlinux"; then
    msg "extracted vmlinux (PVH boot)"
  else
    msg "no PVH vmlinux: the guest boots the bzImage (slower under TCG)"
  fi

  # Module index: normalised name (dashes -> underscores) -> file.
  declare -A index=()
  local f n
  while IFS= read -r f; do
    n=$(basename "$f"); n=${n%%.ko*}; n=${n//-/_}
    index[$n]=$f
  done < <(find "$src/kernel" -name '*.ko' -o -name '*.ko.xz' -o -name '*.ko.zst' -o -name '*.ko.gz')

  declare -A done_=()
  local order=()
  # add_module NAME: its dependencies first, then itself.
  add_module () {
    local name=${1//-/_} file plain deps d
    [ -z "${done_[$name]:-}" ] || return 0
    done_[$name]=1
    file=${index[$name]:-}
    if [ -z "$file" ]; then
      if grep -qE "(^|/)${name//_/[-_]}\.ko$" "$src/modules.builtin" 2>/dev/null; then
        return 0                # built into the kernel
      fi
      die "module $name not found in $deb"
    fi
    plain=$kdir.new/modules/$name.ko
    case $file in
      *.ko)     cp "$file" "$plain" ;;
      *.ko.xz)  xz -dc "$file" > "$plain" ;;
      *.ko.zst) zstd -dcq "$file" > "$plain" ;;
      *.ko.gz)  gzip -dc "$file" > "$plain" ;;
    esac
    deps=$(modinfo -F depends "$plain") || die "modinfo $plain failed"
    for d in ${deps//,/ }; do add_module "$d"; done
    order+=("$name")
  }
  for m in $modules_wanted; do add_module "$m"; done
  printf '%s\n' "${order[@]}" > "$kdir.new/modules/order"
  echo "$kver" > "$kdir.new/version"
  msg "kernel $kver, modules: ${order[*]}"

  rm -rf "$kdir"
  mv "$kdir.new" "$kdir"
  ln -sfn "kernel-$kver" "$cache/kernel.new"
  mv -T "$cache/kernel.new" "$cache/kernel"
  rm -rf "$work"
  trap - EXIT
}

if [ ! -f "$cache/kernel/version" ] || [ "${KVM_E2E_REFRESH:-0}" = 1 ]; then
  if [ -n "${KVM_E2E_KERNEL_DEB:-}" ]; then
    install_kernel "$KVM_E2E_KERNEL_DEB"
  else
    command -v apt-get >/dev/null 2>&1 || unavailable "apt-get not installed"
    pkg=$(apt-cache depends linux-image-amd64 2>/dev/null |
          sed -n 's/^ *Depends: *\(linux-image-[^ <>]*\).*/\1/p' | head -n1)
    [ -n "$pkg" ] || unavailable "apt-cache does not know linux-image-amd64 (run apt-get update?)"
    dl=$(mktemp -d "$cache/download.XXXXXX")
    msg "downloading $pkg"
    aptopts=(-q=2)
    # As root, apt would drop to user _apt, who cannot write here.
    [ "$(id -u)" != 0 ] || aptopts+=(-o APT::Sandbox::User=root)
    if ! (cd "$dl" && apt-get download "${aptopts[@]}" "$pkg") >&2; then
      rm -rf "$dl"
      unavailable "apt-get download $pkg failed"
    fi
    install_kernel "$(ls "$dl"/*.deb | head -n1)"
    rm -rf "$dl"
  fi
fi
kdir=$(cd "$cache/kernel" && pwd -P)
if [ -f "$kdir/vmlinux" ]; then kernel=$kdir/vmlinux; else kernel=$kdir/vmlinuz; fi

# --- initramfs ---------------------------------------------------------------
# shellcheck source=pattern.sh
source "$here/pattern.sh"
hash=$( {
  cat "$kdir/version" "$kdir/modules/order" "$here/init.sh" "$here/prepare.sh" "$busybox_bin"
  e2e_pattern
} | sha256sum | cut -c1-16)
initrd=$cache/initrd-$hash.img
if [ ! -f "$initrd" ]; then
  msg "building $initrd"
  stage=$(mktemp -d "$cache/initrd.XXXXXX")
  mkdir -p "$stage/bin" "$stage/modules" "$stage/proc" "$stage/sys" "$stage/dev" "$stage/tmp"
  cp "$busybox_bin" "$stage/bin/busybox"
  cp "$here/init.sh" "$stage/init"
  chmod 0755 "$stage/init" "$stage/bin/busybox"
  cp "$kdir/modules/"*.ko "$kdir/modules/order" "$stage/modules/" 2>/dev/null ||
    cp "$kdir/modules/order" "$stage/modules/"
  e2e_pattern > "$stage/pattern"
  (cd "$stage" && find . -mindepth 1 | LC_ALL=C sort |
     busybox cpio -o -H newc -R 0:0 > "$initrd.tmp" 2>/dev/null) ||
    die "cpio failed"
  mv "$initrd.tmp" "$initrd"
  rm -rf "$stage"
  # Drop images built from other inputs that nobody used for a week.
  find "$cache" -maxdepth 1 -name 'initrd-*.img' ! -name "${initrd##*/}" \
       -atime +7 -delete 2>/dev/null || :
fi
chmod 0644 "$initrd" "$kernel"

echo "KERNEL=$kernel"
echo "INITRD=$initrd"
