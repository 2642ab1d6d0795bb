/* SPDX-License-Identifier: BSD-3-Clause */
/* Power loss: drive an engine (qcow2, vmdk, vhdx, thin) over a
 * volatile-cache bdev (power_vcache.h) with a seeded random workload, cut
 * the power at a random event (a write/flush of the layer below, possibly
 * in the middle of an engine operation or of the recovery at open), and
 * check the durable image: it passes qemu-img check / thin_check (leaks
 * allowed), it opens, every sector reads as a value the model allows
 * (flushed state, or an unflushed write/zero/trim to that very sector).
 *
 * Usage: test_power_loss [ENGINE VARIANT SEED [NSEEDS [CYCLES [OPS
 *                         [VERBOSE]]]]] (no arguments: the matrix at the end)
 *   ENGINE  qcow2 | vmdk | vhdx | thin
 *   VARIANT qcow2: "qemu:OPTS" (qemu-img create -o OPTS, may be empty)
 *                  "qemu-backing:OPTS" (with a raw backing file)
 *           vmdk:  "qemu:OPTS"  vhdx: "qemu:OPTS"
 *           thin:  "int" (metadata in the pool) | "ext" (separate device)
 *           "qemu:OPTS/FLAG,FLAG...": variant flags (listed below: initial
 *           content, compressed writes, internal snapshot, bitmap, external
 *           data file, VHDX parent, recovery at open); with flags, QEMU
 *           also reads every crash image (qemu-img convert) and each sector
 *           must hold a value the model allows (POWER_QEMU_READ=1: that
 *           for every variant).
 * Environment: POWER_VSIZE (virtual size when the granule is below 4
 *   KiB), POWER_GRAN (the workload's granule), POWER_HEADER_CUT (cut
 *   just after the first write at offset 0), POWER_KEEP, POWER_TRACE,
 *   POWER_NOCHECK, POWER_FAIL_PCT (each write and flush of the layer
 *   below fails with EIO with this probability, in percent).
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "bdev/bdev.h"
#include "qcow2/qcow2.h"
#include "vmdk/vmdk.h"
#include "vhdx/vhdx.h"
#include "thin/thin.h"
#include "sector_token.h"
#include "check.h"
#include "power_vcache.h"

#define MAGIC 0x504f5752u
#define TOK_BACKING 0xffffffffu
#define TOK_INIT 0xfffffffeu    /* initial content written by qemu */

static const char *engine, *variant;
static char dir[64] = "/tmp/power.XXXXXX";
static char imgpath[128], fmt[16];
static uint64_t vsize, gran;
static int have_backing, verbose;
static int thin_ext;
static uint64_t thin_chunk = 65536, thin_pool_max;

/* Variant flags (after a '/' in VARIANT, comma separated):
 *   compress  qcow2: open with qcow2.compress=zlib (zstd if the image's
 *             compression_type is zstd): new whole clusters compressed
 *   init      initial content (about half the granules) written by
 *             qemu-img convert from init.raw
 *   initc     the same, converted with -c (compressed clusters)
 *   snap      qcow2: an internal snapshot s1 of the initial content
 *             (qemu-img snapshot -c); after every cut the snapshot must
 *             still read as init.raw (qemu-img convert -l)
 *   bitmap    qcow2: a persistent dirty bitmap b0 (qemu-img bitmap --add);
 *             after every cut, if it is not in use, every 4 KiB piece
 *             whose content (read by qemu-img) differs from what it was
 *             when the bitmap was added must be dirty in it (qemu-nbd -B
 *             + nbdinfo --map); a bitmap left in use is replaced by a new
 *             one (qemu-img bitmap --remove, --add)
 *   parent    vhdx: a differencing disk (made by the engine) over a
 *             parent holding the initial content (qemu-img convert)
 *   datafile  qcow2: an external data file img.data (qemu-img create -o
 *             data_file=img.data,OPTS), under the power cut too (a second
 *             vcache, through --wrap=bdev_storage_open)
 *   lazydirty qcow2: lazy_refcounts=on; after the initial content, QEMU
 *             writes more (qemu-io, flush, abort: the dirty bit stays set)
 *             with the refcount blocks as before those writes (rolled
 *             back if QEMU wrote them; 7.2 does not): the engine repairs
 *             the refcounts at the first open (which the cuts may
 *             interrupt)
 *   dirtylog  vhdx: the initial content is written by qemu-io, which
 *             then aborts, and the BAT is rolled back to before the
 *             writes: a log that must be replayed at the first open
 *             (which the cuts may interrupt)
 */
static int f_qemu_read;          /* any flag: also qemu_checks */
static int f_datafile, f_lazydirty;
static int f_compress, f_init, f_initc, f_snap, f_bitmap, f_parent, f_dirtylog;
static uint32_t *init_tok;      /* per sector: initial token (0: zero) */
static int trim_init;           /* a trimmed sector may read init_tok */
static const char *fopts[4];
static long n_snap_checks, n_bitmap_checks, n_bitmap_inuse;

/* ---- model ---------------------------------------------------------- */
struct sset { uint32_t *v; uint32_t n, cap; };
static struct sset *cur, *crash;
static uint64_t nsect;
static uint32_t next_tok;

static void ss_clear (struct sset *s) { s->n = 0; }
static int ss_has (struct sset *s, uint32_t t)
{ for (uint32_t i = 0; i < s->n; i++) if (s->v[i] == t) return 1; return 0; }
static void ss_add (struct sset *s, uint32_t t)
{
  if (ss_has (s, t)) return;
  if (s->n == s->cap) {
    s->cap = s->cap ? s->cap * 2 : 4;
    s->v = realloc (s->v, s->cap * sizeof *s->v);
    CHECK (s->v);
  }
  s->v[s->n++] = t;
}
static void ss_copy (struct sset *d, struct sset *s)
{ ss_clear (d); for (uint32_t i = 0; i < s->n; i++) ss_add (d, s->v[i]); }

static void
fill (unsigned char *buf, uint64_t sect, uint32_t tok)
{
  sector_fill (buf, MAGIC, sect, tok);
}

/* Token of a sector read at virtual sector SECT: 0 zero; -1 garbage;
 * -2 a valid token of another sector (*OTHER set).
 */
static int64_t
decode (const unsigned char *buf, uint64_t sect, uint64_t *other)
{
  const uint64_t *w = (const uint64_t *) buf;
  int zero = 1;
  for (int i = 0; i < 64; i++) if (w[i]) { zero = 0; break; }
  if (zero) return 0;
  for (int i = 2; i < 64; i++) if (w[i] != w[i & 1]) return -1;
  if ((w[0] >> 32) != MAGIC) return -1;
  uint64_t s = w[1] ^ SECTOR_SALT;
  if (s != sect) { *other = s; return -2; }
  return (uint32_t) w[0];
}

/* ---- power domain --------------------------------------------------- */
static long events, cut_at;
static int crashed;
static int cut_mode;
static uint64_t cut_rng;
static struct vcache *vc_main, *vc_meta;
static unsigned char *img_main, *img_meta;
static uint64_t len_main, len_meta;

static void
on_cut (void *opq)
{
  (void) opq;
  img_main = vc_cut (vc_main, &cut_rng, cut_mode, &len_main);
  if (vc_meta)
    img_meta = vc_cut (vc_meta, &cut_rng, cut_mode, &len_meta);
  if (verbose)
    fprintf (stderr, "  CUT at event %ld mode %d (unflushed main %zu)\n",
             events, cut_mode, vc_main->nlog);
}

static void
write_file (const char *path, const void *buf, uint64_t len)
{
  int fd = open (path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
  CHECK (fd >= 0);
  CHECK (write (fd, buf, len) == (ssize_t) len);
  close (fd);
}

static unsigned char *
read_file (const char *path, uint64_t *len)
{
  int fd = open (path, O_RDONLY);
  CHECK (fd >= 0);
  struct stat st;
  CHECK (fstat (fd, &st) == 0);
  unsigned char *b = malloc (st.st_size + 1);
  CHECK (b);
  CHECK (read (fd, b, st.st_size) == st.st_size);
  close (fd);
  *len = st.st_size;
  return b;
}

static int
sh (const char *cmd)
{
  int r = system (cmd);
  return WIFEXITED (r) ? WEXITSTATUS (r) : 255;
}

/* ---- engines -------------------------------------------------------- */
static struct bdev *
open_engine (void)
{
  struct bdev_open_opts o = { 0 };
  o.format_opts = fopts;
  if (!strcmp (engine, "qcow2"))
    return qcow2_open_container (&vc_main->bd, imgpath, &o, 0);
  if (!strcmp (engine, "vmdk"))
    return vmdk_open_container (&vc_main->bd, imgpath, &o, 0);
  if (!strcmp (engine, "vhdx"))
    return vhdx_open_container (&vc_main->bd, imgpath, imgpath, &o, 0);
  struct thin_opts t = {
    .virtual_size = vsize, .chunk_size = thin_chunk, .format = true,
    .meta = vc_meta ? &vc_meta->bd : NULL,
  };
  return thin_open (&vc_main->bd, &t);
}

static void
make_vcs (const unsigned char *m, uint64_t ml, const unsigned char *x,
          uint64_t xl)
{
  int thin = !strcmp (engine, "thin");
  vc_main = vc_new (m, ml, !thin, &events, &cut_at, &crashed, on_cut, NULL);
  vc_meta = NULL;
  if ((thin && thin_ext) || f_datafile)
    vc_meta = vc_new (x, xl, 1, &events, &cut_at, &crashed, on_cut, NULL);
}

/* The qcow2 engine opens its external data file img.data through
 * bdev_storage_open: it gets vc_meta, in the same power domain.
 */
struct bdev *__real_bdev_storage_open (const char *path,
                                       const struct bdev_open_opts *opts);
struct bdev *__wrap_bdev_storage_open (const char *path,
                                       const struct bdev_open_opts *opts);
struct bdev *
__wrap_bdev_storage_open (const char *path, const struct bdev_open_opts *opts)
{
  size_t n = strlen (path);
  if (f_datafile && vc_meta && n >= 9 && !strcmp (path + n - 9, "/img.data"))
    return &vc_meta->bd;
  return __real_bdev_storage_open (path, opts);
}

static uint32_t
crc32c_sw (const unsigned char *p, size_t n)
{
  uint32_t c = 0xffffffffu;
  while (n--) {
    c ^= *p++;
    for (int k = 0; k < 8; k++)
      c = c & 1 ? (c >> 1) ^ 0x82f63b78u : c >> 1;
  }
  return ~c;
}

/* VHDX: the log GUID of the current header of IMG (nonzero: QEMU must
 * replay the log), and the log's place.
 */
static int
vhdx_log_pending (const unsigned char *img, uint64_t len, uint64_t *log_off,
                  uint64_t *log_len)
{
  const unsigned char *best = NULL;
  uint64_t bseq = 0;
  for (int i = 1; i <= 2; i++) {
    const unsigned char *h = img + i * 65536;
    if ((uint64_t) i * 65536 + 4096 > len || memcmp (h, "head", 4))
      continue;
    unsigned char t[4096];      /* a torn header fails its checksum */
    uint32_t want;
    memcpy (t, h, 4096);
    memcpy (&want, t + 4, 4);
    memset (t + 4, 0, 4);
    if (crc32c_sw (t, 4096) != want)
      continue;
    uint64_t seq;
    memcpy (&seq, h + 8, 8);
    if (!best || seq > bseq) { best = h; bseq = seq; }
  }
  if (!best) return 0;
  uint32_t ll; uint64_t lo;
  memcpy (&ll, best + 68, 4);
  memcpy (&lo, best + 72, 8);
  if (log_off) *log_off = lo;
  if (log_len) *log_len = ll;
  for (int i = 0; i < 16; i++) if (best[48 + i]) return 1;
  return 0;
}

/* Every sector of raw file PATH (qemu's reading of the crash image) holds
 * a value the crash model allows.
 */
static int
verify_raw_file (const char *path, const char *what)
{
  uint64_t l;
  unsigned char *b = read_file (path, &l);
  int bad = 0;
  if (l != vsize) {
    fprintf (stderr, "%s: %s has %" PRIu64 " bytes\n", what, path, l);
    bad = 1;
  }
  for (uint64_t s = 0; !bad && s < nsect; s++) {
    uint64_t other = 0;
    int64_t t = decode (b + s * 512, s, &other);
    if (t >= 0 && ss_has (&crash[s], (uint32_t) t))
      continue;
    fprintf (stderr, "%s: sector %" PRIu64 " (0x%" PRIx64 ") reads %" PRId64
             " (other %" PRIu64 "); allowed:", what, s, s * 512, t, other);
    for (uint32_t i = 0; i < crash[s].n; i++)
      fprintf (stderr, " %" PRId32, (int32_t) crash[s].v[i]);
    fprintf (stderr, "\n");
    bad = 1;
  }
  free (b);
  return bad;
}

/* Checks with QEMU of the crash image at imgpath beyond qemu-img check:
 * QEMU reads what the model allows, the internal snapshot is intact, a
 * consistent bitmap covers every change.  0 ok.
 */
/* The crash image needs a recovery by QEMU before it can be read or
 * checked: a VHDX log to replay, a dirty qcow2 (lazy refcounts).
 */
static int
needs_recovery (void)
{
  if (!strcmp (engine, "vhdx"))
    return vhdx_log_pending (img_main, len_main, NULL, NULL);
  if (!strcmp (engine, "qcow2") && len_main >= 80 &&
      img_main[4] == 0 && img_main[7] >= 3)
    return img_main[79] & 1;    /* incompatible bit 0: dirty */
  return 0;
}

static int
qemu_checks (void)
{
  char cmd[1024], p[160], srcbuf[160];
  const char *src = imgpath;
  if (needs_recovery ()) {
    /* QEMU's recovery (log replay, refcount repair): on a copy. */
    snprintf (cmd, sizeof cmd, "cp %s %s/replay.%s && qemu-img check -q "
              "-r all -f %s %s/replay.%s > %s/check.out 2>&1 && qemu-img "
              "check -q -f %s %s/replay.%s >> %s/check.out 2>&1",
              imgpath, dir, fmt, fmt, dir, fmt, dir, fmt, dir, fmt, dir);
    if (sh (cmd) != 0) {
      fprintf (stderr, "qemu-img check -r all (recovery by QEMU) fails:\n");
      snprintf (cmd, sizeof cmd, "cat %s/check.out >&2", dir);
      sh (cmd);
      return 1;
    }
    snprintf (srcbuf, sizeof srcbuf, "%s/replay.%s", dir, fmt);
    src = srcbuf;
  }
  snprintf (cmd, sizeof cmd, "qemu-img convert -f %s -O raw %s %s/qemu.raw",
            fmt, src, dir);
  if (sh (cmd) != 0) {
    fprintf (stderr, "qemu-img convert of the crash image fails\n");
    return 1;
  }
  snprintf (p, sizeof p, "%s/qemu.raw", dir);
  if (verify_raw_file (p, "read by qemu-img"))
    return 1;
  if (f_snap) {
    n_snap_checks++;
    snprintf (cmd, sizeof cmd, "qemu-img convert -f qcow2 -l snapshot.name=s1"
              " -O raw %s %s/snap.raw && cmp %s/snap.raw %s/%s >&2",
              src, dir, dir, dir, f_lazydirty ? "init0.raw" : "init.raw");
    if (sh (cmd) != 0) {
      fprintf (stderr, "internal snapshot s1 no longer reads as init.raw\n");
      return 1;
    }
  }
  /* A dirty image (the engine's repair was cut): QEMU would repair it at
   * the bitmap's replacement below, instead of the engine.  Its bitmap is
   * checked at a later cut.
   */
  if (f_bitmap && !needs_recovery ()) {
    snprintf (cmd, sizeof cmd, "qemu-img info --output=json %s > %s/info.json"
              " && grep -q '\"b0\"' %s/info.json", imgpath, dir, dir);
    if (sh (cmd) != 0) {
      fprintf (stderr, "bitmap b0 is gone\n");
      return 1;
    }
    snprintf (cmd, sizeof cmd, "grep -q '\"in-use\"' %s/info.json", dir);
    if (sh (cmd) == 0) {
      /* Inconsistent: QEMU's way back is a new bitmap, tracking changes
       * from the content now.  So the next cuts are checked again.
       */
      n_bitmap_inuse++;
      if (verbose) fprintf (stderr, "  bitmap in use after the cut\n");
      snprintf (cmd, sizeof cmd, "qemu-img bitmap --remove %s b0 && "
                "qemu-img bitmap --add %s b0 && cp %s/qemu.raw %s/bm_base.raw",
                imgpath, imgpath, dir, dir);
      CHECK (sh (cmd) == 0);
      free (img_main);
      img_main = read_file (imgpath, &len_main);
      return 0;
    }
    n_bitmap_checks++;
    snprintf (cmd, sizeof cmd, "qemu-nbd --fork -r -f qcow2 -B b0 "
              "--socket=%s/nbd.sock %s && nbdinfo "
              "--map=qemu:dirty-bitmap:b0 'nbd+unix:///?socket=%s/nbd.sock' "
              "> %s/map.txt", dir, imgpath, dir, dir);
    if (sh (cmd) != 0) {
      fprintf (stderr, "reading bitmap b0 with qemu-nbd fails\n");
      return 1;
    }
    uint64_t l1, l2;
    snprintf (p, sizeof p, "%s/bm_base.raw", dir);
    unsigned char *a = read_file (p, &l1);
    snprintf (p, sizeof p, "%s/qemu.raw", dir);
    unsigned char *b = read_file (p, &l2);
    CHECK (l1 == vsize && l2 == vsize);
    /* 4 KiB units: no bitmap granularity is finer (QEMU's default is
     * the cluster size, at least 4 KiB, at most 64 KiB).
     */
    const uint64_t U = 4096;
    uint64_t ng = vsize / U;
    unsigned char *dirty = calloc (1, ng);
    snprintf (p, sizeof p, "%s/map.txt", dir);
    FILE *f = fopen (p, "r");
    CHECK (f && dirty);
    unsigned long long o, n; unsigned ty;
    while (fscanf (f, "%llu %llu %u %*s", &o, &n, &ty) == 3)
      if (ty & 1)
        for (uint64_t g = o / U; g < (o + n + U - 1) / U && g < ng; g++)
          dirty[g] = 1;
    fclose (f);
    int bad = 0;
    for (uint64_t g = 0; g < ng; g++)
      if (!dirty[g] && memcmp (a + g * U, b + g * U, U)) {
        fprintf (stderr, "bitmap b0 is consistent but 0x%" PRIx64 "+0x%"
                 PRIx64 " changed and is clean\n", g * U, U);
        bad = 1;
        break;
      }
    free (a); free (b); free (dirty);
    return bad;
  }
  return 0;
}

/* Check the crash image with the format's checker: 0 ok, else problem. */
static int
check_image (void)
{
  char cmd[512];
  if (strcmp (engine, "thin")) {
    write_file (imgpath, img_main, len_main);
    if (f_datafile) {
      snprintf (cmd, sizeof cmd, "%s/img.data", dir);
      write_file (cmd, img_meta, len_meta);
    }
    if (f_parent)               /* QEMU has no VHDX differencing disks */
      return 0;
    int r = 0;
    if (!needs_recovery ()) {
      snprintf (cmd, sizeof cmd, "qemu-img check -f %s %s > %s/check.out "
                "2>&1", fmt, imgpath, dir);
      r = sh (cmd);
    }
    if (r == 0 || r == 3)
      return (f_qemu_read || getenv ("POWER_QEMU_READ")) ? qemu_checks () : 0;
    snprintf (cmd, sizeof cmd, "cat %s/check.out >&2", dir);
    sh (cmd);
    return 1;
  }
  {
    /* Both headers zero: nothing committed yet, thin_open formats again. */
    const unsigned char *h = img_meta ? img_meta : img_main;
    uint64_t hl = img_meta ? len_meta : len_main, i;
    for (i = 0; i < 8192 && i < hl && !h[i]; i++) ;
    if (i == 8192 || i == hl) return 0;
  }
  struct vcache *p, *x = NULL;
  long e = 0, c = -1; int cr = 1;
  p = vc_new (img_main, len_main, 0, &e, &c, &cr, on_cut, NULL);
  if (img_meta)
    x = vc_new (img_meta, len_meta, 1, &e, &c, &cr, on_cut, NULL);
  char outp[128];
  snprintf (outp, sizeof outp, "%s/check.out", dir);
  FILE *out = fopen (outp, "w");
  long n = thin_check (&p->bd, x ? &x->bd : NULL, out, false);
  fclose (out);
  bdev_close (&p->bd);
  if (x) bdev_close (&x->bd);
  if (n == 0) return 0;
  /* Leaks only are fine.  Header used count may then differ too. */
  snprintf (cmd, sizeof cmd,
            "grep -q ' 0 double mappings, [0-9]* leaks, 0 out-of-range "
            "entries, 0 mapped-but-free, 0 bad checksums' %s", outp);
  if (n > 0 && sh (cmd) == 0) {
    if (verbose) fprintf (stderr, "  thin_check: leaks only (%ld)\n", n);
    return 0;
  }
  fprintf (stderr, "thin_check returned %ld\n", n);
  snprintf (cmd, sizeof cmd, "cat %s >&2", outp);
  sh (cmd);
  return 1;
}

/* ---- the workload --------------------------------------------------- */
static unsigned char *buf;

static int
verify_range (struct bdev *bd, uint64_t off, uint64_t len, struct sset *sets,
              const char *what, int adopt)
{
  if (bdev_pread (bd, buf, len, off) == -1) {
    fprintf (stderr, "%s: read of 0x%" PRIx64 "+0x%" PRIx64 " fails: %m\n",
             what, off, len);
    return 1;
  }
  int bad = 0;
  for (uint64_t s = off / 512; s < (off + len) / 512; s++) {
    uint64_t other = 0;
    int64_t t = decode (buf + (s * 512 - off), s, &other);
    if (t == 0 && !ss_has (&sets[s], 0)) {
      fprintf (stderr, "%s: sector %" PRIu64 " (0x%" PRIx64 ") reads zeroes;"
               " allowed:", what, s, s * 512);
      bad = 1;
    } else if (t == -1) {
      fprintf (stderr, "%s: sector %" PRIu64 " (0x%" PRIx64 ") reads "
               "garbage (never written data, metadata?) %016" PRIx64
               " %016" PRIx64 "; allowed:", what, s, s * 512,
               *(uint64_t *) (buf + s * 512 - off),
               *(uint64_t *) (buf + s * 512 - off + 8));
      bad = 1;
    } else if (t == -2) {
      fprintf (stderr, "%s: sector %" PRIu64 " (0x%" PRIx64 ") reads data of"
               " sector %" PRIu64 "; allowed:", what, s, s * 512, other);
      bad = 1;
    } else if (t > 0 && !ss_has (&sets[s], (uint32_t) t)) {
      fprintf (stderr, "%s: sector %" PRIu64 " (0x%" PRIx64 ") reads token %"
               PRId64 " (%s); allowed:", what, s, s * 512, t,
               (uint32_t) t == TOK_BACKING ? "backing" : "a write");
      bad = 1;
    } else {
      if (adopt) {
        ss_clear (&cur[s]); ss_add (&cur[s], (uint32_t) t);
        ss_clear (&crash[s]); ss_add (&crash[s], (uint32_t) t);
      }
      continue;
    }
    for (uint32_t i = 0; i < sets[s].n; i++)
      fprintf (stderr, " %" PRId32, (int32_t) sets[s].v[i]);
    fprintf (stderr, "\n");
    return 1;
  }
  return bad;
}

static void
pick (uint64_t *rng, uint64_t *off, uint64_t *len)
{
  uint64_t g = gran;
  uint64_t r = prng (rng) % 8;
  if (r < 3) {                  /* whole granules */
    *off = (prng (rng) % (vsize / g)) * g;
    *len = g * (1 + prng (rng) % 2);
  } else if (r < 7) {           /* small, unaligned to the granule */
    *off = (prng (rng) % (vsize / 512)) * 512;
    *len = 512 * (1 + prng (rng) % 16);
  } else {                      /* large */
    *off = (prng (rng) % (vsize / 512)) * 512;
    *len = 512 * (1 + prng (rng) % (4 * g / 512));
  }
  if (*off + *len > vsize) *len = vsize - *off;
}

static int
run_seed (uint64_t seed, int cycles, int nops)
{
  uint64_t rng = seed * 0x9E3779B97F4A7C15ull + 1;
  vc_fail_rng = seed * 0x2545F4914F6CDD1Dull + 7;  /* reproducible per seed */
  for (uint64_t s = 0; s < nsect; s++) {
    ss_clear (&cur[s]); ss_clear (&crash[s]);
    ss_add (&cur[s], init_tok[s]);
    ss_add (&crash[s], init_tok[s]);
  }
  next_tok = 1;
  uint64_t l0;
  unsigned char *m = read_file (imgpath[0] ? "/dev/null" : "/dev/null", &l0);
  free (m);
  /* Initial images. */
  char p[160];
  uint64_t ml, xl = 0;
  unsigned char *mi, *xi = NULL;
  if (!strcmp (engine, "thin")) {
    ml = thin_pool_max / 2;
    mi = calloc (1, ml);
    if (thin_ext) { xl = 0; xi = calloc (1, 1); }
  } else {
    snprintf (p, sizeof p, "%s/init.%s", dir, fmt);
    mi = read_file (p, &ml);
    if (f_datafile) {
      snprintf (p, sizeof p, "%s/init.data", dir);
      xi = read_file (p, &xl);
    }
  }
  make_vcs (mi, ml, xi, xl);
  free (mi); free (xi);
  if (f_bitmap) {
    snprintf (p, sizeof p, "cp %s/%s %s/bm_base.raw", dir,
              f_lazydirty ? "init0.raw" : "init.raw", dir);
    CHECK (sh (p) == 0);
  }
  int fail = 0;
  for (int cyc = 0; cyc < cycles && !fail; cyc++) {
    events = 0; crashed = 0; img_main = img_meta = NULL;
    cut_at = 1 + prng (&rng) % (nops * 4 + 8);
    if (f_dirtylog && cyc == 0 && prng (&rng) % 2)
      cut_at = 1 + prng (&rng) % 8;     /* in the log replay at open */
    if (f_lazydirty && cyc == 0 && prng (&rng) % 2)
      cut_at = 1 + prng (&rng) % 12;    /* in the repair at open */
    /* POWER_HEADER_CUT=1: cut 0-5 events after the first header write
     * (a qcow2 refcount table moving, a repair or log replay finishing).
     */
    vc_header_cut = -1;
    if (getenv ("POWER_HEADER_CUT")) {
      vc_header_cut = prng (&rng) % 6;
      cut_at = -1;
    }
    /* bitmap: often cut just after the Nth flush, where the bitmap is
     * stored and consistent, so that the bitmap check has work.
     */
    int cut_flush = f_bitmap && prng (&rng) % 2 ? 1 + prng (&rng) % 3 : 0;
    if (cut_flush)
      cut_at = -1;
    cut_mode = prng (&rng) % 4;
    cut_rng = prng (&rng);
    if (verbose)
      fprintf (stderr, "seed %" PRIu64 " cycle %d: cut_at %ld mode %d\n",
               seed, cyc, cut_at, cut_mode);
    struct bdev *bd = open_engine ();
    if (!bd) {
      fprintf (stderr, "seed %" PRIu64 " cycle %d: engine does not open\n",
               seed, cyc);
      return 1;
    }
    CHECK (bd->size == vsize);
    vc_fail_on = 1;
    if (cyc > 0 && verify_range (bd, 0, vsize, crash, "after reopen", 1)) {
      fprintf (stderr, "seed %" PRIu64 " cycle %d: FAIL after power cut\n",
               seed, cyc);
      fail = 1;
      bdev_close (bd);
      break;
    }
    for (int op = 0; op < nops && !crashed; op++) {
      uint64_t off, len;
      pick (&rng, &off, &len);
      unsigned r = prng (&rng) % 100;
      int ok;
      if (r < 45) {             /* write */
        uint32_t t = next_tok++;
        uint32_t fl = prng (&rng) % 10 == 0 ? BDEV_FUA : 0;
        for (uint64_t s = 0; s < len / 512; s++)
          fill (buf + s * 512, off / 512 + s, t);
        for (uint64_t s = off / 512; s < (off + len) / 512; s++)
          ss_add (&crash[s], t);
        if (verbose > 1)
          fprintf (stderr, "  op %d: write tok %u off 0x%" PRIx64 " len 0x%"
                   PRIx64 "%s\n", op, t, off, len, fl ? " FUA" : "");
        ok = bdev_pwrite (bd, buf, len, off, fl) == 0;
        for (uint64_t s = off / 512; s < (off + len) / 512; s++) {
          if (ok) ss_clear (&cur[s]);
          ss_add (&cur[s], t);
          if (ok && fl && !crashed) ss_copy (&crash[s], &cur[s]);
        }
        if (!ok && errno != ENOSPC && !vc_fail_pct) {
          fprintf (stderr, "seed %" PRIu64 ": write failed: %m\n", seed);
        }
      } else if (r < 57) {      /* flush */
        if (verbose > 1) fprintf (stderr, "  op %d: flush\n", op);
        ok = bdev_flush (bd) == 0;
        if (ok && !crashed)
          for (uint64_t s = 0; s < nsect; s++) ss_copy (&crash[s], &cur[s]);
        if (ok && !crashed && cut_flush && --cut_flush == 0) {
          crashed = 1;
          on_cut (NULL);
        }
      } else if (r < 67) {      /* trim */
        if (verbose > 1)
          fprintf (stderr, "  op %d: trim off 0x%" PRIx64 " len 0x%" PRIx64
                   "\n", op, off, len);
        for (uint64_t s = off / 512; s < (off + len) / 512; s++) {
          ss_add (&crash[s], 0); ss_add (&cur[s], 0);
          if (trim_init) {
            ss_add (&crash[s], init_tok[s]); ss_add (&cur[s], init_tok[s]);
          }
        }
        ok = bdev_trim (bd, len, off, 0) == 0;
      } else if (r < 79) {      /* zero */
        uint32_t fl = prng (&rng) % 2 ? BDEV_MAY_TRIM : 0;
        if (prng (&rng) % 10 == 0) fl |= BDEV_FUA;
        if (verbose > 1)
          fprintf (stderr, "  op %d: zero off 0x%" PRIx64 " len 0x%" PRIx64
                   " fl %u\n", op, off, len, fl);
        for (uint64_t s = off / 512; s < (off + len) / 512; s++)
          ss_add (&crash[s], 0);
        ok = bdev_zero (bd, len, off, fl) == 0;
        for (uint64_t s = off / 512; s < (off + len) / 512; s++) {
          if (ok) ss_clear (&cur[s]);
          ss_add (&cur[s], 0);
          if (ok && (fl & BDEV_FUA) && !crashed) ss_copy (&crash[s], &cur[s]);
        }
      } else if (r < 97) {      /* read and check */
        if (verify_range (bd, off, len, cur, "live read", 0)) {
          fprintf (stderr, "seed %" PRIu64 " cycle %d op %d: live read "
                   "mismatch (no crash involved)\n", seed, cyc, op);
          fail = 1;
          break;
        }
      } else if (!strcmp (engine, "thin")) { /* grow the pool */
        uint64_t ns = vc_main->cur_size + thin_chunk * (1 + prng (&rng) % 8);
        if (ns <= thin_pool_max) {
          if (verbose > 1)
            fprintf (stderr, "  op %d: grow pool to 0x%" PRIx64 "\n", op, ns);
          vc_grow_fixed (vc_main, ns);
          CHECK (thin_grow (bd, ns) == 0);
        }
      }
    }
    if (!crashed) {             /* cut after the last op */
      crashed = 1;
      on_cut (NULL);
    }
    vc_fail_on = 0;
    bdev_close (bd);            /* its writes are after the cut: lost */
    if (fail) break;
    if (check_image ()) {
      fprintf (stderr, "seed %" PRIu64 " cycle %d: FAIL image check\n",
               seed, cyc);
      if (!getenv ("POWER_NOCHECK"))
        fail = 1;
    }
    make_vcs (img_main, len_main, img_meta, len_meta);
    free (img_main); free (img_meta);
    img_main = img_meta = NULL;
  }
  if (!fail) {                  /* final open and check */
    events = 0; crashed = 0; cut_at = -1; vc_header_cut = -1;
    struct bdev *bd = open_engine ();
    if (!bd) {
      fprintf (stderr, "seed %" PRIu64 " final: engine does not open\n", seed);
      return 1;
    }
    if (verify_range (bd, 0, vsize, crash, "after reopen", 1)) {
      fprintf (stderr, "seed %" PRIu64 " final: FAIL after power cut\n",
               seed);
      fail = 1;
    }
    bdev_close (bd);
  } else {
    bdev_close (&vc_main->bd);
    if (vc_meta) bdev_close (&vc_meta->bd);
  }
  return fail;
}

/* The initial image init.FMT for the variant flags (dir, vsize, gran,
 * nsect, init_tok set): its content in init.raw and init_tok.
 */
static void
make_init (const char *opts0)
{
  char cmd[2048], p[160], ob[300];
  snprintf (ob, sizeof ob, "%s%s%s%s", f_datafile ? "data_file=img.data" : "",
            f_lazydirty ? "lazy_refcounts=on" : "",
            (f_datafile || f_lazydirty) && *opts0 ? "," : "", opts0);
  const char *opts = ob;
  const char *o = *opts ? "-o " : "";
  unsigned char *raw = calloc (1, vsize);
  CHECK (raw);
  uint64_t rng = 0x1234567;
  /* Extents of initial data: granules, whole or in part. */
  struct { uint64_t off, len; } ext[64];
  int next = 0;
  uint64_t bsz = 0;             /* dirtylog: VHDX block size */
  if (f_dirtylog) {
    const char *bs = strstr (opts, "block_size=");
    CHECK (bs);                 /* dirtylog needs block_size=, <= vsize/2 */
    bsz = strtoull (bs + 11, NULL, 0);
    CHECK (bsz && bsz <= vsize / 2 && bsz % gran == 0);
  }
  if (f_init || f_initc || f_dirtylog || f_parent || f_lazydirty) {
    for (uint64_t g = 0; g < vsize / gran && next < 63; g++) {
      uint64_t r = prng (&rng) % 8, a = 0, b = gran;
      if (f_dirtylog && g * gran >= vsize - bsz) {
        if (g * gran > vsize - bsz) continue;
        r = 6;                  /* the last block: one new block, last */
      }
      if (f_dirtylog && r < 6) continue;  /* a few writes only */
      if (!f_dirtylog && r < 3) continue;
      if (r == 7) {
        a = (prng (&rng) % (gran / 512)) * 512;
        b = a + 512 * (1 + prng (&rng) % ((gran - a) / 512));
      }
      ext[next].off = g * gran + a; ext[next].len = b - a; next++;
      for (uint64_t s = (g * gran + a) / 512; s < (g * gran + b) / 512; s++) {
        fill (raw + s * 512, s, TOK_INIT);
        init_tok[s] = TOK_INIT;
      }
    }
  }
  snprintf (p, sizeof p, "%s/init.raw", dir);
  write_file (p, raw, vsize);
  if (f_parent) {
    /* Parent by QEMU, child by the engine (QEMU cannot make one). */
    snprintf (cmd, sizeof cmd, "cd %s && qemu-img convert -q -f raw -O vhdx "
              "%s%s init.raw parent.vhdx", dir, o, opts);
    CHECK (sh (cmd) == 0);
    char pp[160];
    snprintf (p, sizeof p, "%s/init.vhdx", dir);
    snprintf (pp, sizeof pp, "%s/parent.vhdx", dir);
    struct vhdx_create_opts vo = { .parent = pp };
    const char *bs = strstr (opts, "block_size=");
    if (bs) vo.block_size = strtoull (bs + 11, NULL, 0);
    CHECK (vhdx_create (p, &vo) == 0);
  }
  else if (f_dirtylog) {
    /* QEMU writes the extents but the last (BAT updates go through its
     * log), the last one (one new block: one log entry) after a copy
     * pre.vhdx, then aborts.
     */
    CHECK (next >= 2);
    snprintf (cmd, sizeof cmd, "cd %s && qemu-img create -q -f vhdx %s%s "
              "init.vhdx %" PRIu64, dir, o, opts, vsize);
    CHECK (sh (cmd) == 0);
    int n = 0;
    for (int i = 0; i < next; i++) {
      snprintf (p, sizeof p, "%s/src%d", dir, i);
      write_file (p, raw + ext[i].off, ext[i].len);
      if (i == next - 1) {
        CHECK (ext[i].off / 1048576 == (ext[i].off + ext[i].len - 1) / 1048576);
        snprintf (cmd + n, sizeof cmd - n, " init.vhdx && cp init.vhdx "
                  "pre.vhdx && qemu-io -f vhdx");
        n += strlen (cmd + n);
      }
      else if (i == 0)
        n = snprintf (cmd, sizeof cmd, "cd %s && ulimit -c 0 && qemu-io -f "
                      "vhdx", dir);
      n += snprintf (cmd + n, sizeof cmd - n, " -c 'write -q -s src%d %"
                     PRIu64 " %" PRIu64 "'", i, ext[i].off, ext[i].len);
      CHECK (n < (int) sizeof cmd - 100);
    }
    snprintf (cmd + n, sizeof cmd - n, " -c abort init.vhdx 2>/dev/null");
    sh (cmd);
    /* Roll the BAT (everything outside the headers and the log) back to
     * before the last write: a crash after the log was flushed and before
     * QEMU wrote the BAT in place.
     */
    uint64_t pl, il, lo, ll;
    snprintf (p, sizeof p, "%s/pre.vhdx", dir);
    unsigned char *pre = read_file (p, &pl);
    snprintf (p, sizeof p, "%s/init.vhdx", dir);
    unsigned char *img = read_file (p, &il);
    /* QEMU has applied its log and cleared the log GUID: put back the
     * header naming the log (the next sequence number, the GUID of the
     * log entries), as QEMU wrote it before the first entry.
     */
    CHECK (!vhdx_log_pending (img, il, &lo, &ll));
    CHECK (lo + 64 <= il && !memcmp (img + lo, "loge", 4));
    /* QEMU starts the log over at each open: the entry of the second
     * qemu-io is the first one.
     */
    uint64_t last = lo;
    {
      unsigned char *h1 = img + 65536, *h2 = img + 131072, *cur_h, *oth;
      uint64_t s1, s2;
      memcpy (&s1, h1 + 8, 8); memcpy (&s2, h2 + 8, 8);
      cur_h = s1 > s2 ? h1 : h2; oth = s1 > s2 ? h2 : h1;
      uint64_t sq = (s1 > s2 ? s1 : s2) + 1;
      memcpy (oth, cur_h, 4096);
      memcpy (oth + 8, &sq, 8);
      memcpy (oth + 48, img + last + 32, 16);
      memset (oth + 4, 0, 4);
      uint32_t c = crc32c_sw (oth, 4096);
      memcpy (oth + 4, &c, 4);
    }
    CHECK (vhdx_log_pending (img, il, &lo, &ll));
    /* The BAT region (region table at 192 KiB). */
    static const unsigned char bat_guid[16] = {
      0x66, 0x77, 0xc2, 0x2d, 0x23, 0xf6, 0x00, 0x42,
      0x9d, 0x64, 0x11, 0x5e, 0x9b, 0xfd, 0x4a, 0x08 };
    uint64_t bo = 0; uint32_t bl = 0, rn;
    CHECK (!memcmp (img + 196608, "regi", 4));
    memcpy (&rn, img + 196608 + 8, 4);
    for (uint32_t i = 0; i < rn && i < 64; i++) {
      const unsigned char *e = img + 196608 + 16 + 32 * i;
      if (!memcmp (e, bat_guid, 16)) { memcpy (&bo, e + 16, 8); memcpy (&bl, e + 24, 4); }
    }
    CHECK (bo && bl);
    uint64_t changed = 0;
    for (uint64_t x = bo; x < bo + bl && x < pl && x < il; x++)
      if (img[x] != pre[x]) {
        img[x] = pre[x];
        changed++;
      }
    CHECK (changed > 0 && changed <= 8);
    write_file (p, img, il);
    free (pre); free (img);
    /* QEMU's replay of it reads as init.raw. */
    snprintf (cmd, sizeof cmd, "cd %s && cp init.vhdx q.vhdx && qemu-img "
              "check -q -r all q.vhdx && qemu-img convert -O raw q.vhdx q.raw "
              "&& cmp q.raw init.raw && qemu-img check -q q.vhdx && rm q.*",
              dir);
    CHECK (sh (cmd) == 0);
  }
  else if (f_lazydirty) {
    /* Extents from the middle on are QEMU's later writes. */
    int k = next / 2;
    CHECK (k >= 1 && next - k >= 1);
    unsigned char *r0 = malloc (vsize);
    CHECK (r0);
    memcpy (r0, raw, vsize);
    for (int i = k; i < next; i++)
      memset (r0 + ext[i].off, 0, ext[i].len);
    snprintf (p, sizeof p, "%s/init0.raw", dir);
    write_file (p, r0, vsize);
    free (r0);
    /* Snapshot and bitmap before QEMU's dirtying writes (a read-write
     * open of a dirty image by QEMU repairs it).
     */
    snprintf (cmd, sizeof cmd, "cd %s && qemu-img convert -q -f raw -O qcow2 "
              "-o %s init0.raw init.qcow2%s%s && cp init.qcow2 pre.qcow2", dir,
              opts, f_snap ? " && qemu-img snapshot -c s1 init.qcow2" : "",
              f_bitmap ? " && qemu-img bitmap --add init.qcow2 b0" : "");
    CHECK (sh (cmd) == 0);
    int n = snprintf (cmd, sizeof cmd, "cd %s && ulimit -c 0 && qemu-io -f "
                      "qcow2", dir);
    for (int i = k; i < next; i++) {
      snprintf (p, sizeof p, "%s/src%d", dir, i);
      write_file (p, raw + ext[i].off, ext[i].len);
      n += snprintf (cmd + n, sizeof cmd - n, " -c 'write -q -s src%d %"
                     PRIu64 " %" PRIu64 "'", i, ext[i].off, ext[i].len);
      CHECK (n < (int) sizeof cmd - 100);
    }
    snprintf (cmd + n, sizeof cmd - n, " -c flush -c abort init.qcow2 "
              "2>/dev/null");
    sh (cmd);
    /* Roll back every refcount block of pre.qcow2. */
    uint64_t pl, il;
    snprintf (p, sizeof p, "%s/pre.qcow2", dir);
    unsigned char *pre = read_file (p, &pl);
    snprintf (p, sizeof p, "%s/init.qcow2", dir);
    unsigned char *img = read_file (p, &il);
    CHECK (il >= 80 && (img[79] & 1));  /* dirty */
    uint64_t cs = 1ull << (pre[23]), rto = 0, changed = 0;
    uint32_t rtc = 0;
    for (int i = 0; i < 8; i++) rto = rto << 8 | pre[48 + i];
    for (int i = 0; i < 4; i++) rtc = rtc << 8 | pre[56 + i];
    for (uint64_t e = 0; e < rtc * cs / 8; e++) {
      uint64_t rb = 0;
      for (int i = 0; i < 8; i++) rb = rb << 8 | pre[rto + 8 * e + i];
      rb &= ~511ull;
      if (!rb || rb + cs > pl) continue;
      for (uint64_t x = rb; x < rb + cs; x++)
        if (img[x] != pre[x]) { img[x] = pre[x]; changed++; }
    }
    /* (QEMU 7.2 does not write them at a flush either: changed is 0.) */
    if (changed)
      write_file (p, img, il);
    free (pre); free (img);
    /* Read-only, QEMU sees the damage; repaired, the content. */
    snprintf (cmd, sizeof cmd, "cd %s && ! qemu-img check -q init.qcow2 "
              ">/dev/null 2>&1 && cp init.qcow2 q.qcow2 && qemu-img check -q "
              "-r all q.qcow2 >/dev/null 2>&1 && qemu-img convert -O raw q.qcow2 "
              "q.raw && cmp q.raw init.raw && rm q.*", dir);
    CHECK (sh (cmd) == 0);
  }
  else if (f_init || f_initc) {
    snprintf (cmd, sizeof cmd, "cd %s && qemu-img convert -q -f raw -O %s %s "
              "%s%s init.raw init.%s", dir, fmt, f_initc ? "-c" : "", o, opts,
              fmt);
    CHECK (sh (cmd) == 0);
  }
  else {
    snprintf (cmd, sizeof cmd, "cd %s && qemu-img create -q -f %s %s%s "
              "init.%s %" PRIu64, dir, fmt, o, opts, fmt, vsize);
    CHECK (sh (cmd) == 0);
  }
  if (f_snap && !f_lazydirty) {
    snprintf (cmd, sizeof cmd, "cd %s && qemu-img snapshot -c s1 init.qcow2",
              dir);
    CHECK (sh (cmd) == 0);
  }
  if (f_bitmap && !f_lazydirty) {
    snprintf (cmd, sizeof cmd, "cd %s && qemu-img bitmap --add init.qcow2 b0",
              dir);
    CHECK (sh (cmd) == 0);
  }
  if (f_datafile) {
    snprintf (cmd, sizeof cmd, "cd %s && cp img.data init.data", dir);
    CHECK (sh (cmd) == 0);
  }
  free (raw);
}

/* Run NSEEDS seeds from SEED of ENGINE/VARIANT (globals set): returns
 * the number that failed.
 */
static long
run_config (uint64_t seed, long nseeds, int cycles, int nops)
{
  char cmd[1024];
  strcpy (dir, "/tmp/power.XXXXXX");
  CHECK (mkdtemp (dir));
  vsize = 4 << 20;
  gran = 65536;
  have_backing = thin_ext = 0;
  char optbuf[256];
  snprintf (optbuf, sizeof optbuf, "%s",
            strchr (variant, ':') ? strchr (variant, ':') + 1 : "");
  char *flags = strchr (optbuf, '/');
  const char *opts = optbuf;
  f_compress = f_init = f_initc = f_snap = f_bitmap = f_parent = 0;
  f_dirtylog = f_qemu_read = trim_init = f_datafile = f_lazydirty = 0;
  n_snap_checks = n_bitmap_checks = n_bitmap_inuse = 0;
  static char copt[32];
  fopts[0] = NULL;
  if (flags) {
    *flags++ = 0;
    f_qemu_read = 1;
    for (char *f = strtok (flags, ","); f; f = strtok (NULL, ",")) {
      if (!strcmp (f, "compress")) f_compress = 1;
      else if (!strcmp (f, "init")) f_init = 1;
      else if (!strcmp (f, "initc")) f_initc = 1;
      else if (!strcmp (f, "snap")) f_snap = 1;
      else if (!strcmp (f, "bitmap")) f_bitmap = 1;
      else if (!strcmp (f, "parent")) f_parent = 1;
      else if (!strcmp (f, "dirtylog")) f_dirtylog = 1;
      else if (!strcmp (f, "datafile")) f_datafile = 1;
      else if (!strcmp (f, "lazydirty")) f_lazydirty = 1;
      else {
        fprintf (stderr, "unknown variant flag %s\n", f);
        exit (2);
      }
    }
  }
  if (f_compress) {
    snprintf (copt, sizeof copt, "qcow2.compress=%s",
              strstr (opts, "compression_type=zstd") ? "zstd" : "zlib");
    fopts[0] = copt;
    fopts[1] = NULL;
  }
  if (!strcmp (engine, "thin")) {
    thin_ext = !strcmp (variant, "ext");
    vsize = 8 << 20;
    thin_chunk = 65536;
    gran = thin_chunk;
    thin_pool_max = 8 << 20;    /* starts at half: ENOSPC, then growth */
  } else {
    snprintf (fmt, sizeof fmt, "%s", engine);
    const char *cs = strstr (opts, "cluster_size=");
    if (cs) gran = strtoull (cs + 13, NULL, 0);
    const char *bs = strstr (opts, "block_size=");
    if (bs && !strcmp (engine, "vhdx")) gran = strtoull (bs + 11, NULL, 0);
    if (!strcmp (engine, "vhdx") && gran > 65536 * 4) gran = 65536;
    if (!strcmp (engine, "vmdk")) gran = 65536;
    if (gran < 4096)
      vsize = getenv ("POWER_VSIZE")
        ? strtoull (getenv ("POWER_VSIZE"), NULL, 0) : 1 << 20;
    have_backing = !strncmp (variant, "qemu-backing", 12);
    nsect = vsize / 512;
    init_tok = calloc (nsect, sizeof *init_tok);
    CHECK (init_tok);
    if (have_backing)
      for (uint64_t s = 0; s < nsect; s++) init_tok[s] = TOK_BACKING;
    trim_init = have_backing || f_parent;
    cmd[0] = 0;
    if (f_init || f_initc || f_snap || f_bitmap || f_parent || f_dirtylog ||
        f_datafile || f_lazydirty)
      make_init (opts);
    else if (have_backing) {
      unsigned char *b = malloc (vsize);
      CHECK (b);
      for (uint64_t s = 0; s < vsize / 512; s++)
        fill (b + s * 512, s, TOK_BACKING);
      snprintf (cmd, sizeof cmd, "%s/backing.raw", dir);
      write_file (cmd, b, vsize);
      free (b);
      snprintf (cmd, sizeof cmd, "cd %s && qemu-img create -q -f %s -F raw "
                "-b backing.raw %s%s init.%s %" PRIu64, dir, fmt,
                *opts ? "-o " : "", opts, fmt, vsize);
    } else
      snprintf (cmd, sizeof cmd, "cd %s && qemu-img create -q -f %s %s%s "
                "init.%s %" PRIu64, dir, fmt, *opts ? "-o " : "", opts, fmt,
                vsize);
    if (cmd[0])
      CHECK (sh (cmd) == 0);
    snprintf (imgpath, sizeof imgpath, "%s/img.%s", dir, fmt);
  }
  if (getenv ("POWER_GRAN"))    /* the workload's granule, not the format's */
    gran = strtoull (getenv ("POWER_GRAN"), NULL, 0);
  nsect = vsize / 512;
  if (!init_tok) CHECK ((init_tok = calloc (nsect, sizeof *init_tok)));
  cur = calloc (nsect, sizeof *cur);
  crash = calloc (nsect, sizeof *crash);
  buf = malloc (vsize);
  CHECK (cur && crash && buf);
  long fails = 0;
  /* QEMU 7.2 resolves a relative data file name from its working
   * directory, not from the image's.
   */
  char owd[4096];
  CHECK (getcwd (owd, sizeof owd));
  CHECK (chdir (dir) == 0);
  for (long i = 0; i < nseeds; i++) {
    if (run_seed (seed + i, cycles, nops)) {
      fails++;
      printf ("FAIL %s %s seed %" PRIu64 "\n", engine, variant, seed + i);
      fflush (stdout);
      if (fails >= 3) break;
    }
  }
  printf ("%s %s: %ld seeds from %" PRIu64 ", %d cuts each, %ld failed\n",
          engine, variant, nseeds, seed, cycles, fails);
  fflush (stdout);
  for (uint64_t s = 0; s < nsect; s++) {
    free (cur[s].v);
    free (crash[s].v);
  }
  free (cur);
  free (crash);
  free (buf);
  free (init_tok);
  init_tok = NULL;
  if (f_snap || f_bitmap)
    printf ("  (snapshot checks %ld, bitmap checks %ld, bitmap in use after "
            "%ld cuts)\n", n_snap_checks, n_bitmap_checks, n_bitmap_inuse);
  CHECK (chdir (owd) == 0);
  snprintf (cmd, sizeof cmd, "rm -rf %s", dir);
  if (getenv ("POWER_KEEP")) fprintf (stderr, "kept %s\n", dir);
  else sh (cmd);
  return fails;
}

/* With no arguments (ctest): a small matrix, in seconds.  Longer runs:
 * test_power_loss ENGINE VARIANT SEED [NSEEDS [CYCLES [OPS [VERBOSE]]]].
 */
static const struct {
  const char *engine, *variant;
  long nseeds;
  unsigned fail_pct;            /* POWER_FAIL_PCT for this entry */
  int nops;                     /* operations per cycle; 0: 40 */
} matrix[] = {
  { "qcow2", "qemu:", 30, 0, 0 },
  { "qcow2", "qemu:cluster_size=512,refcount_bits=1", 15, 0, 0 },
  { "qcow2", "qemu:extended_l2=on", 15, 0, 0 },
  { "qcow2", "qemu-backing:", 15, 0, 0 },
  { "vmdk", "qemu:", 40, 0, 0 },
  { "vhdx", "qemu:block_size=1048576", 20, 0, 0 },
  { "thin", "int", 15, 0, 0 },
  { "thin", "ext", 15, 0, 0 },
  /* Writes and flushes below failing (a header left pending, retried). */
  { "thin", "int", 150, 20, 0 },
  { "thin", "ext", 150, 20, 0 },
  /* ... and under qcow2: a new cluster whose deferred data write failed
   * stays mapped; the file must still cover it (a container without a
   * descriptor, as on NFS).
   */
  { "qcow2", "qemu:", 60, 10, 0 },
  { "qcow2", "qemu-backing:", 30, 10, 0 },
  { "qcow2", "qemu:extended_l2=on", 30, 10, 0 },
  { "vhdx", "qemu:block_size=1048576", 30, 10, 0 },
  { "vmdk", "qemu:", 30, 10, 0 },
  /* With the variant flags: also read back by qemu-img after every cut. */
  { "qcow2", "qemu:/initc,snap,compress", 4, 0, 0 },
  { "qcow2", "qemu:cluster_size=4096/init,bitmap", 4, 0, 0 },
  /* A bitmap store that failed after clearing IN_USE: the next change
   * must mark it in use again (3 of these 30 seeds failed before).
   */
  { "qcow2", "qemu:cluster_size=4096/init,bitmap", 30, 20, 80 },
  { "qcow2", "qemu:/datafile,init", 3, 0, 0 },
  { "qcow2", "qemu:/lazydirty", 4, 0, 0 },
  { "vhdx", "qemu:block_size=1048576/dirtylog", 4, 0, 0 },
  { "vhdx", "qemu:block_size=1048576/parent", 4, 0, 0 },
};

int
main (int argc, char **argv)
{
  long fails = 0;
  if (argc == 1) {
    for (size_t i = 0; i < sizeof matrix / sizeof matrix[0]; i++) {
      engine = matrix[i].engine;
      variant = matrix[i].variant;
      vc_fail_pct = matrix[i].fail_pct;
      fails += run_config (1, matrix[i].nseeds, 2,
                           matrix[i].nops ? matrix[i].nops : 40);
    }
    return fails ? 1 : 0;
  }
  if (argc < 4) {
    fprintf (stderr, "usage: %s [ENGINE VARIANT SEED [NSEEDS [CYCLES [OPS "
             "[VERBOSE]]]]]\n", argv[0]);
    return 2;
  }
  engine = argv[1];
  variant = argv[2];
  if (getenv ("POWER_FAIL_PCT"))
    vc_fail_pct = atoi (getenv ("POWER_FAIL_PCT"));
  uint64_t seed = strtoull (argv[3], NULL, 0);
  long nseeds = argc > 4 ? atol (argv[4]) : 1;
  int cycles = argc > 5 ? atoi (argv[5]) : 4;
  int nops = argc > 6 ? atoi (argv[6]) : 60;
  verbose = argc > 7 ? atoi (argv[7]) : 0;
  fails = run_config (seed, nseeds, cycles, nops);
  return fails ? 1 : 0;
}
