/* SPDX-License-Identifier: BSD-3-Clause */
/* Comparison helpers for qsort and bsearch. */
#ifndef KVM_SORT_H
#define KVM_SORT_H

#include <stdint.h>

/* Orders two uint64_t (-1, 0, 1; not a difference, which would not fit
 * in an int).
 */
static inline int
kvm_cmp_u64 (const void *a, const void *b)
{
  uint64_t x = *(const uint64_t *) a, y = *(const uint64_t *) b;
  return x < y ? -1 : x > y;
}

#endif
