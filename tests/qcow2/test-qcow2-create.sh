#!/bin/bash
# SPDX-License-Identifier: BSD-3-Clause
# create=SIZE: the plugin makes a new image with the requested options.
# Each one must be accepted by qemu-img check, show the requested options
# in qemu-img info --output=json, and hold what was written through the
# plugin when read by qemu-io / qemu-img convert.  An existing file is
# never overwritten by create=; bad create options are refused clearly.
source "${TOP_SRCDIR:?run the tests through ctest, which sets TOP_SRCDIR}/tests/functions.sh"
source "$TOP_SRCDIR/tests/qcow2/qcow2-functions.sh"

[ -n "${QCOW2_TEST_PEER:-}" ] && skip "create= is specific to the plugin"
cd "$tmpdir"
M=$((1024*1024))
n=0

# mk NAME SIZE EXPECT-JSON PARAMS...: create through the plugin, write a
# seeded workload through it, check with QEMU.  EXPECT-JSON is a python
# dict literal of expected `qemu-img info` fields ("format-specific"
# data fields go under "spec").
mk () {
  local name=$1 size=$2 expect=$3; shift 3
  local img="$tmpdir/$name.qcow2"
  n=$((n+1))
  new_sock
  serve_qcow2 "$sock" "$img" "create=$size" "$@"
  [ -f "$img" ] || fail "$name: create=$size did not create $img"
  # Fresh image: all zeroes, size as requested.
  [ "$(nbdinfo --size "$(uri_of "$sock")")" = "$size" ] ||
    fail "$name: export size is not $size"
  gen_ops --mode mirror --seed $((n*77)) --size "$size" --count 40 \
    > "$name.ops"
  qemu_io_cmds -f raw "$(uri_of "$sock")" < "$name.ops"
  stop_server

  check_image "$img"
  qemu-img info --output=json "$img" > "$name.info.json"
  python3 - "$name.info.json" "$expect" <<'EOF' || fail "$name: qemu-img info does not match: $(cat "$name.info.json")"
import ast, json, sys
info = json.load(open(sys.argv[1]))
want = ast.literal_eval(sys.argv[2])
spec = info.get("format-specific", {}).get("data", {})
bad = []
if info.get("format") != "qcow2":
    bad.append("format %r" % info.get("format"))
for k, v in want.items():
    if k == "spec":
        for sk, sv in v.items():
            if spec.get(sk) != sv:
                bad.append("%s = %r, want %r" % (sk, spec.get(sk), sv))
    elif info.get(k) != v:
        bad.append("%s = %r, want %r" % (k, info.get(k), v))
if bad:
    sys.exit("; ".join(bad))
EOF
  # Content: what qemu-io wrote through the plugin, applied to a zeroed
  # mirror (or to the backing content), must be what QEMU reads.
  if [ -n "${mirror_base:-}" ]; then
    cp "$mirror_base" "$name.mirror"
  else
    truncate -s "$size" "$name.mirror"
  fi
  qemu_io_cmds -f raw "$name.mirror" < "$name.ops"
  local out
  out=$(qemu-img compare -f qcow2 -F raw "$img" "$name.mirror" 2>&1) ||
    fail "$name: content differs from the mirror: $out"
  qemu-io -f qcow2 -c 'read 0 4096' "$img" >/dev/null || fail "$name: qemu-io cannot read"
  echo "ok: $name ($*)"
}

mk default $((8*M)) \
  "{'virtual-size': $((8*M)), 'cluster-size': 65536, 'spec': {'compat': '1.1', 'refcount-bits': 16, 'compression-type': 'zlib', 'extended-l2': False}}"
mk v2-4k $((4*M)) \
  "{'virtual-size': $((4*M)), 'cluster-size': 4096, 'spec': {'compat': '0.10', 'refcount-bits': 16}}" \
  create-compat=0.10 create-cluster-size=4096
mk c512-r1 $((2*M + 512)) \
  "{'virtual-size': $((2*M + 512)), 'cluster-size': 512, 'spec': {'compat': '1.1', 'refcount-bits': 1}}" \
  create-cluster-size=512 create-refcount-bits=1
mk r64-zstd $((8*M)) \
  "{'cluster-size': 65536, 'spec': {'refcount-bits': 64, 'compression-type': 'zstd'}}" \
  create-refcount-bits=64 create-compression-type=zstd
mk xl2-32k $((8*M)) \
  "{'cluster-size': 32768, 'spec': {'extended-l2': True}}" \
  create-cluster-size=32K create-extended-l2=true
mk c2m $((6*M)) \
  "{'cluster-size': $((2*M)), 'spec': {'refcount-bits': 8}}" \
  create-cluster-size=2M create-refcount-bits=8
mk big-sparse $((1024*1024*M)) \
  "{'virtual-size': $((1024*1024*M))}" create-cluster-size=2M

# With a backing file (relative name, stored as given).
qemu-img create -q -f raw base.raw $((4*M))
qemu-io -f raw -c 'write -P 0x42 0 1M' -c 'write -P 0x43 3M 512k' base.raw >/dev/null
mirror_base=$tmpdir/base.raw
mk backed $((4*M)) \
  "{'backing-filename': 'base.raw', 'backing-filename-format': 'raw', 'virtual-size': $((4*M))}" \
  create-backing=base.raw create-backing-format=raw
qemu-img create -q -f qcow2 base2.qcow2 $((4*M))
qemu-io -f qcow2 -c 'write -P 0x44 1M 1M' base2.qcow2 >/dev/null
qemu-img convert -f qcow2 -O raw base2.qcow2 base2.raw
mirror_base=$tmpdir/base2.raw
mk backed-qcow2 $((4*M)) \
  "{'backing-filename': 'base2.qcow2', 'backing-filename-format': 'qcow2'}" \
  create-backing=base2.qcow2 create-backing-format=qcow2 create-compat=0.10
mirror_base=

# create= never overwrites an existing image.
cp default.qcow2 default.orig
new_sock
serve_qcow2 "$sock" default.qcow2 create=$((2*M)) create-cluster-size=4096
[ "$(nbdinfo --size "$(uri_of "$sock")")" = $((8*M)) ] ||
  fail "create= replaced an existing image"
stop_server
cmp default.qcow2 default.orig || fail "create= modified an existing image"
echo "ok: existing image kept"

# Sizes in whole sectors, rounded up as qemu-img create rounds them (QEMU
# reads the virtual size in sectors and would drop a partial last one),
# and an empty disk whose L1 table takes no cluster (none leaked).
for sz in 0 1 65537; do
  want=$(( (sz + 511) / 512 * 512 ))
  new_sock
  serve_qcow2 "$sock" "odd$sz.qcow2" create=$sz
  got=$(nbdinfo --size "$(uri_of "$sock")")
  stop_server
  [ "$got" = $want ] || fail "create=$sz: export of $got bytes, want $want"
  check_image "odd$sz.qcow2"
  got=$(qemu-img info --output=json "odd$sz.qcow2" |
        python3 -c 'import json, sys; print(json.load(sys.stdin)["virtual-size"])')
  [ "$got" = $want ] || fail "create=$sz: qemu-img sees $got bytes, want $want"
done
echo "ok: sizes rounded to whole sectors, an empty disk checks clean"

# Bad creation options are refused with a clear message.
bad () {
  local re=$1; shift
  local out rc=0
  # Not "-U -": nbdkit 1.32 leaves its /tmp/nbdkitXXXXXX directory
  # behind when it fails after creating it.
  local sock=$tmpdir/bad-$RANDOM$RANDOM.sock
  out=$(timeout 10 env ${KVM_SANITIZER_PRELOAD:+LD_PRELOAD=$KVM_SANITIZER_PRELOAD} \
          nbdkit -U "$sock" "$(plugin_so qcow2)" "file=$tmpdir/bad.qcow2" "$@" \
          --run 'nbdinfo --size "$uri"' 2>&1) || rc=$?
  [ $rc = 0 ] && fail "accepted: $*"
  # Under the SANITIZE build, nbdkit with the ASan runtime preloaded can
  # hang in exit() after a start-up error (a libp11-kit destructor waits
  # on the locale lock; nbdkit's own file plugin does the same).  The
  # error has been reported by then; elsewhere a hang is a failure.
  if [ $rc = 124 ] && [ "$KVM_SANITIZE" != 1 ]; then
    fail "nbdkit hung on: $*"
  fi
  grep -qE -- "$re" <<<"$out" || fail "no clear error for $*: $out"
  [ -e "$tmpdir/bad.qcow2" ] && fail "an image was left behind for $*"
  echo "ok: refused ${*:-(no create=, missing file)}"
}
bad "cluster.size" create=1M create-cluster-size=1000
bad "cluster.size" create=1M create-cluster-size=4M
bad "refcount.bits" create=1M create-refcount-bits=3
bad "compat" create=1M create-compat=2.0
bad "compression.type" create=1M create-compression-type=lzo
bad "extended L2|16K" create=1M create-extended-l2=true create-cluster-size=4096
bad "compat" create=1M create-compat=0.10 create-refcount-bits=64
bad "file=|No such file|create=" 
# A new image that could not be served is not left behind (qemu-img
# create refuses these too).
bad "unknown or unsupported format 'bogus'.*|the new image cannot be opened: removed" \
  create=1M create-backing=base2.qcow2 create-backing-format=bogus
bad "missing.qcow2.*No such file" create=1M create-backing=missing.qcow2 \
  create-backing-format=qcow2
bad "refusing file '/etc/passwd'" create=1M create-backing=/etc/passwd \
  create-backing-format=raw

echo "create: OK"
