/* SPDX-License-Identifier: BSD-3-Clause */
/* nbdkit qcow2 plugin: a thin adapter over the qcow2 engine in
 * common/qcow2.  One engine instance per export (the active image and each
 * internal snapshot) is shared by every connection, so metadata caches are
 * coherent and a flush on any connection covers all of them (multi-conn).
 */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define NBDKIT_API_VERSION 2
#include <nbdkit-plugin.h>

#include "bdev/bdev.h"
#include "bdev/bdev_nbdkit.h"
#include "bdev/bdev_registry.h"
#include "bdev/formats.h"
#include "kvm_version.h"
#include "qcow2/qcow2.h"
#include "util/log.h"

#define THREAD_MODEL NBDKIT_THREAD_MODEL_PARALLEL

NBDKIT_DLL_PUBLIC int qcow2_debug_verbose = 0;

static char *filename;
static bool backing_none;
static char **allowed;          /* NULL-terminated */
static size_t nallowed;
static bool allow_any;
static bool no_locks;                   /* locking=off */
static char *snapshot;
static int64_t cache_size = -1;
static bool direct;
static int64_t create_size = -1;
static struct qcow2_create_opts copts = { .version = 3 };
static char *create_backing, *create_backing_format;
static const char *compress;    /* compress=: "zlib", "zstd" or NULL */
static bool create_ctype_set;   /* create-compression-type= given */

/* One engine per export (the active image and each internal snapshot). */
static struct bdev_registry images = BDEV_REGISTRY_INIT;

static void
qcow2_load (void)
{
  kvm_log_set (nbdkit_verror, nbdkit_vdebug);
}

static void
qcow2_unload (void)
{
  bdev_registry_close_all (&images);
  for (size_t i = 0; i < nallowed; i++)
    free (allowed[i]);
  free (allowed);
  free (filename);
  free (snapshot);
  free (create_backing);
  free (create_backing_format);
}

static int
parse_bool_param (const char *key, const char *value, bool *out)
{
  int r = nbdkit_parse_bool (value);
  if (r == -1)
    return -1;
  (void) key;
  *out = r;
  return 0;
}

static int
qcow2_config (const char *key, const char *value)
{
  if (strcmp (key, "file") == 0) {
    free (filename);
    filename = bdev_nbdkit_file_param (value);
    if (!filename)
      return -1;
  }
  else if (strcmp (key, "backing") == 0) {
    if (strcmp (value, "none") != 0) {
      nbdkit_error ("backing: only backing=none is supported");
      return -1;
    }
    backing_none = true;
  }
  else if (strcmp (key, "allow-backing-path") == 0)
    return bdev_nbdkit_allow_path (value, &allowed, &nallowed, &allow_any);
  else if (strcmp (key, "locking") == 0)
    return bdev_nbdkit_locking_param (value, &no_locks);
  else if (strcmp (key, "snapshot") == 0) {
    free (snapshot);
    snapshot = strdup (value);
    if (!snapshot) {
      nbdkit_error ("strdup: %m");
      return -1;
    }
  }
  else if (strcmp (key, "cache") == 0) {
    cache_size = nbdkit_parse_size (value);
    if (cache_size == -1)
      return -1;
  }
  else if (strcmp (key, "direct") == 0)
    return parse_bool_param (key, value, &direct);
  else if (strcmp (key, "create") == 0) {
    create_size = nbdkit_parse_size (value);
    if (create_size == -1)
      return -1;
  }
  else if (strcmp (key, "create-cluster-size") == 0) {
    int64_t v = nbdkit_parse_size (value);
    if (v == -1)
      return -1;
    if (v < 512 || v > 2 * 1024 * 1024 || (v & (v - 1))) {
      nbdkit_error ("create-cluster-size must be a power of 2 between 512 "
                    "and 2M");
      return -1;
    }
    copts.cluster_size = v;
  }
  else if (strcmp (key, "create-compat") == 0) {
    if (strcmp (value, "0.10") == 0 || strcmp (value, "v2") == 0)
      copts.version = 2;
    else if (strcmp (value, "1.1") == 0 || strcmp (value, "v3") == 0)
      copts.version = 3;
    else {
      nbdkit_error ("create-compat must be 0.10 or 1.1");
      return -1;
    }
  }
  else if (strcmp (key, "create-backing") == 0) {
    free (create_backing);
    create_backing = strdup (value);
    if (!create_backing) {
      nbdkit_error ("strdup: %m");
      return -1;
    }
  }
  else if (strcmp (key, "create-backing-format") == 0) {
    free (create_backing_format);
    create_backing_format = strdup (value);
    if (!create_backing_format) {
      nbdkit_error ("strdup: %m");
      return -1;
    }
  }
  else if (strcmp (key, "create-extended-l2") == 0)
    return parse_bool_param (key, value, &copts.extended_l2);
  else if (strcmp (key, "create-refcount-bits") == 0) {
    unsigned v;
    if (nbdkit_parse_unsigned (key, value, &v) == -1)
      return -1;
    if (v == 0 || v > 64 || (v & (v - 1))) {
      nbdkit_error ("create-refcount-bits must be 1, 2, 4, 8, 16, 32 or 64");
      return -1;
    }
    copts.refcount_bits = v;
  }
  else if (strcmp (key, "compress") == 0) {
    if (strcmp (value, "zlib") == 0)
      compress = "zlib";
    else if (strcmp (value, "zstd") == 0)
      compress = "zstd";
    else {
      nbdkit_error ("compress must be zlib or zstd");
      return -1;
    }
  }
  else if (strcmp (key, "create-compression-type") == 0) {
    create_ctype_set = true;
    if (strcmp (value, "zlib") == 0)
      copts.compression_type = 0;
    else if (strcmp (value, "zstd") == 0)
      copts.compression_type = 1;
    else {
      nbdkit_error ("create-compression-type must be zlib or zstd");
      return -1;
    }
  }
  else {
    nbdkit_error ("unknown parameter '%s'", key);
    return -1;
  }
  return 0;
}

/* create=: through the format table, as every format plugin does, with
 * the create-* parameters (checked in .config) as qemu-img's -o options.
 */
static int
create_image (void)
{
  char cs[48], rb[48], *bf = NULL, *bff = NULL;
  const char *o[8];
  size_t n = 0;
  int r = -1;

  if (copts.cluster_size) {
    snprintf (cs, sizeof cs, "cluster_size=%" PRIu32, copts.cluster_size);
    o[n++] = cs;
  }
  o[n++] = copts.version == 2 ? "compat=0.10" : "compat=1.1";
  if (copts.refcount_bits) {
    snprintf (rb, sizeof rb, "refcount_bits=%u", copts.refcount_bits);
    o[n++] = rb;
  }
  if (copts.extended_l2)
    o[n++] = "extended_l2=on";
  if (copts.compression_type == 1)
    o[n++] = "compression_type=zstd";
  if ((create_backing &&
       asprintf (&bf, "backing_file=%s", create_backing) == -1) ||
      (create_backing_format &&
       asprintf (&bff, "backing_fmt=%s", create_backing_format) == -1)) {
    nbdkit_error ("asprintf: %m");
    goto out;
  }
  if (bf)
    o[n++] = bf;
  if (bff)
    o[n++] = bff;
  o[n] = NULL;
  r = bdev_format_find ("qcow2")->create (filename, create_size, o);
 out:
  free (bf);
  free (bff);
  return r;
}

static struct bdev *open_engine (const char *snap, bool readonly);
static struct bdev *open_export (const char *export, void *arg);

static int
qcow2_config_complete (void)
{
  if (!filename) {
    nbdkit_error ("you must supply the file=PATH parameter (an existing "
                  "file, or a new one with create=SIZE)");
    return -1;
  }
  /* Creating here rather than in .get_ready: an error then ends nbdkit
   * before it initialises TLS.
   */
  if (bdev_storage_is_url (filename)) {
    if (create_size >= 0) {
      nbdkit_error ("%s: create= works only for local files", filename);
      return -1;
    }
    return bdev_nbdkit_check_opens (open_export, "");
  }
  if (access (filename, F_OK) == -1) {
    if (create_size < 0) {
      /* No strerror here: under the sanitizer runtimes a message built
       * with it before TLS set-up made nbdkit hang at exit.
       */
      if (errno == ENOENT)
        nbdkit_error ("%s: No such file or directory (use create=SIZE to "
                      "create a new image)", filename);
      else
        nbdkit_error ("%s: cannot access the file (errno %d)", filename,
                      errno);
      return -1;
    }
    /* compress= picks the new image's compression type. */
    if (compress) {
      int t = strcmp (compress, "zstd") == 0;
      if (create_ctype_set && copts.compression_type != t) {
        nbdkit_error ("compress=%s contradicts create-compression-type=%s",
                      compress, t ? "zlib" : "zstd");
        return -1;
      }
      copts.compression_type = t;
    }
    if (create_image () == -1)
      return -1;
    nbdkit_debug ("%s: created new qcow2 image of %" PRIi64 " bytes",
                  filename, create_size);
    /* A new image that could not be served (its backing file missing,
     * outside the allowed paths, of an unknown format) is not left
     * behind: qemu-img create refuses such an image too.
     */
    struct bdev *bd = open_engine (NULL, true);
    if (!bd) {
      unlink (filename);
      nbdkit_error ("%s: the new image cannot be opened: removed", filename);
      return -1;
    }
    bdev_close (bd);
  }
  return bdev_nbdkit_check_opens (open_export, "");
}

/* file= for a file that does not exist: nbdkit_realpath fails, so keep the
 * absolute path ourselves when create= is used.
 */
static int
qcow2_config_file (const char *key, const char *value)
{
  if (strcmp (key, "file") == 0 && !bdev_storage_is_url (value) &&
      access (value, F_OK) == -1 &&
      errno == ENOENT) {
    const char *slash = strrchr (value, '/');
    const char *base = slash ? slash + 1 : value;
    char *rdir;
    if (slash) {
      char *dir = strndup (value, slash - value);
      if (!dir) {
        nbdkit_error ("strdup: %m");
        return -1;
      }
      rdir = nbdkit_realpath (*dir ? dir : "/");
      free (dir);
    }
    else
      rdir = nbdkit_realpath (".");
    if (!rdir)
      return -1;
    free (filename);
    if (asprintf (&filename, "%s/%s", rdir, base) == -1) {
      filename = NULL;
      free (rdir);
      nbdkit_error ("asprintf: %m");
      return -1;
    }
    free (rdir);
    return 0;
  }
  return qcow2_config (key, value);
}

#define qcow2_config_help \
  "[file=]PATH|URL             qcow2 image (required); a URL\n" \
  "                            nfs://SERVER/EXPORT/PATH[?uid=,gid=,\n" \
  "                            version=,timeout=,conns=] opens it on NFS.\n" \
  "backing=none                Ignore the backing file.\n" \
  "allow-backing-path=DIR|URL|any  Backing/data files may also be in\n" \
  "                            DIR (or below the nfs:// URL prefix).\n" \
  "snapshot=NAME|ID            Serve an internal snapshot (read-only).\n" \
  "cache=SIZE                  L2 metadata cache size.\n" \
  "direct=true                 Use O_DIRECT.\n" \
  "locking=off                 Take no image locks (QEMU's locking=off).\n" \
  "compress=zlib|zstd          Write whole new clusters compressed.\n" \
  "create=SIZE                 Create the image if it does not exist\n" \
  "                            (create-cluster-size, create-compat,\n" \
  "                            create-backing, create-backing-format,\n" \
  "                            create-extended-l2, create-refcount-bits,\n" \
  "                            create-compression-type)."

static void
qcow2_dump_plugin (void)
{
#ifdef HAVE_ZLIB
  printf ("qcow2_zlib=yes\n");
#endif
#ifdef HAVE_ZSTD
  printf ("qcow2_zstd=yes\n");
#endif
  printf ("qcow2_versions=2,3\n");
}

/* Open the engine for EXPORT ("" = active image, else snapshot). */
static struct bdev *
open_engine (const char *snap, bool readonly)
{
  char cachebuf[64];
  const char *fopts[8];
  size_t n = 0;
  struct bdev_open_opts o = {
    .readonly = readonly || snap,
    .direct = direct,
    .allowed_dirs = (const char *const *) allowed,
    .allow_any_path = allow_any,
    .no_locks = no_locks,
  };
  if (backing_none)
    fopts[n++] = "qcow2.backing=none";
  char *snapopt = NULL;
  if (snap) {
    if (asprintf (&snapopt, "qcow2.snapshot=%s", snap) == -1) {
      nbdkit_error ("asprintf: %m");
      return NULL;
    }
    fopts[n++] = snapopt;
  }
  if (cache_size >= 0) {
    snprintf (cachebuf, sizeof cachebuf, "qcow2.cache=%" PRIi64, cache_size);
    fopts[n++] = cachebuf;
  }
  if (qcow2_debug_verbose)
    fopts[n++] = "qcow2.verbose=1";
  if (compress)
    fopts[n++] = strcmp (compress, "zstd") == 0 ? "qcow2.compress=zstd"
      : "qcow2.compress=zlib";
  fopts[n] = NULL;
  o.format_opts = fopts;
  struct bdev *bd = bdev_nbdkit_open_rw_else_ro (filename, "qcow2", &o);
  free (snapopt);
  return bd;
}

/* Opens the engine of EXPORT for the registry; ARG points to the
 * connection's readonly flag.
 */
static struct bdev *
open_export (const char *export, void *arg)
{
  const char *snap = *export ? export : snapshot;
  return open_engine (snap, *(bool *) arg);
}

static void *
plugin_open (int readonly)
{
  const char *export = nbdkit_export_name ();
  return bdev_nbdkit_shared_open (&images, export ? export : "", open_export,
                                  readonly);
}

static void
plugin_close (void *handle)
{
  bdev_nbdkit_shared_close (&images, handle);
}

static int
qcow2_list_exports (int readonly, int is_tls, struct nbdkit_exports *exports)
{
  (void) readonly; (void) is_tls;
  static const char *const fopts[] = { "qcow2.backing=none", NULL };
  /* The paths the image may name are those allowed when serving it (an
   * external data file is opened even without the backing chain).
   */
  struct bdev_open_opts o = {
    .readonly = true, .format_opts = fopts, .direct = direct,
    .allowed_dirs = (const char *const *) allowed,
    .allow_any_path = allow_any,
    .no_locks = no_locks,
  };
  struct bdev *bd;
  const struct qcow2_snapshot_info *s;
  char desc[256];

  /* With snapshot=, the default export is that snapshot. */
  snprintf (desc, sizeof desc, "internal snapshot %s (snapshot=)",
            snapshot ? snapshot : "");
  if (nbdkit_add_export (exports, "", snapshot ? desc : "active image") == -1)
    return -1;
  bd = bdev_open (filename, "qcow2", &o, 0);
  if (!bd)
    return -1;
  size_t n = qcow2_snapshots (bd, &s);
  for (size_t i = 0; i < n; i++) {
    time_t t = s[i].date_sec;
    struct tm tm;
    char date[64] = "";
    if (gmtime_r (&t, &tm))
      strftime (date, sizeof date, "%Y-%m-%d %H:%M:%S", &tm);
    snprintf (desc, sizeof desc, "snapshot id=%s size=%" PRIu64 " date=%s",
              s[i].id, s[i].size, date);
    if (nbdkit_add_export (exports, *s[i].name ? s[i].name : s[i].id,
                           desc) == -1) {
      bdev_close (bd);
      return -1;
    }
  }
  bdev_close (bd);
  return 0;
}

static const char *
qcow2_default_export (int readonly, int is_tls)
{
  (void) readonly; (void) is_tls;
  return "";
}

static const char *
qcow2_export_description (void *handle)
{
  struct bdev_nbdkit_shared_handle *h = handle;
  const char *snap = *h->img->export ? h->img->export : snapshot;
  if (!snap)
    return NULL;
  return nbdkit_printf_intern ("internal snapshot %s of %s", snap, filename);
}

static struct nbdkit_plugin plugin = {
  .name = "qcow2",
  .longname = "nbdkit qcow2 plugin",
  .version = KVM_VERSION,
  .load = qcow2_load,
  .unload = qcow2_unload,
  .config = qcow2_config_file,
  .config_complete = qcow2_config_complete,
  .config_help = qcow2_config_help,
  .magic_config_key = "file",
  .dump_plugin = qcow2_dump_plugin,
  .list_exports = qcow2_list_exports,
  .default_export = qcow2_default_export,
  .export_description = qcow2_export_description,
  .open = plugin_open,
  .close = plugin_close,
  BDEV_NBDKIT_PLUGIN_CALLBACKS,
};

NBDKIT_REGISTER_PLUGIN (plugin)
