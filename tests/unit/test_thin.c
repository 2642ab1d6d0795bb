/* SPDX-License-Identifier: BSD-3-Clause */
/* The thin engine over bdev_file: concurrent writers, rewriters, zeroes
 * and trims against per-thread mirrors; racing allocations of the same
 * chunks; ENOSPC; watermark once per crossing; reopen (internal and
 * separate metadata); thin_check finds the result clean.
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

#define C 65536u
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

int
main (void)
{
  CHECK (mkdtemp (dir));
  snprintf (pool_path, sizeof pool_path, "%s/pool", dir);
  snprintf (meta_path, sizeof meta_path, "%s/meta", dir);
  run (false);
  run (true);
  unlink (pool_path);
  unlink (meta_path);
  rmdir (dir);
  printf ("PASS\n");
  return 0;
}
