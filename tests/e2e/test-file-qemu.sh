#!/bin/bash
# e2e: a raw file served by nbdkit's own "file" plugin is the disk of a
# real guest started directly with QEMU: over a unix socket, then over TCP.
source "$TOP_SRCDIR/tests/functions.sh"
source "$TOP_SRCDIR/tests/e2e/pattern.sh"
source "$TOP_SRCDIR/tests/e2e/lib-file.sh"
requires nbdkit qemu-system-x86_64 nbdcopy nbdinfo

for d in unix tcp; do
  random_file "$tmpdir/$d.raw" 16M
  cp "$tmpdir/$d.raw" "$tmpdir/$d.orig"
done

start_nbdkit "$tmpdir/sock" file "$tmpdir/unix.raw"
guest_run qemu "$(uri_of "$tmpdir/sock")"
stop_nbdkit
check_backing_file "$tmpdir/unix.raw" "$tmpdir/unix.orig"

serve_file_tcp "$tmpdir/tcp.raw"
guest_run qemu "nbd://127.0.0.1:$tcp_port/"
stop_nbdkit
check_backing_file "$tmpdir/tcp.raw" "$tmpdir/tcp.orig"
echo PASS
