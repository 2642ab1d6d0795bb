/* SPDX-License-Identifier: BSD-3-Clause */
/* qcow2 engine. Compressed clusters: locating, inflating (zlib, zstd) and
 * freeing.
 */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#ifdef HAVE_ZLIB
#include <zlib.h>
#endif
#ifdef HAVE_ZSTD
#include <zstd.h>
#include <zstd_errors.h>
#endif

#include "qcow2.h"
#include "qcow2_int.h"
#include "util/checked.h"
#include "util/endian.h"
#include "util/log.h"

/* Decompression contexts are expensive to set up (zstd allocates and
 * initialises ~100 KiB per context), so each thread keeps one of each
 * and resets it per cluster, with a buffer for the compressed bytes.
 * Freed when the thread exits.
 */
struct dctx {
  uint8_t *in;                  /* compressed bytes of one cluster */
  size_t in_cap;
#ifdef HAVE_ZLIB
  z_stream z;
  bool z_ready;
#endif
#ifdef HAVE_ZSTD
  ZSTD_DCtx *zstd;
#endif
};

static pthread_key_t dctx_key;
static pthread_once_t dctx_once = PTHREAD_ONCE_INIT;
static int dctx_key_err;

static void
dctx_free (void *vp)
{
  struct dctx *d = vp;
#ifdef HAVE_ZLIB
  if (d->z_ready)
    inflateEnd (&d->z);
#endif
#ifdef HAVE_ZSTD
  ZSTD_freeDCtx (d->zstd);
#endif
  free (d->in);
  free (d);
}

static void
dctx_key_init (void)
{
  dctx_key_err = pthread_key_create (&dctx_key, dctx_free);
}

static struct dctx *
thread_dctx (void)
{
  struct dctx *d;

  pthread_once (&dctx_once, dctx_key_init);
  if (dctx_key_err)
    return NULL;
  d = pthread_getspecific (dctx_key);
  if (d == NULL) {
    d = calloc (1, sizeof *d);
    if (d == NULL)
      return NULL;
    if (pthread_setspecific (dctx_key, d) != 0) {
      free (d);
      return NULL;
    }
  }
  return d;
}

static int
decompress (struct qcow2 *q, struct dctx *d, const uint8_t *in, size_t inlen,
            uint8_t *out)
{
  size_t outlen = q->cluster_size;

  if (q->compression_type == 0) {
#ifdef HAVE_ZLIB
    z_stream *s = &d->z;
    if (!d->z_ready) {
      memset (s, 0, sizeof *s);
      if (inflateInit2 (s, -12) != Z_OK) {
        kvm_fail (ENOMEM, "%s: cannot set up zlib", q->path);
        return -1;
      }
      d->z_ready = true;
    }
    else if (inflateReset (s) != Z_OK)
      goto bad;
    s->next_in = (Bytef *) in;
    s->avail_in = inlen;
    s->next_out = out;
    s->avail_out = outlen;
    int r = inflate (s, Z_FINISH);
    if ((r == Z_STREAM_END || r == Z_BUF_ERROR) && s->avail_out == 0)
      return 0;
#else
    kvm_fail (ENOTSUP, "%s: zlib support not compiled in", q->path);
    return -1;
#endif
  }
  else {
#ifdef HAVE_ZSTD
    if (d->zstd == NULL) {
      d->zstd = ZSTD_createDCtx ();
      if (d->zstd == NULL) {
        kvm_fail (ENOMEM, "%s: cannot set up zstd", q->path);
        return -1;
      }
    }
    else
      ZSTD_DCtx_reset (d->zstd, ZSTD_reset_session_only);
    ZSTD_inBuffer ib = { in, inlen, 0 };
    ZSTD_outBuffer ob = { out, outlen, 0 };
    while (ob.pos < ob.size) {
      size_t r = ZSTD_decompressStream (d->zstd, &ob, &ib);
      if (ZSTD_isError (r))
        break;
      if (r == 0 || ib.pos == ib.size)
        break;
    }
    if (ob.pos == ob.size)
      return 0;
#else
    kvm_fail (ENOTSUP, "%s: zstd support not compiled in", q->path);
    return -1;
#endif
  }
#ifdef HAVE_ZLIB
 bad:
#endif
  kvm_fail (EIO, "%s: corrupt compressed cluster", q->path);
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
int
q2_read_compressed (struct qcow2 *q, uint64_t e, uint8_t *out)
{
  uint64_t off, len;
  compressed_range (q, e, &off, &len);
  if (!ck_range_within (off, 0, bdev_size (q->file)) || off == 0) {
    kvm_fail (EIO, "%s: corrupt image: compressed cluster offset %#" PRIx64
              " beyond the end of the file", q->path, off);
    return -1;
  }
  struct dctx *d = thread_dctx ();
  if (d && d->in_cap < len) {
    uint8_t *in = realloc (d->in, len);
    if (in) {
      d->in = in;
      d->in_cap = len;
    }
  }
  if (!d || d->in_cap < len) {
    kvm_fail (ENOMEM, "%s: out of memory", q->path);
    return -1;
  }
  if (bdev_pread_padded (q->file, d->in, len, off) == -1)
    return -1;
  return decompress (q, d, d->in, len, out);
}

/* The host clusters a compressed entry occupies. */
int
q2_free_compressed (struct qcow2 *q, uint64_t e)
{
  uint64_t off, len;
  compressed_range (q, e, &off, &len);
  uint64_t first = off & ~(q->cluster_size - 1);
  uint64_t last = (off + len - 1) & ~(q->cluster_size - 1);
  for (uint64_t c = first; c <= last; c += q->cluster_size)
    if (q2_defer_free (q, c) == -1)
      return -1;
  return 0;
}

/* ------------------------------------------------------------------ */
/* Compressed writes (qcow2.compress=zlib|zstd).
 *
 * A write request's whole aligned clusters are compressed before the
 * engine's exclusive lock is taken (so that requests compress in
 * parallel), each into at most cluster_size - 1 bytes; a cluster that
 * does not fit is stored uncompressed, an all-zero one not at all.  Under
 * the lock, write_cluster stores a compressed cluster only if its entry
 * maps no host cluster (unallocated or zero); everything else (partial
 * clusters, overwrites) takes the normal path.  Compressed data is packed
 * back to back into a running host cluster (q->cfree), spilling into the
 * next cluster when that one is free, as qemu-img convert -c does: each
 * compressed entry holds one reference to every host cluster it touches.
 * The data is written before the exclusive lock is released, i.e. before
 * any flush can write the L2 entry that points to it.
 */

/* Per-thread compression state, as for decompression. */
struct cctx {
#ifdef HAVE_ZLIB
  z_stream z;
  bool z_ready;
#endif
#ifdef HAVE_ZSTD
  ZSTD_CCtx *zstd;
#endif
};

static pthread_key_t cctx_key;
static pthread_once_t cctx_once = PTHREAD_ONCE_INIT;
static int cctx_key_err;

static void
cctx_free (void *vp)
{
  struct cctx *x = vp;
#ifdef HAVE_ZLIB
  if (x->z_ready)
    deflateEnd (&x->z);
#endif
#ifdef HAVE_ZSTD
  ZSTD_freeCCtx (x->zstd);
#endif
  free (x);
}

static void
cctx_key_init (void)
{
  cctx_key_err = pthread_key_create (&cctx_key, cctx_free);
}

static struct cctx *
thread_cctx (void)
{
  struct cctx *x;

  pthread_once (&cctx_once, cctx_key_init);
  if (cctx_key_err)
    return NULL;
  x = pthread_getspecific (cctx_key);
  if (x == NULL) {
    x = calloc (1, sizeof *x);
    if (x == NULL)
      return NULL;
    if (pthread_setspecific (cctx_key, x) != 0) {
      free (x);
      return NULL;
    }
  }
  return x;
}

/* Check qcow2.compress= (OPT, may be NULL) against the image. */
int
q2_setup_compress (struct qcow2 *q, const char *opt, bool readonly)
{
  int type;
  if (!opt)
    return 0;
  if (strcmp (opt, "zlib") == 0)
    type = 0;
  else if (strcmp (opt, "zstd") == 0)
    type = 1;
  else {
    kvm_fail (EINVAL, "%s: compress=%s: must be zlib or zstd", q->path, opt);
    return -1;
  }
  if (readonly)                 /* nothing will be written */
    return 0;
#ifndef HAVE_ZLIB
  if (type == 0) {
    kvm_fail (ENOTSUP, "%s: compress=zlib: zlib support not compiled in",
              q->path);
    return -1;
  }
#endif
#ifndef HAVE_ZSTD
  if (type == 1) {
    kvm_fail (ENOTSUP, "%s: compress=zstd: zstd support not compiled in",
              q->path);
    return -1;
  }
#endif
  if (type != q->compression_type) {
    kvm_fail (EINVAL, "%s: compress=%s, but the image's compression type is "
              "%s (fixed when the image was created): use compress=%s, or "
              "create the image with compression_type=%s", q->path, opt,
              q->compression_type ? "zstd" : "zlib",
              q->compression_type ? "zstd" : "zlib", opt);
    return -1;
  }
  if (q->external_data) {
    kvm_fail (ENOTSUP, "%s: compress=: an image with an external data file "
              "cannot hold compressed clusters", q->path);
    return -1;
  }
  q->compress = true;
  return 0;
}

/* Compress one cluster IN into OUT (room for cluster_size - 1 bytes).
 * Returns the compressed length, CB_RAW if it does not fit, or -1.
 */
static int64_t
compress_cluster (struct qcow2 *q, struct cctx *x, const uint8_t *in,
                  uint8_t *out)
{
  size_t cs = q->cluster_size, room = cs - 1;

  if (q->compression_type == 0) {
#ifdef HAVE_ZLIB
    z_stream *s = &x->z;
    if (!x->z_ready) {
      memset (s, 0, sizeof *s);
      /* Raw deflate with a 4 KiB window, the stream qcow2 readers expect. */
      if (deflateInit2 (s, Z_DEFAULT_COMPRESSION, Z_DEFLATED, -12, 9,
                        Z_DEFAULT_STRATEGY) != Z_OK) {
        kvm_fail (ENOMEM, "%s: cannot set up zlib", q->path);
        return -1;
      }
      x->z_ready = true;
    }
    else if (deflateReset (s) != Z_OK) {
      kvm_fail (EIO, "%s: zlib: cannot reset the compressor", q->path);
      return -1;
    }
    s->next_in = (Bytef *) in;
    s->avail_in = cs;
    s->next_out = out;
    s->avail_out = room;
    int r = deflate (s, Z_FINISH);
    if (r == Z_STREAM_END)
      return room - s->avail_out;
    if (r == Z_OK || r == Z_BUF_ERROR)
      return CB_RAW;
    kvm_fail (EIO, "%s: zlib: compression failed (%d)", q->path, r);
    return -1;
#endif
  }
  else {
#ifdef HAVE_ZSTD
    if (x->zstd == NULL) {
      x->zstd = ZSTD_createCCtx ();
      if (x->zstd == NULL) {
        kvm_fail (ENOMEM, "%s: cannot set up zstd", q->path);
        return -1;
      }
    }
    size_t r = ZSTD_compress2 (x->zstd, out, room, in, cs);
    if (!ZSTD_isError (r))
      return r;
    if (ZSTD_getErrorCode (r) == ZSTD_error_dstSize_tooSmall)
      return CB_RAW;
    kvm_fail (EIO, "%s: zstd: compression failed: %s", q->path,
              ZSTD_getErrorName (r));
    return -1;
#endif
  }
  kvm_fail (ENOTSUP, "%s: compression not compiled in", q->path);
  return -1;
}

static bool
all_zero (const uint8_t *p, size_t n)
{
  return p[0] == 0 && memcmp (p, p + 1, n - 1) == 0;
}

void
q2_cbatch_free (struct q2_cbatch *cb)
{
  free (cb->len);
  free (cb->pos);
  free (cb->out);
  memset (cb, 0, sizeof *cb);
}

/* Compress the whole aligned clusters of a write of COUNT bytes of BUF at
 * guest OFFSET into CB (and the last, partial cluster of the disk when
 * the write covers it).  No lock needed.
 */
int
q2_compress_batch (struct qcow2 *q, struct q2_cbatch *cb, const uint8_t *buf,
                   uint64_t count, uint64_t offset)
{
  uint64_t cs = q->cluster_size;
  uint64_t first = div_round_up64 (offset, cs), end = (offset + count) / cs;
  /* A write reaching the end of a disk whose size is not a multiple of
   * the cluster size covers the whole last cluster: it is compressed
   * padded with zeroes, as QEMU does.
   */
  uint64_t tail_len = 0;
  if (offset + count == q->bd.size && q->bd.size % cs) {
    tail_len = q->bd.size % cs;
    end++;
  }
  memset (cb, 0, sizeof *cb);
  if (end <= first)
    return 0;
  struct cctx *x = thread_cctx ();
  uint64_t n = end - first;
  uint8_t *tail = NULL;
  cb->len = malloc (n * sizeof *cb->len);
  cb->pos = malloc (n * sizeof *cb->pos);
  cb->out = malloc (n * (cs - 1));
  if (tail_len)
    tail = calloc (1, cs);
  if (!x || !cb->len || !cb->pos || !cb->out || (tail_len && !tail)) {
    q2_cbatch_free (cb);
    free (tail);
    kvm_fail (ENOMEM, "%s: out of memory", q->path);
    return -1;
  }
  cb->first = first;
  cb->n = n;
  uint64_t at = 0;
  for (uint64_t i = 0; i < n; i++) {
    const uint8_t *in = buf + (first + i) * cs - offset;
    if (tail && i == n - 1) {
      memcpy (tail, in, tail_len);
      in = tail;
    }
    cb->pos[i] = at;
    if (all_zero (in, cs)) {
      cb->len[i] = CB_ZERO;
      continue;
    }
    int64_t r = compress_cluster (q, x, in, cb->out + at);
    if (r == -1) {
      q2_cbatch_free (cb);
      free (tail);
      return -1;
    }
    cb->len[i] = r;
    if (r != CB_RAW)
      at += r;
  }
  free (tail);
  return 0;
}

/* Room for LEN bytes of compressed data (LEN < cluster_size) in the host
 * clusters: packed after the previous compressed cluster when its host
 * cluster has room (or the next host cluster is free to spill into), else
 * at the start of a new cluster.  Takes one reference on each host
 * cluster the data touches.  Exclusive lock held.
 */
int
q2_compress_alloc (struct qcow2 *q, uint64_t len, uint64_t *off)
{
  uint64_t cs = q->cluster_size, cur = q->cfree, rc;
  if (cur) {
    uint64_t cl = cur & ~(cs - 1), next = cl + cs;
    if (q2_refcount_get (q, cl, &rc) == -1)
      return -1;
    if (rc == 0 || rc >= q->refcount_max)
      cur = 0;
    else if (cur + len > next) {
      /* Spill into the next cluster: only when it is free and its
       * refcount block exists already (a new block could land on it).
       */
      uint64_t ri = (next >> q->cluster_bits) >> q->rb_bits, nrc = 1;
      bool ok = ri < q->rt_entries && (q->rt[ri] & REFT_OFFSET_MASK) &&
        next + cs <= (1ull << q->csize_shift) &&
        (q->file->growable || next + cs <= bdev_size (q->file));
      if (ok && q2_refcount_get (q, next, &nrc) == -1)
        return -1;
      if (!ok || nrc != 0)
        cur = 0;
      else {
        if (q2_refcount_update (q, next, 1, NULL) == -1)
          return -1;
        if (next + cs > q->alloc_end)
          q->alloc_end = next + cs;
      }
    }
    if (cur && q2_refcount_update (q, cl, 1, NULL) == -1)
      return -1;
  }
  if (!cur) {
    if (q2_alloc_clusters (q, 1, &cur) == -1)
      return -1;
    if (cur + cs > (1ull << q->csize_shift)) {
      kvm_fail (ENOSPC, "%s: compressed cluster offset %#" PRIx64 " too "
                "large for the L2 entry", q->path, cur);
      return -1;
    }
  }
  *off = cur;
  q->cfree = (cur + len) & (cs - 1) ? cur + len : 0;
  return 0;
}

/* The L2 entry of LEN bytes of compressed data at host offset OFF. */
uint64_t
q2_compressed_entry (struct qcow2 *q, uint64_t off, uint64_t len)
{
  uint64_t nsect = ((off + len - 1) >> 9) - (off >> 9);
  return OFLAG_COMPRESSED | (nsect << q->csize_shift) | off;
}
