# SPDX-License-Identifier: BSD-3-Clause
# Scenario "vmdk": one monolithicSparse VMDK served by our vmdk plugin and
# by qemu-nbd (default writeback cache, -t -e 0), with nbdkit's file
# plugin on the raw equivalent as the ceiling.
#  - seqread / randread / randwrite: a fully allocated image ($SIZE of
#    random data, converted from raw; random writes overwrite in place)
#  - allocseqwrite: one sequential pass of 1 MiB writes into a fresh empty
#    image (grain allocation), recreated before every run

DESCRIPTION="vmdk: nbdkit vmdk plugin vs qemu-nbd -f vmdk (writeback); ceiling nbdkit file on the raw equivalent"
PEER=qemu-nbd
CEILING=nbdkit-file
WORKLOADS="seqread randread randwrite allocseqwrite"

scenario_requires () {
  bench_requires nbdkit qemu-nbd qemu-img
  bench_requires_plugin vmdk
}

prepare () {
  make_random_raw "$WORKDIR/data.raw"
  qemu-img convert -f raw -O vmdk "$WORKDIR/data.raw" "$WORKDIR/data.vmdk"
}

before_run () {   # LABEL WORKLOAD ROUND
  case $2 in
    allocseqwrite)
      VMDK=$WORKDIR/empty.vmdk RAW=$WORKDIR/empty.raw
      rm -f "$VMDK" "$RAW"
      qemu-img create -q -f vmdk "$VMDK" "$SIZE"
      make_empty_raw "$RAW" ;;
    *)
      VMDK=$WORKDIR/data.vmdk RAW=$WORKDIR/data.raw ;;
  esac
}

after_run () {    # LABEL WORKLOAD ROUND: the servers must leave a sound image
  case $1 in
    vmdk-plugin|qemu-nbd)
      qemu-img check -q "$VMDK" ||
        { bench_log "qemu-img check failed on $VMDK after $1 $2"; return 1; } ;;
  esac
  if [ "$2" = allocseqwrite ]; then rm -f "$WORKDIR/empty.vmdk" "$WORKDIR/empty.raw"; fi
}

bench_server vmdk-plugin 'serve_nbdkit "$(plugin_so vmdk)" file="$VMDK"'
bench_server qemu-nbd    'serve_qemu_nbd -f vmdk "$VMDK"'
bench_server nbdkit-file 'serve_nbdkit file "$RAW"'
