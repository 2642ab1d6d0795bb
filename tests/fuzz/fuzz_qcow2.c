/* SPDX-License-Identifier: BSD-3-Clause */
/* Fuzz target for the qcow2 engine: the input is a whole (small) qcow2
 * file.  It is written to a file in a private temporary directory (so any
 * backing or data file name it contains resolves there and nowhere else),
 * opened with bdev_open(path, "qcow2", readonly), read and mapped across
 * its virtual size (bounded), and closed.  Then the same file is opened
 * read-write and gets a few writes, zero writes, trims and a flush, which
 * exercises allocation and refcount updates on hostile metadata.
 *
 * Seeds: tests/fuzz/corpus/qcow2/, made by tests/fuzz/make-qcow2-corpus.sh.
 */
#include <fcntl.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "bdev/bdev.h"
#include "qcow2/qcow2.h"
#include "util/log.h"

#define MAX_READ (1024 * 1024)        /* bytes read from the start */
#define MAX_MAP  (256ull * 1024 * 1024) /* bytes mapped from the start */
#define PROBES   16                   /* scattered reads across the size */
#define MAX_FILE (64 * 1024 * 1024)   /* stop writing once the file is this big */

static char dirpath[64];
static char imgpath[96];
static uint8_t buf[65536];

static void
remove_dir (void)
{
  unlink (imgpath);
  rmdir (dirpath);
}

static void
quiet (const char *fmt, va_list args)
{
  (void) fmt; (void) args;
}

static int
count_extent (void *opaque, uint64_t offset, uint64_t length, uint32_t type)
{
  (void) offset; (void) type;
  uint64_t *n = opaque;
  if (length == 0)
    abort ();                   /* the engine must never report an empty extent */
  (*n)++;
  return *n > 100000 ? -1 : 0;
}

static void
exercise_read (struct bdev *bd)
{
  uint64_t size = bd->size;
  uint64_t lim = size < MAX_READ ? size : MAX_READ;
  for (uint64_t off = 0; off < lim; off += sizeof buf) {
    size_t n = lim - off < sizeof buf ? lim - off : sizeof buf;
    bdev_pread (bd, buf, n, off);
  }
  for (unsigned i = 1; i <= PROBES && size > 0; i++) {
    uint64_t off = size / (PROBES + 1) * i;
    size_t n = size - off < 4096 ? size - off : 4096;
    if (n)
      bdev_pread (bd, buf, n, off);
  }
  if (size > 3)
    bdev_pread (bd, buf, 3, size - 3);          /* unaligned tail */
  uint64_t count = 0;
  uint64_t mlen = size < MAX_MAP ? size : MAX_MAP;
  if (mlen)
    bdev_extents (bd, mlen, 0, 0, count_extent, &count);
  if (size > 4096) {
    count = 0;
    bdev_extents (bd, 4096, size - 4096, BDEV_REQ_ONE, count_extent, &count);
  }
}

static void
exercise_write (struct bdev *bd, const uint8_t *data, size_t size)
{
  uint64_t vsize = bd->size;
  if (vsize == 0)
    return;
  memset (buf, 0x5a, sizeof buf);
  /* Offsets derived from the input so the fuzzer can steer them. */
  for (unsigned i = 0; i < 6; i++) {
    uint64_t seedv = 0;
    memcpy (&seedv, data + (size > 8 * (i + 1) ? size - 8 * (i + 1) : 0),
            size >= 8 ? 8 : 0);
    uint64_t off = seedv % vsize;
    size_t n = (seedv >> 40) % sizeof buf + 1;
    if (n > vsize - off)
      n = vsize - off;
    switch (i % 3) {
    case 0: bdev_pwrite (bd, buf, n, off, i == 3 ? BDEV_FUA : 0); break;
    case 1: bdev_zero (bd, n, off, (seedv & 1) ? BDEV_MAY_TRIM : 0); break;
    case 2: bdev_trim (bd, n, off, 0); break;
    }
    struct stat st;
    if (stat (imgpath, &st) == 0 && st.st_size > MAX_FILE)
      break;
  }
  bdev_flush (bd);
  bdev_pread (bd, buf, vsize < sizeof buf ? vsize : sizeof buf, 0);
}

int
LLVMFuzzerTestOneInput (const uint8_t *data, size_t size)
{
  if (!dirpath[0]) {
    kvm_log_set (quiet, quiet);
    strcpy (dirpath, "/tmp/fuzz-qcow2.XXXXXX");
    if (!mkdtemp (dirpath))
      abort ();
    snprintf (imgpath, sizeof imgpath, "%s/img.qcow2", dirpath);
    atexit (remove_dir);
  }

  int fd = open (imgpath, O_WRONLY | O_CREAT | O_TRUNC, 0600);
  if (fd == -1)
    abort ();
  if (size && write (fd, data, size) != (ssize_t) size)
    abort ();
  close (fd);

  struct bdev_open_opts opts = {
    .readonly = true,
    .max_chain_depth = 4,
  };
  struct bdev *bd = bdev_open (imgpath, "qcow2", &opts, 0);
  if (!bd) {
    /* Images naming backing files that are not there: read the top. */
    static const char *const nobacking[] = { "qcow2.backing=none", NULL };
    opts.format_opts = nobacking;
    bd = bdev_open (imgpath, "qcow2", &opts, 0);
  }
  if (bd) {
    exercise_read (bd);
    /* Internal snapshots (at most 4), each through its own L1 table. */
    const struct qcow2_snapshot_info *snaps;
    size_t nsnaps = qcow2_is (bd) ? qcow2_snapshots (bd, &snaps) : 0;
    char ids[4][64];
    size_t nids = 0;
    for (size_t i = 0; i < nsnaps && nids < 4; i++)
      if (snaps[i].id && strlen (snaps[i].id) < 40)
        snprintf (ids[nids++], sizeof ids[0], "qcow2.snapshot=%s", snaps[i].id);
    bdev_close (bd);
    for (size_t i = 0; i < nids; i++) {
      const char *sopts[] = { ids[i], "qcow2.backing=none", NULL };
      struct bdev_open_opts so = opts;
      so.format_opts = sopts;
      struct bdev *sb = bdev_open (imgpath, "qcow2", &so, 0);
      if (sb) {
        exercise_read (sb);
        bdev_close (sb);
      }
    }
  }

  opts.readonly = false;
  bd = bdev_open (imgpath, "qcow2", &opts, 0);
  if (bd) {
    if (!bd->readonly)
      exercise_write (bd, data, size);
    exercise_read (bd);
    bdev_close (bd);
  }
  unlink (imgpath);
  return 0;
}
