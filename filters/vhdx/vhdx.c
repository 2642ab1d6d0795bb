/* SPDX-License-Identifier: BSD-3-Clause */
/* nbdkit vhdx filter: the VHDX engine (common/vhdx) serving an image
 * stored in the export of whatever plugin the filter sits on (a file, an
 * LV, an RBD image, memory...).
 *
 * One engine, shared by every connection (or one per export name, with
 * vhdx-exports=per-name); its container is routed to the context of the
 * connection being served (bdev_nbdkit_filter.h).  The container cannot
 * grow: an allocating write that needs more room than the plugin's export
 * has fails with ENOSPC, and so does a log replay that must grow the
 * file.
 */
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <nbdkit-filter.h>

#include "bdev/bdev.h"
#define BDEV_FORMAT_FILTER_EXPORTS "vhdx-exports"
#include "bdev/bdev_nbdkit_format_filter.h"
#include "util/confine.h"
#include "util/log.h"
#include "util/single.h"
#include "vhdx/vhdx.h"

static char *parent_path;       /* vhdx-parent=PATH */
static bool parent_none;        /* vhdx-parent=none */
static char **allowed;          /* vhdx-allow-parent-path=DIR */
static size_t nallowed;
static bool allow_any;
static bool no_locks;                   /* vhdx-locking=off */
static bool ignore_linkage;

/* .load calls: more than one means --filter=vhdx twice (util/single.h). */
static unsigned loads;

static void
vhdx_filter_load (void)
{
  loads++;
  kvm_log_set (nbdkit_verror, nbdkit_vdebug);
  confine_set_allow_hint ("vhdx-allow-parent-path=DIR");
}

static void
vhdx_filter_unload (void)
{
  if (--loads > 0)             /* another instance: its state too */
    return;
  bdev_format_filter_close_all ();
  for (size_t i = 0; i < nallowed; i++)
    free (allowed[i]);
  free (allowed);
  free (parent_path);
}

static int
vhdx_filter_config (nbdkit_next_config *next, nbdkit_backend *nxdata,
                    const char *key, const char *value)
{
  if (strcmp (key, "vhdx-parent") == 0) {
    free (parent_path);
    parent_path = NULL;
    parent_none = strcmp (value, "none") == 0;
    if (!parent_none && !(parent_path = nbdkit_realpath (value)))
      return -1;
    return 0;
  }
  if (strcmp (key, "vhdx-allow-parent-path") == 0)
    return bdev_nbdkit_allow_path (value, &allowed, &nallowed, &allow_any);
  if (strcmp (key, "vhdx-locking") == 0)
    return bdev_nbdkit_locking_param (value, &no_locks);
  if (strcmp (key, "vhdx-ignore-parent-linkage") == 0) {
    int r = nbdkit_parse_bool (value);
    if (r == -1)
      return -1;
    ignore_linkage = r;
    return 0;
  }
  if (strcmp (key, "vhdx-exports") == 0)
    return bdev_format_filter_config_exports (value);
  return next (nxdata, key, value);
}

#define vhdx_filter_config_help \
  "vhdx-parent=PATH|none       Parent of a differencing disk (a local\n" \
  "                            VHDX file), or none (unset sectors read as\n" \
  "                            zeroes).  Required for differencing disks.\n" \
  "vhdx-allow-parent-path=DIR|any\n" \
  "                            The parent's own parents may also be in DIR.\n" \
  "vhdx-ignore-parent-linkage=true\n" \
  "                            Accept a parent whose DataWriteGuid differs.\n" \
  "vhdx-locking=off            Take no image locks on the parent files.\n" \
  "vhdx-exports=one|per-name   One export name at a time (default), or\n" \
  "                            each name its own image (a plugin that\n" \
  "                            stores each name apart)."

static int
vhdx_filter_thread_model (void)
{
  return NBDKIT_THREAD_MODEL_PARALLEL;
}

static struct bdev *
bdev_format_filter_open_image (const char *export, nbdkit_next *next,
                               bool readonly)
{
  const char *fopts[3];
  size_t n = 0;
  struct bdev *container, *parent = NULL, *bd = NULL;
  char *name;

  if (asprintf (&name, "vhdx filter (export '%s')", export) == -1) {
    nbdkit_error ("asprintf: %m");
    return NULL;
  }
  container = bdev_next_routed (next, name, readonly);
  if (!container)
    goto out;
  if (parent_path) {
    struct bdev_open_opts po = {
      .readonly = true,
      .allowed_dirs = (const char *const *) allowed,
      .allow_any_path = allow_any,
      .no_locks = no_locks,
    };
    parent = bdev_open (parent_path, "vhdx", &po, 1);
    if (!parent) {
      bdev_close (container);
      goto out;
    }
  }
  if (parent_none)
    fopts[n++] = "vhdx.parent=none";
  if (ignore_linkage)
    fopts[n++] = "vhdx.ignore-parent-linkage=1";
  fopts[n] = NULL;
  struct bdev_open_opts o = {
    .readonly = container->readonly,
    .format_opts = fopts,
    .backing = parent,
    .no_paths = true,
  };
  /* Takes ownership of container and parent, also on failure. */
  bd = vhdx_open_container (container, name, NULL, &o, 0);
 out:
  free (name);
  return bd;
}

/* The disk's logical sector size is the NBD minimum block size. */
static int
vhdx_filter_block_size (nbdkit_next *next, void *handle, uint32_t *minimum,
                        uint32_t *preferred, uint32_t *maximum)
{
  struct bdev_format_filter_handle *h = handle;
  (void) next;
  bdev_nbdkit_block_size_of (&h->h, minimum, preferred, maximum);
  *minimum = h->h.bd->block_size;
  return 0;
}

static int
vhdx_filter_get_ready (int thread_model)
{
  (void) thread_model;
  return kvm_filter_single (loads, "vhdx");
}

static struct nbdkit_filter filter = {
  .name = "vhdx",
  .longname = "nbdkit vhdx filter",
  .load = vhdx_filter_load,
  .unload = vhdx_filter_unload,
  .get_ready = vhdx_filter_get_ready,
  .config = vhdx_filter_config,
  .config_help = vhdx_filter_config_help,
  .thread_model = vhdx_filter_thread_model,
  BDEV_NBDKIT_FORMAT_FILTER_LIFECYCLE,
  .get_size       = bdev_nbdkit_fcb_get_size,
  .block_size     = vhdx_filter_block_size,
  .can_write      = bdev_nbdkit_fcb_can_write,
  .can_flush      = bdev_nbdkit_fcb_true,
  .is_rotational  = bdev_nbdkit_fcb_false,
  .can_trim       = bdev_nbdkit_fcb_can_trim,
  .can_zero       = bdev_nbdkit_fcb_can_zero,
  .can_fast_zero  = bdev_nbdkit_fcb_can_fast_zero,
  .can_extents    = bdev_nbdkit_fcb_true,
  .can_fua        = bdev_nbdkit_fcb_can_fua,
  .can_multi_conn = bdev_nbdkit_fcb_can_multi_conn,
  .can_cache      = bdev_nbdkit_fcb_can_cache,
  .pread          = bdev_nbdkit_fcb_pread,
  .pwrite         = bdev_nbdkit_fcb_pwrite,
  .flush          = bdev_nbdkit_fcb_flush,
  .trim           = bdev_nbdkit_fcb_trim,
  .zero           = bdev_nbdkit_fcb_zero,
  .extents        = bdev_nbdkit_fcb_extents,
};

NBDKIT_REGISTER_FILTER (filter)
