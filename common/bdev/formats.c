#include <string.h>

#include "formats.h"
#include "qcow2/qcow2.h"

static struct bdev *
raw_open (const char *path, const struct bdev_open_opts *opts, unsigned depth)
{
  (void) depth;
  return bdev_file_open (path, opts);
}

/* Probed in order; raw comes last and is never probed (it is the fallback). */
const struct bdev_format bdev_formats[] = {
  { "qcow2", qcow2_probe, qcow2_open },
  { "raw", NULL, raw_open },
  { NULL, NULL, NULL },
};

const struct bdev_format *
bdev_format_find (const char *name)
{
  for (const struct bdev_format *f = bdev_formats; f->name; f++)
    if (strcmp (f->name, name) == 0)
      return f;
  return NULL;
}
