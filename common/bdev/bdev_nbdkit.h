/* Serving a struct bdev from an nbdkit plugin: the data callbacks of a
 * plugin whose handle leads to a bdev are one call each into these.
 *
 * Header only, for plugins: common/ itself does not depend on nbdkit.
 * Include it after <nbdkit-plugin.h> (with NBDKIT_API_VERSION 2).
 */
#ifndef KVM_BDEV_NBDKIT_H
#define KVM_BDEV_NBDKIT_H

#if !defined NBDKIT_API_VERSION || NBDKIT_API_VERSION < 2
#error "include <nbdkit-plugin.h> with NBDKIT_API_VERSION 2 first"
#endif

#include <errno.h>
#include <stdint.h>

#include "bdev/bdev.h"

/* NBDKIT_FLAG_* -> BDEV_* */
static inline uint32_t
bdev_flags_of_nbdkit (uint32_t f)
{
  uint32_t b = 0;
  if (f & NBDKIT_FLAG_FUA) b |= BDEV_FUA;
  if (f & NBDKIT_FLAG_MAY_TRIM) b |= BDEV_MAY_TRIM;
  if (f & NBDKIT_FLAG_FAST_ZERO) b |= BDEV_FAST_ZERO;
  if (f & NBDKIT_FLAG_REQ_ONE) b |= BDEV_REQ_ONE;
  return b;
}

/* Pass a bdev result on, with its errno as the NBD error (ENOTSUP for a
 * fast zero that would be slow, ENOSPC, EIO, ...).
 */
static inline int
bdev_nbdkit_result (int r)
{
  if (r == -1)
    nbdkit_set_error (errno ? errno : EIO);
  return r;
}

static inline int
bdev_nbdkit_pread (struct bdev *bd, void *buf, uint32_t count,
                   uint64_t offset)
{
  return bdev_nbdkit_result (bdev_pread (bd, buf, count, offset));
}

static inline int
bdev_nbdkit_pwrite (struct bdev *bd, const void *buf, uint32_t count,
                    uint64_t offset, uint32_t flags)
{
  return bdev_nbdkit_result (bdev_pwrite (bd, buf, count, offset,
                                          bdev_flags_of_nbdkit (flags)));
}

static inline int
bdev_nbdkit_flush (struct bdev *bd)
{
  return bdev_nbdkit_result (bdev_flush (bd));
}

static inline int
bdev_nbdkit_trim (struct bdev *bd, uint32_t count, uint64_t offset,
                  uint32_t flags)
{
  return bdev_nbdkit_result (bdev_trim (bd, count, offset,
                                        bdev_flags_of_nbdkit (flags)));
}

static inline int
bdev_nbdkit_zero (struct bdev *bd, uint32_t count, uint64_t offset,
                  uint32_t flags)
{
  return bdev_nbdkit_result (bdev_zero (bd, count, offset,
                                        bdev_flags_of_nbdkit (flags)));
}

static inline int
bdev_nbdkit_add_extent (void *extents, uint64_t offset, uint64_t length,
                        uint32_t type)
{
  return nbdkit_add_extent (extents, offset, length, type);
}

static inline int
bdev_nbdkit_extents (struct bdev *bd, uint32_t count, uint64_t offset,
                     uint32_t flags, struct nbdkit_extents *extents)
{
  return bdev_nbdkit_result (bdev_extents (bd, count, offset,
                                           bdev_flags_of_nbdkit (flags),
                                           bdev_nbdkit_add_extent, extents));
}

#endif
