#!/bin/bash
# SPDX-License-Identifier: BSD-3-Clause
# Every source file of the project (tracked by git, or every file when the
# tree is not a git checkout) starts with its SPDX licence line.  The list
# of file types and the check live in scripts/add-spdx.sh, which also adds
# the line where it is missing.
source "${TOP_SRCDIR:?run the tests through ctest, which sets TOP_SRCDIR}/tests/functions.sh"
out=$(bash "$TOP_SRCDIR/scripts/add-spdx.sh" --check 2>&1) ||
  fail "source files without an SPDX line (run scripts/add-spdx.sh):
$out"
echo "$out"
