/* SPDX-License-Identifier: BSD-3-Clause */
/* Fuzz target for the VHDX engine's parsers: file identifier, headers,
 * region tables, metadata items (file parameters, sizes, parent locator),
 * BAT and sector bitmaps.  The input (vhdx_sparse.h) becomes a file in a
 * private directory; it is opened read-only with the parent ignored, read
 * and mapped across its virtual size (bounded), then opened read-write
 * and given a few writes, zero writes, trims and a flush.  Inputs of even
 * length get their checksums repaired first (vhdx_fix.h).  The image it
 * wrote must open again (fuzz_reopen).
 *
 * Seeds: tests/fuzz/corpus/vhdx/, made by tests/fuzz/make-vhdx-corpus.sh.
 */
#include <stdint.h>

#include "bdev/bdev.h"
#include "fuzz_common.h"
#include "vhdx/vhdx.h"
#include "vhdx_fix.h"
#include "vhdx_sparse.h"

static const struct fuzz_limits limits = {
  .max_read = 1024 * 1024,
  .max_map = 1ull << 40,
  .probes = 16,
  .max_file = 128 * 1024 * 1024,
  .fill = 0x5a,
  .map_tail = false,
  .reread = false,
};

int
LLVMFuzzerTestOneInput (const uint8_t *data, size_t size)
{
  fuzz_init ("vhdx", "img.vhdx");
  if (vhdx_sparse_write (imgpath, data, size) == -1)
    abort ();
  if (size % 2 == 0)
    vhdx_fix_checksums (imgpath);
  fuzz_keep_image ("orig");
  static const char *const noparent[] = { "vhdx.parent=none", NULL };
  struct bdev_open_opts opts = {
    .readonly = true,
    .max_chain_depth = 2,
    .format_opts = noparent,
  };
  struct bdev *bd = bdev_open (imgpath, "vhdx", &opts, 0);
  if (bd) {
    fuzz_exercise_read (bd, &limits);
    bdev_close (bd);
  }
  /* Read-write over a parent of zeroes, so that differencing disks are
   * written too (with parent=none they are read-only).
   */
  struct bdev_open_opts wo = opts;
  wo.readonly = false;
  wo.format_opts = NULL;
  wo.backing = fuzz_zero_backing ();
  bd = bdev_open (imgpath, "vhdx", &wo, 0);
  if (bd) {
    bool wrote = !bd->readonly && bd->size;
    if (wrote)
      fuzz_exercise_write (bd, data, size, &limits);
    fuzz_exercise_read (bd, &limits);
    bdev_close (bd);
    if (wrote) {
      fuzz_keep_image ("written");
      fuzz_reopen ("vhdx", &opts);
    }
  }
  unlink (imgpath);
  return 0;
}
