/* SPDX-License-Identifier: BSD-3-Clause */
/* nbdkit vmdk filter: the VMDK engine (common/vmdk) serving a monolithic
 * image (monolithicSparse, streamOptimized, a VMFSSPARSE file) stored in
 * the export of whatever plugin the filter sits on.  Descriptors that
 * name extent files cannot be served this way (their files are not in
 * the export); a delta disk's parent is named with vmdk-backing=.
 *
 * One engine, shared by every connection (or one per export name, with
 * vmdk-exports=per-name), as in the qcow2 filter (bdev_nbdkit_filter.h).
 * The container cannot grow: an allocating write that needs more room
 * than the export has fails with ENOSPC.
 */
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <nbdkit-filter.h>

#include "bdev/bdev.h"
#define BDEV_FORMAT_FILTER_EXPORTS "vmdk-exports"
#include "bdev/bdev_nbdkit_format_filter.h"
#include "util/confine.h"
#include "util/log.h"
#include "util/single.h"
#include "vmdk/vmdk.h"

static char *backing_path;      /* vmdk-backing=PATH */
static bool backing_none;       /* vmdk-backing=none */
static bool ignore_parent_cid;  /* vmdk-ignore-parent-cid=true */
static char **allowed;          /* vmdk-allow-path=DIR, NULL-ended */
static size_t nallowed;
static bool allow_any;
static bool no_locks;                   /* vmdk-locking=off */

/* .load calls: more than one means --filter=vmdk twice (util/single.h). */
static unsigned loads;

static void
vmdk_filter_load (void)
{
  loads++;
  kvm_log_set (nbdkit_verror, nbdkit_vdebug);
  confine_set_allow_hint ("vmdk-allow-path=DIR");
}

static void
vmdk_filter_unload (void)
{
  if (--loads > 0)             /* another instance: its state too */
    return;
  bdev_format_filter_close_all ();
  for (size_t i = 0; i < nallowed; i++)
    free (allowed[i]);
  free (allowed);
  free (backing_path);
}

static int
vmdk_filter_config (nbdkit_next_config *next, nbdkit_backend *nxdata,
                    const char *key, const char *value)
{
  if (strcmp (key, "vmdk-backing") == 0) {
    free (backing_path);
    backing_path = NULL;
    backing_none = strcmp (value, "none") == 0;
    if (!backing_none && !(backing_path = nbdkit_realpath (value)))
      return -1;
    return 0;
  }
  if (strcmp (key, "vmdk-ignore-parent-cid") == 0) {
    int r = nbdkit_parse_bool (value);
    if (r == -1)
      return -1;
    ignore_parent_cid = r;
    return 0;
  }
  if (strcmp (key, "vmdk-allow-path") == 0)
    return bdev_nbdkit_allow_path (value, &allowed, &nallowed, &allow_any);
  if (strcmp (key, "vmdk-locking") == 0)
    return bdev_nbdkit_locking_param (value, &no_locks);
  if (strcmp (key, "vmdk-exports") == 0)
    return bdev_format_filter_config_exports (value);
  return next (nxdata, key, value);
}

#define vmdk_filter_config_help \
  "vmdk-backing=PATH|none      Parent of a delta disk (a local path), or\n" \
  "                            none (unallocated grains read as zeroes).\n" \
  "                            Required if the image names a parent.\n" \
  "vmdk-ignore-parent-cid=true Open a delta disk whose parent changed.\n" \
  "vmdk-allow-path=DIR|any     The parent's own extent and parent files\n" \
  "                            may also be in DIR.\n" \
  "vmdk-locking=off            Take no image locks on the parent's files.\n" \
  "vmdk-exports=one|per-name   One export name at a time (default), or\n" \
  "                            each name its own image (a plugin that\n" \
  "                            stores each name apart)."

static int
vmdk_filter_thread_model (void)
{
  return NBDKIT_THREAD_MODEL_PARALLEL;
}

static struct bdev *
bdev_format_filter_open_image (const char *export, nbdkit_next *next,
                               bool readonly)
{
  struct bdev *container, *backing = NULL, *bd = NULL;
  char *name;
  const char *fopts[3] = { NULL }, **f = fopts;
  if (backing_none)
    *f++ = "vmdk.backing=none";
  if (ignore_parent_cid)
    *f++ = "vmdk.ignore-parent-cid=1";

  if (asprintf (&name, "vmdk filter (export '%s')", export) == -1) {
    nbdkit_error ("asprintf: %m");
    return NULL;
  }
  container = bdev_next_routed (next, name, readonly);
  if (!container)
    goto out;
  if (backing_path) {
    struct bdev_open_opts bo = {
      .readonly = true,
      .allowed_dirs = (const char *const *) allowed,
      .allow_any_path = allow_any,
      .no_locks = no_locks,
    };
    /* The parent checks its own parent's CID: the option reaches it. */
    static const char *const ig_opts[] = { "vmdk.ignore-parent-cid=1", NULL };
    if (ignore_parent_cid)
      bo.format_opts = ig_opts;
    backing = bdev_open (backing_path, NULL, &bo, 1);
    if (!backing) {
      bdev_close (container);
      goto out;
    }
  }
  struct bdev_open_opts o = {
    .readonly = container->readonly,
    .format_opts = fopts,
    .backing = backing,
    .no_paths = true,
  };
  /* Takes ownership of container and backing, also on failure. */
  bd = vmdk_open_container (container, name, &o, 0);
 out:
  free (name);
  return bd;
}

static int
vmdk_filter_get_ready (int thread_model)
{
  (void) thread_model;
  return kvm_filter_single (loads, "vmdk");
}

static struct nbdkit_filter filter = {
  .name = "vmdk",
  .longname = "nbdkit vmdk filter",
  .load = vmdk_filter_load,
  .unload = vmdk_filter_unload,
  .get_ready = vmdk_filter_get_ready,
  .config = vmdk_filter_config,
  .config_help = vmdk_filter_config_help,
  .thread_model = vmdk_filter_thread_model,
  BDEV_NBDKIT_FORMAT_FILTER_LIFECYCLE,
  BDEV_NBDKIT_FILTER_CALLBACKS,
};

NBDKIT_REGISTER_FILTER (filter)
