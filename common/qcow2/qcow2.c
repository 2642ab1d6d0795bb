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
 * Freed clusters are never reused (allocation is from the end of the file);
 * their space is returned with hole punching.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <linux/falloc.h>
#include <sys/stat.h>

#ifdef HAVE_ZLIB
#include <zlib.h>
#endif
#ifdef HAVE_ZSTD
#include <zstd.h>
#endif

#include "qcow2.h"
#include "qcow2_int.h"
#include "util/checked.h"
#include "util/confine.h"
#include "util/endian.h"
#include "util/log.h"
#include "util/lru.h"

#define MAX_L1_BYTES       (32u << 20)    /* as QEMU */
#define MAX_RT_BYTES       (8u << 20)     /* as QEMU */
#define MAX_SNAPSHOTS      65536
#define MAX_SNAPSHOT_TABLE (64u << 20)
#define DEFAULT_CACHE_MAX  (32u << 20)
#define MIN_CACHE          (1u << 20)

/* Cached table buffer: cluster_size bytes followed by this trailer. */
struct tmeta {
  uint64_t key;
  uint8_t dirty;
};

struct snap {
  char *id, *name;
  uint64_t l1_offset;
  uint32_t l1_size;
  uint64_t disk_size;
  uint32_t date_sec, date_nsec;
  uint64_t vm_clock;
};

struct dirty_list {
  void **v;
  size_t n, cap;
};

struct qcow2 {
  struct bdev bd;
  char *path;
  struct bdev *file;            /* the image container */
  struct bdev *data;            /* where data clusters live */
  struct bdev *backing;
  int fd;                       /* of file, for fallocate */
  bool external_data;
  bool verbose;

  uint8_t hdr[H_V3_LENGTH_CT];  /* first bytes of the header, patched */
  uint64_t bm_ext_pos;          /* bitmaps extension in cluster 0, or 0 */
  uint64_t ext_area_end;        /* end of the header extension area */
  uint32_t header_write_len;
  uint32_t version;
  unsigned cluster_bits;
  uint64_t cluster_size;
  unsigned l2_bits;             /* log2 entries per L2 table */
  unsigned l2_entry_shift;      /* 3 (8 bytes) or 4 (16 bytes) */
  bool ext_l2;
  unsigned sc_bits;             /* log2 subcluster size */
  uint64_t incompat, compat, autoclear;
  unsigned refcount_order;
  unsigned rb_bits;             /* log2 refcount entries per block */
  uint64_t refcount_max;
  int compression_type;
  unsigned csize_shift;
  uint64_t csize_mask;

  /* Active L1 (or snapshot L1, read-only). */
  uint64_t l1_offset;
  uint64_t l1_size;
  uint64_t *l1;
  bool l1_dirty;

  uint64_t rt_offset;
  uint64_t rt_clusters;
  uint64_t rt_entries;
  uint64_t *rt;
  bool rt_dirty;
  bool header_dirty;
  uint64_t old_rt_offset, old_rt_clusters;  /* freed after flush */

  struct lru *l2c, *rbc;
  size_t l2c_capacity, rbc_capacity;
  /* Lock-free fast path for reads: l2ptr[i] is the cached L2 table of L1
   * entry i, holding a permanent pin in l2c (at most l2ptr_max of them).
   * Published with a CAS under the shared lock, cleared under the
   * exclusive lock when the L1 entry changes.
   */
  void **l2ptr;
  size_t l2ptr_count, l2ptr_max;
  struct dirty_list dl2, drb;
  uint64_t *pending_free;
  size_t npending, cappending;
  uint64_t cursor;              /* next candidate host offset */
  uint64_t zero_from;           /* clusters from here were never written */
  bool first_write_done;

  struct snap *snaps;
  struct qcow2_snapshot_info *snapinfo;
  size_t nsnaps;

  pthread_rwlock_t lock;
  pthread_mutex_t detect_lock;
  int meta_prealloc;            /* -1 unknown, 0 no, 1 yes */
};

static const struct bdev_ops qcow2_ops;

bool
qcow2_is (struct bdev *bd)
{
  return bd && bd->ops == &qcow2_ops;
}

bool
qcow2_probe (const void *buf, size_t len)
{
  return len >= 8 && load_be32 (buf) == QCOW2_MAGIC &&
    (load_be32 ((const char *) buf + 4) == 2 ||
     load_be32 ((const char *) buf + 4) == 3);
}

#define ERR(q, err, ...) \
  do { kvm_error (__VA_ARGS__); errno = (err); } while (0)

/* ------------------------------------------------------------------ */
/* Table caches. */

static inline struct tmeta *
tmeta_of (struct qcow2 *q, void *buf)
{
  return (struct tmeta *) ((char *) buf + q->cluster_size);
}

struct load_ctx {
  struct qcow2 *q;
  const char *what;
  bool zero;
};

static int
table_load (void *opaque, uint64_t key, void *buf)
{
  struct load_ctx *ctx = opaque;
  struct qcow2 *q = ctx->q;
  struct tmeta *m = tmeta_of (q, buf);
  m->key = key;
  m->dirty = 0;
  if (ctx->zero) {
    memset (buf, 0, q->cluster_size);
    return 0;
  }
  if (bdev_pread_padded (q->file, buf, q->cluster_size, key) == -1) {
    kvm_error ("%s: reading %s at %" PRIu64 " failed", q->path, ctx->what,
               key);
    return -1;
  }
  return 0;
}

/* Check a metadata table offset read from the image. */
static int
check_table_offset (struct qcow2 *q, uint64_t off, const char *what)
{
  uint64_t limit = q->file->size;
  if (q->cursor > limit)
    limit = q->cursor;
  if (off & (q->cluster_size - 1)) {
    ERR (q, EIO, "%s: corrupt image: %s offset %#" PRIx64
         " is not cluster aligned", q->path, what, off);
    return -1;
  }
  if (!ck_range_within (off, q->cluster_size, limit)) {
    ERR (q, EIO, "%s: corrupt image: %s offset %#" PRIx64
         " is beyond the end of the file", q->path, what, off);
    return -1;
  }
  return 0;
}

/* A write of [off, off+len) in the image file must not hit the header,
 * the active L1 table or the refcount table (hostile or corrupt tables).
 */
static int
check_no_overlap (struct qcow2 *q, uint64_t off, uint64_t len,
                  const char *what)
{
  uint64_t end;
  if (!ck_add64 (off, len, &end) || off < q->cluster_size ||
      (q->l1_size && off < q->l1_offset + q->l1_size * 8 &&
       end > q->l1_offset) ||
      (off < q->rt_offset + q->rt_clusters * q->cluster_size &&
       end > q->rt_offset)) {
    ERR (q, EIO, "%s: corrupt image: %s at %#" PRIx64 " overlaps the "
         "header, L1 table or refcount table; refusing to write", q->path,
         what, off);
    return -1;
  }
  return 0;
}

static void *
table_get (struct qcow2 *q, struct lru *c, uint64_t off, const char *what,
           bool zero)
{
  struct load_ctx ctx = { q, what, zero };
  void *p = lru_get (c, off, table_load, &ctx);
  if (!p && errno == ENOMEM)
    kvm_error ("%s: out of memory loading %s", q->path, what);
  return p;
}

static int
dirty_add (struct dirty_list *d, void *buf)
{
  if (d->n == d->cap) {
    size_t nc = d->cap ? d->cap * 2 : 64;
    void **nv = realloc (d->v, nc * sizeof *nv);
    if (!nv)
      return -1;
    d->v = nv;
    d->cap = nc;
  }
  d->v[d->n++] = buf;
  return 0;
}

/* Mark a pinned table dirty: it takes an extra pin until written back. */
static int
mark_dirty (struct qcow2 *q, struct lru *c, struct dirty_list *d, void *buf)
{
  struct tmeta *m = tmeta_of (q, buf);
  if (m->dirty)
    return 0;
  struct load_ctx ctx = { q, "table", false };
  void *again = lru_get (c, m->key, table_load, &ctx);   /* extra pin */
  if (again != buf) {
    lru_put (c, again);
    ERR (q, EIO, "%s: internal error: cache entry moved", q->path);
    return -1;
  }
  if (dirty_add (d, buf) == -1) {
    lru_put (c, buf);
    ERR (q, ENOMEM, "%s: out of memory", q->path);
    return -1;
  }
  m->dirty = 1;
  return 0;
}

/* ------------------------------------------------------------------ */
/* Refcounts. */

static uint64_t
rc_get (const struct qcow2 *q, const uint8_t *b, uint64_t i)
{
  switch (q->refcount_order) {
  case 0: return (b[i / 8] >> (i % 8)) & 1;
  case 1: return (b[i / 4] >> (2 * (i % 4))) & 3;
  case 2: return (b[i / 2] >> (4 * (i % 2))) & 15;
  case 3: return b[i];
  case 4: return load_be16 (b + 2 * i);
  case 5: return load_be32 (b + 4 * i);
  default: return load_be64 (b + 8 * i);
  }
}

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
static int
refcount_get (struct qcow2 *q, uint64_t off, uint64_t *rc)
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
  if (check_table_offset (q, rb, "refcount block") == -1)
    return -1;
  uint8_t *b = table_get (q, q->rbc, rb, "refcount block", false);
  if (!b)
    return -1;
  *rc = rc_get (q, b, idx & ((1ull << q->rb_bits) - 1));
  lru_put (q->rbc, b);
  return 0;
}

static int refcount_update (struct qcow2 *q, uint64_t off, int delta,
                            uint64_t *newval);

/* Reserve N contiguous clusters at the allocation cursor, without touching
 * refcounts (the caller does).
 */
static int
reserve_clusters (struct qcow2 *q, uint64_t n, uint64_t *off)
{
  for (;;) {
    uint64_t start = q->cursor, len, end, i;
    if (!ck_mul64 (n, q->cluster_size, &len) ||
        !ck_add64 (start, len, &end) || end > (1ull << 56)) {
      ERR (q, ENOSPC, "%s: image file would exceed the qcow2 size limit",
           q->path);
      return -1;
    }
    for (i = 0; i < n; i++) {
      uint64_t rc;
      if (refcount_get (q, start + i * q->cluster_size, &rc) == -1)
        return -1;
      if (rc)
        break;
    }
    if (i == n) {
      q->cursor = end;
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
    ERR (q, ENOSPC, "%s: refcount table would exceed %u MiB", q->path,
         MAX_RT_BYTES >> 20);
    return -1;
  }
  uint64_t entries = nclusters * per;
  uint64_t *nrt = calloc (entries, 8);
  if (!nrt) {
    ERR (q, ENOMEM, "%s: out of memory", q->path);
    return -1;
  }
  memcpy (nrt, q->rt, q->rt_entries * 8);
  uint64_t off;
  if (reserve_clusters (q, nclusters, &off) == -1) {
    free (nrt);
    return -1;
  }
  /* Only one relocation per flush cycle keeps the bookkeeping simple:
   * the table allocated earlier in this cycle was never on disk.
   */
  if (q->old_rt_offset == 0) {
    q->old_rt_offset = q->rt_offset;
    q->old_rt_clusters = q->rt_clusters;
  }
  else if (q->rt_offset != q->old_rt_offset) {
    /* The intermediate table: give its clusters back right away (it is
     * referenced by nothing on disk).
     */
    for (uint64_t i = 0; i < q->rt_clusters; i++)
      if (refcount_update (q, q->rt_offset + i * q->cluster_size, -1,
                           NULL) == -1) {
        free (nrt);
        return -1;
      }
  }
  free (q->rt);
  q->rt = nrt;
  q->rt_entries = entries;
  q->rt_offset = off;
  q->rt_clusters = nclusters;
  q->rt_dirty = q->header_dirty = true;
  for (uint64_t i = 0; i < nclusters; i++)
    if (refcount_update (q, off + i * q->cluster_size, 1, NULL) == -1)
      return -1;
  return 0;
}

static int
refcount_update (struct qcow2 *q, uint64_t off, int delta, uint64_t *newval)
{
  uint64_t idx = off >> q->cluster_bits;
  uint64_t ri = idx >> q->rb_bits;
  if (ri >= q->rt_entries) {
    if (delta < 0) {
      ERR (q, EIO, "%s: corrupt image: freeing cluster %#" PRIx64
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
      ERR (q, EIO, "%s: corrupt image: freeing cluster %#" PRIx64
           " without refcount block", q->path, off);
      return -1;
    }
    if (reserve_clusters (q, 1, &rb) == -1)
      return -1;
    b = table_get (q, q->rbc, rb, "refcount block", true);
    if (!b)
      return -1;
    fresh = true;
    q->rt[ri] = rb;
    q->rt_dirty = true;
  }
  else {
    if (check_table_offset (q, rb, "refcount block") == -1)
      return -1;
    b = table_get (q, q->rbc, rb, "refcount block", false);
    if (!b)
      return -1;
  }
  if (mark_dirty (q, q->rbc, &q->drb, b) == -1) {
    lru_put (q->rbc, b);
    return -1;
  }
  uint64_t i = idx & ((1ull << q->rb_bits) - 1);
  uint64_t v = rc_get (q, b, i);
  if (delta < 0 && v == 0) {
    lru_put (q->rbc, b);
    ERR (q, EIO, "%s: corrupt image: refcount of cluster %#" PRIx64
         " would become negative", q->path, off);
    return -1;
  }
  if (delta > 0 && v == q->refcount_max) {
    lru_put (q->rbc, b);
    ERR (q, ENOSPC, "%s: refcount of cluster %#" PRIx64 " would overflow "
         "(refcount_bits=%u)", q->path, off, 1u << q->refcount_order);
    return -1;
  }
  v += delta;
  rc_set (q, b, i, v);
  lru_put (q->rbc, b);
  if (newval)
    *newval = v;
  if (fresh && refcount_update (q, rb, 1, NULL) == -1)
    return -1;
  return 0;
}

/* Allocate N contiguous clusters with refcount 1. */
static int
alloc_clusters (struct qcow2 *q, uint64_t n, uint64_t *off)
{
  if (reserve_clusters (q, n, off) == -1)
    return -1;
  for (uint64_t i = 0; i < n; i++)
    if (refcount_update (q, *off + i * q->cluster_size, 1, NULL) == -1)
      return -1;
  return 0;
}

/* Drop one reference after the next flush. */
static int
defer_free (struct qcow2 *q, uint64_t off)
{
  if (q->npending == q->cappending) {
    size_t nc = q->cappending ? q->cappending * 2 : 256;
    uint64_t *nv = realloc (q->pending_free, nc * sizeof *nv);
    if (!nv) {
      ERR (q, ENOMEM, "%s: out of memory", q->path);
      return -1;
    }
    q->pending_free = nv;
    q->cappending = nc;
  }
  q->pending_free[q->npending++] = off;
  return 0;
}

/* ------------------------------------------------------------------ */
/* Header / flush. */

static int
sync_file (struct qcow2 *q, struct bdev *b)
{
  (void) q;
  return b->ops->flush (b);
}

static int
write_header (struct qcow2 *q)
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
    ERR (q, ENOMEM, "%s: out of memory", q->path);
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
    if (check_no_overlap (q, m->key, q->cluster_size, "metadata table") == -1 ||
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

static void
punch (struct qcow2 *q, uint64_t off, uint64_t len)
{
  if (q->fd >= 0)
    (void) fallocate (q->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                      off, len);
}

/* Write back everything, in dependency order.  Exclusive lock held. */
static int
flush_locked (struct qcow2 *q)
{
  bool meta = q->drb.n || q->rt_dirty || q->dl2.n || q->l1_dirty ||
    q->header_dirty;

  if (q->bd.readonly)
    return 0;
  if (q->external_data && sync_file (q, q->data) == -1)
    return -1;
  if (!meta)
    return sync_file (q, q->file);

  /* Make sure the file covers every allocated cluster. */
  if (q->fd >= 0 && q->file->size < q->cursor) {
    if (ftruncate (q->fd, q->cursor) == -1) {
      ERR (q, errno, "%s: extending the file: %m", q->path);
      return -1;
    }
    q->file->size = q->cursor;
  }
  if (write_dirty (q, q->rbc, &q->drb) == -1 || sync_file (q, q->file) == -1)
    return -1;
  if (q->rt_dirty) {
    if (write_table (q, q->rt, q->rt_entries, q->rt_offset,
                     q->rt_clusters * q->cluster_size) == -1 ||
        sync_file (q, q->file) == -1)
      return -1;
    q->rt_dirty = false;
    /* A relocated table must be the one in use before any L2 table can
     * refer to clusters whose refcount blocks only it knows.
     */
    if (q->header_dirty) {
      if (write_header (q) == -1 || sync_file (q, q->file) == -1)
        return -1;
      q->header_dirty = false;
    }
  }
  if (q->dl2.n) {
    if (write_dirty (q, q->l2c, &q->dl2) == -1 ||
        sync_file (q, q->file) == -1)
      return -1;
  }
  if (q->l1_dirty || q->header_dirty) {
    if (q->l1_dirty &&
        write_table (q, q->l1, q->l1_size, q->l1_offset,
                     q->l1_size * 8) == -1)
      return -1;
    if (q->header_dirty && write_header (q) == -1)
      return -1;
    if (sync_file (q, q->file) == -1)
      return -1;
    q->l1_dirty = q->header_dirty = false;
  }

  /* Everything that dropped its last on-disk reference can go now. */
  if (q->old_rt_offset) {
    for (uint64_t i = 0; i < q->old_rt_clusters; i++)
      if (defer_free (q, q->old_rt_offset + i * q->cluster_size) == -1)
        return -1;
    q->old_rt_offset = q->old_rt_clusters = 0;
  }
  size_t n = q->npending;
  q->npending = 0;
  for (size_t i = 0; i < n; i++) {
    uint64_t v;
    if (refcount_update (q, q->pending_free[i], -1, &v) == -1)
      return -1;
    if (v == 0)
      punch (q, q->pending_free[i], q->cluster_size);
  }
  return 0;
}

/* Keep the number of pinned dirty tables bounded. */
static int
maybe_flush (struct qcow2 *q)
{
  if (q->dl2.n > q->l2c_capacity / 2 + 8 ||
      q->drb.n > q->rbc_capacity / 2 + 8 || q->npending > 65536)
    return flush_locked (q);
  return 0;
}

/* ------------------------------------------------------------------ */
/* Compressed clusters. */

static int
decompress (struct qcow2 *q, const uint8_t *in, size_t inlen, uint8_t *out)
{
  size_t outlen = q->cluster_size;
  if (q->compression_type == 0) {
#ifdef HAVE_ZLIB
    z_stream s;
    memset (&s, 0, sizeof s);
    if (inflateInit2 (&s, -12) != Z_OK)
      goto bad;
    s.next_in = (Bytef *) in;
    s.avail_in = inlen;
    s.next_out = out;
    s.avail_out = outlen;
    int r = inflate (&s, Z_FINISH);
    bool ok = (r == Z_STREAM_END || r == Z_BUF_ERROR) && s.avail_out == 0;
    inflateEnd (&s);
    if (ok)
      return 0;
#else
    ERR (q, ENOTSUP, "%s: zlib support not compiled in", q->path);
    return -1;
#endif
  }
  else {
#ifdef HAVE_ZSTD
    ZSTD_DCtx *d = ZSTD_createDCtx ();
    if (!d)
      goto bad;
    ZSTD_inBuffer ib = { in, inlen, 0 };
    ZSTD_outBuffer ob = { out, outlen, 0 };
    while (ob.pos < ob.size) {
      size_t r = ZSTD_decompressStream (d, &ob, &ib);
      if (ZSTD_isError (r))
        break;
      if (r == 0 || ib.pos == ib.size)
        break;
    }
    ZSTD_freeDCtx (d);
    if (ob.pos == ob.size)
      return 0;
#else
    ERR (q, ENOTSUP, "%s: zstd support not compiled in", q->path);
    return -1;
#endif
  }
#if defined (HAVE_ZLIB) || defined (HAVE_ZSTD)
 bad:
#endif
  ERR (q, EIO, "%s: corrupt compressed cluster", q->path);
  return -1;
}

static void
compressed_range (struct qcow2 *q, uint64_t e, uint64_t *off, uint64_t *len)
{
  uint64_t o = e & ((1ull << q->csize_shift) - 1);
  uint64_t nsect = (e >> q->csize_shift) & q->csize_mask;
  *off = o;
  *len = (nsect + 1) * 512 - (o & 511);
}

/* Decompress the cluster of L2 entry E into OUT (cluster_size bytes). */
static int
read_compressed (struct qcow2 *q, uint64_t e, uint8_t *out)
{
  uint64_t off, len;
  compressed_range (q, e, &off, &len);
  if (!ck_range_within (off, 0, q->file->size) || off == 0) {
    ERR (q, EIO, "%s: corrupt image: compressed cluster offset %#" PRIx64
         " beyond the end of the file", q->path, off);
    return -1;
  }
  uint8_t *in = malloc (len);
  if (!in) {
    ERR (q, ENOMEM, "%s: out of memory", q->path);
    return -1;
  }
  int r = bdev_pread_padded (q->file, in, len, off);
  if (r == 0)
    r = decompress (q, in, len, out);
  free (in);
  return r;
}

/* The host clusters a compressed entry occupies. */
static int
free_compressed (struct qcow2 *q, uint64_t e)
{
  uint64_t off, len;
  compressed_range (q, e, &off, &len);
  uint64_t first = off & ~(q->cluster_size - 1);
  uint64_t last = (off + len - 1) & ~(q->cluster_size - 1);
  for (uint64_t c = first; c <= last; c += q->cluster_size)
    if (defer_free (q, c) == -1)
      return -1;
  return 0;
}

/* ------------------------------------------------------------------ */
/* Mapping. */

enum utype { U_DATA, U_ZERO, U_UNALLOC, U_COMPRESSED };

/* Load the L2 table for L1 index I of table L1 (size N).  *T is NULL when
 * the L1 entry is empty.  *PINNED tells whether the caller must lru_put.
 */
static int
l2_acquire (struct qcow2 *q, const uint64_t *l1, uint64_t n, uint64_t i,
            uint8_t **t, bool *pinned)
{
  *t = NULL;
  *pinned = false;
  if (i >= n)
    return 0;
  uint64_t off = l1[i] & L1E_OFFSET_MASK;
  if (off == 0)
    return 0;
  void *p = __atomic_load_n (&q->l2ptr[i], __ATOMIC_ACQUIRE);
  if (p) {
    *t = p;
    return 0;
  }
  if (check_table_offset (q, off, "L2 table") == -1)
    return -1;
  *t = table_get (q, q->l2c, off, "L2 table", false);
  if (!*t)
    return -1;
  *pinned = true;
  if (__atomic_add_fetch (&q->l2ptr_count, 1, __ATOMIC_RELAXED)
      <= q->l2ptr_max) {
    void *expected = NULL;
    if (__atomic_compare_exchange_n (&q->l2ptr[i], &expected, *t, false,
                                     __ATOMIC_RELEASE, __ATOMIC_RELAXED)) {
      *pinned = false;          /* the pin now belongs to l2ptr */
      return 0;
    }
  }
  __atomic_sub_fetch (&q->l2ptr_count, 1, __ATOMIC_RELAXED);
  return 0;
}

static int
l2_lookup_table (struct qcow2 *q, const uint64_t *l1, uint64_t n,
                 uint64_t i, uint8_t **t)
{
  bool pinned;
  if (l2_acquire (q, l1, n, i, t, &pinned) == -1)
    return -1;
  if (*t && !pinned) {          /* give the caller its own pin */
    struct load_ctx ctx = { q, "L2 table", false };
    *t = lru_get (q->l2c, tmeta_of (q, *t)->key, table_load, &ctx);
    if (!*t)
      return -1;
  }
  return 0;
}

/* L1 entry I changes: drop the fast-path pointer.  Exclusive lock held. */
static void
l2ptr_drop (struct qcow2 *q, uint64_t i)
{
  if (q->l2ptr && i < q->l1_size && q->l2ptr[i]) {
    lru_put (q->l2c, q->l2ptr[i]);
    q->l2ptr[i] = NULL;
    q->l2ptr_count--;
  }
}

static inline uint64_t
l2_entry (const struct qcow2 *q, const uint8_t *t, uint64_t i)
{
  return load_be64 (t + (i << q->l2_entry_shift));
}

static inline uint64_t
l2_bitmap (const struct qcow2 *q, const uint8_t *t, uint64_t i)
{
  return q->ext_l2 ? load_be64 (t + (i << q->l2_entry_shift) + 8) : 0;
}

/* Classify unit (subcluster SC, or the whole cluster) of entry E. */
static int
classify (struct qcow2 *q, uint64_t e, uint64_t bm, unsigned sc,
          enum utype *type, uint64_t *host)
{
  *host = 0;
  if (e & OFLAG_COMPRESSED) {
    if (q->external_data) {
      ERR (q, EIO, "%s: corrupt image: compressed cluster with an "
           "external data file", q->path);
      return -1;
    }
    *type = U_COMPRESSED;
    return 0;
  }
  uint64_t off = e & L2E_OFFSET_MASK;
  if (q->ext_l2) {
    bool alloc = bm & (1ull << sc), zero = bm & (1ull << (32 + sc));
    if (alloc && zero) {
      ERR (q, EIO, "%s: corrupt image: subcluster both allocated and zero",
           q->path);
      return -1;
    }
    if (zero) { *type = U_ZERO; return 0; }
    if (!alloc) { *type = U_UNALLOC; return 0; }
    if (off == 0 && !q->external_data) {
      ERR (q, EIO, "%s: corrupt image: allocated subcluster without "
           "host cluster", q->path);
      return -1;
    }
    *type = U_DATA;
    *host = off + ((uint64_t) sc << q->sc_bits);
  }
  else {
    if ((e & OFLAG_ZERO) && q->version >= 3) { *type = U_ZERO; return 0; }
    if (off == 0 && !(q->external_data && (e & OFLAG_COPIED))) {
      *type = U_UNALLOC;
      return 0;
    }
    *type = U_DATA;
    *host = off;
  }
  if (off & (q->cluster_size - 1)) {
    ERR (q, EIO, "%s: corrupt image: data cluster offset %#" PRIx64
         " is not cluster aligned", q->path, off);
    return -1;
  }
  return 0;
}

/* Walk [offset, offset+count) in units of equal type, calling FN for
 * maximal runs (data runs contiguous on the host).  Caller holds the lock.
 */
typedef int (*run_fn) (struct qcow2 *q, void *opaque, enum utype type,
                       uint64_t guest, uint64_t host, uint64_t len,
                       uint64_t entry);

static int
walk (struct qcow2 *q, const uint64_t *l1, uint64_t l1n, uint64_t offset,
      uint64_t count, run_fn fn, void *opaque)
{
  uint64_t end = offset + count;
  uint64_t unit_bits = q->ext_l2 ? q->sc_bits : q->cluster_bits;
  uint8_t *table = NULL;
  bool pinned = false;
  uint64_t table_idx = UINT64_MAX;
  bool have_run = false;
  enum utype rtype = U_DATA;
  uint64_t rguest = 0, rhost = 0, rlen = 0, rentry = 0;
  int r = 0;

  while (offset < end) {
    uint64_t cl = offset >> q->cluster_bits;
    uint64_t i1 = cl >> q->l2_bits;
    uint64_t i2 = cl & ((1ull << q->l2_bits) - 1);
    if (i1 != table_idx) {
      if (table && pinned)
        lru_put (q->l2c, table);
      table = NULL;
      table_idx = i1;
      if (l2_acquire (q, l1, l1n, i1, &table, &pinned) == -1) {
        r = -1;
        goto out;
      }
    }
    enum utype type;
    uint64_t host, e = 0, len, next;
    if (!table) {
      /* Whole L2 range unallocated. */
      next = (i1 + 1) << (q->l2_bits + q->cluster_bits);
      type = U_UNALLOC;
      host = 0;
    }
    else {
      e = l2_entry (q, table, i2);
      uint64_t bm = l2_bitmap (q, table, i2);
      unsigned sc = (offset >> unit_bits) & ((1u << (q->cluster_bits - unit_bits)) - 1);
      if (classify (q, e, bm, sc, &type, &host) == -1) {
        r = -1;
        goto out;
      }
      if (type == U_COMPRESSED)
        next = (cl + 1) << q->cluster_bits;
      else
        next = ((offset >> unit_bits) + 1) << unit_bits;
      host += offset & ((1ull << unit_bits) - 1);
    }
    if (next > end || next == 0)
      next = end;
    len = next - offset;
    if (have_run && type == rtype && type != U_COMPRESSED &&
        (type != U_DATA || rhost + rlen == host))
      rlen += len;
    else {
      if (have_run && (r = fn (q, opaque, rtype, rguest, rhost, rlen,
                               rentry)) != 0)
        goto out;               /* -1: error, 1: stop early */
      have_run = true;
      rtype = type; rguest = offset; rhost = host; rlen = len; rentry = e;
    }
    offset = next;
  }
  if (have_run)
    r = fn (q, opaque, rtype, rguest, rhost, rlen, rentry);
 out:
  if (table && pinned)
    lru_put (q->l2c, table);
  return r < 0 ? -1 : 0;
}

/* ------------------------------------------------------------------ */
/* Read. */

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
    uint8_t *tmp = malloc (q->cluster_size);
    if (!tmp) {
      ERR (q, ENOMEM, "%s: out of memory", q->path);
      return -1;
    }
    int r = read_compressed (q, entry, tmp);
    if (r == 0)
      memcpy (p, tmp + (guest & (q->cluster_size - 1)), len);
    free (tmp);
    return r;
  }
  }
  return 0;
}

static int
read_locked (struct qcow2 *q, void *buf, uint64_t count, uint64_t offset)
{
  struct read_ctx rc = { buf, offset };
  return walk (q, q->l1, q->l1_size, offset, count, read_run, &rc);
}

static int
qcow2_pread (struct bdev *bd, void *buf, size_t count, uint64_t offset)
{
  struct qcow2 *q = (struct qcow2 *) bd;
  pthread_rwlock_rdlock (&q->lock);
  int r = read_locked (q, buf, count, offset);
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
      uint64_t end = div_round_up64 (q->file->size, q->cluster_size);
      uint64_t per = 1ull << q->rb_bits, count = 0;
      for (uint64_t ri = 0; ri < q->rt_entries && ri * per < end &&
             count <= threshold; ri++) {
        uint64_t rb = q->rt[ri] & REFT_OFFSET_MASK;
        uint8_t *b;
        if (rb == 0 || check_table_offset (q, rb, "refcount block") == -1 ||
            !(b = table_get (q, q->rbc, rb, "refcount block", false)))
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

static int
qcow2_extents (struct bdev *bd, uint64_t count, uint64_t offset,
               uint32_t flags, bdev_extent_fn fn, void *opaque)
{
  struct qcow2 *q = (struct qcow2 *) bd;
  struct ext_ctx x = { .fn = fn, .opaque = opaque, .flags = flags };
  pthread_rwlock_rdlock (&q->lock);
  int r = walk (q, q->l1, q->l1_size, offset, count, ext_run, &x);
  pthread_rwlock_unlock (&q->lock);
  if (r == 0 && x.have)
    r = fn (opaque, x.off, x.len, x.type);
  return r;
}

/* ------------------------------------------------------------------ */
/* Write. */

/* First modification of the image: clear autoclear bits for features we
 * do not maintain, synchronously, before any data changes.
 */
/* Collect the clusters of the persistent bitmaps (directory, bitmap
 * tables, bitmap data).  Best effort: on a parsing problem the rest leaks.
 */
static void
collect_bitmap_clusters (struct qcow2 *q, const uint8_t *ext,
                         uint64_t **list, size_t *n)
{
  uint64_t cs = q->cluster_size, dir_size = load_be64 (ext + 8);
  uint64_t dir_off = load_be64 (ext + 16);
  uint32_t nb = load_be32 (ext);
  size_t cap = 0;
  uint8_t *dir = NULL;
  uint64_t *tab = NULL;

#define ADD(off) do {                                                   \
    uint64_t o_ = (off);                                                \
    if (o_ % cs || o_ < cs || o_ >= q->file->size)                      \
      goto out;                                                         \
    if (*n == cap) {                                                    \
      size_t nc = cap ? cap * 2 : 64;                                   \
      uint64_t *nl = realloc (*list, nc * 8);                           \
      if (!nl) goto out;                                                \
      *list = nl; cap = nc;                                             \
    }                                                                   \
    (*list)[(*n)++] = o_;                                               \
  } while (0)

  if (dir_size == 0 || dir_size > (64u << 20) ||
      !ck_range_within (dir_off, dir_size, q->file->size))
    goto out;
  dir = malloc (dir_size);
  if (!dir || bdev_pread (q->file, dir, dir_size, dir_off) == -1)
    goto out;
  for (uint64_t c = 0; c < div_round_up64 (dir_size, cs); c++)
    ADD (dir_off + c * cs);
  for (uint64_t p = 0, i = 0; i < nb && p + 24 <= dir_size; i++) {
    uint64_t toff = load_be64 (dir + p);
    uint32_t tsize = load_be32 (dir + p + 8);
    uint16_t namelen = load_be16 (dir + p + 18);
    uint32_t extra = load_be32 (dir + p + 20);
    uint64_t tbytes = (uint64_t) tsize * 8;
    if (tbytes > (64u << 20) ||
        !ck_range_within (toff, tbytes, q->file->size))
      goto out;
    free (tab);
    tab = malloc (tbytes ? tbytes : 8);
    if (!tab || bdev_pread (q->file, tab, tbytes, toff) == -1)
      goto out;
    for (uint64_t c = 0; c < div_round_up64 (tbytes, cs); c++)
      ADD (toff + c * cs);
    for (uint32_t j = 0; j < tsize; j++) {
      uint64_t e = be64toh (tab[j]) & L2E_OFFSET_MASK;
      if (e)
        ADD (e);
    }
    p += (24 + (uint64_t) namelen + extra + 7) & ~7ull;
  }
#undef ADD
 out:
  free (dir);
  free (tab);
}

/* First modification of the image: clear autoclear bits for features we
 * do not maintain, synchronously, before any data changes.  Persistent
 * bitmaps are dropped completely (extension removed, clusters freed) so
 * that the image stays leak-free.
 */
static int
first_write (struct qcow2 *q)
{
  if (q->first_write_done)
    return 0;
  if (q->version >= 3 && (q->autoclear & ~AUTOCLEAR_DATA_RAW)) {
    uint64_t *list = NULL;
    size_t n = 0;
    q->autoclear &= AUTOCLEAR_DATA_RAW;
    if (q->bm_ext_pos) {
      uint64_t end = q->ext_area_end;
      uint8_t *hc = calloc (1, end);
      if (!hc) {
        ERR (q, ENOMEM, "%s: out of memory", q->path);
        return -1;
      }
      if (bdev_pread (q->file, hc, end, 0) == -1) {
        free (hc);
        return -1;
      }
      uint64_t p = q->bm_ext_pos;
      uint64_t elen = 8 + (((uint64_t) load_be32 (hc + p + 4) + 7) & ~7ull);
      collect_bitmap_clusters (q, hc + p + 8, &list, &n);
      memmove (hc + p, hc + p + elen, end - p - elen);
      memset (hc + end - elen, 0, elen);
      memcpy (hc + H_V3_LENGTH, q->hdr + H_V3_LENGTH,
              q->header_write_len - H_V3_LENGTH);
      store_be64 (hc + H_AUTOCLEAR, q->autoclear);
      int r = bdev_pwrite (q->file, hc + q->header_write_len,
                           end - q->header_write_len, q->header_write_len, 0);
      free (hc);
      if (r == -1) {
        free (list);
        return -1;
      }
      q->bm_ext_pos = 0;
    }
    if (write_header (q) == -1 || sync_file (q, q->file) == -1) {
      free (list);
      return -1;
    }
    kvm_debug ("%s: dropped persistent bitmaps, freeing %zu clusters",
               q->path, n);
    /* Nothing on disk refers to the bitmap clusters any more. */
    for (size_t i = 0; i < n; i++) {
      uint64_t v;
      if (refcount_get (q, list[i], &v) == 0 && v > 0 &&
          refcount_update (q, list[i], -1, &v) == 0 && v == 0)
        punch (q, list[i], q->cluster_size);
    }
    free (list);
  }
  q->first_write_done = true;
  return 0;
}

/* Get the L2 table for L1 index I, ready to be modified: allocated and
 * not shared with a snapshot.  Returns a pinned buffer.
 */
static uint8_t *
l2_get_write (struct qcow2 *q, uint64_t i)
{
  if (i >= q->l1_size) {
    ERR (q, EIO, "%s: L1 table too small for the virtual size", q->path);
    return NULL;
  }
  uint64_t e = q->l1[i], off = e & L1E_OFFSET_MASK, noff;
  uint8_t *t;
  if (off && (e & OFLAG_COPIED)) {
    if (check_table_offset (q, off, "L2 table") == -1)
      return NULL;
    return table_get (q, q->l2c, off, "L2 table", false);
  }
  if (alloc_clusters (q, 1, &noff) == -1)
    return NULL;
  t = table_get (q, q->l2c, noff, "L2 table", true);
  if (!t)
    return NULL;
  if (off) {                    /* shared with a snapshot: copy it */
    uint8_t *old;
    if (check_table_offset (q, off, "L2 table") == -1 ||
        !(old = table_get (q, q->l2c, off, "L2 table", false))) {
      lru_put (q->l2c, t);
      return NULL;
    }
    memcpy (t, old, q->cluster_size);
    lru_put (q->l2c, old);
    if (defer_free (q, off) == -1) {
      lru_put (q->l2c, t);
      return NULL;
    }
  }
  if (mark_dirty (q, q->l2c, &q->dl2, t) == -1) {
    lru_put (q->l2c, t);
    return NULL;
  }
  l2ptr_drop (q, i);
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
struct wrun {
  uint64_t host, len;
  const uint8_t *src;
  bool can_defer;
  struct drun *d;
  size_t nd, capd;
};

static int
wrun_flush (struct qcow2 *q, struct wrun *w)
{
  int r = 0;
  if (w->len && !q->external_data &&
      check_no_overlap (q, w->host, w->len, "data cluster") == -1)
    r = -1;
  else if (w->len)
    r = bdev_pwrite (q->data, w->src, w->len, w->host, 0);
  w->len = 0;
  return r;
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
      check_no_overlap (q, host, len, "data cluster") == -1)
    return -1;
  if (w->nd) {
    struct drun *l = &w->d[w->nd - 1];
    if (l->host + l->len == host && l->src + l->len == src) {
      l->len += len;
      return 0;
    }
  }
  if (w->nd == w->capd) {
    size_t nc = w->capd ? w->capd * 2 : 16;
    struct drun *nd = realloc (w->d, nc * sizeof *nd);
    if (!nd)
      return wrun_add (q, w, host, src, len);
    w->d = nd;
    w->capd = nc;
  }
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
  return alloc_clusters (q, 1, host);
}

/* Write [a, b) of guest cluster CL from SRC (src points at guest offset a).
 * Exclusive lock held.
 */
static int
write_cluster (struct qcow2 *q, uint64_t cl, uint64_t a, uint64_t b,
               const uint8_t *src, struct wrun *w)
{
  uint64_t cs = q->cluster_size;
  uint64_t gbase = cl << q->cluster_bits;
  uint64_t i1 = cl >> q->l2_bits, i2 = cl & ((1ull << q->l2_bits) - 1);
  uint8_t *t = l2_get_write (q, i1);
  uint8_t *tmp = NULL;
  int r = -1;
  if (!t)
    return -1;
  uint64_t e = l2_entry (q, t, i2), bm = l2_bitmap (q, t, i2);
  uint64_t host = e & L2E_OFFSET_MASK;
  bool full = a == 0 && b == cs;

  if (in_place (q, e) && host % cs) {
    ERR (q, EIO, "%s: corrupt image: data cluster offset %#" PRIx64
         " is not cluster aligned", q->path, host);
    goto out;
  }
  if (q->ext_l2 && !(e & OFLAG_COMPRESSED) &&
      (in_place (q, e) || host == 0)) {
    /* Subcluster granularity: write the touched subclusters. */
    uint64_t scs = 1ull << q->sc_bits;
    unsigned s0 = a >> q->sc_bits, s1 = (b - 1) >> q->sc_bits;
    uint64_t sa = (uint64_t) s0 << q->sc_bits, sb = (uint64_t) (s1 + 1) << q->sc_bits;
    uint32_t mask = (uint32_t) ((((uint64_t) 1 << (s1 + 1)) - 1) & ~(((uint64_t) 1 << s0) - 1));
    bool fresh = false;
    if (!in_place (q, e)) {
      if (alloc_data_cluster (q, cl, &host) == -1)
        goto out;
      fresh = true;
    }
    (void) scs;
    if (sa == a && sb == b) {
      if (wrun_add (q, w, host + a, src, b - a) == -1)
        goto out;
    }
    else {
      /* Partial subclusters: merge with the current content. */
      if (wrun_flush (q, w) == -1)
        goto out;
      tmp = malloc (sb - sa);
      if (!tmp) {
        ERR (q, ENOMEM, "%s: out of memory", q->path);
        goto out;
      }
      if (read_locked (q, tmp, sb - sa, gbase + sa) == -1)
        goto out;
      memcpy (tmp + (a - sa), src, b - a);
      if (!q->external_data &&
          check_no_overlap (q, host + sa, sb - sa, "data cluster") == -1)
        goto out;
      if (bdev_pwrite (q->data, tmp, sb - sa, host + sa, 0) == -1)
        goto out;
    }
    uint64_t nbm = (bm | mask) & ~((uint64_t) mask << 32);
    uint64_t ne = host | OFLAG_COPIED;
    if (ne != e || nbm != bm || fresh) {
      uint8_t *p = t + (i2 << q->l2_entry_shift);
      store_be64 (p, ne);
      store_be64 (p + 8, nbm);
      if (mark_dirty (q, q->l2c, &q->dl2, t) == -1)
        goto out;
    }
    r = 0;
    goto out;
  }

  if (in_place (q, e) && !(q->version >= 3 && (e & OFLAG_ZERO) && !q->ext_l2)) {
    r = wrun_defer (q, w, host + a, src, b - a);
    goto out;
  }

  /* Needs a new cluster (or materialising a preallocated zero cluster). */
  uint64_t nhost;
  bool reuse = in_place (q, e);
  if (reuse)
    nhost = host;
  else if (alloc_data_cluster (q, cl, &nhost) == -1)
    goto out;
  /* The old content reads as zeroes and the new cluster has never been
   * written (beyond the original end of file)?
   */
  bool zero_before = !reuse && !q->external_data && nhost >= q->zero_from &&
    !(e & OFLAG_COMPRESSED) && host == 0 &&
    (!q->backing || (q->version >= 3 && (e & OFLAG_ZERO)));
  if (full) {
    if ((zero_before ? wrun_defer (q, w, nhost, src, cs)
         : wrun_add (q, w, nhost, src, cs)) == -1)
      goto out;
  }
  else if (zero_before) {
    /* No COW needed. */
    if (wrun_defer (q, w, nhost + a, src, b - a) == -1)
      goto out;
  }
  else {
    if (wrun_flush (q, w) == -1)
      goto out;
    tmp = malloc (cs);
    if (!tmp) {
      ERR (q, ENOMEM, "%s: out of memory", q->path);
      goto out;
    }
    if (read_locked (q, tmp, cs, gbase) == -1)
      goto out;
    memcpy (tmp + a, src, b - a);
    if (!q->external_data &&
        check_no_overlap (q, nhost, cs, "data cluster") == -1)
      goto out;
    if (bdev_pwrite (q->data, tmp, cs, nhost, 0) == -1)
      goto out;
  }
  /* Release the old cluster after the next flush. */
  if (!reuse && !q->external_data) {
    if (e & OFLAG_COMPRESSED) {
      if (free_compressed (q, e) == -1)
        goto out;
    }
    else if (host && defer_free (q, host) == -1)
      goto out;
  }
  uint8_t *p = t + (i2 << q->l2_entry_shift);
  store_be64 (p, nhost | OFLAG_COPIED);
  if (q->ext_l2)
    store_be64 (p + 8, 0xffffffffull);
  if (mark_dirty (q, q->l2c, &q->dl2, t) == -1)
    goto out;
  r = 0;
 out:
  free (tmp);
  lru_put (q->l2c, t);
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
      check_no_overlap (q, host, len, "data cluster") == -1)
    return -1;
  return bdev_pwrite (q->data, f->src + (guest - f->base), len, host, 0);
}

static int
qcow2_pwrite (struct bdev *bd, const void *buf, size_t count,
              uint64_t offset, uint32_t flags)
{
  struct qcow2 *q = (struct qcow2 *) bd;
  int r;
  (void) flags;

  if (q->first_write_done) {
    struct fast_ctx f = { .src = buf, .base = offset, .ok = true };
    pthread_rwlock_rdlock (&q->lock);
    r = walk (q, q->l1, q->l1_size, offset, count, fast_check_run, &f);
    if (r == 0 && f.ok)
      r = walk (q, q->l1, q->l1_size, offset, count, fast_write_run, &f);
    pthread_rwlock_unlock (&q->lock);
    if (r == -1 || f.ok)
      return r;
  }

  pthread_rwlock_wrlock (&q->lock);
  r = first_write (q);
  struct wrun w = { .can_defer = true };
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
  if (r == 0)
    r = wrun_flush (q, &w);
  if (r == 0)
    r = maybe_flush (q);
  pthread_rwlock_unlock (&q->lock);
  if (wrun_write_deferred (q, &w, r == 0) == -1)
    r = -1;
  return r;
}

static int
qcow2_flush (struct bdev *bd)
{
  struct qcow2 *q = (struct qcow2 *) bd;
  pthread_rwlock_wrlock (&q->lock);
  int r = flush_locked (q);
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
      if (free_compressed (q, e) == -1)
        goto err;
    }
    else if (host && defer_free (q, host) == -1)
      goto err;
  }
  uint8_t *p = t + (i2 << q->l2_entry_shift);
  store_be64 (p, ne);
  if (q->ext_l2)
    store_be64 (p + 8, nbm);
  if (mark_dirty (q, q->l2c, &q->dl2, t) == -1)
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
  if (l2_lookup_table (q, q->l1, q->l1_size, i1, &t) == -1)
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
    if (classify (q, e, bm, (o >> unit_bits) & 31, &type, &h) == -1)
      return -1;
    if (!(type == U_ZERO || (type == U_UNALLOC && !q->backing))) {
      *yes = false;
      return 0;
    }
  }
  return 0;
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
  r = first_write (q);
  while (r == 0 && offset < end) {
    uint64_t cl = offset >> q->cluster_bits;
    uint64_t a = offset & (cs - 1);
    uint64_t b = end - (cl << q->cluster_bits);
    if (b > cs)
      b = cs;
    if (a == 0 && b == cs) {
      if (zero && q->version < 3 && q->backing) {
        static const uint8_t zeroes[65536];
        struct wrun w = { 0 };
        for (uint64_t o = 0; r == 0 && o < cs; o += sizeof zeroes) {
          uint64_t n = cs - o < sizeof zeroes ? cs - o : sizeof zeroes;
          r = write_cluster (q, cl, o, o + n, zeroes, &w);
          if (r == 0)
            r = wrun_flush (q, &w);
        }
      }
      else
        r = unmap_cluster (q, cl, zero, !zero || (flags & BDEV_MAY_TRIM));
    }
    else if (zero) {
      bool yes;
      r = reads_zero (q, offset, b - a, &yes);
      if (r == 0 && !yes) {
        uint8_t *z = calloc (1, b - a);
        struct wrun w = { 0 };
        if (!z) {
          ERR (q, ENOMEM, "%s: out of memory", q->path);
          r = -1;
        }
        else {
          r = write_cluster (q, cl, a, b, z, &w);
          if (r == 0)
            r = wrun_flush (q, &w);
          free (z);
        }
      }
    }
    offset += b - a;
  }
  if (r == 0)
    r = maybe_flush (q);
  pthread_rwlock_unlock (&q->lock);
  return r;
}

static int
qcow2_zero (struct bdev *bd, uint64_t count, uint64_t offset, uint32_t flags)
{
  return zero_or_trim ((struct qcow2 *) bd, count, offset, flags, true);
}

static int
qcow2_trim (struct bdev *bd, uint64_t count, uint64_t offset, uint32_t flags)
{
  return zero_or_trim ((struct qcow2 *) bd, count, offset, flags, false);
}

/* ------------------------------------------------------------------ */
/* Open / close. */

static void
free_snaps (struct qcow2 *q)
{
  for (size_t i = 0; i < q->nsnaps; i++) {
    free (q->snaps[i].id);
    free (q->snaps[i].name);
  }
  free (q->snaps);
  free (q->snapinfo);
  q->snaps = NULL;
  q->snapinfo = NULL;
  q->nsnaps = 0;
}

static void
qcow2_close (struct bdev *bd)
{
  struct qcow2 *q = (struct qcow2 *) bd;
  if (q->file && !bd->readonly) {
    pthread_rwlock_wrlock (&q->lock);
    if (flush_locked (q) == -1)
      kvm_error ("%s: flushing metadata on close failed", q->path);
    pthread_rwlock_unlock (&q->lock);
  }
  if (q->verbose && q->l2c) {
    uint64_t h, m;
    lru_stats (q->l2c, &h, &m);
    kvm_debug ("%s: L2 cache: %" PRIu64 " hits, %" PRIu64 " misses",
               q->path, h, m);
  }
  for (uint64_t i = 0; q->l2ptr && i < q->l1_size; i++)
    l2ptr_drop (q, i);
  free (q->l2ptr);
  /* Unpin whatever is still dirty (only after a failed flush). */
  for (size_t i = 0; q->l2c && i < q->dl2.n; i++)
    lru_put (q->l2c, q->dl2.v[i]);
  for (size_t i = 0; q->rbc && i < q->drb.n; i++)
    lru_put (q->rbc, q->drb.v[i]);
  free (q->dl2.v);
  free (q->drb.v);
  lru_free (q->l2c);
  lru_free (q->rbc);
  free (q->pending_free);
  free (q->l1);
  free (q->rt);
  free_snaps (q);
  if (q->backing)
    bdev_close (q->backing);
  if (q->data && q->data != q->file)
    bdev_close (q->data);
  if (q->file)
    bdev_close (q->file);
  pthread_rwlock_destroy (&q->lock);
  pthread_mutex_destroy (&q->detect_lock);
  free (q->path);
  bdev_free_common (bd);
}

static const char *
get_opt (const struct bdev_open_opts *opts, const char *key)
{
  size_t kl = strlen (key);
  if (!opts->format_opts)
    return NULL;
  for (const char *const *p = opts->format_opts; *p; p++)
    if (strncmp (*p, key, kl) == 0 && (*p)[kl] == '=')
      return *p + kl + 1;
  return NULL;
}

/* Read a big-endian u64 table of N entries at OFF. */
static uint64_t *
load_table (struct qcow2 *q, uint64_t off, uint64_t n, const char *what)
{
  uint64_t bytes, limit;
  /* QEMU does not always pad the file to a whole last cluster. */
  if (!ck_round_up64 (q->file->size, q->cluster_size, &limit))
    limit = q->file->size;
  if (!ck_mul64 (n, 8, &bytes) || !ck_range_within (off, bytes, limit)) {
    ERR (q, EINVAL, "%s: %s (offset %#" PRIx64 ", %" PRIu64 " entries) "
         "extends beyond the end of the file", q->path, what, off, n);
    return NULL;
  }
  uint64_t *t = malloc (bytes ? bytes : 8);
  if (!t) {
    ERR (q, ENOMEM, "%s: out of memory for %s", q->path, what);
    return NULL;
  }
  if (bytes && bdev_pread_padded (q->file, t, bytes, off) == -1) {
    free (t);
    return NULL;
  }
  for (uint64_t i = 0; i < n; i++)
    t[i] = be64toh (t[i]);
  return t;
}

static int
parse_snapshots (struct qcow2 *q, uint32_t nb, uint64_t off)
{
  if (nb == 0)
    return 0;
  if (nb > MAX_SNAPSHOTS) {
    ERR (q, EINVAL, "%s: too many snapshots (%" PRIu32 ")", q->path, nb);
    return -1;
  }
  if (off & (q->cluster_size - 1)) {
    ERR (q, EINVAL, "%s: snapshot table offset is not cluster aligned",
         q->path);
    return -1;
  }
  q->snaps = calloc (nb, sizeof *q->snaps);
  q->snapinfo = calloc (nb, sizeof *q->snapinfo);
  if (!q->snaps || !q->snapinfo) {
    ERR (q, ENOMEM, "%s: out of memory", q->path);
    return -1;
  }
  uint64_t pos = off;
  for (uint32_t i = 0; i < nb; i++) {
    uint8_t h[40];
    if (pos - off > MAX_SNAPSHOT_TABLE ||
        !ck_range_within (pos, sizeof h, q->file->size)) {
      ERR (q, EINVAL, "%s: snapshot table extends beyond the end of the file",
           q->path);
      return -1;
    }
    if (bdev_pread (q->file, h, sizeof h, pos) == -1)
      return -1;
    struct snap *s = &q->snaps[i];
    q->nsnaps = i + 1;
    s->l1_offset = load_be64 (h);
    s->l1_size = load_be32 (h + 8);
    uint16_t idlen = load_be16 (h + 12), namelen = load_be16 (h + 14);
    s->date_sec = load_be32 (h + 16);
    s->date_nsec = load_be32 (h + 20);
    s->vm_clock = load_be64 (h + 24);
    uint32_t extra = load_be32 (h + 36);
    s->disk_size = q->bd.size;
    if (extra > 1024) {
      ERR (q, EINVAL, "%s: snapshot extra data too large", q->path);
      return -1;
    }
    uint64_t var = (uint64_t) extra + idlen + namelen;
    uint8_t *v = malloc (var + 1);
    if (!v) {
      ERR (q, ENOMEM, "%s: out of memory", q->path);
      return -1;
    }
    if (!ck_range_within (pos + 40, var, q->file->size) ||
        bdev_pread (q->file, v, var, pos + 40) == -1) {
      free (v);
      ERR (q, EINVAL, "%s: snapshot table extends beyond the end of the file",
           q->path);
      return -1;
    }
    if (extra >= 16)
      s->disk_size = load_be64 (v + 8);
    s->id = strndup ((char *) v + extra, idlen);
    s->name = strndup ((char *) v + extra + idlen, namelen);
    free (v);
    if (!s->id || !s->name) {
      ERR (q, ENOMEM, "%s: out of memory", q->path);
      return -1;
    }
    pos += 40 + var;
    pos = (pos + 7) & ~7ull;
    q->snapinfo[i] = (struct qcow2_snapshot_info) {
      .id = s->id, .name = s->name, .size = s->disk_size,
      .date_sec = s->date_sec, .vm_clock_nsec = s->vm_clock,
    };
  }
  return 0;
}

size_t
qcow2_snapshots (struct bdev *bd, const struct qcow2_snapshot_info **out)
{
  struct qcow2 *q = (struct qcow2 *) bd;
  if (!qcow2_is (bd)) {
    *out = NULL;
    return 0;
  }
  *out = q->snapinfo;
  return q->nsnaps;
}

static void
dump_info (struct qcow2 *q)
{
  kvm_debug ("%s: qcow2 v%" PRIu32 ", virtual size %" PRIu64
             ", cluster size %" PRIu64 ", refcount bits %u, L1 %" PRIu64
             " entries at %#" PRIx64 ", refcount table %" PRIu64
             " clusters at %#" PRIx64 ", extended L2 %s, compression %s, "
             "incompatible %#" PRIx64 ", compatible %#" PRIx64
             ", autoclear %#" PRIx64 ", L2 cache %zu tables",
             q->path, q->version, q->bd.size, q->cluster_size,
             1u << q->refcount_order, q->l1_size, q->l1_offset,
             q->rt_clusters, q->rt_offset, q->ext_l2 ? "yes" : "no",
             q->compression_type ? "zstd" : "zlib", q->incompat, q->compat,
             q->autoclear, q->l2c_capacity);
  for (size_t i = 0; i < q->nsnaps; i++)
    kvm_debug ("%s: snapshot id=%s name=%s size=%" PRIu64 " date=%" PRIu32,
               q->path, q->snaps[i].id, q->snaps[i].name,
               q->snaps[i].disk_size, q->snaps[i].date_sec);
}

/* Look a feature name up in the image's feature name table extension. */
static void
feature_name (const uint8_t *ext, uint32_t len, unsigned bit, char *out,
              size_t outlen)
{
  out[0] = 0;
  for (uint32_t i = 0; ext && i + 48 <= len; i += 48)
    if (ext[i] == 0 && ext[i + 1] == bit) {
      snprintf (out, outlen, " (%.46s)", (const char *) ext + i + 2);
      return;
    }
}

static struct bdev *
open_fail (struct qcow2 *q)
{
  int e = errno;
  qcow2_close (&q->bd);
  errno = e ? e : EINVAL;
  return NULL;
}

struct bdev *
qcow2_open (const char *path, const struct bdev_open_opts *opts,
            unsigned depth)
{
  struct qcow2 *q = bdev_alloc (sizeof *q, &qcow2_ops, path);
  uint8_t *hc = NULL;
  char *backing_name = NULL, *backing_fmt = NULL, *data_name = NULL;
  uint8_t *feat = NULL;
  uint32_t featlen = 0;
  const char *snapname = get_opt (opts, "qcow2.snapshot");
  const char *backing_opt = get_opt (opts, "qcow2.backing");
  const char *cache_opt = get_opt (opts, "qcow2.cache");
  const char *verbose_opt = get_opt (opts, "qcow2.verbose");

  if (!q)
    return NULL;
  pthread_rwlockattr_t ra;
  pthread_rwlockattr_init (&ra);
  pthread_rwlockattr_setkind_np (&ra,
                                 PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
  pthread_rwlock_init (&q->lock, &ra);
  pthread_mutex_init (&q->detect_lock, NULL);
  q->meta_prealloc = -1;
  pthread_rwlockattr_destroy (&ra);
  q->fd = -1;
  q->verbose = verbose_opt && strcmp (verbose_opt, "0") != 0;
  q->path = strdup (path);
  if (!q->path) {
    ERR (q, ENOMEM, "%s: out of memory", path);
    return open_fail (q);
  }

  bool readonly = opts->readonly || snapname;
  struct bdev_open_opts fo = *opts;
  fo.readonly = readonly;
  fo.growable = !readonly;
  fo.format_opts = NULL;
  q->file = bdev_file_open (path, &fo);
  if (!q->file)
    return open_fail (q);
  q->fd = bdev_file_fd (q->file);

  /* Header. */
  uint8_t h[H_V3_LENGTH_CT];
  memset (h, 0, sizeof h);
  if (q->file->size < H_V2_LENGTH) {
    ERR (q, EINVAL, "%s: file too short for a qcow2 header", path);
    return open_fail (q);
  }
  if (bdev_pread (q->file, h, q->file->size < sizeof h ? q->file->size
                  : sizeof h, 0) == -1)
    return open_fail (q);
  if (load_be32 (h + H_MAGIC) != QCOW2_MAGIC) {
    ERR (q, EINVAL, "%s: not a qcow2 image (bad magic)", path);
    return open_fail (q);
  }
  q->version = load_be32 (h + H_VERSION);
  if (q->version != 2 && q->version != 3) {
    ERR (q, ENOTSUP, "%s: unsupported qcow2 version %" PRIu32, path,
         q->version);
    return open_fail (q);
  }
  q->cluster_bits = load_be32 (h + H_CLUSTER_BITS);
  if (q->cluster_bits < 9 || q->cluster_bits > 21) {
    ERR (q, EINVAL, "%s: unsupported cluster size 2^%u (must be 512 B to "
         "2 MiB)", path, q->cluster_bits);
    return open_fail (q);
  }
  q->cluster_size = 1ull << q->cluster_bits;
  uint64_t size = load_be64 (h + H_SIZE);
  uint32_t crypt = load_be32 (h + H_CRYPT);
  uint32_t header_length = H_V2_LENGTH;
  q->refcount_order = 4;
  if (q->version >= 3) {
    q->incompat = load_be64 (h + H_INCOMPAT);
    q->compat = load_be64 (h + H_COMPAT);
    q->autoclear = load_be64 (h + H_AUTOCLEAR);
    q->refcount_order = load_be32 (h + H_REFCOUNT_ORDER);
    header_length = load_be32 (h + H_HEADER_LENGTH);
    if (header_length < H_V3_LENGTH || header_length > q->cluster_size ||
        header_length % 8) {
      ERR (q, EINVAL, "%s: invalid header length %" PRIu32, path,
           header_length);
      return open_fail (q);
    }
    if (header_length > H_COMPRESSION)
      q->compression_type = h[H_COMPRESSION];
  }
  memcpy (q->hdr, h, sizeof h);
  q->header_write_len = header_length < sizeof h ? header_length : sizeof h;
  if (q->refcount_order > 6) {
    ERR (q, EINVAL, "%s: invalid refcount order %u", path, q->refcount_order);
    return open_fail (q);
  }
  if (crypt != 0) {
    ERR (q, ENOTSUP, "%s: image is encrypted (%s); encrypted qcow2 is not "
         "supported", path, crypt == 1 ? "AES" : crypt == 2 ? "LUKS"
         : "unknown method");
    return open_fail (q);
  }

  /* Header extensions. */
  uint64_t backing_off = load_be64 (h + H_BACKING_OFFSET);
  uint32_t backing_len = load_be32 (h + H_BACKING_SIZE);
  uint64_t ext_end = q->cluster_size;
  if (backing_off && backing_off < ext_end)
    ext_end = backing_off;
  if (ext_end > q->file->size)
    ext_end = q->file->size;
  hc = malloc (q->cluster_size);
  if (!hc) {
    ERR (q, ENOMEM, "%s: out of memory", path);
    return open_fail (q);
  }
  memset (hc, 0, q->cluster_size);
  if (bdev_pread (q->file, hc, q->file->size < q->cluster_size
                  ? q->file->size : q->cluster_size, 0) == -1)
    goto fail;
  q->ext_area_end = ext_end;
  for (uint64_t p = header_length; p + 8 <= ext_end;) {
    uint32_t type = load_be32 (hc + p), len = load_be32 (hc + p + 4);
    if (type == EXT_END)
      break;
    if (len > ext_end - p - 8) {
      ERR (q, EINVAL, "%s: header extension %#" PRIx32 " is too long", path,
           type);
      goto fail;
    }
    const uint8_t *d = hc + p + 8;
    switch (type) {
    case EXT_BACKING_FMT:
      free (backing_fmt);
      backing_fmt = strndup ((const char *) d, len);
      break;
    case EXT_DATA_FILE:
      free (data_name);
      data_name = strndup ((const char *) d, len);
      break;
    case EXT_BITMAPS:
      if (len >= 24)
        q->bm_ext_pos = p;
      break;
    case EXT_FEATURES:
      feat = (uint8_t *) d;
      featlen = len;
      break;
    case EXT_CRYPTO:
      ERR (q, ENOTSUP, "%s: image is encrypted (LUKS); encrypted qcow2 is "
           "not supported", path);
      goto fail;
    }
    p += 8 + (((uint64_t) len + 7) & ~7ull);
  }
  uint64_t unknown = q->incompat & ~INCOMPAT_KNOWN;
  if (unknown) {
    unsigned bit = __builtin_ctzll (unknown);
    char fname[64];
    feature_name (feat, featlen, bit, fname, sizeof fname);
    ERR (q, ENOTSUP, "%s: unsupported incompatible feature bit %u%s", path,
         bit, fname);
    goto fail;
  }
  if (q->incompat & INCOMPAT_CORRUPT) {
    if (!readonly)
      kvm_debug ("%s: image is marked corrupt; opening read-only", path);
    readonly = true;
  }
  if ((q->incompat & INCOMPAT_DIRTY) && !readonly) {
    ERR (q, EINVAL, "%s: image has the dirty bit set (lazy refcounts were "
         "not written back); run 'qemu-img check -r all' first or open it "
         "read-only", path);
    goto fail;
  }
  if (!(q->incompat & INCOMPAT_COMPRESSION) && q->compression_type != 0) {
    ERR (q, EINVAL, "%s: compression type set without its feature bit", path);
    goto fail;
  }
  if (q->compression_type > 1) {
    ERR (q, ENOTSUP, "%s: unsupported compression type %d", path,
         q->compression_type);
    goto fail;
  }
  q->ext_l2 = q->incompat & INCOMPAT_EXTL2;
  if (q->ext_l2 && q->cluster_bits < 14) {
    ERR (q, EINVAL, "%s: extended L2 entries need clusters of at least "
         "16 KiB", path);
    goto fail;
  }
  q->l2_entry_shift = q->ext_l2 ? 4 : 3;
  q->l2_bits = q->cluster_bits - q->l2_entry_shift;
  q->sc_bits = q->ext_l2 ? q->cluster_bits - 5 : q->cluster_bits;
  q->rb_bits = q->cluster_bits + 3 - q->refcount_order;
  q->refcount_max = q->refcount_order == 6 ? UINT64_MAX
    : (1ull << (1u << q->refcount_order)) - 1;
  q->csize_shift = 62 - (q->cluster_bits - 8);
  q->csize_mask = (1ull << (q->cluster_bits - 8)) - 1;

  /* Size and L1. */
  if (size > (1ull << 62) / 2) {
    ERR (q, EINVAL, "%s: virtual size %" PRIu64 " is too large", path, size);
    goto fail;
  }
  q->bd.size = size;
  q->l1_size = load_be32 (h + H_L1_SIZE);
  q->l1_offset = load_be64 (h + H_L1_OFFSET);
  uint64_t l2_span_bits = q->l2_bits + q->cluster_bits;
  uint64_t l1_needed = div_round_up64 (size, 1ull << l2_span_bits);
  if (q->l1_size * 8 > MAX_L1_BYTES) {
    ERR (q, EINVAL, "%s: L1 table is too large (%" PRIu64 " entries)", path,
         q->l1_size);
    goto fail;
  }
  if (q->l1_size < l1_needed) {
    ERR (q, EINVAL, "%s: L1 table is too small for the virtual size", path);
    goto fail;
  }
  if (q->l1_size && (q->l1_offset & (q->cluster_size - 1))) {
    ERR (q, EINVAL, "%s: L1 table offset is not cluster aligned", path);
    goto fail;
  }
  q->rt_offset = load_be64 (h + H_RT_OFFSET);
  q->rt_clusters = load_be32 (h + H_RT_CLUSTERS);
  if (q->rt_clusters * q->cluster_size > MAX_RT_BYTES ||
      (q->rt_offset & (q->cluster_size - 1)) || q->rt_clusters == 0) {
    ERR (q, EINVAL, "%s: invalid refcount table (offset %#" PRIx64
         ", %" PRIu64 " clusters)", path, q->rt_offset, q->rt_clusters);
    goto fail;
  }
  q->rt_entries = q->rt_clusters * q->cluster_size / 8;
  q->rt = load_table (q, q->rt_offset, q->rt_entries, "refcount table");
  if (!q->rt)
    goto fail;
  if (parse_snapshots (q, load_be32 (h + H_NB_SNAPSHOTS),
                       load_be64 (h + H_SNAPSHOTS_OFFSET)) == -1)
    goto fail;

  if (snapname) {
    struct snap *s = NULL;
    for (size_t i = 0; !s && i < q->nsnaps; i++)
      if (strcmp (q->snaps[i].name, snapname) == 0)
        s = &q->snaps[i];
    for (size_t i = 0; !s && i < q->nsnaps; i++)
      if (strcmp (q->snaps[i].id, snapname) == 0)
        s = &q->snaps[i];
    if (!s) {
      ERR (q, ENOENT, "%s: no internal snapshot named '%s'", path, snapname);
      goto fail;
    }
    if (s->l1_size * 8ull > MAX_L1_BYTES ||
        (s->l1_offset & (q->cluster_size - 1)) ||
        s->disk_size > (1ull << 62) / 2) {
      ERR (q, EINVAL, "%s: snapshot '%s' has an invalid L1 table", path,
           snapname);
      goto fail;
    }
    q->l1_offset = s->l1_offset;
    q->l1_size = s->l1_size;
    q->bd.size = s->disk_size;
  }
  q->l1 = load_table (q, q->l1_offset, q->l1_size, "L1 table");
  if (!q->l1)
    goto fail;

  /* Cache: by default enough L2 tables to map the whole image, at most
   * 32 MiB (which maps 256 GiB with 64 KiB clusters).
   */
  uint64_t cache_bytes;
  if (cache_opt) {
    char *endp;
    errno = 0;
    cache_bytes = strtoull (cache_opt, &endp, 10);
    if (errno || *endp) {
      ERR (q, EINVAL, "%s: invalid cache size '%s'", path, cache_opt);
      goto fail;
    }
  }
  else {
    cache_bytes = l1_needed * q->cluster_size;
    if (cache_bytes > DEFAULT_CACHE_MAX)
      cache_bytes = DEFAULT_CACHE_MAX;
    if (cache_bytes < MIN_CACHE)
      cache_bytes = MIN_CACHE;
  }
  /* More tables than L1 entries are never needed (bounds user input). */
  uint64_t cap = cache_bytes / q->cluster_size;
  if (cap > q->l1_size + 64)
    cap = q->l1_size + 64;
  if (cap < 4)
    cap = 4;
  q->l2c_capacity = cap;
  q->rbc_capacity = 1024 * 1024 / q->cluster_size;
  if (q->rbc_capacity < 16)
    q->rbc_capacity = 16;
  size_t esz = q->cluster_size + sizeof (struct tmeta);
  q->l2c = lru_new (esz, q->l2c_capacity);
  q->l2ptr = calloc (q->l1_size ? q->l1_size : 1, sizeof *q->l2ptr);
  q->l2ptr_max = q->l2c_capacity - q->l2c_capacity / 4;
  q->rbc = lru_new (esz, q->rbc_capacity);
  if (!q->l2c || !q->rbc || !q->l2ptr) {
    ERR (q, ENOMEM, "%s: out of memory", path);
    goto fail;
  }
  q->cursor = (q->file->size + q->cluster_size - 1) & ~(q->cluster_size - 1);
  q->zero_from = q->cursor;

  /* Backing file. */
  if (backing_off && !(backing_opt && strcmp (backing_opt, "none") == 0)) {
    if (backing_len == 0 || backing_len > 1023 ||
        !ck_range_within (backing_off, backing_len, q->cluster_size) ||
        !ck_range_within (backing_off, backing_len, q->file->size)) {
      ERR (q, EINVAL, "%s: invalid backing file name offset/size", path);
      goto fail;
    }
    backing_name = strndup ((const char *) hc + backing_off, backing_len);
    if (!backing_name) {
      ERR (q, ENOMEM, "%s: out of memory", path);
      goto fail;
    }
    char *resolved = confine_resolve (path, backing_name, opts->allowed_dirs,
                                      opts->allow_any_path);
    if (!resolved)
      goto fail;
    struct bdev_open_opts bo = *opts;
    bo.readonly = true;
    bo.growable = false;
    bo.format_opts = NULL;
    if (q->verbose) {
      static const char *const vopts[] = { "qcow2.verbose=1", NULL };
      bo.format_opts = vopts;
    }
    q->backing = bdev_open (resolved, backing_fmt && *backing_fmt
                            ? backing_fmt : NULL, &bo, depth + 1);
    free (resolved);
    if (!q->backing) {
      kvm_error ("%s: cannot open backing file '%s'", path, backing_name);
      goto fail;
    }
  }

  /* External data file. */
  if (q->incompat & INCOMPAT_DATA_FILE) {
    if (!data_name || !*data_name) {
      ERR (q, EINVAL, "%s: image needs an external data file but names none",
           path);
      goto fail;
    }
    char *resolved = confine_resolve (path, data_name, opts->allowed_dirs,
                                      opts->allow_any_path);
    if (!resolved)
      goto fail;
    struct bdev_open_opts d = fo;
    d.readonly = readonly;
    q->data = bdev_file_open (resolved, &d);
    free (resolved);
    if (!q->data)
      goto fail;
    q->external_data = true;
  }
  else
    q->data = q->file;

  q->bd.readonly = readonly;
  q->bd.block_size = 1;
  q->bd.caps = BDEV_CAN_EXTENTS | BDEV_CAN_MULTI_CONN;
  if (!readonly)
    q->bd.caps |= BDEV_CAN_TRIM | BDEV_CAN_ZERO |
      ((q->version >= 3 || !q->backing) ? BDEV_CAN_FAST_ZERO : 0);
  if (q->verbose)
    dump_info (q);
  free (hc);
  free (backing_name);
  free (backing_fmt);
  free (data_name);
  return &q->bd;

 fail:
  free (hc);
  free (backing_name);
  free (backing_fmt);
  free (data_name);
  return open_fail (q);
}

static const struct bdev_ops qcow2_ops = {
  .format = "qcow2",
  .close = qcow2_close,
  .pread = qcow2_pread,
  .pwrite = qcow2_pwrite,
  .flush = qcow2_flush,
  .trim = qcow2_trim,
  .zero = qcow2_zero,
  .extents = qcow2_extents,
};
