/* SPDX-License-Identifier: BSD-3-Clause */
/* qcow2 engine. Mapping: L1/L2 lookup (with the lock-free fast path for
 * reads), cluster classification and the walk over a guest range.
 */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "qcow2.h"
#include "qcow2_int.h"
#include "util/checked.h"
#include "util/endian.h"
#include "util/log.h"
#include "util/lru.h"

/* Load the L2 table for L1 index I of table L1 (size N).  *T is NULL when
 * the L1 entry is empty.  *PINNED tells whether the caller must lru_put.
 */
static int
l2_acquire (struct qcow2 *q, const uint64_t *l1, uint64_t n, uint64_t i,
            uint8_t **t, bool *pinned)
{
  *t = NULL;
  *pinned = false;
  if (i >= n)
    return 0;
  uint64_t off = l1[i] & L1E_OFFSET_MASK;
  if (off == 0)
    return 0;
  void *p = __atomic_load_n (&q->l2ptr[i], __ATOMIC_ACQUIRE);
  if (p) {
    *t = p;
    return 0;
  }
  if (q2_check_table_offset (q, off, "L2 table") == -1)
    return -1;
  *t = q2_table_get (q, q->l2c, off, "L2 table", false);
  if (!*t)
    return -1;
  *pinned = true;
  if (__atomic_add_fetch (&q->l2ptr_count, 1, __ATOMIC_RELAXED)
      <= q->l2ptr_max) {
    void *expected = NULL;
    if (__atomic_compare_exchange_n (&q->l2ptr[i], &expected, *t, false,
                                     __ATOMIC_RELEASE, __ATOMIC_RELAXED)) {
      *pinned = false;          /* the pin now belongs to l2ptr */
      return 0;
    }
  }
  __atomic_sub_fetch (&q->l2ptr_count, 1, __ATOMIC_RELAXED);
  return 0;
}

int
q2_l2_lookup_table (struct qcow2 *q, const uint64_t *l1, uint64_t n,
                    uint64_t i, uint8_t **t)
{
  bool pinned;
  if (l2_acquire (q, l1, n, i, t, &pinned) == -1)
    return -1;
  if (*t && !pinned) {          /* give the caller its own pin */
    struct load_ctx ctx = { q, "L2 table", false };
    *t = lru_get (q->l2c, tmeta_of (q, *t)->key, q2_table_load, &ctx);
    if (!*t)
      return -1;
  }
  return 0;
}

/* L1 entry I changes: drop the fast-path pointer.  Exclusive lock held. */
void
q2_l2ptr_drop (struct qcow2 *q, uint64_t i)
{
  if (q->l2ptr && i < q->l1_size && q->l2ptr[i]) {
    lru_put (q->l2c, q->l2ptr[i]);
    q->l2ptr[i] = NULL;
    q->l2ptr_count--;
  }
}

/* Classify unit (subcluster SC, or the whole cluster) of entry E. */
int
q2_classify (struct qcow2 *q, uint64_t e, uint64_t bm, unsigned sc,
             enum utype *type, uint64_t *host)
{
  *host = 0;
  if (e & OFLAG_COMPRESSED) {
    if (q->external_data) {
      kvm_fail (EIO, "%s: corrupt image: compressed cluster with an "
                "external data file", q->path);
      return -1;
    }
    *type = U_COMPRESSED;
    return 0;
  }
  uint64_t off = e & L2E_OFFSET_MASK;
  if (q->ext_l2) {
    bool alloc = bm & (1ull << sc), zero = bm & (1ull << (32 + sc));
    if (alloc && zero) {
      kvm_fail (EIO, "%s: corrupt image: subcluster both allocated and zero",
                q->path);
      return -1;
    }
    if (zero) { *type = U_ZERO; return 0; }
    if (!alloc) { *type = U_UNALLOC; return 0; }
    if (off == 0 && !q->external_data) {
      kvm_fail (EIO, "%s: corrupt image: allocated subcluster without "
                "host cluster", q->path);
      return -1;
    }
    *type = U_DATA;
    *host = off + ((uint64_t) sc << q->sc_bits);
  }
  else {
    if ((e & OFLAG_ZERO) && q->version >= 3) { *type = U_ZERO; return 0; }
    if (off == 0 && !(q->external_data && (e & OFLAG_COPIED))) {
      *type = U_UNALLOC;
      return 0;
    }
    *type = U_DATA;
    *host = off;
  }
  if (off & (q->cluster_size - 1)) {
    kvm_fail (EIO, "%s: corrupt image: data cluster offset %#" PRIx64
              " is not cluster aligned", q->path, off);
    return -1;
  }
  return 0;
}

/* Walk [offset, offset+count) in units of equal type, calling FN for
 * maximal runs (data runs contiguous on the host).  Caller holds the lock.
 */

int
q2_walk (struct qcow2 *q, const uint64_t *l1, uint64_t l1n, uint64_t offset,
         uint64_t count, run_fn fn, void *opaque)
{
  uint64_t end = offset + count;
  uint64_t unit_bits = q->ext_l2 ? q->sc_bits : q->cluster_bits;
  uint8_t *table = NULL;
  bool pinned = false;
  uint64_t table_idx = UINT64_MAX;
  bool have_run = false;
  enum utype rtype = U_DATA;
  uint64_t rguest = 0, rhost = 0, rlen = 0, rentry = 0;
  int r = 0;

  while (offset < end) {
    uint64_t cl = offset >> q->cluster_bits;
    uint64_t i1 = cl >> q->l2_bits;
    uint64_t i2 = cl & ((1ull << q->l2_bits) - 1);
    if (i1 != table_idx) {
      if (table && pinned)
        lru_put (q->l2c, table);
      table = NULL;
      table_idx = i1;
      if (l2_acquire (q, l1, l1n, i1, &table, &pinned) == -1) {
        r = -1;
        goto out;
      }
    }
    enum utype type;
    uint64_t host, e = 0, len, next;
    if (!table) {
      /* Whole L2 range unallocated. */
      next = (i1 + 1) << (q->l2_bits + q->cluster_bits);
      type = U_UNALLOC;
      host = 0;
    }
    else {
      e = l2_entry (q, table, i2);
      uint64_t bm = l2_bitmap (q, table, i2);
      unsigned sc = (offset >> unit_bits) & ((1u << (q->cluster_bits - unit_bits)) - 1);
      if (q2_classify (q, e, bm, sc, &type, &host) == -1) {
        r = -1;
        goto out;
      }
      if (type == U_COMPRESSED)
        next = (cl + 1) << q->cluster_bits;
      else
        next = ((offset >> unit_bits) + 1) << unit_bits;
      host += offset & ((1ull << unit_bits) - 1);
    }
    if (next > end || next == 0)
      next = end;
    len = next - offset;
    if (have_run && type == rtype && type != U_COMPRESSED &&
        (type != U_DATA || rhost + rlen == host))
      rlen += len;
    else {
      if (have_run && (r = fn (q, opaque, rtype, rguest, rhost, rlen,
                               rentry)) != 0)
        goto out;               /* -1: error, 1: stop early */
      have_run = true;
      rtype = type; rguest = offset; rhost = host; rlen = len; rentry = e;
    }
    offset = next;
  }
  if (have_run)
    r = fn (q, opaque, rtype, rguest, rhost, rlen, rentry);
 out:
  if (table && pinned)
    lru_put (q->l2c, table);
  return r < 0 ? -1 : 0;
}
