/* SPDX-License-Identifier: BSD-3-Clause */
/* Thin provisioning engine (format and crash-safety rules in thin.h).
 *
 * Concurrency:
 * - map[] (virtual chunk -> physical chunk + 1) is read with atomic loads
 *   and no lock: reads and rewrites of mapped chunks never take the mutex.
 * - Allocation, publishing, releasing and commits take the mutex.  A
 *   virtual chunk being allocated holds THIN_BUSY in map[] (readers see
 *   it as a hole, writers and trims of it wait on the condition).
 * - I/O to a mapped chunk runs inside an "epoch" (two counters, RCU-ish):
 *   a released chunk is reused only after the commit that frees it has
 *   flipped the epoch and waited for every I/O that might still use the
 *   old mapping.
 */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "thin_int.h"
#include "util/bitmap.h"
#include "util/checked.h"
#include "util/endian.h"
#include "util/log.h"
#include "util/grow.h"

/* ---- usage --------------------------------------------------------- */

static void
stats_locked (struct thin *t, struct thin_stats *st)
{
  st->virtual_size = t->g.vsize;
  st->chunk_size = t->g.chunk;
  st->pool_chunks = t->pool_chunks;
  st->used_chunks = t->n_alloc;
  st->mapped_chunks = t->n_mapped;
  st->allocs = t->allocs;
  st->releases = t->releases;
  st->commits = t->commits;
  st->enospc = t->enospc;
  st->seq = t->seq;
}

void
thin_get_stats (struct bdev *bd, struct thin_stats *st)
{
  struct thin *t = TH (bd);
  pthread_mutex_lock (&t->lock);
  stats_locked (t, st);
  pthread_mutex_unlock (&t->lock);
}

static void
human (uint64_t v, char *buf, size_t len)
{
  static const char *u[] = { "B", "KiB", "MiB", "GiB", "TiB", "PiB" };
  unsigned i = 0;
  double d = v;
  while (d >= 1024 && i < 5) {
    d /= 1024;
    i++;
  }
  if (i == 0)
    snprintf (buf, len, "%" PRIu64 " B", v);
  else
    snprintf (buf, len, "%.1f %s", d, u[i]);
}

void
thin_format_usage (const struct thin_stats *st, char *buf, size_t len)
{
  char vs[32], us[32], fs[32], ps[32], cs[32];
  uint64_t free_chunks = st->pool_chunks > st->used_chunks
    ? st->pool_chunks - st->used_chunks : 0;
  unsigned pct = st->pool_chunks
    ? (unsigned) (st->used_chunks * 100 / st->pool_chunks) : 100;
  human (st->virtual_size, vs, sizeof vs);
  human (st->used_chunks * st->chunk_size, us, sizeof us);
  human (free_chunks * st->chunk_size, fs, sizeof fs);
  human (st->pool_chunks * st->chunk_size, ps, sizeof ps);
  human (st->chunk_size, cs, sizeof cs);
  snprintf (buf, len, "thin: virtual %s, pool %s, used %s (%u%%), free %s, "
            "chunk %s", vs, ps, us, pct, fs, cs);
}

/* Called with the lock held after usage changed; returns true if the
 * watermark callback must run (after unlocking).
 */
static bool
watermark_check_locked (struct thin *t)
{
  if (!t->warn)
    return false;
  bool over = t->n_alloc * 100 >= (uint64_t) t->warn * t->pool_chunks;
  if (over && !t->al->above) {
    t->al->above = true;
    return t->watermark != NULL;
  }
  /* Re-armed only once usage is 2% of the pool (at least a chunk) below
   * the mark: a client that trims and writes one chunk at the mark must
   * not run the hook at every turn.
   */
  uint64_t margin = t->pool_chunks / 50 ? t->pool_chunks / 50 : 1;
  if ((t->n_alloc + margin) * 100 < (uint64_t) t->warn * t->pool_chunks)
    t->al->above = false;
  return false;
}

/* ---- epochs -------------------------------------------------------- */

static unsigned
epoch_enter (struct thin *t)
{
  for (;;) {
    uint64_t e = atomic_load (&t->epoch);
    atomic_fetch_add (&t->inflight[e & 1], 1);
    if (atomic_load (&t->epoch) == e)
      return e & 1;
    atomic_fetch_sub (&t->inflight[e & 1], 1);
  }
}

static void
epoch_leave (struct thin *t, unsigned e)
{
  atomic_fetch_sub (&t->inflight[e], 1);
}

/* Wait until no I/O that may have loaded a mapping before now is left. */
static void
epoch_sync (struct thin *t)
{
  uint64_t e = atomic_fetch_add (&t->epoch, 1);
  while (atomic_load (&t->inflight[e & 1]) != 0)
    sched_yield ();
}

/* ---- allocation ---------------------------------------------------- */

/* The transaction a change made now belongs to: seq + 1, or seq + 2
 * while the header of seq + 1 is pending (its body is already written:
 * a change now must reach that slot again at seq + 3).  Lock held.
 */
static uint64_t
change_txn (const struct thin *t)
{
  return t->seq + (atomic_load (&t->hdr_pending) ? 2 : 1);
}

static void
mark_table (struct thin *t, uint64_t v)
{
  t->tgen[v / TPB] = change_txn (t);
  t->dirty = true;
}

static void
mark_bitmap (struct thin *t, uint64_t p)
{
  t->bgen[p / BPB] = change_txn (t);
  t->dirty = true;
}

/* Grow to NEW_SIZE bytes of pool; lock held. */
static void
grow_locked (struct thin *t, uint64_t new_size)
{
  uint64_t n = thin_pool_chunks_of (&t->g, new_size);
  if (new_size > t->pool->size)
    t->pool->size = new_size;
  if (n > t->pool_chunks) {
    kvm_debug ("thin: pool grew to %" PRIu64 " bytes: %" PRIu64
               " chunks (was %" PRIu64 ")", new_size, n,
               (uint64_t) t->pool_chunks);
    t->pool_chunks = n;
    watermark_check_locked (t);         /* re-arm if now below */
  }
}

int
thin_grow (struct bdev *bd, uint64_t new_size)
{
  struct thin *t = TH (bd);
  pthread_mutex_lock (&t->lock);
  grow_locked (t, new_size);
  pthread_mutex_unlock (&t->lock);
  return 0;
}

static int commit_locked (struct thin *t);

static int64_t
take_free_locked (struct thin *t)
{
  uint64_t p = bitmap_next (&t->alloc, t->free_hint, false);
  if (p >= t->pool_chunks) {
    t->free_hint = t->pool_chunks;
    return -1;
  }
  t->free_hint = p + 1;
  bitmap_set (&t->alloc, p, true);
  t->n_alloc++;
  t->allocs++;
  t->al->full_logged = false;
  return p;
}

/* A free physical chunk, marked allocated; -1 if the pool is full, -2 on
 * another error (reported).  Lock held.  When full, chunks freed since
 * the last commit are made reusable by a commit, and the pool's size is
 * asked again (it may have grown).
 */
static int64_t
alloc_locked (struct thin *t)
{
  int64_t p = take_free_locked (t);
  if (p >= 0)
    return p;
  if (t->npend) {
    if (commit_locked (t) == -1)
      return -2;
    if ((p = take_free_locked (t)) >= 0)
      return p;
  }
  if (t->pool_size_fn) {
    int64_t s = t->pool_size_fn (t->opaque);
    if (s > 0)
      grow_locked (t, s);
    p = take_free_locked (t);
  }
  return p;
}

static void
unalloc_locked (struct thin *t, uint64_t p)
{
  bitmap_set (&t->alloc, p, false);
  t->n_alloc--;
  if (p < t->free_hint)
    t->free_hint = p;
}

/* Release virtual chunk V if it is mapped; nothing if it is unmapped or
 * being allocated.  The physical chunk stays allocated until the next
 * commit.  Lock held.
 */
static int
release_mapped_locked (struct thin *t, uint64_t v)
{
  uint32_t e = atomic_load (&t->map[v]);
  if (e == 0 || e == THIN_BUSY)
    return 0;
  if (GROW_FOR (t->pend, t->npend, t->cappend, 64) == -1) {
    kvm_error ("thin: out of memory");
    return -1;
  }
  uint64_t p = (uint64_t) e - 1;
  atomic_store (&t->map[v], 0);
  bitmap_set (&t->mapped, p, false);
  t->n_mapped--;
  t->pend[t->npend++] = p;
  t->releases++;
  mark_table (t, v);
  mark_bitmap (t, p);
  return 0;
}

/* Release virtual chunk V, waiting while it is being allocated.  Only
 * for callers that hold no reservation (THIN_BUSY) themselves: one that
 * does could wait for a writer that waits for it.  Lock held.
 */
static int
release_locked (struct thin *t, uint64_t v)
{
  while (atomic_load (&t->map[v]) == THIN_BUSY)
    pthread_cond_wait (&t->cond, &t->lock);
  return release_mapped_locked (t, v);
}

/* ---- commit -------------------------------------------------------- */

/* Write (again) the header of transaction seq + 1, as recorded when its
 * body was written, and flush it.  Lock held.
 */
static int
write_header_locked (struct thin *t)
{
  uint64_t T = t->seq + 1;
  uint8_t blk[TBLK];
  thin_header_encode (blk, &t->g, T, t->hdr_used, t->hdr_pool_chunks);
  if (bdev_pwrite (t->meta, blk, TBLK, (uint64_t) (T & 1) * TBLK, 0) == -1)
    return -1;
  return bdev_flush (t->meta);
}

/* Transaction seq + 1 is on disk.  The chunks freed before it may be
 * reused now, once no I/O still uses their old mapping; they are trimmed
 * below first.  Chunks freed since (while its header was pending) wait
 * for the next commit.  Lock held.
 */
static void
committed_locked (struct thin *t)
{
  t->seq++;
  t->commits++;
  size_t n = t->hdr_npend;
  if (n == 0)
    return;
  epoch_sync (t);
  for (size_t i = 0; i < n; i++) {
    uint64_t p = t->pend[i];
    if (t->pool->caps & BDEV_CAN_TRIM)
      bdev_trim (t->pool, t->g.chunk, t->g.data_off + p * t->g.chunk, 0);
    unalloc_locked (t, p);
  }
  memmove (t->pend, t->pend + n, (t->npend - n) * sizeof *t->pend);
  t->npend -= n;
  watermark_check_locked (t);           /* only re-arms here */
}

/* If a commit's header is pending, write it again; -1 (errno set) if
 * that fails again.  Lock held.
 */
static int
finish_header_locked (struct thin *t)
{
  if (!atomic_load (&t->hdr_pending))
    return 0;
  if (write_header_locked (t) == -1)
    return -1;
  atomic_store (&t->hdr_pending, false);
  kvm_error ("thin: %s: the metadata header is written; writes resume",
             t->meta->name);
  committed_locked (t);
  return 0;
}

/* The same, for callers that do not hold the lock. */
static int
finish_header (struct thin *t)
{
  if (!atomic_load (&t->hdr_pending))
    return 0;
  pthread_mutex_lock (&t->lock);
  int r = finish_header_locked (t);
  pthread_mutex_unlock (&t->lock);
  return r;
}

static int
commit_locked (struct thin *t)
{
  const struct geom *g = &t->g;
  uint8_t blk[TBLK];

  if (finish_header_locked (t) == -1)
    return -1;
  const uint64_t T = t->seq + 1;
  const unsigned s = T & 1;
  if (!t->dirty) {
    if (bdev_flush (t->pool) == -1)
      return -1;
    return t->meta != t->pool ? bdev_flush (t->meta) : 0;
  }
  /* 1. Data written into new chunks reaches the disk before the
   * mappings that point to it.
   */
  if (bdev_flush (t->pool) == -1)
    return -1;
  /* 2. The blocks changed since this slot was last written (in this
   * transaction or the previous one) go to the inactive slot.
   */
  for (uint32_t i = 0; i < g->tblocks; i++) {
    if (t->tgen[i] + 1 < T)
      continue;
    memset (blk, 0, sizeof blk);
    for (uint32_t k = 0; k < TPB; k++) {
      uint64_t v = (uint64_t) i * TPB + k;
      if (v >= g->nv)
        break;
      uint32_t e = atomic_load (&t->map[v]);
      store_le32 (blk + 4 * k, e == THIN_BUSY ? 0 : e);
    }
    store_le32 (blk + TBLK - 4, thin_block_crc (i, blk));
    if (bdev_pwrite (t->meta, blk, TBLK,
                     thin_body_off (g, s) + (uint64_t) i * TBLK, 0) == -1)
      return -1;
  }
  for (uint32_t j = 0; j < g->bblocks; j++) {
    if (t->bgen[j] + 1 < T)
      continue;
    memset (blk, 0, sizeof blk);
    for (uint32_t k = 0; k < BPB; k++) {
      uint64_t p = (uint64_t) j * BPB + k;
      if (p >= g->nv)
        break;
      if (bitmap_get (&t->mapped, p))
        blk[k >> 3] |= 1u << (k & 7);
    }
    store_le32 (blk + TBLK - 4, thin_block_crc (0x80000000u | j, blk));
    if (bdev_pwrite (t->meta, blk, TBLK,
                     thin_body_off (g, s) + ((uint64_t) g->tblocks + j) * TBLK,
                     0) == -1)
      return -1;
  }
  if (bdev_flush (t->meta) == -1)
    return -1;
  /* 3. The header makes the slot current.  Once it has been sent, this
   * slot may be the current one on disk even if the write or the flush
   * failed.  Rewriting either slot's body now could tear the state a
   * crash would find, so instead the same header is written again
   * before anything else changes the metadata.
   */
  t->hdr_used = t->n_mapped;
  t->hdr_pool_chunks = t->pool_chunks;
  t->hdr_npend = t->npend;
  t->dirty = false;             /* later changes belong to T + 1 */
  if (write_header_locked (t) == -1) {
    int err = errno;
    atomic_store (&t->hdr_pending, true);
    kvm_error ("thin: %s: writing the metadata header failed: %s; writes "
               "are refused until it is written again (tried at each "
               "write, trim, zero and flush)", t->meta->name, strerror (err));
    errno = err;
    return -1;
  }
  committed_locked (t);
  return 0;
}

static int
thin_flush (struct bdev *bd)
{
  struct thin *t = TH (bd);
  pthread_mutex_lock (&t->lock);
  int r = commit_locked (t);
  pthread_mutex_unlock (&t->lock);
  return r;
}

/* ---- I/O ----------------------------------------------------------- */

static uint64_t
phys_off (const struct thin *t, uint32_t e, uint64_t in)
{
  return t->g.data_off + ((uint64_t) e - 1) * t->g.chunk + in;
}

static int
thin_pread (struct bdev *bd, void *buf, size_t count, uint64_t offset)
{
  struct thin *t = TH (bd);
  char *b = buf;
  while (count > 0) {
    const uint32_t C = t->g.chunk;
    uint64_t v = offset / C, in = offset % C;
    size_t n = C - in < count ? C - in : count;
    unsigned ep = epoch_enter (t);
    uint32_t e = atomic_load_explicit (&t->map[v], memory_order_acquire);
    bool hole = e == 0 || e == THIN_BUSY;
    /* One request for a run of chunks that are physically contiguous
     * (or all holes).
     */
    for (uint32_t prev = e; n < count; ) {
      uint32_t f = atomic_load_explicit (&t->map[v + 1], memory_order_acquire);
      if (hole ? (f != 0 && f != THIN_BUSY)
               : (f == 0 || f == THIN_BUSY || f != prev + 1))
        break;
      v++;
      prev = f;
      n += C < count - n ? C : count - n;
    }
    int r = 0;
    if (hole)
      memset (b, 0, n);
    else
      r = bdev_pread (t->pool, b, n, phys_off (t, e, in));
    epoch_leave (t, ep);
    if (r == -1)
      return -1;
    b += n;
    offset += n;
    count -= n;
  }
  return 0;
}

/* One piece of a write within a virtual chunk. */
struct piece {
  uint64_t v, in;
  size_t n;
  const char *data;
  bool zero;
  int64_t newp;                 /* reserved physical chunk, or -1 */
};

static int
thin_pwrite (struct bdev *bd, const void *buf, size_t count, uint64_t offset,
             uint32_t flags)
{
  struct thin *t = TH (bd);
  if (finish_header (t) == -1)
    return -1;
  const uint32_t C = t->g.chunk;
  size_t np = div_round_up64 ((offset % C) + count, C);
  struct piece stackp[8], *pc = np <= 8 ? stackp : calloc (np, sizeof *pc);
  size_t i, nres = 0;
  bool fire = false, need_lock = false;
  char *tmp = NULL;
  int r = -1;
  (void) flags;                 /* FUA: bdev_pwrite flushes (commits) */

  if (!pc) {
    kvm_error ("thin: out of memory");
    errno = ENOMEM;
    return -1;
  }
  /* Split into chunk pieces. */
  {
    const char *b = buf;
    uint64_t o = offset;
    size_t c = count;
    for (i = 0; i < np; i++) {
      pc[i].v = o / C;
      pc[i].in = o % C;
      pc[i].n = C - pc[i].in < c ? C - pc[i].in : c;
      pc[i].data = b;
      pc[i].zero = thin_is_zero (b, pc[i].n);
      pc[i].newp = -1;
      uint32_t e = atomic_load (&t->map[pc[i].v]);
      if ((e == 0 || e == THIN_BUSY) ? !pc[i].zero
          : (pc[i].zero && pc[i].n == C))
        need_lock = true;
      b += pc[i].n;
      o += pc[i].n;
      c -= pc[i].n;
    }
  }

  /* Phase 1: reserve a chunk for every unmapped non-zero piece, all or
   * nothing, so that ENOSPC leaves everything stored as it was.
   */
  if (need_lock) {
    pthread_mutex_lock (&t->lock);
    for (i = 0; i < np; i++) {
      uint32_t e;
      while ((e = atomic_load (&t->map[pc[i].v])) == THIN_BUSY)
        pthread_cond_wait (&t->cond, &t->lock);
      if (e != 0 || pc[i].zero)
        continue;
      int64_t p = alloc_locked (t);
      if (p < 0) {
        int err = p == -1 ? ENOSPC : errno;
        bool log = err == ENOSPC && !t->al->full_logged;
        uint64_t used = t->n_alloc;
        if (p == -1) {
          t->enospc++;
          t->al->full_logged = true;
        }
        for (size_t k = 0; k < i; k++)
          if (pc[k].newp >= 0) {
            unalloc_locked (t, pc[k].newp);
            t->allocs--;
            atomic_store (&t->map[pc[k].v], 0);
            pc[k].newp = -1;
          }
        pthread_cond_broadcast (&t->cond);
        pthread_mutex_unlock (&t->lock);
        if (log)
          kvm_error ("thin: pool full (%" PRIu64 " chunks of %" PRIu32
                     " bytes in use): writes that need new chunks fail "
                     "with ENOSPC (logged once per episode)", used, C);
        else if (err == ENOSPC)
          kvm_debug ("thin: pool full: ENOSPC");
        errno = err;
        goto out;
      }
      pc[i].newp = p;
      atomic_store (&t->map[pc[i].v], THIN_BUSY);
      nres++;
    }
    fire = watermark_check_locked (t);
    pthread_mutex_unlock (&t->lock);
  }

  /* Phase 2: data.  New chunks are written whole (zero-filled around the
   * piece: the chunk may hold an old owner's data).
   */
  for (i = 0; i < np; i++) {
    struct piece *q = &pc[i];
    if (q->newp >= 0) {
      const char *src = q->data;
      size_t len = C, k;
      if (q->n != C) {
        if (!tmp && !(tmp = malloc (C))) {
          kvm_error ("thin: out of memory");
          errno = ENOMEM;
          goto undo;
        }
        memset (tmp, 0, C);
        memcpy (tmp + q->in, q->data, q->n);
        src = tmp;
      }
      else                      /* merge whole new chunks that follow */
        for (k = i + 1; k < np && pc[k].newp == pc[k - 1].newp + 1 &&
               pc[k].n == C; k++, i++)
          len += C;
      if (bdev_pwrite (t->pool, src, len,
                       phys_off (t, q->newp + 1, 0), 0) == -1)
        goto undo;
      continue;
    }
    if (q->zero && q->n == C)
      continue;                 /* released in phase 3 if mapped */
    unsigned ep = epoch_enter (t);
    uint32_t e = atomic_load_explicit (&t->map[q->v], memory_order_acquire);
    int w = 0;
    if (e != 0 && e != THIN_BUSY) {
      /* Merge following rewrites of physically contiguous chunks. */
      size_t len = q->n;
      uint32_t prev = e;
      while (i + 1 < np && pc[i + 1].newp < 0 &&
             !(pc[i + 1].zero && pc[i + 1].n == C)) {
        uint32_t f = atomic_load_explicit (&t->map[pc[i + 1].v],
                                           memory_order_acquire);
        if (f == 0 || f == THIN_BUSY || f != prev + 1)
          break;
        prev = f;
        len += pc[++i].n;
      }
      w = bdev_pwrite (t->pool, q->data, len, phys_off (t, e, q->in), 0);
    }
    /* Otherwise a trim, a zero or another write's zero chunk released
     * this chunk since phase 1 (and maybe a third request is allocating
     * it now).  All of them were in flight with this write, so serving
     * it as if this piece came first and was then released is correct,
     * and the piece is dropped.  Allocating here instead would wait for
     * chunks while holding this write's reservations (a deadlock with a
     * writer waiting for ours) and could fail with ENOSPC half-way.
     */
    epoch_leave (t, ep);
    if (w == -1)
      goto undo;
  }

  /* Phase 3: publish the new mappings, then release all-zero chunks.
   * A zero chunk being allocated by another request is left to it, for
   * the reason given in phase 2: no waiting here either.
   */
  r = 0;
  if (need_lock) {
    pthread_mutex_lock (&t->lock);
    for (i = 0; i < np; i++) {
      struct piece *q = &pc[i];
      if (q->newp >= 0) {
        atomic_store_explicit (&t->map[q->v], (uint32_t) q->newp + 1,
                               memory_order_release);
        bitmap_set (&t->mapped, q->newp, true);
        t->n_mapped++;
        mark_table (t, q->v);
        mark_bitmap (t, q->newp);
      }
    }
    for (i = 0; i < np && r == 0; i++)
      if (pc[i].newp < 0 && pc[i].zero && pc[i].n == C)
        r = release_mapped_locked (t, pc[i].v);
    pthread_cond_broadcast (&t->cond);
    pthread_mutex_unlock (&t->lock);
  }
  goto out;

 undo:
  pthread_mutex_lock (&t->lock);
  for (i = 0; i < np; i++)
    if (pc[i].newp >= 0) {
      /* Never published: the chunk can be reused at once. */
      atomic_store (&t->map[pc[i].v], 0);
      unalloc_locked (t, pc[i].newp);
    }
  pthread_cond_broadcast (&t->cond);
  pthread_mutex_unlock (&t->lock);
 out:
  if (fire) {
    struct thin_stats st;
    thin_get_stats (bd, &st);
    t->watermark (t->opaque, &st);
  }
  free (tmp);
  if (pc != stackp)
    free (pc);
  return r;
}

/* Trim and zero: whole chunks are released (trimmed below at the next
 * commit), the last one too when the range reaches the virtual size; for
 * zero, the mapped parts of partial chunks are written with zeroes.
 */
static int
discard (struct thin *t, uint64_t count, uint64_t offset, bool zero)
{
  const uint32_t C = t->g.chunk;
  int r = 0;
  if (finish_header (t) == -1)
    return -1;
  while (count > 0) {
    uint64_t v = offset / C, in = offset % C;
    uint64_t n = C - in < count ? C - in : count;
    /* A whole chunk, or the whole of the last one, which the virtual
     * size may cut short.
     */
    if (n == C || (in == 0 && offset + n == t->g.vsize)) {
      pthread_mutex_lock (&t->lock);
      r = release_locked (t, v);
      pthread_cond_broadcast (&t->cond);
      pthread_mutex_unlock (&t->lock);
    }
    else if (zero) {
      uint32_t e;
      unsigned ep = epoch_enter (t);
      e = atomic_load_explicit (&t->map[v], memory_order_acquire);
      if (e != 0 && e != THIN_BUSY)
        r = bdev_zero (t->pool, n, phys_off (t, e, in), 0);
      epoch_leave (t, ep);
      if (r == 0 && e == THIN_BUSY) {
        /* Being allocated: wait, then zero through the write path. */
        static const char zeroes[4096];
        pthread_mutex_lock (&t->lock);
        while (atomic_load (&t->map[v]) == THIN_BUSY)
          pthread_cond_wait (&t->cond, &t->lock);
        pthread_mutex_unlock (&t->lock);
        for (uint64_t k = 0; k < n && r == 0; k += sizeof zeroes) {
          size_t m = n - k < sizeof zeroes ? n - k : sizeof zeroes;
          r = thin_pwrite (&t->bd, zeroes, m, offset + k, 0);
        }
      }
    }
    if (r == -1)
      return -1;
    offset += n;
    count -= n;
  }
  return 0;
}

static int
thin_trim (struct bdev *bd, uint64_t count, uint64_t offset, uint32_t flags)
{
  (void) flags;
  return discard (TH (bd), count, offset, false);
}

static int
thin_zero (struct bdev *bd, uint64_t count, uint64_t offset, uint32_t flags)
{
  (void) flags;
  return discard (TH (bd), count, offset, true);
}

static int
thin_extents (struct bdev *bd, uint64_t count, uint64_t offset,
              uint32_t flags, bdev_extent_fn fn, void *opaque)
{
  struct thin *t = TH (bd);
  const uint32_t C = t->g.chunk;
  uint64_t end = offset + count;
  while (offset < end) {
    uint32_t e = atomic_load (&t->map[offset / C]);
    bool hole = e == 0 || e == THIN_BUSY;
    uint64_t start = offset;
    do {
      uint64_t next = (offset / C + 1) * C;
      offset = next < end ? next : end;
      if (offset >= end)
        break;
      e = atomic_load (&t->map[offset / C]);
    } while ((e == 0 || e == THIN_BUSY) == hole);
    if (fn (opaque, start, offset - start,
            hole ? BDEV_EXTENT_HOLE | BDEV_EXTENT_ZERO : BDEV_EXTENT_DATA)
        == -1)
      return -1;
    if (flags & BDEV_REQ_ONE)
      break;
  }
  return 0;
}

static void
thin_close (struct bdev *bd)
{
  struct thin *t = TH (bd);
  if (!bd->readonly && thin_flush (bd) == -1)
    kvm_error ("thin: final commit failed: the last writes since the "
               "previous flush may be lost");
  if (t->meta && t->meta != t->pool)
    bdev_close (t->meta);
  if (t->pool)
    bdev_close (t->pool);
  free ((void *) t->map);
  bitmap_free (&t->alloc);
  bitmap_free (&t->mapped);
  free (t->tgen);
  free (t->bgen);
  free (t->pend);
  pthread_mutex_destroy (&t->lock);
  pthread_cond_destroy (&t->cond);
  bdev_free_common (bd);
}

static const struct bdev_ops thin_ops = {
  .format = "thin",
  .close = thin_close,
  .pread = thin_pread,
  .pwrite = thin_pwrite,
  .flush = thin_flush,
  .trim = thin_trim,
  .zero = thin_zero,
  .extents = thin_extents,
};

/* ---- open and format ----------------------------------------------- */

static int
format_meta (struct thin *t)
{
  const struct geom *g = &t->g;
  uint8_t *b = calloc (1, TBLK);
  int r = -1;
  if (!b) {
    errno = ENOMEM;
    kvm_error ("thin: out of memory");
    return -1;
  }
  for (unsigned s = 0; s < 2; s++)
    for (uint64_t i = 0; i < (uint64_t) g->tblocks + g->bblocks; i++) {
      memset (b, 0, TBLK);
      store_le32 (b + TBLK - 4, thin_block_crc (thin_body_seed (g, i), b));
      if (bdev_pwrite (t->meta, b, TBLK, thin_body_off (g, s) + i * TBLK,
                       0) == -1)
        goto out;
    }
  if (bdev_flush (t->meta) == -1)
    goto out;
  for (unsigned s = 0; s < 2; s++) {
    thin_header_encode (b, g, s, 0, t->pool_chunks);
    if (bdev_pwrite (t->meta, b, TBLK, (uint64_t) s * TBLK, 0) == -1)
      goto out;
  }
  if (bdev_flush (t->meta) == -1)
    goto out;
  t->seq = 1;
  kvm_debug ("thin: formatted %s: virtual %" PRIu64 " bytes, chunk %" PRIu32
             ", %" PRIu64 " physical chunks from byte %" PRIu64,
             t->meta->name, g->vsize, g->chunk, (uint64_t) t->pool_chunks,
             g->data_off);
  r = 0;
 out:
  free (b);
  return r;
}

struct bdev *
thin_open (struct bdev *pool, const struct thin_opts *o)
{
  struct thin *t;
  char err[400], name[256];
  bool allzero;
  uint64_t used;
  uint32_t *entries = NULL;
  struct bdev *meta = o->meta ? o->meta : pool;

  snprintf (name, sizeof name, "thin(%s)", pool->name);
  t = bdev_alloc (sizeof *t, &thin_ops, name);
  if (!t) {
    bdev_close (pool);
    if (o->meta)
      bdev_close (o->meta);
    return NULL;
  }
  pthread_mutex_init (&t->lock, NULL);
  pthread_cond_init (&t->cond, NULL);
  t->pool = pool;
  t->meta = meta;
  t->warn = o->warn_percent;
  t->opaque = o->opaque;
  t->watermark = o->watermark;
  t->al = o->alerts ? o->alerts : &t->own_al;
  t->pool_size_fn = o->pool_size;

  int slot = thin_headers_read (meta, &t->g, &t->seq, &used, &allzero, err,
                                sizeof err, NULL);
  if (slot == -2) {               /* the layer below failed the read */
    int e = errno;
    kvm_error ("thin: %s: %s", meta->name, err);
    errno = e ? e : EIO;
    goto fail;
  }
  if (slot == -1) {
    if (!allzero || !o->format) {
      kvm_error ("thin: %s: no valid thin metadata (%s)%s", meta->name, err,
                 allzero ? "" : "; the metadata area is not all zeroes, "
                 "refusing to format it");
      errno = EINVAL;
      goto fail;
    }
    if (pool->readonly) {
      kvm_error ("thin: %s: not formatted, and read-only", meta->name);
      errno = EROFS;
      goto fail;
    }
    if (!o->virtual_size) {
      kvm_error ("thin: %s: not formatted yet: thin-size is required",
                 meta->name);
      errno = EINVAL;
      goto fail;
    }
    if (thin_geom_compute (&t->g, o->virtual_size,
                           o->chunk_size ? o->chunk_size : THIN_DEFAULT_CHUNK,
                           o->meta != NULL, err, sizeof err) == -1) {
      kvm_error ("thin: %s", err);
      errno = EINVAL;
      goto fail;
    }
    /* The headers were zero: so must be everything the format writes
     * (a filesystem or volume whose first 8 KiB are zero is no pool),
     * or what this format writes before its headers (one cut short).
     */
    uint64_t at = 0, area = thin_meta_bytes (&t->g);
    int z = thin_area_is_blank (meta, &t->g, &at);
    if (z != 1) {
      int err = z == -1 ? errno : EINVAL;
      if (z == -1)
        kvm_error ("thin: %s: cannot read the metadata area: %m",
                   meta->name);
      else
        kvm_error ("thin: %s: no thin metadata, and its metadata area "
                   "(the first %" PRIu64 " bytes) is not all zeroes: the "
                   "MiB at %" PRIu64 " holds data; refusing to format it",
                   meta->name, area, at);
      errno = err;
      goto fail;
    }
  }
  else {
    if (o->virtual_size && o->virtual_size != t->g.vsize) {
      kvm_error ("thin: %s: thin-size=%" PRIu64 " but the pool was made "
                 "with %" PRIu64, meta->name, o->virtual_size, t->g.vsize);
      errno = EINVAL;
      goto fail;
    }
    if (o->chunk_size && o->chunk_size != t->g.chunk) {
      kvm_error ("thin: %s: thin-chunk=%" PRIu32 " but the pool was made "
                 "with %" PRIu32, meta->name, o->chunk_size, t->g.chunk);
      errno = EINVAL;
      goto fail;
    }
    if ((t->g.flags & 1) != (o->meta != NULL)) {
      kvm_error ("thin: %s: the metadata says it is %s", meta->name,
                 (t->g.flags & 1) ? "in a separate file (thin-metadata=)"
                 : "inside the pool");
      errno = EINVAL;
      goto fail;
    }
  }
  /* Both slots must be there before the chunk map (sized from the
   * header, up to THIN_MAX_VCHUNKS) is allocated: a short hostile file
   * fails here, fast.
   */
  uint64_t meta_need = thin_meta_bytes (&t->g);
  if (slot != -1 && meta->size < meta_need) {
    kvm_error ("thin: %s: the metadata of %" PRIu64 " virtual chunks needs "
               "%" PRIu64 " bytes, but the device has %" PRIu64, meta->name,
               t->g.nv, meta_need, meta->size);
    errno = EINVAL;
    goto fail;
  }
  if (pool->size < t->g.data_off) {
    kvm_error ("thin: %s: %" PRIu64 " bytes is too small for the metadata "
               "(%" PRIu64 " bytes)", pool->name, pool->size, t->g.data_off);
    errno = ENOSPC;
    goto fail;
  }
  t->pool_chunks = thin_pool_chunks_of (&t->g, pool->size);
  t->bd.size = t->g.vsize;
  t->bd.readonly = pool->readonly || meta->readonly;
  t->bd.block_size = t->g.chunk;
  t->bd.caps = BDEV_CAN_TRIM | BDEV_CAN_ZERO | BDEV_CAN_FAST_ZERO |
    BDEV_CAN_EXTENTS | BDEV_CAN_MULTI_CONN;
  size_t mapbytes;
  if (!ck_size_mul (t->g.nv, sizeof *t->map, &mapbytes) ||
      !(t->map = calloc (1, mapbytes)) ||
      !(entries = calloc (t->g.nv, sizeof *entries)) ||
      !(t->tgen = calloc (t->g.tblocks, sizeof *t->tgen)) ||
      !(t->bgen = calloc (t->g.bblocks, sizeof *t->bgen)) ||
      bitmap_init (&t->alloc, t->g.nv) == -1 ||
      bitmap_init (&t->mapped, t->g.nv) == -1) {
    kvm_error ("thin: out of memory for %" PRIu64 " chunks", t->g.nv);
    errno = ENOMEM;
    goto fail;
  }
  if (slot == -1) {
    if (format_meta (t) == -1)
      goto fail;
  }
  else {
    struct bitmap bits;
    struct verify_result vr;
    if (bitmap_init (&bits, t->g.nv) == -1) {
      errno = ENOMEM;
      goto fail;
    }
    long bad = thin_body_read (meta, &t->g, slot, entries, &bits, NULL, NULL);
    if (bad != 0 ||
        thin_verify (&t->g, entries, &bits, t->pool_chunks, NULL, &vr,
                     NULL) == -1) {
      bitmap_free (&bits);
      if (bad > 0)
        kvm_error ("thin: %s: metadata slot %d is damaged (run "
                   "nbdkit-thin-check)", meta->name, slot);
      errno = EIO;
      goto fail;
    }
    if (vr.out_of_range || vr.doubles || vr.unmarked) {
      kvm_error ("thin: %s: inconsistent metadata: %" PRIu64 " mappings "
                 "outside the pool, %" PRIu64 " double mappings, %" PRIu64
                 " mapped chunks marked free (run nbdkit-thin-check)",
                 meta->name, vr.out_of_range, vr.doubles, vr.unmarked);
      bitmap_free (&bits);
      errno = EIO;
      goto fail;
    }
    if (vr.leaks) {
      kvm_error ("thin: %s: %" PRIu64 " chunks marked in use but not mapped "
                 "(leaked): reclaiming them", meta->name, vr.leaks);
      /* Rewrite the whole bitmap at the next commits. */
      for (uint32_t j = 0; j < t->g.bblocks; j++)
        t->bgen[j] = t->seq + 1;
      t->dirty = true;
    }
    /* The header's count is a summary of the table: a wrong one is
     * rewritten (with the header of the next commit), not trusted.
     */
    if (vr.mapped != used) {
      kvm_error ("thin: %s: the header says %" PRIu64 " chunks are used, "
                 "but %" PRIu64 " are mapped: correcting it", meta->name,
                 used, vr.mapped);
      t->dirty = true;
    }
    bitmap_free (&bits);
    /* Which blocks the other slot lacks is not known: the first commit
     * writes every block (gen >= seq), later ones only changed blocks.
     */
    for (uint32_t i = 0; i < t->g.tblocks; i++)
      t->tgen[i] = t->seq;
    for (uint32_t j = 0; j < t->g.bblocks; j++)
      if (t->bgen[j] < t->seq)
        t->bgen[j] = t->seq;
    for (uint64_t v = 0; v < t->g.nv; v++)
      if (entries[v]) {
        t->map[v] = entries[v];
        bitmap_set (&t->alloc, entries[v] - 1, true);
        bitmap_set (&t->mapped, entries[v] - 1, true);
        t->n_alloc++;
        t->n_mapped++;
      }
    if (t->dirty && !t->bd.readonly && commit_locked (t) == -1)
      goto fail;
  }
  free (entries);
  /* Above the mark with no crossing to report it later: said now,
   * unless an earlier open of this pool said it.  Below it, the usual
   * re-arming applies to what the earlier open left.
   */
  if (t->warn && t->n_alloc * 100 >= (uint64_t) t->warn * t->pool_chunks) {
    bool said = t->al->above;
    t->al->above = true;
    if (!said)
      kvm_error ("thin: %s: the pool is already at or above thin-warn=%u%% "
                 "(%" PRIu64 " of %" PRIu64 " chunks used)", pool->name,
                 t->warn, t->n_alloc, (uint64_t) t->pool_chunks);
  }
  else
    watermark_check_locked (t);
  return &t->bd;

 fail:
  {
    int e = errno;
    free (entries);
    t->bd.readonly = true;      /* no final commit */
    thin_close (&t->bd);
    errno = e;
  }
  return NULL;
}
