/* SPDX-License-Identifier: BSD-3-Clause */
/* Fuzz target for the thin engine: the input is the start of a pool (its
 * metadata area, and maybe some data), padded with zeroes to 1 MiB.  The
 * checker walks it; then the engine opens it (never formatting: an
 * all-zero input is refused), reads, writes, trims and flushes.  Whatever
 * the input, once the engine has opened it and committed, the checker
 * must find the metadata clean (the engine refuses or repairs what it
 * cannot use): abort () otherwise.
 *
 * Every block carries a CRC-32C, so a mutated pool almost never gets past
 * the checksums.  An input of even length is therefore repaired first
 * (fix_pool): each header with the magic gets the geometry fields its
 * virtual size and chunk size imply and a fresh checksum, and every table
 * and bitmap block inside the input is re-checksummed, so that mutated
 * entries, bitmaps and sizes reach the engine.  Odd lengths are used as
 * they are, and test the checksums themselves.
 *
 * A pool whose first header says its metadata is separate (flags bit 0)
 * is opened as such: the input is then the metadata file, and the data
 * goes to an empty 1 MiB file beside it.
 *
 * Seeds: tests/fuzz/corpus/thin/, made by tests/fuzz/make-thin-corpus.sh.
 */
#include <fcntl.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bdev/bdev.h"
#include "fuzz_common.h"
#include "thin/thin.h"
#include "thin/thin_int.h"
#include "util/crc32c.h"
#include "util/endian.h"
#include "util/log.h"

#define POOL_SIZE (1024 * 1024)

static FILE *devnull;
static char datapath[600];      /* the data of a pool with separate metadata */
static bool external;

/* Open the pool (and its separate metadata file) as the input says. */
static void
open_devs (bool readonly, struct bdev **pool, struct bdev **meta)
{
  struct bdev_open_opts o = { .readonly = readonly };
  *pool = bdev_file_open (external ? datapath : imgpath, &o);
  *meta = external ? bdev_file_open (imgpath, &o) : NULL;
  if (!*pool || (external && !*meta))
    abort ();
}

static long
check (void)
{
  struct bdev *pool, *meta;
  open_devs (true, &pool, &meta);
  long n = thin_check (pool, meta, devnull, true);
  if (meta)
    bdev_close (meta);
  bdev_close (pool);
  return n;
}

/* Re-checksum the body blocks of slot SLOT that lie inside P[0..LEN). */
static void
fix_body (uint8_t *p, size_t len, const struct geom *g, unsigned slot)
{
  uint64_t off = thin_body_off (g, slot);
  for (uint64_t b = 0; b < (uint64_t) g->tblocks + g->bblocks; b++) {
    uint64_t at = off + b * TBLK;
    if (at >= len || len - at < TBLK)
      return;
    uint32_t seed = b < g->tblocks ? (uint32_t) b
                                   : 0x80000000u | (uint32_t) (b - g->tblocks);
    store_le32 (p + at + TBLK - 4, thin_block_crc (seed, p + at));
  }
}

/* Make the headers in P[0..LEN) consistent and every block's checksum
 * right (see the top of the file).
 */
static void
fix_pool (uint8_t *p, size_t len)
{
  char err[200];
  for (unsigned s = 0; s < 2 && (s + 1) * (size_t) TBLK <= len; s++) {
    uint8_t *h = p + s * TBLK;
    struct geom g;
    if (memcmp (h, "NBDKTHIN", 8) != 0)
      continue;
    if (thin_geom_compute (&g, load_le64 (h + 24), load_le32 (h + 32),
                           load_le32 (h + 36) & 1, err, sizeof err) == 0) {
      store_le64 (h + 40, g.nv);
      store_le64 (h + 48, g.data_off);
      store_le32 (h + 56, g.tblocks);
      store_le32 (h + 60, g.bblocks);
      store_le64 (h + 64, g.body_bytes);
      fix_body (p, len, &g, 0);
      fix_body (p, len, &g, 1);
    }
    store_le32 (h + TBLK - 4, crc32c (0, h, TBLK - 4));
  }
}

int
LLVMFuzzerTestOneInput (const uint8_t *data, size_t size)
{
  static uint8_t buf[3 * 65536];
  static uint8_t image[POOL_SIZE];

  fuzz_init ("thin", "pool");
  if (!devnull && !(devnull = fopen ("/dev/null", "w")))
    abort ();
  if (size > POOL_SIZE)
    size = POOL_SIZE;
  memcpy (image, data, size);
  if (size % 2 == 0)
    fix_pool (image, size);
  int fd = open (imgpath, O_WRONLY | O_CREAT | O_TRUNC, 0600);
  if (fd == -1 || (size && write (fd, image, size) != (ssize_t) size) ||
      ftruncate (fd, POOL_SIZE) == -1)
    abort ();
  close (fd);
  snprintf (datapath, sizeof datapath, "%s/data", dirpath);
  external = size >= 40 && (load_le32 (image + 36) & 1);
  if (external) {
    fd = open (datapath, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (fd == -1 || ftruncate (fd, POOL_SIZE) == -1)
      abort ();
    close (fd);
  }

  check ();

  struct bdev *pool, *meta;
  open_devs (false, &pool, &meta);
  struct thin_opts t = { .format = false, .meta = meta };
  struct bdev *bd = thin_open (pool, &t);
  if (!bd) {
    unlink (datapath);
    return 0;
  }
  uint64_t vs = bd->size, n = 0;
  size_t len = vs < sizeof buf ? vs : sizeof buf;
  bdev_pread (bd, buf, len, 0);
  bdev_pread (bd, buf, len, vs - len);
  bdev_extents (bd, vs < (64u << 20) ? vs : (64u << 20), 0, 0,
                fuzz_count_extent, &n);
  memset (buf, 0x5a, sizeof buf);
  for (unsigned i = 0; i < 8; i++) {
    uint64_t off = vs / 9 * i + 1000;
    size_t l = off < vs ? (vs - off < 70000 ? vs - off : 70000) : 0;
    if (l)
      bdev_pwrite (bd, buf, l, off, i == 3 ? BDEV_FUA : 0);
  }
  bdev_trim (bd, vs / 2, 0, 0);
  bdev_zero (bd, vs / 4, vs / 2, 0);
  bdev_flush (bd);
  bdev_pwrite (bd, buf, len, 0, 0);
  bdev_pread (bd, buf, len, 0);
  bdev_close (bd);
  if (check () != 0)
    abort ();                   /* the engine left inconsistent metadata */
  unlink (datapath);
  return 0;
}
