/* SPDX-License-Identifier: BSD-3-Clause */
/* Generic part of the block-device interface: argument checks, dispatch
 * and default implementations.  Opening by format name or by probing is in
 * formats.c, so that a program linking only this and bdev_file.c (the lvm
 * plugin) does not carry every format engine.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "bdev.h"
#include "../util/checked.h"
#include "../util/log.h"

void *
bdev_alloc (size_t struct_size, const struct bdev_ops *ops, const char *name)
{
  struct bdev *bd = calloc (1, struct_size);
  if (!bd || !(bd->name = strdup (name))) {
    free (bd);
    errno = ENOMEM;
    kvm_error ("%s: out of memory", name);
    return NULL;
  }
  bd->ops = ops;
  bd->block_size = 1;
  return bd;
}

void
bdev_free_common (struct bdev *bd)
{
  free (bd->name);
  free (bd);
}

void
bdev_close (struct bdev *bd)
{
  if (bd)
    bd->ops->close (bd);
}

static int
check_range (struct bdev *bd, uint64_t count, uint64_t offset, const char *op)
{
  uint64_t size = bdev_size (bd);
  if (!ck_range_within (offset, count, size)) {
    kvm_error ("%s: %s beyond end of device (offset %" PRIu64 " count %"
               PRIu64 " size %" PRIu64 ")", bd->name, op, offset, count,
               size);
    errno = ENOSPC;
    return -1;
  }
  return 0;
}

static int
check_writable (struct bdev *bd, const char *op)
{
  if (bd->readonly) {
    kvm_error ("%s: %s on a read-only device", bd->name, op);
    errno = EROFS;
    return -1;
  }
  return 0;
}

int
bdev_pread (struct bdev *bd, void *buf, size_t count, uint64_t offset)
{
  if (check_range (bd, count, offset, "read") == -1)
    return -1;
  if (count == 0)
    return 0;
  return bd->ops->pread (bd, buf, count, offset);
}

int
bdev_pread_padded (struct bdev *bd, void *buf, size_t count, uint64_t offset)
{
  size_t inside = 0;
  uint64_t size = bdev_size (bd);
  if (offset < size)
    inside = size - offset < count ? size - offset : count;
  if (inside && bd->ops->pread (bd, buf, inside, offset) == -1)
    return -1;
  memset ((char *) buf + inside, 0, count - inside);
  return 0;
}

static int
flush_if_fua (struct bdev *bd, uint32_t flags)
{
  if ((flags & BDEV_FUA) && !(bd->caps & BDEV_CAN_FUA))
    return bd->ops->flush (bd);
  return 0;
}

int
bdev_pwrite (struct bdev *bd, const void *buf, size_t count, uint64_t offset,
             uint32_t flags)
{
  if (check_writable (bd, "write") == -1 ||
      (!bd->growable && check_range (bd, count, offset, "write") == -1))
    return -1;
  if (count && bd->ops->pwrite (bd, buf, count, offset, flags) == -1)
    return -1;
  return flush_if_fua (bd, flags);
}

int
bdev_flush (struct bdev *bd)
{
  if (bd->readonly)
    return 0;
  return bd->ops->flush (bd);
}

int
bdev_trim (struct bdev *bd, uint64_t count, uint64_t offset, uint32_t flags)
{
  if (check_writable (bd, "trim") == -1 ||
      check_range (bd, count, offset, "trim") == -1)
    return -1;
  /* Trim is advisory: a device that cannot trim ignores it. */
  if (count == 0 || !bd->ops->trim)
    return 0;
  if (bd->ops->trim (bd, count, offset, flags) == -1)
    return -1;
  return flush_if_fua (bd, flags);
}

int
bdev_zero_by_writing (struct bdev *bd, uint64_t count, uint64_t offset,
                      uint32_t flags)
{
  static const char zeroes[65536];
  while (count > 0) {
    size_t n = count < sizeof zeroes ? count : sizeof zeroes;
    if (bd->ops->pwrite (bd, zeroes, n, offset, flags & BDEV_FUA) == -1)
      return -1;
    count -= n;
    offset += n;
  }
  return 0;
}

int
bdev_zero (struct bdev *bd, uint64_t count, uint64_t offset, uint32_t flags)
{
  if (check_writable (bd, "zero") == -1 ||
      check_range (bd, count, offset, "zero") == -1)
    return -1;
  if (count == 0)
    return 0;
  if (bd->ops->zero) {
    if (bd->ops->zero (bd, count, offset, flags) == -1)
      return -1;
  }
  else if (flags & BDEV_FAST_ZERO) {
    errno = ENOTSUP;
    return -1;
  }
  else if (bdev_zero_by_writing (bd, count, offset, flags) == -1)
    return -1;
  return flush_if_fua (bd, flags);
}

int
bdev_discard_within (struct bdev *bd, uint64_t count, uint64_t offset,
                     bool trim, uint32_t flags)
{
  uint64_t size = bdev_size (bd);
  if (offset >= size)
    return 0;
  if (count > size - offset)
    count = size - offset;
  if (trim)
    return bdev_trim (bd, count, offset, flags);
  return bdev_zero (bd, count, offset, flags);
}

int
bdev_extents (struct bdev *bd, uint64_t count, uint64_t offset,
              uint32_t flags, bdev_extent_fn fn, void *opaque)
{
  if (check_range (bd, count, offset, "extents") == -1)
    return -1;
  if (count == 0)
    return 0;
  if (!bd->ops->extents)
    return fn (opaque, offset, count, BDEV_EXTENT_DATA);
  return bd->ops->extents (bd, count, offset, flags, fn, opaque);
}

const char *
bdev_open_opt (const struct bdev_open_opts *opts, const char *key)
{
  size_t kl = strlen (key);
  if (!opts->format_opts)
    return NULL;
  for (const char *const *p = opts->format_opts; *p; p++)
    if (strncmp (*p, key, kl) == 0 && (*p)[kl] == '=')
      return *p + kl + 1;
  return NULL;
}
