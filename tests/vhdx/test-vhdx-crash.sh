#!/bin/bash
# SPDX-License-Identifier: BSD-3-Clause
# Crash test: a client writes distinct regions through the plugin with a
# flush after every round (vhdx-crashwriter.py, journalling each flushed
# round), and the server is killed with SIGKILL in the middle.  The file
# must then be accepted by qemu-img check, open in the plugin and in QEMU,
# and every region of every flushed round must read back (through the
# plugin and through qemu-img) with its pattern.  Two runs: a dynamic
# image made by qemu-img (1 MiB blocks) and one the plugin creates.
source "${TOP_SRCDIR:?run the tests through ctest, which sets TOP_SRCDIR}/tests/functions.sh"
source "$TOP_SRCDIR/tests/vhdx/vhdx-functions.sh"
/usr/bin/python3 -c "import nbd" 2>/dev/null || skip "python3-libnbd not installed"
cd "$tmpdir"
M=$((1024*1024))

check_journal () {   # check_journal RAW JOURNAL
  python3 - "$1" "$2" <<'PY'
import sys
raw = open(sys.argv[1], "rb")
n = 0
for line in open(sys.argv[2]):
    r, o, ln, b = (int(x) for x in line.split())
    raw.seek(o)
    if raw.read(ln) != bytes([b]) * ln:
        sys.exit("flushed region %d+%d of round %d lost" % (o, ln, r))
    n += 1
if n == 0:
    sys.exit("no round was flushed before the kill")
print("%d flushed regions intact" % n)
PY
}

for kind in qemu plugin; do
  img=$kind.vhdx
  if [ $kind = qemu ]; then
    qemu-img create -q -f vhdx -o block_size=1M $img $((48*M))
    create=()
  else
    create=(create=$((48*M)) block-size=2M)
  fi
  : > $kind.journal
  new_sock
  serve "$sock" $img "${create[@]}"
  pid=$nbdkit_pid
  /usr/bin/python3 "$vdir/vhdx-crashwriter.py" \
    "$sock" $kind.journal 17 > /dev/null 2>&1 &
  wpid=$!
  cleanup_add "kill -9 $wpid"
  # Kill once a few rounds are flushed.
  for (( i=0; i<400; i++ )); do
    [ "$(wc -l < $kind.journal)" -ge 40 ] && break
    sleep 0.05
  done
  kill -9 $pid
  wait $wpid 2>/dev/null || :
  rm -f "$sock"
  qemu_img_check -f vhdx $img
  qemu-img convert -f vhdx -O raw $img $kind.qemu.raw
  check_journal $kind.qemu.raw $kind.journal || fail "$kind: QEMU after the crash"
  new_sock
  serve "$sock" $img -r
  nbdcopy "$(uri_of "$sock")" $kind.got.raw
  stop_nbdkit
  check_journal $kind.got.raw $kind.journal || fail "$kind: plugin after the crash"
  assert_same $kind.qemu.raw $kind.got.raw "$kind: plugin vs QEMU after the crash"
  echo "ok $kind"
done
