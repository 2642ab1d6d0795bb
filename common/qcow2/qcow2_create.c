/* SPDX-License-Identifier: BSD-3-Clause */
/* Creating a new, empty qcow2 image. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "qcow2.h"
#include "qcow2_int.h"
#include "util/checked.h"
#include "util/endian.h"
#include "util/log.h"

static int
write_all (int fd, const void *buf, size_t len, uint64_t off)
{
  const char *p = buf;
  while (len) {
    ssize_t r = pwrite (fd, p, len, off);
    if (r == -1) {
      if (errno == EINTR)
        continue;
      return -1;
    }
    if (r == 0) {               /* no progress: would loop for ever */
      errno = ENOSPC;
      return -1;
    }
    p += r; len -= r; off += r;
  }
  return 0;
}

/* The geometry of a new image, worked out by qcow2_create's steps. */
struct layout {
  uint64_t cs;                  /* cluster size */
  int version;
  unsigned rbits, cbits, rorder;
  size_t blen, flen;            /* backing name and format lengths */
  uint64_t l1_size, l1_clusters;
  uint64_t rb_entries;          /* refcount entries per block */
  uint64_t n_rt, n_rb, total;   /* clusters: refcount table, blocks, all */
  uint64_t rt_off, rb_off, l1_off, bytes;
};

static int
create_fail (const char *path, const char *msg)
{
  kvm_error ("%s: %s", path, msg);
  errno = EINVAL;
  return -1;
}

/* Check the options and fill in the defaults. */
static int
check_create_opts (const char *path, const struct qcow2_create_opts *o,
                   struct layout *l)
{
  l->cs = o->cluster_size ? o->cluster_size : 65536;
  l->version = o->version ? o->version : 3;
  l->rbits = o->refcount_bits ? o->refcount_bits : 16;
  l->blen = o->backing ? strlen (o->backing) : 0;
  l->flen = o->backing_format ? strlen (o->backing_format) : 0;

  if (!is_power_of_2 (l->cs) || l->cs < 512 || l->cs > (2u << 20))
    return create_fail (path, "cluster size must be a power of two between "
                        "512 and 2M");
  l->cbits = __builtin_ctzll (l->cs);
  if (!is_power_of_2 (l->rbits) || l->rbits > 64)
    return create_fail (path, "refcount bits must be a power of two up to 64");
  l->rorder = __builtin_ctz (l->rbits);
  if (l->version != 2 && l->version != 3)
    return create_fail (path, "compat must be 0.10 or 1.1");
  if (l->version == 2 && (l->rbits != 16 || o->extended_l2 ||
                          o->compression_type != 0))
    return create_fail (path, "compat=0.10 supports neither refcount bits "
                        "other than 16, extended L2 entries nor zstd");
  if (o->extended_l2 && l->cs < 16384)
    return create_fail (path, "extended L2 entries need clusters of at "
                        "least 16K");
  if (o->compression_type < 0 || o->compression_type > 1 || l->blen > 1023 ||
      l->flen > 255 || o->size > (1ull << 61))
    return create_fail (path, "invalid creation options");
  return 0;
}

/* Size L1 and the refcounts covering all metadata; place them in order. */
static int
plan_layout (const char *path, const struct qcow2_create_opts *o,
             struct layout *l)
{
  uint64_t cs = l->cs;
  uint64_t l2_entries = cs / (o->extended_l2 ? 16 : 8);
  uint64_t span = cs * l2_entries;
  l->l1_size = div_round_up64 (o->size, span);
  if (l->l1_size * 8 > (32u << 20))
    return create_fail (path, "virtual size too large for this cluster size");
  /* An empty disk has an empty L1 table: no cluster (qemu-img check would
   * count one as leaked).
   */
  l->l1_clusters = div_round_up64 (l->l1_size * 8, cs);
  l->rb_entries = cs * 8 / l->rbits;
  l->n_rt = 1;
  l->n_rb = 1;
  for (;;) {
    l->total = 1 + l->n_rt + l->n_rb + l->l1_clusters;
    uint64_t need_rb = div_round_up64 (l->total, l->rb_entries);
    uint64_t need_rt = div_round_up64 (need_rb * 8, cs);
    if (need_rb <= l->n_rb && need_rt <= l->n_rt)
      break;
    if (need_rb > l->n_rb) l->n_rb = need_rb;
    if (need_rt > l->n_rt) l->n_rt = need_rt;
  }
  if (l->n_rt * cs > (8u << 20))
    return create_fail (path, "image too large for this cluster size");
  l->rt_off = cs;
  l->rb_off = l->rt_off + l->n_rt * cs;
  l->l1_off = l->rb_off + l->n_rb * cs;
  l->bytes = l->total * cs;
  return 0;
}

/* Header, backing format extension and backing file name. */
static int
build_header (const char *path, const struct qcow2_create_opts *o,
              const struct layout *l, uint8_t *img)
{
  uint32_t hlen = l->version == 3 ? H_V3_LENGTH_CT : H_V2_LENGTH;
  store_be32 (img + H_MAGIC, QCOW2_MAGIC);
  store_be32 (img + H_VERSION, l->version);
  store_be32 (img + H_CLUSTER_BITS, l->cbits);
  store_be64 (img + H_SIZE, o->size);
  store_be32 (img + H_L1_SIZE, l->l1_size);
  store_be64 (img + H_L1_OFFSET, l->l1_off);
  store_be64 (img + H_RT_OFFSET, l->rt_off);
  store_be32 (img + H_RT_CLUSTERS, l->n_rt);
  if (l->version == 3) {
    uint64_t incompat = 0;
    if (o->compression_type)
      incompat |= INCOMPAT_COMPRESSION;
    if (o->extended_l2)
      incompat |= INCOMPAT_EXTL2;
    store_be64 (img + H_INCOMPAT, incompat);
    store_be32 (img + H_REFCOUNT_ORDER, l->rorder);
    store_be32 (img + H_HEADER_LENGTH, hlen);
    img[H_COMPRESSION] = o->compression_type;
  }
  uint64_t p = hlen;
  if (l->flen) {
    store_be32 (img + p, EXT_BACKING_FMT);
    store_be32 (img + p + 4, l->flen);
    memcpy (img + p + 8, o->backing_format, l->flen);
    p += 8 + ((l->flen + 7) & ~7ul);
  }
  p += 8;                       /* end of extensions */
  if (l->blen) {
    if (p + l->blen > l->cs)
      return create_fail (path, "backing file name does not fit in the "
                          "header");
    memcpy (img + p, o->backing, l->blen);
    store_be64 (img + H_BACKING_OFFSET, p);
    store_be32 (img + H_BACKING_SIZE, l->blen);
  }
  return 0;
}

/* Refcount table and blocks: every metadata cluster has refcount 1. */
static void
build_refcounts (const struct layout *l, uint8_t *img)
{
  uint64_t cs = l->cs;
  for (uint64_t i = 0; i < l->n_rb; i++)
    store_be64 (img + l->rt_off + 8 * i, l->rb_off + i * cs);
  for (uint64_t c = 0; c < l->total; c++) {
    uint8_t *b = img + l->rb_off + (c / l->rb_entries) * cs;
    uint64_t i = c % l->rb_entries;
    switch (l->rorder) {
    case 0: b[i / 8] |= 1u << (i % 8); break;
    case 1: b[i / 4] |= 1u << (2 * (i % 4)); break;
    case 2: b[i / 2] |= 1u << (4 * (i % 2)); break;
    case 3: b[i] = 1; break;
    case 4: store_be16 (b + 2 * i, 1); break;
    case 5: store_be32 (b + 4 * i, 1); break;
    default: store_be64 (b + 8 * i, 1); break;
    }
  }
}

/* Write IMG to PATH, which must not exist, durably (removed on failure). */
static int
write_new_file (const char *path, const uint8_t *img, uint64_t bytes)
{
  int fd = open (path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd == -1) {
    kvm_error ("%s: create: %m", path);
    return -1;
  }
  if (write_all (fd, img, bytes, 0) == -1 || fsync (fd) == -1) {
    kvm_error ("%s: writing new image: %m", path);
    close (fd);
    unlink (path);
    return -1;
  }
  if (close (fd) == -1) {
    kvm_error ("%s: close: %m", path);
    return -1;
  }
  return 0;
}

int
qcow2_create (const char *path, const struct qcow2_create_opts *o)
{
  struct layout l = { 0 };
  if (check_create_opts (path, o, &l) == -1 ||
      plan_layout (path, o, &l) == -1)
    return -1;
  uint8_t *img = calloc (1, l.bytes);
  if (!img) {
    kvm_error ("%s: out of memory", path);
    errno = ENOMEM;
    return -1;
  }
  int r = build_header (path, o, &l, img);
  if (r == 0) {
    build_refcounts (&l, img);
    r = write_new_file (path, img, l.bytes);
  }
  free (img);
  return r;
}

/* "on"/"off" (and the usual synonyms) -> 1/0, else -1. */
static int
parse_onoff (const char *v)
{
  if (!strcmp (v, "on") || !strcmp (v, "true") || !strcmp (v, "1") ||
      !strcmp (v, "yes"))
    return 1;
  if (!strcmp (v, "off") || !strcmp (v, "false") || !strcmp (v, "0") ||
      !strcmp (v, "no"))
    return 0;
  return -1;
}

/* A decimal number with an optional K/M suffix, or -1. */
static int64_t
parse_number (const char *v)
{
  char *end;
  errno = 0;
  unsigned long long n = strtoull (v, &end, 10);
  if (errno || end == v || n > (1ull << 40))
    return -1;
  if (*end == 'k' || *end == 'K')
    n <<= 10, end++;
  else if (*end == 'm' || *end == 'M')
    n <<= 20, end++;
  return *end ? -1 : (int64_t) n;
}

int
qcow2_create_options (const char *path, uint64_t size,
                      const char *const *options)
{
  /* QEMU reads a virtual size in whole sectors and drops a partial last
   * one: round up, as qemu-img create does.  (The snapshot filter's
   * layers keep their plugin's exact size: only this engine reads them.)
   */
  (void) ck_round_up64 (size, 512, &size);   /* overflow: refused below */
  struct qcow2_create_opts o = { .size = size, .version = 3 };
  for (size_t i = 0; options && options[i]; i++) {
    const char *kv = options[i], *eq = strchr (kv, '=');
    const char *v = eq ? eq + 1 : "";
    size_t klen = eq ? (size_t) (eq - kv) : strlen (kv);
    int64_t n;
    int b;
#define KEY(k) (klen == strlen (k) && strncmp (kv, k, klen) == 0)
    if (KEY ("cluster_size") && (n = parse_number (v)) > 0 &&
        n <= UINT32_MAX)
      o.cluster_size = n;
    else if (KEY ("compat") && (!strcmp (v, "0.10") || !strcmp (v, "v2")))
      o.version = 2;
    else if (KEY ("compat") && (!strcmp (v, "1.1") || !strcmp (v, "v3")))
      o.version = 3;
    else if (KEY ("backing_file"))
      o.backing = v;
    else if (KEY ("backing_fmt"))
      o.backing_format = v;
    else if (KEY ("extended_l2") && (b = parse_onoff (v)) >= 0)
      o.extended_l2 = b;
    else if (KEY ("refcount_bits") && (n = parse_number (v)) > 0 && n <= 64)
      o.refcount_bits = n;
    else if (KEY ("compression_type") && !strcmp (v, "zlib"))
      o.compression_type = 0;
    else if (KEY ("compression_type") && !strcmp (v, "zstd"))
      o.compression_type = 1;
    else {
      kvm_error ("%s: invalid qcow2 creation option '%s'", path, kv);
      errno = EINVAL;
      return -1;
    }
#undef KEY
  }
  return qcow2_create (path, &o);
}
