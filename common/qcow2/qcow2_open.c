/* SPDX-License-Identifier: BSD-3-Clause */
/* qcow2 engine. Open and close: header and extension parsing, table loading
 * with bounds checks, internal snapshots, backing and data files.
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
#include "util/confine.h"
#include "util/endian.h"
#include "util/log.h"
#include "util/lru.h"

static const struct bdev_ops qcow2_ops;

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
    int r = q2_flush_locked (q);
    /* Clusters freed by that flush changed refcount blocks once the
     * tables no longer named them: write those too, or they would be
     * leaked on disk.
     */
    if (r == 0 && q->drb.n)
      r = q2_flush_locked (q);
    if (r == -1)
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
    q2_l2ptr_drop (q, i);
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
  q2_bitmap_close (q);
  free (q->l1);
  free (q->rt);
  q2_meta_free (q);
  free_snaps (q);
  if (q->backing)
    bdev_close (q->backing);
  if (q->data && q->data != q->file)
    bdev_close (q->data);
  if (q->file)
    bdev_close (q->file);
  pthread_rwlock_destroy (&q->lock);
  pthread_mutex_destroy (&q->detect_lock);
  pthread_mutex_destroy (&q->deferred_lock);
  pthread_cond_destroy (&q->deferred_done);
  free (q->path);
  bdev_free_common (bd);
}

/* Read a big-endian u64 table of N entries at OFF. */
static uint64_t *
load_table (struct qcow2 *q, uint64_t off, uint64_t n, const char *what)
{
  uint64_t bytes, limit;
  /* QEMU does not always pad the file to a whole last cluster. */
  if (!ck_round_up64 (bdev_size (q->file), q->cluster_size, &limit))
    limit = bdev_size (q->file);
  if (!ck_mul64 (n, 8, &bytes) || !ck_range_within (off, bytes, limit)) {
    kvm_fail (EINVAL, "%s: %s (offset %#" PRIx64 ", %" PRIu64 " entries) "
              "extends beyond the end of the file", q->path, what, off, n);
    return NULL;
  }
  return q2_read_u64_table (q, off, n, what);
}

/* N big-endian u64 entries at OFF (checked by the caller) in host order;
 * the caller frees.
 */
uint64_t *
q2_read_u64_table (struct qcow2 *q, uint64_t off, uint64_t n,
                   const char *what)
{
  uint64_t bytes = n * 8;
  uint64_t *t = malloc (bytes ? bytes : 8);
  if (!t) {
    kvm_fail (ENOMEM, "%s: out of memory for %s", q->path, what);
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
    kvm_fail (EINVAL, "%s: too many snapshots (%" PRIu32 "; the limit is %d, "
              "as in QEMU)", q->path, nb, MAX_SNAPSHOTS);
    return -1;
  }
  if (off & (q->cluster_size - 1)) {
    kvm_fail (EINVAL, "%s: snapshot table offset is not cluster aligned",
              q->path);
    return -1;
  }
  q->snaps = calloc (nb, sizeof *q->snaps);
  q->snapinfo = calloc (nb, sizeof *q->snapinfo);
  if (!q->snaps || !q->snapinfo) {
    kvm_fail (ENOMEM, "%s: out of memory", q->path);
    return -1;
  }
  uint64_t pos = off;
  for (uint32_t i = 0; i < nb; i++) {
    uint8_t h[40];
    if (pos - off > MAX_SNAPSHOT_TABLE) {
      kvm_fail (EINVAL, "%s: the snapshot table is larger than the limit of "
                "%u MiB", q->path, MAX_SNAPSHOT_TABLE >> 20);
      return -1;
    }
    if (!ck_range_within (pos, sizeof h, bdev_size (q->file))) {
      kvm_fail (EINVAL, "%s: snapshot table extends beyond the end of the "
                "file", q->path);
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
      kvm_fail (EINVAL, "%s: snapshot extra data too large", q->path);
      return -1;
    }
    uint64_t var = (uint64_t) extra + idlen + namelen;
    uint8_t *v = malloc (var + 1);
    if (!v) {
      kvm_fail (ENOMEM, "%s: out of memory", q->path);
      return -1;
    }
    if (!ck_range_within (pos + 40, var, bdev_size (q->file)) ||
        bdev_pread (q->file, v, var, pos + 40) == -1) {
      free (v);
      kvm_fail (EINVAL, "%s: snapshot table extends beyond the end of the "
                "file", q->path);
      return -1;
    }
    if (extra >= 16)
      s->disk_size = load_be64 (v + 8);
    s->id = strndup ((char *) v + extra, idlen);
    s->name = strndup ((char *) v + extra + idlen, namelen);
    free (v);
    if (!s->id || !s->name) {
      kvm_fail (ENOMEM, "%s: out of memory", q->path);
      return -1;
    }
    pos += 40 + var;
    pos = (pos + 7) & ~7ull;
    q->snapinfo[i] = (struct qcow2_snapshot_info) {
      .id = s->id, .name = s->name, .size = s->disk_size,
      .date_sec = s->date_sec, .vm_clock_nsec = s->vm_clock,
    };
  }
  /* A table inside the header, the L1 table or the refcount table would
   * change under the engine's own writes (seen: one at offset 0, which
   * after a write no longer parsed); from now on nothing writes into it.
   */
  if (q2_check_no_overlap (q, off, pos - off, "snapshot table") == -1)
    return -1;
  q->snap_offset = off;
  q->snap_bytes = pos - off;
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

/* What the steps of qcow2_open_container hand to each other. */
struct open_ctx {
  const struct bdev_open_opts *opts;
  unsigned depth;
  const char *snapname, *backing_opt, *cache_opt;
  bool writable;                /* as asked for (and the container allows) */
  bool readonly;                /* in the end (also: marked corrupt) */
  uint8_t h[H_V3_LENGTH_CT];    /* first bytes of the header */
  uint32_t header_length;
  uint64_t size;                /* virtual size in the header */
  uint8_t *hc;                  /* cluster 0: header and extensions */
  uint64_t backing_off;
  uint32_t backing_len;
  char *backing_fmt, *data_name;
  const uint8_t *feat;          /* feature name table (points into hc) */
  uint32_t featlen;
  uint64_t l1_needed;           /* L1 entries the virtual size needs */
  bool repair;                  /* dirty and opened read-write */
};

static void
open_ctx_free (struct open_ctx *c)
{
  free (c->hc);
  free (c->backing_fmt);
  free (c->data_name);
}

/* Allocate the engine over CONTAINER (closed here on failure). */
static struct qcow2 *
engine_new (struct bdev *container, const char *name,
            const struct bdev_open_opts *opts)
{
  const char *verbose_opt = bdev_open_opt (opts, "qcow2.verbose");
  struct qcow2 *q = bdev_alloc (sizeof *q, &qcow2_ops, name);
  if (!q) {
    int e = errno;
    bdev_close (container);
    errno = e;
    return NULL;
  }
  pthread_rwlockattr_t ra;
  pthread_rwlockattr_init (&ra);
  pthread_rwlockattr_setkind_np (&ra,
                                 PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
  pthread_rwlock_init (&q->lock, &ra);
  pthread_mutex_init (&q->detect_lock, NULL);
  pthread_mutex_init (&q->deferred_lock, NULL);
  pthread_cond_init (&q->deferred_done, NULL);
  q->meta_prealloc = -1;
  pthread_rwlockattr_destroy (&ra);
  /* Read-only until the open succeeds: a failed open flushes nothing. */
  q->bd.readonly = true;
  q->verbose = verbose_opt && strcmp (verbose_opt, "0") != 0;
  q->file = container;
  q->fd = bdev_file_fd (container);
  q->path = strdup (name);
  if (!q->path) {
    kvm_fail (ENOMEM, "%s: out of memory", name);
    open_fail (q);
    return NULL;
  }
  return q;
}

/* Read and check the fixed header: version, cluster size, lengths. */
static int
read_header (struct qcow2 *q, struct open_ctx *c)
{
  const char *path = q->path;
  uint8_t *h = c->h;

  if (bdev_size (q->file) < H_V2_LENGTH) {
    kvm_fail (EINVAL, "%s: file too short for a qcow2 header", path);
    return -1;
  }
  if (bdev_pread (q->file, h, bdev_size (q->file) < sizeof c->h ? bdev_size (q->file)
                  : sizeof c->h, 0) == -1)
    return -1;
  if (load_be32 (h + H_MAGIC) != QCOW2_MAGIC) {
    kvm_fail (EINVAL, "%s: not a qcow2 image (bad magic)", path);
    return -1;
  }
  q->version = load_be32 (h + H_VERSION);
  if (q->version != 2 && q->version != 3) {
    kvm_fail (ENOTSUP, "%s: unsupported qcow2 version %" PRIu32, path,
              q->version);
    return -1;
  }
  q->cluster_bits = load_be32 (h + H_CLUSTER_BITS);
  if (q->cluster_bits < 9 || q->cluster_bits > 21) {
    kvm_fail (EINVAL, "%s: unsupported cluster size 2^%u (must be 512 B to "
              "2 MiB)", path, q->cluster_bits);
    return -1;
  }
  q->cluster_size = 1ull << q->cluster_bits;
  c->size = load_be64 (h + H_SIZE);
  uint32_t crypt = load_be32 (h + H_CRYPT);
  c->header_length = H_V2_LENGTH;
  q->refcount_order = 4;
  if (q->version >= 3) {
    q->incompat = load_be64 (h + H_INCOMPAT);
    q->compat = load_be64 (h + H_COMPAT);
    q->autoclear = load_be64 (h + H_AUTOCLEAR);
    q->refcount_order = load_be32 (h + H_REFCOUNT_ORDER);
    c->header_length = load_be32 (h + H_HEADER_LENGTH);
    if (c->header_length < H_V3_LENGTH ||
        c->header_length > q->cluster_size || c->header_length % 8) {
      kvm_fail (EINVAL, "%s: invalid header length %" PRIu32, path,
                c->header_length);
      return -1;
    }
    if (c->header_length > H_COMPRESSION)
      q->compression_type = h[H_COMPRESSION];
  }
  memcpy (q->hdr, h, sizeof c->h);
  q->header_write_len = c->header_length < sizeof c->h ? c->header_length
    : sizeof c->h;
  if (q->refcount_order > 6) {
    kvm_fail (EINVAL, "%s: invalid refcount order %u", path,
              q->refcount_order);
    return -1;
  }
  if (crypt != 0) {
    kvm_fail (ENOTSUP, "%s: image is encrypted (%s); encrypted qcow2 is not "
              "supported", path, crypt == 1 ? "AES" : crypt == 2 ? "LUKS"
              : "unknown method");
    return -1;
  }
  return 0;
}

/* Read cluster 0 and walk the header extensions after the header. */
static int
parse_extensions (struct qcow2 *q, struct open_ctx *c)
{
  const char *path = q->path;
  c->backing_off = load_be64 (c->h + H_BACKING_OFFSET);
  c->backing_len = load_be32 (c->h + H_BACKING_SIZE);
  uint64_t ext_end = q->cluster_size;
  if (c->backing_off && c->backing_off < ext_end)
    ext_end = c->backing_off;
  if (ext_end > bdev_size (q->file))
    ext_end = bdev_size (q->file);
  c->hc = malloc (q->cluster_size);
  if (!c->hc) {
    kvm_fail (ENOMEM, "%s: out of memory", path);
    return -1;
  }
  uint8_t *hc = c->hc;
  memset (hc, 0, q->cluster_size);
  if (bdev_pread (q->file, hc, bdev_size (q->file) < q->cluster_size
                  ? bdev_size (q->file) : q->cluster_size, 0) == -1)
    return -1;
  q->ext_area_end = ext_end;
  for (uint64_t p = c->header_length; p + 8 <= ext_end;) {
    uint32_t type = load_be32 (hc + p), len = load_be32 (hc + p + 4);
    if (type == EXT_END)
      break;
    if (len > ext_end - p - 8) {
      kvm_fail (EINVAL, "%s: header extension %#" PRIx32 " is too long", path,
                type);
      return -1;
    }
    const uint8_t *d = hc + p + 8;
    switch (type) {
    case EXT_BACKING_FMT:
      free (c->backing_fmt);
      c->backing_fmt = strndup ((const char *) d, len);
      break;
    case EXT_DATA_FILE:
      free (c->data_name);
      c->data_name = strndup ((const char *) d, len);
      break;
    case EXT_BITMAPS:
      if (len >= 24)
        q->bm_ext_pos = p;
      break;
    case EXT_FEATURES:
      c->feat = d;
      c->featlen = len;
      break;
    case EXT_CRYPTO:
      kvm_fail (ENOTSUP, "%s: image is encrypted (LUKS); encrypted qcow2 is "
                "not supported", path);
      return -1;
    }
    p += 8 + (((uint64_t) len + 7) & ~7ull);
  }
  return 0;
}

/* Refuse unknown or inconsistent feature bits; corrupt means read-only. */
static int
check_features (struct qcow2 *q, struct open_ctx *c)
{
  const char *path = q->path;
  uint64_t unknown = q->incompat & ~INCOMPAT_KNOWN;
  if (unknown) {
    unsigned bit = __builtin_ctzll (unknown);
    char fname[64];
    feature_name (c->feat, c->featlen, bit, fname, sizeof fname);
    kvm_fail (ENOTSUP, "%s: unsupported incompatible feature bit %u%s", path,
              bit, fname);
    return -1;
  }
  if (q->incompat & INCOMPAT_CORRUPT) {
    if (!c->readonly)
      kvm_debug ("%s: image is marked corrupt; opening read-only", path);
    c->readonly = true;
  }
  /* Without the backing file it names, a write would fill the rest of a
   * new cluster with zeroes instead of the backing file's data, for good.
   */
  if (c->backing_off && !q->backing && c->backing_opt &&
      strcmp (c->backing_opt, "none") == 0) {
    if (!c->readonly)
      kvm_debug ("%s: backing=none: opening read-only", path);
    c->readonly = true;
  }
  /* Dirty (lazy refcounts not written back): repaired once the rest of
   * the open has succeeded (qcow2_repair.c); read-only opens just read.
   */
  if ((q->incompat & INCOMPAT_DIRTY) && !c->readonly)
    c->repair = true;
  if (!(q->incompat & INCOMPAT_COMPRESSION) && q->compression_type != 0) {
    kvm_fail (EINVAL, "%s: compression type set without its feature bit",
              path);
    return -1;
  }
  if (q->compression_type > 1) {
    kvm_fail (ENOTSUP, "%s: unsupported compression type %d", path,
              q->compression_type);
    return -1;
  }
  q->ext_l2 = q->incompat & INCOMPAT_EXTL2;
  if (q->ext_l2 && q->cluster_bits < 14) {
    kvm_fail (EINVAL, "%s: extended L2 entries need clusters of at least "
              "16 KiB", path);
    return -1;
  }
  return 0;
}

/* Derived geometry: L2 entries, subclusters, refcounts, compressed. */
static void
set_geometry (struct qcow2 *q)
{
  q->l2_entry_shift = q->ext_l2 ? 4 : 3;
  q->l2_bits = q->cluster_bits - q->l2_entry_shift;
  q->sc_bits = q->ext_l2 ? q->cluster_bits - 5 : q->cluster_bits;
  q->rb_bits = q->cluster_bits + 3 - q->refcount_order;
  q->refcount_max = q->refcount_order == 6 ? UINT64_MAX
    : (1ull << (1u << q->refcount_order)) - 1;
  q->csize_shift = 62 - (q->cluster_bits - 8);
  q->csize_mask = (1ull << (q->cluster_bits - 8)) - 1;
}

/* Check the virtual size and where the L1 and refcount tables are. */
static int
check_tables (struct qcow2 *q, struct open_ctx *c)
{
  const char *path = q->path;
  if (c->size > (1ull << 62) / 2) {
    kvm_fail (EINVAL, "%s: virtual size %" PRIu64 " is too large (the limit "
              "is 2^61 bytes)", path, c->size);
    return -1;
  }
  q->bd.size = c->size;
  q->l1_size = load_be32 (c->h + H_L1_SIZE);
  q->l1_offset = load_be64 (c->h + H_L1_OFFSET);
  uint64_t l2_span_bits = q->l2_bits + q->cluster_bits;
  c->l1_needed = div_round_up64 (c->size, 1ull << l2_span_bits);
  if (q->l1_size * 8 > MAX_L1_BYTES) {
    kvm_fail (EINVAL, "%s: L1 table is too large (%" PRIu64 " entries; the "
              "limit is %u MiB, as in QEMU)", path, q->l1_size,
              MAX_L1_BYTES >> 20);
    return -1;
  }
  if (q->l1_size < c->l1_needed) {
    kvm_fail (EINVAL, "%s: L1 table is too small for the virtual size", path);
    return -1;
  }
  if (q->l1_size && (q->l1_offset & (q->cluster_size - 1))) {
    kvm_fail (EINVAL, "%s: L1 table offset is not cluster aligned", path);
    return -1;
  }
  q->rt_offset = load_be64 (c->h + H_RT_OFFSET);
  q->rt_clusters = load_be32 (c->h + H_RT_CLUSTERS);
  if (q->rt_clusters * q->cluster_size > MAX_RT_BYTES) {
    kvm_fail (EINVAL, "%s: refcount table of %" PRIu64 " clusters is too "
              "large (the limit is %u MiB, as in QEMU)", path, q->rt_clusters,
              MAX_RT_BYTES >> 20);
    return -1;
  }
  if ((q->rt_offset & (q->cluster_size - 1)) || q->rt_clusters == 0) {
    kvm_fail (EINVAL, "%s: invalid refcount table (offset %#" PRIx64
              ", %" PRIu64 " clusters)", path, q->rt_offset, q->rt_clusters);
    return -1;
  }
  q->rt_entries = q->rt_clusters * q->cluster_size / 8;
  /* The engine writes both tables: neither may lie in the header cluster
   * or in the other (seen: an L1 table at offset 0, whose updates wrote
   * over the header's fields).
   */
  uint64_t l1_end, rt_end;
  if (!ck_add64 (q->l1_offset, q->l1_size * 8, &l1_end))
    l1_end = UINT64_MAX;
  if (!ck_add64 (q->rt_offset, q->rt_clusters * q->cluster_size, &rt_end))
    rt_end = UINT64_MAX;
  if (q->rt_offset < q->cluster_size ||
      (q->l1_size && (q->l1_offset < q->cluster_size ||
                      (q->l1_offset < rt_end && q->rt_offset < l1_end)))) {
    kvm_fail (EINVAL, "%s: corrupt image: the L1 table (at %#" PRIx64
              ") or the refcount table (at %#" PRIx64 ") overlaps the header "
              "or the other", path, q->l1_offset, q->rt_offset);
    return -1;
  }
  return 0;
}

/* Load the refcount table. */
static int
load_refcount_table (struct qcow2 *q)
{
  q->rt = load_table (q, q->rt_offset, q->rt_entries, "refcount table");
  return q->rt ? 0 : -1;
}

/* Parse the snapshot table; with qcow2.snapshot=, switch to its L1. */
static int
load_snapshots (struct qcow2 *q, struct open_ctx *c)
{
  const char *path = q->path, *snapname = c->snapname;
  if (parse_snapshots (q, load_be32 (c->h + H_NB_SNAPSHOTS),
                       load_be64 (c->h + H_SNAPSHOTS_OFFSET)) == -1)
    return -1;
  if (!snapname)
    return 0;
  struct snap *s = NULL;
  for (size_t i = 0; !s && i < q->nsnaps; i++)
    if (strcmp (q->snaps[i].name, snapname) == 0)
      s = &q->snaps[i];
  for (size_t i = 0; !s && i < q->nsnaps; i++)
    if (strcmp (q->snaps[i].id, snapname) == 0)
      s = &q->snaps[i];
  if (!s) {
    kvm_fail (ENOENT, "%s: no internal snapshot named '%s'", path, snapname);
    return -1;
  }
  if (s->l1_size * 8ull > MAX_L1_BYTES ||
      (s->l1_offset & (q->cluster_size - 1)) ||
      s->disk_size > (1ull << 62) / 2) {
    kvm_fail (EINVAL, "%s: snapshot '%s' has an invalid L1 table", path,
              snapname);
    return -1;
  }
  q->l1_offset = s->l1_offset;
  q->l1_size = s->l1_size;
  q->bd.size = s->disk_size;
  return 0;
}

/* Load the L1 table in use (active or snapshot). */
static int
load_l1 (struct qcow2 *q)
{
  q->l1 = load_table (q, q->l1_offset, q->l1_size, "L1 table");
  return q->l1 ? 0 : -1;
}

/* Create the L2 and refcount block caches; allocate from the end. */
static int
setup_caches (struct qcow2 *q, struct open_ctx *c)
{
  const char *path = q->path, *cache_opt = c->cache_opt;
  /* By default enough L2 tables to map the whole image, at most 32 MiB
   * (which maps 256 GiB with 64 KiB clusters).
   */
  uint64_t cache_bytes;
  if (cache_opt) {
    char *endp;
    errno = 0;
    cache_bytes = strtoull (cache_opt, &endp, 10);
    if (errno || *endp) {
      kvm_fail (EINVAL, "%s: invalid cache size '%s'", path, cache_opt);
      return -1;
    }
  }
  else {
    cache_bytes = c->l1_needed * q->cluster_size;
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
    kvm_fail (ENOMEM, "%s: out of memory", path);
    return -1;
  }
  q->cursor = (bdev_size (q->file) + q->cluster_size - 1) & ~(q->cluster_size - 1);
  q->zero_from = q->alloc_end = q->cursor;
  /* A container of fixed size (an nbdkit export, not a file that grows):
   * the image ends where its refcounts say, the rest of the container is
   * free but may hold old data.  Allocate from the first free cluster, and
   * treat none as known to read as zeroes.
   */
  if (!q->file->growable)
    q->cursor = 0;
  return 0;
}

/* Open the backing file the header names (confined), unless none. */
static int
open_backing (struct qcow2 *q, struct open_ctx *c)
{
  const char *path = q->path;
  const struct bdev_open_opts *opts = c->opts;
  if (q->backing)               /* given by the caller (opts->backing) */
    return 0;
  if (!c->backing_off || (c->backing_opt &&
                          strcmp (c->backing_opt, "none") == 0))
    return 0;
  if (c->backing_len == 0 || c->backing_len > 1023 ||
      !ck_range_within (c->backing_off, c->backing_len, q->cluster_size) ||
      !ck_range_within (c->backing_off, c->backing_len, bdev_size (q->file))) {
    kvm_fail (EINVAL, "%s: invalid backing file name offset/size", path);
    return -1;
  }
  char *backing_name = strndup ((const char *) c->hc + c->backing_off,
                                c->backing_len);
  if (!backing_name) {
    kvm_fail (ENOMEM, "%s: out of memory", path);
    return -1;
  }
  if (opts->no_paths) {
    kvm_fail (EPERM, "%s: the image names the backing file '%s', which cannot "
              "be resolved from inside this container: name the backing file "
              "explicitly (or none)", path, backing_name);
    free (backing_name);
    return -1;
  }
  char *resolved = confine_resolve (path, backing_name, opts->allowed_dirs,
                                    opts->allow_any_path);
  if (!resolved) {
    free (backing_name);
    return -1;
  }
  struct bdev_open_opts bo = *opts;
  bo.resolved = true;
  bo.backing = NULL;
  bo.readonly = true;
  bo.growable = false;
  bo.format_opts = NULL;
  if (q->verbose) {
    static const char *const vopts[] = { "qcow2.verbose=1", NULL };
    bo.format_opts = vopts;
  }
  q->backing = bdev_open (resolved, c->backing_fmt && *c->backing_fmt
                          ? c->backing_fmt : NULL, &bo, c->depth + 1);
  free (resolved);
  if (!q->backing) {
    kvm_error ("%s: cannot open backing file '%s'", path, backing_name);
    free (backing_name);
    return -1;
  }
  free (backing_name);
  return 0;
}

/* Open the external data file (confined), or use the image itself. */
static int
open_data_file (struct qcow2 *q, struct open_ctx *c)
{
  const char *path = q->path;
  const struct bdev_open_opts *opts = c->opts;
  if (!(q->incompat & INCOMPAT_DATA_FILE)) {
    q->data = q->file;
    return 0;
  }
  if (!c->data_name || !*c->data_name) {
    kvm_fail (EINVAL, "%s: image needs an external data file but names none",
              path);
    return -1;
  }
  if (opts->no_paths) {
    kvm_fail (EPERM, "%s: the image needs the external data file '%s', "
              "which cannot be opened from inside this container", path,
              c->data_name);
    return -1;
  }
  char *resolved = confine_resolve (path, c->data_name, opts->allowed_dirs,
                                    opts->allow_any_path);
  if (!resolved)
    return -1;
  if (!c->readonly && !opts->allow_any_path &&
      !confine_in_image_dir (path, resolved)) {
    kvm_error ("%s: the external data file %s lies outside the image's "
               "directory, in a directory allowed for reading: serving the "
               "image read-only", path, resolved);
    c->readonly = true;
    c->repair = false;
  }
  struct bdev_open_opts d = *opts;
  d.resolved = true;
  d.backing = NULL;
  d.readonly = c->readonly;
  d.growable = !c->readonly && c->writable;
  d.format_opts = NULL;
  q->data = bdev_storage_open (resolved, &d);
  free (resolved);
  if (!q->data)
    return -1;
  q->external_data = true;
  return 0;
}

/* Publish what the bdev can do. */
static void
set_caps (struct qcow2 *q, struct open_ctx *c)
{
  q->bd.readonly = c->readonly;
  q->bd.block_size = 1;
  q->bd.caps = BDEV_CAN_EXTENTS | BDEV_CAN_MULTI_CONN;
  if (!c->readonly)
    q->bd.caps |= BDEV_CAN_TRIM | BDEV_CAN_ZERO |
      ((q->version >= 3 || !q->backing) ? BDEV_CAN_FAST_ZERO : 0);
}

struct bdev *
qcow2_open_container (struct bdev *container, const char *name,
                      const struct bdev_open_opts *opts, unsigned depth)
{
  struct open_ctx c = {
    .opts = opts,
    .depth = depth,
    .snapname = bdev_open_opt (opts, "qcow2.snapshot"),
    .backing_opt = bdev_open_opt (opts, "qcow2.backing"),
    .cache_opt = bdev_open_opt (opts, "qcow2.cache"),
  };
  c.writable = !(opts->readonly || c.snapname || container->readonly);
  c.readonly = !c.writable;

  struct qcow2 *q = engine_new (container, name, opts);
  if (!q) {
    bdev_close (opts->backing);
    return NULL;
  }
  q->backing = opts->backing;   /* ours now: closed with the engine */
  if (read_header (q, &c) == -1 ||
      parse_extensions (q, &c) == -1 ||
      check_features (q, &c) == -1)
    goto fail;
  set_geometry (q);
  if (check_tables (q, &c) == -1 ||
      load_refcount_table (q) == -1 ||
      load_snapshots (q, &c) == -1 ||
      load_l1 (q) == -1 ||
      setup_caches (q, &c) == -1 ||
      open_backing (q, &c) == -1 ||
      open_data_file (q, &c) == -1 ||
      q2_setup_compress (q, bdev_open_opt (opts, "qcow2.compress"),
                         c.readonly) == -1)
    goto fail;
  if (c.repair && q2_repair (q) == -1)
    goto fail;
  if (!c.readonly && (q2_meta_build (q) == -1 || q2_bitmap_open (q) == -1))
    goto fail;
  set_caps (q, &c);
  if (q->verbose)
    dump_info (q);
  open_ctx_free (&c);
  return &q->bd;

 fail:
  open_ctx_free (&c);
  return open_fail (q);
}

struct bdev *
qcow2_open (const char *path, const struct bdev_open_opts *opts,
            unsigned depth)
{
  /* The container file: writable (and growable) unless read-only or a
   * snapshot was asked for.
   */
  bool readonly = opts->readonly || bdev_open_opt (opts, "qcow2.snapshot");
  struct bdev_open_opts fo = *opts;
  fo.readonly = readonly;
  fo.growable = !readonly;
  fo.format_opts = NULL;
  fo.backing = NULL;
  struct bdev *file = bdev_storage_open (path, &fo);
  if (!file) {
    int e = errno ? errno : EINVAL;
    bdev_close (opts->backing);   /* ours also on failure (bdev.h) */
    errno = e;
    return NULL;
  }
  return qcow2_open_container (file, path, opts, depth);
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
