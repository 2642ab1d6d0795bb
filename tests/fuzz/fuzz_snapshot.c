/* SPDX-License-Identifier: BSD-3-Clause */
/* Fuzz target for the snapshot engine (common/snapshot): the chain state
 * file parser and the chain open (layer files, sizes, garbage collection,
 * an interrupted commit), then I/O through the chain, views of its
 * snapshots and the operations (create, revert, delete, commit) on
 * whatever the open accepted.
 *
 * Input: the text of snapshot.state, then any number of layer files, each
 * introduced by a line "\n@@layer ID\n" and encoded as its non-zero 4 KiB
 * sectors (the records of vhdx_sparse.h).  They are written into
 * DIR/chain/ (DIR private, see fuzz_common.h) as snapshot.state and
 * layer-ID.qcow2; an input without state text makes no state file (the
 * first-use path).  The device below is DIR/below, a file of the size the
 * state file names (1 MiB if it names none or more than 16 MiB).
 *
 * Seeds: tests/fuzz/corpus/snapshot/, made by
 * tests/fuzz/make-snapshot-corpus.sh with the snapshot filter.
 */
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bdev/bdev.h"
#include "fuzz_common.h"
#include "snapshot/snapshot.h"
#include "vhdx_sparse.h"

#define MARKER "\n@@layer "
#define MAX_BELOW (16u << 20)

static char chaindir[600];

static const struct fuzz_limits limits = {
  .max_read = 1024 * 1024,
  .max_map = 256ull * 1024 * 1024,
  .probes = 8,
  .max_file = 64 * 1024 * 1024,
  .fill = 0x3c,
  .map_tail = true,
  .reread = true,
};

/* Remove every file of the chain directory. */
static void
clean_chain (void)
{
  DIR *d = opendir (chaindir);
  struct dirent *e;
  if (!d)
    return;
  while ((e = readdir (d)))
    if (strcmp (e->d_name, ".") && strcmp (e->d_name, ".."))
      unlinkat (dirfd (d), e->d_name, 0);
  closedir (d);
}

static void
remove_chain (void)
{
  clean_chain ();
  rmdir (chaindir);
}

/* The value of the line "size N" in TEXT (LEN bytes), or 0. */
static uint64_t
state_size (const char *text, size_t len)
{
  char buf[32];
  for (size_t i = 0; i + 5 < len; i++) {
    if ((i == 0 || text[i - 1] == '\n') && memcmp (text + i, "size ", 5) == 0) {
      size_t n = len - i - 5 < sizeof buf - 1 ? len - i - 5 : sizeof buf - 1;
      memcpy (buf, text + i + 5, n);
      buf[n] = '\0';
      return strtoull (buf, NULL, 10);
    }
  }
  return 0;
}

static int
collect (void *opaque, const struct snap_info *info)
{
  char (*names)[SNAP_NAME_MAX + 1] = opaque;
  for (int i = 0; i < 4; i++)
    if (!names[i][0]) {
      snprintf (names[i], SNAP_NAME_MAX + 1, "%s", info->name);
      break;
    }
  return 0;
}

int
LLVMFuzzerTestOneInput (const uint8_t *data, size_t size)
{
  fuzz_init ("snapshot", "below");
  if (!chaindir[0]) {
    snprintf (chaindir, sizeof chaindir, "%s/chain", dirpath);
    if (mkdir (chaindir, 0700) == -1)
      abort ();
    atexit (remove_chain);      /* runs before fuzz_remove_dir */
  }
  clean_chain ();

  /* Split: the state text, then the layers. */
  const uint8_t *end = data + size;
  const uint8_t *m = memmem (data, size, MARKER, sizeof MARKER - 1);
  size_t tlen = m ? (size_t) (m - data) : size;
  if (tlen) {
    char p[700];
    snprintf (p, sizeof p, "%s/%s", chaindir, SNAP_STATE_FILE);
    FILE *f = fopen (p, "w");
    if (!f || fwrite (data, 1, tlen, f) != tlen || fclose (f) != 0)
      abort ();
  }
  for (unsigned nl = 0; m && nl < 16; nl++) {
    const uint8_t *p = m + sizeof MARKER - 1;
    const uint8_t *nlp = memchr (p, '\n', end - p);
    if (!nlp)
      break;
    char idbuf[16];
    size_t idlen = nlp - p < 15 ? (size_t) (nlp - p) : 15;
    memcpy (idbuf, p, idlen);
    idbuf[idlen] = '\0';
    const uint8_t *body = nlp + 1;
    m = memmem (body, end - body, MARKER, sizeof MARKER - 1);
    size_t blen = (m ? m : end) - body;
    char path[700];
    snprintf (path, sizeof path, "%s/layer-%u.qcow2", chaindir,
              (unsigned) strtoul (idbuf, NULL, 10));
    if (vhdx_sparse_write (path, body, blen) == -1)
      abort ();
  }

  /* The device below: the size the state names, a little data. */
  uint64_t bsize = state_size ((const char *) data, tlen);
  if (bsize == 0 || bsize > MAX_BELOW)
    bsize = 1u << 20;
  int fd = open (imgpath, O_RDWR | O_CREAT | O_TRUNC, 0600);
  if (fd == -1 || ftruncate (fd, bsize) == -1)
    abort ();
  memset (fuzz_buf, 0x11, 4096);
  if (pwrite (fd, fuzz_buf, bsize < 4096 ? bsize : 4096, 0) == -1)
    abort ();
  close (fd);

  char **names = snap_state_names (chaindir);
  snap_names_free (names);

  struct bdev_open_opts o = { 0 };
  struct bdev *below = bdev_file_open (imgpath, &o);
  if (!below)
    abort ();
  struct snap_chain *c = snap_chain_open (chaindir, below, NULL);
  if (c) {
    struct bdev *bd = snap_chain_bdev (c);
    fuzz_exercise_read (bd, &limits);
    char snaps[4][SNAP_NAME_MAX + 1];
    memset (snaps, 0, sizeof snaps);
    snap_list (c, collect, snaps);
    for (int i = 0; i < 4 && snaps[i][0]; i++) {
      struct bdev *v = snap_view_open (c, snaps[i]);
      if (v) {
        fuzz_exercise_read (v, &limits);
        bdev_close (v);
      }
    }
    fuzz_exercise_write (bd, data, size, &limits);
    /* One operation, chosen by the input's last byte (a trailing byte
     * after the last layer's records is ignored by their decoder).
     */
    unsigned op = size ? data[size - 1] % 5 : 0;
    switch (op) {
    case 0: snap_create (c, "fz-new"); break;
    case 1: if (snaps[0][0]) snap_revert (c, snaps[0]); break;
    case 2: if (snaps[0][0]) snap_delete (c, snaps[0]); break;
    case 3: snap_commit (c); break;
    case 4: if (snaps[1][0]) snap_delete (c, snaps[1]); break;
    }
    fuzz_exercise_read (bd, &limits);
    snap_chain_close (c);
  }
  return 0;
}
