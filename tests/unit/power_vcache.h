/* SPDX-License-Identifier: BSD-3-Clause */
/* Power-loss harness: a "volatile cache" bdev.
 *
 * Every write/zero/trim is applied to a RAM copy (what reads see) and
 * recorded in a log of the writes since the last flush.  A flush applies
 * the log to the durable image.  vc_cut() builds what a disk could hold
 * after a power loss: the durable image plus an arbitrary subset of the
 * logged writes (in issue order), optionally torn at 512-byte sectors.
 * FUA writes are always kept.  Several vcaches may share one power
 * domain (a thin pool and its separate metadata device).
 */
#ifndef POWER_VCACHE_H
#define POWER_VCACHE_H

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bdev/bdev.h"
#include "check.h"

static inline uint64_t
prng (uint64_t *s)
{
  uint64_t x = *s;
  x ^= x >> 12; x ^= x << 25; x ^= x >> 27;
  *s = x;
  return x * 0x2545F4914F6CDD1DULL;
}

struct vc_rec {
  uint64_t off;
  uint32_t len;
  int forced;
  unsigned char *data;          /* NULL: zeroes */
};

struct vcache {
  struct bdev bd;
  unsigned char *cur, *dur;
  uint64_t cap, cur_size, dur_size;
  int fixed_size;               /* size changes are durable at once */
  struct vc_rec *log;
  size_t nlog, caplog;
  /* Crash trigger shared by a power domain. */
  long *events, *cut_at;        /* cut before event number *cut_at */
  int *crashed;
  void (*on_cut) (void *opaque);
  void *cut_opaque;
  uint64_t nflush;
};

static void
vc_reserve (struct vcache *v, uint64_t end)
{
  if (end <= v->cap)
    return;
  uint64_t n = v->cap ? v->cap : 1 << 20;
  while (n < end) n *= 2;
  v->cur = realloc (v->cur, n);
  v->dur = realloc (v->dur, n);
  CHECK (v->cur && v->dur);
  memset (v->cur + v->cap, 0, n - v->cap);
  memset (v->dur + v->cap, 0, n - v->cap);
  v->cap = n;
}

static void
vc_event (struct vcache *v)
{
  if (*v->crashed)
    return;
  if (++*v->events == *v->cut_at) {
    *v->crashed = 1;
    v->on_cut (v->cut_opaque);
  }
}

static int
vc_pread (struct bdev *bd, void *buf, size_t n, uint64_t off)
{
  struct vcache *v = (struct vcache *) bd;
  uint64_t inside = off < v->cur_size ? v->cur_size - off : 0;
  if (inside > n) inside = n;
  memcpy (buf, v->cur + off, inside);
  memset ((char *) buf + inside, 0, n - inside);
  return 0;
}

/* >= 0: a write at offset 0 (an image header) moves the cut to this
 * many events after it, if that is sooner (cuts around a header switch).
 */
static long vc_header_cut = -1;

static void
vc_record (struct vcache *v, const void *buf, size_t n, uint64_t off,
           int forced)
{
  vc_event (v);
  if (off == 0 && vc_header_cut >= 0 && !*v->crashed &&
      (*v->cut_at < 0 || *v->cut_at > *v->events + 1 + vc_header_cut))
    *v->cut_at = *v->events + 1 + vc_header_cut;
  if (getenv ("POWER_TRACE"))
    fprintf (stderr, "    ev %ld: %s 0x%llx+0x%zx%s%s\n", *v->events,
             buf ? "write" : "zero", (unsigned long long) off, n,
             forced ? " FUA" : "", *v->crashed ? " (after cut)" : "");
  vc_reserve (v, off + n);
  if (buf) memcpy (v->cur + off, buf, n);
  else memset (v->cur + off, 0, n);
  if (off + n > v->cur_size) {
    v->cur_size = off + n;
    bdev_size_grow (&v->bd, off + n);
  }
  if (v->nlog == v->caplog) {
    v->caplog = v->caplog ? v->caplog * 2 : 64;
    v->log = realloc (v->log, v->caplog * sizeof *v->log);
    CHECK (v->log);
  }
  struct vc_rec *r = &v->log[v->nlog++];
  r->off = off; r->len = n; r->forced = forced;
  r->data = NULL;
  if (buf) {
    r->data = malloc (n);
    CHECK (r->data);
    memcpy (r->data, buf, n);
  }
}

/* Failure injection (POWER_FAIL_PCT): while vc_fail_on, each write and
 * flush fails with EIO with this probability.  A failed write may or
 * may not have reached the cache; a failed flush makes nothing durable
 * (the cache keeps it: a later flush does).
 */
static unsigned vc_fail_pct;
static int vc_fail_on;
static uint64_t vc_fail_rng = 0x5eed;
static long vc_failed;

static int
vc_should_fail (struct vcache *v)
{
  if (!vc_fail_on || !vc_fail_pct || *v->crashed)
    return 0;
  if (prng (&vc_fail_rng) % 100 >= vc_fail_pct)
    return 0;
  vc_failed++;
  return 1;
}

static int
vc_pwrite (struct bdev *bd, const void *buf, size_t n, uint64_t off,
           uint32_t flags)
{
  struct vcache *v = (struct vcache *) bd;
  if (vc_should_fail (v)) {
    if (prng (&vc_fail_rng) % 2)
      vc_record (v, buf, n, off, 0);
    else
      vc_event (v);
    if (getenv ("POWER_TRACE"))
      fprintf (stderr, "    write 0x%llx+0x%zx FAILS\n",
               (unsigned long long) off, n);
    errno = EIO;
    return -1;
  }
  vc_record (v, buf, n, off, !!(flags & BDEV_FUA));
  return 0;
}

static int
vc_zero (struct bdev *bd, uint64_t n, uint64_t off, uint32_t flags)
{
  struct vcache *v = (struct vcache *) bd;
  /* Zeroing/trimming past the end of a growable file does not grow it. */
  if (off >= v->cur_size) return 0;
  if (off + n > v->cur_size) n = v->cur_size - off;
  vc_record (v, NULL, n, off, !!(flags & BDEV_FUA));
  return 0;
}

static int
vc_trim (struct bdev *bd, uint64_t n, uint64_t off, uint32_t flags)
{
  return vc_zero (bd, n, off, flags);
}

static void
vc_drop_log (struct vcache *v)
{
  for (size_t i = 0; i < v->nlog; i++) free (v->log[i].data);
  v->nlog = 0;
}

static int
vc_flush (struct bdev *bd)
{
  struct vcache *v = (struct vcache *) bd;
  vc_event (v);
  int fail = vc_should_fail (v);
  if (getenv ("POWER_TRACE"))
    fprintf (stderr, "    ev %ld: flush%s%s\n", *v->events,
             *v->crashed ? " (after cut)" : "", fail ? " FAILS" : "");
  if (*v->crashed)
    return 0;
  if (fail) {
    errno = EIO;
    return -1;
  }
  memcpy (v->dur, v->cur, v->cur_size);
  v->dur_size = v->cur_size;
  vc_drop_log (v);
  v->nflush++;
  return 0;
}

static void
vc_close (struct bdev *bd)
{
  struct vcache *v = (struct vcache *) bd;
  vc_drop_log (v);
  free (v->log);
  free (v->cur);
  free (v->dur);
  bdev_free_common (bd);
}

static const struct bdev_ops vc_ops = {
  .format = "vcache", .close = vc_close, .pread = vc_pread,
  .pwrite = vc_pwrite, .flush = vc_flush, .trim = vc_trim, .zero = vc_zero,
};

/* A vcache whose durable (and current) content is IMG[0..LEN). */
static struct vcache *
vc_new (const void *img, uint64_t len, int growable, long *events,
        long *cut_at, int *crashed, void (*on_cut) (void *), void *opq)
{
  struct vcache *v = bdev_alloc (sizeof *v, &vc_ops, "vcache");
  CHECK (v);
  vc_reserve (v, len + 1);
  memcpy (v->cur, img, len);
  memcpy (v->dur, img, len);
  v->cur_size = v->dur_size = len;
  v->bd.size = len;
  v->bd.growable = growable;
  v->fixed_size = !growable;
  v->bd.block_size = 512;
  v->bd.caps = BDEV_CAN_TRIM | BDEV_CAN_ZERO;
  v->events = events; v->cut_at = cut_at; v->crashed = crashed;
  v->on_cut = on_cut; v->cut_opaque = opq;
  return v;
}

/* Grow a fixed-size device (an LV extended): durable at once. */
static void
vc_grow_fixed (struct vcache *v, uint64_t newsize)
{
  vc_reserve (v, newsize);
  v->cur_size = v->dur_size = newsize;
  bdev_size_grow (&v->bd, newsize);
}

/* The image after a power loss now.  MODE: 0 nothing unflushed survives,
 * 1 everything, 2 random subset, 3 random subset with torn writes.
 * Returns a malloc'd image, its length in *LEN.
 */
static unsigned char *
vc_cut (struct vcache *v, uint64_t *rng, int mode, uint64_t *len)
{
  uint64_t size = v->fixed_size ? v->cur_size : v->dur_size;
  unsigned char *img = calloc (1, v->cap);
  CHECK (img);
  memcpy (img, v->dur, v->dur_size);
  unsigned pct = prng (rng) % 101;
  for (size_t i = 0; i < v->nlog; i++) {
    struct vc_rec *r = &v->log[i];
    int keep = r->forced || mode == 1 ||
      (mode >= 2 && prng (rng) % 100 < pct);
    if (getenv ("POWER_TRACE"))
      fprintf (stderr, "    cut: unflushed write 0x%llx+0x%x %s\n",
               (unsigned long long) r->off, r->len, keep ? "KEPT" : "lost");
    if (!keep)
      continue;
    int torn = !r->forced && mode == 3 && prng (rng) % 3 == 0 && r->len > 512;
    for (uint64_t s = 0; s < r->len; s += 512) {
      uint64_t n = r->len - s < 512 ? r->len - s : 512;
      if (torn && prng (rng) % 2)
        continue;
      if (r->data) memcpy (img + r->off + s, r->data + s, n);
      else memset (img + r->off + s, 0, n);
      if (r->off + s + n > size) size = r->off + s + n;
    }
  }
  *len = size;
  return img;
}

#endif
