#!/bin/bash
# SPDX-License-Identifier: BSD-3-Clause
# Differential check of a format engine against QEMU on fuzz inputs:
#   tests/fuzz/differential.sh [-b BUILDDIR] FORMAT [INPUT-FILE-OR-DIR...]
# FORMAT is qcow2, vmdk or vhdx; the inputs default to the seed corpus and
# the corpus grown by run.sh (BUILDDIR/../build-fuzz/new-corpus/FORMAT).
#
# Each input goes through the format's fuzz target (its replay binary in
# BUILDDIR, with FUZZ_KEEP: see fuzz_common.h), which keeps the image it
# made from the input, the writes, zero writes and trims it sent through
# our engine (as qemu-io commands) and the image they left.  An input
# counts when QEMU finds the image clean (qemu-img check), its data
# grains do not overlap (vmdk: damage qemu-img check does not see, where
# writes through one grain show through another in either engine), it
# names no backing or data file, and our engine opened it read-write (and the image
# it left could be copied: a hostile one can be too sparse).  Then:
# - every request must have succeeded in our engine, unless it failed in
#   QEMU too (qemu-io, same requests, a copy of the image) or QEMU's
#   result is unsound (QEMU writes through damaged tables into the image's
#   own metadata, where ours refuses);
# - qemu-img check must find the image our engine wrote clean (leaks are
#   allowed where QEMU's own writes leak too);
# - it must read like a raw mirror: the original as QEMU reads it, with
#   the same requests applied by qemu-io, except where a trim left the
#   content unspecified (NBD lets a trimmed range read as its old data or
#   as zeroes): such ranges, unless written again, are masked.  (QEMU's
#   own result is compared with the mirror too, only to count where it
#   differs.)
# Exits 1 if an input fails one of these (its files are kept and named).
set -uo pipefail
top=$(cd "$(dirname "$0")/../.." && pwd)
build=$top/build
if [ "${1:-}" = -b ]; then build=$2; shift 2; fi
fmt=${1:?usage: $0 [-b BUILDDIR] qcow2|vmdk|vhdx [INPUT...]}
shift
case $fmt in qcow2|vmdk|vhdx) ;; *) echo "$0: unknown format $fmt" >&2; exit 2 ;; esac
replay=$build/tests/fuzz-replay/replay_$fmt
[ -x "$replay" ] || { echo "$0: no $replay (build first)" >&2; exit 2; }
[ $# -gt 0 ] || set -- "$top/tests/fuzz/corpus/$fmt" "$top/build-fuzz/new-corpus/$fmt"

work=$(mktemp -d "${TMPDIR:-/tmp}/kvm-differential.XXXXXX")
keep=$work/failures
mkdir -p "$keep"
n=0 counted=0 unclean=0 aliased=0 chained=0 refused=0 big=0 unreadable=0 failures=0
bothfailed=0 qemurefused=0 bothleak=0 qemubroke=0 qemuwrong=0

fail_input () {   # INPUT WHY
  failures=$((failures + 1))
  local d=$keep/$failures
  mkdir -p "$d"
  cp "$1" "$d/input"
  cp --sparse=always "$work"/x.* "$work/q.img" "$d/" 2>/dev/null
  echo "FAIL: $1: $2 (files in $d)"
}

check_one () {
  local in=$1
  n=$((n + 1))
  rm -f "$work"/x.* "$work/q.img"
  FUZZ_KEEP=$work/x timeout 120 "$replay" "$in" >/dev/null 2>&1 ||
    { fail_input "$in" "the fuzz target failed"; return; }
  [ -f "$work/x.orig" ] || return
  if ! qemu-img check -q -f "$fmt" "$work/x.orig" >/dev/null 2>&1; then
    unclean=$((unclean + 1)); return
  fi
  if [ "$fmt" = vmdk ] &&
      python3 "$top/tests/fuzz/vmdk-overlapping-grains.py" "$work/x.orig"; then
    aliased=$((aliased + 1)); return
  fi
  if qemu-img info --output=json -f "$fmt" "$work/x.orig" 2>/dev/null |
      grep -q '"backing-filename"\|"data-file"'; then
    chained=$((chained + 1)); return
  fi
  if [ ! -f "$work/x.written" ]; then
    refused=$((refused + 1)); return
  fi
  local out qemu_ok=true
  cp --sparse=always "$work/x.orig" "$work/q.img"
  local args=()
  while IFS= read -r line; do
    [[ $line == \#* ]] || args+=(-c "$line")
  done < "$work/x.ops"
  if ! out=$(qemu-io -f "$fmt" "${args[@]}" "$work/q.img" 2>&1) ||
      grep -qi "error\|failed" <<<"$out"; then
    qemu_ok=false
  fi
  if grep -q '^#' "$work/x.ops"; then
    # Ours refusing a request QEMU served counts only if QEMU's result is
    # sound: QEMU writes through damaged tables into the image's own
    # metadata, where ours refuses to.
    if $qemu_ok && qemu-img check -f "$fmt" "$work/q.img" >/dev/null 2>&1 &&
        qemu-img convert -f "$fmt" -O raw "$work/q.img" "$work/q.raw" 2>/dev/null; then
      fail_input "$in" "a request failed in our engine, not in QEMU: $(grep '^#' "$work/x.ops" | head -1)"
    elif $qemu_ok; then
      qemubroke=$((qemubroke + 1))
    else
      bothfailed=$((bothfailed + 1))   # damage both refuse to write over
    fi
    return
  fi
  if ! $qemu_ok; then
    # QEMU refused a request ours served: not ours to judge; say so.
    echo "note: $in: only QEMU refused a request: $(grep -i -m1 "error\|failed" <<<"$out")"
    qemurefused=$((qemurefused + 1))
    return
  fi
  counted=$((counted + 1))
  local rc=0 qrc=0
  out=$(qemu-img check -f "$fmt" "$work/x.written" 2>&1) || rc=$?
  if [ $rc != 0 ]; then
    qemu-img check -f "$fmt" "$work/q.img" >/dev/null 2>&1 || qrc=$?
    # Leaks alone (exit 3) where QEMU's own writes leak too: the original's
    # refcount layout, not ours.
    if [ $rc != 3 ] || [ $qrc != 3 ]; then
      fail_input "$in" "qemu-img check of the image we wrote (exit $rc; of QEMU's, $qrc): $(tail -3 <<<"$out" | tr '\n' ' ')"
      return
    fi
    bothleak=$((bothleak + 1))
  fi
  local vsize
  vsize=$(qemu-img info --output=json -f "$fmt" "$work/x.orig" |
          sed -n 's/.*"virtual-size": \([0-9]*\).*/\1/p' | head -1)
  if [ "${vsize:-0}" -gt $((1 << 30)) ]; then
    big=$((big + 1)); return            # the compare reads it all
  fi
  # The expected content: the original as QEMU reads it, with the same
  # requests applied to a raw copy.  (Damage qemu-img check does not see,
  # such as a compressed cluster that does not decompress, can make the
  # original unreadable to QEMU.)
  if ! qemu-img convert -f "$fmt" -O raw "$work/x.orig" "$work/m.raw" 2>/dev/null; then
    unreadable=$((unreadable + 1)); rm -f "$work/m.raw"; return
  fi
  qemu-io -f raw "${args[@]}" "$work/m.raw" >/dev/null 2>&1 ||
    { fail_input "$in" "qemu-io failed on the raw mirror"; return; }
  qemu-img convert -f "$fmt" -O raw "$work/x.written" "$work/x.raw" ||
    { fail_input "$in" "QEMU cannot read the image we wrote"; return; }
  out=$(python3 "$top/tests/fuzz/masked-compare.py" "$work/x.raw" "$work/m.raw" "$work/x.ops") ||
    fail_input "$in" "differs from the raw mirror: $out"
  # QEMU's own result, for the record: where it differs from the mirror,
  # QEMU is wrong (seen: a vmdk write lost through a directory entry 0).
  if qemu-img convert -f "$fmt" -O raw "$work/q.img" "$work/q.raw" 2>/dev/null &&
      ! python3 "$top/tests/fuzz/masked-compare.py" "$work/q.raw" "$work/m.raw" "$work/x.ops" >/dev/null; then
    qemuwrong=$((qemuwrong + 1))
  fi
  rm -f "$work/x.raw" "$work/q.raw" "$work/m.raw"
}

for arg in "$@"; do
  if [ -d "$arg" ]; then
    for f in "$arg"/*; do [ -f "$f" ] && check_one "$f"; done
  elif [ -f "$arg" ]; then
    check_one "$arg"
  fi
done
echo "$fmt: $n inputs; $counted compared with the raw mirror ($bothleak" \
     "leaking clusters after both engines' writes; $qemuwrong where QEMU's" \
     "own result differs from the mirror); skipped: $bothfailed" \
     "where a request failed in both, $qemurefused where only QEMU refused" \
     "one, $unclean not" \
     "clean for qemu-img check, $aliased with overlapping grains (which" \
     "qemu-img check does not report), $chained with a backing or data file," \
     "$refused not opened read-write by our engine (or not kept)," \
     "$big over 1 GiB, $unreadable unreadable by QEMU" \
     "before any write, $qemubroke that QEMU's own writes left unreadable" \
     "(not compared); $failures failed"
if [ $failures -gt 0 ]; then
  echo "failing inputs kept in $keep"
  exit 1
fi
rm -rf "$work"
