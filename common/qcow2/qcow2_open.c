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
    if (q2_flush_locked (q) == -1)
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
  q->zero_from = q->alloc_end = q->cursor;

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
