#!/bin/bash
# SPDX-License-Identifier: BSD-3-Clause
# Read matrix, part 2: backing chains (depth >= 3, a raw base, backings
# shorter and longer than the overlay, mixed compat/cluster sizes/extended
# L2/compression), backing=none, external data files (data_file_raw on and
# off) and internal snapshots (export list, snapshot=NAME|ID).  The oracle
# is qemu-img (convert, compare, map) on the same files.
#   test-qcow2-read-chains.sh [SEED]
source "${TOP_SRCDIR:?run the tests through ctest, which sets TOP_SRCDIR}/tests/functions.sh"
source "$TOP_SRCDIR/tests/qcow2/qcow2-functions.sh"

seed=${1:-${QCOW2_SEED:-1}}
echo "seed $seed"
n=0
d=$tmpdir
cd "$d"     # relative names given to qemu-img create resolve here
M=$((1024*1024))

# fill IMG FORMAT SIZE CLUSTER [COUNT [extra gen args]]
fill () {
  local img=$1 fmt=$2 size=$3 cs=$4 count=${5:-30}; shift 5 2>/dev/null || shift $#
  n=$((n+1))
  gen_ops --seed $((seed*1000+n)) --size "$size" --cluster "$cs" \
    --count "$count" "$@" > "$img.ops"
  fill_image "$img" "$fmt" "$img.ops"
}

# check_ro IMG NAME [serve params] -- [mapcmp args]: serve IMG read-only
# and compare with qemu's view of the same chain.
check_ro () {
  local img=$1 name=$2; shift 2
  local params=() sock
  while [ $# -gt 0 ] && [ "$1" != -- ]; do params+=("$1"); shift; done
  [ "${1:-}" = -- ] && shift
  new_sock
  serve_qcow2 "$sock" "$img" -r "${params[@]}"
  ORACLE=(-f qcow2 "$img")
  check_export_read "$(uri_of "$sock")" "$d/$name" "$@"
  stop_server
  echo "ok: $name"
}

# --- chain 1: raw base (sparse, 8M) <- qcow2 v2 4K (10M) <- v3 64K ext L2
#     (12M): depth 3, every backing shorter than its overlay.
truncate -s $((8*M)) "$d/c1-base.raw"
fill "$d/c1-base.raw" raw $((8*M)) 4096 30
qemu-img create -q -f qcow2 -o compat=0.10,cluster_size=4096 \
  -b c1-base.raw -F raw "$d/c1-mid.qcow2" $((10*M))
fill "$d/c1-mid.qcow2" qcow2 $((10*M)) 4096 30
qemu-img create -q -f qcow2 -o compat=1.1,extended_l2=on \
  -b c1-mid.qcow2 -F qcow2 "$d/c1-top.qcow2" $((12*M))
fill "$d/c1-top.qcow2" qcow2 $((12*M)) 65536 30
check_image "$d/c1-top.qcow2"
# Depth 2 is the raw base: its holes are known only to SEEK_HOLE.
check_ro "$d/c1-top.qcow2" chain1 -- --skip-depth 2
check_ro "$d/c1-mid.qcow2" chain1-mid -- --skip-depth 1

# backing=none: the top image alone (oracle: qemu with backing null).
new_sock
serve_qcow2 "$sock" "$d/c1-top.qcow2" -r backing=none
ORACLE=("json:{\"driver\":\"qcow2\",\"backing\":null,\"file\":{\"driver\":\"file\",\"filename\":\"$d/c1-top.qcow2\"}}")
check_export_read "$(uri_of "$sock")" "$d/c1-none"
stop_server
# Even without -r, backing=none is read-only: a write would fill the rest
# of a new cluster with zeroes where the backing file has data.
if [ -z "${QCOW2_TEST_PEER:-}" ]; then
  new_sock
  serve_qcow2 "$sock" "$d/c1-top.qcow2" backing=none
  nbdinfo "$(uri_of "$sock")" | grep -q 'is_read_only: true' ||
    fail "backing=none served the image writable"
  stop_server
fi
echo "ok: backing=none"

# --- chain 2: depth 4, qcow2 all the way, compressed (zstd) base, a mid
#     layer longer than its overlay, 512-byte and 2M clusters.
qemu-img create -q -f raw "$d/c2-src.raw" $((6*M))
fill "$d/c2-src.raw" raw $((6*M)) 65536 20
qemu-img convert -c -f raw -O qcow2 -o compression_type=zstd,cluster_size=4096 \
  "$d/c2-src.raw" "$d/c2-base.qcow2"
qemu-img create -q -f qcow2 -o cluster_size=512,refcount_bits=1 \
  -b c2-base.qcow2 -F qcow2 "$d/c2-l1.qcow2" $((9*M))
fill "$d/c2-l1.qcow2" qcow2 $((9*M)) 512 30
qemu-img create -q -f qcow2 -o cluster_size=2M,extended_l2=on \
  -b "$d/c2-l1.qcow2" -F qcow2 "$d/c2-l2.qcow2" $((7*M))   # absolute path, in dir
fill "$d/c2-l2.qcow2" qcow2 $((7*M)) $((2*M)) 30
qemu-img create -q -f qcow2 -o compat=1.1,cluster_size=16384,refcount_bits=64 \
  -b c2-l2.qcow2 -F qcow2 "$d/c2-top.qcow2" $((8*M))
fill "$d/c2-top.qcow2" qcow2 $((8*M)) 16384 30 --compress
check_image "$d/c2-top.qcow2"
check_ro "$d/c2-top.qcow2" chain2
check_ro "$d/c2-l1.qcow2" chain2-l1

# --- chain 3: an overlay
#     over a raw base that it does not fill at all, then partly.
qemu-img create -q -f raw "$d/c3-base.img" $((4*M))
fill "$d/c3-base.img" raw $((4*M)) 65536 10
qemu-img create -q -f qcow2 -b c3-base.img -F raw "$d/c3-top.qcow2" $((4*M))
check_ro "$d/c3-top.qcow2" chain3-raw-unfilled -- --skip-depth 1
fill "$d/c3-top.qcow2" qcow2 $((4*M)) 65536 10
check_ro "$d/c3-top.qcow2" chain3-raw -- --skip-depth 1

# --- external data files: data_file_raw=off and on, two cluster sizes.
for raw in off on; do
  for cs in 4096 65536; do
    name=df-$raw-$cs
    qemu-img create -q -f qcow2 \
      -o "data_file=$name.data,data_file_raw=$raw,cluster_size=$cs" \
      "$d/$name.qcow2" $((6*M))
    fill "$d/$name.qcow2" qcow2 $((6*M)) "$cs" 40
    check_image "$d/$name.qcow2"
    check_ro "$d/$name.qcow2" "$name"
    if [ $raw = on ]; then
      # The data file itself is the disk content.
      new_sock
      serve_qcow2 "$sock" "$d/$name.qcow2" -r
      nbdcopy -- "$(uri_of "$sock")" "$d/$name.export.raw"
      assert_same "$d/$name.data" "$d/$name.export.raw" "raw data file $name"
      stop_server
    fi
  done
done
# A data file under a backing chain.
qemu-img create -q -f qcow2 -o data_file=df-chain.data -b c1-top.qcow2 -F qcow2 \
  "$d/df-chain.qcow2" $((12*M))
fill "$d/df-chain.qcow2" qcow2 $((12*M)) 65536 30
check_ro "$d/df-chain.qcow2" df-chain -- --skip-depth 3

# --- internal snapshots: the export list has "" plus one export per
#     snapshot, each reading like qemu-img convert -l of that snapshot.
for cs in 65536 4096; do
  img="$d/snap-$cs.qcow2"
  qemu-img create -q -f qcow2 -o cluster_size=$cs "$img" $((5*M))
  fill "$img" qcow2 $((5*M)) $cs 30 --compress
  qemu-img snapshot -c first "$img"
  fill "$img" qcow2 $((5*M)) $cs 30
  qemu-img snapshot -c "second snap" "$img"
  fill "$img" qcow2 $((5*M)) $cs 30
  qemu-img snapshot -c third "$img"
  qemu-img snapshot -d third "$img"          # a deleted one leaves holes
  fill "$img" qcow2 $((5*M)) $cs 20
  check_image "$img"

  new_sock
  serve_qcow2 "$sock" "$img"
  nbdinfo --list --json "$(uri_of "$sock")" > "$d/list.json"
  python3 - "$d/list.json" <<'EOF' || fail "export list of a snapshotted image"
import json, sys
exports = sorted(e["export-name"] for e in json.load(open(sys.argv[1]))["exports"])
want = sorted(["", "first", "second snap"])
if exports != want:
    sys.exit("exports %r, want %r" % (exports, want))
EOF
  ORACLE=(-f qcow2 "$img")
  check_export_read "$(uri_of "$sock")" "$d/snap-active"
  for s in first "second snap"; do
    ORACLE=(-l "snapshot.name=$s" -f qcow2 "$img")
    check_export_read "nbd+unix:///${s// /%20}?socket=$sock" "$d/snap-$s"
    # Snapshot exports are read-only.
    if qemu-io -f raw -c 'write 0 512' "nbd+unix:///${s// /%20}?socket=$sock" \
         >/dev/null 2>&1; then
      fail "write to snapshot export '$s' succeeded"
    fi
  done
  stop_server

  # snapshot=NAME and snapshot=ID parameters.
  id=$(qemu-img snapshot -l "$img" | awk '$2 == "first" {print $1}')
  [ -n "$id" ] || fail "no id for snapshot first"
  for sel in first "$id"; do
    new_sock
    serve_qcow2 "$sock" "$img" "snapshot=$sel"
    ORACLE=(-l snapshot.name=first -f qcow2 "$img")
    check_export_read "$(uri_of "$sock")" "$d/snap-param"
    # The list and the description name the snapshot, not the active image.
    nbdinfo --list --json "$(uri_of "$sock")" > "$d/list-param.json"
    python3 - "$d/list-param.json" "$sel" <<'EOF' || fail "export list with snapshot=$sel"
import json, sys
e = [e for e in json.load(open(sys.argv[1]))["exports"] if e["export-name"] == ""][0]
if "snapshot " + sys.argv[2] not in e.get("description", ""):
    sys.exit("default export described as %r" % e.get("description"))
EOF
    stop_server
  done
  # A snapshot that does not exist: a clear error to the client that asks
  # for it as an export (the server survives), and at start-up with
  # snapshot=.
  new_sock
  serve_qcow2 "$sock" "$img" 2>"$d/nosuch.log"
  if nbdinfo --size "nbd+unix:///nosuch?socket=$sock" >/dev/null 2>&1; then
    fail "export 'nosuch' was served"
  fi
  stop_server
  if [ -z "${QCOW2_TEST_PEER:-}" ]; then
    grep -q "no internal snapshot named 'nosuch'" "$d/nosuch.log" ||
      fail "no clear error for a missing snapshot: $(cat "$d/nosuch.log")"
    out=$(serve_qcow2_stops "$sock" "$img" snapshot=nosuch)
    grep -q "no internal snapshot named 'nosuch'" <<<"$out" ||
      fail "no clear start-up error for snapshot=nosuch: $out"
  fi
  echo "ok: snapshots cluster $cs"
done

echo "read chains: OK"
