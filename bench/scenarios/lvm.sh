# SPDX-License-Identifier: BSD-3-Clause
# Scenario "lvm": one LV served by the lvm plugin vs nbdkit's file plugin
# with the offset filter over exactly the same bytes of the PV file.  The
# PV (a file on tmpfs) and the LV are made by the real lvm2 tools through
# a loop device that is detached again before any server runs; the LV is
# linear (one segment), so "offset=pe_start range=size" is the same range.

DESCRIPTION="LVM2 linear LV: lvm plugin vs nbdkit file plugin + offset filter on the same PV range"
PEER=file+offset

scenario_requires () {
  bench_requires nbdkit losetup pvcreate vgcreate lvcreate lvs pvs python3
  bench_requires_plugin lvm
  [ "$(id -u)" = 0 ] || bench_skip "needs root (loop devices for pvcreate)"
}

LVM_LOOP=""
prepare () {
  local pv=$WORKDIR/pv.img conf=$WORKDIR/lvmetc json
  PV=$pv
  # LV size: SIZE rounded down to 4 MiB extents, plus room for metadata.
  LV_SIZE=$(( SIZE / 4194304 * 4194304 ))
  truncate -s $(( LV_SIZE + 8 * 1048576 )) "$pv"
  LVM_LOOP=$(losetup -f --show "$pv") || bench_skip "no loop device"
  mkdir -p "$conf" "$WORKDIR/lvmlock"
  cat > "$conf/lvm.conf" <<EOC
devices { filter = [ "a|^$LVM_LOOP\$|", "r|.*|" ] global_filter = [ "a|^$LVM_LOOP\$|", "r|.*|" ]
          obtain_device_list_from_udev = 0 use_devicesfile = 0 hints = "none" }
global { activation = 0 locking_dir = "$WORKDIR/lvmlock" use_lvmlockd = 0 }
backup { backup = 0 archive = 0 }
EOC
  export LVM_SYSTEM_DIR=$conf LVM_SUPPRESS_FD_WARNINGS=1
  { pvcreate -q "$LVM_LOOP" && vgcreate -q -s 4m benchvg "$LVM_LOOP" &&
    lvcreate -q -an -Zn -L "${LV_SIZE}b" -n bench benchvg; } >/dev/null 2>&1 ||
    bench_die "lvm2 tools failed to create the VG"
  json=$(lvs --reportformat json --segments --units b --nosuffix \
           -o lv_name,seg_start_pe,seg_pe_ranges benchvg/bench 2>/dev/null)
  PE_START=$(pvs --noheadings --units b --nosuffix -o pe_start "$LVM_LOOP" 2>/dev/null | tr -d ' ')
  # The LV's byte offset in the PV: pe_start + first extent * 4 MiB.
  LV_OFFSET=$(python3 -c '
import json, sys
segs = json.loads(sys.argv[1])["report"][0]["seg"]
assert len(segs) == 1, segs
first = int(segs[0]["seg_pe_ranges"].split(":")[1].split("-")[0])
print(int(sys.argv[2]) + first * 4194304)' "$json" "$PE_START")
  losetup -d "$LVM_LOOP"; LVM_LOOP=""
  # Random data over the whole LV range (servers read real bytes).
  dd if=/dev/urandom of="$pv" bs=1M seek=$(( LV_OFFSET / 1048576 )) \
     count=$(( LV_SIZE / 1048576 )) conv=notrunc status=none
  bench_log "lvm: LV of $LV_SIZE bytes at offset $LV_OFFSET of $pv"
}

cleanup () { [ -z "$LVM_LOOP" ] || losetup -d "$LVM_LOOP" || :; }

bench_server lvm-plugin 'serve_nbdkit "$(plugin_so lvm)" pv="$PV" lv=bench'
bench_server file+offset 'serve_nbdkit --filter=offset file "$PV" offset="$LV_OFFSET" range="$LV_SIZE"'
