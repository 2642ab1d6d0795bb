#!/bin/bash
# SPDX-License-Identifier: BSD-3-Clause
# compress=zlib|zstd: nbdcopy of a raw file (compressible text, zeroes,
# random data) into a create= + compress= export makes a compressed image.
# QEMU is the oracle: qemu-img check finds no error or leak and counts
# compressed clusters (as many as in qemu-img convert -c's image of the
# same file), qemu-img compare finds the image equal to the raw file,
# qemu-img info shows the compression type, and the file is within 10 %
# of qemu-img convert -c -o compression_type=...'s.  Then partial and
# whole-cluster overwrites and zeroes through the plugin (the normal
# write path over compressed clusters) against the same qemu-io commands
# on a raw mirror.  The last, partial cluster of an odd-sized disk is
# compressed as qemu-img convert -c does.  A compress= that contradicts
# the image's compression type is refused.
source "${TOP_SRCDIR:?run the tests through ctest, which sets TOP_SRCDIR}/tests/functions.sh"
source "$TOP_SRCDIR/tests/qcow2/qcow2-functions.sh"

[ -n "${QCOW2_TEST_PEER:-}" ] && skip "compress= is specific to the plugin"
qcow2_filter_mode && skip "compress= is a parameter of the plugin"
cd "$tmpdir"
M=$((1024*1024))

# 32 MiB: per MiB, in turn text, zeroes, random, text (fixed seed).
python3 - src.raw <<'EOF'
import random, sys
r = random.Random(19)
words = ["".join(r.choice("abcdefghijklmnopqrstuvwxyz")
                 for _ in range(r.randint(2, 9))) for _ in range(400)]
M = 1 << 20
with open(sys.argv[1], "wb") as f:
    for i in range(32):
        k = i % 4
        if k == 1:
            f.write(bytes(M))
        elif k == 2:
            f.write(r.randbytes(M))
        else:
            t = bytearray()
            while len(t) < M:
                t += (" ".join(r.choice(words) for _ in range(12)) + "\n").encode()
            f.write(t[:M])
EOF

types=(zlib)
if nbdkit "$(plugin_so qcow2)" --dump-plugin | grep -q '^qcow2_zstd=yes'; then
  types+=(zstd)
fi

# info IMAGE KEY: a field of qemu-img check --output=json.
check_field () {
  qemu-img check -U --output=json "$1" |
    python3 -c 'import json,sys; print(json.load(sys.stdin).get(sys.argv[1], 0))' "$2"
}

for ct in "${types[@]}"; do
  for cs in 65536 4096; do
    name=$ct-$cs
    img=$tmpdir/$name.qcow2
    new_sock
    serve_qcow2 "$sock" "$img" create=32M "create-cluster-size=$cs" \
      "compress=$ct"
    nbdcopy -- src.raw "$(uri_of "$sock")" || fail "$name: nbdcopy"
    stop_server

    check_image "$img"
    out=$(qemu-img compare -f raw src.raw -F qcow2 "$img" 2>&1) ||
      fail "$name: qemu-img compare: $out"
    got=$(qemu-img info --output=json "$img" | python3 -c '
import json, sys
print(json.load(sys.stdin)["format-specific"]["data"].get("compression-type"))')
    [ "$got" = "$ct" ] || fail "$name: compression type $got"

    qemu-img convert -c -f raw -O qcow2 \
      -o "compression_type=$ct,cluster_size=$cs" src.raw "ref-$name.qcow2" ||
      fail "$name: qemu-img convert -c"
    ours=$(check_field "$img" compressed-clusters)
    theirs=$(check_field "ref-$name.qcow2" compressed-clusters)
    [ "$theirs" -gt 0 ] || fail "$name: qemu-img convert -c compressed nothing"
    [ "$ours" -ge $(( theirs * 9 / 10 )) ] ||
      fail "$name: $ours compressed clusters, qemu-img convert -c: $theirs"
    s1=$(stat -c %s "$img") s2=$(stat -c %s "ref-$name.qcow2")
    (( s1 * 10 <= s2 * 11 && s1 * 10 >= s2 * 9 )) ||
      fail "$name: image is $s1 bytes, qemu-img convert -c: $s2 (not within 10 %)"
    echo "$name: $ours compressed clusters ($theirs), $s1 bytes ($s2)"

    # Overwrites through the plugin: part of a compressed cluster (text at
    # MiB 0 and 3), a whole compressed cluster, zeroes over part of one and
    # over a whole one, a whole new compressible cluster in the zero MiB
    # (compressed) and a partial one there (normal), a write across
    # compressed clusters.  The same commands on a raw mirror.
    cat > ops <<EOF
write -P 0xa5 100000 3000
write -P 0x11 $((3*M + cs)) $cs
write -z $((3*M + 2*cs + 100)) 500
write -z $((2*cs)) $cs
write -P 0x22 $((M + cs)) $cs
write -P 0x33 $((M + 3*cs + 7)) 1000
write -P 0x44 $((12*M + cs/2)) $((3*cs))
EOF
    cp src.raw mirror.raw
    qemu_io_cmds -f raw mirror.raw < ops
    new_sock
    serve_qcow2 "$sock" "$img" "compress=$ct"
    qemu_io_cmds -f raw "$(uri_of "$sock")" < ops
    stop_server
    check_image "$img"
    out=$(qemu-img compare -f raw mirror.raw -F qcow2 "$img" 2>&1) ||
      fail "$name: after overwrites: qemu-img compare: $out"
    after=$(check_field "$img" compressed-clusters)
    [ "$after" -gt 0 ] || fail "$name: no compressed cluster left"
    rm -f "ref-$name.qcow2"
  done
done

# A disk whose size is not a multiple of the cluster size: the last,
# partial cluster is compressed too (padded with zeroes), as QEMU's
# driver does for a compressed write there (qemu-io write -c; qemu-img
# convert -c 7.2 writes that cluster uncompressed).  1 MiB + 40 KiB of
# text: 17 clusters of 64 KiB, all compressed.
{ head -c $M src.raw
  dd if=src.raw bs=4096 skip=$((3*M/4096)) count=10 status=none; } > odd.raw
for ct in "${types[@]}"; do
  name=odd-$ct
  img=$tmpdir/$name.qcow2
  new_sock
  serve_qcow2 "$sock" "$img" create=$((M + 40960)) "compress=$ct"
  nbdcopy -- odd.raw "$(uri_of "$sock")" || fail "$name: nbdcopy"
  stop_server
  check_image "$img"
  out=$(qemu-img compare -f raw odd.raw -F qcow2 "$img" 2>&1) ||
    fail "$name: qemu-img compare: $out"
  ours=$(check_field "$img" compressed-clusters)
  [ "$ours" = 17 ] || fail "$name: $ours compressed clusters of 17"
done
# The oracle's own behaviour, so that the claim above stays true.
qemu-img create -q -f qcow2 ref-odd.qcow2 $((M + 40960))
qemu_io_cmds -f qcow2 ref-odd.qcow2 <<<"write -c -P 0x41 $M 40960"
[ "$(check_field ref-odd.qcow2 compressed-clusters)" = 1 ] ||
  fail "qemu-io write -c did not compress the last, partial cluster"

# (Sockets in $tmpdir, not "-U -": nbdkit 1.32 failing at start-up leaves
# its /tmp/nbdkitXXXXXX directory behind.)
# compress= must match the image's compression type.
img=$tmpdir/zlib-65536.qcow2
if [[ " ${types[*]} " = *" zstd "* ]]; then
  out=$(nbdkit -U "$tmpdir/cw1.sock" "$(plugin_so qcow2)" "file=$img" compress=zstd \
          --run 'nbdinfo --size "$uri"' 2>&1) &&
    fail "compress=zstd on a zlib image was accepted"
  grep -q "compression type is zlib" <<<"$out" ||
    fail "compress=zstd on a zlib image: unclear error: $out"
fi
# ... and create-compression-type= must not contradict it.
out=$(nbdkit -U "$tmpdir/cw2.sock" "$(plugin_so qcow2)" "file=$tmpdir/new.qcow2" create=1M \
        compress=zlib create-compression-type=zstd --run true 2>&1) &&
  fail "compress=zlib with create-compression-type=zstd was accepted"
[ ! -e "$tmpdir/new.qcow2" ] || fail "contradicting options created an image"
out=$(nbdkit -U "$tmpdir/cw3.sock" "$(plugin_so qcow2)" "file=$img" compress=lz4 \
        --run true 2>&1) && fail "compress=lz4 was accepted"
exit 0
