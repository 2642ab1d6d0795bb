/* SPDX-License-Identifier: BSD-3-Clause */
/* nbdkit vhdx plugin: a thin adapter over the VHDX engine in common/vhdx.
 * One engine per image, shared by every connection (multi-conn).
 */
#include <errno.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define NBDKIT_API_VERSION 2
#include <nbdkit-plugin.h>

#include "bdev/bdev.h"
#include "bdev/bdev_nbdkit.h"
#include "bdev/bdev_registry.h"
#include "bdev/formats.h"
#include "kvm_version.h"
#include "util/confine.h"
#include "util/log.h"
#include "vhdx/vhdx.h"

#define THREAD_MODEL NBDKIT_THREAD_MODEL_PARALLEL

static char *filename;
static char **allowed;          /* NULL-terminated */
static size_t nallowed;
static bool allow_any;
static bool no_locks;                   /* locking=off */
static bool direct;
static bool ignore_linkage;
static bool parent_none;
static int64_t create_size = -1;
static const char *create_type;
static int64_t create_bs;
static unsigned create_lss;
static char *create_parent;

static struct bdev_registry images = BDEV_REGISTRY_INIT;

static void
vhdx_load (void)
{
  kvm_log_set (nbdkit_verror, nbdkit_vdebug);
  confine_set_allow_hint ("allow-parent-path=DIR");
}

static void
vhdx_unload (void)
{
  bdev_registry_close_all (&images);
  for (size_t i = 0; i < nallowed; i++)
    free (allowed[i]);
  free (allowed);
  free (filename);
  free (create_parent);
}

/* file= for a file that does not exist yet (create=): the absolute path
 * of its directory joined with its name.
 */
static char *
absolute_new_path (const char *value)
{
  const char *slash = strrchr (value, '/');
  const char *base = slash ? slash + 1 : value;
  char *rdir, *r;
  if (slash) {
    char *dir = strndup (value, slash - value);
    if (!dir) {
      nbdkit_error ("strdup: %m");
      return NULL;
    }
    rdir = nbdkit_realpath (*dir ? dir : "/");
    free (dir);
  }
  else
    rdir = nbdkit_realpath (".");
  if (!rdir)
    return NULL;
  if (asprintf (&r, "%s/%s", rdir, base) == -1) {
    nbdkit_error ("asprintf: %m");
    r = NULL;
  }
  free (rdir);
  return r;
}

static int
vhdx_config (const char *key, const char *value)
{
  int b;
  if (strcmp (key, "file") == 0) {
    free (filename);
    if (bdev_storage_is_url (value))        /* nfs://...: kept as it is */
      filename = bdev_nbdkit_file_param (value);
    else if (access (value, F_OK) == -1 && errno == ENOENT)
      filename = absolute_new_path (value);
    else
      filename = nbdkit_realpath (value);
    return filename ? 0 : -1;
  }
  if (strcmp (key, "allow-parent-path") == 0 ||
      strcmp (key, "allow-backing-path") == 0)      /* as in vmdk, qcow2 */
    return bdev_nbdkit_allow_path (value, &allowed, &nallowed, &allow_any);
  if (strcmp (key, "locking") == 0)
    return bdev_nbdkit_locking_param (value, &no_locks);
  if (strcmp (key, "direct") == 0 || strcmp (key, "ignore-parent-linkage") == 0) {
    if ((b = nbdkit_parse_bool (value)) == -1)
      return -1;
    *(key[0] == 'd' ? &direct : &ignore_linkage) = b;
    return 0;
  }
  if (strcmp (key, "parent") == 0) {
    if (strcmp (value, "none") == 0) {
      parent_none = true;
      return 0;
    }
    free (create_parent);
    create_parent = nbdkit_realpath (value);
    return create_parent ? 0 : -1;
  }
  if (strcmp (key, "create") == 0) {
    create_size = nbdkit_parse_size (value);
    return create_size == -1 ? -1 : 0;
  }
  if (strcmp (key, "type") == 0) {
    if (strcmp (value, "dynamic") && strcmp (value, "fixed") &&
        strcmp (value, "differencing")) {
      nbdkit_error ("type must be dynamic, fixed or differencing");
      return -1;
    }
    create_type = strcmp (value, "dynamic") == 0 ? "dynamic"
      : strcmp (value, "fixed") == 0 ? "fixed" : "differencing";
    return 0;
  }
  if (strcmp (key, "block-size") == 0) {
    create_bs = nbdkit_parse_size (value);
    if (create_bs == -1)
      return -1;
    if (create_bs < (1 << 20) || create_bs > (256 << 20) ||
        (create_bs & (create_bs - 1))) {
      nbdkit_error ("block-size must be a power of 2 from 1M to 256M");
      return -1;
    }
    return 0;
  }
  if (strcmp (key, "logical-sector-size") == 0) {
    if (nbdkit_parse_unsigned (key, value, &create_lss) == -1)
      return -1;
    if (create_lss != 512 && create_lss != 4096) {
      nbdkit_error ("logical-sector-size must be 512 or 4096");
      return -1;
    }
    return 0;
  }
  nbdkit_error ("unknown parameter '%s'", key);
  return -1;
}

static int
create_image (void)
{
  char bs[48], lss[48], *par = NULL;
  const char *o[6];
  size_t n = 0;
  const char *type = create_type ? create_type
    : create_parent ? "differencing" : "dynamic";

  if (strcmp (type, "differencing") == 0 && !create_parent) {
    nbdkit_error ("type=differencing needs parent=PATH");
    return -1;
  }
  if (create_parent && strcmp (type, "differencing") != 0) {
    nbdkit_error ("parent= is only for type=differencing");
    return -1;
  }
  if (asprintf (&par, "subformat=%s", type) == -1) {
    nbdkit_error ("asprintf: %m");
    return -1;
  }
  o[n++] = par;
  if (create_bs) {
    snprintf (bs, sizeof bs, "block_size=%" PRIi64, create_bs);
    o[n++] = bs;
  }
  if (create_lss) {
    snprintf (lss, sizeof lss, "logical_sector_size=%u", create_lss);
    o[n++] = lss;
  }
  char *pp = NULL;
  if (create_parent) {
    if (asprintf (&pp, "parent=%s", create_parent) == -1) {
      free (par);
      nbdkit_error ("asprintf: %m");
      return -1;
    }
    o[n++] = pp;
  }
  o[n] = NULL;
  int r = bdev_format_find ("vhdx")->create (filename, create_size, o);
  free (par);
  free (pp);
  return r;
}

static struct bdev *open_engine (const char *export, void *arg);

static int
vhdx_config_complete (void)
{
  if (!filename) {
    nbdkit_error ("you must supply the file=PATH parameter (an existing "
                  "file, or a new one with create=SIZE)");
    return -1;
  }
  if ((create_type || create_bs || create_lss || create_parent) &&
      create_size < 0) {
    nbdkit_error ("type=, block-size=, logical-sector-size= and parent=PATH "
                  "are options of create=SIZE");
    return -1;
  }
  if (bdev_storage_is_url (filename)) {
    if (create_size >= 0) {
      nbdkit_error ("%s: create= works only for local files", filename);
      return -1;
    }
    return bdev_nbdkit_check_opens (open_engine, "");
  }
  if (access (filename, F_OK) == -1) {
    if (create_size < 0) {
      nbdkit_error ("%s: No such file or directory (use create=SIZE to "
                    "create a new image)", filename);
      return -1;
    }
    if (create_image () == -1)
      return -1;
    nbdkit_debug ("%s: created new VHDX image", filename);
    /* A new child whose parent cannot be opened (outside the allowed
     * paths) is not left behind, as in the qcow2 plugin.
     */
    if (bdev_nbdkit_check_opens (open_engine, "") == -1) {
      unlink (filename);
      nbdkit_error ("%s: the new image cannot be opened: removed", filename);
      return -1;
    }
    return 0;
  }
  return bdev_nbdkit_check_opens (open_engine, "");
}

#define vhdx_config_help \
  "[file=]PATH                 VHDX image (required).\n" \
  "allow-parent-path=DIR|any   Parent disks may also be in DIR.\n" \
  "ignore-parent-linkage=true  Open despite a parent DataWriteGuid mismatch.\n" \
  "parent=none                 Ignore the parent of a differencing disk.\n" \
  "direct=true                 Use O_DIRECT.\n" \
  "locking=off                 Take no image locks (QEMU's locking=off).\n" \
  "create=SIZE                 Create the image if it does not exist\n" \
  "                            (type=dynamic|fixed|differencing,\n" \
  "                            block-size=, logical-sector-size=,\n" \
  "                            parent=PATH)."

static struct bdev *
open_engine (const char *export, void *arg)
{
  const char *fopts[4];
  size_t n = 0;
  (void) export;
  struct bdev_open_opts o = {
    .readonly = *(bool *) arg,
    .direct = direct,
    .allowed_dirs = (const char *const *) allowed,
    .allow_any_path = allow_any,
    .no_locks = no_locks,
  };
  if (ignore_linkage)
    fopts[n++] = "vhdx.ignore-parent-linkage=1";
  if (parent_none)
    fopts[n++] = "vhdx.parent=none";
  fopts[n] = NULL;
  o.format_opts = fopts;
  struct bdev *bd = bdev_nbdkit_open_rw_else_ro (filename, "vhdx", &o);
  return bd;
}

static void *
plugin_open (int readonly)
{
  return bdev_nbdkit_shared_open (&images, "", open_engine, readonly);
}

static void
plugin_close (void *handle)
{
  bdev_nbdkit_shared_close (&images, handle);
}

/* The disk's logical sector size is the minimum block size: a VHDX disk
 * presents itself with that sector size (the engine still handles any
 * alignment).
 */
static int
vhdx_block_size (void *handle, uint32_t *minimum, uint32_t *preferred,
                 uint32_t *maximum)
{
  struct bdev_nbdkit_shared_handle *h = handle;
  bdev_nbdkit_block_size_of (&h->h, minimum, preferred, maximum);
  *minimum = h->h.bd->block_size;
  return 0;
}

static struct nbdkit_plugin plugin = {
  .name = "vhdx",
  .longname = "nbdkit vhdx plugin",
  .version = KVM_VERSION,
  .load = vhdx_load,
  .unload = vhdx_unload,
  .config = vhdx_config,
  .config_complete = vhdx_config_complete,
  .config_help = vhdx_config_help,
  .magic_config_key = "file",
  .open = plugin_open,
  .close = plugin_close,
  .get_size       = bdev_nbdkit_cb_get_size,
  .block_size     = vhdx_block_size,
  .can_write      = bdev_nbdkit_cb_can_write,
  .can_flush      = bdev_nbdkit_cb_true,
  .can_trim       = bdev_nbdkit_cb_can_trim,
  .can_zero       = bdev_nbdkit_cb_true,
  .can_fast_zero  = bdev_nbdkit_cb_can_fast_zero,
  .can_fua        = bdev_nbdkit_cb_can_fua,
  .can_multi_conn = bdev_nbdkit_cb_can_multi_conn,
  .can_extents    = bdev_nbdkit_cb_true,
  .pread          = bdev_nbdkit_cb_pread,
  .pwrite         = bdev_nbdkit_cb_pwrite,
  .flush          = bdev_nbdkit_cb_flush,
  .trim           = bdev_nbdkit_cb_trim,
  .zero           = bdev_nbdkit_cb_zero,
  .extents        = bdev_nbdkit_cb_extents,
  .errno_is_preserved = 0,
};

NBDKIT_REGISTER_PLUGIN (plugin)
