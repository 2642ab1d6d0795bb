# SPDX-License-Identifier: BSD-3-Clause
# The plugin and filter stacks of the torture tests.  Source after
# tests/functions.sh.
#
#   stack_setup NAME      make the images of stack NAME, set
#                         stack_args (nbdkit's arguments) and
#                         stack_fmt (qemu-img's format of $stack_img,
#                         empty when there is no image file to check)
#   stack_verify NAME MIRROR   after the server stopped: the storage
#                         below holds exactly MIRROR (qemu-img compare,
#                         qemu-img check, cmp of raw bytes, the thin
#                         checker, a snapshot commit)
#
# Stacks (TORTURE_STACKS selects, space-separated):
#   qcow2 vmdk vhdx            this project's format plugins (new images
#                              made by qemu-img)
#   qcow2-filter vmdk-filter vhdx-filter   the format filters over file
#   thin snapshot throttle     the filters over nbdkit's file plugin
#   lvm                        the lvm plugin (an LV on a loop-attached PV)
#   snapshot-thin-lvm          --filter=snapshot --filter=thin lvm
#   file                       nbdkit's own file plugin (a baseline)
#   nfs iscsi rbd              the network plugins, against a service the
#                              caller started (test-torture-net.sh)

torture_dir="$TOP_SRCDIR/tests/torture"
: "${TORTURE_SIZE_MB:=16}"
torture_size=$((TORTURE_SIZE_MB * 1024 * 1024))
requires qemu-img cmp nbdcopy python3 gdb
requires_nbdsh

# Clients here hang up with replies queued (bad clients, a concurrency
# run that stops at the first wrong byte): nbdkit 1.32.5 may then abort
# in its own socket code, also while stop_nbdkit shuts it down.  The bad
# clients part recognises and counts that abort itself (bad-clients.py);
# stop_nbdkit reports it without failing (tests/functions.sh).
KVM_NBDKIT_ABORT_OK=1

# concurrency ARGS...: tests/torture/concurrency.py under the system
# Python (the one with the nbd module).
concurrency () { /usr/bin/python3 "$torture_dir/concurrency.py" "$@"; }

snapshot_ctl="$TOP_BUILDDIR/filters/snapshot/nbdkit-snapshot-ctl"
thin_check_bin="$TOP_BUILDDIR/filters/thin/nbdkit-thin-check"

# _lvm_pv NAME SIZE_MB: a PV file on a loop device with VG "${NAME}vg"
# and a linear LV "lv" of SIZE_MB MiB at PE 0; sets lv_pv, lv_off.
_lvm_ready=""
_lvm_pv () {
  if [ -z "$_lvm_ready" ]; then
    source "$TOP_SRCDIR/tests/lvm/lvm-lib.sh"
    _lvm_ready=1
  fi
  local name=$1 mb=$2 loop
  lv_pv=$tmpdir/$name.pv
  truncate -s $((mb + 8))M "$lv_pv"
  lvm_attach "$lv_pv" loop
  lvm_q pvcreate -q "$loop"
  lvm_q vgcreate -q -s 4m "${name}vg" "$loop"
  lvm_q lvcreate -q -an -Zn -L "${mb}M" -n lv "${name}vg"
  lv_off=$(pvs --noheadings --units b --nosuffix -o pe_start "$loop" | tr -d ' ')
  [ -n "$lv_off" ] || fail "cannot read pe_start of $loop"
}

# _lv_bytes PV OFF MB OUT: the LV's bytes (linear at PE 0) from the PV file.
_lv_bytes () {
  dd if="$1" of="$4" bs=1M iflag=skip_bytes skip="$2" count="$3" status=none
}

# _create_opts FMT: qemu-img create options giving many allocation units
# in a small image (vhdx: 1 MiB blocks, not one 32 MiB block).
_create_opts () { [ "$1" = vhdx ] && echo "-o block_size=1M" || :; }

# _snapshot_during: the snapshot operations run while concurrency.py's
# requests are in flight; none changes the content (two snapshots taken,
# the older deleted: its layer merged into the next one up).
_snapshot_during () {
  local c="'$snapshot_ctl' '$stack_ctl'"
  echo "$c create mid >/dev/null && $c create mid2 >/dev/null && $c delete mid >/dev/null"
}

stack_setup () {
  local name=$1 d=$tmpdir/$1
  mkdir -p "$d"
  stack_img=""
  stack_fmt=""
  stack_during=""
  case $name in
    qcow2|vmdk|vhdx)
      requires_plugin "$name"
      stack_img=$d/disk.$name
      stack_fmt=$name
      qemu-img create -q -f "$name" $(_create_opts "$name") "$stack_img" \
        "$torture_size"
      stack_args=("$(plugin_so "$name")" "file=$stack_img")
      ;;
    qcow2-filter|vmdk-filter|vhdx-filter)
      stack_fmt=${name%-filter}
      requires_filter "$stack_fmt"
      stack_img=$d/disk.$stack_fmt
      qemu-img create -q -f "$stack_fmt" $(_create_opts "$stack_fmt") \
        "$stack_img" "$torture_size"
      # The container does not grow under the file plugin: room for all
      # the data and metadata.
      truncate -s $((torture_size * 2 + 8 * 1024 * 1024)) "$stack_img"
      stack_args=(--filter="$(filter_so "$stack_fmt")" file "$stack_img")
      ;;
    thin)
      requires_filter thin
      stack_img=$d/pool.img
      truncate -s $((torture_size * 2)) "$stack_img"
      stack_args=(--filter="$(filter_so thin)" file "$stack_img"
                  "thin-size=$torture_size")
      ;;
    snapshot)
      requires_filter snapshot
      stack_img=$d/base.img
      random_file "$stack_img" "$torture_size"
      stack_ctl=$d/ctl.sock
      stack_args=(--filter="$(filter_so snapshot)" file "$stack_img"
                  "overlay-dir=$d/overlay" "control=$stack_ctl")
      stack_during=$(_snapshot_during)
      ;;
    throttle)
      requires_filter throttle
      stack_img=$d/disk.img
      random_file "$stack_img" "$torture_size"
      # Limits that bite (requests wait) without stretching the run.
      stack_args=(--filter="$(filter_so throttle)" file "$stack_img"
                  iops-total=3000 bps-write=40M)
      ;;
    lvm)
      requires_plugin lvm
      _lvm_pv lvm "$TORTURE_SIZE_MB"
      random_file "$d/lv.orig" "$torture_size"
      dd if="$d/lv.orig" of="$lv_pv" bs=1M oflag=seek_bytes seek="$lv_off" \
         conv=notrunc status=none
      stack_args=("$(plugin_so lvm)" "pv=$lv_pv" vg=lvmvg lv=lv)
      ;;
    snapshot-thin-lvm)
      requires_plugin lvm
      requires_filter snapshot
      requires_filter thin
      _lvm_pv stl $((TORTURE_SIZE_MB * 2))
      # lvcreate -Zn keeps the PV file's bytes: zero, an empty pool.
      stack_ctl=$d/ctl.sock
      stack_args=(--filter="$(filter_so snapshot)" --filter="$(filter_so thin)"
                  "$(plugin_so lvm)" "pv=$lv_pv" vg=stlvg lv=lv
                  "thin-size=$torture_size"
                  "overlay-dir=$d/overlay" "control=$stack_ctl")
      stack_during=$(_snapshot_during)
      ;;
    file)
      # nbdkit's own file plugin, none of our code: the baseline for
      # nbdkit's known abort (docs/hardening.md).
      stack_img=$d/disk.img
      random_file "$stack_img" "$torture_size"
      stack_args=(file "$stack_img")
      ;;
    nfs|iscsi|rbd)
      # The caller started the service and set net_args (nbdkit's
      # arguments) and net_dump OUT (the raw bytes the service holds).
      stack_args=("${net_args[@]}")
      ;;
    *) fail "unknown stack $name" ;;
  esac
}

# _same_export SOCK MIRROR WHAT: a fresh server's export equals MIRROR.
_same_export () {
  rm -f "$3.out"
  nbdcopy -- "$(uri_of "$1")" "$3.out"
  assert_same "$3.out" "$2" "$3"
  rm -f "$3.out"
}

stack_verify () {
  local name=$1 mirror=$2 d=$tmpdir/$1 sock
  if [ -n "$stack_fmt" ]; then
    qemu_img_check -f "$stack_fmt" "$stack_img"
    qemu-img compare -U -q -f raw -F "$stack_fmt" "$mirror" "$stack_img" ||
      fail "$name: qemu-img compare: the image differs from the model"
    return 0
  fi
  case $name in
    thin)
      out=$("$thin_check_bin" "$stack_img" 2>&1) || fail "thin check: $out"
      grep -q ': clean$' <<<"$out" || fail "thin check: $out"
      sock=$d/again.sock
      start_nbdkit "$sock" "${stack_args[@]}"
      _same_export "$sock" "$mirror" "$d/thin-restarted"
      stop_nbdkit
      ;;
    throttle|file)
      assert_same "$stack_img" "$mirror" "$name: the file"
      ;;
    nfs|iscsi|rbd)
      net_dump "$d/now"
      assert_same "$d/now" "$mirror" "$name: the bytes the service holds"
      ;;
    lvm)
      _lv_bytes "$lv_pv" "$lv_off" "$TORTURE_SIZE_MB" "$d/lv.now"
      assert_same "$d/lv.now" "$mirror" "$name: the LV's bytes"
      ;;
    snapshot|snapshot-thin-lvm)
      # Restarted, the chain serves the same; committed, the layer below
      # holds it.
      sock=$d/again.sock
      rm -f "$stack_ctl"
      start_nbdkit "$sock" "${stack_args[@]}"
      _same_export "$sock" "$mirror" "$d/$name-restarted"
      out=$("$snapshot_ctl" "$stack_ctl" list 2>&1) || fail "snapshot list: $out"
      grep -qw mid2 <<<"$out" || fail "$name: snapshot 'mid2' missing: $out"
      ! grep -qw mid <<<"$out" || fail "$name: snapshot 'mid' not deleted: $out"
      out=$("$snapshot_ctl" "$stack_ctl" commit 2>&1) || fail "commit: $out"
      stop_nbdkit
      if [ "$name" = snapshot ]; then
        assert_same "$stack_img" "$mirror" "$name: the base after commit"
      else
        _lv_bytes "$lv_pv" "$lv_off" $((TORTURE_SIZE_MB * 2)) "$d/pool.now"
        out=$("$thin_check_bin" "$d/pool.now" 2>&1) || fail "thin check: $out"
        grep -q ': clean$' <<<"$out" || fail "thin check: $out"
        sock=$d/again2.sock
        start_nbdkit "$sock" --filter="$(filter_so thin)" "$(plugin_so lvm)" \
          "pv=$lv_pv" vg=stlvg lv=lv "thin-size=$torture_size"
        _same_export "$sock" "$mirror" "$d/thin-after-commit"
        stop_nbdkit
      fi
      ;;
  esac
}

# stack_check NAME ABORTS: after the server stopped, the storage below is
# consistent (qemu-img check, the thin checker); its content is not
# checked (bad clients leave writes half done).  When nbdkit's known
# abort killed the server ABORTS times, leaked clusters (qemu-img check
# exit 3) are allowed, as after any crash; never corruption.
stack_check () {
  local name=$1 aborts=$2 d=$tmpdir/$1 out rc
  if [ -n "$stack_fmt" ]; then
    rc=0
    out=$(qemu-img check -U -f "$stack_fmt" "$stack_img" 2>&1) || rc=$?
    if [ "$rc" = 3 ] && [ "$aborts" -gt 0 ]; then
      echo "$name: leaked clusters after $aborts crashes of nbdkit (allowed)"
    elif [ "$rc" != 0 ]; then
      fail "$name: qemu-img check exit $rc after bad clients ($aborts known nbdkit aborts): $out"
    fi
  fi
  case $name in
    thin)
      out=$("$thin_check_bin" "$stack_img" 2>&1) || fail "thin check: $out"
      grep -q ': clean$' <<<"$out" || fail "thin check: $out"
      ;;
    snapshot-thin-lvm)
      _lv_bytes "$lv_pv" "$lv_off" $((TORTURE_SIZE_MB * 2)) "$d/pool.now"
      out=$("$thin_check_bin" "$d/pool.now" 2>&1) || fail "thin check: $out"
      grep -q ': clean$' <<<"$out" || fail "thin check: $out"
      ;;
  esac
}

# torture_stack NAME SEED: one stack set up, then the parts of
# TORTURE_PARTS: "concurrency" (served, tortured by concurrency.py,
# verified against the model's mirror) and "bad" (bad-clients.py, which
# runs the server itself, then the storage checked).
torture_stack () {
  local name=$1 seed=$2 sock t0=$SECONDS part
  stack_setup "$name"
  local parts=${TORTURE_PARTS:-concurrency bad}
  # Under the sanitizers, bad clients only against one stack per module
  # of ours (the others' adapters run under concurrency.py there): the
  # abuse mostly exercises nbdkit's server, and every server exit costs
  # a gdb look at nbdkit's sanitizer-preload exit hang (bad-clients.py).
  if [ "$KVM_SANITIZE" = 1 ] && [ -z "${TORTURE_PARTS:-}" ] &&
     [[ " qcow2 vmdk-filter vhdx throttle snapshot-thin-lvm " != *" $name "* ]]; then
    parts=concurrency
  fi
  for part in $parts; do
    case $part in
      concurrency)
        sock=$tmpdir/$name/s.sock
        start_nbdkit "$sock" "${stack_args[@]}"
        concurrency "$(uri_of "$sock")" --seed "$seed" --name "$name" \
          --mirror "$tmpdir/$name/mirror" \
          ${stack_during:+--during "$stack_during"} ||
          fail "$name: concurrency.py failed"
        kill -0 "$nbdkit_pid" 2>/dev/null || fail "$name: nbdkit died"
        stop_nbdkit
        stack_verify "$name" "$tmpdir/$name/mirror"
        ;;
      bad)
        /usr/bin/python3 "$torture_dir/bad-clients.py" --dir "$tmpdir/$name" \
          --seed "$seed" --name "$name" -- "${stack_args[@]}" ||
          fail "$name: bad-clients.py failed"
        stack_check "$name" "$(cat "$tmpdir/$name/known-aborts")"
        ;;
      *) fail "TORTURE_PARTS: unknown part $part" ;;
    esac
  done
  rm -rf "$tmpdir/$name"
  echo "torture $name: OK ($((SECONDS - t0)) s)"
}
