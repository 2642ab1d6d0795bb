/* SPDX-License-Identifier: BSD-3-Clause */
/* qcow2 engine. Overlap checks: no write of the engine may land in
 * metadata that it does not mean to change, whatever a hostile or corrupt
 * table says (QEMU's "overlap-check" does the same job).
 *
 * The fixed tables (header cluster, active L1 table, refcount table,
 * snapshot table) are checked through their fields in struct qcow2.  The
 * tables that are named by other tables (the L2 tables of the active L1,
 * the refcount blocks, the L1 tables of internal snapshots) are kept in
 * q->meta, sorted by offset, built on a read-write open and updated where
 * the active L1 and the refcount table change (under the exclusive lock,
 * so the shared-lock write path may search it).
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "qcow2_int.h"
#include "util/checked.h"
#include "util/log.h"
#include "util/sort.h"
#include "util/grow.h"

static const char *
kind_name (enum q2_meta kind)
{
  switch (kind) {
  case Q2_META_L2: return "an L2 table";
  case Q2_META_REFBLOCK: return "a refcount block";
  case Q2_META_SNAP_L1: return "the L1 table of an internal snapshot";
  default: return "metadata";
  }
}

/* Index of the first entry with offset >= OFF. */
static size_t
lower_bound (const struct q2_metaset *s, uint64_t off)
{
  size_t lo = 0, hi = s->n;
  while (lo < hi) {
    size_t mid = lo + (hi - lo) / 2;
    if (s->v[mid].off < off)
      lo = mid + 1;
    else
      hi = mid;
  }
  return lo;
}

/* An entry of another kind than SELF overlapping [OFF, OFF+LEN), or NULL. */
static const struct q2_mentry *
meta_hit (const struct q2_metaset *s, uint64_t off, uint64_t len,
          enum q2_meta self)
{
  uint64_t end;
  if (!ck_add64 (off, len, &end))
    end = UINT64_MAX;
  /* Entries starting more than maxlen before OFF end before it. */
  size_t i = lower_bound (s, off > s->maxlen ? off - s->maxlen : 0);
  for (; i < s->n && s->v[i].off < end; i++)
    if (s->v[i].kind != self &&
        (s->v[i].off >= off || off - s->v[i].off < s->v[i].len))
      return &s->v[i];
  return NULL;
}

int
q2_meta_add (struct qcow2 *q, uint64_t off, enum q2_meta kind)
{
  struct q2_metaset *s = &q->meta;
  uint32_t len = q->cluster_size;
  if (GROW_FOR (s->v, s->n, s->cap, 64) == -1) {
    kvm_fail (ENOMEM, "%s: out of memory", q->path);
    return -1;
  }
  size_t i = lower_bound (s, off);
  memmove (&s->v[i + 1], &s->v[i], (s->n - i) * sizeof *s->v);
  s->v[i] = (struct q2_mentry) { off, len, kind };
  s->n++;
  if (len > s->maxlen)
    s->maxlen = len;
  return 0;
}

static int
cmp_entry (const void *a, const void *b)
{
  return kvm_cmp_u64 (&((const struct q2_mentry *) a)->off,
                      &((const struct q2_mentry *) b)->off);
}

int
q2_meta_build (struct qcow2 *q)
{
  struct q2_metaset *s = &q->meta;
  size_t n = q->nsnaps;
  for (uint64_t i = 0; i < q->l1_size; i++)
    n += (q->l1[i] & L1E_OFFSET_MASK) != 0;
  for (uint64_t i = 0; i < q->rt_entries; i++)
    n += (q->rt[i] & REFT_OFFSET_MASK) != 0;
  free (s->v);
  *s = (struct q2_metaset) { .v = malloc ((n ? n : 1) * sizeof *s->v),
                             .cap = n ? n : 1 };
  if (!s->v) {
    kvm_fail (ENOMEM, "%s: out of memory", q->path);
    return -1;
  }
  for (uint64_t i = 0; i < q->l1_size; i++)
    if (q->l1[i] & L1E_OFFSET_MASK)
      s->v[s->n++] = (struct q2_mentry) { q->l1[i] & L1E_OFFSET_MASK,
                                          q->cluster_size, Q2_META_L2 };
  for (uint64_t i = 0; i < q->rt_entries; i++)
    if (q->rt[i] & REFT_OFFSET_MASK)
      s->v[s->n++] = (struct q2_mentry) { q->rt[i] & REFT_OFFSET_MASK,
                                          q->cluster_size, Q2_META_REFBLOCK };
  for (size_t i = 0; i < q->nsnaps; i++) {
    /* A larger table is invalid (and refused if the snapshot is
     * opened); its first MAX_L1_BYTES are what QEMU would read.
     */
    uint64_t bytes = (uint64_t) q->snaps[i].l1_size * 8;
    if (bytes > MAX_L1_BYTES)
      bytes = MAX_L1_BYTES;
    if (bytes)
      s->v[s->n++] = (struct q2_mentry) { q->snaps[i].l1_offset, bytes,
                                          Q2_META_SNAP_L1 };
  }
  s->maxlen = q->cluster_size;
  for (size_t i = 0; i < s->n; i++)
    if (s->v[i].len > s->maxlen)
      s->maxlen = s->v[i].len;
  qsort (s->v, s->n, sizeof *s->v, cmp_entry);
  return 0;
}

void
q2_meta_free (struct qcow2 *q)
{
  free (q->meta.v);
  q->meta = (struct q2_metaset) { 0 };
}

void
q2_meta_remove (struct qcow2 *q, uint64_t off, enum q2_meta kind)
{
  struct q2_metaset *s = &q->meta;
  for (size_t i = lower_bound (s, off); i < s->n && s->v[i].off == off; i++)
    if (s->v[i].kind == kind) {
      memmove (&s->v[i], &s->v[i + 1], (s->n - i - 1) * sizeof *s->v);
      s->n--;
      return;
    }
}

/* Fail (EIO) if a write of [OFF, OFF+LEN) as WHAT, a table of kind SELF
 * or Q2_META_NONE, would land in metadata other than itself: the fixed
 * tables (unless FIXED is false: the write is of one of them) or the
 * entries of q->meta of another kind.
 */
static int
check (struct qcow2 *q, uint64_t off, uint64_t len, const char *what,
       enum q2_meta self, bool fixed)
{
  uint64_t end;
  const char *hit = NULL;
  char where[64] = "";
  if (!ck_add64 (off, len, &end))
    end = UINT64_MAX;
  if (fixed && off < q->cluster_size)
    hit = "the header";
  else if (fixed && q->l1_size && off < q->l1_offset + q->l1_size * 8 &&
           end > q->l1_offset)
    hit = "the L1 table";
  else if (fixed && off < q->rt_offset + q->rt_clusters * q->cluster_size &&
           end > q->rt_offset)
    hit = "the refcount table";
  else if (fixed && q->snap_bytes && off < q->snap_offset + q->snap_bytes &&
           end > q->snap_offset)
    hit = "the snapshot table";
  else {
    const struct q2_mentry *e = meta_hit (&q->meta, off, len, self);
    if (e) {
      hit = kind_name (e->kind);
      snprintf (where, sizeof where, " at %#" PRIx64, e->off);
    }
  }
  if (hit) {
    kvm_fail (EIO, "%s: corrupt image: %s at %#" PRIx64 " overlaps %s%s; "
              "refused", q->path, what, off, hit, where);
    return -1;
  }
  return 0;
}

int
q2_check_no_overlap (struct qcow2 *q, uint64_t off, uint64_t len,
                     const char *what)
{
  return check (q, off, len, what, Q2_META_NONE, true);
}

int
q2_check_table_write (struct qcow2 *q, uint64_t off, enum q2_meta kind)
{
  return check (q, off, q->cluster_size,
                kind == Q2_META_L2 ? "L2 table" : "refcount block", kind,
                true);
}

int
q2_check_fixed_table_write (struct qcow2 *q, uint64_t off, uint64_t len,
                            const char *what)
{
  return check (q, off, len, what, Q2_META_NONE, false);
}
