/* SPDX-License-Identifier: BSD-3-Clause */
/* The harness shared by the fuzz targets of image engines (qcow2, vmdk,
 * vhdx, vhdx_log, thin, snapshot): a private temporary directory, on
 * tmpfs when there is one, holding the input as a file (so any file name
 * an image contains resolves there and nowhere else), quiet logging, and bounded reads, maps and writes over
 * the bdev the target opened.
 *
 * Header only (tests/fuzz/CMakeLists.txt makes every fuzz_*.c a target).
 */
#ifndef KVM_FUZZ_COMMON_H
#define KVM_FUZZ_COMMON_H

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "bdev/bdev.h"
#include "util/log.h"

static char dirpath[256];
static char imgpath[512];
static char zeropath[512];
static uint8_t fuzz_buf[65536];

static void
fuzz_remove_dir (void)
{
  unlink (imgpath);
  if (zeropath[0])
    unlink (zeropath);
  rmdir (dirpath);
}

static void
fuzz_quiet (const char *fmt, va_list args)
{
  (void) fmt; (void) args;
}

/* Where the private directories go: $FUZZ_TMPDIR, else /dev/shm (tmpfs:
 * the engines' reads, writes and fdatasync stay in memory, which is most
 * of the speed of the image targets), else /tmp.
 */
static inline const char *
fuzz_tmpdir (void)
{
  const char *d = getenv ("FUZZ_TMPDIR");
  if (d && *d)
    return d;
  if (access ("/dev/shm", W_OK | X_OK) == 0)
    return "/dev/shm";
  return "/tmp";
}

/* Once per process: DIR/fuzz-TAG.XXXXXX/FILE is imgpath (DIR from
 * fuzz_tmpdir), removed at exit; engine messages silenced.
 */
static inline void
fuzz_init (const char *tag, const char *file)
{
  if (dirpath[0])
    return;
  kvm_log_set (fuzz_quiet, fuzz_quiet);
  if ((size_t) snprintf (dirpath, sizeof dirpath, "%s/fuzz-%s.XXXXXX",
                         fuzz_tmpdir (), tag) >= sizeof dirpath)
    abort ();
  if (!mkdtemp (dirpath))
    abort ();
  snprintf (imgpath, sizeof imgpath, "%s/%s", dirpath, file);
  atexit (fuzz_remove_dir);
}

/* A backing device that reads as zeroes (a sparse file of 1 TiB), for
 * bdev_open_opts.backing of a read-write open: an image that names a
 * backing file or parent is read-only without one (X.backing=none), and
 * its write paths would not run.  The engine owns it (closes it, also
 * when it has no use for it or the open fails).
 */
static inline struct bdev *
fuzz_zero_backing (void)
{
  if (!zeropath[0]) {
    snprintf (zeropath, sizeof zeropath, "%s/zero.raw", dirpath);
    int fd = open (zeropath, O_CREAT | O_RDWR | O_CLOEXEC, 0600);
    if (fd == -1 || ftruncate (fd, (off_t) 1 << 40) == -1)
      abort ();
    close (fd);
  }
  struct bdev_open_opts o = { .readonly = true };
  struct bdev *bd = bdev_open (zeropath, "raw", &o, 0);
  if (!bd)
    abort ();
  return bd;
}

/* imgpath := the input, byte for byte. */
static inline void
fuzz_write_image (const uint8_t *data, size_t size)
{
  int fd = open (imgpath, O_WRONLY | O_CREAT | O_TRUNC, 0600);
  if (fd == -1)
    abort ();
  if (size && write (fd, data, size) != (ssize_t) size)
    abort ();
  close (fd);
}

/* Counts extents into *OPAQUE (a uint64_t); stops after 100000. */
static inline int
fuzz_count_extent (void *opaque, uint64_t offset, uint64_t length,
                   uint32_t type)
{
  (void) offset; (void) type;
  uint64_t *n = opaque;
  if (length == 0)
    abort ();                   /* the engine must never report an empty extent */
  (*n)++;
  return *n > 100000 ? -1 : 0;
}

/* Bounds of fuzz_exercise_read/write, and the small ways the targets
 * differ.
 */
struct fuzz_limits {
  uint64_t max_read;            /* bytes read from the start */
  uint64_t max_map;             /* bytes mapped from the start */
  unsigned probes;              /* scattered reads across the size */
  uint64_t max_file;            /* stop writing once the file is this big */
  uint8_t fill;                 /* byte written */
  bool map_tail;                /* also map the last 4 KiB, BDEV_REQ_ONE */
  bool reread;                  /* read the first block after the writes */
};

static inline void
fuzz_exercise_read (struct bdev *bd, const struct fuzz_limits *l)
{
  uint64_t size = bd->size;
  uint64_t lim = size < l->max_read ? size : l->max_read;
  for (uint64_t off = 0; off < lim; off += sizeof fuzz_buf) {
    size_t n = lim - off < sizeof fuzz_buf ? lim - off : sizeof fuzz_buf;
    bdev_pread (bd, fuzz_buf, n, off);
  }
  for (unsigned i = 1; i <= l->probes && size > 0; i++) {
    uint64_t off = size / (l->probes + 1) * i;
    size_t n = size - off < 4096 ? size - off : 4096;
    if (n)
      bdev_pread (bd, fuzz_buf, n, off);
  }
  if (size > 3)
    bdev_pread (bd, fuzz_buf, 3, size - 3);     /* unaligned tail */
  uint64_t count = 0;
  uint64_t mlen = size < l->max_map ? size : l->max_map;
  if (mlen)
    bdev_extents (bd, mlen, 0, 0, fuzz_count_extent, &count);
  if (l->map_tail && size > 4096) {
    count = 0;
    bdev_extents (bd, 4096, size - 4096, BDEV_REQ_ONE, fuzz_count_extent,
                  &count);
  }
}

/* FUZZ_KEEP=PREFIX, for tools that check what a target wrote against
 * QEMU (differential.sh): fuzz_exercise_write records its requests in
 * PREFIX.ops as qemu-io commands (a failed one followed by a "# failed"
 * line), and fuzz_keep_image (WHAT) copies the image to PREFIX.WHAT: the
 * targets keep it as "orig" before any open and as "written" after their
 * writes.
 */
static inline FILE *
fuzz_keep_ops (void)
{
  const char *k = getenv ("FUZZ_KEEP");
  char path[600];
  if (!k || !*k)
    return NULL;
  snprintf (path, sizeof path, "%s.ops", k);
  FILE *f = fopen (path, "w");
  if (!f)
    abort ();
  return f;
}

static inline void
fuzz_keep_image (const char *what)
{
  const char *k = getenv ("FUZZ_KEEP");
  char cmd[2048];
  if (!k || !*k)
    return;
  /* A hostile image can leave a file too sparse to copy (data written at
   * 2^47): then it is not kept.
   */
  snprintf (cmd, sizeof cmd, "cp --sparse=always '%s' '%s.%s' 2>/dev/null "
            "|| rm -f '%s.%s'", imgpath, k, what, k, what);
  if (system (cmd) != 0)
    abort ();
}

/* A few writes, zero writes and trims at offsets taken from the input's
 * last bytes (so the fuzzer can steer them), then a flush.
 */
static inline void
fuzz_exercise_write (struct bdev *bd, const uint8_t *data, size_t size,
                     const struct fuzz_limits *l)
{
  uint64_t vsize = bd->size;
  if (vsize == 0)
    return;
  FILE *ops = fuzz_keep_ops ();
  memset (fuzz_buf, l->fill, sizeof fuzz_buf);
  for (unsigned i = 0; i < 6; i++) {
    uint64_t seedv = 0;
    memcpy (&seedv, data + (size > 8 * (i + 1) ? size - 8 * (i + 1) : 0),
            size >= 8 ? 8 : 0);
    uint64_t off = seedv % vsize;
    size_t n = (seedv >> 40) % sizeof fuzz_buf + 1;
    if (n > vsize - off)
      n = vsize - off;
    int r = 0;
    switch (i % 3) {
    case 0:
      r = bdev_pwrite (bd, fuzz_buf, n, off, i == 3 ? BDEV_FUA : 0);
      if (ops)
        fprintf (ops, "write -q%s -P 0x%02x %" PRIu64 " %zu\n",
                 i == 3 ? " -f" : "", l->fill, off, n);
      break;
    case 1:
      r = bdev_zero (bd, n, off, (seedv & 1) ? BDEV_MAY_TRIM : 0);
      if (ops)
        fprintf (ops, "write -q -z%s %" PRIu64 " %zu\n",
                 (seedv & 1) ? " -u" : "", off, n);
      break;
    case 2:
      r = bdev_trim (bd, n, off, 0);
      if (ops)
        fprintf (ops, "discard -q %" PRIu64 " %zu\n", off, n);
      break;
    }
    if (ops && r == -1)
      fprintf (ops, "# failed: %s\n", strerror (errno));
    struct stat st;
    if (stat (imgpath, &st) == 0 && (uint64_t) st.st_size > l->max_file)
      break;
  }
  if (bdev_flush (bd) == -1 && ops)
    fprintf (ops, "# flush failed: %s\n", strerror (errno));
  if (ops)
    fclose (ops);
  if (l->reread)
    bdev_pread (bd, fuzz_buf, vsize < sizeof fuzz_buf ? vsize : sizeof fuzz_buf,
                0);
}

/* Whatever the input, an image the engine accepted read-write and wrote
 * to must open again (read-only, with the same options): the engine must
 * never leave behind metadata it would refuse.  abort () otherwise.
 */
static inline void
fuzz_reopen (const char *format, const struct bdev_open_opts *opts)
{
  struct bdev_open_opts ro = *opts;
  ro.readonly = true;
  struct bdev *bd = bdev_open (imgpath, format, &ro, 0);
  if (!bd)
    abort ();
  bdev_pread (bd, fuzz_buf, bd->size < 4096 ? bd->size : 4096, 0);
  bdev_close (bd);
}

#endif
