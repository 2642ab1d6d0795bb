#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# Seeds for fuzz_thin: the first 64 KiB of small thin pools written through
# nbdkit --filter=thin (virtual 4 MiB, 4 KiB chunks: the metadata ends at
# 32 KiB, data chunks follow), and the metadata file of a pool whose
# metadata is separate (thin-metadata=).  Run from the source tree after a
# build:
#   bash tests/fuzz/make-thin-corpus.sh [BUILDDIR]
set -euo pipefail
src=$(cd "$(dirname "$0")/../.." && pwd)
build=${1:-$src/build}
out=$src/tests/fuzz/corpus/thin
filter=$build/filters/thin/nbdkit-thin-filter.so
tmp=$(mktemp -d /tmp/thincorpus.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$out"

make_pool () {   # NAME NBDSH-PYTHON
  truncate -s 1M "$tmp/$1.img"
  nbdkit -U "$tmp/$1.sock" --filter="$filter" file "$tmp/$1.img" \
    thin-size=4M thin-chunk=4K \
    --run "PATH=/usr/bin:\$PATH nbdsh -u \"\$uri\" -c '$2'"
  head -c 65536 "$tmp/$1.img" > "$out/$1.pool"
}
make_pool empty 'h.flush()'
make_pool some 'h.pwrite(b"a" * 12288, 8192); h.pwrite(b"b" * 100, 3000000); h.flush()'
make_pool trimmed 'h.pwrite(b"c" * 65536, 0); h.flush(); h.trim(16384, 4096); h.flush(); h.pwrite(b"d" * 4096, 1000000); h.flush()'
truncate -s 1M "$tmp/data.img"
nbdkit -U "$tmp/sep.sock" --filter="$filter" file "$tmp/data.img" \
  thin-size=4M thin-chunk=4K thin-metadata="$tmp/sep.meta" \
  --run "PATH=/usr/bin:\$PATH nbdsh -u \"\$uri\" -c 'h.pwrite(b\"e\" * 8192, 4096); h.flush()'"
head -c 65536 "$tmp/sep.meta" > "$out/separate.meta"
ls -l "$out"
