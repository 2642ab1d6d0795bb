/* SPDX-License-Identifier: BSD-3-Clause */
/* The VMDK engine: grain tables, reads and block status (the concurrency
 * rules are in vmdk.c).
 */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifdef HAVE_ZLIB
#include <zlib.h>
#endif

#include "vmdk.h"
#include "vmdk_int.h"
#include "util/checked.h"
#include "util/endian.h"
#include "util/log.h"

/* --- Grain tables ------------------------------------------------------ */

/* The end of the extent's file as far as metadata may point. */
uint64_t
vmdk_file_end (struct extent *e)
{
  uint64_t s = __atomic_load_n (&e->file->size, __ATOMIC_ACQUIRE);
  uint64_t a = __atomic_load_n (&e->alloc_end, __ATOMIC_ACQUIRE);
  return s > a ? s : a;
}

/* Charge BYTES of grain table to the image's budget (VMDK_MAX_GT_MEM);
 * false (with the error set) when the budget is spent.  vmdk_gt_release gives
 * them back (a table that was not kept).
 */
bool
vmdk_gt_charge (struct vmdk *v, uint64_t bytes)
{
  uint64_t now = __atomic_add_fetch (&v->gt_mem, bytes, __ATOMIC_RELAXED);
  if (now > VMDK_MAX_GT_MEM) {
    __atomic_sub_fetch (&v->gt_mem, bytes, __ATOMIC_RELAXED);
    kvm_fail (EFBIG, "%s: the grain tables in use would take more than %u MiB "
              "of memory (the limit; a grain directory naming one table many "
              "times is corrupt)", v->path, VMDK_MAX_GT_MEM >> 20);
    return false;
  }
  return true;
}

void
vmdk_gt_release (struct vmdk *v, uint64_t bytes)
{
  __atomic_sub_fetch (&v->gt_mem, bytes, __ATOMIC_RELAXED);
}

/* Publish GT (BYTES charged) as grain table GDI of extent E, unless
 * another thread published one first: then GT is dropped and that one
 * returned.
 */
uint32_t *
vmdk_gt_publish (struct vmdk *v, struct extent *e, uint64_t gdi,
                 uint32_t *gt, uint64_t bytes)
{
  uint32_t *expected = NULL;
  if (__atomic_compare_exchange_n (&e->gt[gdi], &expected, gt, false,
                                   __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE))
    return gt;
  free (gt);
  vmdk_gt_release (v, bytes);
  return expected;
}

/* *GTP: grain table GDI, loaded if needed; NULL if its directory entry is
 * 0 (no table: every grain unallocated).
 */
int
vmdk_get_gt (struct vmdk *v, struct extent *e, uint64_t gdi, uint32_t **gtp)
{
  uint32_t *gt = __atomic_load_n (&e->gt[gdi], __ATOMIC_ACQUIRE);
  if (gt) {
    *gtp = gt;
    return 0;
  }
  uint32_t sec = __atomic_load_n (&e->gd[gdi], __ATOMIC_ACQUIRE);
  if (sec == 0) {
    *gtp = NULL;
    return 0;
  }
  uint64_t off = (uint64_t) sec * SECTOR;
  size_t bytes = (size_t) e->gt_entries * 4;
  /* A table loaded here was named by the file as opened (the tables the
   * engine allocates are published at once): past its end are only
   * grains and tables allocated since.
   */
  if (!ck_range_within (off, bytes, e->open_end)) {
    kvm_fail (EIO, "%s: grain directory entry %" PRIu64 " points past the end "
              "of the extent file %s", v->path, gdi, e->file->name);
    return -1;
  }
  if (!vmdk_gt_charge (v, bytes))
    return -1;
  gt = malloc (bytes);
  if (!gt) {
    vmdk_gt_release (v, bytes);
    kvm_fail (ENOMEM, "%s: out of memory", v->path);
    return -1;
  }
  if (bdev_pread_padded (e->file, gt, bytes, off) == -1) {
    free (gt);
    vmdk_gt_release (v, bytes);
    return -1;
  }
  for (uint32_t i = 0; i < e->gt_entries; i++) {
    gt[i] = le32toh (gt[i]);
    if (vmdk_grain_state (e, gt[i]) == G_DATA &&
        (uint64_t) gt[i] * SECTOR >= e->open_end)
      gt[i] = GTE_PAST_END;
  }
  *gtp = vmdk_gt_publish (v, e, gdi, gt, bytes);
  return 0;
}

/* The grain table entry of grain GI (0 past the grain directory). */
int
vmdk_get_gte (struct vmdk *v, struct extent *e, uint64_t gi, uint32_t *out)
{
  uint64_t gdi = gi / e->gt_entries;
  uint32_t *gt;
  if (gdi >= e->ngd) {
    *out = GTE_UNALLOC;
    return 0;
  }
  if (vmdk_get_gt (v, e, gdi, &gt) == -1)
    return -1;
  *out = gt ? __atomic_load_n (&gt[gi % e->gt_entries], __ATOMIC_ACQUIRE)
    : GTE_UNALLOC;
  return 0;
}

/* A run of data grains at PHYS must start inside the file (the last grain
 * may be cut short by the end of the file: it reads as zeroes there).
 */
int
vmdk_check_data_run (struct vmdk *v, struct extent *e, uint64_t phys,
                     uint64_t len)
{
  uint64_t end = vmdk_file_end (e);
  if (phys >= (uint64_t) GTE_PAST_END * SECTOR) {
    kvm_fail (EIO, "%s: a grain table entry of %s points past the end of the "
              "file (as it was opened)", v->path, e->file->name);
    return -1;
  }
  if (phys >= end || phys + len > end + e->grain) {
    kvm_fail (EIO, "%s: a grain table entry of %s points past the end of the "
              "file (byte %" PRIu64 ", file size %" PRIu64 ")", v->path,
              e->file->name, phys, end);
    return -1;
  }
  return 0;
}

enum grain_state
vmdk_grain_state (struct extent *e, uint32_t gte)
{
  if (gte == GTE_UNALLOC)
    return G_UNALLOC;
  if (gte == GTE_ZERO && e->zero_grain)
    return G_ZERO;
  return e->compressed ? G_COMPRESSED : G_DATA;
}

/* --- Reading ----------------------------------------------------------- */

static int
inflate_grain (struct vmdk *v, struct extent *e, const uint8_t *in,
               size_t inlen, uint8_t *out)
{
#ifdef HAVE_ZLIB
  z_stream z = { 0 };
  if (inflateInit (&z) != Z_OK) {
    kvm_fail (ENOMEM, "%s: inflateInit failed", v->path);
    return -1;
  }
  z.next_in = (Bytef *) in;
  z.avail_in = inlen;
  z.next_out = out;
  z.avail_out = e->grain;
  int r = inflate (&z, Z_FINISH);
  size_t got = e->grain - z.avail_out;
  inflateEnd (&z);
  if (r != Z_STREAM_END && !(r == Z_BUF_ERROR && got == e->grain)) {
    kvm_fail (EIO, "%s: corrupt compressed grain in %s", v->path,
              e->file->name);
    return -1;
  }
  memset (out + got, 0, e->grain - got);
  return 0;
#else
  (void) in; (void) inlen; (void) out;
  kvm_fail (ENOTSUP, "%s: compressed grains need zlib, which this build lacks",
            v->path);
  return -1;
#endif
}

/* Read and inflate the compressed grain GTE points to into OUT (grain
 * bytes).
 */
static int
read_compressed (struct vmdk *v, struct extent *e, uint32_t gte,
                 uint8_t *out)
{
  uint64_t off = (uint64_t) gte * SECTOR, end = vmdk_file_end (e);
  uint64_t len;
  if (off >= end) {
    kvm_fail (EIO, "%s: compressed grain at sector %" PRIu32 " is past the "
              "end of %s", v->path, gte, e->file->name);
    return -1;
  }
  if (e->markers) {
    uint8_t m[12];
    if (!ck_range_within (off, sizeof m, end) ||
        bdev_pread (e->file, m, sizeof m, off) == -1) {
      kvm_fail (EIO, "%s: cannot read the grain marker at sector %" PRIu32,
                v->path, gte);
      return -1;
    }
    len = load_le32 (m + 8);
    off += sizeof m;
    if (len == 0 || len > 2 * e->grain + 4096 ||
        !ck_range_within (off, len, end)) {
      kvm_fail (EIO, "%s: invalid compressed grain size %" PRIu64 " at sector "
                "%" PRIu32, v->path, len, gte);
      return -1;
    }
  }
  else {
    len = end - off;
    if (len > 2 * e->grain + 4096)
      len = 2 * e->grain + 4096;
  }
  uint8_t *in = malloc (len);
  if (!in) {
    kvm_fail (ENOMEM, "%s: out of memory", v->path);
    return -1;
  }
  int r = bdev_pread (e->file, in, len, off);
  if (r == 0)
    r = inflate_grain (v, e, in, len, out);
  free (in);
  return r;
}

/* What a grain that is not allocated here reads as. */
int
vmdk_read_below (struct vmdk *v, void *buf, size_t count, uint64_t voff)
{
  if (v->parent)
    return bdev_pread_padded (v->parent, buf, count, voff);
  memset (buf, 0, count);
  return 0;
}

/* seSparse: grain table GDI (loaded if needed), NULL if unallocated. */
static int
get_se_gt (struct vmdk *v, struct extent *e, uint64_t gdi, uint64_t **gtp)
{
  uint64_t *gt = __atomic_load_n (&e->se_gt[gdi], __ATOMIC_ACQUIRE);
  if (gt) {
    *gtp = gt;
    return 0;
  }
  uint64_t de = e->se_gd[gdi], off;
  if (de == 0) {
    *gtp = NULL;
    return 0;
  }
  /* The top 32 bits mark an allocated table; the rest is its index. */
  const size_t bytes = SE_GTES * 8;
  if ((de >> 32) != 0x10000000u ||
      !ck_muladd64 (e->se_gt_off, de & 0xffffffffu, bytes, &off) ||
      !ck_range_within (off, bytes, e->file->size)) {
    kvm_fail (EIO, "%s: invalid seSparse grain directory entry %" PRIu64
              " (0x%016" PRIx64 ") in %s", v->path, gdi, de, e->file->name);
    return -1;
  }
  if (!vmdk_gt_charge (v, bytes))
    return -1;
  if (!(gt = malloc (bytes))) {
    vmdk_gt_release (v, bytes);
    kvm_fail (ENOMEM, "%s: out of memory", v->path);
    return -1;
  }
  if (bdev_pread (e->file, gt, bytes, off) == -1) {
    free (gt);
    vmdk_gt_release (v, bytes);
    return -1;
  }
  for (size_t i = 0; i < SE_GTES; i++)
    gt[i] = le64toh (gt[i]);
  uint64_t *expected = NULL;
  if (!__atomic_compare_exchange_n (&e->se_gt[gdi], &expected, gt, false,
                                    __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) {
    free (gt);
    vmdk_gt_release (v, bytes);
    gt = expected;
  }
  *gtp = gt;
  return 0;
}

/* The state of grain GI and, for data, the file offset of its start. */
static int
grain_info (struct vmdk *v, struct extent *e, uint64_t gi,
            enum grain_state *st, uint64_t *phys)
{
  *phys = 0;
  if (!e->se) {
    uint32_t gte;
    if (vmdk_get_gte (v, e, gi, &gte) == -1)
      return -1;
    *st = vmdk_grain_state (e, gte);
    *phys = (uint64_t) gte * SECTOR;
    return 0;
  }
  uint64_t gdi = gi / SE_GTES, *gt, x;
  *st = G_UNALLOC;
  if (gdi >= e->ngd)
    return 0;
  if (get_se_gt (v, e, gdi, &gt) == -1)
    return -1;
  if (!gt)
    return 0;
  x = gt[gi % SE_GTES];
  switch (x >> 60) {
  case 0:                       /* unallocated: the whole entry is 0 */
    if (x == 0)
      return 0;
    break;
  case 1:                       /* unmapped */
  case 2:                       /* zeroed */
    *st = G_ZERO;
    return 0;
  case 3: {                     /* allocated: a 60-bit grain number */
    uint64_t n = ((x >> 48) & 0xfff) | ((x & 0xffffffffffffull) << 12);
    if (ck_muladd64 (e->se_grains_off, n, e->grain, phys)) {
      *st = G_DATA;
      return 0;
    }
    break;
  }
  }
  kvm_fail (EIO, "%s: invalid seSparse grain table entry 0x%016" PRIx64
            " for grain %" PRIu64 " in %s", v->path, x, gi, e->file->name);
  return -1;
}

/* Classify the run of grains starting at extent offset OFF (at most COUNT
 * bytes): its state, length and, for data, its file offset.  Runs of data
 * grains are contiguous in the file.
 */
int
vmdk_sparse_run (struct vmdk *v, struct extent *e, uint64_t off,
                 uint64_t count, enum grain_state *st, uint64_t *len,
                 uint64_t *phys)
{
  uint64_t gi = off >> e->grain_shift, in = off & (e->grain - 1), gp;
  if (grain_info (v, e, gi, st, &gp) == -1)
    return -1;
  *phys = gp + in;
  uint64_t n = e->grain - in;
  if (*st == G_COMPRESSED || n >= count) {
    *len = n < count ? n : count;
    return 0;
  }
  while (n < count) {
    enum grain_state s;
    uint64_t next;
    gi++;
    if (grain_info (v, e, gi, &s, &next) == -1)
      return -1;
    if (s != *st)
      break;
    if (s == G_DATA && next != gp + e->grain)
      break;
    gp = next;
    n += e->grain;
  }
  *len = n < count ? n : count;
  return 0;
}

static int
sparse_read (struct vmdk *v, struct extent *e, uint8_t *buf, uint64_t count,
             uint64_t off)
{
  uint8_t *tmp = NULL;
  int r = 0;
  while (count) {
    enum grain_state st;
    uint64_t len, phys;
    if (vmdk_sparse_run (v, e, off, count, &st, &len, &phys) == -1)
      goto fail;
    switch (st) {
    case G_UNALLOC:
      if (vmdk_read_below (v, buf, len, e->start + off) == -1)
        goto fail;
      break;
    case G_ZERO:
      memset (buf, 0, len);
      break;
    case G_DATA:
      if (vmdk_check_data_run (v, e, phys, len) == -1 ||
          bdev_pread_padded (e->file, buf, len, phys) == -1)
        goto fail;
      break;
    case G_COMPRESSED:
      if (!tmp && !(tmp = malloc (e->grain))) {
        kvm_fail (ENOMEM, "%s: out of memory", v->path);
        goto fail;
      }
      if (read_compressed (v, e, (phys - (off & (e->grain - 1))) / SECTOR,
                           tmp) == -1)
        goto fail;
      memcpy (buf, tmp + (off & (e->grain - 1)), len);
      break;
    }
    buf += len;
    off += len;
    count -= len;
  }
 out:
  free (tmp);
  return r;
 fail:
  r = -1;
  goto out;
}

struct extent *
vmdk_find_extent (struct vmdk *v, uint64_t off)
{
  size_t lo = 0, hi = v->next;
  while (hi - lo > 1) {
    size_t mid = (lo + hi) / 2;
    if (v->ext[mid].start <= off)
      lo = mid;
    else
      hi = mid;
  }
  return &v->ext[lo];
}

int
vmdk_pread (struct bdev *bd, void *vbuf, size_t count, uint64_t offset)
{
  struct vmdk *v = (struct vmdk *) bd;
  uint8_t *buf = vbuf;
  while (count) {
    struct extent *e = vmdk_find_extent (v, offset);
    uint64_t rel = offset - e->start;
    uint64_t n = e->size - rel < count ? e->size - rel : count;
    int r = 0;
    switch (e->kind) {
    case EK_ZERO: memset (buf, 0, n); break;
    case EK_FLAT: r = bdev_pread_padded (e->file, buf, n, e->flat_off + rel);
      break;
    case EK_SPARSE: r = sparse_read (v, e, buf, n, rel); break;
    }
    if (r == -1)
      return -1;
    buf += n;
    offset += n;
    count -= n;
  }
  return 0;
}

/* --- Block status ------------------------------------------------------ */

struct shift_ctx {
  bdev_extent_fn fn;
  void *opaque;
  uint64_t delta;               /* add to offsets */
  uint64_t sub;
};

static int
shifted (void *opaque, uint64_t offset, uint64_t length, uint32_t type)
{
  struct shift_ctx *c = opaque;
  return c->fn (c->opaque, offset - c->sub + c->delta, length, type);
}

static int
below_extents (struct vmdk *v, uint64_t count, uint64_t voff, uint32_t flags,
               bdev_extent_fn fn, void *opaque)
{
  const uint32_t hole = BDEV_EXTENT_HOLE | BDEV_EXTENT_ZERO;
  if (!v->parent || voff >= v->parent->size)
    return fn (opaque, voff, count, hole);
  uint64_t n = v->parent->size - voff < count ? v->parent->size - voff : count;
  if (bdev_extents (v->parent, n, voff, flags, fn, opaque) == -1)
    return -1;
  if (n < count && !(flags & BDEV_REQ_ONE))
    return fn (opaque, voff + n, count - n, hole);
  return 0;
}

int
vmdk_extents (struct bdev *bd, uint64_t count, uint64_t offset,
              uint32_t flags, bdev_extent_fn fn, void *opaque)
{
  struct vmdk *v = (struct vmdk *) bd;
  const uint32_t hole = BDEV_EXTENT_HOLE | BDEV_EXTENT_ZERO;
  while (count) {
    struct extent *e = vmdk_find_extent (v, offset);
    uint64_t rel = offset - e->start;
    uint64_t n = e->size - rel < count ? e->size - rel : count;
    switch (e->kind) {
    case EK_ZERO:
      if (fn (opaque, offset, n, hole) == -1)
        return -1;
      break;
    case EK_FLAT:
      if (e->file->ops->extents && (e->file->caps & BDEV_CAN_EXTENTS) &&
          ck_range_within (e->flat_off + rel, n, e->file->size)) {
        struct shift_ctx c = { fn, opaque, e->start, e->flat_off };
        if (bdev_extents (e->file, n, e->flat_off + rel, flags & BDEV_REQ_ONE,
                          shifted, &c) == -1)
          return -1;
      }
      else if (fn (opaque, offset, n, BDEV_EXTENT_DATA) == -1)
        return -1;
      break;
    case EK_SPARSE: {
      uint64_t done = 0;
      while (done < n) {
        enum grain_state st;
        uint64_t len, phys;
        if (vmdk_sparse_run (v, e, rel + done, n - done, &st, &len,
                             &phys) == -1)
          return -1;
        int r;
        if (st == G_UNALLOC)
          r = below_extents (v, len, offset + done, flags, fn, opaque);
        else
          r = fn (opaque, offset + done, len,
                  st == G_ZERO ? hole : BDEV_EXTENT_DATA);
        if (r == -1)
          return -1;
        done += len;
        if (flags & BDEV_REQ_ONE)
          return 0;
      }
      break;
    }
    }
    if (flags & BDEV_REQ_ONE)
      return 0;
    offset += n;
    count -= n;
  }
  return 0;
}
