/* SPDX-License-Identifier: BSD-3-Clause */
/* qcow2 engine. Persistent dirty bitmaps: the "bitmaps" header extension,
 * kept valid across writes as QEMU keeps it (autoclear bit 0 stays set).
 *
 * What is tracked.  At a read-write open every bitmap of the directory is
 * classified:
 *   - in_use already (its writer died, or wrote it without storing it):
 *     inconsistent; its entry and clusters are left exactly as they are,
 *     so QEMU keeps reporting it as in use;
 *   - not "auto" (a disabled bitmap): nothing must change in it; left as
 *     it is, like every flag, type or extra data we do not understand;
 *   - "auto", type 1 (dirty tracking), known flags, granularity 2^9 to
 *     2^31, extra data absent or marked compatible: tracked.  Its table and
 *     data are loaded into memory (one bit per granularity unit of the
 *     virtual size) and every range written, zeroed or trimmed sets bits;
 *   - "auto" but anything else (unknown flags or type, incompatible extra
 *     data, another granularity), malformed metadata, or too large to hold
 *     in memory: it must change and we cannot change it correctly.  The
 *     whole extension is then left untouched and the autoclear bit is
 *     cleared at the first write (with a warning), which tells QEMU that
 *     every bitmap of the image is inconsistent: never a silently wrong
 *     bitmap.  QEMU drops such an extension at its next read-write open.
 *
 * Crash safety, with fdatasync between the steps:
 *   1. Before the first change of guest content (and again before the
 *      first change after each store), the directory is rewritten in place
 *      with IN_USE set on every tracked bitmap.  A crash from here on
 *      leaves them in use, which QEMU reports as inconsistent.  In-place is
 *      safe: only the flag words change, each 4 bytes inside one sector.
 *   2. At each flush (and at close, which flushes) the bitmaps are stored
 *      (q2_bitmap_prepare, q2_bitmap_commit, around the metadata
 *      write-back of q2_flush_locked):
 *        a. changed bitmap data clusters are written in place; a cluster
 *           that was all zeroes (table entry 0) gets a new cluster, whose
 *           refcount becomes durable with the flush's refcount blocks;
 *        b. after that flush, changed bitmap tables are written in place,
 *           then synced;
 *        c. the directory is written in place with IN_USE cleared, synced.
 *      Writing data and tables in place is safe because the bitmap is in
 *      use on disk for the whole time (step 1 was synced before): readers
 *      must not trust any of its content until step c, which happens only
 *      once everything it points to is durable, and only after the table
 *      refers to clusters whose refcounts are durable (never a reference
 *      to an unreferenced cluster).  No cluster is ever freed, so no
 *      deferred free is needed.  At open every cluster written in place
 *      (directory, tables, data) must have refcount 1, must not overlap
 *      the header, L1 or refcount table and must appear only once.
 *   Bits are set in memory before the guest data is written, under the
 *   image lock, so a store (exclusive lock) always includes every change
 *   that may already be on disk; bits only ever go from 0 to 1, so a set
 *   bit for a write that never reached the disk is harmless (a bitmap
 *   marks at least what changed, as the format requires).
 *
 * Concurrency: writes in place take the image lock shared, so bits are
 * set with atomic operations; everything else runs under the exclusive
 * lock.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "qcow2.h"
#include "qcow2_int.h"
#include "util/checked.h"
#include "util/endian.h"
#include "util/log.h"
#include "util/sort.h"
#include "util/grow.h"

/* Directory entry flags and fields. */
#define BMF_IN_USE      (1u << 0)
#define BMF_AUTO        (1u << 1)
#define BMF_EXTRA_OK    (1u << 2)
#define BMF_KNOWN       0x7u
#define BM_TYPE_DIRTY   1
#define BM_ENTRY_FIXED  24
/* Bitmap table entries. */
#define BMT_ONES        1ull                    /* unallocated, all ones */
#define BMT_OFFSET      0x00fffffffffffe00ull
#define BMT_RESERVED    0xff000000000001feull

/* Limits (the first three as QEMU's). */
#define BM_MIN_GBITS    9
#define BM_MAX_GBITS    31
#define BM_MAX_COUNT    65535u
#define BM_MAX_NAME     1023u
#define BM_MAX_DIR      (64u << 20)
/* Memory: one bitmap (its data, whole clusters), and all of them. */
#define BM_MAX_ONE      (512ull << 20)
#define BM_MAX_TOTAL    (1ull << 30)

struct q2_bm {
  size_t dirpos;                /* the entry in the directory buffer */
  const char *name;             /* points into the directory, not \0-ended */
  unsigned namelen;
  unsigned gbits;
  uint64_t table_offset;
  uint32_t table_size;          /* entries (= data clusters) */
  uint64_t nbits;
  uint64_t *table;              /* host byte order */
  uint8_t *bits;                /* table_size whole clusters */
  uint8_t *changed;             /* a bit per data cluster changed since the
                                 * last store (set atomically) */
  bool table_dirty;             /* an entry got a new cluster */
};

struct q2_bitmaps {
  uint8_t *dir;                 /* the directory as on disk (flags patched) */
  uint64_t dir_offset, dir_size;
  uint32_t nb;
  struct q2_bm *t;              /* the tracked bitmaps */
  size_t nt;
  bool clear;                   /* clear the autoclear bit at first write */
  char why[256];                /* ... because */
  bool marked;                  /* IN_USE of the tracked ones is durable */
  /* A store cleared IN_USE and failed: the directory on disk may say
   * "consistent" or not.  The next change marks it in use again first
   * (marked is false), and the next flush stores what is changed.
   */
  bool store_failed;
};

static void
free_tracked (struct q2_bitmaps *b)
{
  for (size_t i = 0; i < b->nt; i++) {
    free (b->t[i].table);
    free (b->t[i].bits);
    free (b->t[i].changed);
  }
  free (b->t);
  b->t = NULL;
  b->nt = 0;
}

void
q2_bitmap_close (struct qcow2 *q)
{
  struct q2_bitmaps *b = q->bitmaps;
  if (!b)
    return;
  free_tracked (b);
  free (b->dir);
  free (b);
  q->bitmaps = NULL;
}

/* Give up on keeping the bitmaps valid: nothing is tracked, and the first
 * write clears the autoclear bit.
 */
static void
give_up (struct q2_bitmaps *b, const char *fmt, ...)
  __attribute__ ((format (printf, 2, 3)));
static void
give_up (struct q2_bitmaps *b, const char *fmt, ...)
{
  va_list ap;
  if (b->clear)
    return;                     /* the first reason is enough */
  va_start (ap, fmt);
  vsnprintf (b->why, sizeof b->why, fmt, ap);
  va_end (ap);
  b->clear = true;
  free_tracked (b);
}

/* The file size that offsets read from the image may reach (QEMU does not
 * always pad the file to a whole last cluster).
 */
static uint64_t
file_limit (struct qcow2 *q)
{
  uint64_t limit;
  if (!ck_round_up64 (bdev_size (q->file), q->cluster_size, &limit))
    limit = bdev_size (q->file);
  return limit;
}

/* Clusters written in place: collected at open to check that none is
 * shared, overlaps fixed metadata or appears twice.
 */
struct clist {
  uint64_t *v;
  size_t n, cap;
};

static int
clist_add (struct clist *c, uint64_t off)
{
  if (GROW_FOR (c->v, c->n, c->cap, 64) == -1)
    return -1;
  c->v[c->n++] = off;
  return 0;
}

/* Are the clusters of C each referenced once, by nothing else we know of?
 * 1 yes, 0 no (reason in B), -1 on error.
 */
static int
check_clusters (struct qcow2 *q, struct q2_bitmaps *b, struct clist *c)
{
  qsort (c->v, c->n, sizeof *c->v, kvm_cmp_u64);
  for (size_t i = 0; i < c->n; i++) {
    uint64_t rc, off = c->v[i];
    if (i > 0 && c->v[i - 1] == off) {
      give_up (b, "bitmap cluster %#" PRIx64 " is used twice", off);
      return 0;
    }
    if (q2_check_no_overlap (q, off, q->cluster_size, "bitmap cluster") == -1) {
      give_up (b, "bitmap cluster %#" PRIx64 " overlaps the header, L1 or "
               "refcount table", off);
      return 0;
    }
    if (q2_refcount_get (q, off, &rc) == -1)
      return -1;
    if (rc != 1) {
      give_up (b, "bitmap cluster %#" PRIx64 " has refcount %" PRIu64
               " (expected 1)", off, rc);
      return 0;
    }
  }
  return 1;
}

/* Load tracked bitmap T (its entry already checked): table and data.
 * 1 loaded, 0 not usable (reason in B), -1 on error.
 */
static int
load_one (struct qcow2 *q, struct q2_bitmaps *b, struct q2_bm *t,
          uint64_t *budget, struct clist *cl)
{
  uint64_t cs = q->cluster_size, limit = file_limit (q);
  uint64_t nbytes, nclusters, mem, tbytes;

  t->nbits = div_round_up64 (q->bd.size, 1ull << t->gbits);
  nbytes = div_round_up64 (t->nbits, 8);
  nclusters = div_round_up64 (nbytes, cs);
  if (t->table_size != nclusters) {
    give_up (b, "bitmap '%.*s' has %" PRIu32 " table entries, expected %"
             PRIu64, (int) t->namelen, t->name, t->table_size, nclusters);
    return 0;
  }
  if (!ck_mul64 (nclusters, cs, &mem) || mem > BM_MAX_ONE || mem > *budget) {
    give_up (b, "bitmap '%.*s' needs %" PRIu64 " MiB of memory (at most %llu "
             "MiB for one bitmap, %llu MiB for all)", (int) t->namelen,
             t->name, nclusters * (cs >> 10) >> 10, BM_MAX_ONE >> 20,
             BM_MAX_TOTAL >> 20);
    return 0;
  }
  *budget -= mem;
  if (nclusters == 0)
    return 1;
  tbytes = nclusters * 8;
  if ((t->table_offset & (cs - 1)) || t->table_offset == 0 ||
      !ck_range_within (t->table_offset, tbytes, limit)) {
    give_up (b, "bitmap '%.*s' has an invalid table offset %#" PRIx64,
             (int) t->namelen, t->name, t->table_offset);
    return 0;
  }
  for (uint64_t c = 0; c < div_round_up64 (tbytes, cs); c++)
    if (clist_add (cl, t->table_offset + c * cs) == -1)
      goto nomem;
  t->table = malloc (tbytes);
  t->bits = calloc (nclusters, cs);
  t->changed = calloc (div_round_up64 (nclusters, 8), 1);
  if (!t->table || !t->bits || !t->changed)
    goto nomem;
  if (bdev_pread_padded (q->file, t->table, tbytes, t->table_offset) == -1)
    return -1;
  for (uint64_t j = 0; j < nclusters; j++) {
    uint64_t e = be64toh (t->table[j]), off = e & BMT_OFFSET;
    t->table[j] = e;
    if ((e & BMT_RESERVED) || (off && (e & BMT_ONES)) ||
        (off & (cs - 1)) || !ck_range_within (off, cs, limit)) {
      give_up (b, "bitmap '%.*s' has an invalid table entry %#" PRIx64,
               (int) t->namelen, t->name, e);
      return 0;
    }
    uint8_t *p = t->bits + j * cs;
    if (off) {
      if (clist_add (cl, off) == -1)
        goto nomem;
      if (bdev_pread_padded (q->file, p, cs, off) == -1)
        return -1;
    }
    else if (e & BMT_ONES)
      memset (p, 0xff, cs);
  }
  /* Bits past the virtual size must be zero (in what we write back). */
  if (t->nbits % 8)
    t->bits[t->nbits / 8] &= (1u << (t->nbits % 8)) - 1;
  memset (t->bits + nbytes, 0, nclusters * cs - nbytes);
  return 1;

 nomem:
  give_up (b, "out of memory for bitmap '%.*s'", (int) t->namelen, t->name);
  return 0;
}

/* Walk the directory: check every entry's shape, pick the tracked ones.
 * 0 done (maybe given up, see B), -1 on error.
 */
static int
parse_directory (struct qcow2 *q, struct q2_bitmaps *b)
{
  struct clist cl = { 0 };
  uint64_t budget = BM_MAX_TOTAL, p = 0;
  int r = 0;

  b->t = calloc (b->nb, sizeof *b->t);
  if (!b->t) {
    give_up (b, "out of memory for the bitmap directory");
    return 0;
  }
  for (uint64_t c = 0; c < div_round_up64 (b->dir_size, q->cluster_size); c++)
    if (clist_add (&cl, b->dir_offset + c * q->cluster_size) == -1) {
      give_up (b, "out of memory for the bitmap directory");
      goto out;
    }
  for (uint32_t i = 0; i < b->nb && !b->clear; i++) {
    const uint8_t *e = b->dir + p;
    uint64_t esize;
    if (b->dir_size - p < BM_ENTRY_FIXED) {
      give_up (b, "bitmap directory entry %" PRIu32 " is truncated", i);
      break;
    }
    uint32_t flags = load_be32 (e + 12), extra = load_be32 (e + 20);
    uint16_t namelen = load_be16 (e + 18);
    uint8_t type = e[16], gbits = e[17];
    /* 24 + name + extra, padded to 8: at most about 4 GiB, no overflow. */
    esize = ((uint64_t) BM_ENTRY_FIXED + namelen + extra + 7) & ~7ull;
    if (esize > b->dir_size - p || namelen == 0 || namelen > BM_MAX_NAME) {
      give_up (b, "bitmap directory entry %" PRIu32 " is malformed", i);
      break;
    }
    const char *name = (const char *) e + BM_ENTRY_FIXED + extra;
    if (flags & BMF_IN_USE)
      kvm_debug ("%s: bitmap '%.*s' is in use (inconsistent): left as it is",
                 q->path, (int) namelen, name);
    else if (!(flags & BMF_AUTO))
      kvm_debug ("%s: bitmap '%.*s' is disabled: left as it is", q->path,
                 (int) namelen, name);
    else if ((flags & ~BMF_KNOWN) || type != BM_TYPE_DIRTY ||
             (extra && !(flags & BMF_EXTRA_OK)) ||
             gbits < BM_MIN_GBITS || gbits > BM_MAX_GBITS)
      give_up (b, "bitmap '%.*s' (flags %#" PRIx32 ", type %u, granularity "
               "bits %u%s) must follow writes but is not one this engine "
               "can update", (int) namelen, name, flags, type, gbits,
               extra && !(flags & BMF_EXTRA_OK) ? ", unknown extra data" : "");
    else {
      struct q2_bm *t = &b->t[b->nt++];
      *t = (struct q2_bm) {
        .dirpos = p, .name = name, .namelen = namelen, .gbits = gbits,
        .table_offset = load_be64 (e), .table_size = load_be32 (e + 8),
      };
      r = load_one (q, b, t, &budget, &cl);
      if (r == -1)
        goto out;
      r = 0;
    }
    p += esize;
  }
  if (!b->clear && p != b->dir_size)
    give_up (b, "bitmap directory size %" PRIu64 " does not match its %"
             PRIu32 " entries", b->dir_size, b->nb);
  if (!b->clear && b->nt)
    r = check_clusters (q, b, &cl) == -1 ? -1 : 0;
 out:
  free (cl.v);
  return r;
}

/* Read-write open: load the bitmaps worth tracking.  Never fails because
 * of what the extension contains (see give_up); -1 on I/O errors.
 */
int
q2_bitmap_open (struct qcow2 *q)
{
  uint8_t ext[24];
  struct q2_bitmaps *b;
  uint64_t limit = file_limit (q);

  if (q->version < 3 || !(q->autoclear & AUTOCLEAR_BITMAPS) ||
      !q->bm_ext_pos)
    return 0;                   /* nothing consistent to keep */
  b = calloc (1, sizeof *b);
  if (!b) {
    kvm_fail (ENOMEM, "%s: out of memory", q->path);
    return -1;
  }
  q->bitmaps = b;
  if (bdev_pread (q->file, ext, sizeof ext, q->bm_ext_pos + 8) == -1)
    return -1;
  b->nb = load_be32 (ext);
  b->dir_size = load_be64 (ext + 8);
  b->dir_offset = load_be64 (ext + 16);
  if (b->nb == 0 || b->nb > BM_MAX_COUNT || load_be32 (ext + 4) != 0 ||
      b->dir_size == 0 || b->dir_size > BM_MAX_DIR ||
      (b->dir_offset & (q->cluster_size - 1)) || b->dir_offset == 0 ||
      !ck_range_within (b->dir_offset, b->dir_size, limit)) {
    give_up (b, "invalid bitmaps extension (%" PRIu32 " bitmaps, directory "
             "of %" PRIu64 " bytes at %#" PRIx64 ")", b->nb, b->dir_size,
             b->dir_offset);
    goto out;
  }
  b->dir = malloc (b->dir_size);
  if (!b->dir) {
    give_up (b, "out of memory for the bitmap directory");
    goto out;
  }
  if (bdev_pread_padded (q->file, b->dir, b->dir_size, b->dir_offset) == -1)
    return -1;
  if (parse_directory (q, b) == -1)
    return -1;
 out:
  if (b->clear)
    kvm_debug ("%s: bitmaps: %s", q->path, b->why);
  else
    kvm_debug ("%s: %" PRIu32 " bitmaps, %zu tracked", q->path, b->nb, b->nt);
  return 0;
}

/* Write the directory with IN_USE set (or cleared) on the tracked
 * bitmaps, then sync.
 */
static int
write_directory (struct qcow2 *q, struct q2_bitmaps *b, bool in_use)
{
  for (size_t i = 0; i < b->nt; i++) {
    uint8_t *f = b->dir + b->t[i].dirpos + 12;
    uint32_t flags = load_be32 (f);
    store_be32 (f, in_use ? flags | BMF_IN_USE : flags & ~BMF_IN_USE);
  }
  if (q2_check_no_overlap (q, b->dir_offset, b->dir_size,
                           "bitmap directory") == -1 ||
      bdev_pwrite (q->file, b->dir, b->dir_size, b->dir_offset, 0) == -1 ||
      q2_sync_file (q, q->file) == -1)
    return -1;
  return 0;
}

/* First change of the image: clear the autoclear bits of features not
 * maintained (all but the raw external data bit, and the bitmaps bit while
 * the bitmaps are kept valid), synchronously, before any data changes.
 */
int
q2_bitmap_first_write (struct qcow2 *q)
{
  struct q2_bitmaps *b = q->bitmaps;
  uint64_t keep = AUTOCLEAR_DATA_RAW;

  if (q->version < 3)
    return 0;
  if (b && !b->clear)
    keep |= AUTOCLEAR_BITMAPS;
  if (!(q->autoclear & ~keep))
    return 0;
  if (b && b->clear)
    kvm_error ("warning: %s: %s; clearing the image's \"bitmaps are "
               "consistent\" bit: QEMU will consider all its persistent "
               "bitmaps inconsistent", q->path, b->why);
  q->autoclear &= keep;
  if (q2_write_header (q) == -1 || q2_sync_file (q, q->file) == -1)
    return -1;
  return 0;
}

int
q2_bitmap_mark (struct qcow2 *q)
{
  struct q2_bitmaps *b = q->bitmaps;
  if (!b || b->nt == 0 || b->marked)
    return 0;
  if (write_directory (q, b, true) == -1)
    return -1;
  b->marked = true;
  return 0;
}

bool
q2_bitmap_needs_mark (struct qcow2 *q)
{
  struct q2_bitmaps *b = q->bitmaps;
  return b && b->nt && !b->marked;
}

/* Set bits [first, last] of T. */
static void
set_bits (struct qcow2 *q, struct q2_bm *t, uint64_t first, uint64_t last)
{
  uint64_t fb = first / 8, lb = last / 8;
  for (uint64_t i = fb; i <= lb; i++) {
    unsigned lo = i == fb ? first % 8 : 0, hi = i == lb ? last % 8 : 7;
    uint8_t m = (uint8_t) ((0xffu >> (7 - hi)) & (0xffu << lo));
    if ((__atomic_load_n (&t->bits[i], __ATOMIC_RELAXED) & m) == m)
      continue;
    uint8_t old = __atomic_fetch_or (&t->bits[i], m, __ATOMIC_RELAXED);
    if ((old & m) != m) {
      uint64_t c = i >> q->cluster_bits;
      __atomic_fetch_or (&t->changed[c / 8], (uint8_t) (1u << (c % 8)),
                         __ATOMIC_RELAXED);
    }
  }
}

void
q2_bitmap_dirty (struct qcow2 *q, uint64_t offset, uint64_t count)
{
  struct q2_bitmaps *b = q->bitmaps;
  if (!b || count == 0)
    return;
  for (size_t i = 0; i < b->nt; i++) {
    struct q2_bm *t = &b->t[i];
    uint64_t first = offset >> t->gbits, last = (offset + count - 1) >> t->gbits;
    if (first >= t->nbits)
      continue;
    if (last >= t->nbits)
      last = t->nbits - 1;
    set_bits (q, t, first, last);
  }
}

static bool
changed (const struct q2_bm *t, uint64_t j)
{
  return (t->changed[j / 8] >> (j % 8)) & 1;
}

/* Store, step a: write the changed data clusters (exclusive lock). */
int
q2_bitmap_prepare (struct qcow2 *q)
{
  struct q2_bitmaps *b = q->bitmaps;
  uint64_t cs = q->cluster_size;
  if (!b || (!b->marked && !b->store_failed))
    return 0;
  for (size_t i = 0; i < b->nt; i++) {
    struct q2_bm *t = &b->t[i];
    for (uint64_t j = 0; j < t->table_size; j++) {
      if (!changed (t, j))
        continue;
      uint64_t off = t->table[j] & BMT_OFFSET;
      if (!off) {
        if (q2_alloc_clusters (q, 1, &off) == -1)
          return -1;
        t->table[j] = off;
        t->table_dirty = true;
      }
      if (q2_check_no_overlap (q, off, cs, "bitmap data") == -1 ||
          bdev_pwrite (q->file, t->bits + j * cs, cs, off, 0) == -1)
        return -1;
    }
  }
  return 0;
}

/* Store, steps b and c, once the refcounts of new clusters are durable. */
int
q2_bitmap_commit (struct qcow2 *q)
{
  struct q2_bitmaps *b = q->bitmaps;
  bool tables = false;
  if (!b || (!b->marked && !b->store_failed))
    return 0;
  for (size_t i = 0; i < b->nt; i++) {
    struct q2_bm *t = &b->t[i];
    if (!t->table_dirty)
      continue;
    uint64_t bytes = (uint64_t) t->table_size * 8;
    uint8_t *buf = malloc (bytes);
    if (!buf) {
      kvm_fail (ENOMEM, "%s: out of memory", q->path);
      return -1;
    }
    for (uint64_t j = 0; j < t->table_size; j++)
      store_be64 (buf + 8 * j, t->table[j]);
    int r = q2_check_no_overlap (q, t->table_offset, bytes, "bitmap table");
    if (r == 0)
      r = bdev_pwrite (q->file, buf, bytes, t->table_offset, 0);
    free (buf);
    if (r == -1)
      return -1;
    tables = true;
  }
  if (tables && q2_sync_file (q, q->file) == -1)
    return -1;
  for (size_t i = 0; i < b->nt; i++)
    b->t[i].table_dirty = false;
  if (write_directory (q, b, false) == -1) {
    /* The cleared flags may reach the disk with a later sync: no data
     * may change before IN_USE is durable again.
     */
    b->marked = false;
    b->store_failed = true;
    return -1;
  }
  for (size_t i = 0; i < b->nt; i++)
    if (b->t[i].changed)
      memset (b->t[i].changed, 0, div_round_up64 (b->t[i].table_size, 8));
  b->marked = b->store_failed = false;
  return 0;
}
