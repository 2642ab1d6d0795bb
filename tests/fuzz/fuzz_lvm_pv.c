/* SPDX-License-Identifier: BSD-3-Clause */
/* libFuzzer target: the LVM2 label, PV header and metadata area reader
 * (lvm_disk.c) over an in-memory device holding the fuzz input, followed
 * by the text parser and model on whatever metadata text it finds.
 */
#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "bdev/bdev.h"
#include "lvm/lvm_disk.h"
#include "lvm/lvm_meta.h"

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

int
LLVMFuzzerTestOneInput (const uint8_t *data, size_t size)
{
  char err[512];
  struct lvm_label l;
  struct mem_bdev *m = bdev_alloc (sizeof *m, &mem_ops, "fuzz");
  if (!m)
    return 0;
  m->data = data;
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
  return 0;
}
