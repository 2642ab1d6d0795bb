#!/bin/bash
# SPDX-License-Identifier: BSD-3-Clause
# Make the seed corpus of fuzz_snapshot (tests/fuzz/corpus/snapshot/):
# chain directories written by the snapshot filter itself (nbdkit with
# --filter=snapshot over a 1 MiB file, data written with qemu-io, the
# operations sent with nbdkit-snapshot-ctl), and an interrupted commit
# (KVM_SNAPSHOT_CRASH_AT=commit-marked), each encoded as fuzz_snapshot.c
# reads it: the state text, then "\n@@layer ID\n" and the non-zero 4 KiB
# sectors of each layer file (vhdx_sparse.h), then one byte that chooses
# the operation the target tries.
#   tests/fuzz/make-snapshot-corpus.sh [BUILD_DIR]
set -euo pipefail
top=$(cd "$(dirname "$0")/../.." && pwd)
build=$(cd "${1:-$top/build}" && pwd)
out=$top/tests/fuzz/corpus/snapshot
filter=$build/filters/snapshot/nbdkit-snapshot-filter.so
ctl=$build/filters/snapshot/nbdkit-snapshot-ctl
[ -f "$filter" ] && [ -x "$ctl" ] || { echo "$0: build $build first" >&2; exit 1; }
mkdir -p "$out"
work=$(mktemp -d /tmp/snapshot-corpus.XXXXXX)
pid=
cleanup () { [ -z "$pid" ] || kill -9 "$pid" 2>/dev/null || :; rm -rf "$work"; }
trap cleanup EXIT
cd "$work"

encode () {   # encode DIR OUT OPBYTE
  python3 - "$@" <<'PY'
import os, re, struct, sys
d, out, op = sys.argv[1], sys.argv[2], int(sys.argv[3])
buf = bytearray()
st = os.path.join(d, "snapshot.state")
if os.path.exists(st):
    buf += open(st, "rb").read()
for name in sorted(os.listdir(d)):
    m = re.fullmatch(r"layer-(\d+)\.qcow2", name)
    if not m:
        continue
    data = open(os.path.join(d, name), "rb").read()
    buf += b"\n@@layer %s\n" % m.group(1).encode()
    for i in range(0, len(data), 4096):
        s = data[i:i + 4096].rstrip(b"\0")
        if s:
            buf += struct.pack("<HH", i // 4096, len(s)) + s
buf.append(op)
open(out, "wb").write(buf)
PY
}

start () {    # start DIR [env...]: serve disk.raw through the filter
  local dir=$1; shift
  rm -f sock ctl.sock
  env "$@" nbdkit -f -U "$work/sock" --filter="$filter" file disk.raw \
    overlay-dir="$dir" control="$work/ctl.sock" &
  pid=$!
  for _ in $(seq 200); do
    [ -S sock ] && [ -S ctl.sock ] && return 0
    sleep 0.05
  done
  echo "$0: nbdkit did not start" >&2; exit 1
}
stop () { kill "$pid"; wait "$pid" 2>/dev/null || :; pid=; }
io () { qemu-io -f raw "nbd+unix:///?socket=$work/sock" "$@" >/dev/null; }
op () { "$ctl" "$work/ctl.sock" "$@" >/dev/null; }

truncate -s 1M disk.raw
# One write, no snapshot: a single top layer.
start "$work/c1"
io -c 'write -P 0x11 0 8k'
stop
encode c1 "$out/top-only" 0
# Three snapshots with data between them, one deleted (a merge).
start "$work/c2"
io -c 'write -P 0x21 0 4k' -c 'write -P 0x22 512k 3000'
op create one
io -c 'write -P 0x23 4k 4k' -c 'write -z 512k 4k'
op create two
io -c 'write -P 0x24 0 2k'
op create three
io -c 'discard 0 64k'
stop
for b in 0 1 2 3 4; do encode c2 "$out/three-snaps-op$b" $b; done
start "$work/c2"
io -c 'read 0 512'           # the chain opens with the first client
op delete two
stop
encode c2 "$out/deleted-middle" 1
# A revert, then more data.
start "$work/c3"
io -c 'write -P 0x31 0 4k'
op create base
io -c 'write -P 0x32 0 64k'
op revert base
io -c 'write -P 0x33 128k 4k'
stop
encode c3 "$out/reverted" 3
# A commit interrupted after its state file said "committing".
start "$work/c4"
io -c 'write -P 0x41 0 4k'
op create a
io -c 'write -P 0x42 8k 4k'
stop
start "$work/c4" KVM_SNAPSHOT_CRASH_AT=commit-marked
io -c 'read 0 512'
op commit 2>/dev/null || :
wait "$pid" 2>/dev/null || :
pid=
grep -q '^committing 1' c4/snapshot.state ||
  { echo "$0: the commit crash left no committing state" >&2; exit 1; }
encode c4 "$out/committing" 0
# No state file (first use), and a left-over layer file to collect.
printf '\n@@layer 7\n\0' > "$out/first-use"
ls -l "$out"
