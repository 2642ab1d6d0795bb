/* SPDX-License-Identifier: BSD-3-Clause */
/* VHDX engine: open (file identifier, BAT, parent; the headers, region
 * tables and metadata are read by vhdx_meta.c), close, the container as
 * the log replay left it.  Reads, writes, zero/trim, extents and flush
 * are in vhdx_io.c.
 *
 * Concurrency: reads take no lock.  A BAT entry changes only under
 * v->lock and is read with atomic loads; a payload block is published
 * (its BAT entry set) only after its data is in the file, so a reader
 * sees either the old state or the complete new block.
 *
 * Crash safety of writes (the ordering qcow2 uses, instead of the VHDX
 * log): a new payload block is written at the 1 MiB-aligned end of the
 * file and its BAT entry changed in memory only.  vhdx_flush() first
 * flushes the file (all block data durable), then writes the changed BAT
 * sectors, then flushes again.  After a crash each on-disk BAT entry is
 * either its old value (the write was never flushed, so nothing was
 * promised) or points to a block whose data was durable before the entry
 * was written.  A partially present block is completed (or zeroed) in
 * place instead: until its new entry is written, the old entry and the
 * sector bitmap still hide the sectors filled from the parent, and its
 * present sectors hold their old data or that of the unflushed request.
 * BAT entries are 8-byte aligned within 4 KiB sectors, so no entry is
 * torn.  Freed blocks (ZERO/UNMAPPED) are never reused, so a
 * stale entry can never expose another block's data.  The log GUID stays
 * zero, so Hyper-V and QEMU open such a file without replay.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include "bdev/formats.h"
#include "util/checked.h"
#include "util/confine.h"
#include "util/endian.h"
#include "util/log.h"
#include "vhdx.h"
#include "vhdx_int.h"

const uint8_t vhdx_guid_bat[16] =
  VHDX_GUID (0x2DC27766, 0xF623, 0x4200,
             0x9D, 0x64, 0x11, 0x5E, 0x9B, 0xFD, 0x4A, 0x08);
const uint8_t vhdx_guid_metadata[16] =
  VHDX_GUID (0x8B7CA206, 0x4790, 0x4B9A,
             0xB8, 0xFE, 0x57, 0x5F, 0x05, 0x0F, 0x88, 0x6E);
const uint8_t vhdx_guid_file_params[16] =
  VHDX_GUID (0xCAA16737, 0xFA36, 0x4D43,
             0xB3, 0xB6, 0x33, 0xF0, 0xAA, 0x44, 0xE7, 0x6B);
const uint8_t vhdx_guid_disk_size[16] =
  VHDX_GUID (0x2FA54224, 0xCD1B, 0x4876,
             0xB2, 0x11, 0x5D, 0xBE, 0xD8, 0x3B, 0xF4, 0xB8);
const uint8_t vhdx_guid_page83[16] =
  VHDX_GUID (0xBECA12AB, 0xB2E6, 0x4523,
             0x93, 0xEF, 0xC3, 0x09, 0xE0, 0x00, 0xC7, 0x46);
const uint8_t vhdx_guid_lss[16] =
  VHDX_GUID (0x8141BF1D, 0xA96F, 0x4709,
             0xBA, 0x47, 0xF2, 0x33, 0xA8, 0xFA, 0xAB, 0x5F);
const uint8_t vhdx_guid_pss[16] =
  VHDX_GUID (0xCDA348C7, 0x445D, 0x4471,
             0x9C, 0xC9, 0xE9, 0x88, 0x52, 0x51, 0xC5, 0x56);
const uint8_t vhdx_guid_parent_locator[16] =
  VHDX_GUID (0xA8D35F2D, 0xB30B, 0x454D,
             0xAB, 0xF7, 0xD3, 0xD8, 0x48, 0x34, 0xAB, 0x0C);
const uint8_t vhdx_guid_locator_type[16] =
  VHDX_GUID (0xB04AEFB7, 0xD19E, 0x4A81,
             0xB7, 0x89, 0x25, 0xB8, 0xE9, 0x44, 0x59, 0x13);

static const struct bdev_ops vhdx_ops;

/* The largest BAT we hold in memory (entries): 64 TiB in 1 MiB blocks. */
#define MAX_BAT_ENTRIES (UINT64_C (1) << 26)

bool
vhdx_probe (const void *buf, size_t len)
{
  return len >= 8 && memcmp (buf, "vhdxfile", 8) == 0;
}

bool
vhdx_is (struct bdev *bd)
{
  return bd && bd->ops == &vhdx_ops;
}

void
vhdx_guid_str (const uint8_t g[16], char out[39])
{
  snprintf (out, 39,
            "{%08" PRIX32 "-%04X-%04X-%02X%02X-%02X%02X%02X%02X%02X%02X}",
            load_le32 (g), load_le16 (g + 4), load_le16 (g + 6),
            g[8], g[9], g[10], g[11], g[12], g[13], g[14], g[15]);
}

void
vhdx_new_guid (uint8_t g[16])
{
  size_t got = 0;
  int fd = open ("/dev/urandom", O_RDONLY | O_CLOEXEC);
  if (fd >= 0) {
    while (got < 16) {
      ssize_t r = read (fd, g + got, 16 - got);
      if (r <= 0)
        break;
      got += r;
    }
    close (fd);
  }
  if (got < 16) {
    /* Not cryptographic; only needs to differ from the old GUID. */
    static uint64_t ctr;
    uint64_t a = (uint64_t) time (NULL) ^ ((uint64_t) getpid () << 32);
    uint64_t b = __atomic_add_fetch (&ctr, 1, __ATOMIC_RELAXED) *
      UINT64_C (0x9E3779B97F4A7C15);
    memcpy (g, &a, 8);
    memcpy (g + 8, &b, 8);
  }
  g[7] = (g[7] & 0x0f) | 0x40;  /* version 4 */
  g[8] = (g[8] & 0x3f) | 0x80;
}

/* ---- container reads through the replay overlay ---- */

int
vhdx_file_read (struct vhdx *v, void *buf, size_t n, uint64_t off)
{
  if (bdev_pread_padded (v->file, buf, n, off) == -1)
    return -1;
  struct vhdx_overlay *o = v->ovl;
  uint64_t end = off + n;
  if (!o || end <= o->lo || off >= o->hi)
    return 0;
  for (size_t i = 0; i < o->n; i++) {
    const struct vhdx_ovl_op *op = &o->ops[i];
    uint64_t s = op->off > off ? op->off : off;
    uint64_t e = op->off + op->len < end ? op->off + op->len : end;
    if (s >= e)
      continue;
    if (op->data)
      memcpy ((uint8_t *) buf + (s - off), op->data + (s - op->off), e - s);
    else
      memset ((uint8_t *) buf + (s - off), 0, e - s);
  }
  return 0;
}

/* ---- BAT ---- */

static int
read_bat (struct vhdx *v, uint64_t file_size)
{
  v->chunk_ratio = ((UINT64_C (1) << 23) * v->lss) / v->block_size;
  v->nblocks = div_round_up64 (v->vsize, v->block_size);
  if (v->has_parent) {
    uint64_t nsb = div_round_up64 (v->nblocks, v->chunk_ratio);
    v->nbat = nsb * (v->chunk_ratio + 1);
  }
  else
    v->nbat = v->nblocks + (v->nblocks - 1) / v->chunk_ratio;
  if (v->nbat > MAX_BAT_ENTRIES)
    return kvm_fail (EFBIG, "%s: BAT of %" PRIu64 " entries is too large (the "
                     "limit is %" PRIu64 " entries, %" PRIu64 " MiB)", v->path,
                     v->nbat, MAX_BAT_ENTRIES, MAX_BAT_ENTRIES * 8 >> 20);
  if (v->nbat * 8 > v->bat_len)
    return kvm_fail (EINVAL, "%s: BAT region (%" PRIu64 " bytes) too small "
                     "for %" PRIu64 " entries", v->path, v->bat_len, v->nbat);
  /* The BAT must be in the file: a small hostile file cannot make us
   * allocate a large table.
   */
  if (!ck_range_within (v->bat_off, v->nbat * 8, file_size))
    return kvm_fail (EINVAL, "%s: the BAT (%" PRIu64 " entries at %" PRIu64
                     ") lies past the end of the file (%" PRIu64 " bytes)",
                     v->path, v->nbat, v->bat_off, file_size);
  v->bat = malloc (v->nbat * 8);
  v->bat_dirty = calloc (div_round_up64 (v->nbat * 8, 4096), 1);
  if (!v->bat || !v->bat_dirty)
    return kvm_fail (ENOMEM, "%s: out of memory for the BAT", v->path);
  if (vhdx_file_read (v, v->bat, v->nbat * 8, v->bat_off) == -1)
    return -1;
  /* New blocks go after the last structure in use (not after the end
   * of the container: a container inside an nbdkit export has unused room
   * at its end, and a file may end in blocks leaked by a crash).
   */
  uint64_t used = v->log_off + v->log_len;
  if (v->bat_off + v->bat_len > used)
    used = v->bat_off + v->bat_len;
  if (v->meta_off + v->meta_len > used)
    used = v->meta_off + v->meta_len;
  for (uint64_t i = 0; i < v->nbat; i++) {
    uint64_t e = le64toh (v->bat[i]);
    v->bat[i] = e;
    bool sb = (i % (v->chunk_ratio + 1)) == v->chunk_ratio;
    unsigned st = BAT_STATE (e);
    uint64_t off = BAT_OFFSET (e);
    uint64_t need;
    if (sb) {
      if (st != SB_NOT_PRESENT && st != SB_PRESENT)
        return kvm_fail (EINVAL, "%s: sector bitmap BAT entry %" PRIu64
                         " has state %u", v->path, i, st);
      if (st != SB_PRESENT)
        continue;
      if (!v->has_parent)
        continue;               /* unused in non-differencing disks */
      need = VHDX_MiB;
    }
    else {
      if (st == 4 || st == 5)
        return kvm_fail (EINVAL, "%s: BAT entry %" PRIu64 " has unknown state "
                         "%u", v->path, i, st);
      if (st == PB_PARTIALLY_PRESENT && !v->has_parent)
        return kvm_fail (EINVAL, "%s: BAT entry %" PRIu64 " is partially "
                         "present in a disk without parent", v->path, i);
      if (st != PB_FULLY_PRESENT && st != PB_PARTIALLY_PRESENT)
        continue;
      uint64_t blk = i - i / (v->chunk_ratio + 1);
      uint64_t start = blk * v->block_size;
      need = v->vsize - start < v->block_size ? v->vsize - start
        : v->block_size;
    }
    /* The file must hold the part inside the disk (NEED); the whole
     * block's space (FULL) must not overlap metadata, as in QEMU.
     */
    uint64_t full = sb ? VHDX_MiB : v->block_size;
    if (off < VHDX_MiB || !ck_range_within (off, need, file_size))
      return kvm_fail (EINVAL, "%s: BAT entry %" PRIu64 " points to %" PRIu64
                       "+%" PRIu64 ", past the end of the file (%" PRIu64
                       " bytes) or into the header", v->path, i, off, need,
                       file_size);
    if (vhdx_overlaps (off, full, v->log_off, v->log_len) ||
        vhdx_overlaps (off, full, v->bat_off, v->bat_len) ||
        vhdx_overlaps (off, full, v->meta_off, v->meta_len))
      return kvm_fail (EINVAL, "%s: BAT entry %" PRIu64 " points to %" PRIu64
                       "+%" PRIu64 ", which overlaps the log, the BAT or the "
                       "metadata", v->path, i, off, full);
    if (off + full > used)
      used = off + full;
  }
  v->file_end = (used + VHDX_MiB - 1) & ~(VHDX_MiB - 1);
  return 0;
}

/* ---- parent ---- */

/* "{guid}" comparison, case-insensitive, braces optional. */
static bool
linkage_matches (const char *s, const uint8_t g[16])
{
  char want[39];
  vhdx_guid_str (g, want);
  const char *a = s, *b = want + 1;
  if (*a == '{')
    a++;
  size_t la = strlen (a);
  if (la && a[la - 1] == '}')
    la--;
  return la == 36 && strncasecmp (a, b, 36) == 0;
}

static char *
win_to_posix (const char *p)
{
  char *s = strdup (p);
  if (!s)
    return NULL;
  for (char *c = s; *c; c++)
    if (*c == '\\')
      *c = '/';
  return s;
}

static int
open_parent (struct vhdx *v, const char *path, struct vhdx_locator *l,
             const struct bdev_open_opts *opts, unsigned depth)
{
  const char *ig = bdev_open_opt (opts, "vhdx.ignore-parent-linkage");
  bool ignore = ig && strcmp (ig, "0") != 0 && strcmp (ig, "false") != 0;
  const char *pn = bdev_open_opt (opts, "vhdx.parent");
  struct bdev *p = NULL;

  if (opts->backing) {
    p = opts->backing;
    ((struct bdev_open_opts *) opts)->backing = NULL;
  }
  else if (pn && strcmp (pn, "none") == 0) {
    /* A write would fill the rest of a new block with zeroes instead of
     * the parent's data, for good: read-only.
     */
    if (!v->bd.readonly)
      kvm_debug ("%s: parent=none: serving the image read-only", v->path);
    v->bd.readonly = true;
    return 0;
  }
  else if (opts->no_paths || !path)
    return kvm_fail (EINVAL, "%s: differencing disk: its parent must be given "
                     "explicitly (the image has no directory to find it in)",
                     v->path);
  else {
    /* The spec's order: relative, volume, absolute. */
    const char *cand[3] = { l->relative, l->volume, l->absolute };
    const char *what[3] = { "relative_path", "volume_path",
                            "absolute_win32_path" };
    struct bdev_open_opts po = *opts;
    po.resolved = true;
    po.readonly = true;
    po.backing = NULL;
    for (int i = 0; i < 3 && !p; i++) {
      if (!cand[i])
        continue;
      char *ref = win_to_posix (cand[i]);
      if (!ref)
        return kvm_fail (ENOMEM, "%s: out of memory", v->path);
      char *r = ref;
      if (i == 1) {
        /* \\?\Volume{GUID}\dir\file: no Linux meaning. */
        kvm_debug ("%s: parent volume_path %s cannot be resolved here",
                   v->path, cand[i]);
        free (ref);
        continue;
      }
      if (i == 2 && r[0] && r[1] == ':')
        r += 2;                 /* drive letter */
      char *res = confine_resolve (path, r, opts->allowed_dirs,
                                   opts->allow_any_path);
      free (ref);
      if (!res) {
        kvm_debug ("%s: parent %s %s not usable", v->path, what[i], cand[i]);
        continue;
      }
      p = bdev_open (res, "vhdx", &po, depth + 1);
      free (res);
      if (!p)
        return -1;
    }
    if (!p)
      return kvm_fail (ENOENT, "%s: cannot find the parent disk "
                       "(relative_path %s, absolute_win32_path %s; paths are "
                       "confined to the image's directory unless allowed)",
                       v->path, l->relative ? l->relative : "-",
                       l->absolute ? l->absolute : "-");
  }
  if (vhdx_is (p)) {
    struct vhdx *pv = (struct vhdx *) p;
    const char *lk = v->parent_linkage;
    if (!linkage_matches (lk, pv->data_guid) &&
        !(l->linkage2 && linkage_matches (l->linkage2, pv->data_guid))) {
      char g[39];
      vhdx_guid_str (pv->data_guid, g);
      if (!ignore) {
        kvm_fail (EINVAL, "%s: parent %s has DataWriteGuid %s but the child "
                  "expects parent_linkage %s: the parent changed after the "
                  "child was made (override with ignore-parent-linkage)",
                  v->path, p->name, g, lk);
        bdev_close (p);
        errno = EINVAL;
        return -1;
      }
      kvm_debug ("%s: ignoring parent linkage mismatch", v->path);
    }
  }
  v->parent = p;
  return 0;
}

/* ---- open/close ---- */

static void
vhdx_close (struct bdev *bd)
{
  struct vhdx *v = (struct vhdx *) bd;
  if (v->file && !bd->readonly && v->bat) {
    pthread_mutex_lock (&v->lock);
    if (vhdx_flush_locked (v) == -1)
      kvm_error ("%s: flushing on close failed", v->path);
    pthread_mutex_unlock (&v->lock);
  }
  if (v->parent)
    bdev_close (v->parent);
  if (v->file)
    bdev_close (v->file);
  for (uint64_t i = 0; v->sbm && i < v->nsbm; i++)
    free (v->sbm[i]);
  free (v->sbm);
  free (v->bat);
  free (v->bat_dirty);
  vhdx_overlay_free (v->ovl);
  free (v->parent_linkage);
  free (v->parent_linkage2);
  pthread_mutex_destroy (&v->lock);
  pthread_mutex_destroy (&v->sbm_lock);
  free (v->path);
  bdev_free_common (bd);
}

struct bdev *
vhdx_open_container (struct bdev *container, const char *name,
                     const char *path, const struct bdev_open_opts *opts,
                     unsigned depth)
{
  struct vhdx_locator loc = { 0 };
  struct vhdx *v = (struct vhdx *) bdev_alloc (sizeof *v, &vhdx_ops, name);
  if (!v) {
    bdev_close (container);
    if (opts->backing) {
      bdev_close (opts->backing);
      ((struct bdev_open_opts *) opts)->backing = NULL;
    }
    return NULL;
  }
  pthread_mutex_init (&v->lock, NULL);
  pthread_mutex_init (&v->sbm_lock, NULL);
  v->file = container;
  v->bd.readonly = opts->readonly || container->readonly;
  v->path = strdup (name);
  if (!v->path) {
    kvm_fail (ENOMEM, "%s: out of memory", name);
    goto err;
  }
  uint64_t fsize = container->size;
  if (vhdx_read_headers (v) == -1)
    goto err;
  static const uint8_t zero[16];
  if (memcmp (v->hdr + H_LOG_GUID, zero, 16) != 0) {
    if (vhdx_log_replay (v, fsize) == -1)
      goto err;
    fsize = v->ovl ? v->ovl->size : v->file->size;
  }
  memcpy (v->data_guid, v->hdr + H_DATA_GUID, 16);
  if (vhdx_read_regions (v) == -1 || vhdx_read_metadata (v, &loc) == -1 ||
      read_bat (v, fsize) == -1)
    goto err;
  if (v->has_parent) {
    v->nsbm = div_round_up64 (v->nblocks, v->chunk_ratio);
    v->sbm = calloc (v->nsbm, sizeof *v->sbm);
    if (!v->sbm) {
      kvm_fail (ENOMEM, "%s: out of memory", v->path);
      goto err;
    }
    v->parent_linkage = loc.linkage;
    loc.linkage = NULL;
    if (open_parent (v, path, &loc, opts, depth) == -1)
      goto err;
  }
  else if (opts->backing) {
    bdev_close (opts->backing);
    ((struct bdev_open_opts *) opts)->backing = NULL;
  }
  vhdx_locator_free (&loc);
  v->bd.size = v->vsize;
  v->bd.block_size = v->lss;
  v->bd.caps = BDEV_CAN_EXTENTS | BDEV_CAN_MULTI_CONN;
  if (!v->bd.readonly && !v->leave_alloc)
    v->bd.caps |= BDEV_CAN_TRIM | BDEV_CAN_ZERO;
  kvm_debug ("%s: VHDX %s disk, %" PRIu64 " bytes, block size %" PRIu32
             ", logical sectors %" PRIu32 ", physical %" PRIu32, v->path,
             v->has_parent ? "differencing" : v->leave_alloc ? "fixed"
             : "dynamic", v->vsize, v->block_size, v->lss, v->pss);
  return &v->bd;
 err:
  vhdx_locator_free (&loc);
  if (opts->backing) {
    bdev_close (opts->backing);
    ((struct bdev_open_opts *) opts)->backing = NULL;
  }
  /* Do not flush anything on the way out. */
  free (v->bat);
  v->bat = NULL;
  vhdx_close (&v->bd);
  return NULL;
}

struct bdev *
vhdx_open (const char *path, const struct bdev_open_opts *opts,
           unsigned depth)
{
  struct bdev_open_opts fo = *opts;
  fo.growable = !opts->readonly;
  fo.backing = NULL;
  struct bdev *f = bdev_storage_open (path, &fo);
  if (!f) {
    if (opts->backing) {
      bdev_close (opts->backing);
      ((struct bdev_open_opts *) opts)->backing = NULL;
    }
    return NULL;
  }
  return vhdx_open_container (f, path, path, opts, depth);
}

static const struct bdev_ops vhdx_ops = {
  .format = "vhdx",
  .close = vhdx_close,
  .pread = vhdx_pread,
  .pwrite = vhdx_pwrite,
  .flush = vhdx_flush,
  .trim = vhdx_trim,
  .zero = vhdx_zero,
  .extents = vhdx_extents,
};
