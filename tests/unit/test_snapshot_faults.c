/* SPDX-License-Identifier: BSD-3-Clause */
/* The snapshot engine (common/snapshot) under I/O errors from everything
 * below it, during its operations (create, revert, delete, commit, open):
 * the layer files (every file the qcow2 engine opens, through
 * bdev_storage_open), the device below, and fsync of files and of the
 * overlay directory (-Wl,--wrap=fsync).
 *
 * Crash model: the state file's name binding (a rename into the overlay
 * directory) is durable only once the directory has been fsynced with
 * success afterwards.  The test records the state file's content at every
 * successful fsync of the overlay directory; a "crash" puts that content
 * back (or removes the file if none was ever made durable).
 *
 * Part 1 (deterministic): the directory sync after the state's rename
 * fails; the operation is kept (by design), writes to the new top layer
 * are then flushed with success, a crash follows: the flushed writes must
 * still be there.
 *
 * Part 2 (random): each step runs one operation with injection on (it may
 * fail); with injection off the chain must then show the old or the new
 * state of that operation (names of the snapshots, content of the chain
 * and of every snapshot), a failed commit must be finished by the next
 * commit; writes are made and flushed; sometimes a crash and a reopen
 * follow, after which exactly that state and every flushed write must be
 * there, no layer file may be left over, and qemu-img check must accept
 * every layer (leaks allowed).
 *
 * Usage: test_snapshot_faults [SEED [STEPS [PCT]]]
 * Environment: SNAPFAULT_ONLY=1|2|3 (one part), SNAPFAULT_KEEP=1.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "bdev/bdev.h"
#include "snapshot/snapshot.h"
#include "check.h"
#include "snapshot_layers.h"
#include "random_fail_bdev.h"

#define SIZE (4u << 20)
#define MAXS 10

static char tmpl[] = "/tmp/snapfaultXXXXXX";
static char below_path[256], dir[256], state_path[300];
static uint64_t rng = 0x9E3779B97F4A7C15ull;

static uint64_t
rnd (void)
{
  rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17;
  return rng;
}

/* ---- injection ------------------------------------------------------ */
static int inj_on;
static unsigned pct = 5;
static unsigned long n_inj;
static uint64_t irng = 88172645463325252ull;

static int
inject (void)
{
  if (!inj_on)
    return 0;
  irng ^= irng << 13; irng ^= irng >> 7; irng ^= irng << 17;
  if (irng % 1000 < pct * 10u) {
    n_inj++;
    return 1;
  }
  return 0;
}

/* ---- the crash model: the durable state file -------------------------- */
static struct stat dir_st;
static char *durable;           /* content; NULL: no state file durable */
static size_t durable_len;

static char *
slurp (const char *path, size_t *len)
{
  FILE *f = fopen (path, "r");
  if (!f)
    return NULL;
  char *buf = malloc (1 << 16);
  CHECK (buf);
  *len = fread (buf, 1, 1 << 16, f);
  fclose (f);
  return buf;
}

int __real_fsync (int fd);
int __wrap_fsync (int fd);
static int fail_dir_fsync_at;   /* fail the Nth fsync of the overlay dir */

int
__wrap_fsync (int fd)
{
  struct stat st;
  if (fail_dir_fsync_at && fstat (fd, &st) == 0 &&
      st.st_ino == dir_st.st_ino && st.st_dev == dir_st.st_dev &&
      --fail_dir_fsync_at == 0) {
    errno = EIO;
    return -1;
  }
  if (inject ()) {
    errno = EIO;
    return -1;
  }
  int r = __real_fsync (fd);
  if (r == 0 && dir_st.st_ino && fstat (fd, &st) == 0 &&
      st.st_ino == dir_st.st_ino && st.st_dev == dir_st.st_dev) {
    free (durable);
    durable = slurp (state_path, &durable_len);
  }
  return r;
}

/* A power loss: the state file as of the last successful directory sync
 * (file data was fsynced before every rename, so only the name binding
 * can go back).
 */
static void
crash (void)
{
  char tmp[320];
  snprintf (tmp, sizeof tmp, "%s.tmp", state_path);
  unlink (tmp);
  if (!durable) {
    unlink (state_path);
    return;
  }
  FILE *f = fopen (state_path, "w");
  CHECK (f);
  CHECK (fwrite (durable, 1, durable_len, f) == durable_len);
  CHECK (fclose (f) == 0);
}

/* ---- a device failing at random ------------------------------------- */
/* Part 3: the device below takes this many more bytes, then fails. */
static long long below_budget = -1;
#define TAG_BELOW 1

static enum rfail_verdict
fb_hook (struct rfail_bdev *f, enum rfail_op op, uint64_t count)
{
  if (f->tag == TAG_BELOW && below_budget >= 0 &&
      (op == RFAIL_WRITE || op == RFAIL_ZERO)) {
    if ((long long) count > below_budget)
      return RFAIL_REFUSE;
    below_budget -= count;
  }
  return inject () ? RFAIL_FAIL : RFAIL_PASS;
}

RFAIL_WRAP_STORAGE (fb_hook, rnd, 0)

/* ---- the model ------------------------------------------------------- */
struct model {
  uint8_t *cur;
  int n;
  char names[MAXS][16];
  uint8_t *data[MAXS];
};

static void
model_copy (struct model *dst, const struct model *src)
{
  dst->cur = malloc (SIZE);
  CHECK (dst->cur);
  memcpy (dst->cur, src->cur, SIZE);
  dst->n = src->n;
  for (int i = 0; i < src->n; i++) {
    strcpy (dst->names[i], src->names[i]);
    dst->data[i] = malloc (SIZE);
    CHECK (dst->data[i]);
    memcpy (dst->data[i], src->data[i], SIZE);
  }
}

static void
model_free (struct model *m)
{
  free (m->cur);
  for (int i = 0; i < m->n; i++)
    free (m->data[i]);
  m->n = 0;
  m->cur = NULL;
}

static struct bdev *
open_below (void)
{
  struct bdev_open_opts o = { 0 };
  struct bdev *b = bdev_file_open (below_path, &o);
  CHECK (b);
  b = rfail_wrap (b, fb_hook, rnd);
  ((struct rfail_bdev *) b)->tag = TAG_BELOW;
  return b;
}

struct names { int n; char v[MAXS + 1][SNAP_NAME_MAX + 1]; };

static int
name_cb (void *opaque, const struct snap_info *info)
{
  struct names *nm = opaque;
  CHECK (nm->n <= MAXS);
  strcpy (nm->v[nm->n++], info->name);
  return 0;
}

static int
same (struct bdev *bd, const uint8_t *want)
{
  static uint8_t *buf;
  if (!buf)
    CHECK ((buf = malloc (SIZE)));
  CHECK (bdev_pread (bd, buf, SIZE, 0) == 0);
  return memcmp (buf, want, SIZE) == 0;
}

/* Does the chain (injection off) show M exactly? */
static int
shows (struct snap_chain *c, const struct model *m)
{
  struct names nm = { 0 };
  CHECK (snap_list (c, name_cb, &nm) == 0);
  if (nm.n != m->n)
    return 0;
  for (int i = 0; i < m->n; i++)
    if (strcmp (nm.v[i], m->names[i]))
      return 0;
  if (!same (snap_chain_bdev (c), m->cur))
    return 0;
  for (int i = 0; i < m->n; i++) {
    struct bdev *v = snap_view_open (c, m->names[i]);
    CHECK (v);
    int ok = same (v, m->data[i]);
    bdev_close (v);
    if (!ok)
      return 0;
  }
  return 1;
}

static void
random_writes (struct bdev *bd, struct model *m, int n)
{
  static uint8_t buf[200000];
  for (int k = 0; k < n; k++) {
    uint64_t len = 1 + rnd () % sizeof buf;
    uint64_t off = rnd () % (SIZE - len);
    if (rnd () % 5 == 0) {
      CHECK (bdev_zero (bd, len, off, BDEV_MAY_TRIM) == 0);
      memset (m->cur + off, 0, len);
    }
    else {
      for (uint64_t i = 0; i < len; i++)
        buf[i] = rnd ();
      CHECK (bdev_pwrite (bd, buf, len, off, 0) == 0);
      memcpy (m->cur + off, buf, len);
    }
  }
}

static int
count_layer_files (void)
{
  return count_layer_files_in (dir);
}

static void
qemu_img_check_all (void)
{
  DIR *d = opendir (dir);
  struct dirent *e;
  CHECK (d);
  while ((e = readdir (d))) {
    if (strncmp (e->d_name, "layer-", 6))
      continue;
    char cmd[700];
    snprintf (cmd, sizeof cmd, "qemu-img check -q '%s/%s' >/dev/null 2>&1",
              dir, e->d_name);
    int st = system (cmd);
    /* 0: clean, 3: leaked clusters only */
    if (!(WIFEXITED (st) && (WEXITSTATUS (st) == 0 ||
                             WEXITSTATUS (st) == 3))) {
      snprintf (cmd, sizeof cmd, "qemu-img check '%s/%s'", dir, e->d_name);
      (void) system (cmd);
      fprintf (stderr, "qemu-img check rejects %s\n", e->d_name);
      exit (1);
    }
  }
  closedir (d);
}

static unsigned long failed_opens;

/* A crash, then open (recovery) with injection on half the time; a failed
 * open is retried with injection off.
 */
static struct snap_chain *
reopen_after_crash (struct snap_chain *c)
{
  /* The crash first: closing would flush and sync what a power loss
   * does not wait for.
   */
  crash ();
  if (c)
    snap_chain_close (c);
  crash ();
  if (rnd () % 2) {
    inj_on = 1;
    c = snap_chain_open (dir, open_below (), NULL);
    inj_on = 0;
    if (c)
      return c;
    failed_opens++;
    crash ();                   /* what a failed open made durable */
  }
  c = snap_chain_open (dir, open_below (), NULL);
  CHECK (c);
  return c;
}

/* M's current content: what the device below holds now. */
static void
model_from_below (struct model *m)
{
  CHECK ((m->cur = malloc (SIZE)));
  struct bdev *b = open_below ();
  CHECK (bdev_pread (b, m->cur, SIZE, 0) == 0);
  bdev_close (b);
}

/* ---- part 1 ----------------------------------------------------------- */

static void
part1 (void)
{
  struct model m = { 0 };
  model_from_below (&m);

  struct snap_chain *c = snap_chain_open (dir, open_below (), NULL);
  CHECK (c);
  random_writes (snap_chain_bdev (c), &m, 10);
  CHECK (bdev_flush (snap_chain_bdev (c)) == 0);

  /* snap_create syncs the directory twice: for the new layer's file,
   * then after the state's rename.  Fail the second.
   */
  fail_dir_fsync_at = 2;
  CHECK (snap_create (c, "p1") == 0);
  CHECK (fail_dir_fsync_at == 0);
  /* Writes to the new top, flushed with success: they must survive. */
  random_writes (snap_chain_bdev (c), &m, 10);
  CHECK (bdev_flush (snap_chain_bdev (c)) == 0);
  c = reopen_after_crash (c);
  if (!same (snap_chain_bdev (c), m.cur)) {
    fprintf (stderr, "part 1: writes flushed with success after a "
             "snapshot whose state's directory sync failed are lost "
             "by a crash\n");
    exit (1);
  }
  /* Back to an empty chain for part 2. */
  CHECK (snap_commit (c) == 0);
  snap_chain_close (c);
  model_free (&m);
}

/* ---- part 3 ----------------------------------------------------------- */
/* The directory sync after the rename of the state marked "committing"
 * fails, then the commit fails part-way into the device below, then a
 * crash: the chain must show the state before the commit (snapshot
 * included) or after it, never the old state over a device below that
 * the commit has partly overwritten.
 */
static void
part3 (void)
{
  struct model old = { 0 }, nw;
  model_from_below (&old);
  struct snap_chain *c = snap_chain_open (dir, open_below (), NULL);
  CHECK (c);
  CHECK (shows (c, &old));
  CHECK (snap_create (c, "q1") == 0);
  strcpy (old.names[0], "q1");
  CHECK ((old.data[0] = malloc (SIZE)));
  memcpy (old.data[0], old.cur, SIZE);
  old.n = 1;
  {
    static uint8_t x[1 << 20];
    memset (x, 'Q', sizeof x);
    CHECK (bdev_pwrite (snap_chain_bdev (c), x, sizeof x, 0, 0) == 0);
    CHECK (bdev_pwrite (snap_chain_bdev (c), x, sizeof x, 3 << 20, 0) == 0);
    memcpy (old.cur, x, sizeof x);
    memcpy (old.cur + (3 << 20), x, sizeof x);
  }
  CHECK (bdev_flush (snap_chain_bdev (c)) == 0);
  CHECK (shows (c, &old));
  model_copy (&nw, &old);
  while (nw.n)
    free (nw.data[--nw.n]);

  fail_dir_fsync_at = 1;        /* the sync after the "committing" rename */
  below_budget = 1 << 20;       /* the first MiB goes below, then EIO */
  CHECK (snap_commit (c) == -1);
  below_budget = -1;
  fail_dir_fsync_at = 0;
  crash ();                     /* before close, which may sync */
  snap_chain_close (c);
  crash ();
  c = snap_chain_open (dir, open_below (), NULL);
  CHECK (c);
  if (!shows (c, &old) && !shows (c, &nw)) {
    fprintf (stderr, "part 3: a commit failed part-way after its "
             "\"committing\" state could not be synced; after a crash the "
             "chain shows neither the state before nor after the commit\n");
    exit (1);
  }
  CHECK (snap_commit (c) == 0);
  snap_chain_close (c);
  model_free (&old);
  model_free (&nw);
}

/* ---- part 2 ----------------------------------------------------------- */
static void
part2 (int steps)
{
  struct model m = { 0 }, nw;
  model_from_below (&m);
  struct snap_chain *c = snap_chain_open (dir, open_below (), NULL);
  CHECK (c);
  unsigned serial = 0;
  unsigned long fails = 0, crashes = 0;

  for (int step = 0; step < steps; step++) {
    random_writes (snap_chain_bdev (c), &m, 1 + rnd () % 4);
    CHECK (bdev_flush (snap_chain_bdev (c)) == 0);
    model_copy (&nw, &m);
    const char *what;
    char name[16];
    int op = rnd () % 8, r;
    if (m.n == 0)
      op = 0;
    else if (op < 3 && m.n >= MAXS)
      op = 5;
    inj_on = 1;
    switch (op) {
    case 0: case 1: case 2:
      what = "create";
      snprintf (name, sizeof name, "s%u", serial++);
      r = snap_create (c, name);
      strcpy (nw.names[nw.n], name);
      CHECK ((nw.data[nw.n] = malloc (SIZE)));
      memcpy (nw.data[nw.n++], nw.cur, SIZE);
      break;
    case 3: case 4: {
      what = "revert";
      int i = rnd () % m.n;
      strcpy (name, m.names[i]);
      r = snap_revert (c, name);
      memcpy (nw.cur, nw.data[i], SIZE);
      while (nw.n > i + 1)
        free (nw.data[--nw.n]);
      break;
    }
    case 5: case 6: {
      what = "delete";
      int i = rnd () % m.n;
      strcpy (name, m.names[i]);
      r = snap_delete (c, name);
      free (nw.data[i]);
      memmove (&nw.data[i], &nw.data[i + 1],
               (nw.n - i - 1) * sizeof nw.data[0]);
      memmove (&nw.names[i], &nw.names[i + 1],
               (nw.n - i - 1) * sizeof nw.names[0]);
      nw.n--;
      break;
    }
    default:
      what = "commit";
      name[0] = '\0';
      r = snap_commit (c);
      while (nw.n)
        free (nw.data[--nw.n]);
      break;
    }
    inj_on = 0;
    if (r == -1) {
      fails++;
      if (op == 7) {
        /* Another commit, or a crash and the open that finishes it. */
        if (rnd () % 2) {
          CHECK (snap_commit (c) == 0);
          r = 0;
        }
        else {
          /* Old state if the "committing" mark never became durable,
           * else the commit finished by the open.
           */
          c = reopen_after_crash (c);
        }
      }
    }
    int is_new = shows (c, &nw);
    if (r == 0 && !is_new) {
      fprintf (stderr, "step %d: %s %s succeeded but the chain does not "
               "show its result\n", step, what, name);
      exit (1);
    }
    if (!is_new && !shows (c, &m)) {
      fprintf (stderr, "step %d: %s %s failed and the chain shows neither "
               "the old nor the new state\n", step, what, name);
      exit (1);
    }
    if (is_new) {
      model_free (&m);
      m = nw;
    }
    else
      model_free (&nw);
    /* Writes after the operation, flushed: they count. */
    random_writes (snap_chain_bdev (c), &m, 1 + rnd () % 3);
    CHECK (bdev_flush (snap_chain_bdev (c)) == 0);
    if (rnd () % 3 == 0) {
      crashes++;
      c = reopen_after_crash (c);
      if (!shows (c, &m)) {
        fprintf (stderr, "step %d: after %s %s (%s) and a crash, the "
                 "reopened chain differs from what was flushed\n", step,
                 what, name, r == 0 ? "succeeded" : "failed");
        exit (1);
      }
      if (count_layer_files () != m.n + 1) {
        fprintf (stderr, "step %d: %d layer files for %d layers\n", step,
                 count_layer_files (), m.n + 1);
        exit (1);
      }
      qemu_img_check_all ();
    }
  }
  snap_chain_close (c);
  model_free (&m);
  printf ("part 2: %d steps, %lu failed operations, %lu injected errors, "
          "%lu crashes, %lu failed opens\n", steps, fails, n_inj, crashes,
          failed_opens);
}

int
main (int argc, char **argv)
{
  int steps = 120;
  if (argc > 1)
    rng = irng = strtoull (argv[1], NULL, 0) * 0x9E3779B97F4A7C15ull + 1;
  if (argc > 2)
    steps = atoi (argv[2]);
  if (argc > 3)
    pct = atoi (argv[3]);

  CHECK (mkdtemp (tmpl));
  if (getenv ("SNAPFAULT_KEEP"))
    fprintf (stderr, "directory: %s\n", tmpl);
  snprintf (below_path, sizeof below_path, "%s/below.raw", tmpl);
  snprintf (dir, sizeof dir, "%s/overlay", tmpl);
  snprintf (state_path, sizeof state_path, "%s/%s", dir, SNAP_STATE_FILE);
  uint8_t *init = malloc (SIZE);
  CHECK (init);
  for (size_t i = 0; i < SIZE; i++)
    init[i] = rnd ();
  int fd = open (below_path, O_CREAT | O_WRONLY | O_TRUNC, 0600);
  CHECK (fd >= 0 && write (fd, init, SIZE) == SIZE);
  close (fd);
  free (init);

  CHECK (mkdir (dir, 0700) == 0);
  CHECK (stat (dir, &dir_st) == 0);
  /* SNAPFAULT_ONLY=N runs part N alone. */
  const char *only = getenv ("SNAPFAULT_ONLY");
  if (!only || atoi (only) == 1)
    part1 ();
  if (!only || atoi (only) == 3)
    part3 ();
  if (!only || atoi (only) == 2)
    part2 (steps);

  char cmd[300];
  snprintf (cmd, sizeof cmd, "rm -rf %s", tmpl);
  if (!getenv ("SNAPFAULT_KEEP"))
    CHECK (system (cmd) == 0);
  printf ("snapshot fault test: ok\n");
  return 0;
}
