/* SPDX-License-Identifier: BSD-3-Clause */
/* The qcow2 engine driven by several threads at once on one open image,
 * as nbdkit's PARALLEL thread model does (tests/unit/stress.h): racing
 * allocating writes into the same clusters, sub-cluster writes, zeroes,
 * trims and flushes; an L2 cache of 4 tables for 8 (evictions while other
 * threads map); compressed writes; copy-on-write from a backing file.
 * Each variant is checked against the model, after a reopen, and by
 * qemu-img (compare with a raw mirror, check).  Under -DSANITIZE=thread
 * this is the race detector's test of the engine.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bdev/bdev.h"
#include "qcow2/qcow2.h"
#include "stress.h"

static char dir[] = "/tmp/q2thrXXXXXX";

static struct bdev *
open_img (const char *path, const char *const *fopts)
{
  struct bdev_open_opts o = { .format_opts = fopts };
  struct bdev *bd = qcow2_open (path, &o, 0);
  CHECK (bd);
  return bd;
}

static void
variant (const char *name, const struct qcow2_create_opts *co,
         const char *const *fopts, struct stress_opts so,
         const uint8_t *initial)
{
  char path[256], mirror[256], cmd[1024];
  snprintf (path, sizeof path, "%s/%s.qcow2", dir, name);
  snprintf (mirror, sizeof mirror, "%s/%s.raw", dir, name);
  CHECK (qcow2_create (path, co) == 0);

  struct stress_model m;
  stress_model_init (&m, &so, initial);
  struct bdev *bd = open_img (path, fopts);
  stress_run (bd, &so, &m, name);
  stress_check (bd, &m, name);
  stress_settle (bd, &m);
  CHECK (bdev_flush (bd) == 0);
  bdev_close (bd);

  bd = open_img (path, fopts);
  stress_check (bd, &m, name);
  bdev_close (bd);

  stress_write_mirror (&m, mirror, co->size);
  snprintf (cmd, sizeof cmd,
            "qemu-img check -q '%s' && "
            "qemu-img compare -q -f raw -F qcow2 '%s' '%s'", path, mirror, path);
  stress_system (cmd);
  stress_model_free (&m);
  unlink (mirror);
}

int
main (void)
{
  CHECK (mkdtemp (dir));

  /* 64 KiB clusters, 4 KiB blocks: 16 blocks of 4 threads per cluster. */
  struct qcow2_create_opts a = { .size = 32 << 20 };
  variant ("shared-clusters", &a, NULL,
           (struct stress_opts) { .threads = 4, .ops = 400, .block = 4096,
                                  .span = 8 << 20, .sub = 512,
                                  .zero = true, .trim = true, .seed = 1 },
           NULL);

  /* 4 KiB clusters: 8 L2 tables over 16 MiB, a cache of 4. */
  struct qcow2_create_opts b = { .size = 16 << 20, .cluster_size = 4096 };
  const char *small_cache[] = { "qcow2.cache=16384", NULL };
  variant ("l2-evictions", &b, small_cache,
           (struct stress_opts) { .threads = 4, .ops = 400, .block = 4096,
                                  .span = 16 << 20, .sub = 512,
                                  .zero = true, .trim = true, .seed = 2 },
           NULL);

  /* Compressed writes (whole clusters compressed outside the lock). */
  struct qcow2_create_opts c = { .size = 16 << 20 };
  const char *compress[] = { "qcow2.compress=zlib", NULL };
  variant ("compressed", &c, compress,
           (struct stress_opts) { .threads = 3, .ops = 150, .block = 65536,
                                  .span = 8 << 20, .sub = 4096,
                                  .zero = true, .trim = false, .seed = 3 },
           NULL);

  /* Copy-on-write from a raw backing file full of data. */
  uint64_t bsize = 8 << 20;
  uint8_t *base = malloc (bsize);
  CHECK (base);
  unsigned s = 99;
  stress_fill (base, bsize, &s);
  char bpath[256];
  snprintf (bpath, sizeof bpath, "%s/base.raw", dir);
  FILE *fp = fopen (bpath, "w");
  CHECK (fp && fwrite (base, 1, bsize, fp) == bsize && fclose (fp) == 0);
  struct qcow2_create_opts d = { .size = bsize, .backing = "base.raw",
                                 .backing_format = "raw" };
  variant ("backing-cow", &d, NULL,
           (struct stress_opts) { .threads = 4, .ops = 400, .block = 4096,
                                  .span = bsize, .sub = 512,
                                  .zero = true, .trim = true, .seed = 4 },
           base);
  free (base);

  char cmd[300];
  snprintf (cmd, sizeof cmd, "rm -rf '%s'", dir);
  CHECK (system (cmd) == 0);
  return 0;
}
