/* SPDX-License-Identifier: BSD-3-Clause */
/* nbdkit nfs plugin: raw files on an NFS server, through the nfs://
 * backend of common/bdev (libnfs; see bdev_nfs.h for the URL options),
 * without a kernel mount.  url= names a file (served as the default
 * export) or a directory (its regular files are the exports).  One open
 * file per export is shared by every connection (bdev_registry.h); it
 * keeps a small pool of NFS connections, so requests from all clients run
 * in parallel.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NBDKIT_API_VERSION 2
#include <nbdkit-plugin.h>

#include "bdev/bdev.h"
#include "bdev/bdev_nbdkit.h"
#include "bdev/bdev_nfs.h"
#include "bdev/bdev_registry.h"
#include "kvm_version.h"
#include "util/log.h"

#define THREAD_MODEL NBDKIT_THREAD_MODEL_PARALLEL

static char *url;
static int64_t create_size = -1;
static bool is_dir;

static struct bdev_registry files = BDEV_REGISTRY_INIT;

static void
nfs_load (void)
{
  kvm_log_set (nbdkit_verror, nbdkit_vdebug);
}

static void
nfs_unload (void)
{
  bdev_registry_close_all (&files);
  free (url);
}

static int
nfs_config (const char *key, const char *value)
{
  if (strcmp (key, "url") == 0) {
    if (!bdev_nfs_is_url (value)) {
      nbdkit_error ("url must be nfs://SERVER/EXPORT/PATH[?OPTIONS], "
                    "not '%s'", value);
      return -1;
    }
    free (url);
    url = strdup (value);
    if (!url) {
      nbdkit_error ("strdup: %m");
      return -1;
    }
    /* A trailing slash on a directory would double in export URLs. */
    char *q = strchr (url + 6, '?');
    char *path = strchr (url + 6, '/');
    size_t end = q ? (size_t) (q - url) : strlen (url);
    while (path && end > (size_t) (path - url) + 1 && url[end - 1] == '/') {
      memmove (url + end - 1, url + end, strlen (url + end) + 1);
      end--;
    }
  }
  else if (strcmp (key, "create") == 0) {
    create_size = nbdkit_parse_size (value);
    if (create_size == -1)
      return -1;
  }
  else {
    nbdkit_error ("unknown parameter '%s'", key);
    return -1;
  }
  return 0;
}

static int
nfs_config_complete (void)
{
  uint64_t size;
  if (!url) {
    nbdkit_error ("you must supply url=nfs://SERVER/EXPORT/PATH");
    return -1;
  }
  int r = bdev_nfs_stat (url, &size);
  if (r == -1)
    return -1;
  if (r == 0) {
    if (create_size < 0) {
      nbdkit_error ("%s: no such file (use create=SIZE to create it)", url);
      return -1;
    }
    if (bdev_nfs_create (url, create_size) == -1)
      return -1;
    nbdkit_debug ("%s: created a sparse file of %" PRIi64 " bytes", url,
                  create_size);
    return 0;
  }
  is_dir = r == 2;
  if (is_dir && create_size >= 0) {
    nbdkit_error ("%s: create= needs a file URL, this is a directory", url);
    return -1;
  }
  return 0;
}

#define nfs_config_help \
  "url=nfs://SERVER/EXPORT/PATH[?OPTIONS]  (required) A file, or a\n" \
  "                            directory whose files are the exports.\n" \
  "                            OPTIONS: uid=, gid=, version=3|4,\n" \
  "                            timeout=SECS, conns=N, nfsport=, mountport=.\n" \
  "create=SIZE                 Create the file (sparse) if it is missing."

/* The URL of EXPORT: the file itself, or a file of the directory. */
static char *
export_url (const char *export)
{
  char *u = NULL;
  if (!is_dir) {
    if (*export) {
      nbdkit_error ("%s serves one file: export '%s' does not exist (use "
                    "the default export)", url, export);
      errno = ENOENT;
      return NULL;
    }
    if (!(u = strdup (url)))
      nbdkit_error ("strdup: %m");
    return u;
  }
  if (!*export) {
    nbdkit_error ("%s is a directory: name one of its files as the export "
                  "(nbdinfo --list shows them)", url);
    errno = ENOENT;
    return NULL;
  }
  /* The names the listing offers: no path, no query, nothing hidden
   * (which also rules out "." and "..").
   */
  if (strchr (export, '/') || strchr (export, '?') || export[0] == '.') {
    nbdkit_error ("export '%s': only a file name of the directory %s, "
                  "not hidden", export, url);
    errno = EINVAL;
    return NULL;
  }
  const char *q = strchr (url + 6, '?');
  size_t base = q ? (size_t) (q - url) : strlen (url);
  if (asprintf (&u, "%.*s/%s%s", (int) base, url, export, q ? q : "") == -1) {
    nbdkit_error ("asprintf: %m");
    return NULL;
  }
  return u;
}

static struct bdev *
open_export (const char *export, void *arg)
{
  bool readonly = *(bool *) arg;
  char *u = export_url (export);
  if (!u)
    return NULL;
  struct bdev_open_opts o = { .readonly = readonly };
  struct bdev *bd = bdev_nfs_open (u, &o);
  if (bdev_nbdkit_retry_readonly (bd, &o, u))
    bd = bdev_nfs_open (u, &o);
  free (u);
  return bd;
}

static void *
nfs_open (int readonly)
{
  const char *export = nbdkit_export_name ();
  return bdev_nbdkit_shared_open (&files, export ? export : "", open_export,
                                  readonly);
}

static void
nfs_close (void *handle)
{
  bdev_nbdkit_shared_close (&files, handle);
}

struct list_ctx {
  struct nbdkit_exports *exports;
};

static int
add_one (void *opaque, const char *name, uint64_t size)
{
  struct list_ctx *c = opaque;
  char desc[64];
  if (name[0] == '.')
    return 0;
  snprintf (desc, sizeof desc, "%" PRIu64 " bytes", size);
  return nbdkit_add_export (c->exports, name, desc);
}

static int
nfs_list_exports (int readonly, int is_tls, struct nbdkit_exports *exports)
{
  (void) readonly; (void) is_tls;
  if (!is_dir)
    return nbdkit_add_export (exports, "", url);
  struct list_ctx c = { exports };
  return bdev_nfs_list (url, add_one, &c);
}

static const char *
nfs_default_export (int readonly, int is_tls)
{
  (void) readonly; (void) is_tls;
  return "";
}

static struct nbdkit_plugin plugin = {
  .name = "nfs",
  .longname = "nbdkit nfs plugin",
  .version = KVM_VERSION,
  .load = nfs_load,
  .unload = nfs_unload,
  .config = nfs_config,
  .config_complete = nfs_config_complete,
  .config_help = nfs_config_help,
  .magic_config_key = "url",
  .list_exports = nfs_list_exports,
  .default_export = nfs_default_export,
  .open = nfs_open,
  .close = nfs_close,
  BDEV_NBDKIT_PLUGIN_CALLBACKS,
};

NBDKIT_REGISTER_PLUGIN (plugin)
