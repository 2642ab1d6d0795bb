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
    p += r; len -= r; off += r;
  }
  return 0;
}

int
qcow2_create (const char *path, const struct qcow2_create_opts *o)
{
  uint64_t cs = o->cluster_size ? o->cluster_size : 65536;
  int version = o->version ? o->version : 3;
  unsigned rbits = o->refcount_bits ? o->refcount_bits : 16;
  unsigned cbits, rorder;
  size_t blen = o->backing ? strlen (o->backing) : 0;
  size_t flen = o->backing_format ? strlen (o->backing_format) : 0;

  if (!is_power_of_2 (cs) || cs < 512 || cs > (2u << 20)) {
    kvm_error ("%s: cluster size must be a power of two between 512 and "
               "2M", path);
    errno = EINVAL;
    return -1;
  }
  cbits = __builtin_ctzll (cs);
  if (!is_power_of_2 (rbits) || rbits > 64) {
    kvm_error ("%s: refcount bits must be a power of two up to 64", path);
    errno = EINVAL;
    return -1;
  }
  rorder = __builtin_ctz (rbits);
  if (version != 2 && version != 3) {
    kvm_error ("%s: compat must be 0.10 or 1.1", path);
    errno = EINVAL;
    return -1;
  }
  if (version == 2 && (rbits != 16 || o->extended_l2 ||
                       o->compression_type != 0)) {
    kvm_error ("%s: compat=0.10 supports neither refcount bits other than "
               "16, extended L2 entries nor zstd", path);
    errno = EINVAL;
    return -1;
  }
  if (o->extended_l2 && cs < 16384) {
    kvm_error ("%s: extended L2 entries need clusters of at least 16K", path);
    errno = EINVAL;
    return -1;
  }
  if (o->compression_type < 0 || o->compression_type > 1 || blen > 1023 ||
      flen > 255 || o->size > (1ull << 61)) {
    kvm_error ("%s: invalid creation options", path);
    errno = EINVAL;
    return -1;
  }

  uint64_t l2_entries = cs / (o->extended_l2 ? 16 : 8);
  uint64_t span = cs * l2_entries;
  uint64_t l1_size = div_round_up64 (o->size, span);
  if (l1_size * 8 > (32u << 20)) {
    kvm_error ("%s: virtual size too large for this cluster size", path);
    errno = EINVAL;
    return -1;
  }
  uint64_t l1_clusters = div_round_up64 (l1_size * 8, cs);
  if (l1_clusters == 0)
    l1_clusters = 1;
  uint64_t rb_entries = cs * 8 / rbits;
  uint64_t n_rt = 1, n_rb = 1, total;
  for (;;) {
    total = 1 + n_rt + n_rb + l1_clusters;
    uint64_t need_rb = div_round_up64 (total, rb_entries);
    uint64_t need_rt = div_round_up64 (need_rb * 8, cs);
    if (need_rb <= n_rb && need_rt <= n_rt)
      break;
    if (need_rb > n_rb) n_rb = need_rb;
    if (need_rt > n_rt) n_rt = need_rt;
  }
  if (n_rt * cs > (8u << 20)) {
    kvm_error ("%s: image too large for this cluster size", path);
    errno = EINVAL;
    return -1;
  }
  uint64_t rt_off = cs, rb_off = rt_off + n_rt * cs;
  uint64_t l1_off = rb_off + n_rb * cs;
  uint64_t bytes = total * cs;
  uint8_t *img = calloc (1, bytes);
  if (!img) {
    kvm_error ("%s: out of memory", path);
    errno = ENOMEM;
    return -1;
  }

  /* Header. */
  uint32_t hlen = version == 3 ? H_V3_LENGTH_CT : H_V2_LENGTH;
  store_be32 (img + H_MAGIC, QCOW2_MAGIC);
  store_be32 (img + H_VERSION, version);
  store_be32 (img + H_CLUSTER_BITS, cbits);
  store_be64 (img + H_SIZE, o->size);
  store_be32 (img + H_L1_SIZE, l1_size);
  store_be64 (img + H_L1_OFFSET, l1_off);
  store_be64 (img + H_RT_OFFSET, rt_off);
  store_be32 (img + H_RT_CLUSTERS, n_rt);
  if (version == 3) {
    uint64_t incompat = 0;
    if (o->compression_type)
      incompat |= INCOMPAT_COMPRESSION;
    if (o->extended_l2)
      incompat |= INCOMPAT_EXTL2;
    store_be64 (img + H_INCOMPAT, incompat);
    store_be32 (img + H_REFCOUNT_ORDER, rorder);
    store_be32 (img + H_HEADER_LENGTH, hlen);
    img[H_COMPRESSION] = o->compression_type;
  }
  uint64_t p = hlen;
  if (flen) {
    store_be32 (img + p, EXT_BACKING_FMT);
    store_be32 (img + p + 4, flen);
    memcpy (img + p + 8, o->backing_format, flen);
    p += 8 + ((flen + 7) & ~7ul);
  }
  p += 8;                       /* end of extensions */
  if (blen) {
    if (p + blen > cs) {
      kvm_error ("%s: backing file name does not fit in the header", path);
      free (img);
      errno = EINVAL;
      return -1;
    }
    memcpy (img + p, o->backing, blen);
    store_be64 (img + H_BACKING_OFFSET, p);
    store_be32 (img + H_BACKING_SIZE, blen);
  }

  /* Refcount table and blocks: every metadata cluster has refcount 1. */
  for (uint64_t i = 0; i < n_rb; i++)
    store_be64 (img + rt_off + 8 * i, rb_off + i * cs);
  for (uint64_t c = 0; c < total; c++) {
    uint8_t *b = img + rb_off + (c / rb_entries) * cs;
    uint64_t i = c % rb_entries;
    switch (rorder) {
    case 0: b[i / 8] |= 1u << (i % 8); break;
    case 1: b[i / 4] |= 1u << (2 * (i % 4)); break;
    case 2: b[i / 2] |= 1u << (4 * (i % 2)); break;
    case 3: b[i] = 1; break;
    case 4: store_be16 (b + 2 * i, 1); break;
    case 5: store_be32 (b + 4 * i, 1); break;
    default: store_be64 (b + 8 * i, 1); break;
    }
  }

  int fd = open (path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd == -1) {
    kvm_error ("%s: create: %m", path);
    free (img);
    return -1;
  }
  if (write_all (fd, img, bytes, 0) == -1 || fsync (fd) == -1) {
    kvm_error ("%s: writing new image: %m", path);
    close (fd);
    unlink (path);
    free (img);
    return -1;
  }
  free (img);
  if (close (fd) == -1) {
    kvm_error ("%s: close: %m", path);
    return -1;
  }
  return 0;
}
