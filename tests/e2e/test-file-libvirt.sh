#!/bin/bash
# e2e: a raw file served by nbdkit's own "file" plugin over TCP on
# 127.0.0.1, used as the network disk of a transient libvirt domain.
source "$TOP_SRCDIR/tests/functions.sh"
source "$TOP_SRCDIR/tests/e2e/pattern.sh"
requires_root
requires nbdkit virsh libvirtd virtlogd qemu-system-x86_64 nbdcopy nbdinfo

disk=$tmpdir/disk.raw
random_file "$disk" 16M
cp "$disk" "$tmpdir/orig.raw"

# nbdkit on a free TCP port (the export name is ignored by the file
# plugin; a non-empty one exercises the name path of libvirt and QEMU).
port=$(free_port)
nbdkit -f -i 127.0.0.1 -p "$port" -P "$tmpdir/nbdkit.pid" file "$disk" &
bgpid=$!
cleanup_add "kill -9 $bgpid"
for (( i=0; i<600; i++ )); do
  [ -s "$tmpdir/nbdkit.pid" ] && nbdinfo --size "nbd://127.0.0.1:$port/e2e" >/dev/null 2>&1 && break
  kill -0 $bgpid 2>/dev/null || fail "nbdkit exited during start-up"
  sleep 0.05
done
nbdkit_pid=$(cat "$tmpdir/nbdkit.pid")

rc=0
bash "$TOP_SRCDIR/tests/e2e/guest-run.sh" libvirt "nbd://127.0.0.1:$port/e2e" || rc=$?
[ $rc = 77 ] && exit 77
[ $rc = 0 ] || fail "guest run failed (status $rc)"
stop_nbdkit

e2e_verify_backend_raw "$disk" || fail "pattern not in the backing file"
end=$((E2E_PATTERN_OFFSET + E2E_PATTERN_LENGTH))
cmp -s -n "$E2E_PATTERN_OFFSET" "$disk" "$tmpdir/orig.raw" ||
  fail "backing file changed before the pattern region"
cmp -s -i "$end:$end" "$disk" "$tmpdir/orig.raw" ||
  fail "backing file changed after the pattern region"
echo "PASS"
