/* SPDX-License-Identifier: BSD-3-Clause */
/* Overflow-checked arithmetic for every size, offset and count that comes
 * from an image, metadata or a client.  All helpers return true on success
 * and false when the result would not fit; callers turn false into a clear
 * error (usually EINVAL/EFBIG), never into a wrapped value.
 */
#ifndef KVM_CHECKED_H
#define KVM_CHECKED_H

#include <stdbool.h>
#include <stdint.h>
#include <stddef.h>

static inline bool
ck_add64 (uint64_t a, uint64_t b, uint64_t *r)
{
  return !__builtin_add_overflow (a, b, r);
}

static inline bool
ck_mul64 (uint64_t a, uint64_t b, uint64_t *r)
{
  return !__builtin_mul_overflow (a, b, r);
}

static inline bool
ck_sub64 (uint64_t a, uint64_t b, uint64_t *r)
{
  return !__builtin_sub_overflow (a, b, r);
}

static inline bool
ck_size_mul (size_t a, size_t b, size_t *r)
{
  return !__builtin_mul_overflow (a, b, r);
}

/* a + b * c */
static inline bool
ck_muladd64 (uint64_t a, uint64_t b, uint64_t c, uint64_t *r)
{
  uint64_t t;
  return ck_mul64 (b, c, &t) && ck_add64 (a, t, r);
}

/* Is [off, off+len) inside [0, limit)?  Safe for any inputs. */
static inline bool
ck_range_within (uint64_t off, uint64_t len, uint64_t limit)
{
  uint64_t end;
  return ck_add64 (off, len, &end) && end <= limit;
}

/* Round up to a power-of-two alignment, failing on overflow. */
static inline bool
ck_round_up64 (uint64_t v, uint64_t align_pow2, uint64_t *r)
{
  uint64_t t;
  if (!ck_add64 (v, align_pow2 - 1, &t))
    return false;
  *r = t & ~(align_pow2 - 1);
  return true;
}

static inline bool
is_power_of_2 (uint64_t v)
{
  return v && !(v & (v - 1));
}

/* Ceiling division for b > 0 (never overflows). */
static inline uint64_t
div_round_up64 (uint64_t a, uint64_t b)
{
  return a / b + (a % b != 0);
}

#endif
