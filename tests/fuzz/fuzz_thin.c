/* SPDX-License-Identifier: BSD-3-Clause */
/* Fuzz target for the thin engine: the input is the start of a pool (its
 * metadata area, and maybe some data), padded with zeroes to 1 MiB.  The
 * checker walks it; then the engine opens it (never formatting: an
 * all-zero input is refused), reads, writes, trims and flushes.  Whatever
 * the input, once the engine has opened it and committed, the checker
 * must find the metadata clean (the engine refuses or repairs what it
 * cannot use): abort () otherwise.
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
#include "util/log.h"

#define POOL_SIZE (1024 * 1024)

static FILE *devnull;

static long
check (void)
{
  struct bdev_open_opts o = { .readonly = true };
  struct bdev *pool = bdev_file_open (imgpath, &o);
  if (!pool)
    abort ();
  long n = thin_check (pool, NULL, devnull, true);
  bdev_close (pool);
  return n;
}

int
LLVMFuzzerTestOneInput (const uint8_t *data, size_t size)
{
  static uint8_t buf[3 * 65536];

  fuzz_init ("thin", "pool");
  if (!devnull && !(devnull = fopen ("/dev/null", "w")))
    abort ();
  if (size > POOL_SIZE)
    size = POOL_SIZE;
  int fd = open (imgpath, O_WRONLY | O_CREAT | O_TRUNC, 0600);
  if (fd == -1 || (size && write (fd, data, size) != (ssize_t) size) ||
      ftruncate (fd, POOL_SIZE) == -1)
    abort ();
  close (fd);

  check ();

  struct bdev_open_opts o = { 0 };
  struct bdev *pool = bdev_file_open (imgpath, &o);
  if (!pool)
    abort ();
  struct thin_opts t = { .format = false };
  struct bdev *bd = thin_open (pool, &t);
  if (!bd)
    return 0;
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
  return 0;
}
