/* SPDX-License-Identifier: BSD-3-Clause */
/* The VMDK engine: writes, zeroes, trims and flush (the concurrency rules
 * are in vmdk.c).
 */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "vmdk.h"
#include "vmdk_int.h"
#include "util/checked.h"
#include "util/endian.h"
#include "util/log.h"
#include "util/grow.h"

/* --- Writing ----------------------------------------------------------- */

/* The first modification of an image changes its descriptor's CID, as
 * VMware and QEMU do (children of this image then see that it changed).
 */
static int
update_cid (struct vmdk *v)
{
  if (__atomic_load_n (&v->cid_done, __ATOMIC_ACQUIRE))
    return 0;
  int r = 0;
  pthread_mutex_lock (&v->cid_lock);
  if (v->cid_done || !v->desc_file || !v->desc_text)
    goto done;
  /* The CID= line (at the start of a line). */
  char *p = v->desc_text, *line = NULL;
  for (;;) {
    char *q = strstr (p, "CID=");
    if (!q)
      break;
    if (q == v->desc_text || q[-1] == '\n') {
      line = q;
      break;
    }
    p = q + 4;
  }
  if (!line)
    goto done;
  char *val = line + 4, *eol = val;
  while (*eol && *eol != '\n' && *eol != '\r')
    eol++;
  uint32_t cid;
  struct timespec ts;
  clock_gettime (CLOCK_REALTIME, &ts);
  cid = (uint32_t) (ts.tv_nsec ^ ts.tv_sec ^ (uintptr_t) v);
  if (cid == v->cid || cid == 0xffffffff)
    cid ^= 0x5a5a5a5a;
  char hex[9];
  snprintf (hex, sizeof hex, "%08" PRIx32, cid);
  size_t oldv = eol - val, oldlen = v->desc_len;
  size_t newlen = oldlen - oldv + 8;
  char *t = malloc (newlen + 1 + oldv);
  if (!t) {
    kvm_fail (ENOMEM, "%s: out of memory", v->path);
    r = -1;
    goto done;
  }
  memcpy (t, v->desc_text, val - v->desc_text);
  memcpy (t + (val - v->desc_text), hex, 8);
  memcpy (t + (val - v->desc_text) + 8, eol, oldlen - (eol - v->desc_text));
  t[newlen] = 0;
  /* A shorter text is padded: with NULs inside a sparse extent, with
   * blank lines in a descriptor file.
   */
  size_t wlen = newlen;
  if (newlen < oldlen) {
    memset (t + newlen, v->desc_max ? 0 : '\n', oldlen - newlen);
    wlen = oldlen;
  }
  /* Inside a sparse extent the text ends at a NUL (or at the end of its
   * area): write one after it, else a longer text would run on into
   * whatever followed the old one's NUL.
   */
  if (v->desc_max && wlen < v->desc_max)
    t[wlen++] = 0;
  if (v->desc_max && wlen > v->desc_max) {
    kvm_debug ("%s: no room to update the descriptor's CID", v->path);
    free (t);
    goto done;
  }
  if (bdev_pwrite (v->desc_file, t, wlen, v->desc_off, 0) == -1) {
    free (t);
    r = -1;
    goto done;
  }
  t[newlen] = 0;
  free (v->desc_text);
  v->desc_text = t;
  v->desc_len = newlen;
  v->cid = cid;
 done:
  if (r == 0)
    __atomic_store_n (&v->cid_done, true, __ATOMIC_RELEASE);
  pthread_mutex_unlock (&v->cid_lock);
  return r;
}

static int
write_le32 (struct extent *e, uint64_t off, const uint32_t *vals, size_t n)
{
  uint32_t tmp[64];
  while (n) {
    size_t k = n < 64 ? n : 64;
    for (size_t i = 0; i < k; i++)
      tmp[i] = htole32 (vals[i]);
    if (bdev_pwrite (e->file, tmp, k * 4, off, 0) == -1)
      return -1;
    vals += k;
    off += k * 4;
    n -= k;
  }
  return 0;
}

/* A write of [OFF, OFF+LEN) into sparse extent E's file, for a grain or a
 * grain table entry, must not hit the header, the embedded descriptor or
 * the grain directories: a hostile or corrupt grain table (or redundant
 * directory) can point there.  (QEMU writes there, and then cannot open
 * the image.)
 */
static int
check_no_overlap (struct vmdk *v, struct extent *e, uint64_t off,
                  uint64_t len, const char *what)
{
  uint64_t end, gdbytes = e->ngd * 4;
  if (!ck_add64 (off, len, &end) || vmdk_hits_head (e, off, end) ||
      vmdk_overlaps (off, end, e->gd_off, gdbytes) ||
      (e->has_rgd && vmdk_overlaps (off, end, e->rgd_off, gdbytes))) {
    kvm_fail (EIO, "%s: corrupt image: %s at byte %" PRIu64 " of %s "
              "overlaps its header, descriptor or grain directory; refused",
              v->path, what, off, e->file->name);
    return -1;
  }
  return 0;
}

/* The grain table named at open that [OFF, END) meets, if any (-1). */
static int64_t
hits_grain_table (const struct extent *e, uint64_t off, uint64_t end)
{
  uint64_t gtbytes = (uint64_t) e->gt_entries * 4;
  size_t lo = 0, hi = e->ngt_at;
  while (lo < hi) {             /* the first table ending after OFF */
    size_t mid = lo + (hi - lo) / 2;
    if (e->gt_at[mid] + gtbytes <= off)
      lo = mid + 1;
    else
      hi = mid;
  }
  return lo < e->ngt_at && e->gt_at[lo] < end ? (int64_t) e->gt_at[lo] : -1;
}

/* The file's last grain, cut short by the end of the file as opened (at
 * OPEN_END, ending at GEND past it), is written: new grains and tables
 * must go after it from now on.  Refused if some were already allocated
 * at the end of the file, in what is now that grain's tail.
 */
static int
claim_cut_short_grain (struct vmdk *v, struct extent *e, uint64_t gend)
{
  int r = 0;
  pthread_mutex_lock (&e->lock);
  if (!e->file->growable ||
      (e->alloc_end > e->claimed_end && e->claimed_end < gend)) {
    kvm_fail (EIO, "%s: corrupt image: the last grain of %s runs past the end "
              "of the file%s; refused", v->path, e->file->name,
              e->file->growable ? ", into grains allocated since" : "");
    r = -1;
  }
  else if (e->alloc_end < gend) {
    e->claimed_end = gend;
    __atomic_store_n (&e->alloc_end, gend, __ATOMIC_RELEASE);
  }
  pthread_mutex_unlock (&e->lock);
  return r;
}

/* [PHYS, PHYS+LEN), in a run of data grains contiguous in the file from
 * the grain at GRAIN0, that may be written in place: in the file, and
 * clear of the extent's metadata: its header, descriptor and directories,
 * the grain tables named at open (tables allocated since lie past
 * open_end, where no entry read from the file points).  A grain that the
 * end of the file as opened cuts short grows the file when written
 * (claim_cut_short_grain).
 */
static int
check_grain_run (struct vmdk *v, struct extent *e, uint64_t grain0,
                 uint64_t phys, uint64_t len)
{
  if (vmdk_check_data_run (v, e, phys, len) == -1 ||
      check_no_overlap (v, e, phys, len, "data grain") == -1)
    return -1;
  int64_t gt = hits_grain_table (e, phys, phys + len);
  if (gt >= 0) {
    kvm_fail (EIO, "%s: corrupt image: data grain at byte %" PRIu64 " of %s "
              "overlaps the grain table at byte %" PRId64 "; refused",
              v->path, phys, e->file->name, gt);
    return -1;
  }
  if (grain0 < e->open_end && phys + len > e->open_end &&
      (e->open_end - grain0) % e->grain) {
    uint64_t n = (e->open_end - grain0 + e->grain - 1) / e->grain;
    return claim_cut_short_grain (v, e, grain0 + n * e->grain);
  }
  return 0;
}

/* Note that entries [LO, HI) of grain table GDI, and its directory
 * entries if GD, changed in memory.  Under e->lock.
 */
static int
mark_dirty (struct vmdk *v, struct extent *e, uint64_t gdi, uint32_t lo,
            uint32_t hi, bool gd)
{
  if (!e->dirty_at &&
      !(e->dirty_at = calloc (e->ngd ? e->ngd : 1, sizeof *e->dirty_at))) {
    kvm_fail (ENOMEM, "%s: out of memory", v->path);
    return -1;
  }
  struct vmdk_dirty *d;
  if (e->dirty_at[gdi])
    d = &e->dirty[e->dirty_at[gdi] - 1];
  else {
    if (GROW_FOR (e->dirty, e->ndirty, e->capdirty, 16) == -1) {
      kvm_fail (ENOMEM, "%s: out of memory", v->path);
      return -1;
    }
    d = &e->dirty[e->ndirty++];
    *d = (struct vmdk_dirty) { .gdi = gdi, .lo = lo, .hi = lo };
    e->dirty_at[gdi] = e->ndirty;
  }
  if (hi > lo) {
    if (d->hi == d->lo)
      d->lo = lo, d->hi = hi;
    else {
      if (lo < d->lo)
        d->lo = lo;
      if (hi > d->hi)
        d->hi = hi;
    }
  }
  d->gd |= gd;
  return 0;
}

/* Write what mark_dirty noted, after a flush of the file has made the
 * data (and the new tables) those entries name durable: a disk that
 * loses unflushed writes in any order then never keeps an entry without
 * its data.  Under e->lock.
 */
static int
write_dirty (struct extent *e)
{
  if (!e->ndirty)
    return 0;
  if (bdev_flush (e->file) == -1)
    return -1;
  for (size_t i = 0; i < e->ndirty; i++) {
    struct vmdk_dirty *d = &e->dirty[i];
    if (d->hi > d->lo) {
      /* Published (readers publish tables with a CAS): load it so. */
      const uint32_t *gt = __atomic_load_n (&e->gt[d->gdi], __ATOMIC_ACQUIRE);
      uint32_t n = d->hi - d->lo;
      uint64_t p = (uint64_t) e->gd[d->gdi] * SECTOR + d->lo * 4;
      if (write_le32 (e, p, gt + d->lo, n) == -1)
        return -1;
      if (e->has_rgd && e->rgd && e->rgd[d->gdi]) {
        uint64_t rp = (uint64_t) e->rgd[d->gdi] * SECTOR + d->lo * 4;
        if (ck_range_within (rp, n * 4, vmdk_file_end (e)) &&
            write_le32 (e, rp, gt + d->lo, n) == -1)
          return -1;
      }
    }
    if (d->gd) {
      uint32_t sec = e->gd[d->gdi];
      if (write_le32 (e, e->gd_off + d->gdi * 4, &sec, 1) == -1)
        return -1;
      if (e->has_rgd && e->rgd) {
        uint32_t rsec = e->rgd[d->gdi];
        if (write_le32 (e, e->rgd_off + d->gdi * 4, &rsec, 1) == -1)
          return -1;
      }
    }
  }
  for (size_t i = 0; i < e->ndirty; i++)
    e->dirty_at[e->dirty[i].gdi] = 0;
  e->ndirty = 0;
  return 0;
}

/* Allocate grain table GDI (and its redundant copy): zeroed tables at the
 * end of the file now; the directory entries at the next flush
 * (write_dirty).  Under e->lock.
 */
static int
alloc_gt (struct vmdk *v, struct extent *e, uint64_t gdi, uint32_t **gtp)
{
  uint64_t bytes, p, r = 0, end;
  if (!ck_round_up64 ((uint64_t) e->gt_entries * 4, SECTOR, &bytes) ||
      !ck_round_up64 (e->alloc_end, SECTOR, &p) ||
      !ck_add64 (p, bytes * (e->has_rgd ? 2 : 1), &end) ||
      end / SECTOR > UINT32_MAX) {
    kvm_fail (ENOSPC, "%s: extent file %s is full (sector numbers are 32 "
              "bits)", v->path, e->file->name);
    return -1;
  }
  if (!vmdk_gt_charge (v, bytes))
    return -1;
  uint32_t *gt = calloc (1, bytes);
  if (!gt) {
    vmdk_gt_release (v, bytes);
    kvm_fail (ENOMEM, "%s: out of memory", v->path);
    return -1;
  }
  if (bdev_pwrite (e->file, gt, bytes, p, 0) == -1)
    goto fail;
  if (e->has_rgd) {
    r = p + bytes;
    if (bdev_pwrite (e->file, gt, bytes, r, 0) == -1)
      goto fail;
  }
  __atomic_store_n (&e->alloc_end, end, __ATOMIC_RELEASE);
  uint32_t sec = p / SECTOR, rsec = r / SECTOR;
  if (mark_dirty (v, e, gdi, 0, 0, true) == -1)
    goto fail;
  if (e->rgd)
    e->rgd[gdi] = rsec;
  gt = vmdk_gt_publish (v, e, gdi, gt, bytes);
  __atomic_store_n (&e->gd[gdi], sec, __ATOMIC_RELEASE);
  *gtp = gt;
  return 0;
 fail:
  free (gt);
  vmdk_gt_release (v, bytes);
  return -1;
}

/* Set N consecutive entries of grain table GDI from IDX to VALS, in
 * memory; on disk (primary, then redundant) at the next flush
 * (write_dirty).  Under e->lock.
 */
static int
set_gtes (struct vmdk *v, struct extent *e, uint64_t gdi, uint32_t *gt,
          uint32_t idx, const uint32_t *vals, size_t n)
{
  uint64_t p = (uint64_t) e->gd[gdi] * SECTOR + idx * 4;
  uint64_t rp = 0;
  bool redundant = e->has_rgd && e->rgd && e->rgd[gdi];
  if (redundant) {
    rp = (uint64_t) e->rgd[gdi] * SECTOR + idx * 4;
    redundant = ck_range_within (rp, n * 4, vmdk_file_end (e));
  }
  if (check_no_overlap (v, e, p, n * 4, "grain table") == -1 ||
      (redundant &&
       check_no_overlap (v, e, rp, n * 4, "redundant grain table") == -1))
    return -1;
  if (mark_dirty (v, e, gdi, idx, idx + n, false) == -1)
    return -1;
  for (size_t i = 0; i < n; i++)
    __atomic_store_n (&gt[idx + i], vals[i], __ATOMIC_RELEASE);
  return 0;
}

/* Under e->lock: the grain table of GI, allocated if missing. */
static int
gt_for_write (struct vmdk *v, struct extent *e, uint64_t gi, uint32_t **gtp)
{
  uint64_t gdi = gi / e->gt_entries;
  if (gdi >= e->ngd) {
    kvm_fail (EIO, "%s: grain %" PRIu64 " is beyond the grain directory of %s",
              v->path, gi, e->file->name);
    return -1;
  }
  if (vmdk_get_gt (v, e, gdi, gtp) == -1)
    return -1;
  if (!*gtp)
    return alloc_gt (v, e, gdi, gtp);
  return 0;
}

/* Write into grains that are not allocated yet, starting at extent offset
 * OFF: either one grain (partially covered: its old content is read from
 * below and merged) or a run of wholly covered grains of one grain table,
 * written contiguously in one request.  *DONE: bytes consumed.
 */
static int
alloc_write (struct vmdk *v, struct extent *e, const uint8_t *buf,
             uint64_t count, uint64_t off, uint64_t *done)
{
  uint64_t gi = off >> e->grain_shift, in = off & (e->grain - 1);
  uint32_t *gt, gte;
  uint8_t *gbuf = NULL;
  int r = -1;

  pthread_mutex_lock (&e->lock);
  if (vmdk_get_gte (v, e, gi, &gte) == -1)
    goto out;
  if (vmdk_grain_state (e, gte) == G_DATA) {
    /* Someone allocated it meanwhile. */
    uint64_t n = e->grain - in < count ? e->grain - in : count;
    uint64_t phys = (uint64_t) gte * SECTOR;
    pthread_mutex_unlock (&e->lock);
    *done = n;
    if (check_grain_run (v, e, phys, phys, e->grain) == -1)
      return -1;
    return bdev_pwrite (e->file, buf, n, phys + in, 0);
  }
  if (gt_for_write (v, e, gi, &gt) == -1)
    goto out;

  uint32_t idx = gi % e->gt_entries;
  size_t k = 1;
  const uint8_t *src = buf;
  if (in == 0 && count >= e->grain) {
    /* Whole grains: as many as are unallocated in this table. */
    while (k < 64 && idx + k < e->gt_entries &&
           (k + 1) * e->grain <= count &&
           vmdk_grain_state (e, __atomic_load_n (&gt[idx + k],
                                                 __ATOMIC_ACQUIRE)) != G_DATA)
      k++;
    *done = k * e->grain;
  }
  else {
    uint64_t n = e->grain - in < count ? e->grain - in : count;
    gbuf = malloc (e->grain);
    if (!gbuf) {
      kvm_fail (ENOMEM, "%s: out of memory", v->path);
      goto out;
    }
    if (vmdk_grain_state (e, gte) == G_ZERO)
      memset (gbuf, 0, e->grain);
    else if (vmdk_read_below (v, gbuf, e->grain,
                              e->start + (gi << e->grain_shift)) == -1)
      goto out;
    memcpy (gbuf + in, buf, n);
    src = gbuf;
    *done = n;
  }

  uint64_t p, end;
  if (!ck_round_up64 (e->alloc_end, SECTOR, &p) ||
      !ck_add64 (p, k * e->grain, &end) || end / SECTOR > UINT32_MAX) {
    kvm_fail (ENOSPC, "%s: extent file %s is full (sector numbers are 32 "
              "bits)", v->path, e->file->name);
    goto out;
  }
  /* Data first, then the entries that point at it. */
  if (bdev_pwrite (e->file, src, k * e->grain, p, 0) == -1)
    goto out;
  __atomic_store_n (&e->alloc_end, end, __ATOMIC_RELEASE);
  uint32_t vals[64];
  for (size_t i = 0; i < k; i++)
    vals[i] = p / SECTOR + i * (e->grain / SECTOR);
  r = set_gtes (v, e, gi / e->gt_entries, gt, idx, vals, k);
 out:
  pthread_mutex_unlock (&e->lock);
  free (gbuf);
  return r;
}

static int
sparse_write (struct vmdk *v, struct extent *e, const uint8_t *buf,
              uint64_t count, uint64_t off)
{
  if (e->readonly) {
    kvm_fail (EROFS, "%s: extent %s is read-only (%s)", v->path,
              e->file->name,
              e->compressed ? "compressed grains: streamOptimized images "
                              "cannot be written"
              : e->cowd ? "VMFSSPARSE extents are read-only"
              : e->se ? "SESPARSE extents have no write support"
              : "version 3 sparse extents are read-only");
    return -1;
  }
  while (count) {
    enum grain_state st;
    uint64_t len, phys, done;
    if (vmdk_sparse_run (v, e, off, count, &st, &len, &phys) == -1)
      return -1;
    if (st == G_DATA) {
      if (check_grain_run (v, e, phys - (off & (e->grain - 1)), phys,
                           len) == -1 ||
          bdev_pwrite (e->file, buf, len, phys, 0) == -1)
        return -1;
      done = len;
    }
    else if (alloc_write (v, e, buf, count, off, &done) == -1)
      return -1;
    buf += done;
    off += done;
    count -= done;
  }
  return 0;
}

static int
check_extent_writable (struct vmdk *v, struct extent *e)
{
  if (e->kind == EK_ZERO) {
    kvm_fail (EROFS, "%s: cannot write into a ZERO extent", v->path);
    return -1;
  }
  return 0;
}

int
vmdk_pwrite (struct bdev *bd, const void *vbuf, size_t count,
             uint64_t offset, uint32_t flags)
{
  struct vmdk *v = (struct vmdk *) bd;
  const uint8_t *buf = vbuf;
  if (update_cid (v) == -1)
    return -1;
  while (count) {
    struct extent *e = vmdk_find_extent (v, offset);
    uint64_t rel = offset - e->start;
    uint64_t n = e->size - rel < count ? e->size - rel : count;
    int r;
    if (check_extent_writable (v, e) == -1)
      return -1;
    if (e->kind == EK_FLAT)
      r = bdev_pwrite (e->file, buf, n, e->flat_off + rel, 0);
    else
      r = sparse_write (v, e, buf, n, rel);
    if (r == -1)
      return -1;
    buf += n;
    offset += n;
    count -= n;
  }
  (void) flags;                 /* FUA: bdev_pwrite flushes afterwards */
  return 0;
}

static int
write_zeroes (struct vmdk *v, struct extent *e, uint64_t count, uint64_t off)
{
  static const uint8_t zeroes[65536];
  while (count) {
    uint64_t n = count < sizeof zeroes ? count : sizeof zeroes;
    if (sparse_write (v, e, zeroes, n, off) == -1)
      return -1;
    off += n;
    count -= n;
  }
  return 0;
}

/* Zero (TRIM false) or discard (TRIM true) a range of a sparse extent.
 * Whole grains become zeroed-grain entries when the extent has them, or
 * unallocated when nothing lies below; otherwise zeroes are written.
 * A discard only ever changes whole grains.
 */
/* Zero or trim, in place, the whole data grain at PHYS.  A sparse extent
 * has no free list: a grain taken out of its table is never allocated
 * again, so a guest that trims and rewrites the same range would grow the
 * file by a grain each time, without bound.  The grain stays mapped, and
 * its bytes in the file are zeroed (a hole where the file can punch one)
 * or trimmed.
 */
static int
discard_in_place (struct vmdk *v, struct extent *e, uint64_t phys, bool trim)
{
  if (check_grain_run (v, e, phys, phys, e->grain) == -1)
    return -1;
  return bdev_discard_within (e->file, e->grain, phys, trim,
                              trim ? 0 : BDEV_MAY_TRIM);
}

static int
sparse_zero (struct vmdk *v, struct extent *e, uint64_t count, uint64_t off,
             uint32_t flags, bool trim)
{
  if (e->readonly) {
    if (trim)
      return 0;
    return sparse_write (v, e, NULL, count, off);       /* reports EROFS */
  }
  bool below = v->parent != NULL;
  while (count) {
    uint64_t gi = off >> e->grain_shift, in = off & (e->grain - 1);
    uint64_t n = e->grain - in < count ? e->grain - in : count;
    uint32_t gte;
    if (vmdk_get_gte (v, e, gi, &gte) == -1)
      return -1;
    enum grain_state st = vmdk_grain_state (e, gte);
    bool whole = n == e->grain;
    bool reads_zero = st == G_ZERO || (st == G_UNALLOC && !below);

    if (reads_zero && !(trim && st == G_ZERO && !below && whole))
      ;                         /* already zero */
    else if (whole && st == G_DATA &&
             (trim || ((flags & BDEV_MAY_TRIM) &&
                       !(flags & BDEV_FAST_ZERO)))) {
      if (discard_in_place (v, e, (uint64_t) gte * SECTOR, trim) == -1)
        return -1;
    }
    else if (whole && (trim || (flags & BDEV_MAY_TRIM) || st != G_DATA) &&
             (e->zero_grain || !below)) {
      uint32_t target = e->zero_grain ? GTE_ZERO : GTE_UNALLOC;
      if (trim && !below)
        target = GTE_UNALLOC;
      uint32_t *gt;
      pthread_mutex_lock (&e->lock);
      int r = 0;
      if (target == GTE_UNALLOC &&
          (gi / e->gt_entries >= e->ngd ||
           __atomic_load_n (&e->gd[gi / e->gt_entries],
                            __ATOMIC_ACQUIRE) == 0))
        ;                       /* no table: already unallocated */
      else if ((r = gt_for_write (v, e, gi, &gt)) == 0)
        r = set_gtes (v, e, gi / e->gt_entries, gt, gi % e->gt_entries,
                      &target, 1);
      pthread_mutex_unlock (&e->lock);
      if (r == -1)
        return -1;
    }
    else if (!trim && write_zeroes (v, e, n, off) == -1)
      return -1;
    off += n;
    count -= n;
  }
  return 0;
}

static int
zero_or_trim (struct bdev *bd, uint64_t count, uint64_t offset,
              uint32_t flags, bool trim)
{
  struct vmdk *v = (struct vmdk *) bd;
  if (update_cid (v) == -1)
    return -1;
  while (count) {
    struct extent *e = vmdk_find_extent (v, offset);
    uint64_t rel = offset - e->start;
    uint64_t n = e->size - rel < count ? e->size - rel : count;
    int r = 0;
    switch (e->kind) {
    case EK_ZERO:
      break;
    case EK_FLAT:
      if (!trim)
        r = bdev_zero (e->file, n, e->flat_off + rel,
                       flags & ~(BDEV_FUA | BDEV_FAST_ZERO));
      else if (e->file->ops->trim)
        r = bdev_trim (e->file, n, e->flat_off + rel, 0);
      break;
    case EK_SPARSE:
      r = sparse_zero (v, e, n, rel, flags, trim);
      break;
    }
    if (r == -1)
      return -1;
    offset += n;
    count -= n;
  }
  return 0;                     /* FUA: the bdev_* wrapper flushes */
}

int
vmdk_zero (struct bdev *bd, uint64_t count, uint64_t offset, uint32_t flags)
{
  if (flags & BDEV_FAST_ZERO) {
    errno = ENOTSUP;
    return -1;
  }
  return zero_or_trim (bd, count, offset, flags, false);
}

int
vmdk_trim (struct bdev *bd, uint64_t count, uint64_t offset, uint32_t flags)
{
  return zero_or_trim (bd, count, offset, flags, true);
}

int
vmdk_flush (struct bdev *bd)
{
  struct vmdk *v = (struct vmdk *) bd;
  struct bdev *last = NULL;
  /* The table entries first (each after its data), then every file. */
  for (size_t i = 0; i < v->next; i++) {
    struct extent *e = &v->ext[i];
    if (e->kind == EK_SPARSE && e->file && !e->file->readonly) {
      pthread_mutex_lock (&e->lock);
      int r = write_dirty (e);
      pthread_mutex_unlock (&e->lock);
      if (r == -1)
        return -1;
    }
  }
  for (size_t i = 0; i < v->next; i++) {
    struct extent *e = &v->ext[i];
    if (!e->file || e->file == last || e->file->readonly)
      continue;
    last = e->file;
    if (bdev_flush (e->file) == -1)
      return -1;
  }
  if (v->desc_file && v->desc_file != last && !v->desc_file->readonly &&
      bdev_flush (v->desc_file) == -1)
    return -1;
  return 0;
}
