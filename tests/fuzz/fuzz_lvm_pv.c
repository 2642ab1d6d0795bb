/* SPDX-License-Identifier: BSD-3-Clause */
/* libFuzzer target: the LVM2 label, PV header and metadata area reader
 * (lvm_disk.c) over an in-memory device holding the fuzz input, followed
 * by the text parser and model on whatever metadata text it finds.
 *
 * The label, each metadata area header and the metadata text carry a
 * checksum, so a mutation of the PV header, of an area header or of the
 * text almost never gets past them.  Inputs of even length are therefore
 * repaired first (fix_pv): every checksum is recomputed over what it
 * covers, text first, so that the mutated fields reach the parsers.  Odd
 * lengths are used as they are, and test the checksums themselves.
 */
#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "bdev/bdev.h"
#include "lvm/lvm_disk.h"
#include "lvm/lvm_meta.h"
#include "util/endian.h"



struct mem_bdev {
  struct bdev bd;
  const uint8_t *data;
};

static void
mem_close (struct bdev *bd)
{
  bdev_free_common (bd);
}

static int
mem_pread (struct bdev *bd, void *buf, size_t count, uint64_t offset)
{
  struct mem_bdev *m = (struct mem_bdev *) bd;
  memcpy (buf, m->data + offset, count);  /* bdev_pread checked the range */
  return 0;
}

static int
mem_pwrite (struct bdev *bd, const void *buf, size_t count, uint64_t offset,
            uint32_t flags)
{
  (void) bd; (void) buf; (void) count; (void) offset; (void) flags;
  errno = EROFS;
  return -1;
}

static int
mem_flush (struct bdev *bd)
{
  (void) bd;
  return 0;
}

static const struct bdev_ops mem_ops = {
  .format = "mem", .close = mem_close, .pread = mem_pread,
  .pwrite = mem_pwrite, .flush = mem_flush,
};

/* Give the metadata area header at OFF in P[0..LEN) the checksum of the
 * text its first location names (if that lies inside the area and P) and
 * then its own.
 */
static void
fix_mda (uint8_t *p, size_t len, uint64_t off)
{
  if (off > len || len - off < LVM_MDA_HEADER_SIZE)
    return;
  uint8_t *h = p + off, *rl = h + 40;
  uint64_t size = load_le64 (h + 32);
  uint64_t toff = load_le64 (rl), tsize = load_le64 (rl + 8);
  if (size > LVM_MDA_HEADER_SIZE && size <= len - off &&
      toff >= LVM_MDA_HEADER_SIZE && toff < size && tsize &&
      tsize <= size - LVM_MDA_HEADER_SIZE) {
    uint64_t first = size - toff < tsize ? size - toff : tsize;
    uint32_t crc = lvm_crc (LVM_INITIAL_CRC, h + toff, first);
    crc = lvm_crc (crc, h + LVM_MDA_HEADER_SIZE, tsize - first);
    store_le32 (rl + 16, crc);
  }
  store_le32 (h, lvm_crc (LVM_INITIAL_CRC, h + 4, LVM_MDA_HEADER_SIZE - 4));
}

/* Repair P[0..LEN): each label candidate's metadata areas, then the label. */
static void
fix_pv (uint8_t *p, size_t len)
{
  for (size_t s = 0;
       s < LVM_LABEL_SCAN_SECTORS && (s + 1) * LVM_SECTOR <= len; s++) {
    uint8_t *sec = p + s * LVM_SECTOR;
    if (memcmp (sec, "LABELONE", 8) != 0)
      continue;
    uint32_t off = load_le32 (sec + 20);
    if (off >= 32 && off <= LVM_SECTOR - 40) {
      /* After the UUID and size: data areas, then metadata areas, each
       * list ended by a zero offset.
       */
      const uint8_t *a = sec + off + 40;
      for (int list = 0; list < 2; list++)
        while (a + 16 <= sec + LVM_SECTOR) {
          uint64_t o = load_le64 (a);
          a += 16;
          if (o == 0)
            break;
          if (list == 1)
            fix_mda (p, len, o);
        }
    }
    store_le32 (sec + 16, lvm_crc (LVM_INITIAL_CRC, sec + 20, LVM_SECTOR - 20));
  }
}

int
LLVMFuzzerTestOneInput (const uint8_t *data, size_t size)
{
  char err[512];
  struct lvm_label l;
  uint8_t *copy = malloc (size ? size : 1);
  if (!copy)
    abort ();
  memcpy (copy, data, size);
  if (size % 2 == 0)
    fix_pv (copy, size);
  struct mem_bdev *m = bdev_alloc (sizeof *m, &mem_ops, "fuzz");
  if (!m) {
    free (copy);
    return 0;
  }
  m->data = copy;
  m->bd.size = size;
  m->bd.readonly = true;
  if (lvm_read_label (&m->bd, &l, err, sizeof err) == 1) {
    for (size_t i = 0; i < l.mda_count; i++) {
      struct lvm_mda_text t;
      if (lvm_read_mda (&m->bd, &l.mda[i], true, &t, err, sizeof err) == 0
          && t.text) {
        struct lvm_meta_vg *vg = lvm_meta_parse (t.text, t.text_size, err,
                                                 sizeof err);
        lvm_meta_free (vg);
        free (t.text);
      }
    }
  }
  bdev_close (&m->bd);
  free (copy);
  return 0;
}
