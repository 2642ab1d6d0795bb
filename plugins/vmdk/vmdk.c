/* SPDX-License-Identifier: BSD-3-Clause */
/* nbdkit vmdk plugin: a thin adapter over the VMDK engine in common/vmdk.
 * One engine instance is shared by every connection (coherent metadata,
 * multi-conn).
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
#include "vmdk/vmdk.h"

#define THREAD_MODEL NBDKIT_THREAD_MODEL_PARALLEL

static char *filename;
static bool backing_none;
static char **allowed;          /* NULL-terminated */
static size_t nallowed;
static bool allow_any;
static bool no_locks;                   /* locking=off */
static bool direct;
static bool ignore_parent_cid;  /* open a delta disk whose parent changed */
static int64_t create_size = -1;
static const char *subformat, *adapter_type, *zeroed_grain;

static struct bdev_registry images = BDEV_REGISTRY_INIT;

static void
vmdk_load (void)
{
  kvm_log_set (nbdkit_verror, nbdkit_vdebug);
  confine_set_allow_hint ("allow-path=DIR");
}

static void
vmdk_unload (void)
{
  bdev_registry_close_all (&images);
  for (size_t i = 0; i < nallowed; i++)
    free (allowed[i]);
  free (allowed);
  free (filename);
}

/* file= may name a file that does not exist yet (create=): keep the
 * absolute path of its directory.
 */
static int
set_filename (const char *value)
{
  free (filename);
  filename = NULL;
  if (bdev_storage_is_url (value)) {      /* nfs://...: kept as it is */
    filename = bdev_nbdkit_file_param (value);
    return filename ? 0 : -1;
  }
  if (access (value, F_OK) == 0 || errno != ENOENT) {
    filename = nbdkit_realpath (value);
    return filename ? 0 : -1;
  }
  const char *slash = strrchr (value, '/');
  char *dir = slash ? strndup (value, slash - value) : strdup (".");
  if (!dir) {
    nbdkit_error ("strdup: %m");
    return -1;
  }
  char *rdir = nbdkit_realpath (*dir ? dir : "/");
  free (dir);
  if (!rdir)
    return -1;
  if (asprintf (&filename, "%s/%s", rdir, slash ? slash + 1 : value) == -1) {
    filename = NULL;
    nbdkit_error ("asprintf: %m");
  }
  free (rdir);
  return filename ? 0 : -1;
}

static int
vmdk_config (const char *key, const char *value)
{
  if (strcmp (key, "file") == 0)
    return set_filename (value);
  if (strcmp (key, "backing") == 0) {
    if (strcmp (value, "none") != 0) {
      nbdkit_error ("backing: only backing=none is supported");
      return -1;
    }
    backing_none = true;
    return 0;
  }
  if (strcmp (key, "allow-path") == 0 ||
      strcmp (key, "allow-backing-path") == 0)
    return bdev_nbdkit_allow_path (value, &allowed, &nallowed, &allow_any);
  if (strcmp (key, "locking") == 0)
    return bdev_nbdkit_locking_param (value, &no_locks);
  if (strcmp (key, "direct") == 0 || strcmp (key, "ignore-parent-cid") == 0) {
    int r = nbdkit_parse_bool (value);
    if (r == -1)
      return -1;
    if (strcmp (key, "direct") == 0)
      direct = r;
    else
      ignore_parent_cid = r;
    return 0;
  }
  if (strcmp (key, "create") == 0) {
    create_size = nbdkit_parse_size (value);
    return create_size == -1 ? -1 : 0;
  }
  /* The values are checked by the engine's create. */
  if (strcmp (key, "subformat") == 0)
    subformat = value;
  else if (strcmp (key, "adapter-type") == 0)
    adapter_type = value;
  else if (strcmp (key, "zeroed-grain") == 0)
    zeroed_grain = value;
  else {
    nbdkit_error ("unknown parameter '%s'", key);
    return -1;
  }
  return 0;
}

static struct bdev *open_export (const char *export, void *arg);

static int
vmdk_config_complete (void)
{
  if (!filename) {
    nbdkit_error ("you must supply the file=PATH parameter (an existing "
                  "image, or a new one with create=SIZE)");
    return -1;
  }
  if ((subformat || adapter_type || zeroed_grain) && create_size < 0) {
    nbdkit_error ("subformat=, adapter-type= and zeroed-grain= are "
                  "options of create=SIZE");
    return -1;
  }
  if (bdev_storage_is_url (filename)) {
    if (create_size >= 0) {
      nbdkit_error ("%s: create= works only for local files", filename);
      return -1;
    }
    return bdev_nbdkit_check_opens (open_export, "");
  }
  if (access (filename, F_OK) == 0 || errno != ENOENT) {
    if (create_size >= 0)
      nbdkit_debug ("%s exists: create= ignored", filename);
    return bdev_nbdkit_check_opens (open_export, "");
  }
  if (create_size < 0) {
    nbdkit_error ("%s: No such file or directory (use create=SIZE to "
                  "create a new image)", filename);
    return -1;
  }
  char *o[4] = { NULL };
  size_t n = 0;
  int r = -1;
  if ((subformat && asprintf (&o[n++], "subformat=%s", subformat) == -1) ||
      (adapter_type &&
       asprintf (&o[n++], "adapter_type=%s", adapter_type) == -1) ||
      (zeroed_grain &&
       asprintf (&o[n++], "zeroed_grain=%s", zeroed_grain) == -1)) {
    o[n - 1] = NULL;
    nbdkit_error ("asprintf: %m");
    goto out;
  }
  r = vmdk_create_options (filename, create_size, (const char *const *) o);
  if (r == 0) {
    nbdkit_debug ("%s: created a vmdk image of %" PRIi64 " bytes", filename,
                  create_size);
    r = bdev_nbdkit_check_opens (open_export, "");
  }
 out:
  for (size_t i = 0; i < n; i++)
    free (o[i]);
  return r;
}

#define vmdk_config_help \
  "[file=]PATH                 VMDK image (descriptor or sparse file).\n" \
  "backing=none                Ignore the parent disk of a delta disk.\n" \
  "allow-path=DIR|any          Extent and parent files may also be in DIR.\n" \
  "direct=true                 Use O_DIRECT.\n" \
  "locking=off                 Take no image locks (QEMU's locking=off).\n" \
  "ignore-parent-cid=true      Open a delta disk whose parent changed.\n" \
  "create=SIZE                 Create the image if it does not exist\n" \
  "                            (subformat=, adapter-type=, zeroed-grain=)."

static struct bdev *
open_export (const char *export, void *arg)
{
  (void) export;
  const char *fopts[3] = { NULL }, **f = fopts;
  if (backing_none)
    *f++ = "vmdk.backing=none";
  if (ignore_parent_cid)
    *f++ = "vmdk.ignore-parent-cid=1";
  struct bdev_open_opts o = {
    .readonly = *(bool *) arg,
    .direct = direct,
    .allowed_dirs = (const char *const *) allowed,
    .allow_any_path = allow_any,
    .no_locks = no_locks,
    .format_opts = fopts,
  };
  struct bdev *bd = bdev_nbdkit_open_rw_else_ro (filename, "vmdk", &o);
  return bd;
}

static void *
vmdk_open_handle (int readonly)
{
  /* One export: the disk. */
  return bdev_nbdkit_shared_open (&images, "", open_export, readonly);
}

static void
vmdk_close_handle (void *handle)
{
  bdev_nbdkit_shared_close (&images, handle);
}

static struct nbdkit_plugin plugin = {
  .name = "vmdk",
  .longname = "nbdkit vmdk plugin",
  .version = KVM_VERSION,
  .load = vmdk_load,
  .unload = vmdk_unload,
  .config = vmdk_config,
  .config_complete = vmdk_config_complete,
  .config_help = vmdk_config_help,
  .magic_config_key = "file",
  .open = vmdk_open_handle,
  .close = vmdk_close_handle,
  BDEV_NBDKIT_PLUGIN_CALLBACKS,
};

NBDKIT_REGISTER_PLUGIN (plugin)
