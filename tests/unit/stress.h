/* SPDX-License-Identifier: BSD-3-Clause */
/* A multi-threaded stress driver for any struct bdev, as nbdkit's PARALLEL
 * thread model drives an engine: several threads issue reads, writes,
 * zeroes, trims and flushes on one shared device at once.
 *
 * The device is cut into blocks of opts.block bytes; block b belongs to
 * thread b % threads, and only its owner writes it, so the expected
 * content (the model, one buffer) stays exact while the engine sees
 * concurrent requests on neighbouring blocks: with blocks smaller than
 * the engine's allocation unit (a qcow2 cluster, a vmdk grain, a vhdx
 * block, a thin chunk) several threads allocate the same unit at once.
 * Each thread checks every read of its own blocks against the model at
 * once; reads of other threads' blocks (content in flux) only exercise
 * the engine.  Trimmed blocks are undefined until written again.
 *
 * Under the ThreadSanitizer build (-DSANITIZE=thread) these tests find
 * data races in the engines; in the other builds they are ordinary
 * tests.  STRESS_ROUNDS in the environment multiplies the operation count
 * for long local runs.
 */
#ifndef KVM_TEST_STRESS_H
#define KVM_TEST_STRESS_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bdev/bdev.h"
#include "bdev/formats.h"
#include "check.h"

struct stress_opts {
  unsigned threads;             /* 2..16 */
  unsigned ops;                 /* per thread */
  uint32_t block;               /* bytes per model block */
  uint64_t span;                /* bytes of the device used (from 0) */
  uint32_t sub;                 /* >0: some writes cover only a SUB-aligned
                                 * part of a block (read-modify-write paths) */
  bool zero, trim;              /* issue zero / trim requests */
  unsigned seed;
};

struct stress_model {
  uint8_t *data;                /* span bytes */
  uint8_t *known;               /* per block: 0 after a trim */
  uint64_t nblocks;
  uint32_t block;
};

struct stress_thread {
  struct bdev *bd;
  const struct stress_opts *o;
  struct stress_model *m;
  unsigned id, seed;
  unsigned long reads, writes, zeroes, trims, flushes, checked;
  pthread_t th;
};

static inline unsigned
stress_rand (unsigned *s)
{
  *s = *s * 1103515245u + 12345u;
  return (*s >> 8) & 0xffffff;
}

static inline unsigned
stress_ops (unsigned ops)
{
  const char *r = getenv ("STRESS_ROUNDS");
  unsigned long n = r ? strtoul (r, NULL, 10) : 1;
  return ops * (n ? n : 1);
}

static inline void
stress_model_init (struct stress_model *m, const struct stress_opts *o,
                   const void *initial)
{
  CHECK (o->span % o->block == 0);
  m->block = o->block;
  m->nblocks = o->span / o->block;
  CHECK ((m->data = malloc (o->span)));
  CHECK ((m->known = malloc (m->nblocks)));
  if (initial)
    memcpy (m->data, initial, o->span);
  else
    memset (m->data, 0, o->span);
  memset (m->known, 1, m->nblocks);
}

static inline void
stress_model_free (struct stress_model *m)
{
  free (m->data);
  free (m->known);
}

static inline void
stress_fill (uint8_t *p, size_t n, unsigned *s)
{
  for (size_t i = 0; i < n; i += 4) {
    unsigned v = stress_rand (s) | (stress_rand (s) << 24);
    memcpy (p + i, &v, n - i < 4 ? n - i : 4);
  }
}

static void *
stress_worker (void *arg)
{
  struct stress_thread *t = arg;
  const struct stress_opts *o = t->o;
  struct stress_model *m = t->m;
  uint32_t B = o->block;
  uint8_t *buf = malloc (B);
  CHECK (buf);
  uint64_t mine = (m->nblocks - t->id + o->threads - 1) / o->threads;
  CHECK (mine > 0);

  for (unsigned i = 0; i < stress_ops (o->ops); i++) {
    uint64_t b = t->id + (uint64_t) o->threads * (stress_rand (&t->seed) % mine);
    uint64_t off = b * B;
    unsigned r = stress_rand (&t->seed) % 100;
    if (r < 35) {                       /* read own block: check it */
      CHECK (bdev_pread (t->bd, buf, B, off) == 0);
      if (m->known[b] && memcmp (buf, m->data + off, B) != 0) {
        fprintf (stderr, "thread %u: block %llu (offset %llu) differs "
                 "from the model after op %u\n", t->id,
                 (unsigned long long) b, (unsigned long long) off, i);
        exit (1);
      }
      t->reads++, t->checked++;
    }
    else if (r < 45) {                  /* read anyone's block */
      uint64_t ob = stress_rand (&t->seed) % m->nblocks;
      CHECK (bdev_pread (t->bd, buf, B, ob * B) == 0);
      t->reads++;
    }
    else if (r < 80 || (!o->zero && !o->trim)) {   /* write */
      uint32_t s = 0, n = B;
      if (o->sub && B > o->sub && stress_rand (&t->seed) % 2) {
        uint32_t k = B / o->sub;
        s = (stress_rand (&t->seed) % k) * o->sub;
        n = (1 + stress_rand (&t->seed) % (k - s / o->sub)) * o->sub;
        if (!m->known[b])       /* a partial write into undefined content */
          s = 0, n = B;
      }
      stress_fill (buf, n, &t->seed);
      unsigned fua = stress_rand (&t->seed) % 16 == 0 ? BDEV_FUA : 0;
      CHECK (bdev_pwrite (t->bd, buf, n, off + s, fua) == 0);
      memcpy (m->data + off + s, buf, n);
      m->known[b] = 1;
      t->writes++;
    }
    else if (r < 90 && o->zero) {       /* zero */
      unsigned fl = stress_rand (&t->seed) % 2 ? BDEV_MAY_TRIM : 0;
      CHECK (bdev_zero (t->bd, B, off, fl) == 0);
      memset (m->data + off, 0, B);
      m->known[b] = 1;
      t->zeroes++;
    }
    else if (r < 97 && o->trim) {       /* trim: undefined until written */
      CHECK (bdev_trim (t->bd, B, off, 0) == 0);
      m->known[b] = 0;
      t->trims++;
    }
    else {
      CHECK (bdev_flush (t->bd) == 0);
      t->flushes++;
    }
  }
  free (buf);
  return NULL;
}

/* Run the threads on BD to the end; the model then holds the expected
 * content (stress_check).
 */
static inline void
stress_run (struct bdev *bd, const struct stress_opts *o,
            struct stress_model *m, const char *what)
{
  struct stress_thread t[16];
  CHECK (o->threads >= 1 && o->threads <= 16);
  CHECK (o->span <= bd->size);
  for (unsigned i = 0; i < o->threads; i++) {
    t[i] = (struct stress_thread) { .bd = bd, .o = o, .m = m, .id = i,
                                    .seed = o->seed * 7919u + i * 104729u + 1 };
    CHECK (pthread_create (&t[i].th, NULL, stress_worker, &t[i]) == 0);
  }
  unsigned long r = 0, w = 0, z = 0, tr = 0, f = 0, c = 0;
  for (unsigned i = 0; i < o->threads; i++) {
    CHECK (pthread_join (t[i].th, NULL) == 0);
    r += t[i].reads, w += t[i].writes, z += t[i].zeroes;
    tr += t[i].trims, f += t[i].flushes, c += t[i].checked;
  }
  printf ("%s: %u threads: %lu reads (%lu checked), %lu writes, "
          "%lu zeroes, %lu trims, %lu flushes\n",
          what, o->threads, r, c, w, z, tr, f);
  CHECK (c > 0 && w > 0);
}

/* The whole span of BD against the model (undefined blocks skipped). */
static inline void
stress_check (struct bdev *bd, const struct stress_model *m, const char *what)
{
  uint8_t *buf = malloc (m->block);
  CHECK (buf);
  for (uint64_t b = 0; b < m->nblocks; b++) {
    CHECK (bdev_pread (bd, buf, m->block, b * m->block) == 0);
    if (m->known[b] && memcmp (buf, m->data + b * m->block, m->block) != 0) {
      fprintf (stderr, "%s: block %llu differs from the model\n", what,
               (unsigned long long) b);
      exit (1);
    }
  }
  free (buf);
}

/* Make the model's undefined (trimmed) blocks defined: write zeroes there
 * through BD, so that the whole span can be compared by external tools.
 */
static inline void
stress_settle (struct bdev *bd, struct stress_model *m)
{
  for (uint64_t b = 0; b < m->nblocks; b++)
    if (!m->known[b]) {
      CHECK (bdev_zero (bd, m->block, b * m->block, 0) == 0);
      memset (m->data + b * m->block, 0, m->block);
      m->known[b] = 1;
    }
}

/* Write the model (settled) to a raw file PATH of SIZE bytes. */
static inline void
stress_write_mirror (const struct stress_model *m, const char *path,
                     uint64_t size)
{
  FILE *fp = fopen (path, "w");
  CHECK (fp);
  CHECK (fwrite (m->data, 1, (size_t) m->nblocks * m->block, fp)
         == (size_t) m->nblocks * m->block);
  CHECK (fclose (fp) == 0);
  CHECK (truncate (path, size) == 0);
}

/* Run a shell command (qemu-img compare/check): it must exit 0.  A
 * missing qemu-img skips (77), or fails under CI=true.
 */
static inline void
stress_system (const char *cmd)
{
  if (system ("command -v qemu-img >/dev/null 2>&1") != 0) {
    const char *ci = getenv ("CI");
    fprintf (stderr, "qemu-img not installed\n");
    exit (ci && strcmp (ci, "true") == 0 ? 1 : 77);
  }
  int rc = system (cmd);
  if (rc != 0) {
    fprintf (stderr, "command failed (%d): %s\n", rc, cmd);
    exit (1);
  }
}

/* One run on a new image of format FMT (bdev_formats: created with
 * CREATE_OPTS, NULL-terminated) of SIZE bytes at DIR/NAME.FMT, opened with
 * FOPTS: stress, check, settle, flush, close, reopen and check, then
 * "qemu-img check" (unless QEMU_FMT is NULL) and "qemu-img compare" with a
 * raw mirror of the model.
 */
static inline void
stress_format_variant (const char *dir, const char *fmt, const char *name,
                       const char *const *create_opts,
                       const char *const *fopts, uint64_t size,
                       struct stress_opts so, const char *qemu_fmt)
{
  char path[256], mirror[256], cmd[1024];
  snprintf (path, sizeof path, "%s/%s.%s", dir, name, fmt);
  snprintf (mirror, sizeof mirror, "%s/%s.raw", dir, name);
  const struct bdev_format *f = bdev_format_find (fmt);
  CHECK (f && f->create);
  CHECK (f->create (path, size, create_opts) == 0);
  struct bdev_open_opts oo = { .format_opts = fopts };

  struct stress_model m;
  stress_model_init (&m, &so, NULL);
  struct bdev *bd = bdev_open (path, fmt, &oo, 0);
  CHECK (bd);
  stress_run (bd, &so, &m, name);
  stress_check (bd, &m, name);
  stress_settle (bd, &m);
  CHECK (bdev_flush (bd) == 0);
  bdev_close (bd);

  CHECK ((bd = bdev_open (path, fmt, &oo, 0)));
  stress_check (bd, &m, name);
  bdev_close (bd);

  stress_write_mirror (&m, mirror, size);
  if (qemu_fmt) {
    snprintf (cmd, sizeof cmd,
              "qemu-img check -q -f %s '%s' && "
              "qemu-img compare -q -f raw -F %s '%s' '%s'",
              qemu_fmt, path, qemu_fmt, mirror, path);
    stress_system (cmd);
  }
  stress_model_free (&m);
  unlink (mirror);
}

#endif
