# SPDX-License-Identifier: BSD-3-Clause
# The deterministic pattern the e2e guest writes.  Source this file
# (bash); it defines:
#
#   E2E_PATTERN_OFFSET   byte offset on the guest disk (1 MiB; another
#                        multiple of 64 KiB with KVM_E2E_PATTERN_OFFSET,
#                        for a test that boots several times on one disk:
#                        the bytes stay the same, naming sectors from 2048)
#   E2E_PATTERN_LENGTH   length in bytes (1 MiB)
#   e2e_pattern          writes the E2E_PATTERN_LENGTH pattern bytes to stdout
#   e2e_verify_backend_raw FILE [BASE]
#                        compares the pattern region of a raw file with the
#                        pattern; BASE (default 0) is the byte offset in FILE
#                        where guest disk byte 0 lives (e.g. an LV's start
#                        inside a PV).  Prints what it compares, returns 0 on
#                        match, 1 otherwise.
#
# The pattern is 16384 records of 64 bytes: for record number j (0-based),
# with disk sector s = 2048 + j / 8 and r = j % 8, the record is
#   printf '%-63s\n' "kvm-e2e pattern disk-sector $(printf %07d $s) record $r"
# i.e. text padded with spaces to 63 bytes plus a newline.  Every 512-byte
# sector names its own absolute disk sector, so a misplaced or stale sector
# is visible in a hexdump.

E2E_PATTERN_OFFSET=${KVM_E2E_PATTERN_OFFSET:-1048576}
E2E_PATTERN_LENGTH=1048576

e2e_pattern () {
  LC_ALL=C awk 'BEGIN {
    for (j = 0; j < 16384; j++)
      printf "%-63s\n", sprintf("kvm-e2e pattern disk-sector %07d record %d",
                                2048 + int(j / 8), j % 8)
  }'
}

e2e_verify_backend_raw () {
  local file=$1 base=${2:-0} out
  local start=$((base + E2E_PATTERN_OFFSET))
  echo "e2e: comparing $E2E_PATTERN_LENGTH pattern bytes at offset $start of $file"
  if out=$(cmp -n "$E2E_PATTERN_LENGTH" -i "$start:0" -- "$file" <(e2e_pattern) 2>&1); then
    return 0
  fi
  echo "e2e: pattern mismatch in $file: ${out:-short file}" >&2
  return 1
}
