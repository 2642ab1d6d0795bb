/* SPDX-License-Identifier: BSD-3-Clause */
/* Fuzz target for the VHDX engine's parsers: file identifier, headers,
 * region tables, metadata items (file parameters, sizes, parent locator),
 * BAT and sector bitmaps.  The input (vhdx_sparse.h) becomes a file in a
 * private directory; it is opened read-only with the parent ignored, read
 * and mapped across its virtual size (bounded), then opened read-write
 * and given a few writes, zero writes, trims and a flush.
 *
 * Seeds: tests/fuzz/corpus/vhdx/, made by tests/fuzz/make-vhdx-corpus.sh.
 */
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "bdev/bdev.h"
#include "util/log.h"
#include "vhdx/vhdx.h"
#include "vhdx_sparse.h"

#define MAX_READ (1024 * 1024)
#define MAX_MAP  (1ull << 40)
#define PROBES   16
#define MAX_FILE (128 * 1024 * 1024)

static char dirpath[64];
static char imgpath[96];
static uint8_t buf[65536];

static void
remove_dir (void)
{
  unlink (imgpath);
  rmdir (dirpath);
}

static void
quiet (const char *fmt, va_list args)
{
  (void) fmt; (void) args;
}

static int
count_extent (void *opaque, uint64_t offset, uint64_t length, uint32_t type)
{
  (void) offset; (void) type;
  uint64_t *n = opaque;
  if (length == 0)
    abort ();
  (*n)++;
  return *n > 100000 ? -1 : 0;
}

static void
exercise_read (struct bdev *bd)
{
  uint64_t size = bd->size;
  uint64_t lim = size < MAX_READ ? size : MAX_READ;
  for (uint64_t off = 0; off < lim; off += sizeof buf) {
    size_t n = lim - off < sizeof buf ? lim - off : sizeof buf;
    bdev_pread (bd, buf, n, off);
  }
  for (unsigned i = 1; i <= PROBES && size > 0; i++) {
    uint64_t off = size / (PROBES + 1) * i;
    size_t n = size - off < 4096 ? size - off : 4096;
    if (n)
      bdev_pread (bd, buf, n, off);
  }
  if (size > 3)
    bdev_pread (bd, buf, 3, size - 3);
  uint64_t count = 0;
  uint64_t mlen = size < MAX_MAP ? size : MAX_MAP;
  if (mlen)
    bdev_extents (bd, mlen, 0, 0, count_extent, &count);
}

static void
exercise_write (struct bdev *bd, const uint8_t *data, size_t size)
{
  uint64_t vsize = bd->size;
  memset (buf, 0x5a, sizeof buf);
  for (unsigned i = 0; i < 6; i++) {
    uint64_t seedv = 0;
    if (size >= 8)
      memcpy (&seedv, data + (size > 8 * (i + 1) ? size - 8 * (i + 1) : 0), 8);
    uint64_t off = seedv % vsize;
    size_t n = (seedv >> 40) % sizeof buf + 1;
    if (n > vsize - off)
      n = vsize - off;
    switch (i % 3) {
    case 0: bdev_pwrite (bd, buf, n, off, i == 3 ? BDEV_FUA : 0); break;
    case 1: bdev_zero (bd, n, off, (seedv & 1) ? BDEV_MAY_TRIM : 0); break;
    case 2: bdev_trim (bd, n, off, 0); break;
    }
    struct stat st;
    if (stat (imgpath, &st) == 0 && st.st_size > MAX_FILE)
      break;
  }
  bdev_flush (bd);
}

int
LLVMFuzzerTestOneInput (const uint8_t *data, size_t size)
{
  if (!dirpath[0]) {
    kvm_log_set (quiet, quiet);
    strcpy (dirpath, "/tmp/fuzz-vhdx.XXXXXX");
    if (!mkdtemp (dirpath))
      abort ();
    snprintf (imgpath, sizeof imgpath, "%s/img.vhdx", dirpath);
    atexit (remove_dir);
  }
  if (vhdx_sparse_write (imgpath, data, size) == -1)
    abort ();
  static const char *const noparent[] = { "vhdx.parent=none", NULL };
  struct bdev_open_opts opts = {
    .readonly = true,
    .max_chain_depth = 2,
    .format_opts = noparent,
  };
  struct bdev *bd = bdev_open (imgpath, "vhdx", &opts, 0);
  if (bd) {
    exercise_read (bd);
    bdev_close (bd);
  }
  opts.readonly = false;
  bd = bdev_open (imgpath, "vhdx", &opts, 0);
  if (bd) {
    if (!bd->readonly && bd->size)
      exercise_write (bd, data, size);
    exercise_read (bd);
    bdev_close (bd);
  }
  unlink (imgpath);
  return 0;
}
