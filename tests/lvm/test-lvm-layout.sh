#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# The lvm plugin against VGs made by the real lvm2 tools: linear, several
# segments over several PVs, striped over 2 and 3 PVs with non-default
# stripe sizes, PVs with different metadata area sizes, two VGs, missing
# PVs.  The oracle for where every LV byte lives is lvs/pvs' JSON report.
source "${TOP_SRCDIR:-$(dirname "$0")/../..}/tests/functions.sh"
source "$TOP_SRCDIR/tests/lvm/lvm-lib.sh"

cd "$tmpdir"
for i in 1 2 3 4 5; do truncate -s 64M p$i.img; done
lvm_attach p1.img L1; lvm_attach p2.img L2
lvm_attach p3.img L3; lvm_attach p4.img L4; lvm_attach p5.img L5
maps="$L1=p1.img $L2=p2.img $L3=p3.img $L4=p4.img $L5=p5.img"

# Metadata areas of different sizes.
lvm_q pvcreate -q "$L1"
lvm_q pvcreate -q --metadatasize 2m "$L2"
lvm_q pvcreate -q --metadatasize 3m --dataalignment 512k "$L3"
lvm_q pvcreate -q --metadatacopies 2 "$L4"     # mdas at both ends
lvm_q pvcreate -q --metadatacopies 0 "$L5"     # no metadata area at all
lvm_q vgcreate -q -s 4m vg1 "$L1" "$L2" "$L3" "$L5"
lvm_q vgcreate -q -s 1m vg2 "$L4"

lvm_q lvcreate -q -an -Zn -L 20M -n lin vg1 "$L1"
lvm_q lvcreate -q -an -Zn -L 8M -n multi vg1 "$L2"
lvm_q lvcreate -q -an -Zn -L 4M -n gap vg1 "$L2"
lvm_q lvextend -q -L +8M vg1/multi "$L3"      # second segment, other PV
lvm_q lvextend -q -L +12M vg1/multi "$L1"     # third segment
lvm_q lvcreate -q -an -Zn -i2 -I 32k -L 16M -n st2 vg1 "$L2" "$L3"
lvm_q lvcreate -q -an -Zn -i3 -I 128k -L 24M -n st3 vg1 "$L1" "$L2" "$L3"
lvm_q lvcreate -q -an -Zn -L 8M -n nomda vg1 "$L5"
lvm_q lvextend -q -L +4M vg1/nomda "$L1"
lvm_q lvcreate -q -an -Zn -L 10M -n lv2 vg2

lvm_layout collect layout.json
nseg=$(python3 -c 'import json,sys; print(sum(1 for s in json.load(open(sys.argv[1]))["segs"] if s["lv_name"]=="multi"))' layout.json)
[ "$nseg" -ge 3 ] || fail "multi should have >= 3 segments, has $nseg"

vg1_lvs="lin multi gap st2 st3 nomda"

# Random data written straight into the PV files where lvs says each LV
# extent lives.
for lv in $vg1_lvs; do
  size=$(lvm_layout size layout.json vg1 $lv)
  random_file $lv.data "$size"
  lvm_layout scatter layout.json vg1 $lv $lv.data $maps
done
random_file lv2.data $(lvm_layout size layout.json vg2 lv2)
lvm_layout scatter layout.json vg2 lv2 lv2.data $maps

# check_reads SOCKET VG LVS...: every LV read through the plugin equals the
# data placed in the PVs.
check_reads () {
  local sock=$1 vg=$2 lv; shift 2
  for lv in "$@"; do
    rm -f out.raw
    nbdcopy "$(uri_of "$sock" "$lv")" out.raw
    assert_same out.raw $lv.data "LV $vg/$lv read through the plugin"
  done
}

# 1. Plain image files holding the PVs (the loop devices stay attached,
# unused by the plugin).
start_nbdkit "$tmpdir/s1" "$(plugin_so lvm)" pv=p1.img pv=p2.img pv=p3.img \
  pv=p5.img vg=vg1 lv=lin
nbdinfo --list "$(uri_of "$tmpdir/s1")" > list.txt
for lv in $vg1_lvs; do
  size=$(lvm_layout size layout.json vg1 $lv)
  grep -q "^export=\"$lv\":" list.txt || fail "nbdinfo --list lacks $lv"
  grep -A1 "^export=\"$lv\":" list.txt | grep "$size bytes" >/dev/null ||
    fail "description of $lv lacks its size $size"
done
# default export is lv=
[ "$(nbdinfo --size "$(uri_of "$tmpdir/s1")")" = "$(stat -c %s lin.data)" ] ||
  fail "default export is not lv=lin"
check_reads "$tmpdir/s1" vg1 $vg1_lvs

# Writes through the plugin land where lvs says.
for lv in $vg1_lvs; do
  random_file $lv.data "$(stat -c %s $lv.data)"
  nbdcopy $lv.data "$(uri_of "$tmpdir/s1" "$lv")"
done
stop_nbdkit
for lv in $vg1_lvs; do
  lvm_layout gather layout.json vg1 $lv back.raw $maps
  assert_same back.raw $lv.data "LV vg1/$lv in the PV files after writing"
done

# Trim and zero reach the PV: zeroes read back from the PV file.
start_nbdkit "$tmpdir/s2" "$(plugin_so lvm)" pv=p1.img pv=p2.img pv=p3.img vg=vg1
nbdsh -u "$(uri_of "$tmpdir/s2" st3)" -c '
h.zero(3 * 1024 * 1024, 1024 * 1024 - 4096)
h.zero(300000, 8 * 1024 * 1024 + 512, nbd.CMD_FLAG_NO_HOLE)
h.flush()
'
# Trim reaches the PV file: the range becomes a hole there.
read -r tdev toff < <(lvm_layout locate layout.json vg1 lin $((8 << 20)))
[ "$tdev" = "$L1" ] || fail "lin not on $L1"
nbdsh -u "$(uri_of "$tmpdir/s2" lin)" -c 'h.trim(1 << 20, 8 << 20); h.flush()'
python3 - p1.img "$toff" <<'EOF'
import os, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
off = int(sys.argv[2])
hole = os.lseek(fd, off, os.SEEK_HOLE)
data = os.lseek(fd, off, os.SEEK_DATA)
if not (hole == off and data >= off + (1 << 20)):
    sys.exit("FAIL: trim did not punch a hole at %d (hole %d data %d)" % (off, hole, data))
EOF
stop_nbdkit
python3 - lin.data <<'EOF'
import sys
d = bytearray(open(sys.argv[1], "rb").read())
d[8 << 20:9 << 20] = bytes(1 << 20)     # a file PV reads zeroes after trim
open(sys.argv[1], "wb").write(d)
EOF
python3 - st3.data <<'EOF'
import sys
d = bytearray(open(sys.argv[1], "rb").read())
d[1024*1024-4096:1024*1024-4096+3*1024*1024] = bytes(3*1024*1024)
d[8*1024*1024+512:8*1024*1024+512+300000] = bytes(300000)
open(sys.argv[1], "wb").write(d)
EOF
lvm_layout gather layout.json vg1 st3 back.raw $maps
assert_same back.raw st3.data "st3 after write-zeroes"

# 2. The same VG through the loop devices (block devices: BLKZEROOUT,
# BLKDISCARD paths), read and write.
start_nbdkit "$tmpdir/s3" "$(plugin_so lvm)" pv="$L1" pv="$L2" pv="$L3" pv="$L5"
check_reads "$tmpdir/s3" vg1 $vg1_lvs
random_file st2.data "$(stat -c %s st2.data)"
nbdcopy st2.data "$(uri_of "$tmpdir/s3" st2)"
nbdsh -u "$(uri_of "$tmpdir/s3" lin)" -c '
h.zero(65536, 1 << 20)
h.flush()
'
stop_nbdkit
python3 - lin.data <<'EOF'
import sys
d = bytearray(open(sys.argv[1], "rb").read())
d[1 << 20:(1 << 20) + 65536] = bytes(65536)
open(sys.argv[1], "wb").write(d)
EOF
for lv in st2 lin; do
  lvm_layout gather layout.json vg1 $lv back.raw $maps
  assert_same back.raw $lv.data "LV vg1/$lv via loop devices"
done

# 3. Two VGs: without vg= the plugin refuses and names them; glob pv=.
if nbdkit -U "$tmpdir/s4a" "$(plugin_so lvm)" pv='p*.img' --run true 2> err.txt; then
  fail "several VGs accepted without vg="
fi
grep -q "several volume groups" err.txt || { cat err.txt; fail "no clear message for several VGs"; }
grep -q vg1 err.txt && grep -q vg2 err.txt || fail "message does not name both VGs"
start_nbdkit "$tmpdir/s4" "$(plugin_so lvm)" pv='p*.img' vg=vg2
check_reads "$tmpdir/s4" vg2 lv2
nbdinfo --list "$(uri_of "$tmpdir/s4")" > list2.txt
grep -q '^export="lv2":' list2.txt || fail "vg2 listing"
! grep -q '^export="lin":' list2.txt || fail "vg1 LV listed for vg=vg2"
stop_nbdkit
# vg2's PV has two metadata areas: with the first one damaged, the copy at
# the end of the device is used.
[ "$(lvm_mda info p4.img | wc -l)" = 2 ] || fail "p4 should have 2 mdas"
lvm_mda break-header p4.img
start_nbdkit "$tmpdir/s4b" "$(plugin_so lvm)" pv=p4.img
check_reads "$tmpdir/s4b" vg2 lv2
stop_nbdkit

# 4. A missing PV: LVs wholly on present PVs are served, the others are
# refused with the missing PV's UUID.
uuid3=$(lvm_mda uuid p3.img)
uuid3_fmt=$(pvs --noheadings -o pv_uuid "$L3" | tr -d ' ')
start_nbdkit "$tmpdir/s5" "$(plugin_so lvm)" pv=p1.img pv=p2.img vg=vg1 \
  2> nbdkit5.log
check_reads "$tmpdir/s5" vg1 lin gap
# Only the LVs that can be served are listed (nbdinfo --list must work).
nbdinfo --list "$(uri_of "$tmpdir/s5")" > list5.txt
grep -q '^export="lin":' list5.txt && grep -q '^export="gap":' list5.txt ||
  fail "LVs on present PVs not listed"
! grep -q '^export="multi":' list5.txt || fail "LV on a missing PV listed"
for lv in multi st2 st3; do
  if nbdinfo "$(uri_of "$tmpdir/s5" $lv)" >/dev/null 2>&1; then
    fail "LV $lv on a missing PV was served"
  fi
done
stop_nbdkit
grep -q "missing PV $uuid3_fmt" nbdkit5.log ||
  { cat nbdkit5.log; fail "refusal does not name the missing PV $uuid3_fmt ($uuid3)"; }

# A fast zero on a linear LV (punched in the PV files): advertised,
# answered, the server lives.
start_nbdkit "$tmpdir/s6" "$(plugin_so lvm)" pv=p1.img pv=p2.img pv=p3.img vg=vg1
check_fast_zero "lvm plugin" "$(uri_of "$tmpdir/s6" lin)"
stop_nbdkit

echo "PASS"
