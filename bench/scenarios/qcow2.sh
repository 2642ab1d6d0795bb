# SPDX-License-Identifier: BSD-3-Clause
# Scenario "qcow2": one qcow2 image served by our qcow2 plugin and by
# qemu-nbd (default writeback cache, -t -e 0), with nbdkit's file plugin on
# the raw equivalent as the ceiling.
#  - seqread / randread / randwrite: a fully allocated image ($SIZE of
#    random data, converted from raw; random writes overwrite in place)
#  - allocseqwrite: one sequential pass of 1 MiB writes into a fresh empty
#    image (the cluster allocation path), recreated before every run
#  - compread: sequential 1 MiB reads of an image whose every cluster is
#    compressed (qemu-img convert -c of data that compresses ~4x), zlib
#    (qemu-img's default); compread-zstd: the same with compression_type=zstd

DESCRIPTION="qcow2: nbdkit qcow2 plugin vs qemu-nbd -f qcow2 (writeback); ceiling nbdkit file on the raw equivalent"
PEER=qemu-nbd
CEILING=nbdkit-file

BENCH_WORKLOAD_DESC="seq read 1 MiB, compressed image" \
  bench_workload compread fio MiB/s --rw=read --bs=1M
BENCH_WORKLOAD_DESC="seq read 1 MiB, zstd-compressed image" \
  bench_workload compread-zstd fio MiB/s --rw=read --bs=1M
WORKLOADS="seqread randread randwrite allocseqwrite compread compread-zstd"

scenario_requires () {
  bench_requires nbdkit qemu-nbd qemu-img
  bench_requires_plugin qcow2
}

prepare () {
  make_random_raw "$WORKDIR/data.raw"
  qemu-img convert -f raw -O qcow2 "$WORKDIR/data.raw" "$WORKDIR/data.qcow2"
  make_compressible_raw "$WORKDIR/compdata.raw"
  qemu-img convert -c -f raw -O qcow2 "$WORKDIR/compdata.raw" \
    "$WORKDIR/comp.qcow2"
  qemu-img convert -c -f raw -O qcow2 -o compression_type=zstd \
    "$WORKDIR/compdata.raw" "$WORKDIR/compzstd.qcow2"
}

before_run () {   # LABEL WORKLOAD ROUND
  case $2 in
    compread)
      QCOW2=$WORKDIR/comp.qcow2 RAW=$WORKDIR/compdata.raw ;;
    compread-zstd)
      QCOW2=$WORKDIR/compzstd.qcow2 RAW=$WORKDIR/compdata.raw ;;
    allocseqwrite)
      QCOW2=$WORKDIR/empty.qcow2 RAW=$WORKDIR/empty.raw
      rm -f "$QCOW2" "$RAW"
      qemu-img create -q -f qcow2 "$QCOW2" "$SIZE"
      # The filter cannot grow its container: room for data and metadata.
      [ "$1" = qcow2-filter ] && truncate -s $(( SIZE * 9 / 8 + 16777216 )) "$QCOW2"
      make_empty_raw "$RAW" ;;
    *)
      QCOW2=$WORKDIR/data.qcow2 RAW=$WORKDIR/data.raw ;;
  esac
}

after_run () {    # LABEL WORKLOAD ROUND: the servers must leave a sound image
  case $1 in
    qcow2-plugin|qemu-nbd|qcow2-filter|qcow2-baseline)
      qemu-img check -q "$QCOW2" ||
        { bench_log "qemu-img check failed on $QCOW2 after $1 $2"; return 1; } ;;
  esac
  if [ "$2" = allocseqwrite ]; then rm -f "$WORKDIR/empty.qcow2" "$WORKDIR/empty.raw"; fi
}

bench_server qcow2-plugin 'serve_nbdkit "$(plugin_so qcow2)" file="$QCOW2"'
bench_server qemu-nbd     'serve_qemu_nbd -f qcow2 "$QCOW2"'
bench_server nbdkit-file  'serve_nbdkit file "$RAW"'
# The same engine as a filter over nbdkit's file plugin (qcow2 image in a
# fixed-size container: grown beforehand for the allocating workload).
if [ -f "$(filter_so qcow2)" ]; then
  bench_server qcow2-filter 'serve_nbdkit --filter="$(filter_so qcow2)" file "$QCOW2"'
fi
# QCOW2_BENCH_BASELINE=BUILDDIR: also the qcow2 plugin of another build
# (e.g. the commit before a change), to show a change moves no row.
if [ -n "${QCOW2_BENCH_BASELINE:-}" ]; then
  bench_server qcow2-baseline \
    'serve_nbdkit "$QCOW2_BENCH_BASELINE/plugins/qcow2/nbdkit-qcow2-plugin.so" file="$QCOW2"'
fi
