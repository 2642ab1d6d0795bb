#!/bin/bash
# SPDX-License-Identifier: BSD-3-Clause
# The snapshot filter over nbdkit's memory plugin (zeroes at every start,
# so the chain alone carries the data across restarts): operations,
# restarts, @NAME exports and commit against the model.
source "${TOP_SRCDIR:?run the tests through ctest, which sets TOP_SRCDIR}/tests/functions.sh"
source "$TOP_SRCDIR/tests/snapshot/snapshot-lib.sh"

snapshot_model --size $((16 * 1024 * 1024)) --seed 12 \
  --rounds "${SNAPSHOT_TEST_ROUNDS:-12}" --commit -- memory size=16M
