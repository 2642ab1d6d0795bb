/* SPDX-License-Identifier: BSD-3-Clause */
/* The thin engine's metadata (format in thin.h): geometry, headers,
 * bodies, their verification, and the offline checker.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "thin_int.h"
#include "util/checked.h"
#include "util/crc32c.h"
#include "util/endian.h"
#include "util/log.h"

static const char thin_magic[8] = "NBDKTHIN";

/* ---- geometry and blocks ------------------------------------------- */

int
thin_geom_compute (struct geom *g, uint64_t vsize, uint32_t chunk,
                   bool external, char *err, size_t errlen)
{
  if (!is_power_of_2 (chunk) || chunk < THIN_MIN_CHUNK ||
      chunk > THIN_MAX_CHUNK) {
    kvm_seterr (err, errlen, "chunk size %" PRIu32 " is not a power of 2 "
                "between 4 KiB and 64 MiB", chunk);
    return -1;
  }
  if (vsize == 0) {
    kvm_seterr (err, errlen, "virtual size is 0");
    return -1;
  }
  g->vsize = vsize;
  g->chunk = chunk;
  g->flags = external ? 1 : 0;
  g->nv = div_round_up64 (vsize, chunk);
  if (g->nv > THIN_MAX_VCHUNKS) {
    kvm_seterr (err, errlen, "virtual size %" PRIu64 " needs %" PRIu64
                " chunks of %" PRIu32 " bytes (at most %llu: use a larger "
                "chunk size)", vsize, g->nv, chunk, THIN_MAX_VCHUNKS);
    return -1;
  }
  g->tblocks = div_round_up64 (g->nv, TPB);
  g->bblocks = div_round_up64 (g->nv, BPB);
  g->body_bytes = ((uint64_t) g->tblocks + g->bblocks) * TBLK;
  if (external)
    g->data_off = 0;
  else if (!ck_round_up64 (thin_meta_bytes (g), chunk, &g->data_off)) {
    kvm_seterr (err, errlen, "metadata size overflows");
    return -1;
  }
  return 0;
}

uint64_t
thin_body_off (const struct geom *g, unsigned slot)
{
  return 2 * TBLK + slot * g->body_bytes;
}

uint64_t
thin_meta_bytes (const struct geom *g)
{
  return thin_body_off (g, 2);          /* both headers, both bodies */
}

uint32_t
thin_block_crc (uint32_t seed, const uint8_t *blk)
{
  uint8_t s[4];
  store_le32 (s, seed);
  return crc32c (crc32c (0, s, 4), blk, TBLK - 4);
}

uint32_t
thin_body_seed (const struct geom *g, uint64_t i)
{
  return i < g->tblocks ? (uint32_t) i
    : 0x80000000u | (uint32_t) (i - g->tblocks);
}

void
thin_header_encode (uint8_t *b, const struct geom *g, uint64_t seq,
                    uint64_t used, uint64_t pool_chunks)
{
  memset (b, 0, TBLK);
  memcpy (b, thin_magic, 8);
  store_le32 (b + 8, 1);
  store_le32 (b + 12, TBLK);
  store_le64 (b + 16, seq);
  store_le64 (b + 24, g->vsize);
  store_le32 (b + 32, g->chunk);
  store_le32 (b + 36, g->flags);
  store_le64 (b + 40, g->nv);
  store_le64 (b + 48, g->data_off);
  store_le32 (b + 56, g->tblocks);
  store_le32 (b + 60, g->bblocks);
  store_le64 (b + 64, g->body_bytes);
  store_le64 (b + 72, used);
  store_le64 (b + 80, pool_chunks);
  store_le32 (b + TBLK - 4, crc32c (0, b, TBLK - 4));
}

/* Decode and validate the header block of slot SLOT; every field is
 * checked against the geometry recomputed from the virtual size and chunk
 * size.
 */
static int
header_decode (const uint8_t *b, unsigned slot, struct geom *g,
               uint64_t *seq, uint64_t *used, char *err, size_t errlen)
{
  struct geom c;
  if (memcmp (b, thin_magic, 8) != 0) {
    kvm_seterr (err, errlen, "no thin metadata magic");
    return -1;
  }
  if (load_le32 (b + TBLK - 4) != crc32c (0, b, TBLK - 4)) {
    kvm_seterr (err, errlen, "header checksum mismatch");
    return -1;
  }
  if (load_le32 (b + 8) != 1 || load_le32 (b + 12) != TBLK) {
    kvm_seterr (err, errlen, "unsupported version %" PRIu32 " or block size",
                load_le32 (b + 8));
    return -1;
  }
  uint32_t flags = load_le32 (b + 36);
  if (flags & ~1u) {
    kvm_seterr (err, errlen, "unknown flags 0x%" PRIx32, flags);
    return -1;
  }
  if (thin_geom_compute (&c, load_le64 (b + 24), load_le32 (b + 32), flags & 1,
                         err, errlen) == -1)
    return -1;
  if (load_le64 (b + 40) != c.nv || load_le64 (b + 48) != c.data_off ||
      load_le32 (b + 56) != c.tblocks || load_le32 (b + 60) != c.bblocks ||
      load_le64 (b + 64) != c.body_bytes) {
    kvm_seterr (err, errlen, "inconsistent geometry fields");
    return -1;
  }
  *used = load_le64 (b + 72);
  if (*used > c.nv) {
    kvm_seterr (err, errlen, "used chunk count %" PRIu64 " out of range",
                *used);
    return -1;
  }
  /* Commits write transaction T to slot T & 1 and never touch the
   * current slot; a header elsewhere would make the next commit overwrite
   * the current slot and then publish the other one with stale blocks.
   */
  *seq = load_le64 (b + 16);
  if ((*seq & 1) != slot) {
    kvm_seterr (err, errlen, "sequence number %" PRIu64 " does not belong "
                "in slot %u", *seq, slot);
    return -1;
  }
  *g = c;
  return 0;
}

/* Read both headers; pick the valid one with the higher seq.  Returns
 * the slot, -1 if neither is valid (*allzero tells whether both read as
 * zeroes), -2 (errno set) if they cannot be read; errors in ERR.
 */
int
thin_headers_read (struct bdev *meta, struct geom *g, uint64_t *seq,
                   uint64_t *used, bool *allzero, char *err, size_t errlen,
                   FILE *report)
{
  uint8_t *b = malloc (2 * TBLK);
  int best = -1;
  char e[2][200];
  if (!b) {
    kvm_seterr (err, errlen, "out of memory");
    return -1;
  }
  if (bdev_pread_padded (meta, b, 2 * TBLK, 0) == -1) {
    int e = errno;
    kvm_seterr (err, errlen, "cannot read the metadata headers: %m");
    free (b);
    *allzero = false;
    errno = e;
    return -2;                  /* not known: an I/O error */
  }
  *allzero = thin_is_zero (b, 2 * TBLK);
  for (unsigned s = 0; s < 2; s++) {
    struct geom gs;
    uint64_t q, u;
    if (header_decode (b + s * TBLK, s, &gs, &q, &u, e[s],
                       sizeof e[s]) == -1) {
      if (report)
        fprintf (report, "slot %u: header invalid: %s\n", s, e[s]);
      continue;
    }
    if (report)
      fprintf (report, "slot %u: seq %" PRIu64 ", %" PRIu64 " chunks used\n",
               s, q, u);
    if (best == -1 || q > *seq) {
      if (best != -1 && memcmp (&gs, g, sizeof gs) != 0 && report)
        fprintf (report, "slots disagree on the geometry\n");
      *g = gs;
      *seq = q;
      *used = u;
      best = s;
    }
  }
  if (best == -1)
    kvm_seterr (err, errlen, "%s; %s", e[0], e[1]);
  free (b);
  return best;
}

uint64_t
thin_pool_chunks_of (const struct geom *g, uint64_t pool_size)
{
  if (pool_size <= g->data_off)
    return 0;
  uint64_t n = (pool_size - g->data_off) / g->chunk;
  return n < g->nv ? n : g->nv;
}

/* Read a slot's body: ENTRIES[nv] and the bitmap (nv bits).  Checksum
 * failures are errors (reported to REPORT when checking).
 */
long
thin_body_read (struct bdev *meta, const struct geom *g, unsigned slot,
                uint32_t *entries, struct bitmap *bits, FILE *report,
                struct kvm_progress *pr)
{
  long bad = 0;
  uint8_t *buf = malloc (g->body_bytes);
  if (!buf) {
    kvm_error ("thin: out of memory reading %" PRIu64 " bytes of metadata",
               g->body_bytes);
    return -1;
  }
  if (bdev_pread_padded (meta, buf, g->body_bytes,
                         thin_body_off (g, slot)) == -1) {
    free (buf);
    return -1;
  }
  for (uint32_t i = 0; i < g->tblocks; i++) {
    const uint8_t *blk = buf + (uint64_t) i * TBLK;
    if (load_le32 (blk + TBLK - 4) != thin_block_crc (i, blk)) {
      if (report)
        fprintf (report, "slot %u: table block %" PRIu32 ": bad checksum\n",
                 slot, i);
      else
        kvm_error ("thin: metadata slot %u table block %" PRIu32
                   ": bad checksum", slot, i);
      bad++;
    }
    for (uint32_t k = 0; k < TPB; k++) {
      uint64_t v = (uint64_t) i * TPB + k;
      if (v < g->nv)
        entries[v] = load_le32 (blk + 4 * k);
    }
    kvm_progress_add (pr, 1);
  }
  for (uint32_t j = 0; j < g->bblocks; j++) {
    const uint8_t *blk = buf + ((uint64_t) g->tblocks + j) * TBLK;
    if (load_le32 (blk + TBLK - 4) != thin_block_crc (0x80000000u | j, blk)) {
      if (report)
        fprintf (report, "slot %u: bitmap block %" PRIu32 ": bad checksum\n",
                 slot, j);
      else
        kvm_error ("thin: metadata slot %u bitmap block %" PRIu32
                   ": bad checksum", slot, j);
      bad++;
    }
    for (uint32_t k = 0; k < BPB; k++) {
      uint64_t p = (uint64_t) j * BPB + k;
      if (p < g->nv)
        bitmap_set (bits, p, (blk[k >> 3] >> (k & 7)) & 1);
    }
    kvm_progress_add (pr, 1);
  }
  free (buf);
  return bad;
}

int
thin_verify (const struct geom *g, const uint32_t *entries,
             const struct bitmap *bits, uint64_t pool_chunks, FILE *report,
             struct verify_result *r, struct kvm_progress *pr)
{
  struct bitmap seen;
  memset (r, 0, sizeof *r);
  if (bitmap_init (&seen, g->nv) == -1)
    return -1;
  for (uint64_t v = 0; v < g->nv; v++) {
    uint32_t e = entries[v];
    if ((v & (PROGRESS_STEP - 1)) == 0)
      kvm_progress_add (pr, v ? PROGRESS_STEP : 0);
    if (e == 0)
      continue;
    uint64_t p = (uint64_t) e - 1;
    if (e == THIN_BUSY || p >= pool_chunks) {
      r->out_of_range++;
      if (report)
        fprintf (report, "virtual chunk %" PRIu64 ": maps to physical chunk "
                 "%" PRIu64 ", outside the pool (%" PRIu64 " chunks)\n",
                 v, p, pool_chunks);
      continue;
    }
    r->mapped++;
    if (bitmap_get (&seen, p)) {
      r->doubles++;
      if (report)
        fprintf (report, "virtual chunk %" PRIu64 ": physical chunk %" PRIu64
                 " is mapped twice\n", v, p);
    }
    bitmap_set (&seen, p, true);
    if (!bitmap_get (bits, p)) {
      r->unmarked++;
      if (report)
        fprintf (report, "virtual chunk %" PRIu64 ": physical chunk %" PRIu64
                 " is mapped but marked free\n", v, p);
    }
  }
  kvm_progress_add (pr, g->nv ? (g->nv - 1) % PROGRESS_STEP + 1 : 0);
  for (uint64_t p = 0; p < g->nv; p++) {
    if ((p & (PROGRESS_STEP - 1)) == 0)
      kvm_progress_add (pr, p ? PROGRESS_STEP : 0);
    if (bitmap_get (bits, p) && !bitmap_get (&seen, p)) {
      r->leaks++;
      if (report)
        fprintf (report, "physical chunk %" PRIu64 ": marked in use but not "
                 "mapped (leak)%s\n", p,
                 p >= pool_chunks ? ", outside the pool" : "");
    }
  }
  kvm_progress_add (pr, g->nv ? (g->nv - 1) % PROGRESS_STEP + 1 : 0);
  bitmap_free (&seen);
  return 0;
}

/* ---- checker ------------------------------------------------------- */

long
thin_check (struct bdev *pool, struct bdev *meta, FILE *out, bool verbose)
{
  struct geom g;
  uint64_t seq, used;
  bool allzero;
  char err[400];
  long problems = 0;
  struct bdev *m = meta ? meta : pool;
  FILE *rep = verbose ? out : NULL;

  int slot = thin_headers_read (m, &g, &seq, &used, &allzero, err, sizeof err,
                                rep);
  if (slot < 0) {
    fprintf (out, "%s: %s: %s\n", m->name,
             slot == -2 ? "I/O error" : "no valid thin metadata", err);
    return -1;
  }
  if ((g.flags & 1) != (meta != NULL)) {
    fprintf (out, "%s: metadata flags say it is %s\n", m->name,
             (g.flags & 1) ? "in a separate file (give --metadata)"
             : "inside the pool");
    return -1;
  }
  uint64_t pool_chunks = thin_pool_chunks_of (&g, pool->size);
  fprintf (out, "virtual size %" PRIu64 ", chunk %" PRIu32 ", %" PRIu64
           " virtual chunks, %" PRIu64 " physical chunks, current slot %d "
           "(seq %" PRIu64 ")\n", g.vsize, g.chunk, g.nv, pool_chunks, slot,
           seq);
  /* As in thin_open: the chunk map is sized from the header (up to
   * THIN_MAX_VCHUNKS), so a metadata area cut short is reported before
   * it is allocated, not read as gigabytes of zeroes.
   */
  if (m->size < thin_meta_bytes (&g)) {
    fprintf (out, "the metadata of %" PRIu64 " virtual chunks needs %" PRIu64
             " bytes, but %s has %" PRIu64 " (truncated): PROBLEMS FOUND\n",
             g.nv, thin_meta_bytes (&g), m->name, m->size);
    return 1;
  }
  if (pool->size < g.data_off) {
    fprintf (out, "pool too small for its metadata\n");
    problems++;
  }
  uint32_t *entries = calloc (g.nv, sizeof *entries);
  struct bitmap bits;
  if (!entries || bitmap_init (&bits, g.nv) == -1) {
    free (entries);
    fprintf (out, "out of memory\n");
    return -1;
  }
  /* Progress: metadata blocks, then both passes over the chunks. */
  struct kvm_progress pr;
  char what[80];
  snprintf (what, sizeof what, "%s: thin check", m->name);
  kvm_progress_start (&pr, what, (uint64_t) g.tblocks + g.bblocks + 2 * g.nv);
  long bad = thin_body_read (m, &g, slot, entries, &bits, out, &pr);
  if (bad < 0) {
    free (entries);
    bitmap_free (&bits);
    return -1;
  }
  problems += bad;
  struct verify_result vr;
  if (thin_verify (&g, entries, &bits, pool_chunks, out, &vr, &pr) == -1) {
    free (entries);
    bitmap_free (&bits);
    return -1;
  }
  kvm_progress_end (&pr);
  problems += vr.out_of_range + vr.doubles + vr.unmarked + vr.leaks;
  if (vr.mapped != used) {
    fprintf (out, "header says %" PRIu64 " chunks used, %" PRIu64
             " are mapped\n", used, vr.mapped);
    problems++;
  }
  fprintf (out, "%" PRIu64 " mapped chunks, %" PRIu64 " double mappings, %"
           PRIu64 " leaks, %" PRIu64 " out-of-range entries, %" PRIu64
           " mapped-but-free, %ld bad checksums: %s\n", vr.mapped,
           vr.doubles, vr.leaks, vr.out_of_range, vr.unmarked, bad,
           problems ? "PROBLEMS FOUND" : "clean");
  free (entries);
  bitmap_free (&bits);
  return problems;
}

static int
note_data (void *opaque, uint64_t offset, uint64_t len, uint32_t type)
{
  (void) offset;
  (void) len;
  if (!(type & BDEV_EXTENT_ZERO))
    *(bool *) opaque = true;
  return 0;
}

/* Does the 4 KiB block at OFF of the metadata area of G hold what the
 * format writes there: zeroes and the CRC of its body position?
 */
static bool
formatted_blank (const struct geom *g, uint64_t off, const uint8_t *b)
{
  if (!thin_is_zero (b, TBLK - 4))
    return false;
  for (unsigned s = 0; s < 2; s++) {
    uint64_t start = thin_body_off (g, s), i;
    if (off < start || (i = (off - start) / TBLK) >= g->tblocks + g->bblocks)
      continue;
    return load_le32 (b + TBLK - 4) ==
      thin_block_crc (thin_body_seed (g, i), b);
  }
  return false;
}

int
thin_area_is_blank (struct bdev *bd, const struct geom *g,
                    uint64_t *nonzero)
{
  uint64_t len = thin_meta_bytes (g);
  const size_t W = 1u << 20;
  uint64_t end = len < bd->size ? len : bd->size;
  uint8_t *buf = NULL;
  int r = 1;
  for (uint64_t off = 0; off < end && r == 1; off += W) {
    size_t n = end - off < W ? end - off : W;
    bool data = true;
    if (bd->caps & BDEV_CAN_EXTENTS) {
      data = false;
      if (bdev_extents (bd, n, off, 0, note_data, &data) == -1)
        data = true;            /* cannot tell: read it */
    }
    if (!data)
      continue;
    if (!buf && !(buf = malloc (W))) {
      errno = ENOMEM;
      return -1;
    }
    if (bdev_pread (bd, buf, n, off) == -1)
      r = -1;
    else if (!thin_is_zero (buf, n)) {
      /* W and the body offsets are multiples of TBLK. */
      for (size_t k = 0; k < n; k += TBLK)
        if (n - k < TBLK || (!thin_is_zero (buf + k, TBLK) &&
                             !formatted_blank (g, off + k, buf + k))) {
          *nonzero = off;
          r = 0;
          break;
        }
    }
  }
  free (buf);
  return r;
}
