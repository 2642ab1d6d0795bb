# SPDX-License-Identifier: BSD-3-Clause
# Scenario "thin": the thin filter over nbdkit's file plugin (a virtual
# disk of $SIZE over a pool file of $SIZE plus room for the metadata), vs
# plain nbdkit file on a raw file (the ceiling, target >= 0.9x) and
# qemu-nbd on a qcow2 of the same virtual size (the peer).
#  - seqread / randread / seqwrite / randwrite: every chunk allocated
#    beforehand ($SIZE of random data); writes are rewrites in place
#  - allocseqwrite / allocrandwrite: one pass into a fresh empty pool
#    (empty raw, empty qcow2), recreated before every run

DESCRIPTION="thin: nbdkit thin filter over file vs qemu-nbd -f qcow2 (writeback); ceiling nbdkit file on raw"
PEER=qemu-nbd
CEILING=nbdkit-file
WORKLOADS="seqread randread seqwrite randwrite allocseqwrite allocrandwrite"

scenario_requires () {
  bench_requires nbdkit qemu-nbd qemu-img nbdcopy
  bench_requires_filter thin
}

# The pool: $SIZE of chunks plus the metadata (well under 1 MiB here).
pool_size () { echo $(( SIZE + 4 * 1024 * 1024 )); }

prepare () {
  make_random_raw "$WORKDIR/data.raw"
  qemu-img convert -f raw -O qcow2 "$WORKDIR/data.raw" "$WORKDIR/data.qcow2"
  make_empty_raw "$WORKDIR/data.pool" "$(pool_size)"
  # Allocate every chunk through the filter itself.
  nbdkit -U "$WORKDIR/prep.sock" --filter="$(filter_so thin)" \
    file "$WORKDIR/data.pool" thin-size="$SIZE" \
    --run "nbdcopy '$WORKDIR/data.raw' \"\$uri\"" ||
    bench_die "filling the thin pool failed"
}

before_run () {   # LABEL WORKLOAD ROUND
  if is_alloc_workload "$2"; then
    POOL=$WORKDIR/empty.pool RAW=$WORKDIR/empty.raw QCOW2=$WORKDIR/empty.qcow2
    rm -f "$POOL" "$RAW" "$QCOW2"
    make_empty_raw "$POOL" "$(pool_size)"
    make_empty_raw "$RAW"
    qemu-img create -q -f qcow2 "$QCOW2" "$SIZE"
  else
    POOL=$WORKDIR/data.pool RAW=$WORKDIR/data.raw QCOW2=$WORKDIR/data.qcow2
  fi
}

after_run () {    # LABEL WORKLOAD ROUND: the pool's metadata must be sound
  if [ "$1" = thin-file ]; then
    "$BUILD/filters/thin/nbdkit-thin-check" "$POOL" >/dev/null ||
      { bench_log "nbdkit-thin-check failed on $POOL after $2"; return 1; }
  fi
  if is_alloc_workload "$2"; then
    rm -f "$WORKDIR/empty.pool" "$WORKDIR/empty.raw" "$WORKDIR/empty.qcow2"
  fi
}

bench_server thin-file   'serve_nbdkit --filter="$(filter_so thin)" file "$POOL" thin-size="$SIZE"'
bench_server qemu-nbd    'serve_qemu_nbd -f qcow2 "$QCOW2"'
bench_server nbdkit-file 'serve_nbdkit file "$RAW"'
