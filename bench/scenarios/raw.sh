# SPDX-License-Identifier: BSD-3-Clause
# Scenario "raw": the same raw file served by nbdkit's file plugin (the
# ceiling for every other scenario) and by qemu-nbd.  This is the
# foundation comparison: how far apart are the two servers themselves,
# before any image format is involved.

DESCRIPTION="raw file: nbdkit file plugin vs qemu-nbd -f raw (--cache=none --aio=native)"
PEER=qemu-nbd
CEILING=nbdkit-file

scenario_requires () { bench_requires nbdkit qemu-nbd; }

prepare () { make_random_raw "$WORKDIR/disk.raw"; }

bench_server nbdkit-file 'serve_nbdkit file "$WORKDIR/disk.raw"'
bench_server qemu-nbd 'serve_qemu_nbd -f raw --cache=none --aio=native "$WORKDIR/disk.raw"'
