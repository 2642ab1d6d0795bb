/* SPDX-License-Identifier: BSD-3-Clause */
/* Reading LVM2 labels, PV headers and metadata areas (see lvm_disk.h). */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lvm_disk.h"
#include "util/checked.h"
#include "util/log.h"
#include "util/endian.h"

static uint32_t crc_table[256];

static void
crc_init (void)
{
  for (uint32_t i = 0; i < 256; i++) {
    uint32_t c = i;
    for (int k = 0; k < 8; k++)
      c = (c & 1) ? (c >> 1) ^ 0xedb88320u : c >> 1;
    crc_table[i] = c;
  }
}

uint32_t
lvm_crc (uint32_t crc, const void *buf, size_t len)
{
  static pthread_once_t once = PTHREAD_ONCE_INIT;
  const uint8_t *p = buf;
  pthread_once (&once, crc_init);
  while (len--)
    crc = crc_table[(crc ^ *p++) & 0xff] ^ (crc >> 8);
  return crc;
}

/* Label header (32 bytes) at the start of the label sector:
 *   0 id[8] "LABELONE"   8 sector u64   16 crc u32 (of bytes 20..511)
 *  20 offset u32 (of the PV header in the sector)   24 type[8] "LVM2 001"
 * PV header: uuid[32], device size u64, then two zero-terminated lists
 * of (offset u64, size u64): data areas, then metadata areas.
 */
int
lvm_read_label (struct bdev *bd, struct lvm_label *l, char *err,
                size_t errlen)
{
  uint8_t buf[LVM_LABEL_SCAN_SECTORS * LVM_SECTOR];
  size_t have = sizeof buf;

  memset (l, 0, sizeof *l);
  if (bd->size < have)
    have = bd->size - bd->size % LVM_SECTOR;
  if (have == 0)
    return 0;
  if (bdev_pread (bd, buf, have, 0) == -1) {
    kvm_seterr (err, errlen, "%s: cannot read the label sectors: %m", bd->name);
    return -1;
  }
  /* Like LVM, a damaged label candidate is skipped in favour of a later
   * sector; it is only reported when no valid label is found.
   */
  bool damaged = false;
  for (unsigned s = 0; s < have / LVM_SECTOR; s++) {
    const uint8_t *sec = buf + s * LVM_SECTOR;
    if (memcmp (sec, LVM_LABEL_ID, 8) != 0)
      continue;
    if (load_le64 (sec + 8) != s) {
      if (!damaged)
        kvm_seterr (err, errlen, "%s: LVM label in sector %u records sector %"
                PRIu64, bd->name, s, load_le64 (sec + 8));
      damaged = true;
      continue;
    }
    uint32_t crc = lvm_crc (LVM_INITIAL_CRC, sec + 20, LVM_SECTOR - 20);
    if (crc != load_le32 (sec + 16)) {
      if (!damaged)
        kvm_seterr (err, errlen, "%s: LVM label in sector %u has a bad checksum "
                "(0x%08" PRIx32 ", computed 0x%08" PRIx32 ")", bd->name, s,
                load_le32 (sec + 16), crc);
      damaged = true;
      continue;
    }
    if (memcmp (sec + 24, LVM_LABEL_TYPE, 8) != 0) {
      kvm_seterr (err, errlen, "%s: label type is not \"%s\" (not an LVM2 PV)",
              bd->name, LVM_LABEL_TYPE);
      return -1;
    }
    uint32_t off = load_le32 (sec + 20);
    if (off < 32 || off > LVM_SECTOR - 40) {
      kvm_seterr (err, errlen, "%s: PV header offset %" PRIu32 " out of range",
              bd->name, off);
      return -1;
    }
    const uint8_t *p = sec + off, *end = sec + LVM_SECTOR;
    l->sector = s;
    for (size_t i = 0; i < LVM_UUID_LEN; i++) {
      char c = p[i];
      if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
            (c >= '0' && c <= '9') || c == '!' || c == '#')) {
        kvm_seterr (err, errlen, "%s: PV header holds an invalid UUID",
                bd->name);
        return -1;
      }
      l->uuid[i] = c;
    }
    l->uuid[LVM_UUID_LEN] = 0;
    l->dev_size = load_le64 (p + 32);
    p += 40;
    for (int list = 0; list < 2; list++) {
      size_t *count = list ? &l->mda_count : &l->data_count;
      struct lvm_disk_locn *arr = list ? l->mda : l->data;
      for (;;) {
        if (end - p < 16) {
          kvm_seterr (err, errlen, "%s: PV header area list is not terminated",
                  bd->name);
          return -1;
        }
        uint64_t o = load_le64 (p), sz = load_le64 (p + 8);
        p += 16;
        if (o == 0)
          break;
        if (*count == LVM_MAX_MDAS) {
          kvm_seterr (err, errlen, "%s: PV header lists too many areas",
                  bd->name);
          return -1;
        }
        arr[(*count)++] = (struct lvm_disk_locn) { o, sz };
      }
    }
    return 1;
  }
  return damaged ? -1 : 0;
}

/* mda header (512 bytes):
 *   0 checksum u32 (of bytes 4..511)   4 magic[16]   20 version u32
 *  24 start u64 (absolute offset of this header)   32 size u64
 *  40 raw_locn[]: offset u64 (from start), size u64, checksum u32,
 *     flags u32; slot 0 is the committed metadata.
 */
int
lvm_read_mda (struct bdev *bd, const struct lvm_disk_locn *loc,
              bool want_text, struct lvm_mda_text *out, char *err,
              size_t errlen)
{
  uint8_t h[LVM_MDA_HEADER_SIZE];
  uint64_t start = loc->offset;

  memset (out, 0, sizeof *out);
  if (!ck_range_within (start, LVM_MDA_HEADER_SIZE, bd->size)) {
    kvm_seterr (err, errlen, "%s: metadata area at offset %" PRIu64
            " is beyond the end of the device", bd->name, start);
    return -1;
  }
  if (bdev_pread (bd, h, sizeof h, start) == -1) {
    kvm_seterr (err, errlen, "%s: cannot read the metadata area header at "
            "offset %" PRIu64 ": %m", bd->name, start);
    return -1;
  }
  uint32_t crc = lvm_crc (LVM_INITIAL_CRC, h + 4, sizeof h - 4);
  if (crc != load_le32 (h)) {
    kvm_seterr (err, errlen, "%s: metadata area header at offset %" PRIu64
            " has a bad checksum (0x%08" PRIx32 ", computed 0x%08" PRIx32
            ")", bd->name, start, load_le32 (h), crc);
    return -1;
  }
  if (memcmp (h + 4, LVM_MDA_MAGIC, 16) != 0) {
    kvm_seterr (err, errlen, "%s: metadata area header at offset %" PRIu64
            " has a wrong magic", bd->name, start);
    return -1;
  }
  if (load_le32 (h + 20) != LVM_MDA_VERSION) {
    kvm_seterr (err, errlen, "%s: metadata area header at offset %" PRIu64
            " has unsupported version %" PRIu32, bd->name, start,
            load_le32 (h + 20));
    return -1;
  }
  if (load_le64 (h + 24) != start) {
    kvm_seterr (err, errlen, "%s: metadata area header at offset %" PRIu64
            " records start %" PRIu64, bd->name, start, load_le64 (h + 24));
    return -1;
  }
  uint64_t size = load_le64 (h + 32);
  if (size <= LVM_MDA_HEADER_SIZE || !ck_range_within (start, size, bd->size)
      || (loc->size && size > loc->size)) {
    kvm_seterr (err, errlen, "%s: metadata area at offset %" PRIu64
            " has an invalid size %" PRIu64, bd->name, start, size);
    return -1;
  }
  out->mda_offset = start;
  out->mda_size = size;

  const uint8_t *rl = h + 40;
  uint64_t toff = load_le64 (rl), tsize = load_le64 (rl + 8);
  out->checksum = load_le32 (rl + 16);
  out->ignored = (load_le32 (rl + 20) & LVM_RAW_LOCN_IGNORED) != 0;
  out->text_offset = toff;
  out->text_size = tsize;
  if (toff == 0 && tsize == 0) {
    out->empty = true;
    return 0;
  }
  if (out->ignored)
    return 0;

  /* The ring is [start + 512, start + size); text may wrap to its start. */
  uint64_t ring = size - LVM_MDA_HEADER_SIZE;
  if (toff < LVM_MDA_HEADER_SIZE || toff >= size || tsize == 0 ||
      tsize > ring || tsize > LVM_MAX_METADATA) {
    kvm_seterr (err, errlen, "%s: metadata area at offset %" PRIu64
            ": text location (offset %" PRIu64 ", size %" PRIu64
            ") is invalid", bd->name, start, toff, tsize);
    return -1;
  }
  uint64_t first = size - toff < tsize ? size - toff : tsize;
  uint64_t wrap = tsize - first;
  if (wrap > toff - LVM_MDA_HEADER_SIZE) {
    kvm_seterr (err, errlen, "%s: metadata area at offset %" PRIu64
            ": wrapped text overlaps itself", bd->name, start);
    return -1;
  }
  if (!want_text)
    return 0;

  char *text = malloc (tsize + 1);
  if (!text) {
    kvm_seterr (err, errlen, "%s: out of memory for %" PRIu64 " bytes of "
            "metadata", bd->name, tsize);
    return -1;
  }
  if (bdev_pread (bd, text, first, start + toff) == -1 ||
      (wrap && bdev_pread (bd, text + first, wrap,
                           start + LVM_MDA_HEADER_SIZE) == -1)) {
    kvm_seterr (err, errlen, "%s: cannot read metadata text: %m", bd->name);
    free (text);
    return -1;
  }
  text[tsize] = 0;
  crc = lvm_crc (LVM_INITIAL_CRC, text, tsize);
  if (crc != out->checksum) {
    kvm_seterr (err, errlen, "%s: metadata text in the area at offset %" PRIu64
            " has a bad checksum (0x%08" PRIx32 ", computed 0x%08" PRIx32
            ")", bd->name, start, out->checksum, crc);
    free (text);
    return -1;
  }
  out->text = text;
  return 0;
}
