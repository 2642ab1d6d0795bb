/* SPDX-License-Identifier: BSD-3-Clause */
/* A bounded, thread-safe LRU cache of fixed-size buffers keyed by a 64-bit
 * number (e.g. the file offset of a metadata table).
 *
 * lru_get() returns a pinned entry, loading it with the caller's function on
 * a miss; concurrent callers missing the same key wait for one load.  Pinned
 * entries are never evicted; lru_put() unpins.  When every slot is pinned
 * the cache grows past its capacity rather than deadlock, and shrinks back
 * as entries are released.
 */
#ifndef KVM_LRU_H
#define KVM_LRU_H

#include <stddef.h>
#include <stdint.h>

struct lru;

/* Fill BUF (entry_size bytes) for KEY; 0 or -1 with errno. */
typedef int (*lru_load_fn) (void *opaque, uint64_t key, void *buf);

struct lru *lru_new (size_t entry_size, size_t capacity);
void lru_free (struct lru *c);

/* Returns the pinned buffer, or NULL with errno on load/alloc failure. */
void *lru_get (struct lru *c, uint64_t key, lru_load_fn load, void *opaque);

/* Unpin a buffer returned by lru_get. */
void lru_put (struct lru *c, void *buf);

/* Drop KEY if cached and unpinned (its content became stale). */
void lru_invalidate (struct lru *c, uint64_t key);

/* Hit/miss counters for debug output. */
void lru_stats (struct lru *c, uint64_t *hits, uint64_t *misses);

#endif
