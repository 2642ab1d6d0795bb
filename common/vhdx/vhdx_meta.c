/* SPDX-License-Identifier: BSD-3-Clause */
/* VHDX metadata at open ([MS-VHDX] 2.2, 2.6): the two headers (the
 * current one chosen by sequence number, both rewritten together), the
 * region tables, and the metadata region (file parameters, sizes,
 * sector sizes, page 83 data, the parent locator).  Every offset, length
 * and count read here is checked against the file and the specification's
 * limits before use.
 */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util/checked.h"
#include "util/crc32c.h"
#include "util/endian.h"
#include "util/log.h"
#include "vhdx_int.h"

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

int
vhdx_read_headers (struct vhdx *v)
{
  uint8_t h[2][VHDX_HEADER_SIZE];
  bool ok[2];
  char ident[8];

  if (bdev_pread_padded (v->file, ident, 8, 0) == -1)
    return -1;
  if (memcmp (ident, "vhdxfile", 8) != 0)
    return kvm_fail (EINVAL, "%s: not a VHDX file (no 'vhdxfile' identifier)",
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
    return kvm_fail (EINVAL, "%s: neither VHDX header is valid (signature, "
                     "CRC-32C or version)", v->path);
  memcpy (v->hdr, h[cur], VHDX_HEADER_SIZE);
  v->seq = load_le64 (v->hdr + H_SEQ);
  v->log_len = load_le32 (v->hdr + H_LOG_LEN);
  v->log_off = load_le64 (v->hdr + H_LOG_OFF);
  kvm_debug ("%s: header %d current (sequence %" PRIu64 "), log %" PRIu64
             "+%" PRIu64, v->path, cur + 1, v->seq, v->log_off, v->log_len);
  if (load_le16 (v->hdr + H_LOG_VER) != 0)
    return kvm_fail (ENOTSUP, "%s: unsupported VHDX log version %u", v->path,
                     load_le16 (v->hdr + H_LOG_VER));
  if (v->log_off % VHDX_MiB || v->log_len % VHDX_MiB ||
      v->log_off < VHDX_MiB || v->log_len == 0 ||
      !ck_range_within (v->log_off, v->log_len, INT64_MAX))
    return kvm_fail (EINVAL, "%s: bad log location %" PRIu64 "+%" PRIu64,
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
      return kvm_fail (EOVERFLOW, "%s: header sequence number overflow",
                       v->path);
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
    if (vhdx_overlaps (off, len, v->log_off, v->log_len)) {
      snprintf (why, wl, "region %" PRIu32 " overlaps the log", i);
      return -1;
    }
    for (uint32_t j = 0; j < i; j++)
      if (vhdx_overlaps (off, len, seen[j].off, seen[j].len)) {
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

int
vhdx_read_regions (struct vhdx *v)
{
  uint8_t *t = malloc (VHDX_REGION_SIZE);
  char why[2][160];
  int r = -1;

  if (!t)
    return kvm_fail (ENOMEM, "%s: out of memory", v->path);
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
    return kvm_fail (EINVAL, "%s: no valid region table (1: %s; 2: %s)",
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

void
vhdx_locator_free (struct vhdx_locator *l)
{
  free (l->linkage);
  free (l->linkage2);
  free (l->relative);
  free (l->volume);
  free (l->absolute);
}

static int
parse_locator (struct vhdx *v, const uint8_t *p, uint32_t len,
               struct vhdx_locator *l)
{
  if (len < 20)
    return kvm_fail (EINVAL, "%s: parent locator too short", v->path);
  if (memcmp (p, vhdx_guid_locator_type, 16) != 0)
    return kvm_fail (ENOTSUP, "%s: unknown parent locator type", v->path);
  uint32_t n = load_le16 (p + 18);
  if ((uint64_t) 20 + (uint64_t) n * 12 > len)
    return kvm_fail (EINVAL, "%s: parent locator entries past its end",
                     v->path);
  for (uint32_t i = 0; i < n; i++) {
    const uint8_t *e = p + 20 + 12 * i;
    uint32_t ko = load_le32 (e), vo = load_le32 (e + 4);
    uint32_t kl = load_le16 (e + 8), vl = load_le16 (e + 10);
    if (!ck_range_within (ko, kl, len) || !ck_range_within (vo, vl, len) ||
        kl == 0 || vl == 0)
      return kvm_fail (EINVAL, "%s: parent locator entry %" PRIu32
                       " out of bounds", v->path, i);
    char *k = utf16_to_utf8 (p + ko, kl);
    char *val = utf16_to_utf8 (p + vo, vl);
    if (!k || !val) {
      free (k);
      free (val);
      return kvm_fail (EINVAL, "%s: parent locator entry %" PRIu32
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
      return kvm_fail (EINVAL, "%s: duplicate parent locator key", v->path);
    }
    if (dst)
      *dst = val;
    else
      free (val);
  }
  if (!l->linkage)
    return kvm_fail (EINVAL, "%s: parent locator has no parent_linkage",
                     v->path);
  return 0;
}

int
vhdx_read_metadata (struct vhdx *v, struct vhdx_locator *loc)
{
  uint8_t *t = malloc (VHDX_METATAB_SIZE);
  bool have_fp = false, have_size = false, have_lss = false, have_pss = false;
  bool have_p83 = false, have_loc = false;
  uint8_t *locbuf = NULL;
  uint32_t loclen = 0;
  int r = -1;

  if (!t)
    return kvm_fail (ENOMEM, "%s: out of memory", v->path);
  if (vhdx_file_read (v, t, VHDX_METATAB_SIZE, v->meta_off) == -1)
    goto out;
  if (memcmp (t, "metadata", 8) != 0) {
    kvm_fail (EINVAL, "%s: metadata table has no 'metadata' signature",
              v->path);
    goto out;
  }
  uint32_t n = load_le16 (t + 10);
  if (n > 2047) {
    kvm_fail (EINVAL, "%s: metadata table has %" PRIu32 " entries (at most "
              "2047)", v->path, n);
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
      kvm_fail (EINVAL, "%s: metadata item %" PRIu32 " at %" PRIu32 "+%" PRIu32
                " outside the metadata region", v->path, i, off, len);
      goto out;
    }
    for (uint32_t j = 0; j < i; j++)
      if (memcmp (t + 32 + 32 * j, e, 16) == 0) {
        kvm_fail (EINVAL, "%s: duplicate metadata item %" PRIu32, v->path, i);
        goto out;
      }
#define GET(sz)                                                         \
    if (len < (sz)) {                                                   \
      kvm_fail (EINVAL, "%s: metadata item %" PRIu32 " too short",    \
                v->path, i);                                            \
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
        kvm_fail (EINVAL, "%s: parent locator of %" PRIu32 " bytes", v->path,
                  len);
        goto out;
      }
      locbuf = malloc (len);
      if (!locbuf) {
        kvm_fail (ENOMEM, "%s: out of memory", v->path);
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
      kvm_fail (ENOTSUP, "%s: unknown required metadata item %s", v->path, g);
      goto out;
    }
#undef GET
  }
  if (!have_fp || !have_size || !have_lss || !have_pss || !have_p83) {
    kvm_fail (EINVAL, "%s: a required metadata item is missing (file "
              "parameters, virtual disk size, sector sizes or page 83 data)",
              v->path);
    goto out;
  }
  if (!is_power_of_2 (v->block_size) || v->block_size < VHDX_MiB ||
      v->block_size > 256 * VHDX_MiB) {
    kvm_fail (EINVAL, "%s: block size %" PRIu32 " is not a power of 2 between "
              "1 MiB and 256 MiB", v->path, v->block_size);
    goto out;
  }
  if (v->lss != 512 && v->lss != 4096) {
    kvm_fail (EINVAL, "%s: logical sector size %" PRIu32 " (512 or 4096)",
              v->path, v->lss);
    goto out;
  }
  if (v->pss != 512 && v->pss != 4096) {
    kvm_fail (EINVAL, "%s: physical sector size %" PRIu32 " (512 or 4096)",
              v->path, v->pss);
    goto out;
  }
  if (v->vsize == 0 || v->vsize % v->lss || v->vsize > VHDX_MAX_VSIZE) {
    kvm_fail (EINVAL, "%s: virtual disk size %" PRIu64 " (a multiple of the "
              "logical sector size, at most 64 TiB)", v->path, v->vsize);
    goto out;
  }
  if (v->has_parent && !have_loc) {
    kvm_fail (EINVAL, "%s: differencing disk without a parent locator",
              v->path);
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
