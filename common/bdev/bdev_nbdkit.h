/* SPDX-License-Identifier: BSD-3-Clause */
/* Serving a struct bdev from an nbdkit plugin: the data callbacks of a
 * plugin whose handle leads to a bdev are one call each into these, and a
 * plugin whose handle starts with struct bdev_nbdkit_handle gets all its
 * size, capability and data callbacks from BDEV_NBDKIT_PLUGIN_CALLBACKS.
 *
 * Header only, for plugins: common/ itself does not depend on nbdkit.
 * Include it after <nbdkit-plugin.h> (with NBDKIT_API_VERSION 2).
 * Filters use bdev_nbdkit_filter.h instead.
 */
#ifndef KVM_BDEV_NBDKIT_H
#define KVM_BDEV_NBDKIT_H

#if !defined NBDKIT_API_VERSION || NBDKIT_API_VERSION < 2
#error "include <nbdkit-plugin.h> with NBDKIT_API_VERSION 2 first"
#endif

#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>

#include "bdev/bdev.h"
#include "bdev/bdev_nbdkit_common.h"
#include "bdev/bdev_registry.h"

/* Pass a bdev result on, with its errno as the NBD error (ENOTSUP for a
 * fast zero that would be slow, ENOSPC, EIO, ...).
 */
static inline int
bdev_nbdkit_result (int r)
{
  if (r == -1)
    nbdkit_set_error (errno ? errno : EIO);
  return r;
}

static inline int
bdev_nbdkit_pread (struct bdev *bd, void *buf, uint32_t count,
                   uint64_t offset)
{
  return bdev_nbdkit_result (bdev_pread (bd, buf, count, offset));
}

static inline int
bdev_nbdkit_pwrite (struct bdev *bd, const void *buf, uint32_t count,
                    uint64_t offset, uint32_t flags)
{
  return bdev_nbdkit_result (bdev_pwrite (bd, buf, count, offset,
                                          bdev_flags_of_nbdkit (flags)));
}

static inline int
bdev_nbdkit_flush (struct bdev *bd)
{
  return bdev_nbdkit_result (bdev_flush (bd));
}

static inline int
bdev_nbdkit_trim (struct bdev *bd, uint32_t count, uint64_t offset,
                  uint32_t flags)
{
  return bdev_nbdkit_result (bdev_trim (bd, count, offset,
                                        bdev_flags_of_nbdkit (flags)));
}

static inline int
bdev_nbdkit_zero (struct bdev *bd, uint32_t count, uint64_t offset,
                  uint32_t flags)
{
  return bdev_nbdkit_result (bdev_zero (bd, count, offset,
                                        bdev_flags_of_nbdkit (flags)));
}

static inline int
bdev_nbdkit_add_extent (void *extents, uint64_t offset, uint64_t length,
                        uint32_t type)
{
  return nbdkit_add_extent (extents, offset, length, type);
}

static inline int
bdev_nbdkit_extents (struct bdev *bd, uint32_t count, uint64_t offset,
                     uint32_t flags, struct nbdkit_extents *extents)
{
  return bdev_nbdkit_result (bdev_extents (bd, count, offset,
                                           bdev_flags_of_nbdkit (flags),
                                           bdev_nbdkit_add_extent, extents));
}

/* Plugin callbacks over a handle that starts with struct
 * bdev_nbdkit_handle.
 */
#define BDEV_NBDKIT_H_(handle) ((struct bdev_nbdkit_handle *) (handle))

static inline int64_t
bdev_nbdkit_cb_get_size (void *handle)
{
  return BDEV_NBDKIT_H_ (handle)->bd->size;
}

static inline int
bdev_nbdkit_cb_block_size (void *handle, uint32_t *minimum,
                           uint32_t *preferred, uint32_t *maximum)
{
  return bdev_nbdkit_block_size_of (BDEV_NBDKIT_H_ (handle), minimum,
                                    preferred, maximum);
}

static inline int
bdev_nbdkit_cb_can_write (void *handle)
{
  return bdev_nbdkit_writable (BDEV_NBDKIT_H_ (handle));
}

static inline int
bdev_nbdkit_cb_true (void *handle)
{
  (void) handle;
  return 1;
}

static inline int
bdev_nbdkit_cb_can_trim (void *handle)
{
  return bdev_nbdkit_can_trim_of (BDEV_NBDKIT_H_ (handle));
}

static inline int
bdev_nbdkit_cb_can_fast_zero (void *handle)
{
  return bdev_nbdkit_can_fast_zero_of (BDEV_NBDKIT_H_ (handle));
}

/* bdev_pwrite flushes after a write when the bdev has no native FUA. */
static inline int
bdev_nbdkit_cb_can_fua (void *handle)
{
  (void) handle;
  return NBDKIT_FUA_NATIVE;
}

static inline int
bdev_nbdkit_cb_can_multi_conn (void *handle)
{
  return bdev_nbdkit_can_multi_conn_of (BDEV_NBDKIT_H_ (handle));
}

static inline int
bdev_nbdkit_cb_pread (void *handle, void *buf, uint32_t count,
                      uint64_t offset, uint32_t flags)
{
  (void) flags;
  return bdev_nbdkit_pread (BDEV_NBDKIT_H_ (handle)->bd, buf, count, offset);
}

static inline int
bdev_nbdkit_cb_pwrite (void *handle, const void *buf, uint32_t count,
                       uint64_t offset, uint32_t flags)
{
  return bdev_nbdkit_pwrite (BDEV_NBDKIT_H_ (handle)->bd, buf, count, offset,
                             flags);
}

static inline int
bdev_nbdkit_cb_flush (void *handle, uint32_t flags)
{
  (void) flags;
  return bdev_nbdkit_flush (BDEV_NBDKIT_H_ (handle)->bd);
}

static inline int
bdev_nbdkit_cb_trim (void *handle, uint32_t count, uint64_t offset,
                     uint32_t flags)
{
  return bdev_nbdkit_trim (BDEV_NBDKIT_H_ (handle)->bd, count, offset, flags);
}

static inline int
bdev_nbdkit_cb_zero (void *handle, uint32_t count, uint64_t offset,
                     uint32_t flags)
{
  return bdev_nbdkit_zero (BDEV_NBDKIT_H_ (handle)->bd, count, offset, flags);
}

static inline int
bdev_nbdkit_cb_extents (void *handle, uint32_t count, uint64_t offset,
                        uint32_t flags, struct nbdkit_extents *extents)
{
  return bdev_nbdkit_extents (BDEV_NBDKIT_H_ (handle)->bd, count, offset,
                              flags, extents);
}

/* ---- Opening: read-write, else read-only; one bdev per export ------ */

/* BD is the result of opening NAME with O: if that failed only because
 * the storage refuses writing (EACCES, EROFS, EPERM) and O asked for
 * read-write, switch O to read-only and return true (open again, and the
 * client sees a read-only export).
 */
static inline bool
bdev_nbdkit_retry_readonly (const struct bdev *bd, struct bdev_open_opts *o,
                            const char *name)
{
  if (bd || o->readonly ||
      !(errno == EACCES || errno == EROFS || errno == EPERM))
    return false;
  nbdkit_debug ("%s: not writable: serving it read-only (-r skips the "
                "read-write attempt)", name);
  o->readonly = true;
  o->quiet_write_refusal = false;
  return true;
}

/* Open image NAME as FORMAT with O, read-only if the storage refuses
 * writing; that refusal is not logged as an error.
 */
static inline struct bdev *
bdev_nbdkit_open_rw_else_ro (const char *name, const char *format,
                             struct bdev_open_opts *o)
{
  o->quiet_write_refusal = !o->readonly;
  struct bdev *bd = bdev_open (name, format, o, 0);
  if (bdev_nbdkit_retry_readonly (bd, o, name))
    bd = bdev_open (name, format, o, 0);
  return bd;
}

/* .config_complete: open the image of EXPORT with OPEN read-only, and
 * close it.  A file that is not an image of the format, a backing file
 * missing or outside the allowed paths, a lock held by a guest: nbdkit
 * stops at start-up with the engine's message, as qemu-nbd does, rather
 * than serving an export that every client is refused.  Read-only: the
 * check writes nothing, and a read-only open refuses nothing that a
 * read-write one accepts.
 */
static inline int
bdev_nbdkit_check_opens (bdev_registry_open_fn open, const char *export)
{
  bool ro = true;
  struct bdev *bd = open (export, &ro);
  if (!bd)
    return -1;
  bdev_close (bd);
  return 0;
}

/* A plugin handle on a bdev shared by every connection to its export
 * (bdev_registry.h).
 */
struct bdev_nbdkit_shared_handle {
  struct bdev_nbdkit_handle h;  /* first: the shared callbacks use it */
  struct bdev_registry_entry *img;
};

/* .open: the handle of a connection to EXPORT of registry R, the bdev
 * opened with OPEN (its ARG points to a bool, the connection's readonly
 * flag) if no other connection has it.  Close with
 * bdev_nbdkit_shared_close.
 */
static inline void *
bdev_nbdkit_shared_open (struct bdev_registry *r, const char *export,
                         bdev_registry_open_fn open, int readonly)
{
  bool ro = readonly;
  struct bdev_nbdkit_shared_handle *h = calloc (1, sizeof *h);
  if (!h) {
    nbdkit_error ("calloc: %m");
    return NULL;
  }
  h->img = bdev_registry_get (r, export, open, &ro);
  if (!h->img) {
    free (h);
    return NULL;
  }
  h->h.bd = h->img->bd;
  h->h.readonly = readonly;
  h->h.shared = true;
  return h;
}

static inline void
bdev_nbdkit_shared_close (struct bdev_registry *r, void *handle)
{
  struct bdev_nbdkit_shared_handle *h = handle;
  bdev_registry_put (r, h->img);
  free (h);
}

/* Designated initialisers for struct nbdkit_plugin: everything after
 * .open/.close.  Writes, trims and zeroes are offered when the bdev is
 * writable; zero falls back to writing zeroes inside bdev_zero.
 */
#define BDEV_NBDKIT_PLUGIN_CALLBACKS                     \
  .get_size       = bdev_nbdkit_cb_get_size,             \
  .block_size     = bdev_nbdkit_cb_block_size,           \
  .can_write      = bdev_nbdkit_cb_can_write,            \
  .can_flush      = bdev_nbdkit_cb_true,                 \
  .can_trim       = bdev_nbdkit_cb_can_trim,             \
  .can_zero       = bdev_nbdkit_cb_true,                 \
  .can_fast_zero  = bdev_nbdkit_cb_can_fast_zero,        \
  .can_fua        = bdev_nbdkit_cb_can_fua,              \
  .can_multi_conn = bdev_nbdkit_cb_can_multi_conn,       \
  .can_extents    = bdev_nbdkit_cb_true,                 \
  .pread          = bdev_nbdkit_cb_pread,                \
  .pwrite         = bdev_nbdkit_cb_pwrite,               \
  .flush          = bdev_nbdkit_cb_flush,                \
  .trim           = bdev_nbdkit_cb_trim,                 \
  .zero           = bdev_nbdkit_cb_zero,                 \
  .extents        = bdev_nbdkit_cb_extents,              \
  .errno_is_preserved = 0

#endif
