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
        ERR (q, ENOMEM, "%s: cannot set up zlib", q->path);
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
    ERR (q, ENOTSUP, "%s: zlib support not compiled in", q->path);
    return -1;
#endif
  }
  else {
#ifdef HAVE_ZSTD
    if (d->zstd == NULL) {
      d->zstd = ZSTD_createDCtx ();
      if (d->zstd == NULL) {
        ERR (q, ENOMEM, "%s: cannot set up zstd", q->path);
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
    ERR (q, ENOTSUP, "%s: zstd support not compiled in", q->path);
    return -1;
#endif
  }
#ifdef HAVE_ZLIB
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
int
q2_read_compressed (struct qcow2 *q, uint64_t e, uint8_t *out)
{
  uint64_t off, len;
  compressed_range (q, e, &off, &len);
  if (!ck_range_within (off, 0, q->file->size) || off == 0) {
    ERR (q, EIO, "%s: corrupt image: compressed cluster offset %#" PRIx64
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
    ERR (q, ENOMEM, "%s: out of memory", q->path);
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
