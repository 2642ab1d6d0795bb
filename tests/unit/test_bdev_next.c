/* SPDX-License-Identifier: BSD-3-Clause */
/* The filter-side bdev (bdev_nbdkit_filter.h) over a fake nbdkit next
 * layer kept in memory, without an nbdkit process: request splitting and
 * flag mapping, capabilities, extents stitched from short answers, and the
 * qcow2 engine keeping an image inside the fake layer (read back after a
 * reopen, ENOSPC when the layer is full with earlier data intact), and
 * a format filter's .prepare whose engine fails to open after writing.
 */
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <nbdkit-filter.h>

#include "bdev/bdev.h"
#include "bdev/bdev_nbdkit_filter.h"
#define BDEV_FORMAT_FILTER_EXPORTS "test-exports"
#include "bdev/bdev_nbdkit_format_filter.h"
#include "qcow2/qcow2.h"
#include "check.h"

/* ---- the fake layer below ------------------------------------------ */

struct fake {
  struct nbdkit_next_ops ops;   /* first: nbdkit_next * points here */
  uint8_t *mem;
  uint64_t size;
  int can_write, can_trim, can_zero, can_fua, can_extents;
  unsigned max_extents;         /* extents per answer (0: no limit) */
  unsigned flushes, fua_writes, closed, finalized;
  uint32_t largest_request;
};

#define FAKE(next) ((struct fake *) (next))

static void
note_request (struct fake *f, uint32_t count)
{
  if (count > f->largest_request)
    f->largest_request = count;
}

static int64_t fk_get_size (nbdkit_next *n) { return FAKE (n)->size; }
static int fk_can_write (nbdkit_next *n) { return FAKE (n)->can_write; }
static int fk_one (nbdkit_next *n) { (void) n; return 1; }
static int fk_zero_v (nbdkit_next *n) { (void) n; return 0; }
static int fk_can_trim (nbdkit_next *n) { return FAKE (n)->can_trim; }
static int fk_can_zero (nbdkit_next *n) { return FAKE (n)->can_zero; }
static int fk_can_fua (nbdkit_next *n) { return FAKE (n)->can_fua; }
static int fk_can_extents (nbdkit_next *n) { return FAKE (n)->can_extents; }
static int fk_finalize (nbdkit_next *n) { FAKE (n)->finalized++; return 0; }

static int
fk_block_size (nbdkit_next *n, uint32_t *mn, uint32_t *pr, uint32_t *mx)
{
  (void) n;
  *mn = 1; *pr = 4096; *mx = 0xffffffff;
  return 0;
}

static int
fk_pread (nbdkit_next *n, void *buf, uint32_t count, uint64_t offset,
          uint32_t flags, int *err)
{
  struct fake *f = FAKE (n);
  (void) flags;
  note_request (f, count);
  if (offset + count > f->size) {
    *err = EIO;
    return -1;
  }
  memcpy (buf, f->mem + offset, count);
  return 0;
}

static int
fk_pwrite (nbdkit_next *n, const void *buf, uint32_t count, uint64_t offset,
           uint32_t flags, int *err)
{
  struct fake *f = FAKE (n);
  note_request (f, count);
  /* nbdkit asserts this: FUA only where the plugin offers it. */
  CHECK (!(flags & NBDKIT_FLAG_FUA) || f->can_fua != NBDKIT_FUA_NONE);
  if (flags & NBDKIT_FLAG_FUA)
    f->fua_writes++;
  if (!f->can_write || offset + count > f->size) {
    *err = !f->can_write ? EROFS : ENOSPC;
    return -1;
  }
  memcpy (f->mem + offset, buf, count);
  return 0;
}

static int
fk_flush (nbdkit_next *n, uint32_t flags, int *err)
{
  (void) flags; (void) err;
  FAKE (n)->flushes++;
  return 0;
}

static int
fk_trim (nbdkit_next *n, uint32_t count, uint64_t offset, uint32_t flags,
         int *err)
{
  struct fake *f = FAKE (n);
  (void) flags; (void) err;
  CHECK (f->can_trim);
  note_request (f, count);
  memset (f->mem + offset, 0, count);
  return 0;
}

static int
fk_zero (nbdkit_next *n, uint32_t count, uint64_t offset, uint32_t flags,
         int *err)
{
  struct fake *f = FAKE (n);
  (void) err;
  CHECK (f->can_zero != NBDKIT_ZERO_NONE);
  CHECK (!(flags & NBDKIT_FLAG_MAY_TRIM) || f->can_trim);
  note_request (f, count);
  memset (f->mem + offset, 0, count);
  return 0;
}

/* Holes where a whole 64 KiB block is zero; at most max_extents a call. */
static int
fk_extents (nbdkit_next *n, uint32_t count, uint64_t offset, uint32_t flags,
            struct nbdkit_extents *ex, int *err)
{
  struct fake *f = FAKE (n);
  uint64_t end = offset + count;
  unsigned given = 0;
  (void) flags; (void) err;
  CHECK (f->can_extents);
  while (offset < end && (!f->max_extents || given < f->max_extents)) {
    uint64_t b = offset & ~UINT64_C (0xffff);
    uint64_t e = b + 0x10000 < end ? b + 0x10000 : end;
    bool zero = true;
    for (uint64_t i = b; i < b + 0x10000 && i < f->size; i++)
      if (f->mem[i]) {
        zero = false;
        break;
      }
    if (nbdkit_add_extent (ex, offset, e - offset,
                           zero ? BDEV_EXTENT_HOLE | BDEV_EXTENT_ZERO : 0)
        == -1)
      return -1;
    offset = e;
    given++;
  }
  return 0;
}

static void
fake_init (struct fake *f, uint64_t size)
{
  memset (f, 0, sizeof *f);
  f->mem = calloc (1, size);
  CHECK (f->mem);
  f->size = size;
  f->can_write = 1;
  f->can_trim = 1;
  f->can_zero = NBDKIT_ZERO_NATIVE;
  f->can_fua = NBDKIT_FUA_NATIVE;
  f->can_extents = 1;
  f->ops.finalize = fk_finalize;
  f->ops.get_size = fk_get_size;
  f->ops.block_size = fk_block_size;
  f->ops.can_write = fk_can_write;
  f->ops.can_flush = fk_one;
  f->ops.can_trim = fk_can_trim;
  f->ops.can_zero = fk_can_zero;
  f->ops.can_fast_zero = fk_zero_v;
  f->ops.can_extents = fk_can_extents;
  f->ops.can_fua = fk_can_fua;
  f->ops.can_multi_conn = fk_one;
  f->ops.pread = fk_pread;
  f->ops.pwrite = fk_pwrite;
  f->ops.flush = fk_flush;
  f->ops.trim = fk_trim;
  f->ops.zero = fk_zero;
  f->ops.extents = fk_extents;
}

/* ---- the few nbdkit server functions the bridge calls ---------------- */

struct nbdkit_extents {
  uint64_t start, end;
  struct nbdkit_extent e[1024];
  size_t n;
};

struct nbdkit_extents *
nbdkit_extents_new (uint64_t start, uint64_t end)
{
  struct nbdkit_extents *x = calloc (1, sizeof *x);
  if (x) {
    x->start = start;
    x->end = end;
  }
  return x;
}

void nbdkit_extents_free (struct nbdkit_extents *x) { free (x); }
size_t nbdkit_extents_count (const struct nbdkit_extents *x) { return x->n; }

struct nbdkit_extent
nbdkit_get_extent (const struct nbdkit_extents *x, size_t i)
{
  return x->e[i];
}

int
nbdkit_add_extent (struct nbdkit_extents *x, uint64_t offset,
                   uint64_t length, uint32_t type)
{
  CHECK (x->n < 1024);
  CHECK (offset >= x->start && offset + length <= x->end);
  x->e[x->n++] = (struct nbdkit_extent) { offset, length, type };
  return 0;
}

void
nbdkit_next_context_close (nbdkit_next *next)
{
  FAKE (next)->closed++;
}

void
nbdkit_error (const char *fs, ...)
{
  va_list a;
  va_start (a, fs);
  vfprintf (stderr, fs, a);
  va_end (a);
  fputc ('\n', stderr);
}

/* ---- tests ------------------------------------------------------------ */

struct ext_sum { uint64_t next_off, data, hole; unsigned calls; };

static int
sum_extent (void *opaque, uint64_t off, uint64_t len, uint32_t type)
{
  struct ext_sum *s = opaque;
  CHECK_EQ_U64 (off, s->next_off);      /* contiguous, ascending */
  s->next_off = off + len;
  if (type & BDEV_EXTENT_HOLE)
    s->hole += len;
  else
    s->data += len;
  s->calls++;
  return 0;
}

static void
test_bridge (void)
{
  struct fake f;
  const uint64_t size = 16 << 20;
  fake_init (&f, size);
  f.can_fua = NBDKIT_FUA_NONE;
  f.can_zero = NBDKIT_ZERO_NONE;
  f.max_extents = 3;

  struct bdev *bd = bdev_next_wrap ((nbdkit_next *) &f, "fake", false);
  CHECK (bd);
  CHECK_EQ_U64 (bd->size, size);
  CHECK (!bd->readonly && !bd->growable);
  CHECK (bd->caps & BDEV_CAN_TRIM);
  CHECK (!(bd->caps & BDEV_CAN_FUA));
  CHECK (!(bd->caps & BDEV_CAN_ZERO));

  /* Writes land, FUA becomes a flush when the layer has no FUA. */
  char buf[8192];
  memset (buf, 'x', sizeof buf);
  CHECK (bdev_pwrite (bd, buf, sizeof buf, 65536 * 3, BDEV_FUA) == 0);
  CHECK_EQ_U64 (f.fua_writes, 0);
  CHECK_EQ_U64 (f.flushes, 1);
  CHECK (f.mem[65536 * 3] == 'x' && f.mem[65536 * 3 + 8191] == 'x');
  memset (buf, 0, sizeof buf);
  CHECK (bdev_pread (bd, buf, sizeof buf, 65536 * 3) == 0);
  CHECK (buf[0] == 'x' && buf[8191] == 'x');

  /* The container never grows. */
  errno = 0;
  CHECK (bdev_pwrite (bd, buf, 512, size - 256, 0) == -1 && errno == ENOSPC);

  /* Zero without a zero in the layer below: written as zeroes. */
  CHECK (bdev_zero (bd, 4096, 65536 * 3, 0) == 0);
  CHECK (f.mem[65536 * 3] == 0 && f.mem[65536 * 3 + 4096] == 'x');
  errno = 0;
  CHECK (bdev_zero (bd, 4096, 0, BDEV_FAST_ZERO) == -1 && errno == ENOTSUP);

  /* Extents: the layer answers 3 at a time; the bridge asks again and
   * hands over one contiguous map of the whole range.
   */
  struct ext_sum s = { .next_off = 0 };
  CHECK (bdev_extents (bd, size, 0, 0, sum_extent, &s) == 0);
  CHECK_EQ_U64 (s.next_off, size);
  CHECK_EQ_U64 (s.data, 65536);           /* only block 3 holds data */
  CHECK_EQ_U64 (s.hole, size - 65536);
  CHECK (s.calls >= 3);

  /* A request over nbdkit's 32-bit counts is split. */
  bdev_close (bd);
  CHECK_EQ_U64 (f.finalized, 1);
  CHECK_EQ_U64 (f.closed, 1);
  free (f.mem);

  const uint64_t big = (UINT64_C (1) << 30) + 8192;
  fake_init (&f, big);
  bd = bdev_next_wrap ((nbdkit_next *) &f, "fake-big", false);
  CHECK (bd);
  CHECK (bdev_trim (bd, big, 0, 0) == 0);
  CHECK (f.largest_request <= BDEV_NEXT_MAX_REQUEST);
  bdev_close (bd);
  free (f.mem);

  /* A read-only layer gives a read-only bdev. */
  fake_init (&f, 1 << 20);
  f.can_write = 0;
  bd = bdev_next_wrap ((nbdkit_next *) &f, "fake-ro", false);
  CHECK (bd && bd->readonly);
  errno = 0;
  CHECK (bdev_pwrite (bd, buf, 512, 0, 0) == -1 && errno == EROFS);
  bdev_close (bd);
  free (f.mem);
}

/* A qcow2 image made by the engine in a temporary file, copied into the
 * fake layer, then used through it.
 */
static void
load_new_image (struct fake *f, uint64_t vsize)
{
  char path[] = "/tmp/test_bdev_next.XXXXXX";
  int fd = mkstemp (path);
  CHECK (fd >= 0);
  close (fd);
  unlink (path);
  struct qcow2_create_opts o = { .size = vsize, .version = 3 };
  CHECK (qcow2_create (path, &o) == 0);
  fd = open (path, O_RDONLY);
  CHECK (fd >= 0);
  struct stat st;
  CHECK (fstat (fd, &st) == 0);
  CHECK ((uint64_t) st.st_size <= f->size);
  CHECK (pread (fd, f->mem, st.st_size, 0) == st.st_size);
  close (fd);
  unlink (path);
}

static struct bdev *
open_image (struct fake *f)
{
  struct bdev_open_opts o = { .no_paths = true };
  struct bdev *c = bdev_next_wrap ((nbdkit_next *) f, "fake", false);
  CHECK (c);
  return qcow2_open_container (c, "fake", &o, 0);
}

static void
fill (char *buf, size_t n, unsigned seed)
{
  for (size_t i = 0; i < n; i++)
    buf[i] = (char) (seed * 131 + i * 7 + (i >> 9));
}

static void
test_qcow2_over_next (void)
{
  struct fake f;
  const uint64_t csize = 2 << 20;       /* 2 MiB of container */
  const uint64_t vsize = 64 << 20;      /* 64 MiB virtual disk */
  static char buf[65536], got[65536];
  fake_init (&f, csize);
  load_new_image (&f, vsize);

  struct bdev *bd = open_image (&f);
  CHECK (bd);
  CHECK_EQ_U64 (bd->size, vsize);

  /* Write clusters until the container is full; every write before the
   * failure must read back, before and after a reopen.
   */
  unsigned written = 0;
  int r;
  for (;;) {
    fill (buf, sizeof buf, written);
    errno = 0;
    r = bdev_pwrite (bd, buf, sizeof buf, (uint64_t) written * 1048576, 0);
    if (r == -1)
      break;
    written++;
    CHECK (written < 64);
  }
  CHECK (errno == ENOSPC);
  CHECK (written >= 8);                  /* most of 2 MiB was usable */
  CHECK (bdev_flush (bd) == 0);
  /* Overwrites of allocated clusters still work when full. */
  fill (buf, sizeof buf, 0);
  CHECK (bdev_pwrite (bd, buf, sizeof buf, 0, 0) == 0);
  bdev_close (bd);

  bd = open_image (&f);
  CHECK (bd);
  for (unsigned i = 0; i < written; i++) {
    fill (buf, sizeof buf, i);
    CHECK (bdev_pread (bd, got, sizeof got, (uint64_t) i * 1048576) == 0);
    CHECK (memcmp (buf, got, sizeof buf) == 0);
  }
  /* The write that failed left nothing behind. */
  CHECK (bdev_pread (bd, got, sizeof got, (uint64_t) written * 1048576) == 0);
  for (size_t i = 0; i < sizeof got; i++)
    CHECK (got[i] == 0);
  bdev_close (bd);
  free (f.mem);
}

/* An image whose container has no directory must not name files. */
static void
test_no_paths (void)
{
  struct fake f;
  fake_init (&f, 1 << 20);
  char path[] = "/tmp/test_bdev_next_b.XXXXXX";
  int fd = mkstemp (path);
  CHECK (fd >= 0);
  close (fd);
  unlink (path);
  struct qcow2_create_opts o = { .size = 1 << 20, .version = 3,
                                 .backing = "/etc/passwd",
                                 .backing_format = "raw" };
  CHECK (qcow2_create (path, &o) == 0);
  fd = open (path, O_RDONLY);
  CHECK (fd >= 0);
  CHECK (pread (fd, f.mem, 1 << 20, 0) > 0);
  close (fd);
  unlink (path);
  errno = 0;
  CHECK (open_image (&f) == NULL);
  free (f.mem);
}

/* The format filter's engine: writes through the connection's context
 * (as an open that repairs or replays a log does), then fails.
 */
static struct bdev *
bdev_format_filter_open_image (const char *export, nbdkit_next *next,
                               bool readonly)
{
  static const char b[512] = { 1 };
  struct bdev *c = bdev_next_routed (next, export, readonly);
  CHECK (c);
  CHECK (bdev_pwrite (c, b, sizeof b, 0, 0) == 0);
  bdev_close (c);
  kvm_error ("the engine cannot open this image");
  return NULL;
}

static int
next_open_ok (nbdkit_context *context, int readonly, const char *export)
{
  (void) context; (void) readonly; (void) export;
  return 0;
}

/* A failed .prepare leaves nothing on the list of contexts to flush:
 * nbdkit then frees the context without .finalize.
 */
static void
test_failed_prepare (void)
{
  struct fake f;
  fake_init (&f, 1 << 20);
  f.ops.can_multi_conn = fk_zero_v;     /* flushes tracked per context */
  void *h = bdev_format_filter_open (next_open_ok, NULL, 0, "", 0);
  CHECK (h);
  CHECK (bdev_format_filter_prepare ((nbdkit_next *) &f, h, 0) == -1);
  CHECK (bdev_next_dirty_list == NULL);
  CHECK (f.flushes == 1);               /* what the open wrote */
  bdev_format_filter_close (h);
  free (f.mem);
}

int
main (void)
{
  test_bridge ();
  test_qcow2_over_next ();
  test_no_paths ();
  test_failed_prepare ();
  printf ("test_bdev_next: ok\n");
  return 0;
}
