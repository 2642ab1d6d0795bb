/* SPDX-License-Identifier: BSD-3-Clause */
/* Concurrent requests and I/O errors from the layer below: several threads
 * issue overlapping writes, zeroes, trims, flushes and reads on one open
 * engine (qcow2, vmdk, vhdx, thin) whose storage (every file the engine
 * opens through bdev_storage_open, or the thin pool) fails writes,
 * flushes, zeroes/trims and reads with EIO at random, sometimes after
 * writing part or all of the request, and sometimes sleeps (up to 5 ms)
 * before passing a request on, so that whole requests of other threads run
 * between an engine's lock and its I/O (a deferred qcow2 write landing
 * after its cluster was freed and reused is found this way).
 *
 * VARIANT-fixed: the image sits in a container of fixed size (as below
 * an nbdkit filter) whose room after the image holds old data no request
 * wrote; there is room for about 3/4 of the disk, so writes also fail
 * with ENOSPC.  Old data must never be read.
 *
 * Model: every request gets a token and a [start, end] interval on one
 * global clock; sector S of a write with token T holds (MAGIC, T, S).  A
 * read of S may return the value of request W (covering S) when W began
 * before the read ended and no successful request covering S began after
 * W ended and ended before the read began.  A failed request may or may
 * not have taken effect (sector by sector); it never supersedes anything,
 * and neither does a trim (the old content may stay).  A sector read
 * while a write to it was in flight may mix old and new content in
 * 16-byte units (a file's pread is not atomic against a pwrite): each
 * part must then be allowed.
 * After the run, with injection off: every sector is read and checked, the
 * engine is flushed and closed, reopened and read again, where only the
 * requests made durable (FUA, or ended before a successful flush began)
 * supersede; then qemu-img check (leaks allowed) and qemu-img convert,
 * whose reading must pass the same check (thin: thin_check).
 *
 * Usage: test_cfail_threads [ENGINE VARIANT SEED [NSEEDS [OPS [PCT
 *                            [THREADS]]]]]  (no arguments: a small matrix)
 *   ENGINE qcow2 | vmdk | vhdx | thin
 *   VARIANT qcow2: plain backing extl2 extl2-backing small compress
 *           vmdk: sparse zg split  vhdx: dynamic
 *           thin: int, ext (metadata on a separate device)
 *           (qcow2, vmdk, vhdx: any of them with -fixed, except split)
 *   PCT     write, flush, zero/trim failures in percent (default 5)
 * Environment: CFAIL_READS=PCT (read failures, default PCT/2),
 *   CFAIL_FD=1 (the engine sees the container's descriptor: punch hole and
 *   truncate of a local file; default: a container without one, as NFS),
 *   CFAIL_VERBOSE=1, CFAIL_KEEP=1 (keep the directory).
 */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "bdev/bdev.h"
#include "bdev/formats.h"
#include "qcow2/qcow2.h"
#include "thin/thin.h"
#include "vhdx/vhdx.h"
#include "vmdk/vmdk.h"
#include "util/log.h"
#include "sector_token.h"
#include "random_fail_bdev.h"
#include "check.h"

#define MAGIC 0x43464c54u
#define TOK_BACKING 0xffffffffu
#define V_GARBAGE 0xfffffffeu
#define V_OTHER 0xfffffffdu
#define V_ZERO 0u
#define TOK_JUNK 0xfffffffcu    /* old data in a fixed container */

/* ---- fault injection below the engine ------------------------------ */
static atomic_int inj_on;
static unsigned pct_write, pct_flush, pct_read, pct_zero;
static atomic_ulong n_inj_w, n_inj_f, n_inj_r, n_inj_z, n_io;
static atomic_ulong seedctr;
static __thread uint64_t trng;

static uint64_t
xr (void)
{
  if (!trng)
    trng = (atomic_fetch_add (&seedctr, 1) + 1) * 0x9E3779B97F4A7C15ull;
  uint64_t x = trng;
  x ^= x >> 12; x ^= x << 25; x ^= x >> 27;
  trng = x;
  return x * 0x2545F4914F6CDD1DULL;
}

/* Sometimes sleep a little, so that other threads run in the middle. */
static void
jitter (void)
{
  uint64_t r = xr () % 100;
  if (r < 2)
    usleep (1000 + xr () % 4000);       /* long enough for whole requests */
  else if (r < 5)
    usleep (20 + xr () % 300);
  else if (r < 10)
    sched_yield ();
}

static int
inject (unsigned pct, atomic_ulong *ctr)
{
  atomic_fetch_add (&n_io, 1);
  if (!atomic_load (&inj_on))
    return 0;
  jitter ();
  if (pct && xr () % 1000 < pct * 10u) {
    atomic_fetch_add (ctr, 1);
    return 1;
  }
  return 0;
}

static enum rfail_verdict
cf_hook (struct rfail_bdev *f, enum rfail_op op, uint64_t count)
{
  (void) f; (void) count;
  int fail = 0;
  switch (op) {
  case RFAIL_READ: case RFAIL_EXTENTS:
    fail = inject (pct_read, &n_inj_r); break;
  case RFAIL_WRITE: fail = inject (pct_write, &n_inj_w); break;
  case RFAIL_FLUSH: fail = inject (pct_flush, &n_inj_f); break;
  case RFAIL_TRIM: case RFAIL_ZERO:
    fail = inject (pct_zero, &n_inj_z); break;
  }
  return fail ? RFAIL_FAIL : RFAIL_PASS;
}

/* Every file an engine opens goes through the failing device. */
static int give_fd;
RFAIL_WRAP_STORAGE (cf_hook, xr, give_fd)

/* ---- the model ------------------------------------------------------ */
enum { OP_WRITE, OP_ZERO, OP_TRIM, OP_FLUSH };

struct op {
  uint64_t off, len;
  uint64_t start, end;          /* on the clock */
  uint8_t type, ok, fua, done;
};

struct rd {
  uint64_t off, len, start, end;
  uint32_t *v;                  /* per sector */
  uint32_t (*torn)[4];          /* per sector, if v is V_GARBAGE */
  uint8_t *ntorn;
};

static atomic_ulong clk = 1;
static struct op *ops;
static atomic_ulong nops;
static unsigned long maxops;
static uint64_t vsize, nsect, gran;
static int have_backing, trim_init;
static int verbose;

static uint64_t tick (void) { return atomic_fetch_add (&clk, 1); }

static void
fill (unsigned char *buf, uint64_t sect, uint32_t tok)
{
  sector_fill (buf, MAGIC, sect, tok);
}

static uint32_t
decode_unit (const uint64_t *w, uint64_t sect)
{
  if (!w[0] && !w[1]) return V_ZERO;
  if ((w[0] >> 32) != MAGIC) return V_GARBAGE;
  if ((w[1] ^ SECTOR_SALT) != sect) return V_OTHER;
  return (uint32_t) w[0];
}

static uint32_t
decode (const unsigned char *buf, uint64_t sect)
{
  const uint64_t *w = (const uint64_t *) buf;
  int zero = 1;
  for (int i = 0; i < 64; i++) if (w[i]) { zero = 0; break; }
  if (zero) return V_ZERO;
  for (int i = 2; i < 64; i++) if (w[i] != w[i & 1]) return V_GARBAGE;
  return decode_unit (w, sect);
}

/* A sector read while a write to it was in flight may mix the old and
 * the new content (a file's pread and pwrite are not atomic against each
 * other): the distinct values of its 16-byte units, up to 4, in OUT.
 * Returns how many, or 0 if some unit is garbage.
 */
static int
decode_torn (const unsigned char *buf, uint64_t sect, uint32_t out[4])
{
  const uint64_t *w = (const uint64_t *) buf;
  int n = 0;
  for (int i = 0; i < 64; i += 2) {
    uint32_t v = decode_unit (w + i, sect);
    if (v == V_GARBAGE || v == V_OTHER) return 0;
    int j;
    for (j = 0; j < n && out[j] != v; j++) ;
    if (j == n) {
      if (n == 4) return 0;
      out[n++] = v;
    }
  }
  return n;
}

/* Per sector: the tokens of the write/zero/trim requests covering it. */
static uint32_t **cov;
static uint32_t *ncov, *capcov;

static void
build_cov (void)
{
  cov = calloc (nsect, sizeof *cov);
  ncov = calloc (nsect, sizeof *ncov);
  capcov = calloc (nsect, sizeof *capcov);
  CHECK (cov && ncov && capcov);
  unsigned long n = atomic_load (&nops);
  for (unsigned long t = 1; t <= n; t++) {
    struct op *o = &ops[t];
    CHECK (o->done);
    if (o->type == OP_FLUSH) continue;
    for (uint64_t s = o->off / 512; s < (o->off + o->len) / 512; s++) {
      if (ncov[s] == capcov[s]) {
        capcov[s] = capcov[s] ? capcov[s] * 2 : 8;
        cov[s] = realloc (cov[s], capcov[s] * sizeof **cov);
        CHECK (cov[s]);
      }
      cov[s][ncov[s]++] = (uint32_t) t;
    }
  }
}

static void
free_cov (void)
{
  for (uint64_t s = 0; s < nsect; s++) free (cov[s]);
  free (cov); free (ncov); free (capcov);
}

/* Does value V of op W (0: the initial content, end 0) fit a read of
 * sector S over [RS, RE]?  DUR: only durable requests supersede (FMAX:
 * start of the last successful flush).
 */
static int
superseded (uint64_t s, uint64_t wend, uint64_t rs, int dur, uint64_t fmax)
{
  for (uint32_t i = 0; i < ncov[s]; i++) {
    struct op *x = &ops[cov[s][i]];
    /* A trim leaves the old content or zeroes (or the backing file's):
     * it supersedes nothing.
     */
    if (!x->ok || x->type == OP_TRIM || x->start <= wend || x->end >= rs)
      continue;
    if (dur && !x->fua && x->end >= fmax) continue;
    return 1;
  }
  return 0;
}

static int
produces (struct op *o, uint32_t v, uint32_t tok, uint64_t s)
{
  (void) s;
  switch (o->type) {
  case OP_WRITE: return v == tok;
  case OP_ZERO: return v == V_ZERO;
  case OP_TRIM: return v == V_ZERO || (trim_init && v == TOK_BACKING);
  }
  return 0;
}

static int
allowed (uint64_t s, uint32_t v, uint64_t rs, uint64_t re, int dur,
         uint64_t fmax)
{
  uint32_t initv = have_backing ? TOK_BACKING : V_ZERO;
  if (v == initv && !superseded (s, 0, rs, dur, fmax))
    return 1;
  if (v != V_ZERO && v != TOK_BACKING) {
    if (v == V_GARBAGE || v == V_OTHER || v == 0 || v > atomic_load (&nops))
      return 0;
    struct op *o = &ops[v];
    if (o->type != OP_WRITE || s < o->off / 512 ||
        s >= (o->off + o->len) / 512)
      return 0;
    return o->start < re && !superseded (s, o->end, rs, dur, fmax);
  }
  for (uint32_t i = 0; i < ncov[s]; i++) {
    struct op *o = &ops[cov[s][i]];
    if (produces (o, v, cov[s][i], s) && o->start < re &&
        !superseded (s, o->end, rs, dur, fmax))
      return 1;
  }
  return 0;
}

static void
explain (uint64_t s, uint32_t v, uint64_t rs, uint64_t re)
{
  fprintf (stderr, "  sector %" PRIu64 " (0x%" PRIx64 ") read [%" PRIu64
           ",%" PRIu64 "] value %s%" PRIu32 "; requests covering it:\n",
           s, s * 512, rs, re,
           v == V_GARBAGE ? "GARBAGE " : v == V_OTHER ? "OTHER-SECTOR " :
           v == TOK_BACKING ? "BACKING " : v == V_ZERO ? "ZERO " : "tok ", v);
  for (uint32_t i = 0; i < ncov[s]; i++) {
    struct op *o = &ops[cov[s][i]];
    fprintf (stderr, "    tok %u %s [%" PRIu64 ",%" PRIu64 "] %s%s "
             "off 0x%" PRIx64 " len 0x%" PRIx64 "\n", cov[s][i],
             o->type == OP_WRITE ? "write" : o->type == OP_ZERO ? "zero"
             : "trim", o->start, o->end, o->ok ? "ok" : "FAILED",
             o->fua ? " FUA" : "", o->off, o->len);
  }
}

/* ---- workers -------------------------------------------------------- */
struct worker {
  struct bdev *bd;
  unsigned id, nops;
  uint64_t rng;
  struct rd *rds;
  size_t nrd, caprd;
  unsigned long fails, other_errno, enospc;
  pthread_t th;
};

static uint64_t
wr (struct worker *w)
{
  uint64_t x = w->rng;
  x ^= x >> 12; x ^= x << 25; x ^= x >> 27;
  w->rng = x;
  return x * 0x2545F4914F6CDD1DULL;
}

static void
pick (struct worker *w, uint64_t *off, uint64_t *len)
{
  uint64_t r = wr (w) % 8;
  if (r < 3) {
    *off = (wr (w) % (vsize / gran)) * gran;
    *len = gran * (1 + wr (w) % 2);
  } else if (r < 7) {
    *off = (wr (w) % (vsize / 512)) * 512;
    *len = 512 * (1 + wr (w) % 16);
  } else {
    *off = (wr (w) % (vsize / 512)) * 512;
    *len = 512 * (1 + wr (w) % (3 * gran / 512));
  }
  if (*len > 1024 * 1024) *len = 1024 * 1024;
  if (*off + *len > vsize) *len = vsize - *off;
}

static int read_to (struct bdev *bd, struct worker *w, uint64_t off,
                    uint64_t len, unsigned char *buf);

static void *
worker_fn (void *arg)
{
  struct worker *w = arg;
  unsigned char *buf = malloc (1024 * 1024 + 4 * gran);
  CHECK (buf);
  for (unsigned i = 0; i < w->nops; i++) {
    uint64_t off, len;
    pick (w, &off, &len);
    unsigned r = wr (w) % 100;
    if (r < 25) {
      (void) read_to (w->bd, w, off, len, buf);
      continue;
    }
    unsigned long t = atomic_fetch_add (&nops, 1) + 1;
    CHECK (t < maxops);
    struct op *o = &ops[t];
    o->off = off; o->len = len;
    int rc;
    if (r < 65) {
      o->type = OP_WRITE;
      o->fua = wr (w) % 12 == 0;
      for (uint64_t s = 0; s < len / 512; s++)
        fill (buf + s * 512, off / 512 + s, (uint32_t) t);
      o->start = tick ();
      rc = bdev_pwrite (w->bd, buf, len, off, o->fua ? BDEV_FUA : 0);
    } else if (r < 78) {
      o->type = OP_ZERO;
      uint32_t fl = wr (w) % 2 ? BDEV_MAY_TRIM : 0;
      o->fua = wr (w) % 10 == 0;
      o->start = tick ();
      rc = bdev_zero (w->bd, len, off, fl | (o->fua ? BDEV_FUA : 0));
    } else if (r < 88) {
      o->type = OP_TRIM;
      o->start = tick ();
      rc = bdev_trim (w->bd, len, off, 0);
      if (rc == -1 && errno == ENOTSUP) rc = 0;
    } else {
      o->type = OP_FLUSH;
      o->start = tick ();
      rc = bdev_flush (w->bd);
    }
    o->end = tick ();
    o->ok = rc == 0;
    if (rc != 0) {
      w->fails++;
      if (errno == ENOSPC)
        w->enospc++;
      else if (errno != EIO) {
        w->other_errno++;
        if (verbose)
          fprintf (stderr, "thread %u: op type %d failed with %s\n", w->id,
                   o->type, strerror (errno));
      }
    }
    __atomic_store_n (&o->done, 1, __ATOMIC_RELEASE);
  }
  free (buf);
  return NULL;
}

/* Read [off, off+len) and record the values (checked after the run). */
static int
read_to (struct bdev *bd, struct worker *w, uint64_t off, uint64_t len,
         unsigned char *buf)
{
  uint64_t rs = tick ();
  int rc = bdev_pread (bd, buf, len, off);
  uint64_t re = tick ();
  if (rc != 0)
    return -1;
  if (w->nrd == w->caprd) {
    w->caprd = w->caprd ? w->caprd * 2 : 256;
    w->rds = realloc (w->rds, w->caprd * sizeof *w->rds);
    CHECK (w->rds);
  }
  struct rd *d = &w->rds[w->nrd++];
  d->off = off; d->len = len; d->start = rs; d->end = re;
  d->v = malloc (len / 512 * sizeof *d->v);
  d->torn = NULL;
  d->ntorn = NULL;
  CHECK (d->v);
  for (uint64_t s = 0; s < len / 512; s++) {
    d->v[s] = decode (buf + s * 512, off / 512 + s);
    if (d->v[s] == V_GARBAGE) {
      if (!d->torn) {
        d->torn = calloc (len / 512, sizeof *d->torn);
        d->ntorn = calloc (len / 512, 1);
        CHECK (d->torn && d->ntorn);
      }
      d->ntorn[s] = decode_torn (buf + s * 512, off / 512 + s, d->torn[s]);
      if (d->ntorn[s])
        continue;
    }
    if (d->v[s] == V_GARBAGE || d->v[s] == V_OTHER) {
      uint64_t *q = (uint64_t *) (buf + s * 512);
      fprintf (stderr, "thread %u: read [%" PRIu64 ",%" PRIu64 "] of sector "
               "%" PRIu64 ": %s %016" PRIx64 " %016" PRIx64 " ... %016"
               PRIx64 "\n", w->id, rs, re, off / 512 + s,
               d->v[s] == V_GARBAGE ? "garbage" : "another sector's data",
               q[0], q[1], q[63]);
    }
  }
  return 0;
}

/* ---- one run -------------------------------------------------------- */
static const char *engine, *variant, *variant_arg;
static char dir[64];
static char img[160], metapath[160];
static const char *qfmt;
static const char *fopts[4];
static int fixed;               /* VARIANT ends in -fixed */

static struct bdev *
open_img (void)
{
  if (!strcmp (engine, "thin")) {
    struct bdev_open_opts po = { 0 };
    struct bdev *pool = bdev_storage_open (img, &po);
    CHECK (pool);
    struct thin_opts t = { .virtual_size = vsize, .chunk_size = gran,
                           .format = true };
    if (!strcmp (variant, "ext")) {
      CHECK ((t.meta = bdev_storage_open (metapath, &po)));
    }
    return thin_open (pool, &t);
  }
  struct bdev_open_opts o = { .format_opts = fopts };
  if (!fixed)
    return bdev_open (img, qfmt, &o, 0);
  /* A container of fixed size, as an nbdkit export below a filter. */
  struct bdev_open_opts fo = { .growable = false };
  struct bdev *in = __real_bdev_storage_open (img, &fo);
  CHECK (in);
  struct bdev *c = rfail_wrap (in, cf_hook, xr);
  if (!strcmp (engine, "qcow2"))
    return qcow2_open_container (c, img, &o, 0);
  if (!strcmp (engine, "vmdk"))
    return vmdk_open_container (c, img, &o, 0);
  return vhdx_open_container (c, img, img, &o, 0);
}

static void
sh (const char *cmd)
{
  if (verbose) fprintf (stderr, "+ %s\n", cmd);
  CHECK (system (cmd) == 0);
}

/* The raw backing file base.raw (every sector holding TOK_BACKING) of a
 * qcow2 variant CO is created over.
 */
static void
make_backing (struct qcow2_create_opts *co)
{
  char bp[160];
  snprintf (bp, sizeof bp, "%s/base.raw", dir);
  unsigned char *b = malloc (vsize);
  CHECK (b);
  for (uint64_t s = 0; s < vsize / 512; s++)
    fill (b + s * 512, s, TOK_BACKING);
  FILE *fp = fopen (bp, "w");
  CHECK (fp && fwrite (b, 1, vsize, fp) == vsize && fclose (fp) == 0);
  free (b);
  co->backing = "base.raw";
  co->backing_format = "raw";
  have_backing = trim_init = 1;
}

static void
setup (uint64_t seed)
{
  char cmd[512];
  (void) seed;
  have_backing = trim_init = 0;
  fopts[0] = NULL;
  static char vbuf[64];
  variant = variant_arg;
  size_t vl = strlen (variant);
  fixed = vl > 6 && !strcmp (variant + vl - 6, "-fixed");
  if (fixed) {
    snprintf (vbuf, sizeof vbuf, "%.*s", (int) (vl - 6), variant);
    variant = vbuf;
  }
  gran = 65536;
  vsize = 4 << 20;
  if (!strcmp (engine, "qcow2")) {
    qfmt = "qcow2";
    snprintf (img, sizeof img, "%s/img.qcow2", dir);
    struct qcow2_create_opts co = { .size = vsize };
    if (!strcmp (variant, "backing")) {
      make_backing (&co);
    } else if (!strcmp (variant, "extl2")) {
      co.extended_l2 = true;
    } else if (!strcmp (variant, "extl2-backing")) {
      co.extended_l2 = true;
      make_backing (&co);
    } else if (!strcmp (variant, "small")) {
      co.cluster_size = 4096;
      gran = 4096;
      vsize = 2 << 20;
      fopts[0] = "qcow2.cache=8192";
      fopts[1] = NULL;
    } else if (!strcmp (variant, "compress")) {
      fopts[0] = "qcow2.compress=zlib";
      fopts[1] = NULL;
    } else
      CHECK (!strcmp (variant, "plain"));
    co.size = vsize;
    CHECK (qcow2_create (img, &co) == 0);
  } else if (!strcmp (engine, "vmdk")) {
    qfmt = "vmdk";
    snprintf (img, sizeof img, "%s/img.vmdk", dir);
    const char *o1[] = { "subformat=monolithicSparse", NULL };
    const char *o2[] = { "subformat=monolithicSparse", "zeroed_grain=on",
                         NULL };
    const char *o3[] = { "subformat=twoGbMaxExtentSparse", NULL };
    const char *const *co = !strcmp (variant, "zg") ? o2
      : !strcmp (variant, "split") ? o3 : o1;
    CHECK (bdev_format_find ("vmdk")->create (img, vsize, co) == 0);
  } else if (!strcmp (engine, "vhdx")) {
    qfmt = "vhdx";
    snprintf (img, sizeof img, "%s/img.vhdx", dir);
    const char *co[] = { "subformat=dynamic", "block_size=1048576", NULL };
    gran = 1 << 20;
    vsize = 8 << 20;
    CHECK (bdev_format_find ("vhdx")->create (img, vsize, co) == 0);
  } else if (!strcmp (engine, "thin")) {
    qfmt = NULL;
    CHECK (!strcmp (variant, "int") || !strcmp (variant, "ext"));
    snprintf (img, sizeof img, "%s/pool.raw", dir);
    snprintf (metapath, sizeof metapath, "%s/meta.raw", dir);
    snprintf (cmd, sizeof cmd, "truncate -s %" PRIu64 " %s && truncate -s "
              "%" PRIu64 " %s", (uint64_t) 16 << 20, img,
              (uint64_t) 1 << 20, metapath);
    sh (cmd);
  } else {
    fprintf (stderr, "unknown engine %s\n", engine);
    exit (2);
  }
  nsect = vsize / 512;
  if (fixed) {
    /* Room for about 3/4 of the disk after the image, full of old data
     * (sectors of the disk with a token no request has): a failed or
     * short write must never show it.  Running out of room gives ENOSPC.
     */
    CHECK (qfmt);
    FILE *fp = fopen (img, "a");
    CHECK (fp);
    fseek (fp, 0, SEEK_END);
    long cur = ftell (fp);
    uint64_t extra = vsize * 3 / 4 + 65536 - cur % 65536;
    unsigned char sec[512];
    uint64_t r = seed * 31 + 7;
    for (uint64_t i = 0; i < extra / 512; i++) {
      r = r * 6364136223846793005ull + 1442695040888963407ull;
      fill (sec, (r >> 33) % nsect, TOK_JUNK);
      CHECK (fwrite (sec, 1, 512, fp) == 512);
    }
    CHECK (fclose (fp) == 0);
  }
}

static unsigned long n_torn;

static int
check_reads (struct worker *w, unsigned nthreads, const char *what)
{
  int bad = 0;
  for (unsigned i = 0; i < nthreads && !bad; i++)
    for (size_t j = 0; j < w[i].nrd && !bad; j++) {
      struct rd *d = &w[i].rds[j];
      for (uint64_t k = 0; k < d->len / 512; k++) {
        uint64_t s = d->off / 512 + k;
        if (d->v[k] == V_GARBAGE && d->ntorn && d->ntorn[k]) {
          int ok = 1;
          for (int u = 0; u < d->ntorn[k]; u++)
            if (!allowed (s, d->torn[k][u], d->start, d->end, 0, 0)) {
              fprintf (stderr, "%s: thread %u read of 0x%" PRIx64 "+0x%"
                       PRIx64 " during the run, a torn sector:\n", what, i,
                       d->off, d->len);
              explain (s, d->torn[k][u], d->start, d->end);
              ok = 0;
              break;
            }
          if (!ok) { bad = 1; break; }
          n_torn++;
          continue;
        }
        if (!allowed (s, d->v[k], d->start, d->end, 0, 0)) {
          fprintf (stderr, "%s: thread %u read of 0x%" PRIx64 "+0x%" PRIx64
                   " during the run:\n", what, i, d->off, d->len);
          explain (s, d->v[k], d->start, d->end);
          bad = 1;
          break;
        }
      }
    }
  return bad;
}

/* Read every sector of BD (or of raw file PATH) and check it. */
static int
check_all (struct bdev *bd, const char *path, int dur, uint64_t fmax,
           const char *what, uint32_t *out)
{
  unsigned char *buf = malloc (vsize);
  CHECK (buf);
  uint64_t rs = tick ();
  if (bd) {
    if (bdev_pread (bd, buf, vsize, 0) != 0) {
      fprintf (stderr, "%s: reading the whole disk fails: %m\n", what);
      free (buf);
      return 1;
    }
  } else {
    FILE *fp = fopen (path, "r");
    CHECK (fp);
    CHECK (fread (buf, 1, vsize, fp) == vsize);
    fclose (fp);
  }
  uint64_t re = tick ();
  int bad = 0;
  for (uint64_t s = 0; s < nsect; s++) {
    uint32_t v = decode (buf + s * 512, s);
    if (out) out[s] = v;
    if (!bad && !allowed (s, v, rs, re, dur, fmax)) {
      fprintf (stderr, "%s:\n", what);
      explain (s, v, rs, re);
      bad = 1;
    }
  }
  free (buf);
  return bad;
}

static int
run_seed (uint64_t seed, unsigned nthreads, unsigned nper)
{
  char cmd[1024];
  snprintf (dir, sizeof dir, "/tmp/cfail.XXXXXX");
  CHECK (mkdtemp (dir));
  setup (seed);
  maxops = (unsigned long) nthreads * nper + 16;
  ops = calloc (maxops, sizeof *ops);
  CHECK (ops);
  atomic_store (&nops, 0);
  atomic_store (&n_io, 0); atomic_store (&n_inj_w, 0);
  atomic_store (&n_inj_f, 0); atomic_store (&n_inj_z, 0);
  atomic_store (&n_inj_r, 0);
  atomic_store (&seedctr, seed * 1000);

  struct bdev *bd = open_img ();
  CHECK (bd);
  CHECK (bd->size == vsize);
  atomic_store (&inj_on, 1);
  struct worker w[16];
  for (unsigned i = 0; i < nthreads; i++) {
    w[i] = (struct worker) { .bd = bd, .id = i, .nops = nper,
                             .rng = seed * 0x9E3779B97F4A7C15ull + i * 7 + 1 };
    CHECK (pthread_create (&w[i].th, NULL, worker_fn, &w[i]) == 0);
  }
  unsigned long fails = 0, other = 0, nospc = 0;
  for (unsigned i = 0; i < nthreads; i++) {
    CHECK (pthread_join (w[i].th, NULL) == 0);
    fails += w[i].fails; other += w[i].other_errno; nospc += w[i].enospc;
  }
  atomic_store (&inj_on, 0);
  build_cov ();
  int bad = check_reads (w, nthreads, "online");

  /* Quiescent, no injection. */
  if (!bad)
    bad = check_all (bd, NULL, 0, 0, "after the run", NULL);
  uint64_t fs = tick ();
  int flush_ok = bdev_flush (bd) == 0;
  if (!flush_ok)
    fprintf (stderr, "seed %" PRIu64 ": flush with injection off fails: %m\n",
             seed);
  uint64_t fmax = 0;
  for (unsigned long t = 1; t <= atomic_load (&nops); t++)
    if (ops[t].type == OP_FLUSH && ops[t].ok && ops[t].start > fmax)
      fmax = ops[t].start;
  if (flush_ok) fmax = fs;
  bdev_close (bd);

  if (!bad) {
    bd = open_img ();
    if (!bd) {
      fprintf (stderr, "seed %" PRIu64 ": the image does not open again\n",
               seed);
      bad = 1;
    } else {
      bad = check_all (bd, NULL, 1, fmax, "after close and reopen", NULL);
      if (!bad && !flush_ok)
        bad = 1;
      /* Writable again: one more write and flush must work. */
      if (!bad) {
        unsigned char *b = calloc (1, gran);
        CHECK (b);
        int wok = bdev_pwrite (bd, b, gran, 0, 0) == 0;
        if ((!wok && !(fixed && errno == ENOSPC)) || bdev_flush (bd) != 0) {
          fprintf (stderr, "seed %" PRIu64 ": writing after reopen fails: "
                   "%m\n", seed);
          bad = 1;
        }
        /* Restore the model for the checks below: one zero request. */
        unsigned long t = atomic_fetch_add (&nops, 1) + 1;
        CHECK (t < maxops);
        ops[t] = (struct op) { .off = 0, .len = gran, .type = OP_ZERO,
                               .ok = wok, .fua = 1, .done = 1 };
        ops[t].start = tick (); ops[t].end = tick ();
        free_cov ();
        build_cov ();
        free (b);
      }
      bdev_close (bd);
    }
  }
  if (!bad && qfmt) {
    snprintf (cmd, sizeof cmd, "qemu-img check -f %s %s > %s/check.out 2>&1;"
              " r=$?; [ $r = 0 ] || [ $r = 3 ] || { cat %s/check.out >&2; "
              "exit 1; }", qfmt, img, dir, dir);
    if (system (cmd) != 0) {
      fprintf (stderr, "seed %" PRIu64 ": qemu-img check finds corruption\n",
               seed);
      bad = 1;
    }
    snprintf (cmd, sizeof cmd, "qemu-img convert -f %s -O raw %s %s/q.raw",
              qfmt, img, dir);
    if (!bad && system (cmd) != 0) {
      fprintf (stderr, "seed %" PRIu64 ": qemu-img convert fails\n", seed);
      bad = 1;
    }
    snprintf (cmd, sizeof cmd, "%s/q.raw", dir);
    if (!bad)
      bad = check_all (NULL, cmd, 1, fmax, "read by qemu-img", NULL);
  } else if (!bad) {
    struct bdev_open_opts po = { 0 };
    struct bdev *pool = bdev_storage_open (img, &po), *meta = NULL;
    CHECK (pool);
    if (!strcmp (variant, "ext"))
      CHECK ((meta = bdev_storage_open (metapath, &po)));
    snprintf (cmd, sizeof cmd, "%s/check.out", dir);
    FILE *out = fopen (cmd, "w");
    long n = thin_check (pool, meta, out, false);
    fclose (out);
    bdev_close (pool);
    if (meta) bdev_close (meta);
    if (n != 0) {
      snprintf (cmd, sizeof cmd,
                "grep -q ' 0 double mappings, [0-9]* leaks, 0 out-of-range "
                "entries, 0 mapped-but-free, 0 bad checksums' %s/check.out",
                dir);
      if (n < 0 || system (cmd) != 0) {
        fprintf (stderr, "seed %" PRIu64 ": thin_check: %ld\n", seed, n);
        snprintf (cmd, sizeof cmd, "cat %s/check.out >&2", dir);
        (void) system (cmd);
        bad = 1;
      }
    }
  }
  printf ("%s %s seed %" PRIu64 ": %u threads, %lu requests (%lu failed, "
          "%lu ENOSPC, %lu neither), %lu I/O below, injected %lu writes %lu flushes "
          "%lu zero/trim %lu reads, %lu torn sectors read: %s\n", engine,
          variant_arg, seed, nthreads,
          atomic_load (&nops), fails, nospc, other, atomic_load (&n_io),
          atomic_load (&n_inj_w), atomic_load (&n_inj_f),
          atomic_load (&n_inj_z), atomic_load (&n_inj_r), n_torn,
          bad ? "FAIL" : "ok");
  n_torn = 0;
  fflush (stdout);
  for (unsigned i = 0; i < nthreads; i++) {
    for (size_t j = 0; j < w[i].nrd; j++) {
      free (w[i].rds[j].v);
      free (w[i].rds[j].torn);
      free (w[i].rds[j].ntorn);
    }
    free (w[i].rds);
  }
  free_cov ();
  free (ops);
  if (!bad || !getenv ("CFAIL_KEEP")) {
    snprintf (cmd, sizeof cmd, "rm -rf %s", dir);
    (void) system (cmd);
  } else
    fprintf (stderr, "kept %s\n", dir);
  return bad;
}

static void
quiet (const char *fmt, va_list ap)
{
  if (verbose > 1) { vfprintf (stderr, fmt, ap); fputc ('\n', stderr); }
}

static void
set_pct (unsigned pct)
{
  pct_write = pct_flush = pct_zero = pct;
  const char *r = getenv ("CFAIL_READS");
  pct_read = r ? (unsigned) atoi (r) : pct / 2;
}

int
main (int argc, char **argv)
{
  verbose = getenv ("CFAIL_VERBOSE") ? atoi (getenv ("CFAIL_VERBOSE")) : 0;
  give_fd = getenv ("CFAIL_FD") && atoi (getenv ("CFAIL_FD"));
  kvm_log_set (quiet, quiet);
  if (system ("command -v qemu-img >/dev/null 2>&1") != 0) {
    fprintf (stderr, "qemu-img not installed\n");
    const char *ci = getenv ("CI");
    return ci && !strcmp (ci, "true") ? 1 : 77;
  }
  int fails = 0;
  if (argc >= 4) {
    engine = argv[1]; variant_arg = argv[2];
    uint64_t seed = strtoull (argv[3], NULL, 10);
    unsigned ns = argc > 4 ? atoi (argv[4]) : 1;
    unsigned nper = argc > 5 ? atoi (argv[5]) : 300;
    set_pct (argc > 6 ? atoi (argv[6]) : 5);
    unsigned nth = argc > 7 ? atoi (argv[7]) : 4;
    CHECK (nth >= 1 && nth <= 16);
    for (unsigned i = 0; i < ns; i++)
      fails += run_seed (seed + i, nth, nper);
    return fails ? 1 : 0;
  }
  static const struct { const char *e, *v; } m[] = {
    { "qcow2", "plain" }, { "qcow2", "backing" }, { "qcow2", "extl2" },
    { "qcow2", "small" }, { "qcow2", "plain-fixed" }, { "vmdk", "sparse" },
    { "vmdk", "split" }, { "vmdk", "zg-fixed" }, { "vhdx", "dynamic" },
    { "vhdx", "dynamic-fixed" }, { "thin", "int" }, { "thin", "ext" },
  };
  set_pct (5);
  for (size_t i = 0; i < sizeof m / sizeof m[0]; i++) {
    engine = m[i].e; variant_arg = m[i].v;
    for (uint64_t seed = 1; seed <= 2; seed++)
      fails += run_seed (seed, 4, 300);
  }
  return fails ? 1 : 0;
}
