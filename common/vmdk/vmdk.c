/* SPDX-License-Identifier: BSD-3-Clause */
/* The VMDK engine: opening (descriptor, extents, parent) and closing; the
 * I/O is in vmdk_read.c and vmdk_write.c.
 *
 * Concurrency: extents, grain directories and the descriptor are fixed
 * after open, except for entries that go from "unallocated" to
 * "allocated".  Grain tables are loaded on first use and published with
 * an atomic compare-and-swap; their entries are read and written with
 * atomic loads and stores.  Reads and writes into allocated grains take
 * no lock.  Allocation (a new grain or grain table, zeroed-grain entries)
 * takes the extent's mutex and writes the grain's data before the grain
 * table entry that points at it, the primary entry before the redundant
 * one, and the in-memory entry last.
 */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "vmdk.h"
#include "vmdk_int.h"
#include "util/checked.h"
#include "util/confine.h"
#include "util/endian.h"
#include "util/log.h"
#include "util/sort.h"

#define MAX_GRAIN_SECTORS 4096u         /* 2 MiB */
#define MAX_GTES          4096u
#define MAX_GD_ENTRIES    (1u << 26)

static const struct bdev_ops vmdk_ops;

bool
vmdk_probe (const void *buf, size_t len)
{
  const char *p = buf;
  if (len >= 4 && (load_le32 (buf) == SPARSE_MAGIC ||
                   load_le32 (buf) == COWD_MAGIC))
    return true;
  /* A text descriptor: comment and blank lines, then "key=value" lines,
   * one of them createType.
   */
  static const char hdr[] = "# Disk DescriptorFile";
  if (len >= sizeof hdr - 1 && memcmp (p, hdr, sizeof hdr - 1) == 0)
    return true;
  size_t n = len < 4096 ? len : 4096;
  for (size_t i = 0; i < n; i++) {
    unsigned char c = p[i];
    if (c == 0 || (c < 32 && c != '\n' && c != '\r' && c != '\t'))
      return false;
  }
  for (size_t i = 0; i + 11 <= n; i++)
    if ((i == 0 || p[i - 1] == '\n') && memcmp (p + i, "createType=", 11) == 0)
      return true;
  return false;
}

/* --- Opening ----------------------------------------------------------- */

static void
free_extent (struct extent *e)
{
  if (e->gt) {
    for (uint64_t i = 0; i < e->ngd; i++)
      free (e->gt[i]);
    free (e->gt);
  }
  if (e->se_gt) {
    for (uint64_t i = 0; i < e->ngd; i++)
      free (e->se_gt[i]);
    free (e->se_gt);
  }
  free (e->se_gd);
  free (e->gd);
  free (e->rgd);
  free (e->gt_at);
  free (e->dirty);
  free (e->dirty_at);
  if (e->kind == EK_SPARSE)
    pthread_mutex_destroy (&e->lock);
  if (e->own_file && e->file)
    bdev_close (e->file);
}

static void
vmdk_free (struct vmdk *v)
{
  for (size_t i = 0; i < v->next; i++)
    free_extent (&v->ext[i]);
  free (v->ext);
  if (v->parent)
    bdev_close (v->parent);
  if (v->container)
    bdev_close (v->container);
  free (v->desc_text);
  free (v->path);
  pthread_mutex_destroy (&v->cid_lock);
  bdev_free_common (&v->bd);
}

static void
vmdk_close (struct bdev *bd)
{
  struct vmdk *v = (struct vmdk *) bd;
  if (!bd->readonly && vmdk_flush (bd) == -1)
    kvm_error ("%s: flushing on close failed: writes since the last "
               "successful flush may be lost", v->path);
  vmdk_free (v);
}

/* Read a table of N little-endian u32 at OFF. */
static uint32_t *
read_u32_table (struct vmdk *v, struct extent *e, uint64_t off, uint64_t n,
                const char *what)
{
  size_t bytes;
  if (!ck_size_mul (n, 4, &bytes) || !ck_range_within (off, bytes,
                                                       e->file->size)) {
    kvm_fail (EINVAL, "%s: the %s of %s lies past the end of the file",
              v->path, what, e->file->name);
    return NULL;
  }
  uint32_t *t = malloc (bytes ? bytes : 1);
  if (!t) {
    kvm_fail (ENOMEM, "%s: out of memory", v->path);
    return NULL;
  }
  if (bdev_pread (e->file, t, bytes, off) == -1) {
    free (t);
    return NULL;
  }
  for (uint64_t i = 0; i < n; i++)
    t[i] = le32toh (t[i]);
  return t;
}

/* At open: the grain tables that E's directory names (GD or SE_GD), one
 * table of TBYTES each, plus those of the extents before, must fit in
 * VMDK_MAX_GT_MEM; fail fast rather than when a client has read that far.
 */
static bool
gt_budget_check (struct vmdk *v, struct extent *e, const uint32_t *gd,
                 const uint64_t *se_gd, uint64_t tbytes)
{
  uint64_t n = 0;
  for (uint64_t i = 0; i < e->ngd; i++)
    n += gd ? gd[i] != 0 : se_gd[i] != 0;
  v->gt_open_bytes += n * tbytes;       /* n < 2^26, tbytes <= 32 KiB */
  if (v->gt_open_bytes > VMDK_MAX_GT_MEM) {
    kvm_fail (EFBIG, "%s: the grain directories name %" PRIu64 " MiB of grain "
              "tables (%s: %" PRIu64 " tables), more than the limit of %u MiB",
              v->path, v->gt_open_bytes >> 20, e->file->name, n,
              VMDK_MAX_GT_MEM >> 20);
    return false;
  }
  return true;
}

/* For writing: a redundant grain table that lies past the end of the
 * file (a file cut short) would have its updates, ours or another tool's
 * later, land in grains allocated there: such an extent is only read.
 */
static bool
redundant_tables_inside (struct vmdk *v, struct extent *e)
{
  uint64_t gtbytes = (uint64_t) e->gt_entries * 4;
  for (uint64_t i = 0; i < e->ngd; i++)
    if (e->rgd[i] &&
        !ck_range_within ((uint64_t) e->rgd[i] * SECTOR, gtbytes,
                          e->open_end)) {
      kvm_error ("%s: %s: redundant grain table %" PRIu64 " lies past the "
                 "end of the file: serving it read-only", v->path,
                 e->file->name, i);
      return false;
    }
  return true;
}

/* For writing: the tables of both directories are indexed, so that no
 * grain is written over one (vmdk_write.c).  Tables allocated later lie
 * past open_end, where no entry read from the file can point
 * (GTE_PAST_END).
 */
static int
index_grain_tables (struct vmdk *v, struct extent *e)
{
  e->gt_at = malloc ((e->ngd ? e->ngd : 1) * 2 * sizeof *e->gt_at);
  if (!e->gt_at) {
    kvm_fail (ENOMEM, "%s: out of memory", v->path);
    return -1;
  }
  for (uint64_t i = 0; i < e->ngd; i++) {
    if (e->gd[i])
      e->gt_at[e->ngt_at++] = (uint64_t) e->gd[i] * SECTOR;
    if (e->rgd && e->rgd[i])
      e->gt_at[e->ngt_at++] = (uint64_t) e->rgd[i] * SECTOR;
  }
  qsort (e->gt_at, e->ngt_at, sizeof *e->gt_at, kvm_cmp_u64);
  return 0;
}

/* Set up the grain directory of sparse extent E (capacity CAP bytes). */
static int
setup_gd (struct vmdk *v, struct extent *e, uint64_t cap, bool writable)
{
  uint64_t cover;
  if (!ck_mul64 (e->grain, e->gt_entries, &cover)) {
    kvm_fail (EINVAL, "%s: invalid grain table geometry in %s", v->path,
              e->file->name);
    return -1;
  }
  e->ngd = div_round_up64 (cap, cover);
  if (e->ngd > MAX_GD_ENTRIES) {
    kvm_fail (EINVAL, "%s: %s has an absurd number of grain tables (%" PRIu64
              "); the limit is %u", v->path, e->file->name, e->ngd,
              MAX_GD_ENTRIES);
    return -1;
  }
  e->grain_shift = __builtin_ctzll (e->grain);
  if (!(e->gd = read_u32_table (v, e, e->gd_off, e->ngd, "grain directory")))
    return -1;
  if (!gt_budget_check (v, e, e->gd, NULL, (uint64_t) e->gt_entries * 4))
    return -1;
  /* New grain tables are entered in both directories: a directory in the
   * header, the embedded descriptor or the other directory would be
   * written over.  Such an extent is only read.
   */
  uint64_t gdb = e->ngd * 4, gd_end = e->gd_off + gdb;
  uint64_t rgd_end = e->rgd_off + (e->has_rgd ? gdb : 0);
  if (writable &&
      (vmdk_hits_head (e, e->gd_off, gd_end) ||
       (e->has_rgd &&
        (vmdk_hits_head (e, e->rgd_off, rgd_end) ||
         vmdk_overlaps (e->rgd_off, rgd_end, e->gd_off, gdb))))) {
    kvm_error ("%s: %s: its grain directories overlap the header, the "
               "descriptor or each other: serving it read-only", v->path,
               e->file->name);
    e->readonly = true;
    writable = false;
  }
  if (writable && e->has_rgd &&
      !(e->rgd = read_u32_table (v, e, e->rgd_off, e->ngd,
                                 "redundant grain directory")))
    return -1;
  e->open_end = e->file->size;
  if (writable && e->rgd && !redundant_tables_inside (v, e)) {
    e->readonly = true;
    writable = false;
    free (e->rgd);
    e->rgd = NULL;
  }
  if (writable && index_grain_tables (v, e) == -1)
    return -1;
  e->gt = calloc (e->ngd ? e->ngd : 1, sizeof *e->gt);
  if (!e->gt) {
    kvm_fail (ENOMEM, "%s: out of memory", v->path);
    return -1;
  }
  /* New grains go at the end of the file, rounded up to a whole grain as
   * QEMU does: a file whose last grain is cut short (grains lie at
   * multiples of the grain size in images QEMU writes) then has its new
   * grains after that grain, not in its tail.
   */
  if (!ck_round_up64 (e->file->size, e->grain, &e->alloc_end)) {
    kvm_fail (EINVAL, "%s: file too large", v->path);
    return -1;
  }
  e->claimed_end = e->alloc_end;
  return 0;
}

/* The end of the data of a sparse extent whose file cannot grow (the
 * filter's container, a block device): new grains go there, not at the
 * end of the file.  Loads every grain table.
 */
static int
find_data_end (struct vmdk *v, struct extent *e, uint64_t overhead)
{
  uint64_t end = overhead, t;
  uint64_t gtbytes = (uint64_t) e->gt_entries * 4;
#define UPTO(x) do { if ((x) > end) end = (x); } while (0)
  UPTO (e->gd_off + e->ngd * 4);
  if (e->has_rgd)
    UPTO (e->rgd_off + e->ngd * 4);
  for (uint64_t i = 0; i < e->ngd; i++) {
    uint32_t *gt;
    if (e->rgd && e->rgd[i])
      UPTO ((uint64_t) e->rgd[i] * SECTOR + gtbytes);
    if (vmdk_get_gt (v, e, i, &gt) == -1)
      return -1;
    if (!gt)
      continue;
    UPTO ((uint64_t) e->gd[i] * SECTOR + gtbytes);
    for (uint32_t j = 0; j < e->gt_entries; j++)
      if (vmdk_grain_state (e, gt[j]) == G_DATA && gt[j] != GTE_PAST_END &&
          ck_muladd64 (e->grain, gt[j], SECTOR, &t))
        UPTO (t);
  }
#undef UPTO
  if (!ck_round_up64 (end, SECTOR, &e->alloc_end)) {
    kvm_fail (EINVAL, "%s: invalid metadata", v->path);
    return -1;
  }
  kvm_debug ("%s: %s cannot grow: new grains from byte %" PRIu64, v->path,
             e->file->name, e->alloc_end);
  return 0;
}

/* Parse the hosted sparse header H (one sector) of E's file.  *CAP: its
 * capacity in bytes; *DOFF, *DSIZE: the embedded descriptor (bytes).
 */
static int
parse_sparse (struct vmdk *v, struct extent *e, const uint8_t *hdr,
              bool writable, uint64_t *cap, uint64_t *doff, uint64_t *dsize)
{
  const char *fn = e->file->name;
  uint8_t foot[3 * SECTOR];
  const uint8_t *h = hdr;

  e->kind = EK_SPARSE;
  e->version = load_le32 (h + H_VERSION);
  if (e->version < 1 || e->version > 3) {
    kvm_fail (ENOTSUP, "%s: %s: unsupported sparse extent version %" PRIu32,
              v->path, fn, e->version);
    return -1;
  }
  if (load_le64 (h + H_GD_OFFSET) == GD_AT_END) {
    /* streamOptimized: the real header is in the footer, followed by the
     * end-of-stream marker.
     */
    uint64_t fs = e->file->size;
    if (fs < 4 * SECTOR ||
        bdev_pread (e->file, foot, sizeof foot, (fs & ~(uint64_t) 511)
                    - sizeof foot) == -1 ||
        load_le32 (foot + 12) != MARKER_FOOTER ||
        load_le32 (foot + SECTOR) != SPARSE_MAGIC ||
        load_le32 (foot + 2 * SECTOR + 12) != MARKER_EOS ||
        load_le64 (foot + SECTOR + H_GD_OFFSET) == GD_AT_END) {
      kvm_fail (EINVAL, "%s: %s: the header says the grain directory is in "
                "the footer, but there is no valid footer", v->path, fn);
      return -1;
    }
    h = foot + SECTOR;
  }
  e->flags = load_le32 (h + H_FLAGS);
  uint64_t capacity = load_le64 (h + H_CAPACITY);
  uint64_t grain = load_le64 (h + H_GRAIN);
  uint64_t gd = load_le64 (h + H_GD_OFFSET);
  uint64_t rgd = load_le64 (h + H_RGD_OFFSET);
  e->gt_entries = load_le32 (h + H_NUM_GTES);
  *doff = load_le64 (hdr + H_DESC_OFFSET);
  *dsize = load_le64 (hdr + H_DESC_SIZE);
  if ((e->flags & FLAG_NL_TEST) &&
      memcmp (hdr + H_NL_CHARS, "\n \r\n", 4) != 0) {
    kvm_fail (EINVAL, "%s: %s: the header's newline check failed (the file "
              "was damaged by a text-mode transfer)", v->path, fn);
    return -1;
  }
  e->compressed = (e->flags & FLAG_COMPRESSED) != 0;
  e->markers = (e->flags & FLAG_MARKERS) != 0;
  e->zero_grain = (e->flags & FLAG_ZERO_GRAIN) != 0;
  if (e->compressed && load_le16 (hdr + H_COMPRESS_ALG) != 1) {
    kvm_fail (ENOTSUP, "%s: %s: unknown compression algorithm %u", v->path, fn,
              load_le16 (hdr + H_COMPRESS_ALG));
    return -1;
  }
  if (grain == 0 || grain > MAX_GRAIN_SECTORS || !is_power_of_2 (grain)) {
    kvm_fail (EINVAL, "%s: %s: invalid grain size %" PRIu64 " sectors",
              v->path, fn, grain);
    return -1;
  }
  if (e->gt_entries == 0 || e->gt_entries > MAX_GTES) {
    kvm_fail (EINVAL, "%s: %s: invalid number of grain table entries %" PRIu32,
              v->path, fn, e->gt_entries);
    return -1;
  }
  if (capacity > INT64_MAX / SECTOR) {
    kvm_fail (EINVAL, "%s: %s: capacity of %" PRIu64 " sectors is too large "
              "(the limit is 2^54 sectors, 2^63 bytes)", v->path, fn,
              capacity);
    return -1;
  }
  if (gd > UINT32_MAX ||
      (rgd > UINT32_MAX && (e->flags & FLAG_RGD)) ||
      *doff > UINT32_MAX || *dsize > VMDK_MAX_DESC / SECTOR) {
    kvm_fail (EINVAL, "%s: %s: invalid sparse extent header", v->path, fn);
    return -1;
  }
  e->grain = grain * SECTOR;
  e->gd_off = gd * SECTOR;
  e->has_rgd = (e->flags & FLAG_RGD) && rgd != 0;
  e->rgd_off = e->has_rgd ? rgd * SECTOR : 0;
  *cap = capacity * SECTOR;
  *doff *= SECTOR;
  *dsize *= SECTOR;
  e->desc_off = *doff;
  e->desc_size = *dsize;
  if (e->version == 3 && writable) {
    kvm_debug ("%s: %s: version 3 sparse extent: read-only (as in QEMU)",
               v->path, fn);
    e->readonly = true;
  }
  if (e->compressed)
    e->readonly = true;
  if (setup_gd (v, e, *cap, writable && !e->readonly) == -1)
    return -1;
  if (writable && !e->readonly && !e->file->growable) {
    uint64_t ov = load_le64 (h + H_OVERHEAD);
    if (ov > UINT32_MAX) {
      kvm_fail (EINVAL, "%s: %s: invalid overhead in the header", v->path, fn);
      return -1;
    }
    return find_data_end (v, e, ov * SECTOR);
  }
  return 0;
}

/* A VMFSSPARSE ("COWD") extent: read-only. */
static int
parse_cowd (struct vmdk *v, struct extent *e, const uint8_t *h,
            uint64_t *cap)
{
  const char *fn = e->file->name;
  uint64_t grain = load_le32 (h + C_GRAIN);
  uint64_t gdn = load_le32 (h + C_GD_SIZE);
  e->kind = EK_SPARSE;
  e->cowd = true;
  e->readonly = true;
  e->version = load_le32 (h + C_VERSION);
  e->gt_entries = COWD_GTES;
  if (grain == 0 || grain > MAX_GRAIN_SECTORS || !is_power_of_2 (grain)) {
    kvm_fail (EINVAL, "%s: %s: invalid grain size %" PRIu64 " sectors",
              v->path, fn, grain);
    return -1;
  }
  e->grain = grain * SECTOR;
  e->gd_off = (uint64_t) load_le32 (h + C_GD_OFFSET) * SECTOR;
  *cap = (uint64_t) load_le32 (h + C_CAPACITY) * SECTOR;
  uint64_t cover = e->grain * COWD_GTES;
  uint64_t need = div_round_up64 (*cap, cover);
  if (gdn < need) {
    kvm_fail (EINVAL, "%s: %s: grain directory too small for the capacity",
              v->path, fn);
    return -1;
  }
  return setup_gd (v, e, *cap, false);
}

/* A SESPARSE extent (constant header H, one sector): read-only.  The
 * checks are as strict as QEMU's: the format is not documented, so
 * anything unexpected is refused.
 */
static int
parse_se (struct vmdk *v, struct extent *e, const uint8_t *h, uint64_t *cap)
{
  const char *fn = e->file->name;
  uint64_t f[SE_H_FIELDS];
  for (size_t i = 0; i < SE_H_FIELDS; i++)
    f[i] = load_le64 (h + 8 * i);
  e->kind = EK_SPARSE;
  e->se = true;
  e->readonly = true;
  if (f[SE_H_MAGIC] != SE_CONST_MAGIC) {
    kvm_fail (EINVAL, "%s: extent '%s' is not a SESPARSE extent (bad magic)",
              v->path, fn);
    return -1;
  }
  if (f[SE_H_VERSION] != SE_VERSION || f[SE_H_GRAIN] != SE_GRAIN_SECTORS ||
      f[SE_H_GT_SIZE] != SE_GT_SECTORS || f[SE_H_FLAGS] != 0 ||
      f[6] || f[7] || f[8] || f[9]) {
    kvm_fail (ENOTSUP, "%s: %s: unsupported seSparse header (version 0x%016"
              PRIx64 ", grain %" PRIu64 ", grain table %" PRIu64 " sectors, "
              "flags 0x%" PRIx64 ", or non-zero reserved fields)", v->path, fn,
              f[SE_H_VERSION], f[SE_H_GRAIN], f[SE_H_GT_SIZE], f[SE_H_FLAGS]);
    return -1;
  }
  for (size_t i = SE_H_FIELDS * 8; i < SECTOR; i++)
    if (h[i]) {
      kvm_fail (ENOTSUP, "%s: %s: non-zero seSparse header padding", v->path,
                fn);
      return -1;
    }
  uint8_t vh[SECTOR];
  uint64_t voff, need, gdn;
  if (!ck_mul64 (f[SE_H_VOL_OFF], SECTOR, &voff) ||
      !ck_range_within (voff, SECTOR, e->file->size) ||
      bdev_pread (e->file, vh, SECTOR, voff) == -1 ||
      load_le64 (vh) != SE_VOL_MAGIC) {
    kvm_fail (EINVAL, "%s: %s: missing or invalid seSparse volatile header",
              v->path, fn);
    return -1;
  }
  if (load_le64 (vh + 8 * SE_V_REPLAY) != 0) {
    kvm_fail (ENOTSUP, "%s: %s: the seSparse journal needs replaying (the "
              "image is dirty): not supported", v->path, fn);
    return -1;
  }
  for (size_t i = SE_V_FIELDS * 8; i < SECTOR; i++)
    if (vh[i]) {
      kvm_fail (ENOTSUP, "%s: %s: non-zero seSparse volatile header padding",
                v->path, fn);
      return -1;
    }
  e->grain = SE_GRAIN_SECTORS * SECTOR;
  e->grain_shift = __builtin_ctzll (e->grain);
  e->gt_entries = SE_GTES;
  if (!ck_mul64 (f[SE_H_CAPACITY], SECTOR, cap) ||
      !ck_mul64 (f[SE_H_GD_OFF], SECTOR, &e->gd_off) ||
      !ck_mul64 (f[SE_H_GT_OFF], SECTOR, &e->se_gt_off) ||
      !ck_mul64 (f[SE_H_GRAINS_OFF], SECTOR, &e->se_grains_off) ||
      !ck_mul64 (f[SE_H_GD_SIZE], SECTOR / 8, &gdn)) {
    kvm_fail (EINVAL, "%s: %s: seSparse header fields out of range", v->path,
              fn);
    return -1;
  }
  need = div_round_up64 (*cap, e->grain * SE_GTES);
  if (need > gdn || need > MAX_GD_ENTRIES) {
    kvm_fail (EINVAL, "%s: %s: the seSparse grain directory (%" PRIu64 " "
              "entries) does not cover the capacity (%" PRIu64 " needed)",
              v->path, fn, gdn, need);
    return -1;
  }
  e->ngd = need;
  size_t bytes = (size_t) need * 8;
  if (!ck_range_within (e->gd_off, bytes, e->file->size)) {
    kvm_fail (EINVAL, "%s: the grain directory of %s lies past the end of the "
              "file", v->path, fn);
    return -1;
  }
  e->se_gd = malloc (bytes ? bytes : 1);
  e->se_gt = calloc (need ? need : 1, sizeof *e->se_gt);
  if (!e->se_gd || !e->se_gt) {
    kvm_fail (ENOMEM, "%s: out of memory", v->path);
    return -1;
  }
  if (bdev_pread (e->file, e->se_gd, bytes, e->gd_off) == -1)
    return -1;
  for (uint64_t i = 0; i < need; i++)
    e->se_gd[i] = le64toh (e->se_gd[i]);
  if (!gt_budget_check (v, e, NULL, e->se_gd, SE_GTES * 8))
    return -1;
  e->alloc_end = e->file->size;
  return 0;
}

/* Read the embedded or standalone descriptor text. */
static char *
read_text (struct vmdk *v, struct bdev *f, uint64_t off, uint64_t len)
{
  if (len > VMDK_MAX_DESC || !ck_range_within (off, len, f->size)) {
    kvm_fail (EINVAL, "%s: invalid descriptor location or size", v->path);
    return NULL;
  }
  char *t = malloc (len + 1);
  if (!t) {
    kvm_fail (ENOMEM, "%s: out of memory", v->path);
    return NULL;
  }
  if (bdev_pread (f, t, len, off) == -1) {
    free (t);
    return NULL;
  }
  t[len] = 0;
  return t;
}

static int
add_extent (struct vmdk *v, struct extent **e)
{
  struct extent *n = realloc (v->ext, (v->next + 1) * sizeof *n);
  if (!n) {
    kvm_fail (ENOMEM, "%s: out of memory", v->path);
    return -1;
  }
  v->ext = n;
  *e = &n[v->next++];
  memset (*e, 0, sizeof **e);
  pthread_mutex_init (&(*e)->lock, NULL);
  (*e)->kind = EK_SPARSE;       /* so that free_extent destroys the lock */
  return 0;
}

static const char *
ext_type_name (enum vmdk_ext_type t)
{
  switch (t) {
  case VMDK_EXT_SPARSE: return "SPARSE";
  case VMDK_EXT_FLAT: return "FLAT";
  case VMDK_EXT_ZERO: return "ZERO";
  case VMDK_EXT_VMFS: return "VMFS";
  case VMDK_EXT_VMFSSPARSE: return "VMFSSPARSE";
  case VMDK_EXT_SESPARSE: return "SESPARSE";
  }
  return "?";
}

/* Open the extents a standalone (or descriptor-only) descriptor lists. */
/* Does the file of extent E (opened, FLAT or not) serve an earlier
 * extent too, with at least one of the two sparse?  Two flat ranges of
 * one file are independent; a sparse extent appends grains at the end of
 * its file, over whatever else lives there.  (QEMU opens each extent on
 * its own descriptor, and its image locks refuse any such image for
 * writing.)
 */
static bool
shares_file (struct vmdk *v, struct extent *e, bool flat)
{
  struct stat st;
  int fd = bdev_file_fd (e->file);
  if (fd == -1 || fstat (fd, &st) == -1)
    return false;               /* not a local file: by name only */
  e->file_dev = st.st_dev;
  e->file_ino = st.st_ino;
  for (struct extent *x = v->ext; x < e; x++)
    if (x->file_ino && !(flat && x->kind == EK_FLAT) &&
        x->file_dev == st.st_dev && x->file_ino == st.st_ino)
      return true;
  return false;
}

static int
open_desc_extents (struct vmdk *v, const struct vmdk_desc *d,
                   const struct bdev_open_opts *opts, bool writable)
{
  uint64_t start = 0;
  for (size_t i = 0; i < d->next; i++) {
    const struct vmdk_desc_extent *de = &d->ext[i];
    struct extent *e;
    uint8_t h[SECTOR];
    if (add_extent (v, &e) == -1)
      return -1;
    e->start = start;
    e->size = de->sectors * SECTOR;
    start += e->size;           /* bounded by the parser */
    if (de->type == VMDK_EXT_ZERO) {
      e->kind = EK_ZERO;
      continue;
    }
    if (opts->no_paths) {
      kvm_fail (EPERM, "%s: the descriptor names the extent file '%s', which "
                "cannot be opened from inside this container", v->path,
                de->file);
      return -1;
    }
    char *resolved = confine_resolve (v->path, de->file, opts->allowed_dirs,
                                      opts->allow_any_path);
    if (!resolved) {
      kvm_error ("%s: refusing %s extent '%s'", v->path,
                 ext_type_name (de->type), de->file);
      return -1;
    }
    bool flat = de->type == VMDK_EXT_FLAT || de->type == VMDK_EXT_VMFS;
    /* An extent found only in a directory allowed for reading is read. */
    bool shared = writable && !opts->allow_any_path &&
      !confine_in_image_dir (v->path, resolved);
    if (shared)
      kvm_error ("%s: extent %s lies outside the image's directory, in a "
                 "directory allowed for reading: serving the image "
                 "read-only", v->path, resolved);
    struct bdev_open_opts fo = *opts;
    fo.resolved = true;
    fo.backing = NULL;
    fo.format_opts = NULL;
    bool se = de->type == VMDK_EXT_SESPARSE;      /* read-only */
    fo.readonly = !writable || se || shared;
    fo.growable = !fo.readonly && !flat;
    e->file = bdev_storage_open (resolved, &fo);
    free (resolved);
    if (!e->file)
      return -1;
    e->own_file = true;
    e->readonly = shared;
    if (writable && !e->readonly && shares_file (v, e, flat)) {
      kvm_error ("%s: extent '%s' is a file another extent also uses, and "
                 "one of them is sparse (both would allocate grains at its "
                 "end): serving the image read-only", v->path, de->file);
      e->readonly = true;
    }
    if (flat) {
      e->kind = EK_FLAT;
      e->flat_off = de->offset * SECTOR;
      if (!ck_range_within (e->flat_off, e->size, e->file->size)) {
        kvm_fail (EINVAL, "%s: flat extent '%s' is smaller than the "
                  "descriptor says (%" PRIu64 " bytes from offset %" PRIu64
                  ")", v->path, de->file, e->size, e->flat_off);
        return -1;
      }
      continue;
    }
    if (e->file->size < SECTOR ||
        bdev_pread (e->file, h, SECTOR, 0) == -1) {
      kvm_fail (EINVAL, "%s: cannot read the header of extent '%s'", v->path,
                de->file);
      return -1;
    }
    uint64_t cap, doff, dsize;
    if (de->type == VMDK_EXT_SPARSE && load_le32 (h) == SPARSE_MAGIC) {
      if (parse_sparse (v, e, h, writable && !shared, &cap, &doff,
                        &dsize) == -1)
        return -1;
    }
    else if (de->type == VMDK_EXT_VMFSSPARSE && load_le32 (h) == COWD_MAGIC) {
      if (parse_cowd (v, e, h, &cap) == -1)
        return -1;
    }
    else if (se) {
      if (parse_se (v, e, h, &cap) == -1)
        return -1;
    }
    else {
      kvm_fail (EINVAL, "%s: extent '%s' is not a %s extent (bad magic)",
                v->path, de->file, ext_type_name (de->type));
      return -1;
    }
    /* A sparse extent is as large as its header says, whatever the
     * descriptor's line says (as in QEMU, so that both read the same
     * disk; seen: a line claiming 512 TiB for a 16 MiB extent).
     */
    if (cap != e->size) {
      kvm_debug ("%s: extent '%s': the descriptor says %" PRIu64 " sectors, "
                 "its header %" PRIu64 ": using the header's", v->path,
                 de->file, e->size / SECTOR, cap / SECTOR);
      e->size = cap;
      if (!ck_add64 (e->start, cap, &start) || start > INT64_MAX) {
        kvm_fail (EINVAL, "%s: the extents add up to more than 2^63 bytes",
                  v->path);
        return -1;
      }
    }
  }
  return 0;
}

static int
open_parent (struct vmdk *v, const struct vmdk_desc *d,
             const struct bdev_open_opts *opts, unsigned depth)
{
  const char *bopt = bdev_open_opt (opts, "vmdk.backing");
  if (v->parent || !d->parent_hint || !*d->parent_hint ||
      (bopt && strcmp (bopt, "none") == 0))
    return 0;
  if (opts->no_paths) {
    kvm_fail (EPERM, "%s: the image names the parent '%s', which cannot be "
              "resolved from inside this container: name the parent "
              "explicitly (or none)", v->path, d->parent_hint);
    return -1;
  }
  char *resolved = confine_resolve (v->path, d->parent_hint,
                                    opts->allowed_dirs, opts->allow_any_path);
  if (!resolved) {
    kvm_error ("%s: refusing parent '%s'", v->path, d->parent_hint);
    return -1;
  }
  struct bdev_open_opts po = *opts;
  po.resolved = true;
  po.backing = NULL;
  po.readonly = true;
  po.growable = false;
  /* ignore-parent-cid applies to the whole chain: the parent checks its
   * own parent's CID when it opens.
   */
  static const char *const ig_opts[] = { "vmdk.ignore-parent-cid=1", NULL };
  const char *ig = bdev_open_opt (opts, "vmdk.ignore-parent-cid");
  po.format_opts = ig && strcmp (ig, "0") != 0 ? ig_opts : NULL;
  v->parent = bdev_open (resolved, NULL, &po, depth + 1);
  free (resolved);
  if (!v->parent) {
    kvm_error ("%s: cannot open parent '%s'", v->path, d->parent_hint);
    return -1;
  }
  return 0;
}

/* A delta disk records its parent's CID (parentCID), and a VMDK changes
 * its CID on its first write: a parent whose CID differs was written
 * since, and the child's grains may no longer fit it.  QEMU refuses to
 * read through such a child; so do we, unless told otherwise.  Parents
 * of other formats (or without a CID) have nothing to compare.
 */
static int
check_parent_cid (struct vmdk *v, const struct vmdk_desc *d,
                  const struct bdev_open_opts *opts)
{
  const char *ig = bdev_open_opt (opts, "vmdk.ignore-parent-cid");
  if (!v->parent || v->parent->ops != &vmdk_ops ||
      d->parent_cid == 0xffffffff || (ig && strcmp (ig, "0") != 0))
    return 0;
  const struct vmdk *p = (const struct vmdk *) v->parent;
  if (!p->has_cid || p->cid == d->parent_cid)
    return 0;
  kvm_fail (EINVAL, "%s: its parent %s has changed since this delta disk "
            "was made (the parent's CID is %08" PRIx32 ", the child's "
            "parentCID %08" PRIx32 "); QEMU refuses to read it too "
            "(override with ignore-parent-cid=true, or "
            "vmdk-ignore-parent-cid=true with the vmdk filter)", v->path, p->path,
            p->cid, d->parent_cid);
  return -1;
}

struct bdev *
vmdk_open_container (struct bdev *container, const char *name,
                     const struct bdev_open_opts *opts, unsigned depth)
{
  struct vmdk *v = bdev_alloc (sizeof *v, &vmdk_ops, name);
  struct vmdk_desc d = { .parent_cid = 0xffffffff };
  bool have_desc = false;
  uint8_t h[SECTOR] = { 0 };
  char err[256];

  if (!v) {
    bdev_close (container);
    bdev_close (opts->backing);
    return NULL;
  }
  pthread_mutex_init (&v->cid_lock, NULL);
  v->container = container;
  v->parent = opts->backing;
  bool writable = !opts->readonly && !container->readonly;
  if (!(v->path = strdup (name))) {
    kvm_fail (ENOMEM, "%s: out of memory", name);
    goto fail;
  }
  size_t hn = container->size < SECTOR ? container->size : SECTOR;
  if (bdev_pread (container, h, hn, 0) == -1)
    goto fail;

  uint32_t magic = hn >= 4 ? load_le32 (h) : 0;
  if (magic == SPARSE_MAGIC || magic == COWD_MAGIC) {
    struct extent *e;
    uint64_t cap, doff = 0, dsize = 0;
    if (hn < SECTOR) {
      kvm_fail (EINVAL, "%s: truncated header", name);
      goto fail;
    }
    if (add_extent (v, &e) == -1)
      goto fail;
    e->file = container;
    if (magic == SPARSE_MAGIC
        ? parse_sparse (v, e, h, writable, &cap, &doff, &dsize) == -1
        : parse_cowd (v, e, h, &cap) == -1)
      goto fail;
    e->size = cap;
    if (dsize) {
      if (!(v->desc_text = read_text (v, container, doff, dsize)))
        goto fail;
      v->desc_len = strnlen (v->desc_text, dsize);
      v->desc_file = container;
      v->desc_off = doff;
      v->desc_max = dsize;
    }
    if (v->desc_len == 0) {     /* room reserved, but no descriptor */
      free (v->desc_text);
      v->desc_text = NULL;
      v->desc_file = NULL;
    }
    else {
      if (vmdk_desc_parse (v->desc_text, v->desc_len, &d, err,
                           sizeof err) == -1) {
        kvm_fail (EINVAL, "%s: embedded descriptor: %s", name, err);
        goto fail;
      }
      have_desc = true;
    }
    if (cap == 0 && have_desc && d.next) {
      /* A descriptor-only sparse file: the extents are elsewhere. */
      free_extent (e);
      v->next = 0;
      if (open_desc_extents (v, &d, opts, writable) == -1)
        goto fail;
    }
  }
  else {
    if (container->size > VMDK_MAX_DESC) {
      kvm_fail (EINVAL, "%s: not a VMDK (no sparse magic, and %" PRIu64 " "
                "bytes is larger than a descriptor may be: the limit is %d "
                "bytes)", name, container->size, VMDK_MAX_DESC);
      goto fail;
    }
    if (!(v->desc_text = read_text (v, container, 0, container->size)))
      goto fail;
    v->desc_len = container->size;
    v->desc_file = container;
    if (vmdk_desc_parse (v->desc_text, v->desc_len, &d, err,
                         sizeof err) == -1) {
      kvm_fail (EINVAL, "%s: descriptor: %s", name, err);
      goto fail;
    }
    have_desc = true;
    if (d.next == 0) {
      kvm_fail (EINVAL, "%s: the descriptor lists no extents", name);
      goto fail;
    }
    if (open_desc_extents (v, &d, opts, writable) == -1)
      goto fail;
  }
  if (v->next == 0) {
    kvm_fail (EINVAL, "%s: no extents", name);
    goto fail;
  }
  uint64_t size = 0;
  bool ro = !writable;
  for (size_t i = 0; i < v->next; i++) {
    v->ext[i].start = size;
    size += v->ext[i].size;     /* each bounded to INT64_MAX/512 sectors */
    if (size > INT64_MAX) {
      kvm_fail (EINVAL, "%s: virtual size too large", name);
      goto fail;
    }
    /* An extent we cannot write (compressed, VMFSSPARSE, SESPARSE,
     * version 3, overlapping directories) makes the whole image read-only,
     * so that clients see it at once rather than in an error on every
     * write.
     */
    if (v->ext[i].readonly && writable && !ro) {
      struct extent *e = &v->ext[i];
      kvm_debug ("%s: %s extent: serving the image read-only", name,
                 e->compressed ? "streamOptimized (compressed)"
                 : e->cowd ? "VMFSSPARSE" : e->se ? "SESPARSE"
                 : e->version == 3 ? "version 3 sparse" : "damaged");
      ro = true;
    }
  }
  /* An empty trailing extent would confuse vmdk_find_extent: drop size-0 ones
   * only at the end (sizes come from the descriptor, never 0, or from a
   * header capacity).
   */
  while (v->next > 1 && v->ext[v->next - 1].size == 0) {
    free_extent (&v->ext[v->next - 1]);
    v->next--;
  }
  if (have_desc) {
    v->cid = d.cid;
    v->has_cid = d.has_cid;
    if (open_parent (v, &d, opts, depth) == -1 ||
        check_parent_cid (v, &d, opts) == -1)
      goto fail;
    /* A delta disk without its parent: a write would fill the rest of a
     * new grain with zeroes instead of the parent's data, for good.
     */
    if (!v->parent && d.parent_hint && *d.parent_hint && !ro) {
      kvm_debug ("%s: served without its parent: read-only", name);
      ro = true;
    }
  }
  v->bd.size = size;
  v->bd.readonly = ro;
  v->bd.block_size = 1;
  v->bd.caps = BDEV_CAN_EXTENTS | BDEV_CAN_MULTI_CONN;
  if (!ro)
    v->bd.caps |= BDEV_CAN_TRIM | BDEV_CAN_ZERO;
  if (!have_desc || !d.has_cid)
    v->cid_done = true;
  vmdk_desc_free (&d);
  return &v->bd;

 fail:
  if (!errno)
    errno = EINVAL;
  int saved = errno;
  vmdk_desc_free (&d);
  vmdk_free (v);
  errno = saved;
  return NULL;
}

struct bdev *
vmdk_open (const char *path, const struct bdev_open_opts *opts,
           unsigned depth)
{
  struct bdev_open_opts fo = *opts;
  fo.backing = NULL;
  fo.format_opts = NULL;
  fo.growable = !opts->readonly;
  struct bdev *f = bdev_storage_open (path, &fo);
  if (!f) {
    bdev_close (opts->backing);
    if (!errno)
      errno = EINVAL;
    return NULL;
  }
  return vmdk_open_container (f, path, opts, depth);
}

static const struct bdev_ops vmdk_ops = {
  .format = "vmdk",
  .close = vmdk_close,
  .pread = vmdk_pread,
  .pwrite = vmdk_pwrite,
  .flush = vmdk_flush,
  .trim = vmdk_trim,
  .zero = vmdk_zero,
  .extents = vmdk_extents,
};
