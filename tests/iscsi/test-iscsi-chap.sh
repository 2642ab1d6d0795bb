#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# CHAP and mutual CHAP against tgtd: right credentials work, wrong ones
# fail with a clear error; passwords from a file (password=+FILE).
source "${TOP_SRCDIR:?run the tests through ctest, which sets TOP_SRCDIR}/tests/functions.sh"
source "$TOP_SRCDIR/tests/iscsi/common.sh"

d=$tmpdir
random_file $d/lun.img 4M
tgtd_one_lun $d/lun.img
tgtd_cmd --op new --mode account --user alice --password alicesecret12
tgtd_cmd --op bind --mode account --tid 1 --user alice
plugin=$(plugin_so iscsi)
url=$(tgtd_url $IQN 1)

# No credentials: the target refuses.
if nbdkit -U $d/s1 "$plugin" url=$url --run 'nbdinfo --size "$uri"' \
     > $d/out 2>&1; then
  fail "login without CHAP credentials succeeded"
fi
grep -qi 'cannot log in' $d/out || fail "unclear error: $(cat $d/out)"

# Wrong password.
if nbdkit -U $d/s2 "$plugin" url=$url user=alice password=wrongsecret12 \
     --run 'nbdinfo --size "$uri"' > $d/out 2>&1; then
  fail "login with a wrong CHAP password succeeded"
fi
grep -qi 'cannot log in.*\(auth\|fail\)' $d/out || fail "unclear error: $(cat $d/out)"

# Right password from a file.
printf 'alicesecret12' > $d/pw
nbdkit -U $d/s3 "$plugin" url=$url user=alice password=+$d/pw \
  --run 'nbdcopy "$uri" '$d/read.img
assert_same $d/read.img $d/lun.img "read with CHAP"

# Credentials in the URL.
nbdkit -U $d/s4 "$plugin" "url=iscsi://alice%alicesecret12@127.0.0.1:$TGTD_PORT/$IQN/1" \
  --run 'nbdinfo --size "$uri"' > $d/out
[ "$(cat $d/out)" = 4194304 ] || fail "size with URL credentials: $(cat $d/out)"

# Mutual CHAP: the target authenticates itself with an outgoing account.
tgtd_cmd --op new --mode account --user tgt --password tgtsecret1234
tgtd_cmd --op bind --mode account --tid 1 --user tgt --outgoing
nbdkit -U $d/s5 "$plugin" url=$url user=alice password=alicesecret12 \
  target-user=tgt target-password=tgtsecret1234 \
  --run 'nbdcopy "$uri" '$d/read2.img
assert_same $d/read2.img $d/lun.img "read with mutual CHAP"
# The target proves a different secret than we expect: refuse it.
if nbdkit -U $d/s6 "$plugin" url=$url user=alice password=alicesecret12 \
     target-user=tgt target-password=notthesecret1 \
     --run 'nbdinfo --size "$uri"' > $d/out 2>&1; then
  fail "mutual CHAP accepted a target with the wrong secret"
fi
grep -qi 'cannot log in' $d/out || fail "unclear error: $(cat $d/out)"
# A URL that does not parse: the error does not quote its password.
if nbdkit -U $d/s7 "$plugin" 'url=iscsi://alice%urlsecret1234@127.0.0.1:3260' \
     --run true > $d/out 2>&1; then
  fail "a URL without a target was accepted"
fi
grep -q 'cannot parse url=' $d/out || fail "unclear error: $(cat $d/out)"
! grep -q urlsecret1234 $d/out || fail "the password is in the error: $(cat $d/out)"
echo OK
