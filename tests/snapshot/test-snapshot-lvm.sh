#!/bin/bash
# SPDX-License-Identifier: BSD-3-Clause
# The snapshot filter over this project's lvm plugin (an LV made by the
# real lvm2 tools on a loop-attached PV file, without device-mapper; see
# tests/lvm/lvm-lib.sh): operations and commit against the model, the
# LV's bytes in the PV file untouched until commit and equal to the model
# after it; then kill -9 during writes and at the commit's crash points.
source "${TOP_SRCDIR:?run the tests through ctest, which sets TOP_SRCDIR}/tests/functions.sh"
source "$TOP_SRCDIR/tests/snapshot/snapshot-lib.sh"
source "$TOP_SRCDIR/tests/lvm/lvm-lib.sh"

size=$((16 * 1024 * 1024))
truncate -s $((size + 8 * 1024 * 1024)) "$tmpdir/pv.img"
lvm_attach "$tmpdir/pv.img" pv_loop
lvm_q pvcreate -q "$pv_loop"
lvm_q vgcreate -q -s 4m svg "$pv_loop"
lvm_q lvcreate -q -an -Zn -L $((size / 1024 / 1024))M -n slv svg
# The LV is linear at PE 0: its bytes start at the PV's pe_start.
off=$(pvs --noheadings --units b --nosuffix -o pe_start "$pv_loop" | tr -d ' ')
[ -n "$off" ] || fail "cannot read pe_start of $pv_loop"
random_file "$tmpdir/lv.orig" $size
dd if="$tmpdir/lv.orig" of="$tmpdir/pv.img" bs=1M oflag=seek_bytes \
   seek="$off" conv=notrunc status=none
# lvdump.sh OUT: the LV's bytes, read from the PV file.
cat > "$tmpdir/lvdump.sh" <<EOS
dd if='$tmpdir/pv.img' bs=1M iflag=skip_bytes,count_bytes skip=$off \\
   count=$size status=none of="\$1"
EOS
cat > "$tmpdir/lvcheck.sh" <<EOS
bash '$tmpdir/lvdump.sh' '$tmpdir/lv.now' && cmp -s '$tmpdir/lv.now' '$tmpdir/lv.orig'
EOS
dump="bash $tmpdir/lvdump.sh"

snapshot_model --size $size --seed 15 --rounds "${SNAPSHOT_TEST_ROUNDS:-12}" \
  --commit --initial "$tmpdir/lv.orig" \
  --below-check "bash '$tmpdir/lvcheck.sh'" --below-dump "$dump" \
  -- "$(plugin_so lvm)" "pv=$tmpdir/pv.img" vg=svg lv=slv

# Crash tests over the LV (from the data committed above).
bash "$tmpdir/lvdump.sh" "$tmpdir/lv.now"
snapshot_model --size $size --seed 16 --initial "$tmpdir/lv.now" \
  --crash-writes 2 --crash-ops --crash-random 2 \
  -- "$(plugin_so lvm)" "pv=$tmpdir/pv.img" vg=svg lv=slv
