/* SPDX-License-Identifier: BSD-3-Clause */
/* The snapshot engine (common/snapshot) over a raw file, against a model
 * kept in memory: writes, zeroes and trims, create / revert / delete /
 * commit, snapshot views, reopening the directory, a changed size
 * refused, the device below untouched until commit.  Failures: a commit
 * that fails half-way allows nothing but another commit; a directory
 * sync that fails after the state's rename keeps the operation; layer
 * ids running out are refused before the state file is written.
 */
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <dirent.h>
#include <sys/stat.h>
#include <unistd.h>

#include "bdev/bdev.h"
#include "snapshot/snapshot.h"
#include "check.h"
#include "snapshot_layers.h"
#include "fault_bdev.h"

#define SIZE (8u << 20)
#define MAXSNAP 8

static char tmpl[] = "/tmp/snaptestXXXXXX";
static char below_path[256], dir[256];
static uint8_t *model, *below_orig;
static uint8_t *snaps[MAXSNAP];         /* model of each snapshot */
static char snap_names[MAXSNAP][16];
static int nsnaps;
static uint64_t rng = 88172645463325252ull;

static uint64_t
rnd (void)
{
  rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17;
  return rng;
}

/* Linked with --wrap=fsync: fail the FAIL_DIR_FSYNC-th fsync of a
 * directory from now (0: none).
 */
int __real_fsync (int fd);
int __wrap_fsync (int fd);
static int fail_dir_fsync;
static struct stat watch_dir;   /* count the fsyncs of this directory */
static int watch_dir_fsyncs;

int
__wrap_fsync (int fd)
{
  struct stat st;
  if (watch_dir.st_ino && fstat (fd, &st) == 0 &&
      st.st_ino == watch_dir.st_ino && st.st_dev == watch_dir.st_dev)
    watch_dir_fsyncs++;
  if (fail_dir_fsync && fstat (fd, &st) == 0 && S_ISDIR (st.st_mode) &&
      --fail_dir_fsync == 0) {
    errno = EIO;
    return -1;
  }
  return __real_fsync (fd);
}

/* The device below, whose writes fail at and past FAIL_FROM. */
static uint64_t fail_from = UINT64_MAX;

static int
fail_past (uint64_t off, size_t n)
{
  if (off + n > fail_from) {
    errno = EIO;
    return -1;
  }
  return 0;
}

static int
count_layer_files (void)
{
  return count_layer_files_in (dir);
}

static struct bdev *
open_below (uint64_t size)
{
  struct bdev_open_opts o = { 0 };
  struct bdev *b = bdev_file_open (below_path, &o);
  CHECK (b);
  CHECK_EQ_U64 (b->size, size);
  return b;
}

static struct snap_chain *
open_chain (void)
{
  struct snap_chain *c = snap_chain_open (dir, open_below (SIZE), NULL);
  CHECK (c);
  return c;
}

static void
check_equal (struct bdev *bd, const uint8_t *want, const char *what)
{
  uint8_t *buf = malloc (SIZE);
  CHECK (buf);
  CHECK (bdev_pread (bd, buf, SIZE, 0) == 0);
  if (memcmp (buf, want, SIZE) != 0) {
    size_t i = 0;
    while (buf[i] == want[i])
      i++;
    fprintf (stderr, "%s: differs at byte %zu\n", what, i);
    exit (1);
  }
  free (buf);
}

static void
check_below_untouched (void)
{
  struct bdev *b = open_below (SIZE);
  check_equal (b, below_orig, "device below");
  bdev_close (b);
}

/* A random mix of writes, zeroes and trims, applied to the model too. */
static void
random_io (struct bdev *bd, int n)
{
  uint8_t buf[200000];
  for (int k = 0; k < n; k++) {
    uint64_t len = 1 + rnd () % sizeof buf;
    uint64_t off = rnd () % (SIZE - len);
    switch (rnd () % 6) {
    case 0:                     /* whole clusters zeroed */
      off &= ~65535ull;
      len = (len + 65535) & ~65535ull;
      if (off + len > SIZE)
        len = SIZE - off;
      CHECK (bdev_zero (bd, len, off, BDEV_MAY_TRIM) == 0);
      memset (model + off, 0, len);
      break;
    case 1:                     /* unaligned zero */
      CHECK (bdev_zero (bd, len, off, 0) == 0);
      memset (model + off, 0, len);
      break;
    default:
      for (uint64_t i = 0; i < len; i++)
        buf[i] = rnd ();
      CHECK (bdev_pwrite (bd, buf, len, off, (k & 7) == 0 ? BDEV_FUA
                          : 0) == 0);
      memcpy (model + off, buf, len);
    }
  }
}

/* Trim of whole clusters in the overlay reads back as zeroes (never the
 * data below) and leaves the device below alone.
 */
static void
trim_whole_clusters (struct bdev *bd)
{
  CHECK (bdev_trim (bd, 3 * 65536, 65536, 0) == 0);
  memset (model + 65536, 0, 3 * 65536);
}

static int
find_snap (const char *name)
{
  for (int i = 0; i < nsnaps; i++)
    if (strcmp (snap_names[i], name) == 0)
      return i;
  return -1;
}

static void
model_create (struct snap_chain *c, const char *name)
{
  CHECK (snap_create (c, name) == 0);
  CHECK (nsnaps < MAXSNAP);
  snaps[nsnaps] = malloc (SIZE);
  CHECK (snaps[nsnaps]);
  memcpy (snaps[nsnaps], model, SIZE);
  strcpy (snap_names[nsnaps++], name);
}

static void
model_drop (int i)
{
  free (snaps[i]);
  memmove (&snaps[i], &snaps[i + 1], (nsnaps - i - 1) * sizeof snaps[0]);
  memmove (&snap_names[i], &snap_names[i + 1],
           (nsnaps - i - 1) * sizeof snap_names[0]);
  nsnaps--;
}

static void
check_all (struct snap_chain *c, const char *when)
{
  char what[320];
  snprintf (what, sizeof what, "chain %s", when);
  check_equal (snap_chain_bdev (c), model, what);
  for (int i = 0; i < nsnaps; i++) {
    struct bdev *v = snap_view_open (c, snap_names[i]);
    CHECK (v);
    CHECK (v->readonly);
    snprintf (what, sizeof what, "snapshot %s %s", snap_names[i], when);
    check_equal (v, snaps[i], what);
    bdev_close (v);
  }
}

/* commit: the chain goes into the device below, which must then hold the
 * model, and empties (the model's snapshots dropped).  Closes C.
 */
static void
commit_and_check (struct snap_chain *c, const char *when)
{
  CHECK (snap_commit (c) == 0);
  while (nsnaps)
    model_drop (0);
  check_all (c, when);
  snap_chain_close (c);
  memcpy (below_orig, model, SIZE);
  check_below_untouched ();
}

struct list_ctx { int n; };

static int
list_cb (void *opaque, const struct snap_info *info)
{
  struct list_ctx *l = opaque;
  CHECK (l->n < nsnaps);
  CHECK (strcmp (info->name, snap_names[l->n]) == 0);
  CHECK (info->bytes > 0);
  l->n++;
  return 0;
}

int
main (void)
{
  CHECK (mkdtemp (tmpl));
  snprintf (below_path, sizeof below_path, "%s/below.raw", tmpl);
  snprintf (dir, sizeof dir, "%s/overlay", tmpl);

  model = malloc (SIZE);
  below_orig = malloc (SIZE);
  CHECK (model && below_orig);
  for (size_t i = 0; i < SIZE; i++)
    below_orig[i] = rnd ();
  memcpy (model, below_orig, SIZE);
  int fd = open (below_path, O_CREAT | O_WRONLY | O_TRUNC, 0600);
  CHECK (fd >= 0 && write (fd, below_orig, SIZE) == SIZE);
  close (fd);

  /* First use creates the directory; writes survive a reopen.  The new
   * directory's entry is made durable (its parent fsynced), or a power
   * loss could take the whole chain away.
   */
  CHECK (stat (tmpl, &watch_dir) == 0);
  struct snap_chain *c = open_chain ();
  CHECK (watch_dir_fsyncs > 0);
  watch_dir.st_ino = 0;
  check_all (c, "new");
  random_io (snap_chain_bdev (c), 60);
  trim_whole_clusters (snap_chain_bdev (c));
  check_all (c, "after writes");
  snap_chain_close (c);
  check_below_untouched ();
  /* Every open makes the state it read durable (the directory fsynced). */
  CHECK (stat (dir, &watch_dir) == 0);
  watch_dir_fsyncs = 0;
  c = open_chain ();
  CHECK (watch_dir_fsyncs > 0);
  watch_dir.st_ino = 0;
  /* ... and the directory's entry in its parent (a server killed right
   * after the first state was written never synced it).
   */
  snap_chain_close (c);
  CHECK (stat (tmpl, &watch_dir) == 0);
  watch_dir_fsyncs = 0;
  c = open_chain ();
  CHECK (watch_dir_fsyncs > 0);
  watch_dir.st_ino = 0;
  check_all (c, "reopened");

  /* Snapshots, writes between them, a write to a view refused. */
  model_create (c, "s1");
  random_io (snap_chain_bdev (c), 40);
  model_create (c, "s2");
  random_io (snap_chain_bdev (c), 40);
  model_create (c, "s3");
  random_io (snap_chain_bdev (c), 40);
  check_all (c, "after creates");
  CHECK (snap_create (c, "s2") == -1);          /* exists */
  CHECK (snap_create (c, "../x") == -1);        /* invalid */
  CHECK (snap_revert (c, "nope") == -1);
  struct bdev *v = snap_view_open (c, "s1");
  CHECK (v);
  uint8_t b1[512] = { 1 };
  CHECK (bdev_pwrite (v, b1, sizeof b1, 0, 0) == -1);
  bdev_close (v);
  struct list_ctx lc = { 0 };
  CHECK (snap_list (c, list_cb, &lc) == 0);
  CHECK (lc.n == nsnaps);
  char **names = snap_state_names (dir);
  CHECK (names && names[0] && names[1] && names[2] && !names[3]);
  CHECK (strcmp (names[1], "s2") == 0);
  snap_names_free (names);
  snap_chain_close (c);
  check_below_untouched ();
  c = open_chain ();
  check_all (c, "reopened with snapshots");

  /* delete in the middle keeps every other snapshot's content. */
  CHECK (snap_delete (c, "s2") == 0);
  model_drop (find_snap ("s2"));
  check_all (c, "after delete s2");
  /* A view of a deleted snapshot fails from then on. */
  v = snap_view_open (c, "s1");
  CHECK (v);
  CHECK (snap_delete (c, "s1") == 0);
  model_drop (find_snap ("s1"));
  uint8_t rb[512];
  CHECK (bdev_pread (v, rb, sizeof rb, 0) == -1);
  bdev_close (v);
  check_all (c, "after delete s1");
  random_io (snap_chain_bdev (c), 30);
  model_create (c, "s4");
  random_io (snap_chain_bdev (c), 30);

  /* revert to s3 drops s4 and everything written since s3. */
  CHECK (snap_revert (c, "s3") == 0);
  int i3 = find_snap ("s3");
  memcpy (model, snaps[i3], SIZE);
  model_drop (find_snap ("s4"));
  check_all (c, "after revert s3");
  snap_chain_close (c);
  c = open_chain ();
  check_all (c, "reopened after revert");
  /* delete of the snapshot just under the top. */
  random_io (snap_chain_bdev (c), 20);
  CHECK (snap_delete (c, "s3") == 0);
  model_drop (find_snap ("s3"));
  check_all (c, "after delete s3");
  check_below_untouched ();

  /* commit writes the chain into the device below and empties it. */
  model_create (c, "s5");
  random_io (snap_chain_bdev (c), 20);
  commit_and_check (c, "after commit");
  c = open_chain ();
  check_all (c, "reopened after commit");
  snap_chain_close (c);

  /* A commit that fails half-way (the device below refuses writes past
   * 4 MiB) has written part of the chain below: the snapshots no longer
   * read as they were, so nothing but another commit may follow, and
   * the chain itself still reads as before.
   */
  c = snap_chain_open (dir, fault_bdev_wrap (open_below (SIZE), fail_past,
                                             NULL), NULL);
  CHECK (c);
  model_create (c, "f1");
  {
    uint8_t x[65536];
    memset (x, 'X', sizeof x);
    CHECK (bdev_pwrite (snap_chain_bdev (c), x, sizeof x, 0, 0) == 0);
    CHECK (bdev_pwrite (snap_chain_bdev (c), x, sizeof x, 6 << 20, 0) == 0);
    memcpy (model, x, sizeof x);
    memcpy (model + (6 << 20), x, sizeof x);
  }
  fail_from = 4 << 20;
  CHECK (snap_commit (c) == -1);
  CHECK (snap_create (c, "f2") == -1 && errno == EBUSY);
  CHECK (snap_revert (c, "f1") == -1 && errno == EBUSY);
  CHECK (snap_delete (c, "f1") == -1 && errno == EBUSY);
  CHECK (snap_view_open (c, "f1") == NULL && errno == EBUSY);
  check_equal (snap_chain_bdev (c), model, "chain after a failed commit");
  fail_from = UINT64_MAX;
  commit_and_check (c, "after the commit again");

  /* The directory sync after the state's rename fails (the first sync
   * is for the new layer's file): the snapshot exists all the same, and
   * the files of layers dropped later stay until the next open.
   */
  c = open_chain ();
  random_io (snap_chain_bdev (c), 10);
  fail_dir_fsync = 2;
  model_create (c, "k1");
  CHECK (fail_dir_fsync == 0);
  random_io (snap_chain_bdev (c), 10);
  int files = count_layer_files ();
  CHECK (snap_revert (c, "k1") == 0);
  memcpy (model, snaps[find_snap ("k1")], SIZE);
  CHECK (count_layer_files () == files + 1);    /* new top; old one kept */
  check_all (c, "after a failed directory sync");
  snap_chain_close (c);
  c = open_chain ();
  CHECK (count_layer_files () == files);
  check_all (c, "reopened after a failed directory sync");
  CHECK (snap_delete (c, "k1") == 0);
  model_drop (find_snap ("k1"));
  snap_chain_close (c);

  /* No layer ids left: refused, and the state file still opens. */
  {
    char sp[300], *text = malloc (1 << 16), *at;
    snprintf (sp, sizeof sp, "%s/%s", dir, SNAP_STATE_FILE);
    FILE *f = fopen (sp, "r");
    CHECK (f && text);
    size_t len = fread (text, 1, (1 << 16) - 1, f);
    fclose (f);
    text[len] = '\0';
    CHECK ((at = strstr (text, "next-id ")));
    f = fopen (sp, "w");
    CHECK (f);
    fprintf (f, "%.*snext-id 1073741824%s", (int) (at - text), text,
             strchr (at, '\n'));
    CHECK (fclose (f) == 0);
    free (text);
  }
  c = open_chain ();
  CHECK (snap_create (c, "late") == -1 && errno == EOVERFLOW);
  snap_chain_close (c);
  c = open_chain ();
  check_all (c, "with no layer ids left");
  snap_chain_close (c);

  /* A state file that cannot be read (here a directory: read fails with
   * EISDIR) is an I/O error, not "corrupt" (EINVAL), and changes nothing.
   */
  {
    char sp[300], aside[310];
    snprintf (sp, sizeof sp, "%s/%s", dir, SNAP_STATE_FILE);
    snprintf (aside, sizeof aside, "%s.aside", sp);
    CHECK (rename (sp, aside) == 0 && mkdir (sp, 0700) == 0);
    errno = 0;
    CHECK (snap_chain_open (dir, open_below (SIZE), NULL) == NULL);
    CHECK (errno == EISDIR);
    CHECK (rmdir (sp) == 0 && rename (aside, sp) == 0);
    c = open_chain ();
    check_all (c, "after an unreadable state file");
    snap_chain_close (c);
  }

  /* A changed size below is refused. */
  CHECK (truncate (below_path, SIZE + 65536) == 0);
  struct bdev_open_opts o = { 0 };
  struct bdev *b = bdev_file_open (below_path, &o);
  CHECK (b);
  CHECK (snap_chain_open (dir, b, NULL) == NULL);

  char cmd[300];
  snprintf (cmd, sizeof cmd, "rm -rf %s", tmpl);
  CHECK (system (cmd) == 0);
  free (model);
  free (below_orig);
  printf ("snapshot unit test: ok\n");
  return 0;
}
