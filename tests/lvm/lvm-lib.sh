# SPDX-License-Identifier: BSD-3-Clause
# Helpers for the lvm plugin tests: private LVM2 configuration, loop
# devices, layout oracle.  Source after tests/functions.sh.

requires_plugin lvm
requires python3 nbdcopy nbdinfo losetup pvcreate vgcreate lvcreate lvextend \
         lvs pvs vgs
requires_root

lvm_srcdir="$TOP_SRCDIR/tests/lvm"
export LVM_SUPPRESS_FD_WARNINGS=1
export LVM_SYSTEM_DIR="$tmpdir/lvmetc"
mkdir -p "$LVM_SYSTEM_DIR" "$tmpdir/lvmlock" "$tmpdir/lvmrun"
lvm_loops=()

# lvm_write_conf: an lvm.conf that sees only our loop devices, never
# touches device-mapper, udev, the host's lock, backup or hints files.
lvm_write_conf () {
  local filter="" d
  for d in "${lvm_loops[@]}"; do filter="$filter\"a|^$d\$|\", "; done
  cat > "$LVM_SYSTEM_DIR/lvm.conf" <<EOF
devices {
  filter = [ $filter"r|.*|" ]
  global_filter = [ $filter"r|.*|" ]
  obtain_device_list_from_udev = 0
  external_device_info_source = "none"
  use_devicesfile = 0
  hints = "none"
}
global {
  activation = 0
  locking_dir = "$tmpdir/lvmlock"
  use_lvmlockd = 0
}
activation { udev_sync = 0 udev_rules = 0 monitoring = 0 }
backup { backup = 0 archive = 0 }
EOF
}
lvm_write_conf

# lvm_attach FILE VAR: attach FILE to a free loop device, store its name
# in VAR, detach at exit.
lvm_attach () {
  local dev
  dev=$(losetup -f --show "$1" 2>/dev/null) ||
    skip "loop devices are unavailable (losetup -f failed)"
  cleanup_add "losetup -d '$dev'"
  lvm_loops+=("$dev")
  lvm_write_conf
  printf -v "$2" '%s' "$dev"
}

# lvm_q CMD ARGS...: run an LVM command quietly (output on failure).
lvm_q () {
  local out
  out=$("$@" 2>&1) || { echo "$out" >&2; fail "$*"; }
}

lvm_layout () { python3 "$lvm_srcdir/lvm-layout.py" "$@"; }
lvm_mda () { python3 "$lvm_srcdir/lvm-mda.py" "$@"; }

# nbdsh runs "python3 -m nbd": use the system Python, which has the libnbd
# bindings, even when another python3 comes first on PATH.
nbdsh () { PATH="/usr/bin:$PATH" command nbdsh "$@"; }
