# SPDX-License-Identifier: BSD-3-Clause
# Scenario "null": no backend at all.  nbdkit's own null plugin against
# qemu-nbd on QEMU's null-co driver, so each number is what the server
# costs per request by itself: receiving the request, handing it over,
# sending the reply.  Every other ratio here contains this one.  It
# matters most where a request's backend work is a network round trip
# done by another process (iscsi, rbd): there the server's own cost is a
# large part of the CPU time on the machine.

DESCRIPTION="no backend: nbdkit null plugin vs qemu-nbd on QEMU's null-co driver (the servers' own cost per request)"
PEER=qemu-nbd
# Not "copy": both servers report the whole disk as zero, so nbdcopy would
# read nothing.
WORKLOADS="seqread seqwrite randread randwrite"

scenario_requires () { bench_requires nbdkit qemu-nbd; }

prepare () { :; }

bench_server nbdkit-null 'serve_nbdkit null size="$SIZE"'
# read-zeroes=off: with it on, null-co reports the disk as zero and
# qemu-nbd answers reads with a hole instead of data.  Off, it sends the
# (unset) buffer, as nbdkit sends its zeroed one.
bench_server qemu-nbd 'serve_qemu_nbd --image-opts driver=null-co,size="$SIZE",read-zeroes=off'
