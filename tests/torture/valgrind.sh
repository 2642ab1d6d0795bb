#!/bin/bash
# SPDX-License-Identifier: BSD-3-Clause
# valgrind memcheck of a representative subset of the plugins and filters
# (issue #22; results in docs/hardening.md "## valgrind").  Each scenario
# runs nbdkit -f -v under
#   valgrind --leak-check=full --errors-for-leak-kinds=definite,indirect
# with the normal (non-sanitized) build's modules, drives it with qemu-io
# (a seeded write mix, also applied to a raw mirror) and nbdcopy
# (several connections), stops it with SIGTERM and then requires:
#   - the data to be right (qemu-img compare with the mirror, or cmp);
#   - valgrind's exit status to be 0: no invalid access, no use of
#     uninitialised values, no definite or indirect leak, at exit.
# Scenarios: selftest (a leak planted in nbdkit must be reported: the
# check can fail), qcow2 (plugin, read/write, 4 connections), vmdk, vhdx,
# lvm (real lvm2 metadata on a loop device; root), the thin filter, the
# snapshot filter (create/revert through nbdkit-snapshot-ctl), the
# throttle filter, and the nfs plugin (private nfs-ganesha; root).  Not in
# CI (a few minutes); run by hand:
#   bash tests/torture/valgrind.sh [SCENARIO...]     (default: all)
# with TOP_BUILDDIR=DIR for a build other than ./build.  Valgrind logs of
# a failed scenario are printed.  tests/torture/valgrind.supp suppresses
# only reports proven to lie outside this project (see the file).
scenarios=("$@")
if [ ${#scenarios[@]} = 0 ]; then
  scenarios=(selftest qcow2 vmdk vhdx lvm thin snapshot throttle nfs)
fi
# The nfs scenario needs a private network namespace: re-execute the
# whole script there (tests/nfs/nfs-server.sh) when it is selected.
for s in "${scenarios[@]}"; do
  if [ "$s" = nfs ]; then
    source "$(dirname "$0")/../nfs/nfs-server.sh"
    nfs_netns "$0" "$@"
    break
  fi
done
source "$(dirname "$0")/../functions.sh"
requires valgrind qemu-img qemu-io nbdcopy python3 cmp
M=$((1024*1024))
supp="$TOP_SRCDIR/tests/torture/valgrind.supp"
ops_py="$TOP_SRCDIR/tests/qcow2/qcow2-ops.py"
results=()
bad=0

# nbdkit under valgrind (start_nbdkit calls this function).
vg_name=""
nbdkit_bin=$(command -v nbdkit) || skip "nbdkit not installed"
nbdkit () {
  valgrind --quiet --leak-check=full \
    --errors-for-leak-kinds=definite,indirect \
    --show-leak-kinds=definite,indirect --keep-debuginfo=yes \
    --track-origins=yes --error-exitcode=99 --suppressions="$supp" \
    --log-file="$tmpdir/vg-$vg_name.log" "$nbdkit_bin" "$@" \
    2> "$tmpdir/nbdkit-$vg_name.err"
}

# vg_start NAME SOCKET NBDKIT-ARGS...: a server under valgrind.
vg_start () {
  vg_name=$1; shift
  local sock=$1; shift
  start_nbdkit "$sock" -v "$@"
  vg_bg=$!
}

# vg_stop: SIGTERM, wait for valgrind's leak check, record the verdict.
vg_stop () {
  local rc=0
  kill -TERM "$nbdkit_pid" 2>/dev/null || :
  wait "$vg_bg" || rc=$?
  if [ $rc = 0 ] && ! grep -q 'ERROR SUMMARY: [1-9]' "$tmpdir/vg-$vg_name.log"; then
    results+=("ok    $vg_name")
  else
    results+=("FAIL  $vg_name (valgrind exit $rc)")
    bad=$((bad + 1))
    echo "--- valgrind log of $vg_name ---"
    cat "$tmpdir/vg-$vg_name.log"
    echo "--- nbdkit stderr (tail) ---"
    tail -20 "$tmpdir/nbdkit-$vg_name.err"
  fi
}

# mix NAME SOCKET MIRROR SIZE SEED: the seeded qemu-io write mix through
# the export and on the raw mirror.
mix () {
  python3 "$ops_py" --mode mirror --seed "$5" --size "$4" --cluster 65536 \
    --count "${MIX_COUNT:-60}" --patterns "$tmpdir/patterns" > "$tmpdir/$1.ops"
  local out
  out=$(qemu-io -f raw "$(uri_of "$2")" < "$tmpdir/$1.ops" 2>&1) ||
    fail "$1: qemu-io through nbdkit: $out"
  if grep -qiE 'error|fail' <<<"$out"; then fail "$1: qemu-io: $out"; fi
  qemu-io -f raw "$3" < "$tmpdir/$1.ops" > /dev/null
}

# format FMT: create an image with qemu-img, the write mix through the
# plugin, a 4-connection nbdcopy read; compare with the mirror after.
format () {
  local fmt=$1 size=$((32*M)) img="$tmpdir/$1.img" mirror="$tmpdir/$1.mirror"
  qemu-img create -q -f "$fmt" "$img" $size
  truncate -s $size "$mirror"
  vg_start "$fmt" "$tmpdir/$fmt.sock" "$(plugin_so "$fmt")" "file=$img"
  mix "$fmt" "$tmpdir/$fmt.sock" "$mirror" $size 7
  nbdcopy --connections=4 -- "$(uri_of "$tmpdir/$fmt.sock")" "$tmpdir/$fmt.out"
  vg_stop
  assert_same "$mirror" "$tmpdir/$fmt.out" "$fmt: read back"
  qemu-img compare -q -f raw -F "$fmt" "$mirror" "$img" ||
    fail "$fmt: image differs from the mirror"
}

# A definite leak planted in nbdkit (a preloaded constructor): vg_stop
# must call it a failure, or this script could not fail at all.
scenario_selftest () {
  printf '%s\n' '#include <stdlib.h>' 'void *volatile kept;' \
    '__attribute__((constructor)) static void leak (void)' \
    '{ kept = malloc (4096); kept = 0; }' > "$tmpdir/leak.c"
  "${KVM_CC:-cc}" -shared -fPIC -o "$tmpdir/leak.so" "$tmpdir/leak.c"
  LD_PRELOAD="$tmpdir/leak.so" vg_start selftest "$tmpdir/self.sock" null 1M
  local before=$bad
  vg_stop > /dev/null
  [ $bad = $((before + 1)) ] || fail "selftest: a planted leak went unreported"
  grep -q 'definitely lost' "$tmpdir/vg-selftest.log" ||
    fail "selftest: no leak record in the valgrind log"
  bad=$before
  results[${#results[@]}-1]="ok    selftest (planted leak reported)"
}

scenario_qcow2 () { format qcow2; }
scenario_vmdk () { format vmdk; }
scenario_vhdx () { format vhdx; }

scenario_lvm () {
  requires_root
  requires losetup pvcreate vgcreate lvcreate
  source "$TOP_SRCDIR/tests/lvm/lvm-lib.sh"
  truncate -s $((64*M)) "$tmpdir/pv.img"
  lvm_attach "$tmpdir/pv.img" pv
  lvm_q pvcreate -q "$pv"
  lvm_q vgcreate -q -s 4m vgv "$pv"
  lvm_q lvcreate -q -an -Zn -L 16M -n lv1 vgv
  lvm_q lvcreate -q -an -Zn -L 12M -n lv2 vgv
  vg_start lvm "$tmpdir/lvm.sock" "$(plugin_so lvm)" "pv=$tmpdir/pv.img" \
    vg=vgv lv=lv2 recheck=10
  truncate -s $((12*M)) "$tmpdir/lvm.mirror"
  mix lvm "$tmpdir/lvm.sock" "$tmpdir/lvm.mirror" $((12*M)) 11
  nbdcopy --connections=4 -- "$(uri_of "$tmpdir/lvm.sock")" "$tmpdir/lvm.out"
  vg_stop
  assert_same "$tmpdir/lvm.mirror" "$tmpdir/lvm.out" "lvm: read back"
}

scenario_thin () {
  truncate -s $((64*M)) "$tmpdir/pool.img"
  vg_start thin "$tmpdir/thin.sock" --filter="$(filter_so thin)" \
    file "$tmpdir/pool.img" thin-size=$((48*M))
  truncate -s $((48*M)) "$tmpdir/thin.mirror"
  mix thin "$tmpdir/thin.sock" "$tmpdir/thin.mirror" $((48*M)) 13
  nbdcopy --connections=4 -- "$(uri_of "$tmpdir/thin.sock")" "$tmpdir/thin.out"
  vg_stop
  assert_same "$tmpdir/thin.mirror" "$tmpdir/thin.out" "thin: read back"
}

scenario_snapshot () {
  local ctl="$TOP_BUILDDIR/filters/snapshot/nbdkit-snapshot-ctl"
  [ -x "$ctl" ] || ctl=$(command -v nbdkit-snapshot-ctl) ||
    skip "nbdkit-snapshot-ctl not built"
  local size=$((24*M))
  head -c $size /dev/urandom > "$tmpdir/below.raw"
  cp "$tmpdir/below.raw" "$tmpdir/snap.mirror"
  vg_start snapshot "$tmpdir/snap.sock" --filter="$(filter_so snapshot)" \
    file "$tmpdir/below.raw" overlay-dir="$tmpdir/overlay" \
    control="$tmpdir/ctl.sock"
  mix snapshot "$tmpdir/snap.sock" "$tmpdir/snap.mirror" $size 17
  "$ctl" "$tmpdir/ctl.sock" create one > /dev/null
  cp "$tmpdir/snap.mirror" "$tmpdir/snap.one"
  mix snapshot2 "$tmpdir/snap.sock" "$tmpdir/snap.mirror" $size 19
  "$ctl" "$tmpdir/ctl.sock" create two > /dev/null
  "$ctl" "$tmpdir/ctl.sock" list > /dev/null
  "$ctl" "$tmpdir/ctl.sock" revert one > /dev/null
  nbdcopy --connections=4 -- "$(uri_of "$tmpdir/snap.sock")" "$tmpdir/snap.out"
  "$ctl" "$tmpdir/ctl.sock" delete one > /dev/null
  vg_stop
  assert_same "$tmpdir/snap.one" "$tmpdir/snap.out" "snapshot: after revert"
}

scenario_throttle () {
  local size=$((16*M))
  head -c $size /dev/urandom > "$tmpdir/thr.raw"
  cp "$tmpdir/thr.raw" "$tmpdir/thr.mirror"
  vg_start throttle "$tmpdir/thr.sock" --filter="$(filter_so throttle)" \
    file "$tmpdir/thr.raw" bps-total=64M iops-total=2000
  mix throttle "$tmpdir/thr.sock" "$tmpdir/thr.mirror" $size 23
  nbdcopy --connections=4 -- "$(uri_of "$tmpdir/thr.sock")" "$tmpdir/thr.out"
  vg_stop
  assert_same "$tmpdir/thr.mirror" "$tmpdir/thr.out" "throttle: read back"
}

scenario_nfs () {
  requires_plugin nfs
  nfs_server_start "$tmpdir/export"
  local size=$((16*M))
  head -c $size /dev/urandom > "$NFS_DIR/disk.raw"
  cp "$NFS_DIR/disk.raw" "$tmpdir/nfs.mirror"
  vg_start nfs "$tmpdir/nfs.sock" "$(plugin_so nfs)" \
    "url=$NFS_URL/disk.raw?conns=2"
  mix nfs "$tmpdir/nfs.sock" "$tmpdir/nfs.mirror" $size 29
  nbdcopy --connections=2 -- "$(uri_of "$tmpdir/nfs.sock")" "$tmpdir/nfs.out"
  vg_stop
  assert_same "$tmpdir/nfs.mirror" "$tmpdir/nfs.out" "nfs: read back"
  nfs_server_stop
}

for s in "${scenarios[@]}"; do
  declare -F "scenario_$s" > /dev/null || fail "unknown scenario $s"
  t0=$SECONDS
  echo "== $s"
  "scenario_$s"
  echo "   ($((SECONDS - t0)) s)"
done
printf '%s\n' "${results[@]}"
[ $bad = 0 ] || fail "$bad scenario(s) with valgrind errors"
echo "valgrind: ${#results[@]} scenarios clean"
