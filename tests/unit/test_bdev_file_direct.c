/* SPDX-License-Identifier: BSD-3-Clause */
/* The raw file backend under O_DIRECT: concurrent unaligned writes into
 * the same blocks go through read-modify-write of whole blocks and must
 * not lose each other's bytes; nor may an aligned write, trim or zero of
 * a block be undone by a concurrent read-modify-write of it.  A write
 * into a last block that the end cuts short is done as asked (no
 * rounding past the end of a file or a block device).
 *
 * Needs a file system with O_DIRECT (tmpfs has none): the file is made
 * in $TMPDIR or /var/tmp.  Without O_DIRECT the test is skipped (exit
 * 77), except when CI=true, where it fails.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/stat.h>

#include "bdev/bdev.h"
#include "check.h"

#define BLOCK 4096
#define NBLOCKS 8
#define SIZE (NBLOCKS * BLOCK)
#define NTHREADS 8
#define ROUNDS 150

/* Thread T owns bytes [slice_start (T), slice_start (T + 1)) of every
 * block: odd sizes and offsets, so every write is unaligned.
 */
static unsigned
slice_start (unsigned t)
{
  return t == 0 ? 0 : t == NTHREADS ? BLOCK : 13 + t * (BLOCK / NTHREADS);
}

static uint8_t
pattern (unsigned t, unsigned round, unsigned block)
{
  return (uint8_t) (1 + t * 31 + round * 7 + block * 3);
}

static struct bdev *bd;
static pthread_barrier_t barrier;

struct worker {
  pthread_t thread;
  unsigned t;
  int err;
};

static void *
worker (void *opaque)
{
  struct worker *w = opaque;
  unsigned len = slice_start (w->t + 1) - slice_start (w->t);
  uint8_t buf[BLOCK];

  for (unsigned r = 0; r < ROUNDS; r++) {
    pthread_barrier_wait (&barrier);   /* start together */
    for (unsigned i = 0; i < NBLOCKS; i++) {
      /* Each thread walks the blocks in its own order. */
      unsigned b = (i + w->t * 3) % NBLOCKS;
      memset (buf, pattern (w->t, r, b), len);
      if (bdev_pwrite (bd, buf, len,
                       (uint64_t) b * BLOCK + slice_start (w->t), 0) == -1)
        w->err = errno ? errno : EIO;
    }
    pthread_barrier_wait (&barrier);   /* main thread checks */
    pthread_barrier_wait (&barrier);
  }
  return NULL;
}

/* Every byte of every block holds what its owner wrote in round R. */
static unsigned
count_lost (unsigned r)
{
  static uint8_t data[SIZE];
  unsigned lost = 0;
  CHECK (bdev_pread (bd, data, SIZE, 0) == 0);
  for (unsigned b = 0; b < NBLOCKS; b++)
    for (unsigned t = 0; t < NTHREADS; t++) {
      uint8_t want = pattern (t, r, b);
      for (unsigned i = slice_start (t); i < slice_start (t + 1); i++)
        if (data[b * BLOCK + i] != want) {
          lost++;               /* one lost slice */
          break;
        }
    }
  return lost;
}

static void
test_unaligned_writes (void)
{
  struct worker w[NTHREADS];
  unsigned lost = 0, bad_rounds = 0;

  CHECK (pthread_barrier_init (&barrier, NULL, NTHREADS + 1) == 0);
  for (unsigned t = 0; t < NTHREADS; t++) {
    w[t] = (struct worker) { .t = t };
    CHECK (pthread_create (&w[t].thread, NULL, worker, &w[t]) == 0);
  }
  for (unsigned r = 0; r < ROUNDS; r++) {
    pthread_barrier_wait (&barrier);
    pthread_barrier_wait (&barrier);
    unsigned n = count_lost (r);
    lost += n;
    bad_rounds += n > 0;
    pthread_barrier_wait (&barrier);
  }
  for (unsigned t = 0; t < NTHREADS; t++) {
    CHECK (pthread_join (w[t].thread, NULL) == 0);
    errno = w[t].err;
    CHECK (w[t].err == 0);
  }
  pthread_barrier_destroy (&barrier);
  if (lost)
    fprintf (stderr, "concurrent unaligned O_DIRECT writes: %u slices lost "
             "in %u of %d rounds\n", lost, bad_rounds, ROUNDS);
  CHECK (lost == 0);
}

/* An unaligned writer of one byte per block against a thread that writes
 * whole blocks, trims and zeroes them: once the block thread has changed
 * a block, its content apart from the byte must stay what it wrote.
 */
#define MIXED_ROUNDS 400

static void *
byte_writer (void *opaque)
{
  (void) opaque;
  for (unsigned r = 0; r < MIXED_ROUNDS; r++) {
    uint8_t v = 0xee;
    for (unsigned b = 0; b < NBLOCKS; b++)
      CHECK (bdev_pwrite (bd, &v, 1, (uint64_t) b * BLOCK + 100, 0) == 0);
  }
  return NULL;
}

static void
test_mixed (void)
{
  static uint8_t *blk, data[BLOCK];
  pthread_t th;
  unsigned bad = 0;

  CHECK (posix_memalign ((void **) &blk, BLOCK, BLOCK) == 0);
  CHECK (pthread_create (&th, NULL, byte_writer, NULL) == 0);
  for (unsigned r = 0; r < MIXED_ROUNDS; r++) {
    unsigned b = r % NBLOCKS;
    uint64_t off = (uint64_t) b * BLOCK;
    uint8_t want = (uint8_t) (r + 1);
    switch (r % 3) {
    case 0:
      memset (blk, want, BLOCK);
      CHECK (bdev_pwrite (bd, blk, BLOCK, off, 0) == 0);
      break;
    case 1:
      want = 0;
      CHECK (bdev_zero (bd, BLOCK, off, 0) == 0);
      break;
    case 2:
      want = 0;
      CHECK (bdev_zero (bd, BLOCK, off, BDEV_MAY_TRIM) == 0);
      break;
    }
    CHECK (bdev_pread (bd, data, BLOCK, off) == 0);
    for (unsigned i = 0; i < BLOCK; i++)
      if (i != 100 && data[i] != want) {
        bad++;
        break;
      }
  }
  CHECK (pthread_join (th, NULL) == 0);
  free (blk);
  if (bad)
    fprintf (stderr, "aligned write/zero undone by a concurrent "
             "read-modify-write in %u of %d rounds\n", bad, MIXED_ROUNDS);
  CHECK (bad == 0);
}

/* An unaligned write into the last block, which the end cuts short (a
 * file, or a block device whose size is not a multiple of 4096): done
 * exactly as asked, the size unchanged.  PATH is SIZE bytes long and
 * holds zeroes.
 */
static void
check_tail (const char *path, uint64_t size, bool growable)
{
  struct bdev_open_opts o = { .direct = true, .growable = growable };
  struct bdev *t = bdev_file_open (path, &o);
  uint8_t a[100], b[700], got[1000];
  CHECK (t != NULL);
  memset (a, 0xa5, sizeof a);
  memset (b, 0x5a, sizeof b);
  CHECK (bdev_pwrite (t, a, sizeof a, size - sizeof a, 0) == 0);
  CHECK (bdev_pwrite (t, b, sizeof b, size - 1000, BDEV_FUA) == 0);
  CHECK (bdev_size (t) == size);
  CHECK (bdev_pread (t, got, sizeof got, size - sizeof got) == 0);
  CHECK (memcmp (got, b, sizeof b) == 0);
  CHECK (got[700] == 0 && got[899] == 0);
  CHECK (memcmp (got + 900, a, sizeof a) == 0);
  bdev_close (t);

  /* Through the page cache, and the size on disk. */
  int fd = open (path, O_RDONLY);
  struct stat st;
  CHECK (fd >= 0);
  CHECK (pread (fd, got, sizeof got, size - sizeof got) == sizeof got);
  CHECK (memcmp (got, b, sizeof b) == 0 && memcmp (got + 900, a, sizeof a) == 0);
  CHECK (fstat (fd, &st) == 0);
  if (S_ISREG (st.st_mode))
    CHECK ((uint64_t) st.st_size == size);
  close (fd);
}

/* On the loop device: an aligned write of block 7 against a write that
 * starts inside block 7 and runs to the end (through the page cache):
 * the kernel rewrites block 7's page for the second one, which must not
 * undo the first one's bytes.
 */
#define TAIL_ROUNDS 20000
static struct bdev *tail_bd;
static uint64_t tail_size;

static void *
tail_writer (void *opaque)
{
  uint8_t buf[4096];
  (void) opaque;
  for (unsigned r = 0; r < TAIL_ROUNDS; r++) {
    pthread_barrier_wait (&barrier);
    memset (buf, 0xc3, sizeof buf);
    CHECK (bdev_pwrite (tail_bd, buf, tail_size - 32000, 32000, 0) == 0);
    pthread_barrier_wait (&barrier);
  }
  return NULL;
}

static void
check_tail_race (const char *dev, uint64_t size)
{
  struct bdev_open_opts o = { .direct = true };
  uint8_t *blk, got[4096];
  pthread_t th;
  unsigned bad = 0;
  tail_size = size;
  CHECK ((tail_bd = bdev_file_open (dev, &o)) != NULL);
  CHECK (posix_memalign ((void **) &blk, BLOCK, BLOCK) == 0);
  CHECK (pthread_barrier_init (&barrier, NULL, 2) == 0);
  CHECK (pthread_create (&th, NULL, tail_writer, NULL) == 0);
  for (unsigned r = 0; r < TAIL_ROUNDS; r++) {
    uint8_t v = (uint8_t) (r % 250 + 1);
    memset (blk, v, BLOCK);
    pthread_barrier_wait (&barrier);
    CHECK (bdev_pwrite (tail_bd, blk, BLOCK, 7 * BLOCK, 0) == 0);
    pthread_barrier_wait (&barrier);
    CHECK (bdev_pread (tail_bd, got, sizeof got, 7 * BLOCK) == 0);
    for (unsigned i = 0; i < 32000 - 7 * BLOCK; i++)
      if (got[i] != v) {
        bad++;
        break;
      }
  }
  CHECK (pthread_join (th, NULL) == 0);
  pthread_barrier_destroy (&barrier);
  free (blk);
  bdev_close (tail_bd);
  if (bad)
    fprintf (stderr, "aligned write undone by a write to the end in %u of "
             "%d rounds\n", bad, TAIL_ROUNDS);
  CHECK (bad == 0);
}

/* The loop device and its file, removed at exit even when a check
 * fails (CHECK exits).
 */
static char loop_dev[256], loop_file[4096];

static void
loop_cleanup (void)
{
  char cmd[300];
  if (loop_dev[0]) {
    snprintf (cmd, sizeof cmd, "losetup -d '%s'", loop_dev);
    if (system (cmd) != 0)
      fprintf (stderr, "%s: could not detach\n", loop_dev);
    loop_dev[0] = '\0';
  }
  if (loop_file[0])
    unlink (loop_file);
}

/* A regular file of 8 blocks and 3 sectors; a loop device over one (as
 * root, where losetup works: always under CI=true).
 */
static void
test_tail (const char *dir, bool ci)
{
  char cmd[4200];
  uint64_t size = SIZE + 1536;
  snprintf (loop_file, sizeof loop_file, "%s/bdevtailXXXXXX", dir);
  int fd = mkstemp (loop_file);
  CHECK (fd >= 0);
  atexit (loop_cleanup);
  CHECK (ftruncate (fd, size) == 0);
  close (fd);
  check_tail (loop_file, size, false);
  CHECK (truncate (loop_file, 0) == 0 && truncate (loop_file, size) == 0);
  check_tail (loop_file, size, true);

  CHECK (truncate (loop_file, 0) == 0 && truncate (loop_file, size) == 0);
  snprintf (cmd, sizeof cmd, "losetup -f --show '%s' 2>/dev/null", loop_file);
  FILE *p = geteuid () == 0 ? popen (cmd, "r") : NULL;
  if (p) {
    if (!fgets (loop_dev, sizeof loop_dev, p))
      loop_dev[0] = '\0';
    pclose (p);
    loop_dev[strcspn (loop_dev, "\n")] = '\0';
  }
  if (!loop_dev[0]) {
    if (ci) {
      fprintf (stderr, "no loop device (losetup, as root), and CI=true\n");
      exit (1);
    }
    printf ("no loop device: the block device tail case is skipped\n");
    return;
  }
  check_tail (loop_dev, size, false);
  check_tail_race (loop_dev, size);
  /* A loop device has WRITE ZEROES (here): a fast zero works. */
  struct bdev_open_opts o = { 0 };
  struct bdev *l = bdev_file_open (loop_dev, &o);
  uint8_t got[4096];
  CHECK (l != NULL);
  memset (got, 0x77, sizeof got);
  CHECK (bdev_pwrite (l, got, sizeof got, SIZE - 4096, 0) == 0);
  CHECK (bdev_zero (l, 4096, SIZE - 4096, BDEV_FAST_ZERO) == 0);
  CHECK (bdev_pread (l, got, sizeof got, SIZE - 4096) == 0);
  for (size_t i = 0; i < sizeof got; i++)
    CHECK (got[i] == 0);
  bdev_close (l);
}

/* Can PATH be written with O_DIRECT? */
static bool
direct_works (const char *path)
{
  void *p;
  int fd = open (path, O_RDWR | O_DIRECT);
  bool ok = false;
  if (fd == -1)
    return false;
  if (posix_memalign (&p, BLOCK, BLOCK) == 0) {
    memset (p, 0, BLOCK);
    ok = pwrite (fd, p, BLOCK, 0) == BLOCK && pread (fd, p, BLOCK, 0) == BLOCK;
    free (p);
  }
  close (fd);
  return ok;
}

int
main (void)
{
  const char *dir = getenv ("TMPDIR");
  char path[4096];
  snprintf (path, sizeof path, "%s/bdevdirectXXXXXX",
            dir && *dir ? dir : "/var/tmp");
  int fd = mkstemp (path);
  const char *ci = getenv ("CI");
  CHECK (fd >= 0);
  CHECK (ftruncate (fd, SIZE) == 0);
  close (fd);

  if (!direct_works (path)) {
    unlink (path);
    if (ci && strcmp (ci, "true") == 0) {
      fprintf (stderr, "%s: O_DIRECT does not work here, and CI=true\n",
               path);
      return 1;
    }
    printf ("%s: no O_DIRECT on this file system: skipped\n", path);
    return 77;
  }

  struct bdev_open_opts o = { .direct = true };
  bd = bdev_file_open (path, &o);
  CHECK (bd != NULL);
  unlink (path);                /* nothing left behind if a check fails */
  test_unaligned_writes ();
  test_mixed ();
  bdev_close (bd);
  test_tail (dir && *dir ? dir : "/var/tmp", ci && strcmp (ci, "true") == 0);
  printf ("bdev file backend, O_DIRECT concurrency: ok\n");
  return 0;
}
