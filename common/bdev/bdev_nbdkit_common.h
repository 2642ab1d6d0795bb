/* SPDX-License-Identifier: BSD-3-Clause */
/* What nbdkit plugins (bdev_nbdkit.h) and filters (bdev_nbdkit_filter.h)
 * that serve a struct bdev have in common: flag mapping and the answers
 * to nbdkit's capability questions, derived from struct bdev.caps.
 *
 * Header only; include it through one of those two headers.
 */
#ifndef KVM_BDEV_NBDKIT_COMMON_H
#define KVM_BDEV_NBDKIT_COMMON_H

#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "bdev/bdev.h"

/* NBDKIT_FLAG_* -> BDEV_* */
static inline uint32_t
bdev_flags_of_nbdkit (uint32_t f)
{
  uint32_t b = 0;
  if (f & NBDKIT_FLAG_FUA) b |= BDEV_FUA;
  if (f & NBDKIT_FLAG_MAY_TRIM) b |= BDEV_MAY_TRIM;
  if (f & NBDKIT_FLAG_FAST_ZERO) b |= BDEV_FAST_ZERO;
  if (f & NBDKIT_FLAG_REQ_ONE) b |= BDEV_REQ_ONE;
  return b;
}

/* BDEV_* -> NBDKIT_FLAG_* */
static inline uint32_t
bdev_flags_to_nbdkit (uint32_t b)
{
  uint32_t f = 0;
  if (b & BDEV_FUA) f |= NBDKIT_FLAG_FUA;
  if (b & BDEV_MAY_TRIM) f |= NBDKIT_FLAG_MAY_TRIM;
  if (b & BDEV_FAST_ZERO) f |= NBDKIT_FLAG_FAST_ZERO;
  if (b & BDEV_REQ_ONE) f |= NBDKIT_FLAG_REQ_ONE;
  return f;
}

/* The file= parameter of format plugins: a local path made absolute
 * (nbdkit_realpath: it must exist), or a URL (nfs://...) kept as it is.
 * NULL after nbdkit_error.
 */
static inline char *
bdev_nbdkit_file_param (const char *value)
{
  if (bdev_storage_is_url (value)) {
    char *u = strdup (value);
    if (!u)
      nbdkit_error ("strdup: %m");
    return u;
  }
  return nbdkit_realpath (value);
}

/* The allow-backing-path=DIR|any parameter of format plugins and filters:
 * DIR (resolved) is appended to the NULL-terminated list *DIRS of *N
 * entries (for bdev_open_opts.allowed_dirs); "any" (or "*") sets *ANY.
 * A URL prefix (nfs://server/export/dir) allows files below it there.
 */
static inline int
bdev_nbdkit_allow_path (const char *value, char ***dirs, size_t *n,
                        bool *any)
{
  if (strcmp (value, "any") == 0 || strcmp (value, "*") == 0) {
    *any = true;
    return 0;
  }
  /* A URL prefix (nfs://server/export/dir) is kept as it is. */
  char *d = bdev_storage_is_url (value) ? strdup (value)
    : nbdkit_realpath (value);
  if (!d) {
    if (bdev_storage_is_url (value))
      nbdkit_error ("strdup: %m");
    return -1;
  }
  char **nd = realloc (*dirs, (*n + 2) * sizeof *nd);
  if (!nd) {
    free (d);
    nbdkit_error ("realloc: %m");
    return -1;
  }
  *dirs = nd;
  nd[(*n)++] = d;
  nd[*n] = NULL;
  return 0;
}

/* The locking=on|off parameter of format plugins (and the filters'
 * FORMAT-locking=): off takes none of QEMU's image locks (bdev.h,
 * no_locks), as QEMU's locking=off.
 */
static inline int
bdev_nbdkit_locking_param (const char *value, bool *no_locks)
{
  int r = nbdkit_parse_bool (value);
  if (r == -1)
    return -1;
  *no_locks = !r;
  return 0;
}

/* Every plugin or filter handle that serves a bdev starts with this, so
 * the shared callbacks below can find the bdev.
 */
struct bdev_nbdkit_handle {
  struct bdev *bd;
  bool readonly;                /* this connection may not write */
  bool shared;                  /* one engine for every connection: a
                                 * flush on any covers all (multi-conn) */
};

static inline bool
bdev_nbdkit_writable (const struct bdev_nbdkit_handle *h)
{
  return !h->readonly && !h->bd->readonly;
}

static inline int
bdev_nbdkit_can_trim_of (const struct bdev_nbdkit_handle *h)
{
  return bdev_nbdkit_writable (h) && (h->bd->caps & BDEV_CAN_TRIM);
}

/* Always: nbdkit 1.32 does not check a client's fast-zero flag against
 * what was advertised, and aborts (an assertion in backend_zero) when it
 * reaches a layer that did not advertise it.  Advertising it is always
 * right: a zero that would not be fast fails at once with ENOTSUP
 * (bdev_zero, each engine's zero, bdev_next for the layer below).
 */
static inline int
bdev_nbdkit_can_fast_zero_of (const struct bdev_nbdkit_handle *h)
{
  (void) h;
  return 1;
}

static inline int
bdev_nbdkit_can_multi_conn_of (const struct bdev_nbdkit_handle *h)
{
  return h->shared || (h->bd->caps & BDEV_CAN_MULTI_CONN);
}

/* NBD block size constraints: any alignment works (the engines split and
 * merge as needed), the bdev's granularity is preferred.
 */
static inline int
bdev_nbdkit_block_size_of (const struct bdev_nbdkit_handle *h,
                           uint32_t *minimum, uint32_t *preferred,
                           uint32_t *maximum)
{
  uint32_t p = 4096;
  while (p < h->bd->block_size && p < 32 * 1024 * 1024)
    p <<= 1;
  *minimum = 1;
  *preferred = p;
  *maximum = 0xffffffff;
  return 0;
}

#endif
