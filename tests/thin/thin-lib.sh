# SPDX-License-Identifier: BSD-3-Clause
# Helpers for the thin filter tests.  Source after tests/functions.sh.

requires_filter thin
requires python3 nbdcopy nbdinfo qemu-io qemu-img cmp
requires_nbdsh

thin_srcdir="$TOP_SRCDIR/tests/thin"
thin_check_bin="$TOP_BUILDDIR/filters/thin/nbdkit-thin-check"
[ -x "$thin_check_bin" ] || fail "nbdkit-thin-check was not built"

thin_meta () { python3 "$thin_srcdir/thin-meta.py" "$@"; }

# thin_check ARGS...: the checker must find the metadata clean.
thin_check () {
  local out
  out=$("$thin_check_bin" "$@" 2>&1) || fail "nbdkit-thin-check $*: $out"
  grep -q ': clean$' <<<"$out" || fail "nbdkit-thin-check $*: $out"
}

# thin_used URI: "used" bytes from the export description.
thin_desc () { nbdinfo "$1" | sed -n 's/^[[:space:]]*description: //p'; }

# thin_setup_pool: a 64 MiB pool for THIN_TEST_SERVE=file (default: a
# file under nbdkit's file plugin) or lvm (an LV of a VG on a PV file,
# under this project's lvm plugin).  Defines
#   thin_serve SOCK ARGS...   start nbdkit --filter=thin over the pool
#   pool_image                print a file holding the pool's bytes now
#                             (for nbdkit-thin-check and thin-meta.py)
thin_mode=${THIN_TEST_SERVE:-file}
thin_setup_pool () {
  case $thin_mode in
    file)
      pool=$tmpdir/pool.img
      truncate -s 64M "$pool"
      thin_serve () {
        local s=$1; shift
        rm -f "$s"
        start_nbdkit "$s" --filter="$(filter_so thin)" file "$pool" "$@"
      }
      pool_image () { echo "$pool"; }
      ;;
    lvm)
      source "$TOP_SRCDIR/tests/lvm/lvm-lib.sh"
      pv=$tmpdir/pv.img
      truncate -s 80M "$pv"
      lvm_attach "$pv" thin_loop
      lvm_q pvcreate -q "$thin_loop"
      lvm_q vgcreate -q -s 4m tvg "$thin_loop"
      lvm_q lvcreate -q -an -Zn -L 64M -n tlv tvg
      lv_off=$(pvs --noheadings --units b --nosuffix -o pe_start "$thin_loop" |
               tr -d ' ')
      [ -n "$lv_off" ] || fail "cannot read pe_start of $thin_loop"
      # lvcreate -Zn leaves the LV's old bytes: a fresh PV file is zero.
      thin_serve () {
        local s=$1; shift
        rm -f "$s"
        start_nbdkit "$s" --filter="$(filter_so thin)" "$(plugin_so lvm)" \
          "pv=$pv" vg=tvg lv=tlv "$@"
      }
      # The LV is linear at PE 0: its bytes start at pe_start.
      pool_image () {
        dd if="$pv" of="$tmpdir/lv.img" bs=1M iflag=skip_bytes \
           skip="$lv_off" count=64 status=none
        echo "$tmpdir/lv.img"
      }
      ;;
    *) fail "THIN_TEST_SERVE=$thin_mode: unknown mode" ;;
  esac
}
