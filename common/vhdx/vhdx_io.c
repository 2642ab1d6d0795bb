/* SPDX-License-Identifier: BSD-3-Clause */
/* VHDX reads, writes, zero/trim, extents and flush over the BAT (see the
 * concurrency and crash-safety rules at the top of vhdx.c).
 */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util/checked.h"
#include "util/endian.h"
#include "util/log.h"
#include "vhdx_int.h"

/* ---- reads ---- */

static inline uint64_t
bat_get (struct vhdx *v, uint64_t i)
{
  return __atomic_load_n (&v->bat[i], __ATOMIC_ACQUIRE);
}

static inline uint64_t
bat_index (struct vhdx *v, uint64_t blk)
{
  return blk + blk / v->chunk_ratio;
}

/* The sector bitmap covering payload block BLK (loaded on demand), or
 * NULL with *ABSENT set if it is not present.
 */
static const uint8_t *
get_sbm (struct vhdx *v, uint64_t blk, bool *absent, int *err)
{
  uint64_t c = blk / v->chunk_ratio;
  uint8_t *m;
  *absent = false;
  *err = 0;
  m = __atomic_load_n (&v->sbm[c], __ATOMIC_ACQUIRE);
  if (m)
    return m;
  uint64_t e = bat_get (v, c * (v->chunk_ratio + 1) + v->chunk_ratio);
  if (BAT_STATE (e) != SB_PRESENT) {
    *absent = true;
    return NULL;
  }
  m = malloc (VHDX_MiB);
  if (!m) {
    *err = ENOMEM;
    return NULL;
  }
  if (vhdx_file_read (v, m, VHDX_MiB, BAT_OFFSET (e)) == -1) {
    *err = errno ? errno : EIO;
    free (m);
    return NULL;
  }
  pthread_mutex_lock (&v->sbm_lock);
  if (v->sbm[c]) {
    free (m);
    m = v->sbm[c];
  }
  else
    __atomic_store_n (&v->sbm[c], m, __ATOMIC_RELEASE);
  pthread_mutex_unlock (&v->sbm_lock);
  return m;
}

static int
read_parent (struct vhdx *v, uint8_t *buf, size_t n, uint64_t off)
{
  if (v->parent)
    return bdev_pread_padded (v->parent, buf, n, off);
  memset (buf, 0, n);
  return 0;
}

/* Read [off, off+n) lying inside payload block BLK whose entry is E. */
static int
read_in_block (struct vhdx *v, uint64_t blk, uint64_t e, uint8_t *buf,
               size_t n, uint64_t off)
{
  uint64_t inblk = off - blk * v->block_size;
  switch (BAT_STATE (e)) {
  case PB_FULLY_PRESENT:
    return vhdx_file_read (v, buf, n, BAT_OFFSET (e) + inblk);
  case PB_NOT_PRESENT:
    if (v->has_parent)
      return read_parent (v, buf, n, off);
    /* fallthrough */
  case PB_UNDEFINED:
  case PB_ZERO:
  case PB_UNMAPPED:
  default:
    memset (buf, 0, n);
    return 0;
  case PB_PARTIALLY_PRESENT: {
    bool absent;
    int err;
    const uint8_t *m = get_sbm (v, blk, &absent, &err);
    if (err) {
      errno = err;
      kvm_error ("%s: reading sector bitmap: %m", v->path);
      return -1;
    }
    /* Sector index within the chunk the bitmap covers. */
    uint64_t cstart = (blk / v->chunk_ratio) * v->chunk_ratio * v->block_size;
    uint64_t pos = off;
    while (pos < off + n) {
      uint64_t s = (pos - cstart) / v->lss;
      bool present = m && ((m[s >> 3] >> (s & 7)) & 1);
      uint64_t end = (pos / v->lss + 1) * v->lss;
      /* Extend the run while the bit stays the same. */
      while (end < off + n) {
        uint64_t s2 = (end - cstart) / v->lss;
        bool p2 = m && ((m[s2 >> 3] >> (s2 & 7)) & 1);
        if (p2 != present)
          break;
        end += v->lss;
      }
      if (end > off + n)
        end = off + n;
      int r = present
        ? vhdx_file_read (v, buf + (pos - off), end - pos,
                          BAT_OFFSET (e) + (pos - blk * v->block_size))
        : read_parent (v, buf + (pos - off), end - pos, pos);
      if (r == -1)
        return -1;
      pos = end;
    }
    return 0;
  }
  }
}

int
vhdx_pread (struct bdev *bd, void *buf, size_t count, uint64_t offset)
{
  struct vhdx *v = (struct vhdx *) bd;
  uint8_t *p = buf;
  while (count) {
    uint64_t blk = offset / v->block_size;
    uint64_t left = (blk + 1) * v->block_size - offset;
    size_t n = count < left ? count : left;
    if (read_in_block (v, blk, bat_get (v, bat_index (v, blk)), p, n,
                       offset) == -1)
      return -1;
    p += n;
    offset += n;
    count -= n;
  }
  return 0;
}

int
vhdx_extents (struct bdev *bd, uint64_t count, uint64_t offset,
              uint32_t flags, bdev_extent_fn fn, void *opaque)
{
  struct vhdx *v = (struct vhdx *) bd;
  uint64_t end = offset + count;
  while (offset < end) {
    uint64_t blk = offset / v->block_size;
    uint64_t e = bat_get (v, bat_index (v, blk));
    uint32_t type;
    switch (BAT_STATE (e)) {
    case PB_FULLY_PRESENT:
    case PB_PARTIALLY_PRESENT:
      type = BDEV_EXTENT_DATA;
      break;
    case PB_NOT_PRESENT:
      type = v->has_parent && v->parent ? BDEV_EXTENT_DATA
        : BDEV_EXTENT_HOLE | BDEV_EXTENT_ZERO;
      break;
    default:
      type = BDEV_EXTENT_HOLE | BDEV_EXTENT_ZERO;
    }
    uint64_t next = (blk + 1) * v->block_size;
    /* Merge following blocks of the same type. */
    while (next < end) {
      uint64_t e2 = bat_get (v, bat_index (v, next / v->block_size));
      uint32_t t2;
      switch (BAT_STATE (e2)) {
      case PB_FULLY_PRESENT: case PB_PARTIALLY_PRESENT:
        t2 = BDEV_EXTENT_DATA; break;
      case PB_NOT_PRESENT:
        t2 = v->has_parent && v->parent ? BDEV_EXTENT_DATA
          : BDEV_EXTENT_HOLE | BDEV_EXTENT_ZERO;
        break;
      default:
        t2 = BDEV_EXTENT_HOLE | BDEV_EXTENT_ZERO;
      }
      if (t2 != type)
        break;
      next += v->block_size;
    }
    if (next > end)
      next = end;
    if (fn (opaque, offset, next - offset, type) == -1)
      return -1;
    if (flags & BDEV_REQ_ONE)
      break;
    offset = next;
  }
  return 0;
}

/* ---- writes ---- */

/* New FileWriteGuid and DataWriteGuid before the first change (v->lock). */
static int
start_writing (struct vhdx *v)
{
  uint8_t fg[16], dg[16];
  if (v->guids_done)
    return 0;
  vhdx_new_guid (fg);
  vhdx_new_guid (dg);
  if (vhdx_write_headers (v, fg, dg, NULL) == -1)
    return -1;
  memcpy (v->data_guid, dg, 16);
  __atomic_store_n (&v->guids_done, true, __ATOMIC_RELEASE);
  return 0;
}

static void
bat_set (struct vhdx *v, uint64_t i, uint64_t e)
{
  __atomic_store_n (&v->bat[i], e, __ATOMIC_RELEASE);
  v->bat_dirty[(i * 8) / 4096] = 1;
  v->any_dirty = true;
}

/* Make payload block BLK fully present (v->lock held), its content the
 * current one with BUF (N bytes at OFF; BUF NULL: zeroes) applied.  A new
 * block goes at the end of the file.  A partially present one is
 * completed where it is: moving it would leave its old space unused for
 * good, and a crash before the BAT is written leaves its bitmap, which
 * hides the sectors filled from the parent.
 */
static int
alloc_block (struct vhdx *v, uint64_t blk, const uint8_t *buf, size_t n,
             uint64_t off, uint64_t e)
{
  uint64_t bi = bat_index (v, blk);
  uint64_t bstart = blk * v->block_size;
  uint64_t blen = v->block_size;
  unsigned st = BAT_STATE (e);
  bool in_place = st == PB_PARTIALLY_PRESENT;
  uint64_t at = in_place ? BAT_OFFSET (e) : v->file_end;
  uint64_t newend = v->file_end;
  uint8_t *tmp = NULL;
  bool need_old = v->has_parent &&
    (st == PB_NOT_PRESENT || st == PB_PARTIALLY_PRESENT);

  if (!in_place && (!ck_add64 (at, blen, &newend) || newend > INT64_MAX))
    return kvm_fail (EFBIG, "%s: file would grow too large", v->path);
  /* Room inside the container may hold stale data: zero it first. */
  if (!need_old && at < v->file->size) {
    uint64_t zl = v->file->size - at < blen ? v->file->size - at : blen;
    if (bdev_zero (v->file, zl, at, BDEV_MAY_TRIM) == -1)
      return -1;
  }
  if (need_old) {
    /* Copy-on-write: the whole block from the parent (and the sectors
     * the child has), so the block becomes fully present.
     */
    uint64_t vlen = v->vsize - bstart < blen ? v->vsize - bstart : blen;
    tmp = calloc (1, blen);
    if (!tmp)
      return kvm_fail (ENOMEM, "%s: out of memory", v->path);
    if (read_in_block (v, blk, e, tmp, vlen, bstart) == -1)
      goto err;
    if (buf)
      memcpy (tmp + (off - bstart), buf, n);
    else
      memset (tmp + (off - bstart), 0, n);
    /* In place, only the part inside the disk (of the last block, that
     * is all the open checked the file holds).
     */
    if (bdev_pwrite (v->file, tmp, in_place ? vlen : blen, at, 0) == -1)
      goto err;
    free (tmp);
    tmp = NULL;
  }
  else {
    /* New space past the end of the file reads as zeroes: write the data
     * and zeroes up to the block's end (at most its last 4 KiB), so the
     * file covers the whole block.  The zeroes start after the data: a
     * first write ending inside the last 4 KiB must not lose its tail.
     */
    static const uint8_t z[4096];
    uint64_t data_end = buf ? off + n - bstart : 0;
    uint64_t zfrom = blen - sizeof z > data_end ? blen - sizeof z : data_end;
    if (buf && bdev_pwrite (v->file, buf, n, at + (off - bstart), 0) == -1)
      return -1;
    if (zfrom < blen &&
        bdev_pwrite (v->file, z, blen - zfrom, at + zfrom, 0) == -1)
      return -1;
  }
  v->file_end = newend;
  bat_set (v, bi, PB_FULLY_PRESENT | at);
  return 0;
 err:
  free (tmp);
  return -1;
}

static int
write_in_block (struct vhdx *v, uint64_t blk, const uint8_t *buf, size_t n,
                uint64_t off)
{
  uint64_t bi = bat_index (v, blk);
  uint64_t e = bat_get (v, bi);
  int r = 0;

  if (BAT_STATE (e) == PB_FULLY_PRESENT &&
      __atomic_load_n (&v->guids_done, __ATOMIC_ACQUIRE))
    return bdev_pwrite (v->file, buf, n,
                        BAT_OFFSET (e) + (off - blk * v->block_size), 0);
  pthread_mutex_lock (&v->lock);
  if (start_writing (v) == -1)
    r = -1;
  else {
    e = bat_get (v, bi);
    if (BAT_STATE (e) == PB_FULLY_PRESENT)
      r = bdev_pwrite (v->file, buf, n,
                       BAT_OFFSET (e) + (off - blk * v->block_size), 0);
    else
      r = alloc_block (v, blk, buf, n, off, e);
  }
  pthread_mutex_unlock (&v->lock);
  return r;
}

int
vhdx_pwrite (struct bdev *bd, const void *buf, size_t count, uint64_t offset,
             uint32_t flags)
{
  struct vhdx *v = (struct vhdx *) bd;
  const uint8_t *p = buf;
  (void) flags;                 /* no native FUA: bdev_pwrite flushes */
  while (count) {
    uint64_t blk = offset / v->block_size;
    uint64_t left = (blk + 1) * v->block_size - offset;
    size_t n = count < left ? count : left;
    if (write_in_block (v, blk, p, n, offset) == -1)
      return -1;
    p += n;
    offset += n;
    count -= n;
  }
  return 0;
}

/* Zero (or trim) [offset, offset+count): whole blocks that hold data are
 * zeroed or trimmed in the file, other whole blocks change state, the
 * parts of others are written with zeroes where they may hold data.
 */
static int
zero_or_trim (struct vhdx *v, uint64_t count, uint64_t offset, bool trim,
              uint32_t flags)
{
  static const uint8_t z[65536];
  while (count) {
    uint64_t blk = offset / v->block_size;
    uint64_t bstart = blk * v->block_size;
    uint64_t left = bstart + v->block_size - offset;
    uint64_t n = count < left ? count : left;
    uint64_t bi = bat_index (v, blk);
    uint64_t e = bat_get (v, bi);
    unsigned st = BAT_STATE (e);
    bool reads_zero = st == PB_ZERO || st == PB_UNMAPPED ||
      st == PB_UNDEFINED || (st == PB_NOT_PRESENT && !v->has_parent);
    bool whole = offset == bstart &&
      (n == v->block_size || offset + n == v->vsize);

    if (reads_zero) {
      /* nothing to do */
    }
    else if (whole && st == PB_FULLY_PRESENT && !v->leave_alloc &&
             !(flags & BDEV_FAST_ZERO)) {
      /* In place: a block whose entry changes to ZERO or UNMAPPED loses
       * its file offset, and its space is never allocated again, so a
       * guest that trims and rewrites would grow the file by a block each
       * time.  Its bytes in the file are trimmed or zeroed instead (a hole
       * where the file can punch one), and the block stays mapped.  Only
       * N bytes: of the last block, the part inside the disk, which is
       * all the open checked the file holds.
       */
      pthread_mutex_lock (&v->lock);
      int r = start_writing (v);
      pthread_mutex_unlock (&v->lock);
      if (r == 0)
        r = bdev_discard_within (v->file, n, BAT_OFFSET (e),
                                 trim, trim ? 0 : flags & BDEV_MAY_TRIM);
      if (r == -1)
        return -1;
    }
    else if (whole && st == PB_PARTIALLY_PRESENT && !v->leave_alloc &&
             !(flags & BDEV_FAST_ZERO)) {
      /* The same for a partially present block, which then becomes fully
       * present: zeroed even for a trim, as its sectors that were not
       * present hold whatever the file had there.  Under the lock, so a
       * write cannot complete the block from the parent in between.
       */
      pthread_mutex_lock (&v->lock);
      int r = start_writing (v);
      bool changed = r == 0 && bat_get (v, bi) != e;
      if (r == 0 && !changed) {
        r = bdev_discard_within (v->file, n, BAT_OFFSET (e), false,
                                 trim ? BDEV_MAY_TRIM : flags & BDEV_MAY_TRIM);
        if (r == 0)
          bat_set (v, bi, PB_FULLY_PRESENT | BAT_OFFSET (e));
      }
      pthread_mutex_unlock (&v->lock);
      if (r == -1)
        return -1;
      if (changed)
        continue;               /* again, with the block's new state */
    }
    else if (whole && !v->leave_alloc) {
      pthread_mutex_lock (&v->lock);
      int r = start_writing (v);
      if (r == 0)
        bat_set (v, bi, trim ? PB_UNMAPPED : PB_ZERO);
      pthread_mutex_unlock (&v->lock);
      if (r == -1)
        return -1;
    }
    else if (trim) {
      /* Part of a block: a trim may leave the data as it is. */
    }
    else {
      if (flags & BDEV_FAST_ZERO) {
        errno = ENOTSUP;
        return -1;
      }
      for (uint64_t done = 0; done < n; ) {
        size_t k = n - done < sizeof z ? n - done : sizeof z;
        if (write_in_block (v, blk, z, k, offset + done) == -1)
          return -1;
        done += k;
      }
    }
    offset += n;
    count -= n;
  }
  return 0;
}

int
vhdx_zero (struct bdev *bd, uint64_t count, uint64_t offset, uint32_t flags)
{
  return zero_or_trim ((struct vhdx *) bd, count, offset, false, flags);
}

int
vhdx_trim (struct bdev *bd, uint64_t count, uint64_t offset, uint32_t flags)
{
  return zero_or_trim ((struct vhdx *) bd, count, offset, true, flags);
}

/* File data first, then the BAT sectors that changed, then the file
 * again (the ordering explained at the top of this file).
 */
int
vhdx_flush_locked (struct vhdx *v)
{
  if (bdev_flush (v->file) == -1)
    return -1;
  if (!v->any_dirty)
    return 0;
  uint64_t nsec = div_round_up64 (v->nbat * 8, 4096);
  uint8_t sec[4096];
  for (uint64_t s = 0; s < nsec; s++) {
    if (!v->bat_dirty[s])
      continue;
    uint64_t first = s * 512, cnt = v->nbat - first < 512 ? v->nbat - first
      : 512;
    memset (sec, 0, sizeof sec);
    /* Entries past the BAT's last one keep what the file has. */
    if (cnt < 512 &&
        bdev_pread_padded (v->file, sec, sizeof sec, v->bat_off + s * 4096)
        == -1)
      return -1;
    for (uint64_t i = 0; i < cnt; i++)
      store_le64 (sec + 8 * i, bat_get (v, first + i));
    if (bdev_pwrite (v->file, sec, sizeof sec, v->bat_off + s * 4096, 0)
        == -1)
      return -1;
    v->bat_dirty[s] = 0;
  }
  v->any_dirty = false;
  return bdev_flush (v->file);
}

int
vhdx_flush (struct bdev *bd)
{
  struct vhdx *v = (struct vhdx *) bd;
  pthread_mutex_lock (&v->lock);
  int r = vhdx_flush_locked (v);
  pthread_mutex_unlock (&v->lock);
  return r;
}
