/* SPDX-License-Identifier: BSD-3-Clause */
/* For the C unit tests: a device that fails requests wherever the test's
 * hook says so, the way real storage fails.  A failed write may have
 * landed in part (whole sectors), in full or not at all; a failed read
 * may have scribbled over its buffer; a failed zero may have zeroed a
 * part.  The engines above must cope with every one of them.
 * (fault_bdev.h is the simpler device for failures at chosen points.)
 */
#ifndef KVM_TEST_RANDOM_FAIL_BDEV_H
#define KVM_TEST_RANDOM_FAIL_BDEV_H

#include <errno.h>
#include <string.h>

#include "bdev/bdev.h"
#include "check.h"

enum rfail_op {
  RFAIL_READ, RFAIL_WRITE, RFAIL_FLUSH, RFAIL_TRIM, RFAIL_ZERO,
  RFAIL_EXTENTS,
};

enum rfail_verdict {
  RFAIL_PASS,                   /* pass the request down */
  RFAIL_FAIL,                   /* EIO, perhaps after doing part of it */
  RFAIL_REFUSE,                 /* EIO, with nothing done */
};

struct rfail_bdev;
typedef enum rfail_verdict (*rfail_hook_fn) (struct rfail_bdev *f,
                                             enum rfail_op op,
                                             uint64_t count);
typedef uint64_t (*rfail_rnd_fn) (void);

struct rfail_bdev {
  struct bdev bd;
  struct bdev_ops ops;          /* the wrapped device's set of requests */
  struct bdev *in;
  rfail_hook_fn hook;
  rfail_rnd_fn rnd;             /* picks how much of a failure is done */
  int tag;                      /* the test's own mark for this device */
};

static inline void
rfail_sync_size (struct rfail_bdev *f)
{
  bdev_size_grow (&f->bd, bdev_size (f->in));
}

static inline int
rfail_eio (void)
{
  errno = EIO;
  return -1;
}

static inline int
rfail_pread (struct bdev *bd, void *buf, size_t n, uint64_t off)
{
  struct rfail_bdev *f = (struct rfail_bdev *) bd;
  switch (f->hook (f, RFAIL_READ, n)) {
  case RFAIL_PASS: break;
  case RFAIL_FAIL:
    if (f->rnd () % 2)
      memset (buf, 0xa5, n);
    /* fallthrough */
  case RFAIL_REFUSE: return rfail_eio ();
  }
  /* The engines read what they wrote past the end of a growable file. */
  return bdev_pread_padded (f->in, buf, n, off);
}

static inline int
rfail_pwrite (struct bdev *bd, const void *buf, size_t n, uint64_t off,
              uint32_t flags)
{
  struct rfail_bdev *f = (struct rfail_bdev *) bd;
  switch (f->hook (f, RFAIL_WRITE, n)) {
  case RFAIL_PASS: break;
  case RFAIL_FAIL: {
    unsigned mode = f->rnd () % 3;      /* nothing, a part, all */
    size_t part = mode == 0 ? 0 : mode == 2 ? n
      : (n / 512 > 1 ? (f->rnd () % (n / 512)) * 512 : 0);
    if (part)
      (void) f->in->ops->pwrite (f->in, buf, part, off, flags);
    rfail_sync_size (f);
    return rfail_eio ();
  }
  case RFAIL_REFUSE: return rfail_eio ();
  }
  int r = f->in->ops->pwrite (f->in, buf, n, off, flags);
  rfail_sync_size (f);
  return r;
}

static inline int
rfail_flush (struct bdev *bd)
{
  struct rfail_bdev *f = (struct rfail_bdev *) bd;
  if (f->hook (f, RFAIL_FLUSH, 0) != RFAIL_PASS)
    return rfail_eio ();
  return f->in->ops->flush (f->in);
}

static inline int
rfail_trim (struct bdev *bd, uint64_t n, uint64_t off, uint32_t flags)
{
  struct rfail_bdev *f = (struct rfail_bdev *) bd;
  if (f->hook (f, RFAIL_TRIM, n) != RFAIL_PASS)
    return rfail_eio ();
  int r = f->in->ops->trim (f->in, n, off, flags);
  rfail_sync_size (f);
  return r;
}

static inline int
rfail_zero (struct bdev *bd, uint64_t n, uint64_t off, uint32_t flags)
{
  struct rfail_bdev *f = (struct rfail_bdev *) bd;
  switch (f->hook (f, RFAIL_ZERO, n)) {
  case RFAIL_PASS: break;
  case RFAIL_FAIL:
    if (f->rnd () % 2 && !(flags & BDEV_FAST_ZERO))
      (void) bdev_zero_by_writing (f->in, n / 2 & ~511ull, off, 0);
    rfail_sync_size (f);
    /* fallthrough */
  case RFAIL_REFUSE: return rfail_eio ();
  }
  int r = f->in->ops->zero ? f->in->ops->zero (f->in, n, off, flags)
    : bdev_zero_by_writing (f->in, n, off, flags);
  rfail_sync_size (f);
  return r;
}

static inline int
rfail_extents (struct bdev *bd, uint64_t n, uint64_t off, uint32_t flags,
               bdev_extent_fn fn, void *opq)
{
  struct rfail_bdev *f = (struct rfail_bdev *) bd;
  if (f->hook (f, RFAIL_EXTENTS, n) != RFAIL_PASS)
    return rfail_eio ();
  return f->in->ops->extents (f->in, n, off, flags, fn, opq);
}

static inline void
rfail_close (struct bdev *bd)
{
  bdev_close (((struct rfail_bdev *) bd)->in);
  bdev_free_common (bd);
}

static inline int
rfail_is (const struct bdev *bd)
{
  return bd->ops->close == rfail_close;
}

/* Wrap IN (taken over: closed with the wrapper).  The wrapper offers
 * trim and extents only where IN does.
 */
static inline struct bdev *
rfail_wrap (struct bdev *in, rfail_hook_fn hook, rfail_rnd_fn rnd)
{
  struct rfail_bdev *f = bdev_alloc (sizeof *f, NULL, in->name);
  CHECK (f);
  f->ops = (struct bdev_ops) {
    .format = "raw", .close = rfail_close, .pread = rfail_pread,
    .pwrite = rfail_pwrite, .flush = rfail_flush,
    .trim = in->ops->trim ? rfail_trim : NULL,
    .zero = rfail_zero,
    .extents = in->ops->extents ? rfail_extents : NULL,
  };
  f->bd.ops = &f->ops;
  f->in = in;
  f->hook = hook;
  f->rnd = rnd;
  f->bd.size = bdev_size (in);
  f->bd.readonly = in->readonly;
  f->bd.caps = in->caps;
  f->bd.block_size = in->block_size;
  f->bd.growable = in->growable;
  return &f->bd;
}

/* For a test linked with -Wl,--wrap=bdev_storage_open,--wrap=bdev_file_fd:
 * every file an engine opens is wrapped with HOOK and RND, and its
 * descriptor is hidden (so that the engines go through the device)
 * unless GIVE_FD is true when they ask.
 */
#define RFAIL_WRAP_STORAGE(hook, rnd, give_fd)                          \
  struct bdev *__real_bdev_storage_open (const char *,                  \
                                         const struct bdev_open_opts *); \
  struct bdev *__wrap_bdev_storage_open (const char *,                  \
                                         const struct bdev_open_opts *); \
  int __real_bdev_file_fd (struct bdev *);                              \
  int __wrap_bdev_file_fd (struct bdev *);                              \
  struct bdev *                                                         \
  __wrap_bdev_storage_open (const char *path,                           \
                            const struct bdev_open_opts *opts)          \
  {                                                                     \
    struct bdev *in = __real_bdev_storage_open (path, opts);            \
    return in ? rfail_wrap (in, (hook), (rnd)) : NULL;                  \
  }                                                                     \
  int                                                                   \
  __wrap_bdev_file_fd (struct bdev *bd)                                 \
  {                                                                     \
    if (!rfail_is (bd))                                                 \
      return __real_bdev_file_fd (bd);                                  \
    return (give_fd) ? __real_bdev_file_fd (((struct rfail_bdev *) bd)->in) \
      : -1;                                                             \
  }

#endif
