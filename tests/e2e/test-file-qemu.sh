#!/bin/bash
# e2e: a raw file served by nbdkit's own "file" plugin over a unix socket,
# used as the disk of a real guest started directly with QEMU.
source "$TOP_SRCDIR/tests/functions.sh"
source "$TOP_SRCDIR/tests/e2e/pattern.sh"
requires nbdkit qemu-system-x86_64 nbdcopy nbdinfo

disk=$tmpdir/disk.raw
random_file "$disk" 16M
cp "$disk" "$tmpdir/orig.raw"

start_nbdkit "$tmpdir/sock" file "$disk"
rc=0
bash "$TOP_SRCDIR/tests/e2e/guest-run.sh" qemu "$(uri_of "$tmpdir/sock")" || rc=$?
[ $rc = 77 ] && exit 77
[ $rc = 0 ] || fail "guest run failed (status $rc)"
stop_nbdkit

# The backend file itself (not the export) holds the guest's writes and
# nothing else changed.
e2e_verify_backend_raw "$disk" || fail "pattern not in the backing file"
end=$((E2E_PATTERN_OFFSET + E2E_PATTERN_LENGTH))
cmp -s -n "$E2E_PATTERN_OFFSET" "$disk" "$tmpdir/orig.raw" ||
  fail "backing file changed before the pattern region"
cmp -s -i "$end:$end" "$disk" "$tmpdir/orig.raw" ||
  fail "backing file changed after the pattern region"
echo "PASS"
