/* SPDX-License-Identifier: BSD-3-Clause */
/* The thin engine over bdev_file: concurrent writers, rewriters, zeroes
 * and trims against per-thread mirrors; racing allocations of the same
 * chunks; ENOSPC; watermark once per crossing; reopen (internal and
 * separate metadata); thin_check finds the result clean.  Through a
 * pool that can hold a write or fail a flush: a write racing a trim and
 * another write never deadlocks; a failed header commit is written again
 * before anything else, also with writes in flight.
 * A device that is not a pool is not formatted, but a format cut short
 * is redone.  The short last chunk of a virtual size that is not a
 * multiple of the chunk is released.
 */
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bdev/bdev.h"
#include "thin/thin.h"
#include "check.h"
#include "fault_bdev.h"

#define C 65536u
#define TBLK_TEST 4096                  /* the metadata block (thin.h) */
#define VSIZE (256ull << 20)
#define POOL (8u << 20)
#define NTHREADS 4
#define PER 40                          /* virtual chunks per thread */
#define ROUNDS 300

static char dir[] = "/tmp/thinunitXXXXXX";
static char pool_path[128], meta_path[128];
static int watermarks;

static void
on_watermark (void *opaque, const struct thin_stats *st)
{
  (void) opaque;
  (void) st;
  __atomic_fetch_add (&watermarks, 1, __ATOMIC_SEQ_CST);
}

static struct bdev *
open_thin (bool external, unsigned warn)
{
  struct bdev_open_opts o = { 0 };
  struct bdev *pool = bdev_file_open (pool_path, &o), *meta = NULL;
  CHECK (pool);
  if (external) {
    struct bdev_open_opts g = { .growable = true };
    meta = bdev_file_open (meta_path, &g);
    CHECK (meta);
  }
  struct thin_opts t = {
    .virtual_size = VSIZE, .chunk_size = C, .format = true, .meta = meta,
    .warn_percent = warn, .watermark = on_watermark,
  };
  struct bdev *bd = thin_open (pool, &t);
  CHECK (bd);
  return bd;
}

static long
check_pool (bool external)
{
  struct bdev_open_opts o = { .readonly = true };
  struct bdev *pool = bdev_file_open (pool_path, &o), *meta = NULL;
  CHECK (pool);
  if (external)
    CHECK ((meta = bdev_file_open (meta_path, &o)));
  FILE *devnull = fopen ("/dev/null", "w");
  long n = thin_check (pool, meta, devnull, false);
  fclose (devnull);
  if (meta)
    bdev_close (meta);
  bdev_close (pool);
  return n;
}

struct worker {
  struct bdev *bd;
  unsigned id, seed;
  unsigned char *mirror;                /* PER chunks */
  pthread_t th;
};

static uint64_t
vchunk (unsigned id, unsigned k)
{
  /* Interleaved ownership: neighbours belong to other threads. */
  return (uint64_t) (k * NTHREADS + id) * 3;
}

static void *
work (void *arg)
{
  struct worker *w = arg;
  unsigned char *buf = malloc (C);
  CHECK (buf);
  for (int r = 0; r < ROUNDS; r++) {
    unsigned k = rand_r (&w->seed) % PER, op = rand_r (&w->seed) % 10;
    uint64_t off = vchunk (w->id, k) * C;
    unsigned char *m = w->mirror + (size_t) k * C;
    uint32_t in = rand_r (&w->seed) % C, n = 1 + rand_r (&w->seed) % (C - in);
    if (op < 5) {                       /* write (maybe allocating) */
      memset (buf, 1 + rand_r (&w->seed) % 250, n);
      int e = bdev_pwrite (w->bd, buf, n, off + in, 0);
      if (e == 0)
        memcpy (m + in, buf, n);
      else
        CHECK (errno == ENOSPC);
    }
    else if (op < 6) {                  /* zero part or all */
      if (op == 5 && rand_r (&w->seed) % 2) {
        in = 0;
        n = C;
      }
      CHECK (bdev_zero (w->bd, n, off + in, 0) == 0);
      memset (m + in, 0, n);
    }
    else if (op < 7) {                  /* trim the whole chunk */
      CHECK (bdev_trim (w->bd, C, off, 0) == 0);
      memset (m, 0, C);
    }
    else if (op < 8) {
      CHECK (bdev_flush (w->bd) == 0);
    }
    else {                              /* read back */
      CHECK (bdev_pread (w->bd, buf, C, off) == 0);
      CHECK (memcmp (buf, m, C) == 0);
    }
  }
  free (buf);
  return NULL;
}

static void
verify_all (struct bdev *bd, struct worker *w)
{
  unsigned char *buf = malloc (C);
  CHECK (buf);
  for (unsigned i = 0; i < NTHREADS; i++)
    for (unsigned k = 0; k < PER; k++) {
      CHECK (bdev_pread (bd, buf, C, vchunk (i, k) * C) == 0);
      CHECK (memcmp (buf, w[i].mirror + (size_t) k * C, C) == 0);
    }
  free (buf);
}

/* Several threads allocate the same chunks at once: each chunk ends up
 * with one writer's whole content, and no physical chunk twice.
 */
struct racer {
  struct bdev *bd;
  unsigned char val;
  pthread_t th;
};

static void *
race (void *arg)
{
  struct racer *r = arg;
  unsigned char *buf = malloc (C);
  CHECK (buf);
  memset (buf, r->val, C);
  for (uint64_t v = 1000; v < 1020; v++) {
    int e = bdev_pwrite (r->bd, buf, C, v * C, 0);
    CHECK (e == 0 || errno == ENOSPC);
  }
  free (buf);
  return NULL;
}

static void
run (bool external)
{
  struct worker w[NTHREADS];
  struct thin_stats st;

  unlink (pool_path);
  unlink (meta_path);
  int fd = open (pool_path, O_CREAT | O_RDWR, 0644);
  CHECK (fd >= 0 && ftruncate (fd, POOL) == 0);
  close (fd);
  if (external)
    CHECK ((fd = open (meta_path, O_CREAT | O_RDWR, 0644)) >= 0 &&
           close (fd) == 0);
  watermarks = 0;

  struct bdev *bd = open_thin (external, 90);
  CHECK_EQ_U64 (bd->size, VSIZE);
  for (unsigned i = 0; i < NTHREADS; i++) {
    w[i].bd = bd;
    w[i].id = i;
    w[i].seed = 1234 + i;
    CHECK ((w[i].mirror = calloc (PER, C)));
  }
  for (unsigned i = 0; i < NTHREADS; i++)
    CHECK (pthread_create (&w[i].th, NULL, work, &w[i]) == 0);
  for (unsigned i = 0; i < NTHREADS; i++)
    pthread_join (w[i].th, NULL);
  verify_all (bd, w);

  struct racer rc[4];
  for (unsigned i = 0; i < 4; i++) {
    rc[i].bd = bd;
    rc[i].val = 0xa0 + i;
    CHECK (pthread_create (&rc[i].th, NULL, race, &rc[i]) == 0);
  }
  for (unsigned i = 0; i < 4; i++)
    pthread_join (rc[i].th, NULL);
  unsigned char *buf = malloc (C);
  CHECK (buf);
  for (uint64_t v = 1000; v < 1020; v++) {
    CHECK (bdev_pread (bd, buf, C, v * C) == 0);
    for (unsigned k = 1; k < C; k++)
      CHECK (buf[k] == buf[0]);
    CHECK (buf[0] == 0 || (buf[0] >= 0xa0 && buf[0] < 0xa4));
  }

  /* Empty the pool (trim everything written so far), then fill it to
   * ENOSPC: an allocating write then fails, a rewrite works.
   */
  for (unsigned i = 0; i < NTHREADS; i++) {
    for (unsigned k = 0; k < PER; k++)
      CHECK (bdev_trim (bd, C, vchunk (i, k) * C, 0) == 0);
    memset (w[i].mirror, 0, (size_t) PER * C);
  }
  CHECK (bdev_trim (bd, 20 * C, 1000 * C, 0) == 0);
  CHECK (bdev_flush (bd) == 0);
  thin_get_stats (bd, &st);
  CHECK_EQ_U64 (st.used_chunks, 0);
  /* Multi-chunk requests (merged into runs of contiguous physical
   * chunks): allocate 4 chunks and a half in one write over a mix of
   * mapped and unmapped chunks, rewrite across them, read them at once.
   */
  {
    size_t len = 4 * C + C / 2;
    unsigned char *big = malloc (len), *back = malloc (len + 2 * C);
    CHECK (big && back);
    for (size_t k = 0; k < len; k++)
      big[k] = (unsigned char) (k * 7 + 3);
    CHECK (bdev_trim (bd, 8 * C, 3000 * C, 0) == 0);
    memset (buf, 0x66, 100);
    CHECK (bdev_pwrite (bd, buf, 100, 3001 * C, 0) == 0);
    CHECK (bdev_flush (bd) == 0);
    CHECK (bdev_pwrite (bd, big, len, 3000 * C + 1000, 0) == 0);
    CHECK (bdev_pwrite (bd, big + 5, 2 * C, 3001 * C + 17, 0) == 0);
    CHECK (bdev_pread (bd, back, len + 2 * C, 2999 * C) == 0);
    for (size_t k = 0; k < C + 1000; k++)
      CHECK (back[k] == 0);
    for (size_t k = 0; k < len; k++) {
      size_t o = 3000 * C + 1000 + k;
      unsigned char want = big[k];
      if (o >= 3001 * C + 17 && o < 3001 * C + 17 + 2 * C)
        want = big[5 + (o - (3001 * C + 17))];
      CHECK (back[C + 1000 + k] == want);
    }
    for (size_t k = C + 1000 + len; k < len + 2 * C; k++)
      CHECK (back[k] == 0);
    CHECK (bdev_trim (bd, 8 * C, 3000 * C, 0) == 0);
    CHECK (bdev_flush (bd) == 0);
    free (big);
    free (back);
  }

  watermarks = 0;
  memset (buf, 0x55, C);
  uint64_t v = 2000;
  while (bdev_pwrite (bd, buf, C, v * C, 0) == 0)
    v++;
  CHECK (errno == ENOSPC);
  thin_get_stats (bd, &st);
  CHECK_EQ_U64 (st.used_chunks, st.pool_chunks);
  CHECK (st.enospc >= 1);
  CHECK (watermarks == 1);              /* once per crossing */
  CHECK (bdev_pwrite (bd, buf, 100, 2000 * C + 7, 0) == 0);
  /* Releasing below the mark re-arms it; crossing again fires again. */
  for (uint64_t u = 2000; u < v; u++)
    CHECK (bdev_trim (bd, C, u * C, 0) == 0);
  CHECK (bdev_flush (bd) == 0);
  memset (buf, 0x66, C);
  for (uint64_t u = 2000; u < v; u++)
    CHECK (bdev_pwrite (bd, buf, C, u * C, 0) == 0);
  CHECK (watermarks == 2);
  verify_all (bd, w);
  CHECK (bdev_flush (bd) == 0);
  CHECK_EQ_U64 (check_pool (external), 0);
  bdev_close (bd);
  CHECK_EQ_U64 (check_pool (external), 0);

  /* Reopen: the same content. */
  bd = open_thin (external, 0);
  verify_all (bd, w);
  CHECK (bdev_pread (bd, buf, C, 2000 * C) == 0);
  CHECK (buf[0] == 0x66 && buf[C - 1] == 0x66);
  /* A write after reopen, then another reopen (first commit after open
   * writes the whole slot).
   */
  CHECK (bdev_trim (bd, C, 2001 * C, 0) == 0);
  CHECK (bdev_flush (bd) == 0);
  CHECK (bdev_trim (bd, C, 2002 * C, 0) == 0);
  CHECK (bdev_flush (bd) == 0);
  bdev_close (bd);
  CHECK_EQ_U64 (check_pool (external), 0);
  bd = open_thin (external, 0);
  CHECK (bdev_pread (bd, buf, C, 2001 * C) == 0);
  CHECK (buf[0] == 0 && buf[C - 1] == 0);
  CHECK (bdev_pread (bd, buf, C, 2003 * C) == 0);
  CHECK (buf[0] == 0x66);
  verify_all (bd, w);
  bdev_close (bd);

  free (buf);
  for (unsigned i = 0; i < NTHREADS; i++)
    free (w[i].mirror);
}

/* The pool device: its next write can be held until released, and its
 * Nth flush from now made to fail.
 */
static int gate_armed, gate_held, gate_open, gate_fail_flush;

static int
gate_on_pwrite (uint64_t off, size_t n)
{
  (void) off;
  (void) n;
  if (__atomic_exchange_n (&gate_armed, 0, __ATOMIC_SEQ_CST)) {
    __atomic_store_n (&gate_held, 1, __ATOMIC_SEQ_CST);
    while (!__atomic_load_n (&gate_open, __ATOMIC_SEQ_CST))
      usleep (1000);
  }
  return 0;
}

static int
gate_on_flush (void)
{
  if (gate_fail_flush && --gate_fail_flush == 0) {
    errno = EIO;
    return -1;
  }
  return 0;
}

static struct bdev *
open_gated_thin (uint64_t vsize)
{
  struct bdev_open_opts o = { 0 };
  struct bdev *in = bdev_file_open (pool_path, &o);
  CHECK (in);
  struct thin_opts t = {
    .virtual_size = vsize, .chunk_size = C, .format = true,
  };
  struct bdev *bd = thin_open (fault_bdev_wrap (in, gate_on_pwrite,
                                                gate_on_flush), &t);
  CHECK (bd);
  return bd;
}

static void
new_pool (void)
{
  unlink (pool_path);
  int fd = open (pool_path, O_CREAT | O_RDWR, 0644);
  CHECK (fd >= 0 && ftruncate (fd, POOL) == 0);
  close (fd);
}

struct req {
  struct bdev *bd;
  const unsigned char *buf;
  size_t n;
  uint64_t off;
  int r, done;
  pthread_t th;
};

static void *
req_run (void *arg)
{
  struct req *q = arg;
  q->r = bdev_pwrite (q->bd, q->buf, q->n, q->off, 0);
  __atomic_store_n (&q->done, 1, __ATOMIC_SEQ_CST);
  return NULL;
}

/* Start write Q on its own thread, held by the gate in its first write
 * of the pool (data into a new chunk) until gate_open is set.
 */
static void
start_held_write (struct req *q)
{
  __atomic_store_n (&gate_held, 0, __ATOMIC_SEQ_CST);
  __atomic_store_n (&gate_open, 0, __ATOMIC_SEQ_CST);
  __atomic_store_n (&gate_armed, 1, __ATOMIC_SEQ_CST);
  CHECK (pthread_create (&q->th, NULL, req_run, q) == 0);
  while (!__atomic_load_n (&gate_held, __ATOMIC_SEQ_CST))
    usleep (1000);
}

static void
chunk_is (struct bdev *bd, uint64_t v, unsigned char want)
{
  unsigned char *b = malloc (C);
  CHECK (b && bdev_pread (bd, b, C, v * C) == 0);
  for (unsigned k = 0; k < C; k++)
    CHECK (b[k] == want);
  free (b);
}

/* Write A covers chunks 0..2 and is held writing chunk 0 with chunks 0
 * and 2 reserved; chunk 1 (mapped when A looked) is trimmed, and write B
 * over 1..2 reserves chunk 1 and waits for chunk 2.  A then meets chunk
 * 1 reserved by B.  With ZERO_FIRST, A's chunk 0 is zeroes and mapped
 * (released at A's end), the trim hits chunk 0, B covers 0..1.  Before
 * the fix, A waited for B while holding what B waited for.
 */
static void
race_write_trim_write (bool zero_first)
{
  new_pool ();
  struct bdev *bd = open_gated_thin (16 * C);
  unsigned char *a = malloc (3 * C), *b = malloc (2 * C), *x = malloc (C);
  CHECK (a && b && x);
  memset (a, 'A', 3 * C);
  memset (b, 'B', 2 * C);
  memset (x, 'x', C);
  uint64_t mapped = zero_first ? 0 : 1;
  if (zero_first)
    memset (a, 0, C);
  CHECK (bdev_pwrite (bd, x, C, mapped * C, 0) == 0);
  CHECK (bdev_flush (bd) == 0);

  struct req ra = { .bd = bd, .buf = a, .n = zero_first ? 2 * C : 3 * C };
  struct req rb = { .bd = bd, .buf = b, .n = 2 * C,
                    .off = zero_first ? 0 : C };
  start_held_write (&ra);
  CHECK (bdev_trim (bd, C, mapped * C, 0) == 0);
  CHECK (pthread_create (&rb.th, NULL, req_run, &rb) == 0);
  usleep (200000);                      /* B is waiting for A's chunk */
  __atomic_store_n (&gate_open, 1, __ATOMIC_SEQ_CST);
  for (int i = 0; i < 1000 && !(__atomic_load_n (&ra.done, __ATOMIC_SEQ_CST)
                                && __atomic_load_n (&rb.done,
                                                    __ATOMIC_SEQ_CST)); i++)
    usleep (10000);
  if (!ra.done || !rb.done) {
    fprintf (stderr, "thin: writes deadlocked (A %s, B %s)\n",
             ra.done ? "done" : "stuck", rb.done ? "done" : "stuck");
    exit (1);
  }
  pthread_join (ra.th, NULL);
  pthread_join (rb.th, NULL);
  CHECK (ra.r == 0 && rb.r == 0);
  /* Both were in flight together: B's chunks are B's, A's own chunk 0
   * is A's (data or, released after B, zeroes).
   */
  if (zero_first) {
    chunk_is (bd, 1, 'B');
    unsigned char *c0 = malloc (C);
    CHECK (c0 && bdev_pread (bd, c0, C, 0) == 0);
    CHECK (c0[0] == 0 || c0[0] == 'B');
    for (unsigned k = 1; k < C; k++)
      CHECK (c0[k] == c0[0]);
    free (c0);
  }
  else {
    chunk_is (bd, 0, 'A');
    chunk_is (bd, 1, 'B');
    chunk_is (bd, 2, 'B');
  }
  CHECK (bdev_flush (bd) == 0);
  bdev_close (bd);
  CHECK_EQ_U64 (check_pool (false), 0);
  free (a);
  free (b);
  free (x);
}

/* Close BD with its final commit failing at its first flush, check the
 * pool and open it again.
 */
static struct bdev *
close_failing_reopen (struct bdev *bd)
{
  gate_fail_flush = 1;
  bdev_close (bd);
  gate_fail_flush = 0;
  CHECK_EQ_U64 (check_pool (false), 0);
  return open_gated_thin (16 * C);
}

/* The flush after a commit's header write fails: that header may or may
 * not be on disk, so no body may be written until it is.  Every write,
 * trim and flush writes it again first and fails while that fails; once
 * it is written the pool takes writes again, and the data of the failed
 * commit is durable.
 */
static void
header_flush_fails (void)
{
  new_pool ();
  struct bdev *bd = open_gated_thin (16 * C);
  unsigned char *x = malloc (C);
  CHECK (x);
  memset (x, 'x', C);
  CHECK (bdev_pwrite (bd, x, C, 3 * C, 0) == 0);
  CHECK (bdev_flush (bd) == 0);
  memset (x, 'y', C);
  CHECK (bdev_pwrite (bd, x, C, 4 * C, 0) == 0);
  /* A commit flushes the pool, then the body, then the header. */
  gate_fail_flush = 3;
  CHECK (bdev_flush (bd) == -1 && errno == EIO);
  /* The header's second try fails too: nothing changes. */
  gate_fail_flush = 1;
  CHECK (bdev_pwrite (bd, x, C, 5 * C, 0) == -1 && errno == EIO);
  gate_fail_flush = 1;
  CHECK (bdev_pwrite (bd, x, 100, 3 * C, 0) == -1 && errno == EIO);
  gate_fail_flush = 1;
  CHECK (bdev_trim (bd, C, 3 * C, 0) == -1 && errno == EIO);
  gate_fail_flush = 1;
  CHECK (bdev_flush (bd) == -1 && errno == EIO);
  chunk_is (bd, 3, 'x');                /* reads go on */
  chunk_is (bd, 5, 0);
  /* It succeeds now: the write that found it pending goes on. */
  gate_fail_flush = 0;
  CHECK (bdev_pwrite (bd, x, C, 5 * C, 0) == 0);
  CHECK (bdev_flush (bd) == 0);
  bdev_close (bd);
  CHECK_EQ_U64 (check_pool (false), 0);
  bd = open_gated_thin (16 * C);
  chunk_is (bd, 3, 'x');
  chunk_is (bd, 4, 'y');
  chunk_is (bd, 5, 'y');
  bdev_close (bd);
  CHECK_EQ_U64 (check_pool (false), 0);

  /* The pool is closed while the header is pending and its last try
   * fails: it opens in one of the two states, here the later one.
   */
  new_pool ();
  bd = open_gated_thin (16 * C);
  memset (x, 'x', C);
  CHECK (bdev_pwrite (bd, x, C, 3 * C, 0) == 0);
  gate_fail_flush = 3;
  CHECK (bdev_flush (bd) == -1 && errno == EIO);
  bd = close_failing_reopen (bd);
  chunk_is (bd, 3, 'x');
  bdev_close (bd);
  free (x);
}

/* A chunk released by a write that was in flight when a commit's header
 * failed is not in that commit: the commit, once its header is written,
 * must not make it reusable.  Before, the next allocation took it, and
 * the pool reopened at that commit read the new data in the old place.
 */
static void
header_pending_release (void)
{
  new_pool ();
  struct bdev *bd = open_gated_thin (16 * C);
  unsigned char *x = malloc (2 * C), *z = malloc (C);
  CHECK (x && z);
  memset (x, 'x', C);
  CHECK (bdev_pwrite (bd, x, C, 3 * C, 0) == 0);     /* physical chunk 0 */
  CHECK (bdev_flush (bd) == 0);
  /* Write A: zeroes over chunk 3 (released at A's end), data into the
   * new chunk 4, held while writing it.
   */
  memset (x, 0, C);
  memset (x + C, 'a', C);
  struct req ra = { .bd = bd, .buf = x, .n = 2 * C, .off = 3 * C };
  start_held_write (&ra);
  memset (z, 'q', C);                   /* something for the commit */
  CHECK (bdev_pwrite (bd, z, C, 5 * C, 0) == 0);
  gate_fail_flush = 3;
  CHECK (bdev_flush (bd) == -1 && errno == EIO);
  __atomic_store_n (&gate_open, 1, __ATOMIC_SEQ_CST);
  pthread_join (ra.th, NULL);
  CHECK (ra.r == 0);
  /* The header is written by this write, which then allocates. */
  memset (z, 'z', C);
  CHECK (bdev_pwrite (bd, z, C, 7 * C, 0) == 0);
  /* The commit that would record A fails; the pool reopens at the
   * commit whose header was pending, where chunk 3 still holds 'x'.
   */
  bd = close_failing_reopen (bd);
  chunk_is (bd, 3, 'x');
  chunk_is (bd, 4, 0);
  chunk_is (bd, 5, 'q');
  chunk_is (bd, 7, 0);
  bdev_close (bd);
  __atomic_store_n (&gate_open, 0, __ATOMIC_SEQ_CST);
  free (x);
  free (z);
}

/* A write in flight when a commit's header fails publishes its mapping
 * while that header is pending: the change belongs to the commit after
 * the pending one, and the slot of the pending one (written before the
 * change) must get it at its next commit.  Before the fix the change was
 * marked as part of the pending transaction, so the second commit after
 * the header was written skipped the block in that slot, and the pool
 * reopened without the mapping: a flushed write read as zeroes.  The
 * written chunk is in the second table block (so the later commits
 * change only the first one).
 */
static void
header_pending_inflight_write (void)
{
  const uint64_t far = 1500;            /* table block 1 */
  new_pool ();
  struct bdev *bd = open_gated_thin (2048ull * C);
  unsigned char *x = malloc (C);
  CHECK (x);
  memset (x, 'x', C);
  CHECK (bdev_pwrite (bd, x, C, 0, 0) == 0);
  CHECK (bdev_flush (bd) == 0);
  /* Write A into a new chunk in table block 1, held writing the data. */
  unsigned char *a = malloc (C);
  CHECK (a);
  memset (a, 'a', C);
  struct req ra = { .bd = bd, .buf = a, .n = C, .off = far * C };
  start_held_write (&ra);
  CHECK (bdev_pwrite (bd, x, C, 1 * C, 0) == 0);     /* table block 0 */
  gate_fail_flush = 3;                  /* the header's flush */
  CHECK (bdev_flush (bd) == -1 && errno == EIO);
  __atomic_store_n (&gate_open, 1, __ATOMIC_SEQ_CST);
  pthread_join (ra.th, NULL);
  CHECK (ra.r == 0);                    /* published while pending */
  CHECK (bdev_flush (bd) == 0);         /* the header, then A's commit */
  chunk_is (bd, far, 'a');
  /* One more commit, into the slot of the pending one. */
  CHECK (bdev_pwrite (bd, x, C, 2 * C, 0) == 0);
  CHECK (bdev_flush (bd) == 0);
  bdev_close (bd);
  bd = open_gated_thin (2048ull * C);
  chunk_is (bd, far, 'a');              /* flushed: must be there */
  chunk_is (bd, 0, 'x');
  bdev_close (bd);
  CHECK_EQ_U64 (check_pool (false), 0);
  __atomic_store_n (&gate_open, 0, __ATOMIC_SEQ_CST);
  free (a);
  free (x);
}

/* The same with a release: write A zeroes a mapped chunk of table block
 * 1 (released at A's end, while the header is pending) and allocates the
 * next one.  After the header and A's commit, the released chunk is
 * reused for chunk 2.  Before the fix, the commit after that (into the
 * pending one's slot) skipped table block 1 there: the pool reopened
 * with the old chunk mapped twice and refused to open.
 */
static void
header_pending_inflight_release (void)
{
  const uint64_t far = 1500;            /* table block 1 */
  new_pool ();
  struct bdev *bd = open_gated_thin (2048ull * C);
  unsigned char *x = malloc (C), *a = malloc (2 * C);
  CHECK (x && a);
  memset (x, 'x', C);
  CHECK (bdev_pwrite (bd, x, C, 0, 0) == 0);          /* physical 0 */
  memset (x, 'f', C);
  CHECK (bdev_pwrite (bd, x, C, far * C, 0) == 0);    /* physical 1 */
  CHECK (bdev_flush (bd) == 0);
  memset (a, 0, C);
  memset (a + C, 'a', C);
  struct req ra = { .bd = bd, .buf = a, .n = 2 * C, .off = far * C };
  start_held_write (&ra);
  memset (x, 'q', C);
  CHECK (bdev_pwrite (bd, x, C, 1 * C, 0) == 0);
  gate_fail_flush = 3;                  /* the header's flush */
  CHECK (bdev_flush (bd) == -1 && errno == EIO);
  __atomic_store_n (&gate_open, 1, __ATOMIC_SEQ_CST);
  pthread_join (ra.th, NULL);
  CHECK (ra.r == 0);
  CHECK (bdev_flush (bd) == 0);         /* the header, then A's commit */
  memset (x, 'y', C);
  CHECK (bdev_pwrite (bd, x, C, 2 * C, 0) == 0);      /* reuses physical 1 */
  CHECK (bdev_flush (bd) == 0);
  bdev_close (bd);
  CHECK_EQ_U64 (check_pool (false), 0);
  bd = open_gated_thin (2048ull * C);
  chunk_is (bd, far, 0);
  chunk_is (bd, far + 1, 'a');
  chunk_is (bd, 2, 'y');
  bdev_close (bd);
  __atomic_store_n (&gate_open, 0, __ATOMIC_SEQ_CST);
  free (a);
  free (x);
}

/* A device whose first 8 KiB are zero but whose metadata area is not
 * (here: a btrfs superblock at 64 KiB) is refused, and left as it was.
 */
static void
no_format_over_data (void)
{
  static const char magic[] = "_BHRfS_M";
  char back[8];
  unlink (pool_path);
  int fd = open (pool_path, O_CREAT | O_RDWR, 0644);
  CHECK (fd >= 0 && ftruncate (fd, 64 << 20) == 0);
  CHECK (pwrite (fd, magic, 8, 65536 + 0x40) == 8);
  close (fd);
  struct bdev_open_opts o = { 0 };
  struct bdev *pool = bdev_file_open (pool_path, &o);
  CHECK (pool);
  struct thin_opts t = {
    .virtual_size = 64ull << 30, .chunk_size = C, .format = true,
  };
  errno = 0;
  CHECK (thin_open (pool, &t) == NULL && errno == EINVAL);
  CHECK ((fd = open (pool_path, O_RDONLY)) >= 0);
  CHECK (pread (fd, back, 8, 65536 + 0x40) == 8);
  CHECK (memcmp (back, magic, 8) == 0);
  char head[8192], zero[8192] = { 0 };
  CHECK (pread (fd, head, sizeof head, 0) == sizeof head);
  CHECK (memcmp (head, zero, sizeof head) == 0);
  close (fd);
}

/* A virtual size that is not a multiple of the chunk size: a trim of the
 * whole last (short) chunk releases it, as a zero does.
 */
static void
short_last_chunk (void)
{
  const uint64_t vsize = 4 * C + 4096;
  char buf[4096];
  struct thin_stats st;
  unlink (pool_path);
  int fd = open (pool_path, O_CREAT | O_RDWR, 0644);
  CHECK (fd >= 0 && ftruncate (fd, POOL) == 0);
  close (fd);
  struct bdev_open_opts o = { 0 };
  struct bdev *pool = bdev_file_open (pool_path, &o);
  CHECK (pool);
  struct thin_opts t = {
    .virtual_size = vsize, .chunk_size = C, .format = true,
  };
  struct bdev *bd = thin_open (pool, &t);
  CHECK (bd);
  memset (buf, 0x6b, sizeof buf);
  for (int zero = 0; zero < 2; zero++) {
    CHECK (bdev_pwrite (bd, buf, sizeof buf, 4 * C, 0) == 0);
    thin_get_stats (bd, &st);
    CHECK (st.mapped_chunks == 1);
    if (zero)
      CHECK (bdev_zero (bd, 4096, 4 * C, BDEV_MAY_TRIM) == 0);
    else
      CHECK (bdev_trim (bd, 4096, 4 * C, 0) == 0);
    thin_get_stats (bd, &st);
    CHECK (st.mapped_chunks == 0);
    CHECK (bdev_pread (bd, buf, sizeof buf, 4 * C) == 0);
    for (size_t i = 0; i < sizeof buf; i++)
      CHECK (buf[i] == 0);
    memset (buf, 0x6b, sizeof buf);
  }
  bdev_close (bd);
  CHECK (check_pool (false) == 0);
}

/* A format cut short by a crash after the bodies and before the headers
 * (here: headers zeroed again, and the second half of the area too): the
 * next open formats the pool again.  A body block that is neither zero
 * nor what the format writes is still refused.
 */
static void
interrupted_format (void)
{
  char buf[8192] = { 0 };
  unlink (pool_path);
  int fd = open (pool_path, O_CREAT | O_RDWR, 0644);
  CHECK (fd >= 0 && ftruncate (fd, POOL) == 0);
  struct bdev_open_opts o = { 0 };
  struct thin_opts t = {
    .virtual_size = VSIZE, .chunk_size = C, .format = true,
  };
  struct bdev *pool = bdev_file_open (pool_path, &o);
  CHECK (pool);
  struct bdev *bd = thin_open (pool, &t);
  CHECK (bd);
  bdev_close (bd);
  CHECK (pwrite (fd, buf, sizeof buf, 0) == sizeof buf);  /* headers */
  CHECK (pwrite (fd, buf, sizeof buf, 3 * TBLK_TEST) == sizeof buf);
  CHECK ((pool = bdev_file_open (pool_path, &o)) != NULL);
  CHECK ((bd = thin_open (pool, &t)) != NULL);
  memset (buf, 0x3c, 4096);
  CHECK (bdev_pwrite (bd, buf, 4096, 0, 0) == 0);
  bdev_close (bd);
  CHECK (check_pool (false) == 0);

  /* Headers zero, a body block changed: no pool of ours, refused. */
  memset (buf, 0, sizeof buf);
  CHECK (ftruncate (fd, 0) == 0 && ftruncate (fd, POOL) == 0);
  CHECK ((pool = bdev_file_open (pool_path, &o)) != NULL);
  CHECK ((bd = thin_open (pool, &t)) != NULL);
  bdev_close (bd);
  CHECK (pwrite (fd, buf, sizeof buf, 0) == sizeof buf);
  CHECK (pwrite (fd, "x", 1, 2 * TBLK_TEST + 100) == 1);
  CHECK ((pool = bdev_file_open (pool_path, &o)) != NULL);
  errno = 0;
  CHECK (thin_open (pool, &t) == NULL && errno == EINVAL);
  close (fd);
}

int
main (void)
{
  CHECK (mkdtemp (dir));
  snprintf (pool_path, sizeof pool_path, "%s/pool", dir);
  snprintf (meta_path, sizeof meta_path, "%s/meta", dir);
  run (false);
  run (true);
  race_write_trim_write (false);
  race_write_trim_write (true);
  header_flush_fails ();
  header_pending_release ();
  header_pending_inflight_write ();
  header_pending_inflight_release ();
  no_format_over_data ();
  short_last_chunk ();
  interrupted_format ();
  unlink (pool_path);
  unlink (meta_path);
  rmdir (dir);
  printf ("PASS\n");
  return 0;
}
