/* SPDX-License-Identifier: BSD-3-Clause */
/* A plain bitmap of N bits, optionally several bits per entry. */
#ifndef KVM_BITMAP_H
#define KVM_BITMAP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct bitmap {
  uint8_t *bits;
  uint64_t nbits;
};

/* Returns -1 (ENOMEM/EFBIG) on failure. */
int bitmap_init (struct bitmap *bm, uint64_t nbits);
void bitmap_free (struct bitmap *bm);

static inline bool
bitmap_get (const struct bitmap *bm, uint64_t i)
{
  return i < bm->nbits && (bm->bits[i >> 3] >> (i & 7)) & 1;
}

static inline void
bitmap_set (struct bitmap *bm, uint64_t i, bool v)
{
  if (i >= bm->nbits)
    return;
  if (v)
    bm->bits[i >> 3] |= 1u << (i & 7);
  else
    bm->bits[i >> 3] &= ~(1u << (i & 7));
}

/* Set bits [first, first + n) to V (clamped to the bitmap). */
void bitmap_set_range (struct bitmap *bm, uint64_t first, uint64_t n, bool v);

/* Index of the first bit equal to V at or after FROM, or nbits. */
uint64_t bitmap_next (const struct bitmap *bm, uint64_t from, bool v);

#endif
