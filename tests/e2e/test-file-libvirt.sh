#!/bin/bash
# e2e: a raw file served by nbdkit's own "file" plugin is the network disk
# of a transient libvirt domain: over TCP on 127.0.0.1 (with a non-empty
# export name, which the file plugin ignores), then over a unix socket.
source "$TOP_SRCDIR/tests/functions.sh"
source "$TOP_SRCDIR/tests/e2e/pattern.sh"
source "$TOP_SRCDIR/tests/e2e/lib-file.sh"
requires_root
requires nbdkit virsh libvirtd virtlogd qemu-system-x86_64 nbdcopy nbdinfo

for d in tcp unix; do
  random_file "$tmpdir/$d.raw" 16M
  cp "$tmpdir/$d.raw" "$tmpdir/$d.orig"
done

serve_file_tcp "$tmpdir/tcp.raw"
guest_run libvirt "nbd://127.0.0.1:$tcp_port/e2e"
stop_nbdkit
check_backing_file "$tmpdir/tcp.raw" "$tmpdir/tcp.orig"

start_nbdkit "$tmpdir/sock" file "$tmpdir/unix.raw"
guest_run libvirt "$(uri_of "$tmpdir/sock")"
stop_nbdkit
check_backing_file "$tmpdir/unix.raw" "$tmpdir/unix.orig"
echo PASS
