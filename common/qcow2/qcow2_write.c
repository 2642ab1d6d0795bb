/* SPDX-License-Identifier: BSD-3-Clause */
/* qcow2 engine. Write path: first-write bookkeeping, cluster allocation with
 * copy-on-write from the backing chain, in-place writes, zero and trim.
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

/* Before guest content [OFFSET, OFFSET+COUNT) changes (exclusive lock):
 * the first change of the image clears the autoclear bits of features not
 * maintained; every change makes sure the persistent bitmaps being kept
 * valid are marked in use on disk, and sets their bits (qcow2_bitmap.c).
 * Every path that changes guest content calls this first.
 */
static int
first_write (struct qcow2 *q, uint64_t offset, uint64_t count)
{
  if (!q->first_write_done) {
    if (q2_bitmap_first_write (q) == -1)
      return -1;
    /* Read without the lock by qcow2_pwrite's fast path. */
    __atomic_store_n (&q->first_write_done, true, __ATOMIC_RELEASE);
  }
  if (q2_bitmap_mark (q) == -1)
    return -1;
  q2_bitmap_dirty (q, offset, count);
  return 0;
}

/* Get the L2 table for L1 index I, ready to be modified: allocated and
 * not shared with a snapshot.  Returns a pinned buffer.
 */
static uint8_t *
l2_get_write (struct qcow2 *q, uint64_t i)
{
  if (i >= q->l1_size) {
    kvm_fail (EIO, "%s: L1 table too small for the virtual size", q->path);
    return NULL;
  }
  uint64_t e = q->l1[i], off = e & L1E_OFFSET_MASK, noff;
  uint8_t *t;
  if (off && (e & OFLAG_COPIED)) {
    if (q2_check_table_offset (q, off, "L2 table") == -1)
      return NULL;
    return q2_table_get (q, q->l2c, off, "L2 table", false);
  }
  if (q2_alloc_clusters (q, 1, &noff) == -1)
    return NULL;
  t = q2_table_get (q, q->l2c, noff, "L2 table", true);
  if (!t)
    return NULL;
  if (off) {                    /* shared with a snapshot: copy it */
    uint8_t *old;
    if (q2_check_table_offset (q, off, "L2 table") == -1 ||
        !(old = q2_table_get (q, q->l2c, off, "L2 table", false))) {
      lru_put (q->l2c, t);
      return NULL;
    }
    memcpy (t, old, q->cluster_size);
    lru_put (q->l2c, old);
    /* Replaced, so no longer an active table: its reference may go
     * unless it is also another kind of table.  (Adding it back after a
     * removal cannot fail.)
     */
    q2_meta_remove (q, off, Q2_META_L2);
    if (q2_defer_free (q, off) == -1) {
      (void) q2_meta_add (q, off, Q2_META_L2);
      lru_put (q->l2c, t);
      return NULL;
    }
  }
  if (q2_mark_dirty (q, q->l2c, &q->dl2, t) == -1 ||
      q2_meta_add (q, noff, Q2_META_L2) == -1) {
    lru_put (q->l2c, t);
    return NULL;
  }
  q2_l2ptr_drop (q, i);
  q->l1[i] = noff | OFLAG_COPIED;
  q->l1_dirty = true;
  return t;
}

/* Is the cluster of entry E writable in place (no allocation needed)? */
static bool
in_place (struct qcow2 *q, uint64_t e)
{
  if (e & OFLAG_COMPRESSED)
    return false;
  if (q->external_data)
    return (e & OFLAG_COPIED) != 0;
  return (e & L2E_OFFSET_MASK) && (e & OFLAG_COPIED);
}

/* Pending contiguous data write, plus the writes that may be done after
 * the exclusive lock is dropped (into clusters whose previous content, on
 * disk and in the metadata that a concurrent flush could persist, reads
 * as zeroes, or in place into allocated clusters), so that allocating
 * writes of different requests overlap their data I/O.
 */
struct drun {
  uint64_t host, len;
  const uint8_t *src;
};
/* An L2 change that exposes data of the pending run (a new or reused
 * cluster, newly allocated subclusters): made only once that data is
 * written, so that a failed write leaves the old content, not whatever
 * bytes the container held there (another tenant's, on a reused LV).
 */
struct pmap {
  uint64_t cl, ne, nbm;                 /* new entry, extended L2 bitmap */
  uint64_t old_e;                       /* released when mapped, if ... */
  bool release_old;
  uint64_t free_host;                   /* given back if not written, or 0 */
  bool free_ne;                         /* compressed: its references too */
};
struct wrun {
  uint64_t host, len;
  const uint8_t *src;
  bool can_defer;
  const struct q2_cbatch *cb;   /* compressed whole clusters, or NULL */
  struct drun *d;
  size_t nd, capd;
  struct pmap *pm;
  size_t npm, cappm;
};

static uint8_t *l2_get_write (struct qcow2 *q, uint64_t i);
static int release_old_cluster (struct qcow2 *q, uint64_t e);

/* The pending run was written (OK) or not: map its new clusters, or give
 * them back.
 */
static int
wrun_map (struct qcow2 *q, struct wrun *w, bool ok)
{
  int r = 0;
  for (size_t i = 0; i < w->npm; i++) {
    struct pmap *m = &w->pm[i];
    uint8_t *t = NULL;
    if (ok && r == 0 && (t = l2_get_write (q, m->cl >> q->l2_bits)) &&
        (!m->release_old || release_old_cluster (q, m->old_e) == 0)) {
      uint64_t i2 = m->cl & ((1ull << q->l2_bits) - 1);
      uint8_t *p = t + (i2 << q->l2_entry_shift);
      store_be64 (p, m->ne);
      if (q->ext_l2)
        store_be64 (p + 8, m->nbm);
      if (q2_mark_dirty (q, q->l2c, &q->dl2, t) == -1)
        r = -1;
    }
    else {
      if (ok)
        r = -1;
      if (m->free_host)
        q2_defer_free (q, m->free_host);
      if (m->free_ne)
        (void) q2_free_compressed (q, m->ne);
    }
    if (t)
      lru_put (q->l2c, t);
  }
  free (w->pm);
  w->pm = NULL;
  w->npm = w->cappm = 0;
  return r;
}

static int
wrun_flush (struct qcow2 *q, struct wrun *w)
{
  int r = 0;
  if (w->len && !q->external_data &&
      q2_check_no_overlap (q, w->host, w->len, "data cluster") == -1)
    r = -1;
  else if (w->len)
    r = bdev_pwrite (q->data, w->src, w->len, w->host, 0);
  w->len = 0;
  if (w->npm && wrun_map (q, w, r == 0) == -1)
    r = -1;
  return r;
}

/* Make the L2 change M once the pending run is written. */
static int
wrun_map_later (struct qcow2 *q, struct wrun *w, struct pmap m)
{
  if (GROW_FOR (w->pm, w->npm, w->cappm, 16) == -1) {
    kvm_fail (ENOMEM, "%s: out of memory", q->path);
    return -1;
  }
  w->pm[w->npm++] = m;
  return 0;
}

static int
wrun_add (struct qcow2 *q, struct wrun *w, uint64_t host, const uint8_t *src,
          uint64_t len)
{
  if (w->len && w->host + w->len == host && w->src + w->len == src) {
    w->len += len;
    return 0;
  }
  if (wrun_flush (q, w) == -1)
    return -1;
  w->host = host; w->src = src; w->len = len;
  return 0;
}

static int
wrun_defer (struct qcow2 *q, struct wrun *w, uint64_t host,
            const uint8_t *src, uint64_t len)
{
  if (!w->can_defer)
    return wrun_add (q, w, host, src, len);
  if (!q->external_data &&
      q2_check_no_overlap (q, host, len, "data cluster") == -1)
    return -1;
  if (w->nd) {
    struct drun *l = &w->d[w->nd - 1];
    if (l->host + l->len == host && l->src + l->len == src) {
      l->len += len;
      return 0;
    }
  }
  if (GROW_FOR (w->d, w->nd, w->capd, 16) == -1)
    return wrun_add (q, w, host, src, len);
  w->d[w->nd++] = (struct drun) { host, len, src };
  return 0;
}

static int
wrun_write_deferred (struct qcow2 *q, struct wrun *w, bool doit)
{
  int r = 0;
  for (size_t i = 0; doit && r == 0 && i < w->nd; i++)
    r = bdev_pwrite (q->data, w->d[i].src, w->d[i].len, w->d[i].host, 0);
  free (w->d);
  w->d = NULL;
  w->nd = w->capd = 0;
  return r;
}

/* Allocate the host cluster for guest cluster CL. */
static int
alloc_data_cluster (struct qcow2 *q, uint64_t cl, uint64_t *host)
{
  if (q->external_data) {       /* identity mapping, no refcounts */
    *host = cl << q->cluster_bits;
    return 0;
  }
  return q2_alloc_clusters (q, 1, host);
}

/* One guest cluster being written (write_cluster and its steps). */
struct cwrite {
  uint64_t cl, a, b;            /* guest cluster; [a, b) inside it */
  const uint8_t *src;           /* the data for guest offset a */
  struct wrun *w;
  uint8_t *t;                   /* its L2 table, pinned, writable */
  uint64_t i2;                  /* entry index in t */
  uint64_t e, bm, host;         /* entry, subcluster bitmap, host offset */
};

/* Write LEN bytes at HOST of the data file: the current guest content at
 * GUEST with N bytes of SRC laid over it at AT (read-modify-write of a
 * partial cluster or subcluster).
 */
static int
merge_write (struct qcow2 *q, struct wrun *w, uint64_t guest, uint64_t len,
             uint64_t host, uint64_t at, const uint8_t *src, uint64_t n)
{
  int r = -1;
  if (wrun_flush (q, w) == -1)
    return -1;
  uint8_t *tmp = malloc (len);
  if (!tmp) {
    kvm_fail (ENOMEM, "%s: out of memory", q->path);
    return -1;
  }
  if (q2_read_locked (q, tmp, len, guest) == -1)
    goto out;
  memcpy (tmp + at, src, n);
  if (!q->external_data &&
      q2_check_no_overlap (q, host, len, "data cluster") == -1)
    goto out;
  if (bdev_pwrite (q->data, tmp, len, host, 0) == -1)
    goto out;
  r = 0;
 out:
  free (tmp);
  return r;
}

/* Extended L2: write the touched subclusters, mark them allocated. */
static int
write_subclusters (struct qcow2 *q, struct cwrite *c)
{
  uint64_t a = c->a, b = c->b, host = c->host;
  unsigned s0 = a >> q->sc_bits, s1 = (b - 1) >> q->sc_bits;
  uint64_t sa = (uint64_t) s0 << q->sc_bits;
  uint64_t sb = (uint64_t) (s1 + 1) << q->sc_bits;
  uint32_t mask = (uint32_t) ((((uint64_t) 1 << (s1 + 1)) - 1) &
                              ~(((uint64_t) 1 << s0) - 1));
  bool fresh = false;
  if (!in_place (q, c->e)) {
    if (alloc_data_cluster (q, c->cl, &host) == -1)
      return -1;
    fresh = true;
  }
  uint64_t nbm = (c->bm | mask) & ~((uint64_t) mask << 32);
  uint64_t ne = host | OFLAG_COPIED;
  uint64_t give_back = fresh && !q->external_data ? host : 0;
  if (sa == a && sb == b) {
    /* Into the pending run: the subclusters are marked allocated once
     * their data is written (wrun_map).
     */
    if (wrun_add (q, c->w, host + a, c->src, b - a) == -1 ||
        ((ne != c->e || nbm != c->bm || fresh) &&
         wrun_map_later (q, c->w, (struct pmap) {
             .cl = c->cl, .ne = ne, .nbm = nbm, .free_host = give_back,
           }) == -1)) {
      if (give_back)
        q2_defer_free (q, give_back);
      return -1;
    }
    return 0;
  }
  /* Partial subclusters: merged and written at once. */
  if (merge_write (q, c->w, (c->cl << q->cluster_bits) + sa, sb - sa,
                   host + sa, a - sa, c->src, b - a) == -1) {
    if (give_back)              /* not mapped: give it back */
      q2_defer_free (q, give_back);
    return -1;
  }
  if (ne != c->e || nbm != c->bm || fresh) {
    uint8_t *p = c->t + (c->i2 << q->l2_entry_shift);
    store_be64 (p, ne);
    store_be64 (p + 8, nbm);
    if (q2_mark_dirty (q, q->l2c, &q->dl2, c->t) == -1)
      return -1;
  }
  return 0;
}

/* Write into new cluster NHOST: deferred if it reads as zeroes, else COW. */
static int
write_new_data (struct qcow2 *q, struct cwrite *c, uint64_t nhost,
                bool zero_before)
{
  uint64_t a = c->a, b = c->b;
  if (zero_before)              /* no COW needed */
    return wrun_defer (q, c->w, nhost + a, c->src, b - a);
  return merge_write (q, c->w, c->cl << q->cluster_bits, q->cluster_size,
                      nhost, a, c->src, b - a);
}

/* Release the cluster of old entry E after the next flush. */
static int
release_old_cluster (struct qcow2 *q, uint64_t e)
{
  uint64_t host = e & L2E_OFFSET_MASK;
  if (q->external_data)
    return 0;
  if (e & OFLAG_COMPRESSED)
    return q2_free_compressed (q, e);
  if (host && q2_defer_free (q, host) == -1)
    return -1;
  return 0;
}

/* Extended L2: the bitmap of a cluster copied (from a compressed or
 * shared one) for a write of [a,b), as QEMU makes it (calculate_l2_meta,
 * qcow2_alloc_cluster_link_l2): allocated from the first allocated or
 * written subcluster to the last one, and outside that range the old
 * zero and unallocated subclusters kept as they were.
 */
static uint64_t
copied_bitmap (struct qcow2 *q, const struct cwrite *c)
{
  if (c->e & OFLAG_COMPRESSED)
    return 0xffffffffull;
  uint32_t alloc = (uint32_t) c->bm;
  unsigned s0 = c->a >> q->sc_bits, s1 = (c->b - 1) >> q->sc_bits;
  if (alloc) {
    unsigned first = __builtin_ctz (alloc), last = 31 - __builtin_clz (alloc);
    if (first < s0)
      s0 = first;
    if (last > s1)
      s1 = last;
  }
  uint64_t range = (((uint64_t) 1 << (s1 + 1)) - 1) &
    ~(((uint64_t) 1 << s0) - 1);
  return (c->bm | range) & ~(range << 32);
}

/* Allocate (or materialise a zero cluster), write, release, remap. */
static int
write_new_cluster (struct qcow2 *q, struct cwrite *c)
{
  uint64_t e = c->e, nhost;
  bool reuse = in_place (q, e);
  if (reuse)
    nhost = c->host;
  else if (alloc_data_cluster (q, c->cl, &nhost) == -1)
    return -1;
  /* The old content reads as zeroes and the new cluster has never been
   * written (beyond the original end of file)?
   */
  bool zero_before = !reuse && !q->external_data && nhost >= q->zero_from &&
    !(e & OFLAG_COMPRESSED) && c->host == 0 &&
    (!q->backing || (q->version >= 3 && (e & OFLAG_ZERO)));
  /* A whole cluster whose old content is not zeroes goes into the
   * pending run, and is mapped once that run is written (wrun_map).
   */
  uint64_t give_back = !reuse && !q->external_data ? nhost : 0;
  if (!zero_before && c->a == 0 && c->b == q->cluster_size) {
    if (wrun_add (q, c->w, nhost, c->src, q->cluster_size) == -1 ||
        wrun_map_later (q, c->w, (struct pmap) {
            .cl = c->cl, .ne = nhost | OFLAG_COPIED,
            .nbm = q->ext_l2 ? copied_bitmap (q, c) : 0,
            .old_e = e, .release_old = !reuse, .free_host = give_back,
          }) == -1) {
      if (give_back)
        q2_defer_free (q, give_back);
      return -1;
    }
    return 0;
  }
  if (write_new_data (q, c, nhost, zero_before) == -1) {
    /* Not mapped: give the new cluster back (after the next flush, as
     * any release), or every failed write below leaks one.
     */
    if (give_back)
      q2_defer_free (q, give_back);
    return -1;
  }
  if (!reuse && release_old_cluster (q, e) == -1)
    return -1;
  uint8_t *p = c->t + (c->i2 << q->l2_entry_shift);
  store_be64 (p, nhost | OFLAG_COPIED);
  if (q->ext_l2)
    store_be64 (p + 8, copied_bitmap (q, c));
  return q2_mark_dirty (q, q->l2c, &q->dl2, c->t);
}

/* qcow2.compress: store a whole cluster whose entry maps no host cluster
 * compressed (or, all zeroes, not at all).  Returns 1 when the normal path
 * must write it instead.
 */
static int
write_compressed (struct qcow2 *q, struct cwrite *c)
{
  const struct q2_cbatch *cb = c->w->cb;
  uint64_t start = c->cl << q->cluster_bits;
  uint64_t whole = q->bd.size - start < q->cluster_size ?
    q->bd.size - start : q->cluster_size;    /* the last may be partial */
  if (!cb || c->a != 0 || c->b != whole ||
      (c->e & OFLAG_COMPRESSED) || c->host != 0 ||
      c->cl < cb->first || c->cl - cb->first >= cb->n)
    return 1;
  uint64_t i = c->cl - cb->first, ne, nbm = 0, host;
  uint32_t len = cb->len[i];
  if (len == CB_RAW)
    return 1;
  if (len == CB_ZERO) {
    if (!q->backing)
      return 0;                 /* reads as zeroes already */
    if (q->version < 3)
      return 1;
    if (q->ext_l2)
      ne = 0, nbm = 0xffffffff00000000ull;
    else
      ne = OFLAG_ZERO;
  }
  else {
    if (q2_compress_alloc (q, len, &host) == -1)
      return -1;
    ne = q2_compressed_entry (q, host, len);
    /* Mapped once written (wrun_map), as other new data. */
    if (wrun_add (q, c->w, host, cb->out + cb->pos[i], len) == -1 ||
        wrun_map_later (q, c->w, (struct pmap) {
            .cl = c->cl, .ne = ne, .nbm = 0, .free_ne = true,
          }) == -1) {
      (void) q2_free_compressed (q, ne);
      return -1;
    }
    return 0;
  }
  if (ne == c->e && nbm == c->bm)
    return 0;
  uint8_t *p = c->t + (c->i2 << q->l2_entry_shift);
  store_be64 (p, ne);
  if (q->ext_l2)
    store_be64 (p + 8, nbm);
  return q2_mark_dirty (q, q->l2c, &q->dl2, c->t);
}

/* Write [a, b) of guest cluster CL from SRC (src points at guest offset a).
 * Exclusive lock held.
 */
static int
write_cluster (struct qcow2 *q, uint64_t cl, uint64_t a, uint64_t b,
               const uint8_t *src, struct wrun *w)
{
  struct cwrite c = {
    .cl = cl, .a = a, .b = b, .src = src, .w = w,
    .i2 = cl & ((1ull << q->l2_bits) - 1),
  };
  int r;

  /* Its L2 table, allocated and not shared with a snapshot. */
  c.t = l2_get_write (q, cl >> q->l2_bits);
  if (!c.t)
    return -1;
  c.e = l2_entry (q, c.t, c.i2);
  c.bm = l2_bitmap (q, c.t, c.i2);
  c.host = c.e & L2E_OFFSET_MASK;

  if (in_place (q, c.e) && c.host % q->cluster_size) {
    kvm_fail (EIO, "%s: corrupt image: data cluster offset %#" PRIx64
              " is not cluster aligned", q->path, c.host);
    r = -1;
  }
  else if ((r = write_compressed (q, &c)) != 1)
    ;                           /* stored compressed (or left zero) */
  else if (q->ext_l2 && !(c.e & OFLAG_COMPRESSED) &&
           (in_place (q, c.e) || c.host == 0))
    r = write_subclusters (q, &c);
  else if (in_place (q, c.e) &&
           !(q->version >= 3 && (c.e & OFLAG_ZERO) && !q->ext_l2))
    r = wrun_defer (q, w, c.host + a, src, b - a);  /* in place */
  else
    r = write_new_cluster (q, &c);
  lru_put (q->l2c, c.t);
  return r;
}

/* Fast path: every touched unit is allocated data with refcount 1.  Shared
 * lock held.  Returns 1 if done, 0 if the slow path is needed.
 */
struct fast_ctx {
  const uint8_t *src;
  uint64_t base;
  bool ok;
  struct wrun w;
};

static int
fast_check_run (struct qcow2 *q, void *opaque, enum utype type,
                uint64_t guest, uint64_t host, uint64_t len, uint64_t entry)
{
  struct fast_ctx *f = opaque;
  (void) guest; (void) host; (void) len;
  if (type != U_DATA || !in_place (q, entry) ||
      (!q->ext_l2 && q->version >= 3 && (entry & OFLAG_ZERO)))
    f->ok = false;
  return 0;
}

static int
fast_write_run (struct qcow2 *q, void *opaque, enum utype type,
                uint64_t guest, uint64_t host, uint64_t len, uint64_t entry)
{
  struct fast_ctx *f = opaque;
  (void) type; (void) entry;
  if (!q->external_data &&
      q2_check_no_overlap (q, host, len, "data cluster") == -1)
    return -1;
  return bdev_pwrite (q->data, f->src + (guest - f->base), len, host, 0);
}

int
qcow2_pwrite (struct bdev *bd, const void *buf, size_t count,
              uint64_t offset, uint32_t flags)
{
  struct qcow2 *q = (struct qcow2 *) bd;
  int r;
  (void) flags;

  /* A hint read without the lock (the fast path takes the shared lock,
   * which orders everything it then reads): atomic, or it is a data race
   * with first_write (ThreadSanitizer: test_qcow2_threads.c).
   */
  if (__atomic_load_n (&q->first_write_done, __ATOMIC_ACQUIRE)) {
    struct fast_ctx f = { .src = buf, .base = offset, .ok = true };
    pthread_rwlock_rdlock (&q->lock);
    r = q2_walk (q, q->l1, q->l1_size, offset, count, fast_check_run, &f);
    if (r == 0 && f.ok && q2_bitmap_needs_mark (q))
      f.ok = false;             /* bitmaps to mark in use: exclusive lock */
    if (r == 0 && f.ok) {
      q2_bitmap_dirty (q, offset, count);
      r = q2_walk (q, q->l1, q->l1_size, offset, count, fast_write_run, &f);
    }
    pthread_rwlock_unlock (&q->lock);
    if (r == -1 || f.ok)
      return r;
  }

  struct q2_cbatch cb = { 0 };
  if (q->compress && q2_compress_batch (q, &cb, buf, count, offset) == -1)
    return -1;
  pthread_rwlock_wrlock (&q->lock);
  r = first_write (q, offset, count);
  struct wrun w = { .can_defer = true, .cb = &cb };
  const uint8_t *src = buf;
  uint64_t end = offset + count;
  while (r == 0 && offset < end) {
    uint64_t cl = offset >> q->cluster_bits;
    uint64_t a = offset & (q->cluster_size - 1);
    uint64_t b = end - (cl << q->cluster_bits);
    if (b > q->cluster_size)
      b = q->cluster_size;
    r = write_cluster (q, cl, a, b, src, &w);
    src += b - a;
    offset += b - a;
  }
  /* The pending and deferred data go out even after an error: clusters
   * already mapped by this request must not show the container's old
   * bytes (a fixed container that ran out of room part-way).
   */
  int rf = wrun_flush (q, &w);
  if (r == 0)
    r = rf;
  if (r == 0)
    r = q2_maybe_flush (q);
  bool deferred = w.nd > 0;
  if (deferred) {
    pthread_mutex_lock (&q->deferred_lock);
    q->deferred_inflight++;
    pthread_mutex_unlock (&q->deferred_lock);
  }
  pthread_rwlock_unlock (&q->lock);
  if (wrun_write_deferred (q, &w, true) == -1)
    r = -1;
  if (deferred) {
    pthread_mutex_lock (&q->deferred_lock);
    if (--q->deferred_inflight == 0)
      pthread_cond_broadcast (&q->deferred_done);
    pthread_mutex_unlock (&q->deferred_lock);
  }
  q2_cbatch_free (&cb);
  return r;
}

int
qcow2_flush (struct bdev *bd)
{
  struct qcow2 *q = (struct qcow2 *) bd;
  pthread_rwlock_wrlock (&q->lock);
  int r = q2_flush_locked (q);
  pthread_rwlock_unlock (&q->lock);
  return r;
}

/* ------------------------------------------------------------------ */
/* Zero and trim. */

/* Make whole cluster CL read as zeroes (ZERO) or be discarded (!ZERO),
 * metadata only.  MAY_FREE: the host cluster may be released.
 */
static int
unmap_cluster (struct qcow2 *q, uint64_t cl, bool zero, bool may_free)
{
  uint64_t i1 = cl >> q->l2_bits, i2 = cl & ((1ull << q->l2_bits) - 1);
  uint64_t e, bm;
  /* Trim with a backing file on v3 and zero on v3 use the zero flag;
   * otherwise the cluster becomes unallocated (zero_or_trim never asks
   * for a v2 zero with a backing file).
   */
  bool zflag = q->version >= 3 && (zero || q->backing);

  if (i1 < q->l1_size && (q->l1[i1] & L1E_OFFSET_MASK) == 0 &&
      (!zflag || !q->backing))
    return 0;
  if (q->external_data && zero &&
      bdev_zero (q->data, q->cluster_size, cl << q->cluster_bits,
                 may_free ? BDEV_MAY_TRIM : 0) == -1)
    return -1;
  uint8_t *t = l2_get_write (q, i1);
  if (!t)
    return -1;
  e = l2_entry (q, t, i2);
  bm = l2_bitmap (q, t, i2);
  uint64_t host = e & L2E_OFFSET_MASK;
  bool keep = zflag && zero && !may_free && in_place (q, e);
  uint64_t ne, nbm = 0;

  if (zflag) {
    if (q->ext_l2) {
      ne = keep ? e : 0;
      nbm = 0xffffffff00000000ull;
    }
    else
      ne = (keep ? (host | OFLAG_COPIED) : 0) | OFLAG_ZERO;
  }
  else
    ne = 0;
  if (ne == e && nbm == bm) {
    lru_put (q->l2c, t);
    return 0;
  }
  if (!keep) {
    if (q->external_data) {
      if (!zero && may_free && (e & OFLAG_COPIED))
        (void) bdev_trim (q->data, q->cluster_size, cl << q->cluster_bits, 0);
    }
    else if (e & OFLAG_COMPRESSED) {
      if (q2_free_compressed (q, e) == -1)
        goto err;
    }
    else if (host && q2_defer_free (q, host) == -1)
      goto err;
  }
  uint8_t *p = t + (i2 << q->l2_entry_shift);
  store_be64 (p, ne);
  if (q->ext_l2)
    store_be64 (p + 8, nbm);
  if (q2_mark_dirty (q, q->l2c, &q->dl2, t) == -1)
    goto err;
  lru_put (q->l2c, t);
  return 0;
 err:
  lru_put (q->l2c, t);
  return -1;
}

/* Does [a,b) of cluster CL already read as zeroes from metadata alone? */
static int
reads_zero (struct qcow2 *q, uint64_t off, uint64_t len, bool *yes)
{
  *yes = true;
  uint64_t cl = off >> q->cluster_bits;
  uint64_t i1 = cl >> q->l2_bits, i2 = cl & ((1ull << q->l2_bits) - 1);
  uint8_t *t;
  if (q2_l2_lookup_table (q, q->l1, q->l1_size, i1, &t) == -1)
    return -1;
  if (!t) {
    *yes = !q->backing;
    return 0;
  }
  uint64_t e = l2_entry (q, t, i2), bm = l2_bitmap (q, t, i2);
  lru_put (q->l2c, t);
  uint64_t unit_bits = q->ext_l2 ? q->sc_bits : q->cluster_bits;
  for (uint64_t o = off; o < off + len; o = ((o >> unit_bits) + 1) << unit_bits) {
    enum utype type; uint64_t h;
    if (q2_classify (q, e, bm, (o >> unit_bits) & 31, &type, &h) == -1)
      return -1;
    if (!(type == U_ZERO || (type == U_UNALLOC && !q->backing))) {
      *yes = false;
      return 0;
    }
  }
  return 0;
}

/* Zero [a,b) of cluster CL by writing zeroes, unless it reads as zeroes
 * already.
 */
static int
write_zeroes (struct qcow2 *q, uint64_t cl, uint64_t a, uint64_t b)
{
  bool yes;
  int r = reads_zero (q, (cl << q->cluster_bits) + a, b - a, &yes);
  if (r == -1 || yes)
    return r;
  uint8_t *z = calloc (1, b - a);
  struct wrun w = { 0 };
  if (!z) {
    kvm_fail (ENOMEM, "%s: out of memory", q->path);
    return -1;
  }
  r = write_cluster (q, cl, a, b, z, &w);
  int rf = wrun_flush (q, &w);  /* even after an error (above) */
  if (r == 0)
    r = rf;
  free (z);
  return r;
}

/* B, an offset in cluster CL, or the end of the disk if that is before. */
static uint64_t
zero_end (struct qcow2 *q, uint64_t cl, uint64_t b)
{
  uint64_t start = cl << q->cluster_bits;
  return q->bd.size - start < b ? q->bd.size - start : b;
}

/* Extended L2: make whole subclusters [sa,sb) of cluster CL read as
 * zeroes by their zero bits (alloc bits cleared, the host cluster kept),
 * as QEMU does.  Returns 1 when they must be written instead (a
 * compressed cluster has no subcluster bits).
 */
static int
zero_subclusters (struct qcow2 *q, uint64_t cl, uint64_t sa, uint64_t sb)
{
  bool yes;
  if (reads_zero (q, (cl << q->cluster_bits) + sa, sb - sa, &yes) == -1)
    return -1;
  if (yes)
    return 0;
  uint64_t i2 = cl & ((1ull << q->l2_bits) - 1);
  uint8_t *t = l2_get_write (q, cl >> q->l2_bits);
  if (!t)
    return -1;
  uint64_t e = l2_entry (q, t, i2), bm = l2_bitmap (q, t, i2);
  int r = 0;
  if (e & OFLAG_COMPRESSED)
    r = 1;
  else if (q->external_data &&
           bdev_zero (q->data, zero_end (q, cl, sb) - sa,
                      (cl << q->cluster_bits) + sa, 0) == -1)
    r = -1;                     /* a raw data file holds the guest's bytes */
  else {
    unsigned s0 = sa >> q->sc_bits, s1 = sb >> q->sc_bits;
    uint64_t mask = (((uint64_t) 1 << s1) - 1) & ~(((uint64_t) 1 << s0) - 1);
    uint64_t nbm = (bm & ~mask) | (mask << 32);
    if (nbm != bm) {
      store_be64 (t + (i2 << q->l2_entry_shift) + 8, nbm);
      r = q2_mark_dirty (q, q->l2c, &q->dl2, t);
    }
  }
  lru_put (q->l2c, t);
  return r;
}

/* Zero [a,b), part of cluster CL: whole subclusters by metadata (extended
 * L2; the last one counts as whole when the range reaches the end of the
 * disk), the rest by writing zeroes.
 */
static int
zero_part (struct qcow2 *q, uint64_t cl, uint64_t a, uint64_t b)
{
  if (q->ext_l2) {
    uint64_t sc = 1ull << q->sc_bits;
    uint64_t sa = (a + sc - 1) & ~(sc - 1), sb = b & ~(sc - 1);
    if ((cl << q->cluster_bits) + b == q->bd.size)
      sb = (b + sc - 1) & ~(sc - 1);
    if (sa < sb) {
      /* In QEMU's order (its block layer splits the request): the head,
       * the whole subclusters, the tail.  Writing a piece may copy a
       * cluster shared with a snapshot (copied_bitmap).
       */
      int r = 0;
      if (a < sa)
        r = write_zeroes (q, cl, a, sa);
      if (r == 0 && (r = zero_subclusters (q, cl, sa, sb)) == 1)
        r = write_zeroes (q, cl, sa, sb);       /* compressed */
      if (r == 0 && sb < b)
        r = write_zeroes (q, cl, sb, b);
      return r;
    }
  }
  return write_zeroes (q, cl, a, b);
}

static int
zero_or_trim (struct qcow2 *q, uint64_t count, uint64_t offset,
              uint32_t flags, bool zero)
{
  uint64_t end = offset + count;
  uint64_t cs = q->cluster_size;
  int r;

  if (zero && q->version < 3 && q->backing && (flags & BDEV_FAST_ZERO)) {
    errno = ENOTSUP;
    return -1;
  }
  pthread_rwlock_wrlock (&q->lock);
  r = first_write (q, offset, count);
  while (r == 0 && offset < end) {
    uint64_t cl = offset >> q->cluster_bits;
    uint64_t a = offset & (cs - 1);
    uint64_t b = end - (cl << q->cluster_bits);
    if (b > cs)
      b = cs;
    /* The last cluster counts as whole when the range reaches the end of
     * the disk (as in QEMU): nothing past the end can be read.
     */
    if (a == 0 && (b == cs || (cl << q->cluster_bits) + b == q->bd.size)) {
      if (zero && q->version < 3 && q->backing) {
        static const uint8_t zeroes[65536];
        struct wrun w = { 0 };
        for (uint64_t o = 0; r == 0 && o < cs; o += sizeof zeroes) {
          uint64_t n = cs - o < sizeof zeroes ? cs - o : sizeof zeroes;
          r = write_cluster (q, cl, o, o + n, zeroes, &w);
          int rf = wrun_flush (q, &w);  /* even after an error (above) */
          if (r == 0)
            r = rf;
        }
      }
      else
        r = unmap_cluster (q, cl, zero, !zero || (flags & BDEV_MAY_TRIM));
    }
    else if (zero)
      r = zero_part (q, cl, a, b);
    offset += b - a;
  }
  if (r == 0)
    r = q2_maybe_flush (q);
  pthread_rwlock_unlock (&q->lock);
  return r;
}

int
qcow2_zero (struct bdev *bd, uint64_t count, uint64_t offset, uint32_t flags)
{
  return zero_or_trim ((struct qcow2 *) bd, count, offset, flags, true);
}

int
qcow2_trim (struct bdev *bd, uint64_t count, uint64_t offset, uint32_t flags)
{
  return zero_or_trim ((struct qcow2 *) bd, count, offset, flags, false);
}
