/* SPDX-License-Identifier: BSD-3-Clause */
/* qcow2 engine. Table caches.  L2 tables and refcount blocks live in bounded
 * LRU caches and stay pinned while dirty, until the next flush.
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
#include "util/grow.h"

int
q2_table_load (void *opaque, uint64_t key, void *buf)
{
  struct load_ctx *ctx = opaque;
  struct qcow2 *q = ctx->q;
  struct tmeta *m = tmeta_of (q, buf);
  m->key = key;
  m->dirty = 0;
  if (ctx->zero)                /* a new table: q2_table_get zeroes it */
    return 0;
  if (bdev_pread_padded (q->file, buf, q->cluster_size, key) == -1) {
    kvm_error ("%s: reading %s at %" PRIu64 " failed", q->path, ctx->what,
               key);
    return -1;
  }
  return 0;
}

/* Check a metadata table offset read from the image. */
int
q2_check_table_offset (struct qcow2 *q, uint64_t off, const char *what)
{
  uint64_t limit = bdev_size (q->file);
  if (q->alloc_end > limit)
    limit = q->alloc_end;
  if (off & (q->cluster_size - 1)) {
    kvm_fail (EIO, "%s: corrupt image: %s offset %#" PRIx64
              " is not cluster aligned", q->path, what, off);
    return -1;
  }
  if (!ck_range_within (off, q->cluster_size, limit)) {
    kvm_fail (EIO, "%s: corrupt image: %s offset %#" PRIx64
              " is beyond the end of the file", q->path, what, off);
    return -1;
  }
  return 0;
}

void *
q2_table_get (struct qcow2 *q, struct lru *c, uint64_t off, const char *what,
              bool zero)
{
  struct load_ctx ctx = { q, what, zero };
  void *p = lru_get (c, off, q2_table_load, &ctx);
  if (!p && errno == ENOMEM)
    kvm_error ("%s: out of memory loading %s", q->path, what);
  /* A new table starts empty, also when its cluster is a reused one that
   * the cache still holds stale content for.
   */
  if (p && zero)
    memset (p, 0, q->cluster_size);
  return p;
}

static int
dirty_add (struct dirty_list *d, void *buf)
{
  if (GROW_FOR (d->v, d->n, d->cap, 64) == -1)
    return -1;
  d->v[d->n++] = buf;
  return 0;
}

/* Mark a pinned table dirty: it takes an extra pin until written back. */
int
q2_mark_dirty (struct qcow2 *q, struct lru *c, struct dirty_list *d, void *buf)
{
  struct tmeta *m = tmeta_of (q, buf);
  if (m->dirty)
    return 0;
  struct load_ctx ctx = { q, "table", false };
  void *again = lru_get (c, m->key, q2_table_load, &ctx);   /* extra pin */
  if (again != buf) {
    lru_put (c, again);
    kvm_fail (EIO, "%s: internal error: cache entry moved", q->path);
    return -1;
  }
  if (dirty_add (d, buf) == -1) {
    lru_put (c, buf);
    kvm_fail (ENOMEM, "%s: out of memory", q->path);
    return -1;
  }
  m->dirty = 1;
  return 0;
}
