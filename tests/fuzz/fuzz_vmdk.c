/* SPDX-License-Identifier: BSD-3-Clause */
/* Fuzz target for the VMDK engine's sparse extent reader: the input is a
 * whole (small) hosted sparse or COWD file, or a descriptor.  It is
 * written to a file in a private temporary directory (any extent or
 * parent name it holds resolves there and nowhere else), opened read-only
 * with bdev_open(path, "vmdk"), read and mapped across its virtual size
 * (bounded), then opened read-write for a few writes, zero writes, trims
 * and a flush (grain and grain table allocation on hostile metadata).
 * The image it wrote must open again (fuzz_reopen).
 *
 * Seeds: tests/fuzz/corpus/vmdk/, made by tests/fuzz/make-vmdk-corpus.sh.
 */
#include <stdint.h>

#include "bdev/bdev.h"
#include "fuzz_common.h"
#include "vmdk/vmdk.h"

static const struct fuzz_limits limits = {
  .max_read = 1024 * 1024,
  .max_map = 256ull * 1024 * 1024,
  .probes = 16,
  .max_file = 64 * 1024 * 1024,
  .fill = 0xa5,
  .map_tail = true,
  .reread = false,
};

int
LLVMFuzzerTestOneInput (const uint8_t *data, size_t size)
{
  fuzz_init ("vmdk", "img.vmdk");
  fuzz_write_image (data, size);
  fuzz_keep_image ("orig");

  static const char *const noparent[] = { "vmdk.backing=none", NULL };
  struct bdev_open_opts opts = {
    .readonly = true,
    .max_chain_depth = 4,
    .format_opts = noparent,
  };
  struct bdev *bd = bdev_open (imgpath, "vmdk", &opts, 0);
  if (bd) {
    fuzz_exercise_read (bd, &limits);
    bdev_close (bd);
  }
  /* Read-write over a parent of zeroes, so that delta disks are written
   * too (with backing=none they are read-only).
   */
  struct bdev_open_opts wo = opts;
  wo.readonly = false;
  wo.format_opts = NULL;
  wo.backing = fuzz_zero_backing ();
  bd = bdev_open (imgpath, "vmdk", &wo, 0);
  if (bd) {
    bool wrote = !bd->readonly;
    if (wrote)
      fuzz_exercise_write (bd, data, size, &limits);
    fuzz_exercise_read (bd, &limits);
    bdev_close (bd);
    if (wrote) {
      fuzz_keep_image ("written");
      fuzz_reopen ("vmdk", &opts);
    }
  }
  unlink (imgpath);
  return 0;
}
