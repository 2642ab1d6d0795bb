/* SPDX-License-Identifier: BSD-3-Clause */
/* nbdkit qcow2 filter: the qcow2 engine (common/qcow2) serving an image
 * that is stored in the export of whatever plugin the filter sits on: a
 * qcow2 written onto an LV, an RBD image, an iSCSI LUN, a plain file.
 *
 * One engine, shared by every connection (or one per export name, with
 * qcow2-exports=per-name); its container is routed to the context of the
 * connection being served (bdev_nbdkit_filter.h explains why and the
 * lifetime rules).  The container cannot grow: an allocating write that
 * needs more room than the plugin's export has fails with ENOSPC.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <nbdkit-filter.h>

#include "bdev/bdev.h"
#define BDEV_FORMAT_FILTER_EXPORTS "qcow2-exports"
#include "bdev/bdev_nbdkit_format_filter.h"
#include "qcow2/qcow2.h"
#include "util/confine.h"
#include "util/log.h"
#include "util/single.h"

/* -D qcow2.verbose=1: dump the header, snapshots and cache statistics. */
NBDKIT_DLL_PUBLIC int qcow2_debug_verbose = 0;

static char *backing_path;      /* qcow2-backing=PATH */
static bool backing_none;       /* qcow2-backing=none */
static char **allowed;          /* qcow2-allow-backing-path=DIR, NULL-ended */
static size_t nallowed;
static bool allow_any;
static bool no_locks;                   /* qcow2-locking=off */
static int64_t cache_size = -1;

/* .load calls: more than one means --filter=qcow2 twice (util/single.h). */
static unsigned loads;

static void
qcow2_filter_load (void)
{
  loads++;
  kvm_log_set (nbdkit_verror, nbdkit_vdebug);
  confine_set_allow_hint ("qcow2-allow-backing-path=DIR");
}

static void
qcow2_filter_unload (void)
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
qcow2_filter_config (nbdkit_next_config *next, nbdkit_backend *nxdata,
                     const char *key, const char *value)
{
  if (strcmp (key, "qcow2-backing") == 0) {
    free (backing_path);
    backing_path = NULL;
    backing_none = strcmp (value, "none") == 0;
    if (!backing_none && !(backing_path = nbdkit_realpath (value)))
      return -1;
    return 0;
  }
  if (strcmp (key, "qcow2-allow-backing-path") == 0)
    return bdev_nbdkit_allow_path (value, &allowed, &nallowed, &allow_any);
  if (strcmp (key, "qcow2-locking") == 0)
    return bdev_nbdkit_locking_param (value, &no_locks);
  if (strcmp (key, "qcow2-cache") == 0) {
    cache_size = nbdkit_parse_size (value);
    return cache_size == -1 ? -1 : 0;
  }
  if (strcmp (key, "qcow2-exports") == 0)
    return bdev_format_filter_config_exports (value);
  return next (nxdata, key, value);
}

#define qcow2_filter_config_help \
  "qcow2-backing=PATH|none     Backing file of the image (a local path),\n" \
  "                            or none (reads zeroes where the image has\n" \
  "                            no data).  Required if the image names one.\n" \
  "qcow2-allow-backing-path=DIR|any\n" \
  "                            The backing file's own backing files may\n" \
  "                            also be in DIR.\n" \
  "qcow2-cache=SIZE            L2 metadata cache size.\n" \
  "qcow2-locking=off           Take no image locks on the backing files.\n" \
  "qcow2-exports=one|per-name  One export name at a time (default), or\n" \
  "                            each name its own image (a plugin that\n" \
  "                            stores each name apart)."

static int
qcow2_filter_thread_model (void)
{
  return NBDKIT_THREAD_MODEL_PARALLEL;
}

/* The backing file named by qcow2-backing=PATH: opened like an image the
 * user named on the command line (its format probed, its own backing
 * files confined to its directory and the allowed ones).
 */
static struct bdev *
open_backing (void)
{
  struct bdev_open_opts o = {
    .readonly = true,
    .allowed_dirs = (const char *const *) allowed,
    .allow_any_path = allow_any,
    .no_locks = no_locks,
  };
  return bdev_open (backing_path, NULL, &o, 1);
}

static struct bdev *
bdev_format_filter_open_image (const char *export, nbdkit_next *next,
                               bool readonly)
{
  char cachebuf[64];
  const char *fopts[4];
  size_t n = 0;
  struct bdev *container, *backing = NULL, *bd = NULL;
  char *name;

  if (asprintf (&name, "qcow2 filter (export '%s')", export) == -1) {
    nbdkit_error ("asprintf: %m");
    return NULL;
  }
  container = bdev_next_routed (next, name, readonly);
  if (!container)
    goto out;
  if (backing_path && !(backing = open_backing ())) {
    bdev_close (container);
    goto out;
  }
  if (backing_none)
    fopts[n++] = "qcow2.backing=none";
  if (cache_size >= 0) {
    snprintf (cachebuf, sizeof cachebuf, "qcow2.cache=%" PRIi64, cache_size);
    fopts[n++] = cachebuf;
  }
  if (qcow2_debug_verbose)
    fopts[n++] = "qcow2.verbose=1";
  fopts[n] = NULL;
  struct bdev_open_opts o = {
    .readonly = container->readonly,
    .format_opts = fopts,
    .backing = backing,
    .no_paths = true,
  };
  /* Takes ownership of container and backing, also on failure. */
  bd = qcow2_open_container (container, name, &o, 0);
 out:
  free (name);
  return bd;
}

static int
qcow2_filter_get_ready (int thread_model)
{
  (void) thread_model;
  return kvm_filter_single (loads, "qcow2");
}

static struct nbdkit_filter filter = {
  .name = "qcow2",
  .longname = "nbdkit qcow2 filter",
  .load = qcow2_filter_load,
  .unload = qcow2_filter_unload,
  .get_ready = qcow2_filter_get_ready,
  .config = qcow2_filter_config,
  .config_help = qcow2_filter_config_help,
  .thread_model = qcow2_filter_thread_model,
  BDEV_NBDKIT_FORMAT_FILTER_LIFECYCLE,
  BDEV_NBDKIT_FILTER_CALLBACKS,
};

NBDKIT_REGISTER_FILTER (filter)
