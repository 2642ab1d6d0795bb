# SPDX-License-Identifier: BSD-3-Clause
# Scenario "snapshot": a raw image of random data with a writable overlay
# that starts empty for every run:
#  - snapshot: our snapshot filter over nbdkit's file plugin (a new
#    overlay-dir per run: a qcow2 top layer over the raw file)
#  - cow: nbdkit's cow filter over the file plugin (throw-away overlay)
#  - qemu-nbd: a qcow2 overlay made with qemu-img create -b data.raw -F raw
#    (default writeback cache, -t -e 0)
#  - nbdkit-file: the raw file itself, written in place (the ceiling)
# Reads before any write go through to the raw data; writes allocate in
# the overlay.  report prints snapshot ÷ cow beside the table.

DESCRIPTION="snapshot: nbdkit snapshot filter vs nbdkit cow filter vs qemu-nbd on a qcow2 overlay (-b raw); ceiling nbdkit file on the raw image"
PEER=qemu-nbd
CEILING=nbdkit-file
WORKLOADS="seqread randread seqwrite randwrite"

scenario_requires () {
  bench_requires nbdkit qemu-nbd qemu-img
  bench_requires_filter snapshot
}

prepare () {
  make_random_raw "$WORKDIR/data.raw"
  cp "$WORKDIR/data.raw" "$WORKDIR/ceiling.raw"
}

before_run () {   # LABEL WORKLOAD ROUND
  rm -rf "$WORKDIR/ovl" "$WORKDIR/overlay.qcow2"
  qemu-img create -q -f qcow2 -b "$WORKDIR/data.raw" -F raw \
    "$WORKDIR/overlay.qcow2" "$SIZE"
}

after_run () {    # LABEL WORKLOAD ROUND: sound layers, data below untouched
  case $1 in
    snapshot)
      for l in "$WORKDIR"/ovl/layer-*.qcow2; do
        qemu-img check -q "$l" ||
          { bench_log "qemu-img check failed on $l after $1 $2"; return 1; }
      done ;;
  esac
}

bench_server snapshot    'serve_nbdkit --filter="$(filter_so snapshot)" file "$WORKDIR/data.raw" overlay-dir="$WORKDIR/ovl"'
bench_server cow         'serve_nbdkit --filter=cow file "$WORKDIR/data.raw"'
bench_server qemu-nbd    'serve_qemu_nbd -f qcow2 "$WORKDIR/overlay.qcow2"'
bench_server nbdkit-file 'serve_nbdkit file "$WORKDIR/ceiling.raw"'

report () {
  local tsv=$1 wl s c
  echo "snapshot ÷ cow (medians of $ROUNDS round(s); target ≥ 2 on random I/O):"
  echo
  echo "| workload | snapshot | cow | snapshot ÷ cow |"
  echo "|---|---|---|---|"
  for wl in $WORKLOADS; do
    s=$(bench_median "$tsv" snapshot "$wl")
    c=$(bench_median "$tsv" cow "$wl")
    [ -n "$s" ] && [ -n "$c" ] || continue
    echo "| $wl | $s | $c | $(python3 -c "print('%.2f' % ($s / $c))") |"
  done
}
