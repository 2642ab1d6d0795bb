#!/bin/bash
# SPDX-License-Identifier: BSD-3-Clause
# Log replay.  vhdx-tool.py's generator (written from [MS-VHDX] 2.3) makes
# dirty images from a qemu-io-filled one, and the file as it must be after
# replay: one entry, several entries, a log that wraps (an entry running
# over the end of the circular log), a BAT update allocating a block past
# the end of the file, a metadata update (virtual disk size), zero
# descriptors, a stale valid entry of an older sequence, and a bad
# checksum on the last entry (replay stops at the last good sequence
# number).  For each one:
#  - read-only: the plugin serves the expected content (qemu-img convert of
#    the expected file) and the file stays byte-identical;
#  - read-write: opening replays to disk, the log GUID becomes zero,
#    qemu-img check accepts the file and QEMU reads the expected content;
#  - QEMU 7.2 (which replays on a read-write open) reaches the same file.
#    Where QEMU departs from the specification the test says so and does
#    not compare:
#      bat:  QEMU does not grow the file to the head entry's
#            LastFileOffset after replay, then refuses the image (a BAT
#            entry past the end of the file).
#      wrap: QEMU stops at an entry that runs over the end of the log and
#            applies only the entries before it.
source "${TOP_SRCDIR:?run the tests through ctest, which sets TOP_SRCDIR}/tests/functions.sh"
source "$TOP_SRCDIR/tests/vhdx/vhdx-functions.sh"
cd "$tmpdir"
M=$((1024*1024))

qemu-img create -q -f vhdx -o block_size=1M base.vhdx 24M
cat > base.ops <<'OPS'
write -q -P 0xab 0 3M
write -q -P 0x11 5M 512
write -q -P 0x22 6M 1M
write -q -P 0x33 9M 100k
write -q -P 0x44 23M 1M
OPS
qemu_io_cmds -f vhdx base.vhdx < base.ops
qemu-img convert -f vhdx -O raw base.vhdx base.raw

n=0
for sc in one several wrap bat meta zero stale badcrc; do
  n=$((n+1))
  cp base.vhdx $sc.vhdx
  vtool dirty $sc.vhdx $sc.expect.vhdx $sc $n
  [ "$(vtool info $sc.vhdx | python3 -c 'import json,sys; print(json.load(sys.stdin)["log_guid"])')" != 00000000-0000-0000-0000-000000000000 ] ||
    fail "$sc: generator left no log GUID"
  qemu-img convert -f vhdx -O raw $sc.expect.vhdx $sc.want
  cmp -s $sc.want base.raw && fail "$sc: the scenario changes nothing"

  # Read-only: replay into memory.
  cp $sc.vhdx $sc.ro.vhdx
  sum=$(md5 $sc.ro.vhdx)
  read_via $sc.ro.vhdx $sc.ro.got -r
  assert_same $sc.want $sc.ro.got "$sc: read-only replay"
  [ "$(md5 $sc.ro.vhdx)" = "$sum" ] || fail "$sc: read-only open changed the file"

  # Read-write: replay to disk.
  cp $sc.vhdx $sc.rw.vhdx
  read_via $sc.rw.vhdx $sc.rw.got
  assert_same $sc.want $sc.rw.got "$sc: read-write replay"
  vtool info $sc.rw.vhdx | python3 -c 'import json,sys; sys.exit(json.load(sys.stdin)["log_guid"] != "00000000-0000-0000-0000-000000000000")' ||
    fail "$sc: the log GUID was not cleared"
  qemu_img_check -f vhdx $sc.rw.vhdx
  qemu-img convert -f vhdx -O raw $sc.rw.vhdx $sc.rw.qemu
  assert_same $sc.want $sc.rw.qemu "$sc: QEMU reading our replayed file"

  # Cross-check the generator with QEMU's own replay.
  cp $sc.vhdx $sc.q.vhdx
  case $sc in
    bat|wrap)
      if qemu-io -f vhdx -c 'read 0 512' $sc.q.vhdx >/dev/null 2>&1 &&
         qemu-img convert -f vhdx -O raw $sc.q.vhdx $sc.q.raw 2>/dev/null &&
         cmp -s $sc.want $sc.q.raw; then
        echo "note $sc: QEMU now agrees with the specification"
      else
        echo "note $sc: QEMU 7.2 departs from the specification here (see top)"
      fi ;;
    *)
      qemu_io_cmds -f vhdx -c 'read 0 512' $sc.q.vhdx
      qemu-img convert -f vhdx -O raw $sc.q.vhdx $sc.q.raw
      assert_same $sc.want $sc.q.raw "$sc: QEMU's replay" ;;
  esac
  echo "ok $sc"
  rm -f $sc.*.got $sc.want $sc.q.raw $sc.rw.qemu
done
