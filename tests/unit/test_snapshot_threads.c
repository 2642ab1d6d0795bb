/* SPDX-License-Identifier: BSD-3-Clause */
/* The snapshot engine under concurrent I/O, as nbdkit's PARALLEL thread
 * model drives it: while several threads read, write, zero, trim and
 * flush the chain (tests/unit/stress.h), another creates, lists, views,
 * deletes and commits snapshots; the chain must still equal the model.
 * Then readers check every block against the two contents the chain may
 * have (snapshot "base" and snapshot "new") while the other thread
 * reverts to "new", creates and deletes snapshots over it, reads a view
 * of "base", and finally reverts to "base".  Under -DSANITIZE=thread
 * this is the race detector's test of the engine.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bdev/bdev.h"
#include "snapshot/snapshot.h"
#include "stress.h"

#define SIZE (8u << 20)
#define B 4096u

static char dir[] = "/tmp/snapthrXXXXXX";
static char below_path[300], chain_dir[300];
static struct snap_chain *chain;
static int stop;

static int
count_fn (void *opaque, const struct snap_info *info)
{
  (void) info;
  (*(int *) opaque)++;
  return 0;
}

/* Phase 1: operations on the chain while the stress threads run. */
static void *
ops_during_io (void *arg)
{
  (void) arg;
  char name[32];
  int made = 0, committed = 0;
  uint8_t *buf = malloc (65536);
  CHECK (buf);
  while (!__atomic_load_n (&stop, __ATOMIC_ACQUIRE)) {
    snprintf (name, sizeof name, "s%d", made);
    CHECK (snap_create (chain, name) == 0);
    made++;
    int n = 0;
    CHECK (snap_list (chain, count_fn, &n) == 0);
    CHECK (n >= 1);
    struct bdev *v = snap_view_open (chain, name);
    CHECK (v);
    CHECK (bdev_pread (v, buf, 65536, (made * 65536u) % SIZE) == 0);
    bdev_close (v);
    if (made % 3 == 0 && made - 2 >= committed) {
      /* delete an older one (merges a layer) */
      snprintf (name, sizeof name, "s%d", made - 2);
      CHECK (snap_delete (chain, name) == 0);
    }
    if (made % 7 == 0) {        /* write everything below, drop all */
      CHECK (snap_commit (chain) == 0);
      committed = made;
    }
    usleep (20000);
  }
  free (buf);
  printf ("phase 1: %d snapshots created during I/O\n", made);
  return NULL;
}

static uint8_t *p1, *p2;        /* contents of "base" and "new" */

struct reader { unsigned seed; unsigned long n; pthread_t th; };

/* Phase 2: every block read is entirely that of "base" or of "new". */
static void *
reader (void *arg)
{
  struct reader *r = arg;
  uint8_t *buf = malloc (B);
  CHECK (buf);
  struct bdev *bd = snap_chain_bdev (chain);
  while (!__atomic_load_n (&stop, __ATOMIC_ACQUIRE)) {
    uint64_t off = (uint64_t) (stress_rand (&r->seed) % (SIZE / B)) * B;
    CHECK (bdev_pread (bd, buf, B, off) == 0);
    if (memcmp (buf, p1 + off, B) != 0 && memcmp (buf, p2 + off, B) != 0) {
      fprintf (stderr, "block at %llu is neither snapshot's content\n",
               (unsigned long long) off);
      exit (1);
    }
    r->n++;
  }
  free (buf);
  return NULL;
}

int
main (void)
{
  CHECK (mkdtemp (dir));
  snprintf (below_path, sizeof below_path, "%s/below.raw", dir);
  snprintf (chain_dir, sizeof chain_dir, "%s/chain", dir);
  uint8_t *below = malloc (SIZE);
  CHECK (below);
  unsigned s = 5;
  stress_fill (below, SIZE, &s);
  FILE *fp = fopen (below_path, "w");
  CHECK (fp && fwrite (below, 1, SIZE, fp) == SIZE && fclose (fp) == 0);

  struct bdev_open_opts o = { 0 };
  struct bdev *bb = bdev_file_open (below_path, &o);
  CHECK (bb);
  CHECK ((chain = snap_chain_open (chain_dir, bb, NULL)));
  struct bdev *bd = snap_chain_bdev (chain);

  /* Phase 1. */
  struct stress_opts so = { .threads = 3, .ops = 500, .block = B,
                            .span = SIZE, .sub = 512, .zero = true,
                            .trim = true, .seed = 31 };
  struct stress_model m;
  stress_model_init (&m, &so, below);
  pthread_t ops;
  CHECK (pthread_create (&ops, NULL, ops_during_io, NULL) == 0);
  stress_run (bd, &so, &m, "snapshot chain");
  __atomic_store_n (&stop, 1, __ATOMIC_RELEASE);
  CHECK (pthread_join (ops, NULL) == 0);
  stress_check (bd, &m, "chain after phase 1");
  stress_settle (bd, &m);

  /* Phase 2: "base" = the model now, "new" = fresh data everywhere. */
  p1 = malloc (SIZE);
  p2 = malloc (SIZE);
  CHECK (p1 && p2);
  memcpy (p1, m.data, SIZE);
  stress_fill (p2, SIZE, &s);
  CHECK (snap_create (chain, "base") == 0);
  CHECK (bdev_pwrite (bd, p2, SIZE, 0, 0) == 0);
  CHECK (snap_create (chain, "new") == 0);

  __atomic_store_n (&stop, 0, __ATOMIC_RELEASE);
  struct reader rd[3];
  for (unsigned i = 0; i < 3; i++) {
    rd[i] = (struct reader) { .seed = 1000 + i };
    CHECK (pthread_create (&rd[i].th, NULL, reader, &rd[i]) == 0);
  }
  uint8_t *vbuf = malloc (SIZE);
  CHECK (vbuf);
  for (int k = 0; k < 8; k++) {
    CHECK (snap_revert (chain, "new") == 0);
    CHECK (snap_create (chain, "tmp") == 0);
    struct bdev *v = snap_view_open (chain, "base");
    CHECK (v);
    CHECK (bdev_pread (v, vbuf, SIZE, 0) == 0);
    CHECK (memcmp (vbuf, p1, SIZE) == 0);
    bdev_close (v);
    CHECK (snap_delete (chain, "tmp") == 0);
  }
  CHECK (snap_revert (chain, "base") == 0);
  usleep (50000);
  __atomic_store_n (&stop, 1, __ATOMIC_RELEASE);
  unsigned long reads = 0;
  for (unsigned i = 0; i < 3; i++) {
    CHECK (pthread_join (rd[i].th, NULL) == 0);
    reads += rd[i].n;
  }
  printf ("phase 2: %lu block reads during reverts\n", reads);
  CHECK (reads > 0);
  CHECK (bdev_pread (bd, vbuf, SIZE, 0) == 0);
  CHECK (memcmp (vbuf, p1, SIZE) == 0);
  snap_chain_close (chain);

  /* Reopened: still "base". */
  CHECK ((bb = bdev_file_open (below_path, &o)));
  CHECK ((chain = snap_chain_open (chain_dir, bb, NULL)));
  CHECK (bdev_pread (snap_chain_bdev (chain), vbuf, SIZE, 0) == 0);
  CHECK (memcmp (vbuf, p1, SIZE) == 0);
  snap_chain_close (chain);

  free (vbuf);
  free (p1);
  free (p2);
  free (below);
  stress_model_free (&m);
  char cmd[400];
  snprintf (cmd, sizeof cmd, "rm -rf '%s'", dir);
  CHECK (system (cmd) == 0);
  return 0;
}
