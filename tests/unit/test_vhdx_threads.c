/* SPDX-License-Identifier: BSD-3-Clause */
/* The vhdx engine driven by several threads at once on one open image,
 * as nbdkit's PARALLEL thread model does (tests/unit/stress.h): racing
 * allocating writes into the same payload blocks, partial-sector-bitmap
 * writes, zeroes, trims and flushes, on dynamic images with 1 MiB blocks
 * (512 and 4096-byte logical sectors) and a fixed image.  Checked against
 * the model, after a reopen, and (512-byte sectors) by qemu-img (check,
 * compare with a raw mirror).  Under -DSANITIZE=thread this is the race detector's test of
 * the engine.
 */
#include <stdio.h>
#include <stdlib.h>

#include "stress.h"

static char dir[] = "/tmp/vhdxthrXXXXXX";

int
main (void)
{
  CHECK (mkdtemp (dir));
  const char *dyn[] = { "subformat=dynamic", "block_size=1048576", NULL };
  stress_format_variant (dir, "vhdx", "dynamic", dyn, NULL, 16 << 20,
                         (struct stress_opts) {
                           .threads = 4, .ops = 400, .block = 4096,
                           .span = 16 << 20, .sub = 512, .zero = true,
                           .trim = true, .seed = 21 }, "vhdx");
  const char *dyn4k[] = { "subformat=dynamic", "block_size=1048576",
                          "logical_sector_size=4096", NULL };
  stress_format_variant (dir, "vhdx", "dynamic-4k", dyn4k, NULL, 16 << 20,
                         (struct stress_opts) {
                           .threads = 4, .ops = 300, .block = 8192,
                           .span = 16 << 20, .sub = 4096, .zero = true,
                           .trim = true, .seed = 22 },
                         /* QEMU 7.2 cannot open 4096-byte logical sectors
                          * (tests/vhdx/test-vhdx-read.sh): model and
                          * reopen checks only. */
                         NULL);
  const char *fixed[] = { "subformat=fixed", "block_size=1048576", NULL };
  stress_format_variant (dir, "vhdx", "fixed", fixed, NULL, 8 << 20,
                         (struct stress_opts) {
                           .threads = 4, .ops = 300, .block = 4096,
                           .span = 8 << 20, .sub = 512, .zero = true,
                           .trim = false, .seed = 23 }, "vhdx");

  char cmd[300];
  snprintf (cmd, sizeof cmd, "rm -rf '%s'", dir);
  CHECK (system (cmd) == 0);
  return 0;
}
