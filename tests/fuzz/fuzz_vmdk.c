/* SPDX-License-Identifier: BSD-3-Clause */
/* Fuzz target for the VMDK engine's sparse extent reader: the input is a
 * whole (small) hosted sparse or COWD file, or a descriptor.  It is
 * written to a file in a private temporary directory (any extent or
 * parent name it holds resolves there and nowhere else), opened read-only
 * with bdev_open(path, "vmdk"), read and mapped across its virtual size
 * (bounded), then opened read-write for a few writes, zero writes, trims
 * and a flush (grain and grain table allocation on hostile metadata).
 *
 * Seeds: tests/fuzz/corpus/vmdk/, made by tests/fuzz/make-vmdk-corpus.sh.
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
#include "util/log.h"
#include "vmdk/vmdk.h"

#define MAX_READ (1024 * 1024)          /* bytes read from the start */
#define MAX_MAP  (256ull * 1024 * 1024) /* bytes mapped from the start */
#define PROBES   16                     /* scattered reads */
#define MAX_FILE (64 * 1024 * 1024)     /* stop writing past this size */

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
    abort ();                   /* never an empty extent */
  (*n)++;
  return *n > 100000 ? -1 : 0;
}

static void
read_all (struct bdev *bd)
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
    bdev_pread (bd, buf, 3, size - 3);
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
write_some (struct bdev *bd, const uint8_t *data, size_t size)
{
  uint64_t vsize = bd->size;
  if (vsize == 0)
    return;
  memset (buf, 0xa5, sizeof buf);
  for (unsigned i = 0; i < 6; i++) {
    uint64_t v = 0;
    memcpy (&v, data + (size > 8 * (i + 1) ? size - 8 * (i + 1) : 0),
            size >= 8 ? 8 : 0);
    uint64_t off = v % vsize;
    size_t n = (v >> 40) % sizeof buf + 1;
    if (n > vsize - off)
      n = vsize - off;
    switch (i % 3) {
    case 0: bdev_pwrite (bd, buf, n, off, i == 3 ? BDEV_FUA : 0); break;
    case 1: bdev_zero (bd, n, off, (v & 1) ? BDEV_MAY_TRIM : 0); break;
    case 2: bdev_trim (bd, n, off, 0); break;
    }
    struct stat st;
    if (stat (imgpath, &st) == 0 && st.st_size > MAX_FILE)
      break;
  }
  bdev_flush (bd);
}

int
LLVMFuzzerTestOneInput (const uint8_t *data, size_t size)
{
  if (!dirpath[0]) {
    kvm_log_set (quiet, quiet);
    strcpy (dirpath, "/tmp/fuzz-vmdk.XXXXXX");
    if (!mkdtemp (dirpath))
      abort ();
    snprintf (imgpath, sizeof imgpath, "%s/img.vmdk", dirpath);
    atexit (remove_dir);
  }
  int fd = open (imgpath, O_WRONLY | O_CREAT | O_TRUNC, 0600);
  if (fd == -1)
    abort ();
  if (size && write (fd, data, size) != (ssize_t) size)
    abort ();
  close (fd);

  static const char *const noparent[] = { "vmdk.backing=none", NULL };
  struct bdev_open_opts opts = {
    .readonly = true,
    .max_chain_depth = 4,
    .format_opts = noparent,
  };
  struct bdev *bd = bdev_open (imgpath, "vmdk", &opts, 0);
  if (bd) {
    read_all (bd);
    bdev_close (bd);
  }
  opts.readonly = false;
  bd = bdev_open (imgpath, "vmdk", &opts, 0);
  if (bd) {
    if (!bd->readonly)
      write_some (bd, data, size);
    read_all (bd);
    bdev_close (bd);
  }
  unlink (imgpath);
  return 0;
}
