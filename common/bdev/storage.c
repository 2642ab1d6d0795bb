/* SPDX-License-Identifier: BSD-3-Clause */
/* Opening the storage a path names.  Format engines open their container
 * files, extents, data files and backing files through here, never through
 * a backend directly, so that every format works on every storage backend.
 * A plain path is a local file (bdev_file.c); a URL goes to the backend
 * of its scheme: nfs://server/export/path to bdev_nfs.c (libnfs).
 */
#include <errno.h>
#include <string.h>

#include "bdev.h"
#include "../util/confine.h"
#include "../util/log.h"
#ifdef HAVE_LIBNFS
#include "bdev_nfs.h"
#endif

bool
bdev_storage_is_url (const char *path)
{
  return confine_is_url (path);
}

struct bdev *
bdev_storage_open (const char *path, const struct bdev_open_opts *opts)
{
  if (!confine_is_url (path))
    return bdev_file_open (path, opts);
#ifdef HAVE_LIBNFS
  if (bdev_nfs_is_url (path))
    return bdev_nfs_open (path, opts);
#else
  if (strncmp (path, "nfs://", 6) == 0) {
    kvm_error ("%s: this build has no NFS support (libnfs-dev was missing)",
               path);
    errno = ENOTSUP;
    return NULL;
  }
#endif
  kvm_error ("%s: unsupported URL scheme (supported: nfs://)", path);
  errno = ENOTSUP;
  return NULL;
}
