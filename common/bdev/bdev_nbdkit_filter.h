/* SPDX-License-Identifier: BSD-3-Clause */
/* An nbdkit filter and struct bdev, both ways:
 *
 * 1. The layer below a filter as a struct bdev, so an engine (qcow2, later
 *    snapshot and thin) can keep its image in whatever plugin the filter
 *    is stacked on.
 * 2. BDEV_NBDKIT_FILTER_CALLBACKS: a filter whose handle starts with
 *    struct bdev_nbdkit_handle serves that handle's bdev to the client.
 *
 * An engine is shared by every connection to an export, but nbdkit 1.32
 * cannot give it one context into the plugin for all of them: a *shared*
 * context (nbdkit_next_context_open (..., shared = 1)) has no connection,
 * so every plugin that picks its content by export name
 * (nbdkit_export_name(), e.g. one export per LV) fails to open in it.  So
 * the engine's bdev is *routed*: each call goes to the context of the
 * connection whose request the engine is serving, which every callback of
 * BDEV_NBDKIT_FILTER_CALLBACKS sets (a thread-local), as must any other
 * filter callback that calls into the engine (bdev_next_enter/leave).
 * All contexts of one export reach the same storage.
 *
 * Lifetime rules:
 * - Open the engine in .prepare (the connection's context is usable
 *   there, not yet in .open), after bdev_next_prime() of that context,
 *   and close it in .finalize (still usable),
 *   never in .close or .unload, where no context is left for the
 *   engine's last metadata writes.
 * - Before a connection's context goes away, bdev_next_connection_done()
 *   flushes what the engine wrote through it, if needed (below).
 * - When the plugin below does not advertise multi-conn, a flush through
 *   one context need not cover writes made through another: a flush of
 *   the routed bdev then flushes every context that wrote since its last
 *   flush.
 * - bdev_next_wrap() instead wraps one fixed, prepared context (a unit
 *   test's fake layer, or a shared context of a plugin that ignores export
 *   names); the bdev owns it and bdev_close() finalizes and closes it.
 *
 * Header only, for filters (one copy of the thread-local and the list of
 * contexts per filter).  Include it after <nbdkit-filter.h>.
 */
#ifndef KVM_BDEV_NBDKIT_FILTER_H
#define KVM_BDEV_NBDKIT_FILTER_H

#ifndef NBDKIT_FILTER_API_VERSION
#error "include <nbdkit-filter.h> first"
#endif

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#include "bdev/bdev.h"
#include "bdev/bdev_nbdkit_common.h"
#include "util/log.h"

/* ---- 1. The layer below as a bdev ---------------------------------- */

struct bdev_next {
  struct bdev bd;
  nbdkit_next *fixed;           /* NULL: routed to the current context */
  /* What the layer below can do (its can_* answers). */
  bool can_flush, can_trim, can_zero, can_fast_zero, can_extents;
  bool multi_conn;
  int can_fua;
  uint32_t minimum;             /* the layer below's minimum block size */
  /* A context that wrote for this bdev failed its last flush as its
   * connection ended: what was written through it may not be durable,
   * and the next flush of this bdev (which a client of the same export
   * may count on to cover those writes: the filters advertise
   * multi-conn) must fail instead of succeeding.  Per bdev, not per
   * filter: another export's flush has nothing to do with it.  Under
   * bdev_next_dirty_lock.
   */
  bool flush_lost;
};

/* The context of the connection this thread is serving. */
static __thread nbdkit_next *bdev_next_current;

static inline void
bdev_next_enter (nbdkit_next *next)
{
  bdev_next_current = next;
}

static inline void
bdev_next_leave (void)
{
  bdev_next_current = NULL;
}

/* Contexts that wrote since their last flush, for layers without
 * multi-conn.
 */
struct bdev_next_dirty {
  struct bdev_next_dirty *next_dirty;
  nbdkit_next *ctx;
  struct bdev_next *n;          /* the bdev that wrote; NULL once closed */
};
static pthread_mutex_t bdev_next_dirty_lock = PTHREAD_MUTEX_INITIALIZER;
static struct bdev_next_dirty *bdev_next_dirty_list;

/* nbdkit's request counts are 32-bit: larger bdev requests are split. */
#define BDEV_NEXT_MAX_REQUEST (1u << 30)

#define BDEV_NEXT_(bd) ((struct bdev_next *) (bd))

/* The context to use for a call, or NULL (errno set) outside a request. */
static inline nbdkit_next *
bdev_next_ctx (struct bdev_next *n)
{
  nbdkit_next *c = n->fixed ? n->fixed : bdev_next_current;
  if (!c) {
    kvm_error ("%s: no nbdkit context for I/O outside a request",
               n->bd.name);
    errno = EIO;
  }
  return c;
}

/* C has been written through: remember it for the next flush.  (After
 * the write, so that a flush that starts once the write is acknowledged
 * finds it.)
 */
static inline int
bdev_next_mark_dirty (struct bdev_next *n, nbdkit_next *c)
{
  if (n->multi_conn || n->fixed)
    return 0;
  pthread_mutex_lock (&bdev_next_dirty_lock);
  struct bdev_next_dirty *d;
  for (d = bdev_next_dirty_list; d; d = d->next_dirty)
    if (d->ctx == c && d->n == n)
      break;
  if (!d) {
    d = malloc (sizeof *d);
    if (!d) {
      pthread_mutex_unlock (&bdev_next_dirty_lock);
      errno = ENOMEM;
      return -1;
    }
    d->ctx = c;
    d->n = n;
    d->next_dirty = bdev_next_dirty_list;
    bdev_next_dirty_list = d;
  }
  pthread_mutex_unlock (&bdev_next_dirty_lock);
  return 0;
}

/* A call into the layer below failed with ERR: errno, and no message of
 * our own (the plugin already reported it).
 */
static inline int
bdev_next_fail (int err)
{
  errno = err ? err : EIO;
  return -1;
}

static inline void
bdev_next_close (struct bdev *bd)
{
  struct bdev_next *n = BDEV_NEXT_ (bd);
  /* Contexts it wrote through stay listed (flushed as their connection
   * ends), without the bdev.
   */
  pthread_mutex_lock (&bdev_next_dirty_lock);
  for (struct bdev_next_dirty *d = bdev_next_dirty_list; d; d = d->next_dirty)
    if (d->n == n)
      d->n = NULL;
  pthread_mutex_unlock (&bdev_next_dirty_lock);
  if (n->fixed) {
    n->fixed->finalize (n->fixed);
    nbdkit_next_context_close (n->fixed);
  }
  bdev_free_common (bd);
}

/* A layer below with a minimum block size (nbdkit's blocksize-policy
 * filter, a strict NBD server) refuses smaller or unaligned requests,
 * and the engines' metadata I/O is byte-granular: say what to do.
 */
static inline bool
bdev_next_fits (const struct bdev_next *n, uint64_t count, uint64_t offset)
{
  return n->minimum <= 1 || (count % n->minimum == 0 &&
                             offset % n->minimum == 0);
}

static inline int
bdev_next_aligned (struct bdev_next *n, uint64_t count, uint64_t offset)
{
  if (bdev_next_fits (n, count, offset))
    return 0;
  kvm_error ("%s: the layer below takes only requests aligned to %" PRIu32
             " bytes (this one: %" PRIu64 " bytes at %" PRIu64 "): put "
             "nbdkit's blocksize filter under this one (--filter=blocksize)",
             n->bd.name, n->minimum, count, offset);
  errno = EINVAL;
  return -1;
}

static inline int
bdev_next_pread (struct bdev *bd, void *buf, size_t count, uint64_t offset)
{
  if (bdev_next_aligned (BDEV_NEXT_ (bd), count, offset) == -1)
    return -1;
  nbdkit_next *x = bdev_next_ctx (BDEV_NEXT_ (bd));
  if (!x)
    return -1;
  while (count > 0) {
    uint32_t c = count < BDEV_NEXT_MAX_REQUEST ? count : BDEV_NEXT_MAX_REQUEST;
    int err = 0;
    if (x->pread (x, buf, c, offset, 0, &err) == -1)
      return bdev_next_fail (err);
    buf = (char *) buf + c;
    offset += c;
    count -= c;
  }
  return 0;
}

/* FUA only where the layer below takes it; otherwise bdev_pwrite and
 * bdev_zero flush afterwards (struct bdev.caps has no BDEV_CAN_FUA).
 */
static inline uint32_t
bdev_next_write_flags (struct bdev_next *n, uint32_t flags)
{
  uint32_t f = bdev_flags_to_nbdkit (flags & BDEV_FUA);
  if (n->can_fua == NBDKIT_FUA_NONE)
    f &= ~NBDKIT_FLAG_FUA;
  return f;
}

static inline int
bdev_next_pwrite (struct bdev *bd, const void *buf, size_t count,
                  uint64_t offset, uint32_t flags)
{
  struct bdev_next *n = BDEV_NEXT_ (bd);
  uint32_t f = bdev_next_write_flags (n, flags);
  if (bdev_next_aligned (n, count, offset) == -1)
    return -1;
  nbdkit_next *x = bdev_next_ctx (n);
  if (!x)
    return -1;
  while (count > 0) {
    uint32_t c = count < BDEV_NEXT_MAX_REQUEST ? count : BDEV_NEXT_MAX_REQUEST;
    int err = 0;
    if (x->pwrite (x, buf, c, offset, f, &err) == -1)
      return bdev_next_fail (err);
    buf = (const char *) buf + c;
    offset += c;
    count -= c;
  }
  return bdev_next_mark_dirty (n, x);
}

static inline int
bdev_next_flush (struct bdev *bd)
{
  struct bdev_next *n = BDEV_NEXT_ (bd);
  nbdkit_next *x = bdev_next_ctx (n);
  int err = 0;
  if (!x)
    return -1;
  if (!n->can_flush)
    return 0;                   /* the plugin has nothing to flush */
  if (n->multi_conn || n->fixed)
    return x->flush (x, 0, &err) == -1 ? bdev_next_fail (err) : 0;
  /* Without multi-conn: every context that wrote, this one included. */
  if (x->flush (x, 0, &err) == -1)
    return bdev_next_fail (err);
  pthread_mutex_lock (&bdev_next_dirty_lock);
  for (struct bdev_next_dirty **pp = &bdev_next_dirty_list; *pp; ) {
    struct bdev_next_dirty *d = *pp;
    if (d->ctx != x && d->ctx->flush (d->ctx, 0, &err) == -1) {
      pthread_mutex_unlock (&bdev_next_dirty_lock);
      return bdev_next_fail (err);
    }
    *pp = d->next_dirty;
    free (d);
  }
  if (n->flush_lost) {
    n->flush_lost = false;
    pthread_mutex_unlock (&bdev_next_dirty_lock);
    return bdev_next_fail (EIO);
  }
  pthread_mutex_unlock (&bdev_next_dirty_lock);
  return 0;
}

/* The connection of NEXT is ending: flush what was written through it (if
 * another connection's flush may rely on it) and forget it.  If that
 * flush fails, the error is logged and the next bdev_next_flush of the
 * bdevs that wrote through it (the export's engine) fails.
 * Callers in .finalize return 0 all the same: nbdkit 1.32 does not
 * finalize the layers below a filter whose .finalize fails (nbdkit's
 * multi-conn filter then aborts in its .close), and the client, which
 * has gone, would not see the error anyway.
 */
static inline int
bdev_next_connection_done (nbdkit_next *next)
{
  int err = 0, r = 0;
  bool flushed = false;
  pthread_mutex_lock (&bdev_next_dirty_lock);
  for (struct bdev_next_dirty **pp = &bdev_next_dirty_list; *pp; ) {
    struct bdev_next_dirty *d = *pp;
    if (d->ctx != next) {
      pp = &d->next_dirty;
      continue;
    }
    if (!flushed) {
      flushed = true;
      if (next->can_flush (next) == 1 && next->flush (next, 0, &err) == -1) {
        kvm_error ("flushing the layer below as a connection ends: %s; "
                   "writes made through it may not be durable (the next "
                   "flush of the export fails)", strerror (err ? err : EIO));
        r = bdev_next_fail (err);
      }
    }
    if (r == -1 && d->n)
      d->n->flush_lost = true;
    *pp = d->next_dirty;
    free (d);
  }
  pthread_mutex_unlock (&bdev_next_dirty_lock);
  return r;
}

static inline int
bdev_next_trim (struct bdev *bd, uint64_t count, uint64_t offset,
                uint32_t flags)
{
  struct bdev_next *n = BDEV_NEXT_ (bd);
  uint32_t f = bdev_next_write_flags (n, flags);
  nbdkit_next *x;
  if (!n->can_trim || !bdev_next_fits (n, count, offset))
    return 0;                   /* trim is advisory */
  if (!(x = bdev_next_ctx (n)))
    return -1;
  while (count > 0) {
    uint32_t c = count < BDEV_NEXT_MAX_REQUEST ? count : BDEV_NEXT_MAX_REQUEST;
    int err = 0;
    if (x->trim (x, c, offset, f, &err) == -1)
      return bdev_next_fail (err);
    offset += c;
    count -= c;
  }
  return bdev_next_mark_dirty (n, x);
}

static inline int
bdev_next_zero (struct bdev *bd, uint64_t count, uint64_t offset,
                uint32_t flags)
{
  struct bdev_next *n = BDEV_NEXT_ (bd);
  uint32_t f = bdev_next_write_flags (n, flags);
  if (bdev_next_aligned (n, count, offset) == -1)
    return -1;
  if (flags & BDEV_FAST_ZERO) {
    if (!n->can_fast_zero) {
      errno = ENOTSUP;
      return -1;
    }
    f |= NBDKIT_FLAG_FAST_ZERO;
  }
  if ((flags & BDEV_MAY_TRIM) && n->can_trim)
    f |= NBDKIT_FLAG_MAY_TRIM;
  if (!n->can_zero)             /* NBDKIT_ZERO_NONE below */
    return bdev_zero_by_writing (bd, count, offset, flags);
  nbdkit_next *x = bdev_next_ctx (n);
  if (!x)
    return -1;
  while (count > 0) {
    uint32_t c = count < BDEV_NEXT_MAX_REQUEST ? count : BDEV_NEXT_MAX_REQUEST;
    int err = 0;
    if (x->zero (x, c, offset, f, &err) == -1)
      return bdev_next_fail (err);
    offset += c;
    count -= c;
  }
  return bdev_next_mark_dirty (n, x);
}

/* The layer below answers with an nbdkit_extents list; hand each extent
 * to FN, contiguous from OFFSET, and ask again until COUNT is covered
 * (plugins may answer with fewer extents than asked).
 */
static inline int
bdev_next_extents (struct bdev *bd, uint64_t count, uint64_t offset,
                   uint32_t flags, bdev_extent_fn fn, void *opaque)
{
  struct bdev_next *n = BDEV_NEXT_ (bd);
  uint64_t end = offset + count;          /* checked by bdev_extents */
  nbdkit_next *x;

  if (!n->can_extents)
    return fn (opaque, offset, count, BDEV_EXTENT_DATA);
  if (!(x = bdev_next_ctx (n)))
    return -1;
  while (offset < end) {
    uint32_t c = end - offset < BDEV_NEXT_MAX_REQUEST ? end - offset
                                                      : BDEV_NEXT_MAX_REQUEST;
    struct nbdkit_extents *ex = nbdkit_extents_new (offset, offset + c);
    int err = 0;
    if (!ex)
      return bdev_next_fail (errno);
    if (x->extents (x, c, offset,
                    (flags & BDEV_REQ_ONE) ? NBDKIT_FLAG_REQ_ONE : 0,
                    ex, &err) == -1) {
      nbdkit_extents_free (ex);
      return bdev_next_fail (err);
    }
    uint64_t before = offset;
    size_t k = nbdkit_extents_count (ex);
    for (size_t i = 0; i < k && offset < end; i++) {
      struct nbdkit_extent e = nbdkit_get_extent (ex, i);
      uint64_t e_end = e.offset + e.length;
      if (e.offset > offset || e_end <= offset)
        break;                  /* not contiguous: ask again from here */
      if (e_end > end)
        e_end = end;
      if (fn (opaque, offset, e_end - offset, e.type) == -1) {
        nbdkit_extents_free (ex);
        return -1;
      }
      offset = e_end;
    }
    nbdkit_extents_free (ex);
    if (offset == before)       /* nothing usable: call the rest data */
      return fn (opaque, offset, end - offset, BDEV_EXTENT_DATA);
    if (flags & BDEV_REQ_ONE)
      break;
  }
  return 0;
}

static const struct bdev_ops bdev_next_ops = {
  .format = "nbdkit-next",
  .close = bdev_next_close,
  .pread = bdev_next_pread,
  .pwrite = bdev_next_pwrite,
  .flush = bdev_next_flush,
  .trim = bdev_next_trim,
  .zero = bdev_next_zero,
  .extents = bdev_next_extents,
};

/* A bdev over the layer below, its size and capabilities read through
 * NEXT (prepared).  FIXED: the bdev uses and owns NEXT (also on failure);
 * otherwise it is routed to the current connection's context.  READONLY
 * forces a read-only bdev even if the layer below is writable.  The bdev
 * never grows: a write past its end fails with ENOSPC.
 */
static inline struct bdev *
bdev_next_new (nbdkit_next *next, bool fixed, const char *name,
               bool readonly)
{
  struct bdev_next *n = bdev_alloc (sizeof *n, &bdev_next_ops, name);
  int64_t size;
  int w;

  if (!n) {
    if (fixed) {
      next->finalize (next);
      nbdkit_next_context_close (next);
    }
    return NULL;
  }
  n->fixed = fixed ? next : NULL;
  size = next->get_size (next);
  w = next->can_write (next);
  if (size == -1 || w == -1) {
    kvm_error ("%s: cannot get the size or writability of the layer below",
               name);
    bdev_next_close (&n->bd);
    errno = EIO;
    return NULL;
  }
  n->bd.size = size;
  n->bd.readonly = readonly || !w;
  n->can_flush = next->can_flush (next) == 1;
  n->can_trim = next->can_trim (next) == 1;
  n->can_zero = next->can_zero (next) > NBDKIT_ZERO_NONE;
  n->can_fast_zero = next->can_fast_zero (next) == 1;
  n->can_extents = next->can_extents (next) == 1;
  n->multi_conn = next->can_multi_conn (next) == 1;
  n->can_fua = next->can_fua (next);
  if (n->can_fua == -1)
    n->can_fua = NBDKIT_FUA_NONE;
  if (n->can_trim)
    n->bd.caps |= BDEV_CAN_TRIM;
  if (next->can_zero (next) == NBDKIT_ZERO_NATIVE)
    n->bd.caps |= BDEV_CAN_ZERO;
  if (n->can_fast_zero)
    n->bd.caps |= BDEV_CAN_FAST_ZERO;
  if (n->can_extents)
    n->bd.caps |= BDEV_CAN_EXTENTS;
  if (n->can_fua != NBDKIT_FUA_NONE)
    n->bd.caps |= BDEV_CAN_FUA;
  if (n->multi_conn)
    n->bd.caps |= BDEV_CAN_MULTI_CONN;
  uint32_t minimum, preferred, maximum;
  if (next->block_size (next, &minimum, &preferred, &maximum) == 0) {
    if (preferred > 1)
      n->bd.block_size = preferred;
    n->minimum = minimum;
  }
  n->bd.growable = false;
  return &n->bd;
}

/* nbdkit checks every data call against the answers *that context* gave
 * to can_write, can_flush, ... (it asks once and caches).  A routed bdev
 * is used through contexts it did not ask: each connection's context must
 * be asked once, in .prepare, before the engine uses it.
 */
static inline int
bdev_next_prime (nbdkit_next *next)
{
  if (next->get_size (next) == -1 || next->can_write (next) == -1 ||
      next->can_flush (next) == -1 || next->can_trim (next) == -1 ||
      next->can_zero (next) == -1 || next->can_fast_zero (next) == -1 ||
      next->can_extents (next) == -1 || next->can_fua (next) == -1 ||
      next->can_multi_conn (next) == -1)
    return -1;
  return 0;
}

/* The layer below as a bdev routed to whichever connection is being
 * served; NEXT is the current one (for size and capabilities).  Every
 * context it is used through must have been through bdev_next_prime.
 */
static inline struct bdev *
bdev_next_routed (nbdkit_next *next, const char *name, bool readonly)
{
  return bdev_next_new (next, false, name, readonly);
}

/* A bdev over one fixed context NEXT (prepared), which it owns. */
static inline struct bdev *
bdev_next_wrap (nbdkit_next *next, const char *name, bool readonly)
{
  return bdev_next_new (next, true, name, readonly);
}

/* ---- 2. Serving a bdev from a filter -------------------------------- */

static inline int
bdev_nbdkit_filter_result (int r, int *err)
{
  bdev_next_leave ();
  if (r == -1)
    *err = errno ? errno : EIO;
  return r;
}

static inline int
bdev_nbdkit_filter_add_extent (void *extents, uint64_t offset,
                               uint64_t length, uint32_t type)
{
  return nbdkit_add_extent (extents, offset, length, type);
}

#define BDEV_NBDKIT_FH_(handle) ((struct bdev_nbdkit_handle *) (handle))

static inline int64_t
bdev_nbdkit_fcb_get_size (nbdkit_next *next, void *handle)
{
  (void) next;
  return BDEV_NBDKIT_FH_ (handle)->bd->size;
}

static inline int
bdev_nbdkit_fcb_block_size (nbdkit_next *next, void *handle,
                            uint32_t *minimum, uint32_t *preferred,
                            uint32_t *maximum)
{
  (void) next;
  return bdev_nbdkit_block_size_of (BDEV_NBDKIT_FH_ (handle), minimum,
                                    preferred, maximum);
}

static inline int
bdev_nbdkit_fcb_can_write (nbdkit_next *next, void *handle)
{
  (void) next;
  return bdev_nbdkit_writable (BDEV_NBDKIT_FH_ (handle));
}

static inline int
bdev_nbdkit_fcb_true (nbdkit_next *next, void *handle)
{
  (void) next; (void) handle;
  return 1;
}

static inline int
bdev_nbdkit_fcb_false (nbdkit_next *next, void *handle)
{
  (void) next; (void) handle;
  return 0;
}

static inline int
bdev_nbdkit_fcb_can_trim (nbdkit_next *next, void *handle)
{
  (void) next;
  return bdev_nbdkit_can_trim_of (BDEV_NBDKIT_FH_ (handle));
}

static inline int
bdev_nbdkit_fcb_can_zero (nbdkit_next *next, void *handle)
{
  (void) next; (void) handle;
  return NBDKIT_ZERO_NATIVE;    /* bdev_zero falls back to writing */
}

static inline int
bdev_nbdkit_fcb_can_fast_zero (nbdkit_next *next, void *handle)
{
  (void) next;
  return bdev_nbdkit_can_fast_zero_of (BDEV_NBDKIT_FH_ (handle));
}

static inline int
bdev_nbdkit_fcb_can_fua (nbdkit_next *next, void *handle)
{
  (void) next; (void) handle;
  return NBDKIT_FUA_NATIVE;     /* bdev_pwrite flushes when it must */
}

static inline int
bdev_nbdkit_fcb_can_multi_conn (nbdkit_next *next, void *handle)
{
  (void) next;
  return bdev_nbdkit_can_multi_conn_of (BDEV_NBDKIT_FH_ (handle));
}

static inline int
bdev_nbdkit_fcb_can_cache (nbdkit_next *next, void *handle)
{
  (void) next; (void) handle;
  return NBDKIT_CACHE_NONE;
}

static inline int
bdev_nbdkit_fcb_pread (nbdkit_next *next, void *handle, void *buf,
                       uint32_t count, uint64_t offset, uint32_t flags,
                       int *err)
{
  (void) flags;
  bdev_next_enter (next);
  return bdev_nbdkit_filter_result
    (bdev_pread (BDEV_NBDKIT_FH_ (handle)->bd, buf, count, offset), err);
}

static inline int
bdev_nbdkit_fcb_pwrite (nbdkit_next *next, void *handle, const void *buf,
                        uint32_t count, uint64_t offset, uint32_t flags,
                        int *err)
{
  bdev_next_enter (next);
  return bdev_nbdkit_filter_result
    (bdev_pwrite (BDEV_NBDKIT_FH_ (handle)->bd, buf, count, offset,
                  bdev_flags_of_nbdkit (flags)), err);
}

static inline int
bdev_nbdkit_fcb_flush (nbdkit_next *next, void *handle, uint32_t flags,
                       int *err)
{
  (void) flags;
  bdev_next_enter (next);
  return bdev_nbdkit_filter_result
    (bdev_flush (BDEV_NBDKIT_FH_ (handle)->bd), err);
}

static inline int
bdev_nbdkit_fcb_trim (nbdkit_next *next, void *handle, uint32_t count,
                      uint64_t offset, uint32_t flags, int *err)
{
  bdev_next_enter (next);
  return bdev_nbdkit_filter_result
    (bdev_trim (BDEV_NBDKIT_FH_ (handle)->bd, count, offset,
                bdev_flags_of_nbdkit (flags)), err);
}

static inline int
bdev_nbdkit_fcb_zero (nbdkit_next *next, void *handle, uint32_t count,
                      uint64_t offset, uint32_t flags, int *err)
{
  bdev_next_enter (next);
  return bdev_nbdkit_filter_result
    (bdev_zero (BDEV_NBDKIT_FH_ (handle)->bd, count, offset,
                bdev_flags_of_nbdkit (flags)), err);
}

static inline int
bdev_nbdkit_fcb_extents (nbdkit_next *next, void *handle, uint32_t count,
                         uint64_t offset, uint32_t flags,
                         struct nbdkit_extents *extents, int *err)
{
  bdev_next_enter (next);
  return bdev_nbdkit_filter_result
    (bdev_extents (BDEV_NBDKIT_FH_ (handle)->bd, count, offset,
                   bdev_flags_of_nbdkit (flags),
                   bdev_nbdkit_filter_add_extent, extents), err);
}

/* Designated initialisers for struct nbdkit_filter: every size,
 * capability and data callback, answered by the handle's bdev.
 */
#define BDEV_NBDKIT_FILTER_CALLBACKS                      \
  .get_size       = bdev_nbdkit_fcb_get_size,             \
  .block_size     = bdev_nbdkit_fcb_block_size,           \
  .can_write      = bdev_nbdkit_fcb_can_write,            \
  .can_flush      = bdev_nbdkit_fcb_true,                 \
  .is_rotational  = bdev_nbdkit_fcb_false,                \
  .can_trim       = bdev_nbdkit_fcb_can_trim,             \
  .can_zero       = bdev_nbdkit_fcb_can_zero,             \
  .can_fast_zero  = bdev_nbdkit_fcb_can_fast_zero,        \
  .can_extents    = bdev_nbdkit_fcb_true,                 \
  .can_fua        = bdev_nbdkit_fcb_can_fua,              \
  .can_multi_conn = bdev_nbdkit_fcb_can_multi_conn,       \
  .can_cache      = bdev_nbdkit_fcb_can_cache,            \
  .pread          = bdev_nbdkit_fcb_pread,                \
  .pwrite         = bdev_nbdkit_fcb_pwrite,               \
  .flush          = bdev_nbdkit_fcb_flush,                \
  .trim           = bdev_nbdkit_fcb_trim,                 \
  .zero           = bdev_nbdkit_fcb_zero,                 \
  .extents        = bdev_nbdkit_fcb_extents

#endif
