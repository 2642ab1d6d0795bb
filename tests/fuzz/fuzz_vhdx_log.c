/* SPDX-License-Identifier: BSD-3-Clause */
/* Fuzz target for VHDX log replay: the input (vhdx_sparse.h) is an image
 * whose header names a log.  It is opened read-only (replay into memory;
 * the file must not change) and read, then opened read-write (replay to
 * the file, which may grow) and read again.  Inputs of even length get
 * their checksums repaired first (vhdx_fix.h).
 *
 * Seeds: tests/fuzz/corpus/vhdx_log/ (dirty images from vhdx-tool.py's
 * log generator), made by tests/fuzz/make-vhdx-corpus.sh.
 */
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "bdev/bdev.h"
#include "fuzz_common.h"
#include "util/log.h"
#include "vhdx/vhdx.h"
#include "vhdx_fix.h"
#include "vhdx_sparse.h"

static void
read_some (struct bdev *bd)
{
  uint64_t size = bd->size;
  for (uint64_t off = 0; off < size && off < 4 * sizeof fuzz_buf;
       off += sizeof fuzz_buf) {
    size_t n = size - off < sizeof fuzz_buf ? size - off : sizeof fuzz_buf;
    bdev_pread (bd, fuzz_buf, n, off);
  }
  if (size > 4096)
    bdev_pread (bd, fuzz_buf, 4096, size / 2 / 4096 * 4096);
}

int
LLVMFuzzerTestOneInput (const uint8_t *data, size_t size)
{
  fuzz_init ("vhdxlog", "img.vhdx");
  if (vhdx_sparse_write (imgpath, data, size) == -1)
    abort ();
  if (size % 2 == 0)
    vhdx_fix_checksums (imgpath);
  struct stat before, after;
  if (stat (imgpath, &before) == -1)
    abort ();
  static const char *const noparent[] = { "vhdx.parent=none", NULL };
  struct bdev_open_opts opts = {
    .readonly = true,
    .max_chain_depth = 2,
    .format_opts = noparent,
  };
  struct bdev *bd = bdev_open (imgpath, "vhdx", &opts, 0);
  if (bd) {
    read_some (bd);
    bdev_close (bd);
  }
  /* A read-only open never changes the file. */
  if (stat (imgpath, &after) == -1 || after.st_size != before.st_size ||
      after.st_mtim.tv_sec != before.st_mtim.tv_sec ||
      after.st_mtim.tv_nsec != before.st_mtim.tv_nsec)
    abort ();
  opts.readonly = false;
  bd = bdev_open (imgpath, "vhdx", &opts, 0);
  if (bd) {
    read_some (bd);
    bdev_close (bd);
  }
  unlink (imgpath);
  return 0;
}
