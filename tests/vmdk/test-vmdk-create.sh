#!/bin/bash
# SPDX-License-Identifier: BSD-3-Clause
# create=SIZE with subformat= and adapter-type=: the new image opens in
# qemu-img info (format, size, subformat in the format-specific data) and
# qemu-img check; data written through the plugin reads back identically
# through QEMU.  Bad options are refused.
source "${TOP_SRCDIR:?run the tests through ctest, which sets TOP_SRCDIR}/tests/functions.sh"
source "$TOP_SRCDIR/tests/vmdk/vmdk-functions.sh"

size=$((5*1024*1024 + 512))
i=0
for sub in monolithicSparse monolithicFlat twoGbMaxExtentSparse \
           twoGbMaxExtentFlat streamOptimized; do
  for at in ide lsilogic; do
    i=$((i+1))
    img="$tmpdir/c$i.vmdk"
    serve_vmdk "$img" create=$size subformat=$sub adapter-type=$at
    uri=$(uri_of "$sock")
    if [ $sub != streamOptimized ]; then
      qemu_io_cmds -f raw "$uri" <<EOF2
write -P 0x5a 1000 70000
write -P 0xa5 $((size - 4096)) 4096
EOF2
    fi
    stop_server
    info=$(qemu-img info -U --output=json "$img") || fail "qemu-img info $img"
    python3 -c '
import json, sys
i = json.load(sys.stdin)
assert i["format"] == "vmdk", i["format"]
assert i["virtual-size"] == int(sys.argv[2]), i["virtual-size"]
assert i["format-specific"]["data"]["create-type"] == sys.argv[1]
' "$sub" $size <<<"$info" || fail "$sub/$at: qemu-img info: $info"
    grep -aq "ddb.adapterType = \"$at\"" "$img" ||
      fail "$sub: adapter type $at not in the descriptor"
    check_image "$img"
    if [ $sub != streamOptimized ]; then
      out=$(qemu-io -r -U -f vmdk -c "read -P 0x5a 1000 70000" \
        -c "read -P 0xa5 $((size - 4096)) 4096" -c "read -P 0 0 1000" \
        "$img" 2>&1)
    else
      out=$(qemu-io -r -U -f vmdk -c "read -P 0 0 $size" "$img" 2>&1)
    fi
    if grep -q 'Pattern verification failed' <<<"$out" ||
       ! grep -q '^read ' <<<"$out"; then
      fail "$sub: QEMU reads other data than the plugin wrote: $out"
    fi
    echo "ok: create $sub adapter-type=$at"
  done
done

# Invalid options: nbdkit refuses to start, with a message.
for bad in subformat=vmfs adapter-type=scsi zeroed-grain=maybe; do
  out=$(nbdkit -U "$tmpdir/bad.sock" "$(plugin_so vmdk)" \
        "file=$tmpdir/bad.vmdk" create=1M $bad --run true 2>&1) &&
    fail "create with $bad succeeded"
  grep -q "invalid vmdk creation option" <<<"$out" ||
    fail "create with $bad: unclear message: $out"
  [ ! -e "$tmpdir/bad.vmdk" ] || fail "create with $bad left a file"
done
# A sparse image larger than the plugin can open (its grain tables, all
# made at creation, would exceed the engine's memory limit) is refused
# before any file is made; the largest one it can open is made.
new_sock
out=$(nbdkit_fails 30 -U "$sock" "$(plugin_so vmdk)" "file=$tmpdir/huge.vmdk" \
      create=5T --run true) && fail "create=5T succeeded: $out"
grep -q "would have 320 MiB of grain tables, more than the 256 MiB" <<<"$out" ||
  fail "create=5T: unclear message: $out"
[ ! -e "$tmpdir/huge.vmdk" ] || fail "create=5T left a file"
new_sock
start_nbdkit "$sock" "$(plugin_so vmdk)" "file=$tmpdir/max.vmdk" create=4T
[ "$(nbdinfo --size "$(uri_of "$sock")")" = $((4 << 40)) ] || fail "create=4T"
stop_nbdkit
rm -f "$tmpdir/max.vmdk"
echo "ok: sparse sizes bounded by the grain table limit"
echo "all ok"
