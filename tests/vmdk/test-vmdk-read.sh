#!/bin/bash
# SPDX-License-Identifier: BSD-3-Clause
# Read matrix: for each subformat qemu-img creates (monolithicSparse,
# monolithicFlat, twoGbMaxExtentSparse, twoGbMaxExtentFlat; zeroed grains
# on and off) an image filled by a seeded qemu-io workload, a
# streamOptimized image made by qemu-img convert, delta chains (vmdk on
# vmdk, vmdk on qcow2, qcow2 on vmdk through the qcow2 plugin), and
# multi-extent images across the 2 GiB extent boundary: each served
# read-only by the plugin reads exactly like qemu-img convert -O raw, with
# a block status consistent with qemu-img map.
#   test-vmdk-read.sh [SEED]
source "${TOP_SRCDIR:?run the tests through ctest, which sets TOP_SRCDIR}/tests/functions.sh"
source "$TOP_SRCDIR/tests/vmdk/vmdk-functions.sh"

seed=${1:-${VMDK_SEED:-1}}
echo "seed $seed"
n=0
size=$((8*1024*1024 + 64*1024))

# fill IMAGE SIZE [REGION]: a seeded workload written by qemu-io.
fill () {
  n=$((n+1))
  local reg=()
  [ -n "${3:-}" ] && reg=(--region "$3")
  gen_ops --seed $((seed*1000+n)) --size "$2" --count 40 "${reg[@]}" \
    > "$tmpdir/ops$n"
  qemu_io_cmds -f vmdk "$1" < "$tmpdir/ops$n"
}

for sub in monolithicSparse monolithicFlat twoGbMaxExtentSparse \
           twoGbMaxExtentFlat; do
  for zg in off on; do
    case $sub in *Flat) [ $zg = on ] && continue ;; esac
    img="$tmpdir/$sub-$zg.vmdk"
    qemu-img create -q -f vmdk -o subformat=$sub,zeroed_grain=$zg "$img" \
      $size || fail "qemu-img create $sub"
    fill "$img" $size
    check_image "$img"
    serve_vmdk "$img" -r
    check_read "$img" "$tmpdir/w"
    stop_server
    echo "ok: $sub zeroed_grain=$zg"
  done
done

# streamOptimized, converted from a filled monolithicSparse image.
src="$tmpdir/monolithicSparse-on.vmdk"
so="$tmpdir/stream.vmdk"
qemu-img convert -O vmdk -o subformat=streamOptimized -f vmdk "$src" "$so" ||
  fail "qemu-img convert to streamOptimized"
serve_vmdk "$so" -r
check_read "$so" "$tmpdir/w"
stop_server
# Served without -r: still read-only (compressed grains are never written).
serve_vmdk "$so"
out=$(nbdinfo --json "$(uri_of "$sock")") || fail "nbdinfo $so"
grep -q '"is_read_only": true' <<<"$out" ||
  fail "streamOptimized image not served read-only"
out=$(qemu-io -f raw -c "write 0 512" "$(uri_of "$sock")" 2>&1 || :)
grep -qiE 'denied|read-only|not permitted' <<<"$out" ||
  fail "a write into a streamOptimized image did not fail: $out"
stop_server
echo "ok: streamOptimized"

# Delta chains: vmdk child of a vmdk parent (two levels), of a qcow2 parent.
base="$tmpdir/monolithicSparse-off.vmdk"
mid="$tmpdir/mid.vmdk"; top="$tmpdir/top.vmdk"
qemu-img create -q -f vmdk -b "$(basename "$base")" -F vmdk "$mid" ||
  fail "qemu-img create mid"
fill "$mid" $size
qemu-img create -q -f vmdk -b mid.vmdk -F vmdk "$top" || fail "create top"
fill "$top" $size
serve_vmdk "$top" -r
check_read "$top" "$tmpdir/w"
stop_server
# backing=none: the top alone, as QEMU reads it with "backing": null.
serve_vmdk "$top" -r backing=none
qemu-img convert -U -O raw "json:{\"driver\":\"vmdk\",\"backing\":null,\"file\":{\"driver\":\"file\",\"filename\":\"$top\"}}" \
  "$tmpdir/none.raw" || fail "qemu-img convert (backing null)"
nbdcopy -- "$(uri_of "$sock")" "$tmpdir/none.out" || fail "nbdcopy"
assert_same "$tmpdir/none.raw" "$tmpdir/none.out" "backing=none"
stop_server
# Even without -r, backing=none is read-only: a write would fill the rest
# of a new grain with zeroes where the parent has data.
serve_vmdk "$top" backing=none
nbdinfo "$(uri_of "$sock")" | grep -q 'is_read_only: true' ||
  fail "backing=none served the delta disk writable"
stop_server
echo "ok: vmdk delta chain"

# A parent written since the child was made (its CID changed, no longer
# the child's parentCID): QEMU refuses to read the child, and so does the
# plugin, unless ignore-parent-cid=true.  On copies of the chain.
mkdir "$tmpdir/cid"
cp "$base" "$tmpdir/cid/"
cp "$mid" "$top" "$tmpdir/cid/"
qemu-io -c 'write -P 7 0 4k' "$tmpdir/cid/mid.vmdk" >/dev/null ||
  fail "qemu-io write into the parent"
if qemu-io -c 'read 0 4k' "$tmpdir/cid/top.vmdk" 2>&1 | grep -q '^read '; then
  fail "QEMU read a child whose parent changed (the oracle changed?)"
fi
out=$(nbdkit -U - "$(plugin_so vmdk)" "file=$tmpdir/cid/top.vmdk" -r \
        --run 'nbdinfo --size "$uri"' 2>&1) &&
  fail "a child whose parent changed was served: $out"
grep -q "has changed since this delta disk was made" <<<"$out" ||
  fail "no clear message for a changed parent: $out"
nbdkit -U - "$(plugin_so vmdk)" "file=$tmpdir/cid/top.vmdk" -r \
  ignore-parent-cid=true --run 'nbdinfo --size "$uri"' >/dev/null ||
  fail "ignore-parent-cid=true did not serve the child"
# ignore-parent-cid=true covers the whole chain: here the grandparent
# changed (mid's parentCID no longer matches), top's own parent did not.
mkdir "$tmpdir/cid2"
cp "$base" "$mid" "$top" "$tmpdir/cid2/"
qemu-io -c 'write -P 7 0 4k' "$tmpdir/cid2/$(basename "$base")" >/dev/null ||
  fail "qemu-io write into the grandparent"
nbdkit -U - "$(plugin_so vmdk)" "file=$tmpdir/cid2/top.vmdk" -r \
  ignore-parent-cid=true --run 'nbdinfo --size "$uri"' >/dev/null ||
  fail "ignore-parent-cid=true did not reach the parent's own parent"
echo "ok: a changed parent refused"

# qemu-img only creates vmdk children of vmdk parents, and QEMU reads a
# vmdk's parent only if it is a vmdk with the CID the child expects: make
# a child, point its parentFileNameHint at a qcow2 file (same name
# length), and build the oracle from QEMU's reading of the child alone
# ("backing": null, where qemu-img map says present) over the qcow2
# parent's content.
qb="$tmpdir/qb.qcow"; qc="$tmpdir/onq.vmdk"
qemu-img create -q -f vmdk "$tmpdir/qb.vmdk" $size
qemu-img create -q -f vmdk -b qb.vmdk -F vmdk "$qc" || fail "vmdk child"
qemu-img create -q -f qcow2 "$qb" $size
qemu_io_cmds -f qcow2 "$qb" < "$tmpdir/ops1"
fill "$qc" $size
perl -pi -e 's/parentFileNameHint="qb\.vmdk"/parentFileNameHint="qb.qcow"/' "$qc"
grep -aq 'parentFileNameHint="qb.qcow"' "$qc" || fail "editing $qc"
alone="json:{\"driver\":\"vmdk\",\"backing\":null,\"file\":{\"driver\":\"file\",\"filename\":\"$qc\"}}"
qemu-img convert -U -O raw "$alone" "$tmpdir/onq.top.raw" &&
  qemu-img map -U --output=json "$alone" > "$tmpdir/onq.map" &&
  qemu-img convert -U -O raw -f qcow2 "$qb" "$tmpdir/onq.raw" ||
  fail "qemu-img (vmdk on qcow2 oracle)"
python3 - "$tmpdir/onq.map" "$tmpdir/onq.top.raw" "$tmpdir/onq.raw" <<'PY' ||
import json, sys
m = json.load(open(sys.argv[1]))
top = open(sys.argv[2], "rb").read()
with open(sys.argv[3], "r+b") as f:
    for e in m:
        if e["present"]:
            f.seek(e["start"])
            f.write(top[e["start"]:e["start"] + e["length"]])
PY
  fail "building the oracle"
serve_vmdk "$qc" -r
nbdcopy -- "$(uri_of "$sock")" "$tmpdir/onq.out" || fail "nbdcopy"
assert_same "$tmpdir/onq.raw" "$tmpdir/onq.out" "vmdk child of a qcow2 parent"
stop_server
echo "ok: vmdk child of a qcow2 parent"

if [ -f "$(plugin_so qcow2)" ]; then
  qv="$tmpdir/onv.qcow2"
  qemu-img create -q -f qcow2 -b "$(basename "$base")" -F vmdk "$qv" ||
    fail "qcow2 on vmdk"
  gen_ops --seed $((seed*1000+99)) --size $size --count 30 > "$tmpdir/opsq"
  qemu_io_cmds -f qcow2 "$qv" < "$tmpdir/opsq"
  new_sock
  start_nbdkit "$sock" "$(plugin_so qcow2)" "file=$qv" -r
  qemu-img convert -U -O raw "$qv" "$tmpdir/qv.raw"
  nbdcopy -- "$(uri_of "$sock")" "$tmpdir/qv.out"
  assert_same "$tmpdir/qv.raw" "$tmpdir/qv.out" "qcow2 on a vmdk backing"
  stop_server
  echo "ok: qcow2 child of a vmdk parent (qcow2 plugin)"
fi

# Several extents: 2 GiB + 4 MiB, written around the extent boundary.
big=$((2*1024*1024*1024 + 4*1024*1024))
for sub in twoGbMaxExtentSparse twoGbMaxExtentFlat; do
  img="$tmpdir/big-$sub.vmdk"
  qemu-img create -q -f vmdk -o subformat=$sub "$img" $big
  fill "$img" $big $((2*1024*1024*1024 - 3*1024*1024)):$((7*1024*1024))
  serve_vmdk "$img" -r
  out=$(qemu-img compare -U -f vmdk "$img" -F raw "$(uri_of "$sock")" 2>&1) ||
    fail "qemu-img compare $sub (2 extents): $out"
  stop_server
  rm -f "$tmpdir"/big-*
  echo "ok: $sub with 2 extents"
done
echo "all ok"
