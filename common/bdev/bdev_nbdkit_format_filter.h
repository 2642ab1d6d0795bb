/* SPDX-License-Identifier: BSD-3-Clause */
/* An image-format filter (qcow2, vmdk, vhdx): one engine, opened over the
 * layer below by the first connection and shared by all of them
 * (bdev_registry.h), served with
 * BDEV_NBDKIT_FILTER_CALLBACKS (bdev_nbdkit_filter.h, whose lifetime
 * rules this follows).
 *
 * The filter defines
 *
 *   static struct bdev *
 *   bdev_format_filter_open_image (const char *export, nbdkit_next *next,
 *                                  bool readonly);
 *
 * which opens its engine over bdev_next_routed (NEXT, ..., READONLY)
 * (called with NEXT entered, errors reported), puts
 * BDEV_NBDKIT_FORMAT_FILTER_LIFECYCLE in its struct nbdkit_filter
 * (.open, .prepare, .finalize, .close) and calls
 * bdev_format_filter_close_all() from its .unload.
 *
 * One export name at a time, unless the filter's parameter
 * BDEV_FORMAT_FILTER_EXPORTS=per-name (the filter defines the macro
 * before including this, e.g. "qcow2-exports") says that the plugin
 * below stores each name apart (the lvm plugin, file dir=): then each
 * name is its own engine.  Its .config passes that key to
 * bdev_format_filter_config_exports().
 *
 * Header only, for filters (one registry per filter).  Include it after
 * <nbdkit-filter.h>.
 */
#ifndef KVM_BDEV_NBDKIT_FORMAT_FILTER_H
#define KVM_BDEV_NBDKIT_FORMAT_FILTER_H

#ifndef NBDKIT_FILTER_API_VERSION
#error "include <nbdkit-filter.h> first"
#endif
#ifndef BDEV_FORMAT_FILTER_EXPORTS
#error "define BDEV_FORMAT_FILTER_EXPORTS (the filter's KEY=one|per-name)"
#endif

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "bdev/bdev.h"
#include "bdev/bdev_nbdkit_filter.h"
#include "bdev/bdev_registry.h"

/* Defined by the filter (above). */
static struct bdev *bdev_format_filter_open_image (const char *export,
                                                   nbdkit_next *next,
                                                   bool readonly);

/* The engines of this filter: one, or one per export name. */
static struct bdev_registry bdev_format_filter_images =
  BDEV_REGISTRY_INIT_ONE_NAME (BDEV_FORMAT_FILTER_EXPORTS);

/* .config of BDEV_FORMAT_FILTER_EXPORTS=one|per-name. */
static inline int
bdev_format_filter_config_exports (const char *value)
{
  return bdev_registry_names_param (&bdev_format_filter_images,
                                    BDEV_FORMAT_FILTER_EXPORTS, value);
}

/* A connection's handle. */
struct bdev_format_filter_handle {
  struct bdev_nbdkit_handle h;  /* first: the shared callbacks use it */
  struct bdev_registry_entry *img;      /* from .prepare to .finalize */
  char *export;
};

struct bdev_format_filter_open_args {
  nbdkit_next *next;
  bool readonly;
};

static inline struct bdev *
bdev_format_filter_open_entry (const char *export, void *arg)
{
  struct bdev_format_filter_open_args *a = arg;
  return bdev_format_filter_open_image (export, a->next, a->readonly);
}

static inline void
bdev_format_filter_close_all (void)
{
  bdev_registry_close_all (&bdev_format_filter_images);
}

static inline void *
bdev_format_filter_open (nbdkit_next_open *next, nbdkit_context *context,
                         int readonly, const char *exportname, int is_tls)
{
  struct bdev_format_filter_handle *h;
  (void) is_tls;

  if (next (context, readonly, exportname) == -1)
    return NULL;
  h = calloc (1, sizeof *h);
  if (!h || !(h->export = strdup (exportname))) {
    nbdkit_error ("calloc: %m");
    free (h);
    return NULL;
  }
  h->h.readonly = readonly;
  h->h.shared = true;
  return h;
}

/* The engine is opened (by the export's first connection) once the
 * connection's context into the plugin is usable.
 */
static inline int
bdev_format_filter_prepare (nbdkit_next *next, void *handle, int readonly)
{
  struct bdev_format_filter_handle *h = handle;
  struct bdev_format_filter_open_args a = {
    .next = next, .readonly = readonly,
  };

  if (bdev_next_prime (next) == -1)
    return -1;
  bdev_next_enter (next);
  h->img = bdev_registry_get (&bdev_format_filter_images, h->export,
                              bdev_format_filter_open_entry, &a);
  /* A failed open may have written through this context, which nbdkit
   * frees without .finalize: flush it and drop it from the list now.
   */
  if (!h->img)
    bdev_next_connection_done (next);
  bdev_next_leave ();
  if (!h->img)
    return -1;
  h->h.bd = h->img->bd;
  return 0;
}

/* The last connection closes the engine while its context still works. */
static inline int
bdev_format_filter_finalize (nbdkit_next *next, void *handle)
{
  struct bdev_format_filter_handle *h = handle;

  if (!h->img)
    return 0;
  bdev_next_enter (next);
  bdev_registry_put (&bdev_format_filter_images, h->img);
  /* A failure is logged; returning it would stop nbdkit from finalizing
   * the layers below (bdev_next_connection_done).
   */
  bdev_next_connection_done (next);
  bdev_next_leave ();
  h->img = NULL;
  return 0;
}

static inline void
bdev_format_filter_close (void *handle)
{
  struct bdev_format_filter_handle *h = handle;
  free (h->export);
  free (h);
}

/* Designated initialisers for struct nbdkit_filter. */
#define BDEV_NBDKIT_FORMAT_FILTER_LIFECYCLE             \
  .open     = bdev_format_filter_open,                  \
  .prepare  = bdev_format_filter_prepare,               \
  .finalize = bdev_format_filter_finalize,              \
  .close    = bdev_format_filter_close

#endif
