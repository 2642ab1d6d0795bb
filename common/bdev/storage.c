/* SPDX-License-Identifier: BSD-3-Clause */
/* Opening the storage a path names.  Format engines open their container
 * files, extents, data files and backing files through here, never through
 * a backend directly, so that every format works on every storage backend.
 * Today the only backend is the local file (bdev_file.c); URL forms such
 * as nfs://server/export/path dispatch to their backends here.
 */
#include "bdev.h"

struct bdev *
bdev_storage_open (const char *path, const struct bdev_open_opts *opts)
{
  return bdev_file_open (path, opts);
}
