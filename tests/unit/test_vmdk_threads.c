/* SPDX-License-Identifier: BSD-3-Clause */
/* The vmdk engine driven by several threads at once on one open image,
 * as nbdkit's PARALLEL thread model does (tests/unit/stress.h): racing
 * allocating writes into the same grains and grain tables, sub-grain
 * writes, zeroes, trims and flushes, for a hosted sparse extent
 * (monolithicSparse), with and without zeroed-grain support, and split
 * sparse extents (twoGbMaxExtentSparse).  Checked against the model,
 * after a reopen, and by qemu-img (check, compare with a raw mirror).
 * Under -DSANITIZE=thread this is the race detector's test of the engine.
 */
#include <stdio.h>
#include <stdlib.h>

#include "stress.h"

static char dir[] = "/tmp/vmdkthrXXXXXX";

int
main (void)
{
  CHECK (mkdtemp (dir));
  /* 64 KiB grains, 512 grains per grain table (32 MiB): 4 KiB blocks put
   * 16 blocks of 4 threads in each grain.
   */
  const char *sparse[] = { "subformat=monolithicSparse", NULL };
  stress_format_variant (dir, "vmdk", "sparse", sparse, NULL, 64 << 20,
                         (struct stress_opts) {
                           .threads = 4, .ops = 400, .block = 4096,
                           .span = 64 << 20, .sub = 512, .zero = true,
                           .trim = true, .seed = 11 }, "vmdk");
  const char *zg[] = { "subformat=monolithicSparse", "zeroed_grain=on", NULL };
  stress_format_variant (dir, "vmdk", "zeroed-grain", zg, NULL, 16 << 20,
                         (struct stress_opts) {
                           .threads = 4, .ops = 400, .block = 4096,
                           .span = 16 << 20, .sub = 512, .zero = true,
                           .trim = true, .seed = 12 }, "vmdk");
  const char *split[] = { "subformat=twoGbMaxExtentSparse", NULL };
  stress_format_variant (dir, "vmdk", "split", split, NULL, 16 << 20,
                         (struct stress_opts) {
                           .threads = 3, .ops = 300, .block = 16384,
                           .span = 16 << 20, .sub = 4096, .zero = true,
                           .trim = false, .seed = 13 }, "vmdk");

  char cmd[300];
  snprintf (cmd, sizeof cmd, "rm -rf '%s'", dir);
  CHECK (system (cmd) == 0);
  return 0;
}
