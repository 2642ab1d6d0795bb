#!/bin/bash
# SPDX-License-Identifier: BSD-3-Clause
# e2e: a real guest (the tests/e2e kernel and /init) whose disk is a thin
# disk (nbdkit thin filter over nbdkit's file plugin) with too small a
# pool: 64 MiB virtual over 8 chunks of 64 KiB, while the guest writes
# 1 MiB (16 chunks).  QEMU runs with werror=enospc,rerror=report: the
# guest must be paused (QMP query-status: io-error), not see an I/O
# error.  Then the pool file is grown and the guest resumed (QMP cont):
# its writes complete, it reads them back (O_DIRECT) and powers off; the
# pattern is in the export (nbdcopy) and nbdkit-thin-check finds the pool
# clean.  Runs QEMU itself (guest-run.sh has no QMP and no werror=).
source "${TOP_SRCDIR:?run the tests through ctest, which sets TOP_SRCDIR}/tests/functions.sh"
source "$TOP_SRCDIR/tests/e2e/pattern.sh"
requires qemu-system-x86_64 nbdcopy nbdinfo python3 sha256sum timeout
requires_filter thin

rc=0
images=$(bash "$TOP_SRCDIR/tests/e2e/prepare.sh") || rc=$?
case $rc in
  0) ;;
  77) skip "the guest kernel is not available (see tests/e2e/prepare.sh)" ;;
  *) fail "tests/e2e/prepare.sh failed" ;;
esac
kernel=$(sed -n 's/^KERNEL=//p' <<<"$images")
initrd=$(sed -n 's/^INITRD=//p' <<<"$images")

cd "$tmpdir"
# 64 KiB of metadata + 8 chunks (the metadata of 64 MiB virtual: 2
# header blocks and 2 x 3 blocks, rounded up to one chunk).
truncate -s $((9 * 65536)) pool.img
start_nbdkit "$tmpdir/sock" --filter="$(filter_so thin)" file pool.img \
  thin-size=64M 2> nbdkit.log
uri=$(uri_of "$tmpdir/sock")
nbdinfo "$uri" | grep description

accel=tcg cpu=max
if [ -w /dev/kvm ] && grep -qwE 'vmx|svm' /proc/cpuinfo && [ ! -e /sys/module/kvm_pvm ]; then
  accel=kvm cpu=host
fi
cmdline="console=ttyS0 panic=-1 quiet no_timer_check e2e.offset=$E2E_PATTERN_OFFSET e2e.length=$E2E_PATTERN_LENGTH"
timeout -k 5 240 qemu-system-x86_64 \
  -accel "$accel" -cpu "$cpu" -m 128 -smp 1 \
  -nodefaults -no-user-config -display none -no-reboot \
  -serial file:console.log -qmp unix:"$tmpdir/qmp.sock",server=on,wait=off \
  -kernel "$kernel" -initrd "$initrd" -append "$cmdline" \
  -drive "file=$uri,format=raw,if=virtio,cache=none,werror=enospc,rerror=report" \
  </dev/null >qemu.log 2>&1 &
qemu_pid=$!
kill_at_exit "$qemu_pid"

# qmp CMD...: run QMP commands in order, print each reply's "return".
qmp () {
  python3 - "$tmpdir/qmp.sock" "$@" <<'PY'
import json, socket, sys
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
f = s.makefile("rw")
json.loads(f.readline())                       # greeting
def cmd(c):
    f.write(json.dumps({"execute": c}) + "\n"); f.flush()
    while True:
        r = json.loads(f.readline())
        if "event" in r:
            continue
        if "error" in r:
            sys.exit("QMP %s: %s" % (c, r["error"]))
        return r["return"]
cmd("qmp_capabilities")
for c in sys.argv[2:]:
    print(json.dumps(cmd(c)))
PY
}

# Wait for the guest to be paused by the write error.
status=""
for (( i = 0; i < 1200; i++ )); do
  kill -0 $qemu_pid 2>/dev/null || { cat qemu.log console.log; fail "QEMU exited before pausing"; }
  if [ -S qmp.sock ]; then
    status=$(qmp query-status 2>/dev/null) || status=""
    grep -q '"io-error"' <<<"$status" && break
  fi
  sleep 0.2
done
echo "paused: $status"
grep -q '"running": false' <<<"$status" && grep -q '"status": "io-error"' <<<"$status" ||
  { cat console.log; fail "the guest was not paused on ENOSPC: $status"; }
grep -q '^E2E FAIL' console.log && { cat console.log; fail "the guest saw an error"; }
grep -q '^E2E WROTE' console.log && fail "the guest finished writing with a full pool"
grep -q 'pool full' nbdkit.log || fail "nbdkit did not log the full pool"

# Grow the pool, resume: the guest's writes complete.
truncate -s 8M pool.img
sleep 1.1              # the filter asks the layer below at most once a second
qmp cont >/dev/null
wait $qemu_pid || { cat qemu.log; fail "QEMU failed"; }
tr -d '\r' < console.log | grep '^E2E' || :
grep -q '^E2E DONE' console.log || { cat console.log; fail "the guest did not complete"; }
grep -q '^E2E FAIL' console.log && { cat console.log; fail "the guest reported a failure"; }
pattern_sum=$(e2e_pattern | sha256sum); pattern_sum=${pattern_sum%% *}
readback=$(tr -d '\r' < console.log | sed -n 's/^E2E READBACK //p')
[ "$readback" = "$pattern_sum" ] || fail "guest read back $readback, pattern is $pattern_sum"

nbdcopy -- "$uri" after.raw
e2e_verify_backend_raw after.raw || fail "pattern not in the thin export"
stop_nbdkit
"$TOP_BUILDDIR/filters/thin/nbdkit-thin-check" pool.img | tail -1 | grep -q ': clean$' ||
  fail "nbdkit-thin-check: $("$TOP_BUILDDIR/filters/thin/nbdkit-thin-check" pool.img)"
echo PASS
