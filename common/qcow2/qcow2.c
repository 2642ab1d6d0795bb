/* SPDX-License-Identifier: BSD-3-Clause */
/* qcow2 engine: reads and writes qcow2 images (v2 / v3) through the
 * block-device interface.
 *
 * Concurrency: one rwlock per image.  Reads, extents and writes into
 * clusters that are already allocated (refcount 1) take it shared and do
 * their data I/O in parallel; anything that changes metadata takes it
 * exclusive.  L2 tables and refcount blocks live in bounded LRU caches;
 * modified ones are kept pinned ("dirty") until the next flush.
 *
 * Crash safety: metadata is written back only at flush time, in dependency
 * order, with fdatasync between the steps:
 *   1. data clusters (already written) + refcount blocks
 *   2. refcount table
 *   3. L2 tables
 *   4. L1 table and header
 * so nothing on disk ever refers to a cluster whose data or refcount is not
 * yet durable.  Clusters that stop being referenced are only decremented
 * after the flush that removed the last on-disk reference, so a crash can
 * leak clusters but never leave a refcount lower than its references.
 * Allocation takes the lowest free cluster at or after a cursor; a freed
 * cluster moves the cursor back to it once its refcount reaches 0, i.e.
 * after the flush that removed its last on-disk reference, so reusing it
 * can never be seen through an old table.  Freed space is also returned to
 * the file system with hole punching.
 *
 * Persistent dirty bitmaps are kept valid (qcow2_bitmap.c): marked in use
 * on disk before guest content changes, their bits set before the data is
 * written, stored and unmarked by each flush.
 */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "qcow2.h"
#include "qcow2_int.h"
#include "util/checked.h"
#include "util/endian.h"
#include "util/log.h"
#include "util/lru.h"

struct read_ctx {
  uint8_t *buf;
  uint64_t base;
};

static int
read_run (struct qcow2 *q, void *opaque, enum utype type, uint64_t guest,
          uint64_t host, uint64_t len, uint64_t entry)
{
  struct read_ctx *rc = opaque;
  uint8_t *p = rc->buf + (guest - rc->base);
  switch (type) {
  case U_DATA:
    return bdev_pread_padded (q->data, p, len, host);
  case U_ZERO:
    memset (p, 0, len);
    return 0;
  case U_UNALLOC:
    if (q->backing)
      return bdev_pread_padded (q->backing, p, len, guest);
    memset (p, 0, len);
    return 0;
  case U_COMPRESSED: {
    /* A whole cluster inflates straight into the caller's buffer. */
    if ((guest & (q->cluster_size - 1)) == 0 && len == q->cluster_size)
      return q2_read_compressed (q, entry, p);
    uint8_t *tmp = malloc (q->cluster_size);
    if (!tmp) {
      kvm_fail (ENOMEM, "%s: out of memory", q->path);
      return -1;
    }
    int r = q2_read_compressed (q, entry, tmp);
    if (r == 0)
      memcpy (p, tmp + (guest & (q->cluster_size - 1)), len);
    free (tmp);
    return r;
  }
  }
  return 0;
}

int
q2_read_locked (struct qcow2 *q, void *buf, uint64_t count, uint64_t offset)
{
  struct read_ctx rc = { buf, offset };
  return q2_walk (q, q->l1, q->l1_size, offset, count, read_run, &rc);
}

int
qcow2_pread (struct bdev *bd, void *buf, size_t count, uint64_t offset)
{
  struct qcow2 *q = (struct qcow2 *) bd;
  pthread_rwlock_rdlock (&q->lock);
  int r = q2_read_locked (q, buf, count, offset);
  pthread_rwlock_unlock (&q->lock);
  return r;
}

/* ------------------------------------------------------------------ */
/* Extents. */

struct ext_ctx {
  bdev_extent_fn fn;
  void *opaque;
  uint32_t flags;
  bool stop;
  /* pending extent, merged */
  bool have;
  uint64_t off, len;
  uint32_t type;
};

static int
ext_emit (struct ext_ctx *x, uint64_t off, uint64_t len, uint32_t type)
{
  if (x->stop)
    return 0;
  if (x->have && x->type == type && x->off + x->len == off) {
    x->len += len;
    return 0;
  }
  if (x->have) {
    if (x->fn (x->opaque, x->off, x->len, x->type) == -1)
      return -1;
    if (x->flags & BDEV_REQ_ONE) {
      x->stop = true;
      x->have = false;
      return 0;
    }
  }
  x->have = true;
  x->off = off; x->len = len; x->type = type;
  return 0;
}

static int
backing_ext_cb (void *opaque, uint64_t off, uint64_t len, uint32_t type)
{
  return ext_emit (opaque, off, len, type);
}

/* Allocated data: like QEMU, report ranges that are holes in the file
 * underneath as zero (but allocated).
 */
struct data_ext {
  struct ext_ctx *x;
  uint64_t delta;               /* guest - host */
};

static int
data_ext_cb (void *opaque, uint64_t off, uint64_t len, uint32_t type)
{
  struct data_ext *d = opaque;
  return ext_emit (d->x, off + d->delta, len,
                   (type & BDEV_EXTENT_ZERO) ? BDEV_EXTENT_ZERO
                   : BDEV_EXTENT_DATA);
}

/* Was the image preallocated with preallocation=metadata (many more
 * clusters in use than the file has blocks)?  The same heuristic as QEMU,
 * which looks at the file's holes under allocated clusters only then.
 * Shared lock held.
 */
static bool
metadata_preallocated (struct qcow2 *q)
{
  int v = __atomic_load_n (&q->meta_prealloc, __ATOMIC_ACQUIRE);
  if (v >= 0)
    return v;
  pthread_mutex_lock (&q->detect_lock);
  if (q->meta_prealloc < 0) {
    struct stat st;
    v = 0;
    if (q->fd >= 0 && fstat (q->fd, &st) == 0) {
      uint64_t real = (uint64_t) st.st_blocks * 512 / q->cluster_size;
      uint64_t threshold = real * 10 / 9 > real + 2 ? real * 10 / 9 : real + 2;
      uint64_t end = div_round_up64 (bdev_size (q->file), q->cluster_size);
      uint64_t per = 1ull << q->rb_bits, count = 0;
      for (uint64_t ri = 0; ri < q->rt_entries && ri * per < end &&
             count <= threshold; ri++) {
        uint64_t rb = q->rt[ri] & REFT_OFFSET_MASK;
        uint8_t *b;
        if (rb == 0 || q2_check_table_offset (q, rb, "refcount block") == -1 ||
            !(b = q2_table_get (q, q->rbc, rb, "refcount block", false)))
          continue;
        for (uint64_t i = 0; i < per && ri * per + i < end &&
               count <= threshold; i++)
          count += rc_get (q, b, i) != 0;
        lru_put (q->rbc, b);
      }
      v = count > threshold;
    }
    __atomic_store_n (&q->meta_prealloc, v, __ATOMIC_RELEASE);
  }
  v = q->meta_prealloc;
  pthread_mutex_unlock (&q->detect_lock);
  return v;
}

static int
data_extents (struct qcow2 *q, struct ext_ctx *x, uint64_t guest,
              uint64_t host, uint64_t len)
{
  uint64_t size = q->data->size, inside = 0;
  if (!(q->data->caps & BDEV_CAN_EXTENTS) || q->external_data ||
      !metadata_preallocated (q))
    return ext_emit (x, guest, len, BDEV_EXTENT_DATA);
  if (host < size)
    inside = size - host < len ? size - host : len;
  if (inside) {
    struct data_ext d = { x, guest - host };
    if (bdev_extents (q->data, inside, host, 0, data_ext_cb, &d) == -1)
      return -1;
  }
  if (len > inside)
    return ext_emit (x, guest + inside, len - inside, BDEV_EXTENT_ZERO);
  return 0;
}

static int
ext_run (struct qcow2 *q, void *opaque, enum utype type, uint64_t guest,
         uint64_t host, uint64_t len, uint64_t entry)
{
  struct ext_ctx *x = opaque;
  (void) entry;
  if (x->stop)
    return 1;
  switch (type) {
  case U_DATA:
    return data_extents (q, x, guest, host, len);
  case U_COMPRESSED:
    return ext_emit (x, guest, len, BDEV_EXTENT_DATA);
  case U_ZERO:
    return ext_emit (x, guest, len, BDEV_EXTENT_HOLE | BDEV_EXTENT_ZERO);
  case U_UNALLOC:
    if (q->backing) {
      uint64_t bsize = q->backing->size;
      uint64_t inside = 0;
      if (guest < bsize)
        inside = bsize - guest < len ? bsize - guest : len;
      if (inside && bdev_extents (q->backing, inside, guest, 0,
                                  backing_ext_cb, x) == -1)
        return -1;
      if (len > inside)
        return ext_emit (x, guest + inside, len - inside,
                         BDEV_EXTENT_HOLE | BDEV_EXTENT_ZERO);
      return 0;
    }
    return ext_emit (x, guest, len, BDEV_EXTENT_HOLE | BDEV_EXTENT_ZERO);
  }
  return 0;
}

int
qcow2_extents (struct bdev *bd, uint64_t count, uint64_t offset,
               uint32_t flags, bdev_extent_fn fn, void *opaque)
{
  struct qcow2 *q = (struct qcow2 *) bd;
  struct ext_ctx x = { .fn = fn, .opaque = opaque, .flags = flags };
  pthread_rwlock_rdlock (&q->lock);
  int r = q2_walk (q, q->l1, q->l1_size, offset, count, ext_run, &x);
  pthread_rwlock_unlock (&q->lock);
  if (r == 0 && x.have)
    r = fn (opaque, x.off, x.len, x.type);
  return r;
}
