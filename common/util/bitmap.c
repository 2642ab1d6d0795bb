/* SPDX-License-Identifier: BSD-3-Clause */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "bitmap.h"

int
bitmap_init (struct bitmap *bm, uint64_t nbits)
{
  uint64_t bytes = nbits / 8 + (nbits % 8 != 0);
  if (bytes > SIZE_MAX) {
    errno = EFBIG;
    return -1;
  }
  bm->bits = calloc (bytes ? bytes : 1, 1);
  if (!bm->bits)
    return -1;
  bm->nbits = nbits;
  return 0;
}

void
bitmap_free (struct bitmap *bm)
{
  free (bm->bits);
  bm->bits = NULL;
  bm->nbits = 0;
}

void
bitmap_set_range (struct bitmap *bm, uint64_t first, uint64_t n, bool v)
{
  if (first >= bm->nbits)
    return;
  if (n > bm->nbits - first)
    n = bm->nbits - first;
  /* Bits up to a byte boundary, whole bytes, then the tail. */
  while (n && (first & 7)) {
    bitmap_set (bm, first++, v);
    n--;
  }
  memset (&bm->bits[first >> 3], v ? 0xff : 0, n >> 3);
  first += n & ~(uint64_t) 7;
  n &= 7;
  while (n--)
    bitmap_set (bm, first++, v);
}

uint64_t
bitmap_next (const struct bitmap *bm, uint64_t from, bool v)
{
  uint8_t skip = v ? 0x00 : 0xff;   /* a byte with no match */
  while (from < bm->nbits) {
    if ((from & 7) == 0 && bm->bits[from >> 3] == skip) {
      from += 8;
      continue;
    }
    if (bitmap_get (bm, from) == v)
      return from;
    from++;
  }
  return bm->nbits;
}
