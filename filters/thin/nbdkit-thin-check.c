/* SPDX-License-Identifier: BSD-3-Clause */
/* nbdkit-thin-check: walk the metadata of a thin pool (nbdkit-thin-filter)
 * and report double mappings, leaks, out-of-range entries and damaged
 * blocks.  Exit status: 0 clean, 1 problems found, 2 unreadable/usage.
 */
#include <getopt.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bdev/bdev.h"
#include "thin/thin.h"
#include "util/log.h"
#include "util/progress.h"

static void
usage (FILE *f)
{
  fprintf (f, "usage: nbdkit-thin-check [-v] [-m METADATA-FILE] POOL\n"
           "  POOL: the file or device under nbdkit --filter=thin\n"
           "  -m, --metadata FILE   the metadata file (thin-metadata=FILE)\n"
           "  -v, --verbose         also print both metadata headers\n"
           "On a terminal, a progress line is drawn on stderr.\n");
}

int
main (int argc, char **argv)
{
  static const struct option lo[] = {
    { "metadata", required_argument, NULL, 'm' },
    { "verbose", no_argument, NULL, 'v' },
    { "help", no_argument, NULL, 'h' },
    { NULL, 0, NULL, 0 },
  };
  const char *metapath = NULL;
  bool verbose = false;
  int c;

  while ((c = getopt_long (argc, argv, "m:vh", lo, NULL)) != -1) {
    switch (c) {
    case 'm': metapath = optarg; break;
    case 'v': verbose = true; break;
    case 'h': usage (stdout); return 0;
    default: usage (stderr); return 2;
    }
  }
  if (optind != argc - 1) {
    usage (stderr);
    return 2;
  }
  struct bdev_open_opts o = { .readonly = true };
  struct bdev *pool = bdev_storage_open (argv[optind], &o), *meta = NULL;
  if (!pool)
    return 2;
  if (metapath && !(meta = bdev_storage_open (metapath, &o))) {
    bdev_close (pool);
    return 2;
  }
  /* A progress line on a terminal (the report itself goes to stdout). */
  if (isatty (STDERR_FILENO))
    kvm_progress_set_terminal (stderr);
  long n = thin_check (pool, meta, stdout, verbose);
  if (meta)
    bdev_close (meta);
  bdev_close (pool);
  return n < 0 ? 2 : n > 0 ? 1 : 0;
}
