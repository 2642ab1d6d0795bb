/* SPDX-License-Identifier: BSD-3-Clause */
/* For the C unit tests: a device that passes everything to the device it
 * wraps, except where the test's hooks say otherwise (fail a write or a
 * flush, hold a write until released).
 */
#ifndef KVM_TEST_FAULT_BDEV_H
#define KVM_TEST_FAULT_BDEV_H

#include "bdev/bdev.h"
#include "check.h"

/* Called before each write or flush: -1 (with errno set) fails it. */
typedef int (*fault_pwrite_fn) (uint64_t offset, size_t count);
typedef int (*fault_flush_fn) (void);

struct fault_bdev {
  struct bdev bd;
  struct bdev *in;
  fault_pwrite_fn on_pwrite;
  fault_flush_fn on_flush;
};

static inline int
fault_pread (struct bdev *bd, void *buf, size_t n, uint64_t off)
{
  struct bdev *in = ((struct fault_bdev *) bd)->in;
  return in->ops->pread (in, buf, n, off);
}

static inline int
fault_pwrite (struct bdev *bd, const void *buf, size_t n, uint64_t off,
              uint32_t flags)
{
  struct fault_bdev *f = (struct fault_bdev *) bd;
  if (f->on_pwrite && f->on_pwrite (off, n) == -1)
    return -1;
  return f->in->ops->pwrite (f->in, buf, n, off, flags);
}

static inline int
fault_flush (struct bdev *bd)
{
  struct fault_bdev *f = (struct fault_bdev *) bd;
  if (f->on_flush && f->on_flush () == -1)
    return -1;
  return f->in->ops->flush (f->in);
}

static inline void
fault_close (struct bdev *bd)
{
  bdev_close (((struct fault_bdev *) bd)->in);
  bdev_free_common (bd);
}

static const struct bdev_ops fault_ops = {
  .format = "fault", .close = fault_close, .pread = fault_pread,
  .pwrite = fault_pwrite, .flush = fault_flush,
};

/* Wrap IN (taken over: closed with the wrapper). */
static inline struct bdev *
fault_bdev_wrap (struct bdev *in, fault_pwrite_fn on_pwrite,
                 fault_flush_fn on_flush)
{
  struct fault_bdev *f = bdev_alloc (sizeof *f, &fault_ops, "fault");
  CHECK (f);
  f->in = in;
  f->on_pwrite = on_pwrite;
  f->on_flush = on_flush;
  f->bd.size = in->size;
  f->bd.block_size = 512;
  return &f->bd;
}

#endif
