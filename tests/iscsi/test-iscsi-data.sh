#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# Data path against a real tgtd: aligned and unaligned reads and writes on
# 512- and 4096-byte-block LUNs land at the right offsets of the backing
# files; exports are listed; trim/zero follow what the target advertises.
source "${TOP_SRCDIR:?run the tests through ctest, which sets TOP_SRCDIR}/tests/functions.sh"
source "$TOP_SRCDIR/tests/iscsi/common.sh"

d=$tmpdir
size=$((16 * 1024 * 1024))
random_file $d/lun1.img $size
random_file $d/lun2.img $size
cp $d/lun1.img $d/ref1.img
cp $d/lun2.img $d/ref2.img

tgtd_start
tgtd_cmd --op new --mode target --tid 1 -T $IQN
tgtd_cmd --op new --mode logicalunit --tid 1 --lun 1 -b $d/lun1.img
tgtd_cmd --op new --mode logicalunit --tid 1 --lun 2 -b $d/lun2.img --blocksize 4096
tgtd_cmd --op update --mode logicalunit --tid 1 --lun 2 --params thin_provisioning=1
tgtd_cmd --op bind --mode target --tid 1 -I ALL

sock=$d/sock
# No lun=: exports are the target's LUNs.
start_nbdkit $sock "$(plugin_so iscsi)" portal=127.0.0.1:$TGTD_PORT target=$IQN \
  max-transfer=64K

# --- exports: LUN 1 and 2, not the controller LUN 0 -------------------------
list=$(nbdinfo --list "$(uri_of $sock)")
names=$(grep -o '^export="[^"]*"' <<<"$list" | tr '\n' ' ')
[ "$names" = 'export="1" export="2" ' ] || fail "exports listed: $names"
grep -q 'block_size_minimum: 4096' <<<"$list" || fail "4096-byte LUN: $list"
grep -q 'block_size_minimum: 512' <<<"$list" || fail "512-byte LUN: $list"
[ "$(nbdinfo --size "$(uri_of $sock 2)")" = $size ] || fail "size of LUN 2"

for lun in 1 2; do
  uri=$(uri_of $sock $lun)
  # Read: backing file content through the plugin (requests split at 64K).
  nbdcopy "$uri" $d/read.img
  assert_same $d/read.img $d/ref$lun.img "LUN $lun read"

  # Aligned write of fresh data over the whole LUN.
  random_file $d/new$lun.img $size
  nbdcopy $d/new$lun.img "$uri"
  assert_same $d/lun$lun.img $d/new$lun.img "LUN $lun after aligned write"
  cp $d/new$lun.img $d/ref$lun.img

  # Unaligned writes and reads (strict alignment off in libnbd so the
  # requests reach the server as they are); the same edits are applied to
  # a mirror file, then the backing file must equal the mirror.
  nbdsh -u "$uri" -c "
import random
h.set_strict_mode(0)
rng = random.Random(1234 + $lun)
mirror = open('$d/ref$lun.img', 'r+b')
size = h.get_size()
cases = [(1, 1), (511, 2), (4095, 4098), (4096 * 3 + 7, 70000),
         (size - 5, 5), (0, 513), (12345, 131072 + 3)]
for i in range(40):
    off = rng.randrange(0, size - 1)
    cases.append((off, rng.randrange(1, min(size - off, 200000) + 1)))
for off, n in cases:
    data = rng.randbytes(n)
    h.pwrite(data, off)
    mirror.seek(off); mirror.write(data)
    # Unaligned read-back through the plugin
    got = h.pread(n + 2 if off + n + 2 <= size else n, off)
    assert got[:n] == data, ('read-back mismatch', off, n)
h.flush()
mirror.close()
# Unaligned reads of content written behind the plugin's back.
ref = open('$d/ref$lun.img', 'rb').read()
for i in range(30):
    off = rng.randrange(0, size - 1)
    n = rng.randrange(1, min(size - off, 100000) + 1)
    assert h.pread(n, off) == ref[off:off+n], ('read mismatch', off, n)
"
  assert_same $d/lun$lun.img $d/ref$lun.img "LUN $lun after unaligned writes"

  # FUA writes and write-zeroes (with and without may-trim), unaligned ends.
  nbdsh -u "$uri" -c "
h.set_strict_mode(0)
mirror = open('$d/ref$lun.img', 'r+b')
for off, n, fl in [(100, 9000, 0), (8192, 1 << 20, 0), (3 << 20, 1 << 20, 0),
                   (5 << 20, 65536 + 100, nbd.CMD_FLAG_NO_HOLE)]:
    h.zero(n, off, fl)
    mirror.seek(off); mirror.write(bytes(n))
h.pwrite(b'fua' * 1000, 7 << 20, nbd.CMD_FLAG_FUA)
mirror.seek(7 << 20); mirror.write(b'fua' * 1000)
mirror.close()
"
  assert_same $d/lun$lun.img $d/ref$lun.img "LUN $lun after write-zeroes"
done

# --- trim and extents follow what the target advertises ---------------------
# LUN 1: not thin-provisioned: no trim, no GET LBA STATUS (all data).
nbdinfo --can trim "$(uri_of $sock 1)" && fail "LUN 1 (not thin) claims trim"
map1=$(nbdinfo --map "$(uri_of $sock 1)")
[ "$(wc -l <<<"$map1")" = 1 ] && grep -q ' 0  *data' <<<"$map1" ||
  fail "LUN 1 map: $map1"
# LUN 2: thin-provisioned (LBPME, UNMAP, WRITE SAME with UNMAP).
nbdinfo --can trim "$(uri_of $sock 2)" || fail "thin LUN 2 cannot trim"
nbdsh -u "$(uri_of $sock 2)" -c "
h.trim(1 << 20, 8 << 20)
h.flush()
"
# The range was unmapped in the backing file (tgtd punches a hole) and the
# plugin reports it as a hole through GET LBA STATUS.
python3 - $d/lun2.img <<'PY' || fail "trimmed range still allocated in the backing file"
import os, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
off = os.lseek(fd, 8 << 20, os.SEEK_HOLE)
sys.exit(0 if off == 8 << 20 else 1)
PY
map2=$(nbdinfo --map "$(uri_of $sock 2)")
grep -qE '^ *8388608 +1048576 +3 +hole,zero' <<<"$map2" || fail "LUN 2 map: $map2"
cmp -n $((1 << 20)) -i $((8 << 20)):0 $d/lun2.img /dev/zero ||
  fail "trimmed range does not read as zero (target advertises LBPRZ)"
# The rest is untouched.
cmp -n $((8 << 20)) $d/lun2.img $d/ref2.img || fail "trim touched other data"
cmp -i $((9 << 20)) $d/lun2.img $d/ref2.img || fail "trim touched other data"

stop_nbdkit

# --- session pool: sessions=N bounds the sessions of a connection ---------
# nbdcopy keeps many requests in flight; with sessions=1 they all take
# turns on one session, with sessions=3 at most three are logged in.  The
# data must be right either way.
for n in 1 3; do
  random_file $d/pool.img $size
  rm -f $d/back.img
  nbdkit -v -U $d/pool$n.sock "$(plugin_so iscsi)" url=$(tgtd_url $IQN 1) sessions=$n \
    --run "nbdcopy --requests=32 --request-size=65536 $d/pool.img \"\$uri\" &&
           nbdcopy --requests=32 --request-size=65536 \"\$uri\" $d/back.img" \
    2>$d/pool.log || fail "copies with sessions=$n failed"
  assert_same $d/lun1.img $d/pool.img "LUN 1 written with sessions=$n"
  assert_same $d/back.img $d/pool.img "LUN 1 read with sessions=$n"
  grep -q "session $((n + 1)) logged in" $d/pool.log &&
    fail "sessions=$n: more than $n sessions logged in"
  [ $n = 1 ] || grep -q "session $n logged in" $d/pool.log ||
    fail "sessions=$n: the pool never grew to $n sessions"
done
cp $d/lun1.img $d/ref1.img
rc=0
# (Not "-U -" where nbdkit is to fail: nbdkit 1.32 then leaves its
# /tmp/nbdkitXXXXXX directory behind.)
timeout 20 env ${KVM_SANITIZER_PRELOAD:+LD_PRELOAD=$KVM_SANITIZER_PRELOAD} \
  nbdkit -U $d/fail1.sock "$(plugin_so iscsi)" url=$(tgtd_url $IQN 1) sessions=0 \
  --run true 2>$d/pool.err || rc=$?
[ $rc = 0 ] && fail "sessions=0 accepted"
[ $rc = 124 ] && [ "$KVM_SANITIZE" != 1 ] && fail "nbdkit hung on sessions=0"
grep -q 'sessions must be between' $d/pool.err ||
  fail "no clear error for sessions=0: $(cat $d/pool.err)"

# Header digests: with the target asking for CRC32C, a session that
# negotiates CRC32C (or prefers it) moves the same data.  tgtd does not
# report the negotiated value, so this checks that the option works, not
# which digest was chosen.
tgtd_cmd --op update --mode target --tid 1 -n HeaderDigest -v CRC32C
for hd in crc32c prefer-crc32c none; do
  rm -f $d/hd.img
  nbdkit -U $d/hd-$hd.sock "$(plugin_so iscsi)" url=$(tgtd_url $IQN 1) header-digest=$hd \
    --run "nbdcopy \"\$uri\" $d/hd.img" ||
    fail "copy with header-digest=$hd failed"
  assert_same $d/hd.img $d/lun1.img "LUN 1 read with header-digest=$hd"
done
# A fast zero: advertised, answered (done or ENOTSUP), the server lives.
start_nbdkit $d/fz.sock "$(plugin_so iscsi)" url=$(tgtd_url $IQN 1)
check_fast_zero "iscsi plugin" "$(uri_of $d/fz.sock)"
stop_nbdkit
rc=0
timeout 20 env ${KVM_SANITIZER_PRELOAD:+LD_PRELOAD=$KVM_SANITIZER_PRELOAD} \
  nbdkit -U $d/fail2.sock "$(plugin_so iscsi)" url=$(tgtd_url $IQN 1) \
  header-digest=md5 --run true 2>$d/hd.err || rc=$?
[ $rc = 0 ] && fail "header-digest=md5 accepted"
# (124: the ASan-preload exit hang after a start-up error, see
# tests/qcow2/test-qcow2-create.sh; a hang is a failure elsewhere.)
[ $rc = 124 ] && [ "$KVM_SANITIZE" != 1 ] && fail "nbdkit hung on header-digest=md5"
grep -q 'header-digest' $d/hd.err || fail "no clear error for header-digest=md5: $(cat $d/hd.err)"
echo OK
