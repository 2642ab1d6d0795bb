/* SPDX-License-Identifier: BSD-3-Clause */
/* VHDX engine: open (file identifier, headers, region tables, metadata,
 * BAT, parent), reads, writes, zero/trim, extents, flush.
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
 * was written.  BAT entries are 8-byte aligned within 4 KiB sectors, so
 * no entry is torn.  Freed blocks (ZERO/UNMAPPED) are never reused, so a
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
#include "util/crc32c.h"
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
#define MAX_VSIZE (UINT64_C (64) << 40)

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

static int
fail (int err, const char *fmt, ...) __attribute__ ((format (printf, 2, 3)));

static int
fail (int err, const char *fmt, ...)
{
  char msg[512];
  va_list ap;
  va_start (ap, fmt);
  vsnprintf (msg, sizeof msg, fmt, ap);
  va_end (ap);
  kvm_error ("%s", msg);
  errno = err;
  return -1;
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

/* ---- headers ---- */

static bool
header_valid (const uint8_t *h)
{
  uint8_t tmp[VHDX_HEADER_SIZE];
  if (memcmp (h + H_SIG, "head", 4) != 0)
    return false;
  memcpy (tmp, h, sizeof tmp);
  memset (tmp + H_CKSUM, 0, 4);
  if (crc32c (0, tmp, sizeof tmp) != load_le32 (h + H_CKSUM))
    return false;
  return load_le16 (h + H_VERSION) == 1;
}

static int
read_headers (struct vhdx *v)
{
  uint8_t h[2][VHDX_HEADER_SIZE];
  bool ok[2];
  char ident[8];

  if (bdev_pread_padded (v->file, ident, 8, 0) == -1)
    return -1;
  if (memcmp (ident, "vhdxfile", 8) != 0)
    return fail (EINVAL, "%s: not a VHDX file (no 'vhdxfile' identifier)",
                 v->path);
  if (bdev_pread_padded (v->file, h[0], VHDX_HEADER_SIZE,
                         VHDX_HEADER1_OFF) == -1 ||
      bdev_pread_padded (v->file, h[1], VHDX_HEADER_SIZE,
                         VHDX_HEADER2_OFF) == -1)
    return -1;
  ok[0] = header_valid (h[0]);
  ok[1] = header_valid (h[1]);
  int cur;
  if (ok[0] && ok[1])
    cur = load_le64 (h[1] + H_SEQ) > load_le64 (h[0] + H_SEQ);
  else if (ok[0] || ok[1])
    cur = ok[1];
  else
    return fail (EINVAL, "%s: neither VHDX header is valid (signature, "
                 "CRC-32C or version)", v->path);
  memcpy (v->hdr, h[cur], VHDX_HEADER_SIZE);
  v->seq = load_le64 (v->hdr + H_SEQ);
  v->log_len = load_le32 (v->hdr + H_LOG_LEN);
  v->log_off = load_le64 (v->hdr + H_LOG_OFF);
  kvm_debug ("%s: header %d current (sequence %" PRIu64 "), log %" PRIu64
             "+%" PRIu64, v->path, cur + 1, v->seq, v->log_off, v->log_len);
  if (load_le16 (v->hdr + H_LOG_VER) != 0)
    return fail (ENOTSUP, "%s: unsupported VHDX log version %u", v->path,
                 load_le16 (v->hdr + H_LOG_VER));
  if (v->log_off % VHDX_MiB || v->log_len % VHDX_MiB ||
      v->log_off < VHDX_MiB || v->log_len == 0 ||
      !ck_range_within (v->log_off, v->log_len, INT64_MAX))
    return fail (EINVAL, "%s: bad log location %" PRIu64 "+%" PRIu64,
                 v->path, v->log_off, v->log_len);
  return 0;
}

int
vhdx_write_headers (struct vhdx *v, const uint8_t *file_guid,
                    const uint8_t *data_guid, const uint8_t *log_guid)
{
  uint8_t h[VHDX_HEADER_SIZE];
  static const uint8_t zero[16];

  memcpy (h, v->hdr, sizeof h);
  if (file_guid)
    memcpy (h + H_FILE_GUID, file_guid, 16);
  if (data_guid)
    memcpy (h + H_DATA_GUID, data_guid, 16);
  memcpy (h + H_LOG_GUID, log_guid ? log_guid : zero, 16);
  /* Both slots, the older first, each with a higher sequence number, so
   * that a crash between the writes leaves one valid current header.
   */
  int cur = 0;
  uint8_t other[VHDX_HEADER_SIZE];
  if (bdev_pread_padded (v->file, other, sizeof other,
                         VHDX_HEADER1_OFF) == -1)
    return -1;
  if (header_valid (other) && load_le64 (other + H_SEQ) == v->seq &&
      memcmp (other, v->hdr, sizeof other) == 0)
    cur = 0;
  else
    cur = 1;
  for (int i = 0; i < 2; i++) {
    int slot = (cur + 1 + i) % 2;
    uint64_t seq;
    if (!ck_add64 (v->seq, 1, &seq))
      return fail (EOVERFLOW, "%s: header sequence number overflow", v->path);
    store_le64 (h + H_SEQ, seq);
    memset (h + H_CKSUM, 0, 4);
    store_le32 (h + H_CKSUM, crc32c (0, h, sizeof h));
    if (bdev_pwrite (v->file, h, sizeof h,
                     slot ? VHDX_HEADER2_OFF : VHDX_HEADER1_OFF, 0) == -1 ||
        bdev_flush (v->file) == -1) {
      kvm_error ("%s: writing VHDX header %d: %m", v->path, slot + 1);
      return -1;
    }
    v->seq = seq;
    memcpy (v->hdr, h, sizeof h);
  }
  return 0;
}

/* ---- region tables ---- */

struct region {
  uint64_t off, len;
};

static bool
overlaps (uint64_t a, uint64_t alen, uint64_t b, uint64_t blen)
{
  return a < b + blen && b < a + alen;
}

static int
parse_region_table (struct vhdx *v, const uint8_t *t, char *why, size_t wl)
{
  uint8_t tmp[VHDX_REGION_SIZE];
  uint32_t n;
  struct region bat = { 0, 0 }, meta = { 0, 0 };

  if (memcmp (t, "regi", 4) != 0) {
    snprintf (why, wl, "no 'regi' signature");
    return -1;
  }
  memcpy (tmp, t, sizeof tmp);
  memset (tmp + 4, 0, 4);
  if (crc32c (0, tmp, sizeof tmp) != load_le32 (t + 4)) {
    snprintf (why, wl, "bad CRC-32C");
    return -1;
  }
  n = load_le32 (t + 8);
  if (n > 2047) {
    snprintf (why, wl, "%" PRIu32 " entries (at most 2047)", n);
    return -1;
  }
  struct region seen[2047];
  for (uint32_t i = 0; i < n; i++) {
    const uint8_t *e = t + 16 + 32 * i;
    uint64_t off = load_le64 (e + 16);
    uint64_t len = load_le32 (e + 24);
    bool required = load_le32 (e + 28) & 1;
    if (off % VHDX_MiB || len % VHDX_MiB || off < VHDX_MiB || len == 0 ||
        !ck_range_within (off, len, INT64_MAX)) {
      snprintf (why, wl, "region %" PRIu32 " at %" PRIu64 "+%" PRIu64
                " is not 1 MiB-aligned or lies in the first MiB", i, off,
                len);
      return -1;
    }
    if (overlaps (off, len, v->log_off, v->log_len)) {
      snprintf (why, wl, "region %" PRIu32 " overlaps the log", i);
      return -1;
    }
    for (uint32_t j = 0; j < i; j++)
      if (overlaps (off, len, seen[j].off, seen[j].len)) {
        snprintf (why, wl, "regions %" PRIu32 " and %" PRIu32 " overlap",
                  j, i);
        return -1;
      }
    seen[i].off = off;
    seen[i].len = len;
    if (memcmp (e, vhdx_guid_bat, 16) == 0) {
      if (bat.len) {
        snprintf (why, wl, "two BAT regions");
        return -1;
      }
      bat = seen[i];
    }
    else if (memcmp (e, vhdx_guid_metadata, 16) == 0) {
      if (meta.len) {
        snprintf (why, wl, "two metadata regions");
        return -1;
      }
      meta = seen[i];
    }
    else if (required) {
      snprintf (why, wl, "unknown required region");
      return -1;
    }
  }
  if (!bat.len || !meta.len) {
    snprintf (why, wl, "no %s region", bat.len ? "metadata" : "BAT");
    return -1;
  }
  v->bat_off = bat.off;
  v->bat_len = bat.len;
  v->meta_off = meta.off;
  v->meta_len = meta.len;
  return 0;
}

static int
read_regions (struct vhdx *v)
{
  uint8_t *t = malloc (VHDX_REGION_SIZE);
  char why[2][160];
  int r = -1;

  if (!t)
    return fail (ENOMEM, "%s: out of memory", v->path);
  for (int i = 0; i < 2 && r == -1; i++) {
    if (vhdx_file_read (v, t, VHDX_REGION_SIZE,
                        i ? VHDX_REGION2_OFF : VHDX_REGION1_OFF) == -1) {
      free (t);
      return -1;
    }
    r = parse_region_table (v, t, why[i], sizeof why[i]);
    if (r == -1 && i == 0)
      kvm_debug ("%s: region table 1: %s", v->path, why[0]);
  }
  free (t);
  if (r == -1)
    return fail (EINVAL, "%s: no valid region table (1: %s; 2: %s)",
                 v->path, why[0], why[1]);
  return 0;
}

/* ---- metadata ---- */

/* UTF-16LE -> UTF-8 (NUL-terminated, malloc'd).  NULL on bad input. */
static char *
utf16_to_utf8 (const uint8_t *p, size_t bytes)
{
  if (bytes % 2)
    return NULL;
  size_t n = bytes / 2, o = 0;
  char *s = malloc (n * 3 + 1);
  if (!s)
    return NULL;
  for (size_t i = 0; i < n; i++) {
    uint32_t c = load_le16 (p + 2 * i);
    if (c >= 0xD800 && c < 0xDC00 && i + 1 < n) {
      uint32_t d = load_le16 (p + 2 * i + 2);
      if (d >= 0xDC00 && d < 0xE000) {
        c = 0x10000 + ((c - 0xD800) << 10) + (d - 0xDC00);
        i++;
      }
    }
    if (c == 0) {
      free (s);
      return NULL;
    }
    if (c < 0x80)
      s[o++] = c;
    else if (c < 0x800) {
      s[o++] = 0xC0 | (c >> 6);
      s[o++] = 0x80 | (c & 0x3F);
    }
    else if (c < 0x10000) {
      s[o++] = 0xE0 | (c >> 12);
      s[o++] = 0x80 | ((c >> 6) & 0x3F);
      s[o++] = 0x80 | (c & 0x3F);
    }
    else {
      /* 4 bytes: n*3 is still enough since this used two units. */
      s[o++] = 0xF0 | (c >> 18);
      s[o++] = 0x80 | ((c >> 12) & 0x3F);
      s[o++] = 0x80 | ((c >> 6) & 0x3F);
      s[o++] = 0x80 | (c & 0x3F);
    }
  }
  s[o] = 0;
  return s;
}

struct locator {
  char *linkage, *linkage2, *relative, *volume, *absolute;
};

static void
locator_free (struct locator *l)
{
  free (l->linkage);
  free (l->linkage2);
  free (l->relative);
  free (l->volume);
  free (l->absolute);
}

static int
parse_locator (struct vhdx *v, const uint8_t *p, uint32_t len,
               struct locator *l)
{
  if (len < 20)
    return fail (EINVAL, "%s: parent locator too short", v->path);
  if (memcmp (p, vhdx_guid_locator_type, 16) != 0)
    return fail (ENOTSUP, "%s: unknown parent locator type", v->path);
  uint32_t n = load_le16 (p + 18);
  if ((uint64_t) 20 + (uint64_t) n * 12 > len)
    return fail (EINVAL, "%s: parent locator entries past its end", v->path);
  for (uint32_t i = 0; i < n; i++) {
    const uint8_t *e = p + 20 + 12 * i;
    uint32_t ko = load_le32 (e), vo = load_le32 (e + 4);
    uint32_t kl = load_le16 (e + 8), vl = load_le16 (e + 10);
    if (!ck_range_within (ko, kl, len) || !ck_range_within (vo, vl, len) ||
        kl == 0 || vl == 0)
      return fail (EINVAL, "%s: parent locator entry %" PRIu32
                   " out of bounds", v->path, i);
    char *k = utf16_to_utf8 (p + ko, kl);
    char *val = utf16_to_utf8 (p + vo, vl);
    if (!k || !val) {
      free (k);
      free (val);
      return fail (EINVAL, "%s: parent locator entry %" PRIu32
                   " is not valid UTF-16", v->path, i);
    }
    char **dst = NULL;
    if (strcmp (k, "parent_linkage") == 0) dst = &l->linkage;
    else if (strcmp (k, "parent_linkage2") == 0) dst = &l->linkage2;
    else if (strcmp (k, "relative_path") == 0) dst = &l->relative;
    else if (strcmp (k, "volume_path") == 0) dst = &l->volume;
    else if (strcmp (k, "absolute_win32_path") == 0) dst = &l->absolute;
    free (k);
    if (dst && *dst) {
      free (val);
      return fail (EINVAL, "%s: duplicate parent locator key", v->path);
    }
    if (dst)
      *dst = val;
    else
      free (val);
  }
  if (!l->linkage)
    return fail (EINVAL, "%s: parent locator has no parent_linkage",
                 v->path);
  return 0;
}

static int
read_metadata (struct vhdx *v, struct locator *loc)
{
  uint8_t *t = malloc (VHDX_METATAB_SIZE);
  bool have_fp = false, have_size = false, have_lss = false, have_pss = false;
  bool have_p83 = false, have_loc = false;
  uint8_t *locbuf = NULL;
  uint32_t loclen = 0;
  int r = -1;

  if (!t)
    return fail (ENOMEM, "%s: out of memory", v->path);
  if (vhdx_file_read (v, t, VHDX_METATAB_SIZE, v->meta_off) == -1)
    goto out;
  if (memcmp (t, "metadata", 8) != 0) {
    fail (EINVAL, "%s: metadata table has no 'metadata' signature", v->path);
    goto out;
  }
  uint32_t n = load_le16 (t + 10);
  if (n > 2047) {
    fail (EINVAL, "%s: metadata table has %" PRIu32 " entries (at most 2047)",
          v->path, n);
    goto out;
  }
  for (uint32_t i = 0; i < n; i++) {
    const uint8_t *e = t + 32 + 32 * i;
    uint32_t off = load_le32 (e + 16), len = load_le32 (e + 20);
    uint32_t flags = load_le32 (e + 24);
    bool required = flags & 4;
    uint8_t item[16];

    if (len == 0 ? off != 0
        : (off < VHDX_METATAB_SIZE || !ck_range_within (off, len, v->meta_len))) {
      fail (EINVAL, "%s: metadata item %" PRIu32 " at %" PRIu32 "+%" PRIu32
            " outside the metadata region", v->path, i, off, len);
      goto out;
    }
    for (uint32_t j = 0; j < i; j++)
      if (memcmp (t + 32 + 32 * j, e, 16) == 0) {
        fail (EINVAL, "%s: duplicate metadata item %" PRIu32, v->path, i);
        goto out;
      }
#define GET(sz)                                                         \
    if (len < (sz)) {                                                   \
      fail (EINVAL, "%s: metadata item %" PRIu32 " too short", v->path, i); \
      goto out;                                                         \
    }                                                                   \
    if (vhdx_file_read (v, item, (sz), v->meta_off + off) == -1)        \
      goto out
    if (memcmp (e, vhdx_guid_file_params, 16) == 0) {
      GET (8);
      v->block_size = load_le32 (item);
      v->leave_alloc = load_le32 (item + 4) & 1;
      v->has_parent = load_le32 (item + 4) & 2;
      have_fp = true;
    }
    else if (memcmp (e, vhdx_guid_disk_size, 16) == 0) {
      GET (8);
      v->vsize = load_le64 (item);
      have_size = true;
    }
    else if (memcmp (e, vhdx_guid_lss, 16) == 0) {
      GET (4);
      v->lss = load_le32 (item);
      have_lss = true;
    }
    else if (memcmp (e, vhdx_guid_pss, 16) == 0) {
      GET (4);
      v->pss = load_le32 (item);
      have_pss = true;
    }
    else if (memcmp (e, vhdx_guid_page83, 16) == 0) {
      GET (16);
      memcpy (v->page83, item, 16);
      have_p83 = true;
    }
    else if (memcmp (e, vhdx_guid_parent_locator, 16) == 0) {
      if (len < 20 || len > 64 * VHDX_KiB) {
        fail (EINVAL, "%s: parent locator of %" PRIu32 " bytes", v->path,
              len);
        goto out;
      }
      locbuf = malloc (len);
      if (!locbuf) {
        fail (ENOMEM, "%s: out of memory", v->path);
        goto out;
      }
      if (vhdx_file_read (v, locbuf, len, v->meta_off + off) == -1)
        goto out;
      loclen = len;
      have_loc = true;
    }
    else if (required) {
      char g[39];
      vhdx_guid_str (e, g);
      fail (ENOTSUP, "%s: unknown required metadata item %s", v->path, g);
      goto out;
    }
#undef GET
  }
  if (!have_fp || !have_size || !have_lss || !have_pss || !have_p83) {
    fail (EINVAL, "%s: a required metadata item is missing (file parameters,"
          " virtual disk size, sector sizes or page 83 data)", v->path);
    goto out;
  }
  if (!is_power_of_2 (v->block_size) || v->block_size < VHDX_MiB ||
      v->block_size > 256 * VHDX_MiB) {
    fail (EINVAL, "%s: block size %" PRIu32 " is not a power of 2 between "
          "1 MiB and 256 MiB", v->path, v->block_size);
    goto out;
  }
  if (v->lss != 512 && v->lss != 4096) {
    fail (EINVAL, "%s: logical sector size %" PRIu32 " (512 or 4096)",
          v->path, v->lss);
    goto out;
  }
  if (v->pss != 512 && v->pss != 4096) {
    fail (EINVAL, "%s: physical sector size %" PRIu32 " (512 or 4096)",
          v->path, v->pss);
    goto out;
  }
  if (v->vsize == 0 || v->vsize % v->lss || v->vsize > MAX_VSIZE) {
    fail (EINVAL, "%s: virtual disk size %" PRIu64 " (a multiple of the "
          "logical sector size, at most 64 TiB)", v->path, v->vsize);
    goto out;
  }
  if (v->has_parent && !have_loc) {
    fail (EINVAL, "%s: differencing disk without a parent locator", v->path);
    goto out;
  }
  if (v->has_parent && parse_locator (v, locbuf, loclen, loc) == -1)
    goto out;
  r = 0;
 out:
  free (locbuf);
  free (t);
  return r;
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
    return fail (EFBIG, "%s: BAT of %" PRIu64 " entries is too large (the "
                 "limit is %" PRIu64 " entries, %" PRIu64 " MiB)", v->path,
                 v->nbat, MAX_BAT_ENTRIES, MAX_BAT_ENTRIES * 8 >> 20);
  if (v->nbat * 8 > v->bat_len)
    return fail (EINVAL, "%s: BAT region (%" PRIu64 " bytes) too small for "
                 "%" PRIu64 " entries", v->path, v->bat_len, v->nbat);
  /* The BAT must be in the file: a small hostile file cannot make us
   * allocate a large table.
   */
  if (!ck_range_within (v->bat_off, v->nbat * 8, file_size))
    return fail (EINVAL, "%s: the BAT (%" PRIu64 " entries at %" PRIu64
                 ") lies past the end of the file (%" PRIu64 " bytes)",
                 v->path, v->nbat, v->bat_off, file_size);
  v->bat = malloc (v->nbat * 8);
  v->bat_dirty = calloc (div_round_up64 (v->nbat * 8, 4096), 1);
  if (!v->bat || !v->bat_dirty)
    return fail (ENOMEM, "%s: out of memory for the BAT", v->path);
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
        return fail (EINVAL, "%s: sector bitmap BAT entry %" PRIu64
                     " has state %u", v->path, i, st);
      if (st != SB_PRESENT)
        continue;
      if (!v->has_parent)
        continue;               /* unused in non-differencing disks */
      need = VHDX_MiB;
    }
    else {
      if (st == 4 || st == 5)
        return fail (EINVAL, "%s: BAT entry %" PRIu64 " has unknown state %u",
                     v->path, i, st);
      if (st == PB_PARTIALLY_PRESENT && !v->has_parent)
        return fail (EINVAL, "%s: BAT entry %" PRIu64 " is partially present "
                     "in a disk without parent", v->path, i);
      if (st != PB_FULLY_PRESENT && st != PB_PARTIALLY_PRESENT)
        continue;
      uint64_t blk = i - i / (v->chunk_ratio + 1);
      uint64_t start = blk * v->block_size;
      need = v->vsize - start < v->block_size ? v->vsize - start
        : v->block_size;
    }
    if (off < VHDX_MiB || !ck_range_within (off, need, file_size) ||
        overlaps (off, need, v->log_off, v->log_len) ||
        overlaps (off, need, v->bat_off, v->bat_len) ||
        overlaps (off, need, v->meta_off, v->meta_len))
      return fail (EINVAL, "%s: BAT entry %" PRIu64 " points to %" PRIu64
                   "+%" PRIu64 ", past the end of the file (%" PRIu64
                   " bytes) or into metadata", v->path, i, off, need,
                   file_size);
    uint64_t full = sb ? VHDX_MiB : v->block_size;
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
open_parent (struct vhdx *v, const char *path, struct locator *l,
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
  else if (pn && strcmp (pn, "none") == 0)
    return 0;
  else if (opts->no_paths || !path)
    return fail (EINVAL, "%s: differencing disk: its parent must be given "
                 "explicitly (the image has no directory to find it in)",
                 v->path);
  else {
    /* The spec's order: relative, volume, absolute. */
    const char *cand[3] = { l->relative, l->volume, l->absolute };
    const char *what[3] = { "relative_path", "volume_path",
                            "absolute_win32_path" };
    struct bdev_open_opts po = *opts;
    po.readonly = true;
    po.backing = NULL;
    for (int i = 0; i < 3 && !p; i++) {
      if (!cand[i])
        continue;
      char *ref = win_to_posix (cand[i]);
      if (!ref)
        return fail (ENOMEM, "%s: out of memory", v->path);
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
      return fail (ENOENT, "%s: cannot find the parent disk (relative_path "
                   "%s, absolute_win32_path %s; paths are confined to the "
                   "image's directory unless allowed)", v->path,
                   l->relative ? l->relative : "-",
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
        fail (EINVAL, "%s: parent %s has DataWriteGuid %s but the child "
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

static int vhdx_flush_locked (struct vhdx *v);

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
  struct locator loc = { 0 };
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
    fail (ENOMEM, "%s: out of memory", name);
    goto err;
  }
  uint64_t fsize = container->size;
  if (read_headers (v) == -1)
    goto err;
  static const uint8_t zero[16];
  if (memcmp (v->hdr + H_LOG_GUID, zero, 16) != 0) {
    if (vhdx_log_replay (v, fsize) == -1)
      goto err;
    fsize = v->ovl ? v->ovl->size : v->file->size;
  }
  memcpy (v->data_guid, v->hdr + H_DATA_GUID, 16);
  if (read_regions (v) == -1 || read_metadata (v, &loc) == -1 ||
      read_bat (v, fsize) == -1)
    goto err;
  if (v->has_parent) {
    v->nsbm = div_round_up64 (v->nblocks, v->chunk_ratio);
    v->sbm = calloc (v->nsbm, sizeof *v->sbm);
    if (!v->sbm) {
      fail (ENOMEM, "%s: out of memory", v->path);
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
  locator_free (&loc);
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
  locator_free (&loc);
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

static int
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

static int
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

/* Allocate payload block BLK (v->lock held), its content the current one
 * with BUF (N bytes at OFF; BUF NULL: zeroes) applied.
 */
static int
alloc_block (struct vhdx *v, uint64_t blk, const uint8_t *buf, size_t n,
             uint64_t off, uint64_t e)
{
  uint64_t bi = bat_index (v, blk);
  uint64_t bstart = blk * v->block_size;
  uint64_t blen = v->block_size;
  uint64_t at = v->file_end, newend;
  uint8_t *tmp = NULL;
  unsigned st = BAT_STATE (e);
  bool need_old = v->has_parent &&
    (st == PB_NOT_PRESENT || st == PB_PARTIALLY_PRESENT);

  if (!ck_add64 (at, blen, &newend) || newend > INT64_MAX)
    return fail (EFBIG, "%s: file would grow too large", v->path);
  /* Room inside the container may hold stale data: zero it first. */
  if (!need_old && at < v->file->size) {
    uint64_t zl = v->file->size - at < blen ? v->file->size - at : blen;
    if (bdev_zero (v->file, zl, at, 0) == -1)
      return -1;
  }
  if (need_old) {
    /* Copy-on-write: the whole block from the parent (and the sectors
     * the child has), so the block becomes fully present.
     */
    uint64_t vlen = v->vsize - bstart < blen ? v->vsize - bstart : blen;
    tmp = calloc (1, blen);
    if (!tmp)
      return fail (ENOMEM, "%s: out of memory", v->path);
    if (read_in_block (v, blk, e, tmp, vlen, bstart) == -1)
      goto err;
    if (buf)
      memcpy (tmp + (off - bstart), buf, n);
    else
      memset (tmp + (off - bstart), 0, n);
    if (bdev_pwrite (v->file, tmp, blen, at, 0) == -1)
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

static int
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

/* Zero (or trim) [offset, offset+count): whole blocks change state, the
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

static int
vhdx_zero (struct bdev *bd, uint64_t count, uint64_t offset, uint32_t flags)
{
  return zero_or_trim ((struct vhdx *) bd, count, offset, false, flags);
}

static int
vhdx_trim (struct bdev *bd, uint64_t count, uint64_t offset, uint32_t flags)
{
  return zero_or_trim ((struct vhdx *) bd, count, offset, true, flags);
}

/* File data first, then the BAT sectors that changed, then the file
 * again (the ordering explained at the top of this file).
 */
static int
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

static int
vhdx_flush (struct bdev *bd)
{
  struct vhdx *v = (struct vhdx *) bd;
  pthread_mutex_lock (&v->lock);
  int r = vhdx_flush_locked (v);
  pthread_mutex_unlock (&v->lock);
  return r;
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
