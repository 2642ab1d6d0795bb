/* SPDX-License-Identifier: BSD-3-Clause */
/* qcow2 engine. Header and flush: dirty metadata is written back in
 * dependency order (see qcow2.c for the crash-safety rules).
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <linux/falloc.h>
#include <sys/stat.h>

#include "qcow2.h"
#include "qcow2_int.h"
#include "util/checked.h"
#include "util/endian.h"
#include "util/log.h"
#include "util/lru.h"

int
q2_sync_file (struct qcow2 *q, struct bdev *b)
{
  (void) q;
  return b->ops->flush (b);
}

int
q2_write_header (struct qcow2 *q)
{
  store_be32 (q->hdr + H_L1_SIZE, q->l1_size);
  store_be64 (q->hdr + H_L1_OFFSET, q->l1_offset);
  store_be64 (q->hdr + H_RT_OFFSET, q->rt_offset);
  store_be32 (q->hdr + H_RT_CLUSTERS, q->rt_clusters);
  if (q->version >= 3) {
    store_be64 (q->hdr + H_INCOMPAT, q->incompat);
    store_be64 (q->hdr + H_AUTOCLEAR, q->autoclear);
  }
  if (bdev_pwrite (q->file, q->hdr, q->header_write_len, 0, 0) == -1)
    return -1;
  return 0;
}

static int
write_table (struct qcow2 *q, const uint64_t *t, uint64_t n, uint64_t off,
             uint64_t bytes)
{
  uint8_t *buf = calloc (1, bytes);
  if (!buf) {
    kvm_fail (ENOMEM, "%s: out of memory", q->path);
    return -1;
  }
  for (uint64_t i = 0; i < n; i++)
    store_be64 (buf + 8 * i, t[i]);
  int r = bdev_pwrite (q->file, buf, bytes, off, 0);
  free (buf);
  return r;
}

static int
write_dirty (struct qcow2 *q, struct lru *c, struct dirty_list *d)
{
  for (size_t i = 0; i < d->n; i++) {
    void *buf = d->v[i];
    struct tmeta *m = tmeta_of (q, buf);
    if (q2_check_table_write (q, m->key, c == q->l2c ? Q2_META_L2
                              : Q2_META_REFBLOCK) == -1 ||
        bdev_pwrite (q->file, buf, q->cluster_size, m->key, 0) == -1)
      return -1;
  }
  for (size_t i = 0; i < d->n; i++) {
    tmeta_of (q, d->v[i])->dirty = 0;
    lru_put (c, d->v[i]);
  }
  d->n = 0;
  return 0;
}

/* Give [OFF, OFF+LEN) of the container back (best effort): a hole in a
 * container file, else a trim of the container where it can trim.
 */
void
q2_punch (struct qcow2 *q, uint64_t off, uint64_t len)
{
  if (q->fd >= 0) {
    (void) fallocate (q->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                      off, len);
    return;
  }
  uint64_t size = bdev_size (q->file);
  if (!(q->file->caps & BDEV_CAN_TRIM) || off >= size)
    return;
  if (len > size - off)
    len = size - off;
  (void) bdev_trim (q->file, len, off, 0);
}

/* Cluster OFF has just dropped to refcount 0, and no table on disk refers
 * to it any more: give its space back to the file system, and let the
 * allocator hand it out again.  Its old data may still be there (punching
 * is best effort), so it no longer counts as never written.
 */
void
q2_release_cluster (struct qcow2 *q, uint64_t off)
{
  q2_punch (q, off, q->cluster_size);
  if (q->cfree && (q->cfree & ~(q->cluster_size - 1)) == off)
    q->cfree = 0;               /* no more compressed data packed there */
  if (off < q->cursor)
    q->cursor = off;
  if (off + q->cluster_size > q->zero_from)
    q->zero_from = off + q->cluster_size;
}

/* Make the file cover every allocated cluster before tables that map
 * them are written: a new cluster whose data write failed (it stays
 * mapped, reading as zeroes) must not lie past the end of the file,
 * which qemu-img check counts as corruption.  A local file is extended
 * with ftruncate.  Another growable container (an image on NFS) gets
 * zeroes written past its end, once no deferred write can still be on
 * its way there (they run without the lock, and would be overwritten).
 * A container of fixed size (qcow2_open_container, or a block device,
 * which has a descriptor) has nothing allocated past its end, though
 * alloc_end may be rounded up beyond it.  Exclusive lock held.
 */
static int
cover_allocated (struct qcow2 *q)
{
  static const uint8_t zeroes[4096];
  /* First: a block device has a descriptor too, and its size need not
   * be a whole number of clusters (alloc_end starts rounded up), but it
   * cannot be extended (ftruncate fails with EINVAL).
   */
  if (!q->file->growable)
    return 0;
  if (q->fd >= 0) {
    if (ftruncate (q->fd, q->alloc_end) == -1)
      return kvm_fail (errno, "%s: extending the file: %m", q->path);
    bdev_size_grow (q->file, q->alloc_end);
    return 0;
  }
  pthread_mutex_lock (&q->deferred_lock);
  while (q->deferred_inflight)
    pthread_cond_wait (&q->deferred_done, &q->deferred_lock);
  pthread_mutex_unlock (&q->deferred_lock);
  /* The last bytes are enough: what lies between reads as zeroes. */
  uint64_t size = bdev_size (q->file);
  if (size >= q->alloc_end)
    return 0;
  size_t n = q->alloc_end - size < sizeof zeroes ? q->alloc_end - size
    : sizeof zeroes;
  return bdev_pwrite (q->file, zeroes, n, q->alloc_end - n, 0);
}

/* Write back everything, in dependency order.  Exclusive lock held. */
int
q2_flush_locked (struct qcow2 *q)
{
  if (q->bd.readonly)
    return 0;
  /* Persistent bitmaps: their data first (may allocate clusters), their
   * tables and directory once those refcounts are durable (below).
   */
  if (q2_bitmap_prepare (q) == -1)
    return -1;

  bool meta = q->drb.n || q->rt_dirty || q->dl2.n || q->l1_dirty ||
    q->header_dirty;

  if (q->external_data && q2_sync_file (q, q->data) == -1)
    return -1;
  if (!meta && !q->npending && !q->old_rt_offset)
    return q2_sync_file (q, q->file) == -1 ? -1 : q2_bitmap_commit (q);

  if (bdev_size (q->file) < q->alloc_end && cover_allocated (q) == -1)
    return -1;
  if (write_dirty (q, q->rbc, &q->drb) == -1 || q2_sync_file (q, q->file) == -1)
    return -1;
  if (q->rt_dirty) {
    if (q2_check_fixed_table_write (q, q->rt_offset,
                                    q->rt_clusters * q->cluster_size,
                                    "refcount table") == -1 ||
        write_table (q, q->rt, q->rt_entries, q->rt_offset,
                     q->rt_clusters * q->cluster_size) == -1 ||
        q2_sync_file (q, q->file) == -1)
      return -1;
    q->rt_dirty = false;
    /* A relocated table must be the one in use before any L2 table can
     * refer to clusters whose refcount blocks only it knows.
     */
    if (q->header_dirty) {
      if (q2_write_header (q) == -1 || q2_sync_file (q, q->file) == -1)
        return -1;
      q->header_dirty = false;
    }
  }
  if (q->dl2.n) {
    if (write_dirty (q, q->l2c, &q->dl2) == -1 ||
        q2_sync_file (q, q->file) == -1)
      return -1;
  }
  if (q->l1_dirty || q->header_dirty) {
    if (q->l1_dirty &&
        (q2_check_fixed_table_write (q, q->l1_offset, q->l1_size * 8,
                                     "L1 table") == -1 ||
         write_table (q, q->l1, q->l1_size, q->l1_offset,
                      q->l1_size * 8) == -1))
      return -1;
    if (q->header_dirty && q2_write_header (q) == -1)
      return -1;
    if (q2_sync_file (q, q->file) == -1)
      return -1;
    q->l1_dirty = q->header_dirty = false;
  }
  if (q2_bitmap_commit (q) == -1)
    return -1;

  /* Everything that dropped its last on-disk reference can go now, once
   * no write's late data can still be on its way into it.
   */
  if (q->npending || q->old_rt_offset) {
    pthread_mutex_lock (&q->deferred_lock);
    while (q->deferred_inflight)
      pthread_cond_wait (&q->deferred_done, &q->deferred_lock);
    pthread_mutex_unlock (&q->deferred_lock);
  }
  if (q->old_rt_offset) {
    for (uint64_t i = 0; i < q->old_rt_clusters; i++)
      if (q2_defer_free (q, q->old_rt_offset + i * q->cluster_size) == -1)
        return -1;
    q->old_rt_offset = q->old_rt_clusters = 0;
  }
  size_t n = q->npending;
  q->npending = 0;
  for (size_t i = 0; i < n; i++) {
    uint64_t off = q->pending_free[i], v;
    if (q2_refcount_update (q, off, -1, &v) == -1)
      return -1;
    if (v == 0)
      q2_release_cluster (q, off);
  }
  return 0;
}

/* Keep the number of pinned dirty tables bounded. */
int
q2_maybe_flush (struct qcow2 *q)
{
  if (q->dl2.n > q->l2c_capacity / 2 + 8 ||
      q->drb.n > q->rbc_capacity / 2 + 8 || q->npending > 65536)
    return q2_flush_locked (q);
  return 0;
}
