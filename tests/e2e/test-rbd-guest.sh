#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# e2e: a real guest boots with its only disk on an RBD image served by the
# rbd plugin (throwaway one-node Ceph cluster started here).  The guest
# writes the e2e pattern; "rbd export" must then show the pattern and,
# everywhere else, exactly the data that "rbd import" put there.
source "${TOP_SRCDIR:?run the tests through ctest, which sets TOP_SRCDIR}/tests/functions.sh"
source "$TOP_SRCDIR/tests/e2e/pattern.sh"

requires ceph-mon ceph-osd ceph rbd ceph-authtool monmaptool \
  qemu-system-x86_64 nbdcopy nbdinfo
requires_plugin rbd

cluster=$tmpdir/ceph
cleanup_add "bash '$TOP_SRCDIR/tests/rbd/ceph-cluster.sh' stop '$cluster'"
CEPH_OWNER_PID=$$ bash "$TOP_SRCDIR/tests/rbd/ceph-cluster.sh" start "$cluster" \
  || fail "could not start the test Ceph cluster"
# shellcheck disable=SC1091
source "$cluster/env"
export CEPH_CONF

random_file "$tmpdir/orig" 16M
rbd import --no-progress "$tmpdir/orig" guestdisk

# The image name is the export name (pool mode, no image=).
sock=$tmpdir/e2e.sock
start_nbdkit "$sock" "$(plugin_so rbd)" pool=rbd conf="$CEPH_CONF"

rc=0
bash "$TOP_SRCDIR/tests/e2e/guest-run.sh" qemu \
  "nbd+unix:///guestdisk?socket=$sock" || rc=$?
[ $rc != 77 ] || exit 77
[ $rc = 0 ] || fail "guest run on the RBD image failed with status $rc"
stop_nbdkit

# Ground truth from Ceph itself.
rbd export --no-progress guestdisk "$tmpdir/export"
e2e_verify_backend_raw "$tmpdir/export" || fail "pattern not in rbd export"
end=$((E2E_PATTERN_OFFSET + E2E_PATTERN_LENGTH))
cmp -s -n "$E2E_PATTERN_OFFSET" "$tmpdir/export" "$tmpdir/orig" ||
  fail "RBD image changed before the pattern region"
cmp -s -i "$end:$end" "$tmpdir/export" "$tmpdir/orig" ||
  fail "RBD image changed after the pattern region"
[ "$(stat -c %s "$tmpdir/export")" = "$(stat -c %s "$tmpdir/orig")" ] ||
  fail "RBD image changed size"
echo PASS
