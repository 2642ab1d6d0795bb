# SPDX-License-Identifier: BSD-3-Clause
# Shared set-up for the iscsi plugin tests: source after tests/functions.sh.
source "$TOP_SRCDIR/tests/iscsi/tgtd.sh"

requires_plugin iscsi
requires tgtd tgtadm nbdcopy nbdinfo nbdsh python3 cmp

IQN=iqn.2026-11.example:store

requires_nbdsh

# tgtd_one_lun FILE [TGTADM-ARGS...]: start tgtd with target $IQN (tid 1)
# whose LUN 1 is backed by FILE (extra arguments go to the LUN's creation,
# e.g. --blocksize 4096), open to every initiator.
tgtd_one_lun () {
  local file=$1; shift
  tgtd_start
  tgtd_cmd --op new --mode target --tid 1 -T $IQN
  tgtd_cmd --op new --mode logicalunit --tid 1 --lun 1 -b "$file" "$@"
  tgtd_cmd --op bind --mode target --tid 1 -I ALL
}

# tgtd_random_lun SIZE: a backing file $tmpdir/lun.img of SIZE random
# bytes, served as LUN 1 of $IQN by a new tgtd (see tgtd_one_lun).
tgtd_random_lun () {
  random_file "$tmpdir/lun.img" "$1"
  tgtd_one_lun "$tmpdir/lun.img"
}
