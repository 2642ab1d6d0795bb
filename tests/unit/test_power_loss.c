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
#include "check.h"
#include "power_vcache.h"

#define MAGIC 0x504f5752u
#define TOK_BACKING 0xffffffffu

static const char *engine, *variant;
static char dir[64] = "/tmp/power.XXXXXX";
static char imgpath[128], fmt[16];
static uint64_t vsize, gran;
static int have_backing, verbose;
static int thin_ext;
static uint64_t thin_chunk = 65536, thin_pool_max;

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
  uint64_t *w = (uint64_t *) buf;
  for (int i = 0; i < 64; i += 2) {
    w[i] = ((uint64_t) MAGIC << 32) | tok;
    w[i + 1] = sect ^ 0x5a5a000000000000ull;
  }
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
  uint64_t s = w[1] ^ 0x5a5a000000000000ull;
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
  if (thin && thin_ext)
    vc_meta = vc_new (x, xl, 1, &events, &cut_at, &crashed, on_cut, NULL);
}

/* Check the crash image with the format's checker: 0 ok, else problem. */
static int
check_image (void)
{
  char cmd[512];
  if (strcmp (engine, "thin")) {
    write_file (imgpath, img_main, len_main);
    snprintf (cmd, sizeof cmd, "qemu-img check -f %s %s > %s/check.out 2>&1",
              fmt, imgpath, dir);
    int r = sh (cmd);
    if (r == 0 || r == 3)
      return 0;
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
  for (uint64_t s = 0; s < nsect; s++) {
    ss_clear (&cur[s]); ss_clear (&crash[s]);
    ss_add (&cur[s], have_backing ? TOK_BACKING : 0);
    ss_add (&crash[s], have_backing ? TOK_BACKING : 0);
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
  }
  make_vcs (mi, ml, xi, xl);
  free (mi); free (xi);
  int fail = 0;
  for (int cyc = 0; cyc < cycles && !fail; cyc++) {
    events = 0; crashed = 0; img_main = img_meta = NULL;
    cut_at = 1 + prng (&rng) % (nops * 4 + 8);
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
        if (!ok && errno != ENOSPC) {
          fprintf (stderr, "seed %" PRIu64 ": write failed: %m\n", seed);
        }
      } else if (r < 57) {      /* flush */
        if (verbose > 1) fprintf (stderr, "  op %d: flush\n", op);
        ok = bdev_flush (bd) == 0;
        if (ok && !crashed)
          for (uint64_t s = 0; s < nsect; s++) ss_copy (&crash[s], &cur[s]);
      } else if (r < 67) {      /* trim */
        if (verbose > 1)
          fprintf (stderr, "  op %d: trim off 0x%" PRIx64 " len 0x%" PRIx64
                   "\n", op, off, len);
        for (uint64_t s = off / 512; s < (off + len) / 512; s++) {
          ss_add (&crash[s], 0); ss_add (&cur[s], 0);
          if (have_backing) {
            ss_add (&crash[s], TOK_BACKING); ss_add (&cur[s], TOK_BACKING);
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
    events = 0; crashed = 0; cut_at = -1;
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
  const char *opts = strchr (variant, ':') ? strchr (variant, ':') + 1 : "";
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
    if (have_backing) {
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
    CHECK (sh (cmd) == 0);
    snprintf (imgpath, sizeof imgpath, "%s/img.%s", dir, fmt);
  }
  nsect = vsize / 512;
  cur = calloc (nsect, sizeof *cur);
  crash = calloc (nsect, sizeof *crash);
  buf = malloc (vsize);
  CHECK (cur && crash && buf);
  long fails = 0;
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
} matrix[] = {
  { "qcow2", "qemu:", 30 },
  { "qcow2", "qemu:cluster_size=512,refcount_bits=1", 15 },
  { "qcow2", "qemu:extended_l2=on", 15 },
  { "qcow2", "qemu-backing:", 15 },
  { "vmdk", "qemu:", 40 },
  { "vhdx", "qemu:block_size=1048576", 20 },
  { "thin", "int", 15 },
  { "thin", "ext", 15 },
};

int
main (int argc, char **argv)
{
  long fails = 0;
  if (argc == 1) {
    for (size_t i = 0; i < sizeof matrix / sizeof matrix[0]; i++) {
      engine = matrix[i].engine;
      variant = matrix[i].variant;
      fails += run_config (1, matrix[i].nseeds, 2, 40);
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
  uint64_t seed = strtoull (argv[3], NULL, 0);
  long nseeds = argc > 4 ? atol (argv[4]) : 1;
  int cycles = argc > 5 ? atoi (argv[5]) : 4;
  int nops = argc > 6 ? atoi (argv[6]) : 60;
  verbose = argc > 7 ? atoi (argv[7]) : 0;
  fails = run_config (seed, nseeds, cycles, nops);
  return fails ? 1 : 0;
}
