#!/bin/busybox sh
# SPDX-License-Identifier: BSD-3-Clause
# /init of the e2e initramfs (built by prepare.sh).  Runs inside the guest:
# checksums /dev/vda, writes the pattern (/pattern, E2E_PATTERN_* in
# pattern.sh) with fsync, drops the page cache, reads it back and prints
# every result on the console as lines starting with "E2E ".  Always ends
# with "poweroff -f" so that the host never waits for a timeout.

/bin/busybox mkdir -p /proc /sys /dev /tmp
/bin/busybox mount -t devtmpfs devtmpfs /dev
exec </dev/console >/dev/console 2>&1
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys

say () { echo "E2E $*"; }
die () {
  say "FAIL $*"
  dmesg | tail -n 20
  sync
  poweroff -f
  sleep 10
}

# Parameters from the kernel command line: e2e.offset=, e2e.length=
# (bytes, multiples of 65536), e2e.wait= (seconds to wait for /dev/vda).
offset=1048576 length=1048576 wait=30
for arg in $(cat /proc/cmdline); do
  case $arg in
    e2e.offset=*) offset=${arg#e2e.offset=} ;;
    e2e.length=*) length=${arg#e2e.length=} ;;
    e2e.wait=*)   wait=${arg#e2e.wait=} ;;
  esac
done
say START "$(cut -d" " -f1 /proc/uptime)"

while read -r mod; do
  insmod "/modules/$mod.ko" || die "insmod $mod"
done < /modules/order

i=0
while [ ! -b /dev/vda ]; do
  i=$((i + 1))
  [ $i -le $((wait * 10)) ] || die "no /dev/vda after ${wait}s"
  sleep 0.1
done

sectors=$(cat /sys/block/vda/size)
say SIZE $((sectors * 512))
[ "$(cat /sys/block/vda/ro)" = 0 ] || die "/dev/vda is read-only"

sum=$(sha256sum /dev/vda) || die "reading /dev/vda"
say SUM-BEFORE "${sum%% *}"

bs=65536
dd if=/pattern of=/dev/vda bs=$bs seek=$((offset / bs)) count=$((length / bs)) \
   conv=notrunc,fsync 2>/tmp/dd.err || { cat /tmp/dd.err; die "writing the pattern"; }
sync
echo 3 > /proc/sys/vm/drop_caches
say WROTE "$offset" "$length"

# Read back once with O_DIRECT (no page cache at all) and once through
# the (dropped) page cache as part of the whole-disk checksum.
sum=$(dd if=/dev/vda bs=$bs skip=$((offset / bs)) count=$((length / bs)) \
      iflag=direct 2>/tmp/dd.err | sha256sum) || { cat /tmp/dd.err; die "reading back"; }
say READBACK "${sum%% *}"

sum=$(sha256sum /dev/vda) || die "reading /dev/vda after the write"
say SUM-AFTER "${sum%% *}"

say DONE "$(cut -d" " -f1 /proc/uptime)"
sync
poweroff -f
sleep 10
