# SPDX-License-Identifier: BSD-3-Clause
# Scenario "vhdx": one VHDX image served by our vhdx plugin and by
# qemu-nbd -f vhdx (default writeback cache, -t -e 0), with nbdkit's file
# plugin on the raw equivalent as the ceiling.
#  - seqread / randread / randwrite: a fully allocated dynamic image
#    ($SIZE of random data, converted from raw; random writes overwrite in
#    place)
#  - allocseqwrite: one sequential pass of 1 MiB writes into a fresh empty
#    dynamic image (block allocation), recreated before every run

DESCRIPTION="vhdx: nbdkit vhdx plugin vs qemu-nbd -f vhdx (writeback); ceiling nbdkit file on the raw equivalent"
PEER=qemu-nbd
CEILING=nbdkit-file
WORKLOADS="seqread randread randwrite allocseqwrite"

scenario_requires () {
  bench_requires nbdkit qemu-nbd qemu-img
  bench_requires_plugin vhdx
}

prepare () {
  make_random_raw "$WORKDIR/data.raw"
  qemu-img convert -f raw -O vhdx "$WORKDIR/data.raw" "$WORKDIR/data.vhdx"
}

before_run () {   # LABEL WORKLOAD ROUND
  case $2 in
    allocseqwrite)
      VHDX=$WORKDIR/empty.vhdx RAW=$WORKDIR/empty.raw
      rm -f "$VHDX" "$RAW"
      qemu-img create -q -f vhdx "$VHDX" "$SIZE"
      make_empty_raw "$RAW" ;;
    *)
      VHDX=$WORKDIR/data.vhdx RAW=$WORKDIR/data.raw ;;
  esac
}

after_run () {    # LABEL WORKLOAD ROUND: the servers must leave a sound image
  case $1 in
    vhdx-plugin|qemu-nbd)
      qemu-img check -q -f vhdx "$VHDX" ||
        { bench_log "qemu-img check failed on $VHDX after $1 $2"; return 1; } ;;
  esac
  if [ "$2" = allocseqwrite ]; then rm -f "$WORKDIR/empty.vhdx" "$WORKDIR/empty.raw"; fi
}

bench_server vhdx-plugin 'serve_nbdkit "$(plugin_so vhdx)" file="$VHDX"'
bench_server qemu-nbd    'serve_qemu_nbd -f vhdx "$VHDX"'
bench_server nbdkit-file 'serve_nbdkit file "$RAW"'
