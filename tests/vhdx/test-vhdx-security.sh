#!/bin/bash
# SPDX-License-Identifier: BSD-3-Clause
# Hostile images: each damage (vhdx-tool.py corrupt) must give a clear
# error naming the problem, never a crash; a damaged copy of a redundant
# structure (one header, one region table) must not matter.  Also a log
# whose only entry has a bad checksum (nothing valid to replay) and a
# parent locator pointing outside the child's directory, and metadata
# placed in the last payload block's space past the disk's end.
source "${TOP_SRCDIR:?run the tests through ctest, which sets TOP_SRCDIR}/tests/functions.sh"
source "$TOP_SRCDIR/tests/vhdx/vhdx-functions.sh"
cd "$tmpdir"
M=$((1024*1024))

qemu-img create -q -f vhdx -o block_size=1M good.vhdx 8M
qemu_io_cmds -f vhdx -c 'write -P 0x61 0 1M' -c 'write -P 0x62 5M 4k' good.vhdx
qemu-img convert -f vhdx -O raw good.vhdx good.raw

# opens IMG: the plugin serves it and it reads as good.raw.
opens () {
  new_sock
  nbdkit -U "$sock" "$VHDX_PLUGIN" file="$1" -r --run 'nbdcopy "$uri" '"$1.got" ||
    fail "$1 did not open"
  assert_same good.raw "$1.got" "$1"
}
# refused IMG REGEX: nbdkit stops at start-up, where the plugin opens the
# image to check it (no signal), with a message matching.
refused () {
  new_sock
  nbdkit_stops 20 -U "$sock" "$VHDX_PLUGIN" file="$1" -r --run true > "$1.out"
  grep -qiE "$2" "$1.out" || fail "$1: no clear message (want /$2/): $(cat "$1.out")"
  echo "ok refused $1: $(grep -iE "$2" "$1.out" | head -1 | sed 's/.*vhdx: //' | cut -c1-110)"
}

for d in hdr-current region1; do
  cp good.vhdx $d.vhdx; vtool corrupt $d.vhdx $d; opens $d.vhdx; echo "ok $d"
done
cp good.vhdx hdr-both.vhdx;   vtool corrupt hdr-both.vhdx hdr-both;   refused hdr-both.vhdx 'neither VHDX header'
cp good.vhdx region-both.vhdx; vtool corrupt region-both.vhdx region-both; refused region-both.vhdx 'no valid region table'
cp good.vhdx overlap.vhdx;    vtool corrupt overlap.vhdx region-overlap; refused overlap.vhdx 'overlap'
cp good.vhdx bateof.vhdx;     vtool corrupt bateof.vhdx bat-eof;       refused bateof.vhdx 'past the end of the file'
cp good.vhdx batstate.vhdx;   vtool corrupt batstate.vhdx bat-state;   refused batstate.vhdx 'unknown state'
cp good.vhdx lss.vhdx;        vtool corrupt lss.vhdx lss;              refused lss.vhdx 'logical sector size'
cp good.vhdx bs.vhdx;         vtool corrupt bs.vhdx block-size;        refused bs.vhdx 'block size'
cp good.vhdx huge.vhdx;       vtool corrupt huge.vhdx size-huge;       refused huge.vhdx 'virtual disk size'
cp good.vhdx metaoob.vhdx;    vtool corrupt metaoob.vhdx meta-oob;     refused metaoob.vhdx 'outside the metadata region'
printf 'not a vhdx file' > junk.vhdx; truncate -s 1M junk.vhdx; refused junk.vhdx "not a VHDX file"

# The metadata region placed in the space of the last payload block past
# the disk's end: refused (as QEMU does), so that no write to that block
# can reach the metadata.
qemu-img create -q -f vhdx -o block_size=2M tail.vhdx 3M
qemu_io_cmds -f vhdx -c 'write -P 0x63 0 3M' tail.vhdx
vtool corrupt tail.vhdx meta-in-tail
refused tail.vhdx 'overlaps the log, the BAT or the metadata'

# A log with nothing valid in it: the header names a log, its only entry
# has a bad checksum.  Refused read-only and read-write, file untouched.
cp good.vhdx nolog.vhdx
vtool dirty nolog.vhdx nolog.expect badcrc 1
python3 - nolog.vhdx <<'PY'
import struct, sys
f = open(sys.argv[1], "r+b")
f.seek(1 << 20)          # the log (qemu-img puts it at 1 MiB)
log = bytearray(f.read(1 << 20))
i = 0
while i < len(log):      # damage every entry
    if log[i:i + 4] == b"loge":
        log[i + 100] ^= 0xFF
    i += 4096
f.seek(1 << 20)
f.write(log)
PY
sum=$(md5 nolog.vhdx)
refused nolog.vhdx 'no valid sequence'
[ "$(md5 nolog.vhdx)" = "$sum" ] || fail "a refused log changed the file"
