# SPDX-License-Identifier: BSD-3-Clause
# Scenario "netfloor": what a network round trip per request costs each
# server by itself.  nbdkit's own nbd plugin (libnbd) and qemu-nbd with
# QEMU's nbd client driver both forward every request to the same
# upstream NBD server (nbdkit's memory plugin on a unix socket, started
# in prepare).  Neither side involves code of this project: the ratio is
# the floor that nbdkit's thread-per-request plugin model sets for any
# plugin whose backend answers over a socket (nfs, iscsi, rbd), against
# QEMU's single event loop.

DESCRIPTION="network-backend floor: nbdkit nbd plugin vs qemu-nbd nbd driver, both forwarding to one upstream nbdkit memory server"
PEER=qemu-nbd
WORKLOADS="randread randwrite"

scenario_requires () { bench_requires nbdkit qemu-nbd nbdinfo; }

prepare () {
  UPSOCK=$WORKDIR/upstream.sock
  bench_daemon upstream nbdkit -f -U "$UPSOCK" memory size="$SIZE"
  bench_wait_for 20 nbdinfo --size "nbd+unix:///?socket=$UPSOCK" ||
    bench_die "upstream nbdkit did not start"
  # Fill it, so that reads move data (not holes).
  nbdcopy -- [ nbdkit pattern size="$SIZE" ] "nbd+unix:///?socket=$UPSOCK" ||
    bench_die "could not fill the upstream server"
}

bench_server nbdkit-nbd 'serve_nbdkit nbd socket="$UPSOCK"'
bench_server qemu-nbd   'serve_qemu_nbd -f raw "nbd+unix:///?socket=$UPSOCK"'
