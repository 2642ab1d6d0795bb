/* SPDX-License-Identifier: BSD-3-Clause */
/* qcow2 engine. Refcounts: reading and updating refcount entries, refcount
 * table growth, cluster allocation (first free cluster from a cursor),
 * deferred frees.
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

static void
rc_set (const struct qcow2 *q, uint8_t *b, uint64_t i, uint64_t v)
{
  unsigned sh;
  switch (q->refcount_order) {
  case 0: sh = i % 8; b[i / 8] = (b[i / 8] & ~(1u << sh)) | (v << sh); break;
  case 1: sh = 2 * (i % 4);
    b[i / 4] = (b[i / 4] & ~(3u << sh)) | (v << sh); break;
  case 2: sh = 4 * (i % 2);
    b[i / 2] = (b[i / 2] & ~(15u << sh)) | (v << sh); break;
  case 3: b[i] = v; break;
  case 4: store_be16 (b + 2 * i, v); break;
  case 5: store_be32 (b + 4 * i, v); break;
  default: store_be64 (b + 8 * i, v); break;
  }
}

/* Refcount of the cluster at host offset OFF (-1 on error). */
int
q2_refcount_get (struct qcow2 *q, uint64_t off, uint64_t *rc)
{
  uint64_t idx = off >> q->cluster_bits;
  uint64_t ri = idx >> q->rb_bits;
  if (ri >= q->rt_entries) {
    *rc = 0;
    return 0;
  }
  uint64_t rb = q->rt[ri] & REFT_OFFSET_MASK;
  if (rb == 0) {
    *rc = 0;
    return 0;
  }
  if (q2_check_table_offset (q, rb, "refcount block") == -1)
    return -1;
  uint8_t *b = q2_table_get (q, q->rbc, rb, "refcount block", false);
  if (!b)
    return -1;
  *rc = rc_get (q, b, idx & ((1ull << q->rb_bits) - 1));
  lru_put (q->rbc, b);
  return 0;
}

/* Host offset of the first cluster at or after FROM (cluster aligned)
 * with refcount 0.  Scans whole refcount blocks, so that a cursor moved
 * back by a free does not cost a cache lookup per cluster in use.
 */
static int
first_free (struct qcow2 *q, uint64_t from, uint64_t *off)
{
  const uint64_t limit = (1ull << 56) >> q->cluster_bits;  /* in clusters */
  const uint64_t per = 1ull << q->rb_bits;
  uint64_t idx = from >> q->cluster_bits;
  for (;;) {
    uint64_t ri = idx >> q->rb_bits, rb, i;
    if (idx >= limit || ri >= q->rt_entries ||
        (rb = q->rt[ri] & REFT_OFFSET_MASK) == 0)
      break;
    if (q2_check_table_offset (q, rb, "refcount block") == -1)
      return -1;
    uint8_t *b = q2_table_get (q, q->rbc, rb, "refcount block", false);
    if (!b)
      return -1;
    for (i = idx & (per - 1); i < per && rc_get (q, b, i) != 0; i++)
      ;
    lru_put (q->rbc, b);
    if (i < per) {
      idx = (ri << q->rb_bits) + i;
      break;
    }
    idx = (ri + 1) << q->rb_bits;
  }
  /* Past the limit the caller's size check fails with ENOSPC. */
  *off = idx < limit ? idx << q->cluster_bits : 1ull << 56;
  return 0;
}

/* Reserve N contiguous free clusters, the first at or after the allocation
 * cursor, without touching refcounts (the caller does).
 */
static int
reserve_clusters (struct qcow2 *q, uint64_t n, uint64_t *off)
{
  for (;;) {
    uint64_t start, len, end, i;
    if (first_free (q, q->cursor, &start) == -1)
      return -1;
    if (!ck_mul64 (n, q->cluster_size, &len) ||
        !ck_add64 (start, len, &end) || end > (1ull << 56)) {
      kvm_fail (ENOSPC, "%s: image file would exceed the qcow2 size limit",
                q->path);
      return -1;
    }
    if (!q->file->growable && end > bdev_size (q->file)) {
      kvm_fail (ENOSPC, "%s: no free cluster left in the container (%" PRIu64
                " bytes)", q->path, bdev_size (q->file));
      return -1;
    }
    for (i = 1; i < n; i++) {
      uint64_t rc;
      if (q2_refcount_get (q, start + i * q->cluster_size, &rc) == -1)
        return -1;
      if (rc)
        break;
    }
    if (i == n) {
      q->cursor = end;
      if (end > q->alloc_end)
        q->alloc_end = end;
      *off = start;
      return 0;
    }
    q->cursor = start + (i + 1) * q->cluster_size;
  }
}

/* Grow the refcount table so that index NEED exists. */
static int
grow_reftable (struct qcow2 *q, uint64_t need)
{
  uint64_t per = q->cluster_size / 8;
  uint64_t want = need + 1;
  if (want < q->rt_entries * 2)
    want = q->rt_entries * 2;
  want += 4;                    /* room for the table's own blocks */
  uint64_t nclusters = div_round_up64 (want, per);
  if (nclusters * q->cluster_size > MAX_RT_BYTES) {
    kvm_fail (ENOSPC, "%s: refcount table would exceed %u MiB", q->path,
              MAX_RT_BYTES >> 20);
    return -1;
  }
  uint64_t entries = nclusters * per;
  uint64_t *nrt = calloc (entries, 8);
  if (!nrt) {
    kvm_fail (ENOMEM, "%s: out of memory", q->path);
    return -1;
  }
  memcpy (nrt, q->rt, q->rt_entries * 8);
  uint64_t off;
  if (reserve_clusters (q, nclusters, &off) == -1) {
    free (nrt);
    return -1;
  }
  /* The table the header on disk names (old_rt_offset) is freed after
   * the next successful flush.  A table allocated since then is freed at
   * the same point, not at once: a flush that failed after writing the
   * header may have left the header naming it.
   */
  uint64_t prev_off = q->rt_offset, prev_clusters = q->rt_clusters;
  bool prev_intermediate = q->old_rt_offset != 0;
  if (q->old_rt_offset == 0) {
    q->old_rt_offset = q->rt_offset;
    q->old_rt_clusters = q->rt_clusters;
  }
  free (q->rt);
  q->rt = nrt;
  q->rt_entries = entries;
  q->rt_offset = off;
  q->rt_clusters = nclusters;
  q->rt_dirty = q->header_dirty = true;
  for (uint64_t i = 0; i < nclusters; i++)
    if (q2_refcount_update (q, off + i * q->cluster_size, 1, NULL) == -1)
      return -1;
  if (prev_intermediate)
    for (uint64_t i = 0; i < prev_clusters; i++)
      if (q2_defer_free (q, prev_off + i * q->cluster_size) == -1)
        return -1;
  return 0;
}

int
q2_refcount_update (struct qcow2 *q, uint64_t off, int delta, uint64_t *newval)
{
  uint64_t idx = off >> q->cluster_bits;
  uint64_t ri = idx >> q->rb_bits;
  if (ri >= q->rt_entries) {
    if (delta < 0) {
      kvm_fail (EIO, "%s: corrupt image: freeing cluster %#" PRIx64
                " without refcount block", q->path, off);
      return -1;
    }
    if (grow_reftable (q, ri) == -1)
      return -1;
  }
  uint64_t rb = q->rt[ri] & REFT_OFFSET_MASK;
  uint8_t *b;
  bool fresh = false;
  if (rb == 0) {
    if (delta < 0) {
      kvm_fail (EIO, "%s: corrupt image: freeing cluster %#" PRIx64
                " without refcount block", q->path, off);
      return -1;
    }
    if (reserve_clusters (q, 1, &rb) == -1)
      return -1;
    b = q2_table_get (q, q->rbc, rb, "refcount block", true);
    if (!b)
      return -1;
    fresh = true;
    if (q2_meta_add (q, rb, Q2_META_REFBLOCK) == -1) {
      lru_put (q->rbc, b);
      return -1;
    }
    q->rt[ri] = rb;
    q->rt_dirty = true;
  }
  else {
    if (q2_check_table_offset (q, rb, "refcount block") == -1)
      return -1;
    b = q2_table_get (q, q->rbc, rb, "refcount block", false);
    if (!b)
      return -1;
  }
  if (q2_mark_dirty (q, q->rbc, &q->drb, b) == -1) {
    lru_put (q->rbc, b);
    return -1;
  }
  uint64_t i = idx & ((1ull << q->rb_bits) - 1);
  uint64_t v = rc_get (q, b, i);
  if (delta < 0 && v == 0) {
    lru_put (q->rbc, b);
    kvm_fail (EIO, "%s: corrupt image: refcount of cluster %#" PRIx64
              " would become negative", q->path, off);
    return -1;
  }
  if (delta > 0 && v == q->refcount_max) {
    lru_put (q->rbc, b);
    kvm_fail (ENOSPC, "%s: refcount of cluster %#" PRIx64 " would overflow "
              "(refcount_bits=%u)", q->path, off, 1u << q->refcount_order);
    return -1;
  }
  v += delta;
  rc_set (q, b, i, v);
  lru_put (q->rbc, b);
  if (newval)
    *newval = v;
  if (fresh && q2_refcount_update (q, rb, 1, NULL) == -1)
    return -1;
  return 0;
}

/* Allocate N contiguous clusters with refcount 1. */
int
q2_alloc_clusters (struct qcow2 *q, uint64_t n, uint64_t *off)
{
  if (reserve_clusters (q, n, off) == -1)
    return -1;
  for (uint64_t i = 0; i < n; i++)
    if (q2_refcount_update (q, *off + i * q->cluster_size, 1, NULL) == -1)
      return -1;
  return 0;
}

/* Drop one reference after the next flush.  An entry of a hostile or
 * corrupt table may name the header, the L1 table or the refcount table:
 * their reference must stay, else at zero the cluster would be punched
 * and handed out again (seen: a compressed entry at offset 0 whose
 * overwrite punched the header).
 */
int
q2_defer_free (struct qcow2 *q, uint64_t off)
{
  if (q2_check_no_overlap (q, off, q->cluster_size, "cluster to release")
      == -1)
    return -1;
  if (GROW_FOR (q->pending_free, q->npending, q->cappending, 256) == -1) {
    kvm_fail (ENOMEM, "%s: out of memory", q->path);
    return -1;
  }
  q->pending_free[q->npending++] = off;
  return 0;
}
