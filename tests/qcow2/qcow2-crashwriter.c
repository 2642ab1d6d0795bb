/* SPDX-License-Identifier: BSD-3-Clause */
/* Writer and checker for the qcow2 crash test (test-qcow2-crash.sh).
 *
 *   qcow2-crashwriter write URI LOG START LEN SLOT SEQBASE SEED
 *     Connects to URI and, until the connection fails (the server is
 *     killed), writes whole "slots" of SLOT bytes inside [START, START+LEN):
 *     data (some with FUA), write-zeroes (with and without may-trim) and
 *     trims, with a flush every few requests.  Every request is logged as
 *     "I slot seq kind" BEFORE it is sent; after a flush (or an FUA write)
 *     succeeds, every request completed before it is logged as
 *     "D slot seq kind": durable.
 *
 *   qcow2-crashwriter check RAW START LEN SLOT [--initial FILE] LOG...
 *     RAW is the image content as qemu-img convert -O raw reads it after
 *     the crash.  For every slot, with d = the newest durable request:
 *     each 512-byte chunk must be the data of a write issued at or after d,
 *     or zeroes if a write-zeroes was issued at or after d; a trim at or
 *     after d makes the slot undefined (not checked).  A slot without a
 *     durable request may also hold its initial content (zeroes, or the
 *     backing content given with --initial).  Any other content (stale
 *     data, garbage, another slot's data) is an error.
 *
 * Data chunks are self-describing: "QCWR", slot, seq, then bytes from a
 * PRNG seeded with (slot, seq, chunk), so a chunk out of place is seen.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <libnbd.h>

#define CHUNK 512

static uint64_t
mix (uint64_t x)
{
  x ^= x >> 30; x *= 0xbf58476d1ce4e5b9ULL;
  x ^= x >> 27; x *= 0x94d049bb133111ebULL;
  x ^= x >> 31;
  return x;
}

static void
make_chunk (uint8_t *p, uint32_t slot, uint64_t seq, uint64_t idx)
{
  uint64_t s = mix (((uint64_t) slot << 40) ^ (seq * 0x9e3779b97f4a7c15ULL) ^ idx);
  memcpy (p, "QCWR", 4);
  memcpy (p + 4, &slot, 4);
  memcpy (p + 8, &seq, 8);
  for (int i = 16; i < CHUNK; i += 8) {
    s = mix (s + 0x9e3779b97f4a7c15ULL);
    memcpy (p + i, &s, 8);
  }
}

static uint64_t rng_state;
static uint64_t
rnd (void)
{
  rng_state += 0x9e3779b97f4a7c15ULL;
  return mix (rng_state);
}

static int
do_write (int argc, char **argv)
{
  if (argc != 9) {
    fprintf (stderr, "usage: write URI LOG START LEN SLOT SEQBASE SEED\n");
    return 2;
  }
  const char *uri = argv[2];
  FILE *log = fopen (argv[3], "a");
  uint64_t start = strtoull (argv[4], NULL, 0);
  uint64_t len = strtoull (argv[5], NULL, 0);
  uint64_t slot = strtoull (argv[6], NULL, 0);
  uint64_t seq = strtoull (argv[7], NULL, 0);
  rng_state = strtoull (argv[8], NULL, 0);
  if (!log || slot == 0 || slot % CHUNK || len < slot) {
    fprintf (stderr, "crashwriter: bad arguments\n");
    return 2;
  }
  uint64_t nslots = len / slot;
  uint8_t *buf = malloc (slot);
  struct { uint32_t slot; uint64_t seq; char kind; } *pending;
  pending = calloc (64, sizeof *pending);
  if (!buf || !pending)
    return 2;

  struct nbd_handle *nbd = nbd_create ();
  if (!nbd || nbd_connect_uri (nbd, uri) == -1) {
    fprintf (stderr, "crashwriter: %s\n", nbd_get_error ());
    return 2;
  }
  setvbuf (log, NULL, _IOLBF, 0);
  unsigned npending = 0, until_flush = 1 + rnd () % 8;
  uint64_t ops = 0;
  for (;;) {
    uint32_t s = rnd () % nslots;
    uint64_t off = start + s * slot;
    unsigned r = rnd () % 100;
    char kind;
    int ret;
    seq++;
    if (r < 75) {
      kind = 'W';
      for (uint64_t i = 0; i < slot / CHUNK; i++)
        make_chunk (buf + i * CHUNK, s, seq, i);
    }
    else if (r < 93)
      kind = 'Z';
    else
      kind = 'T';
    bool fua = kind == 'W' && r < 10;
    fprintf (log, "I %" PRIu32 " %" PRIu64 " %c\n", s, seq, kind);
    if (kind == 'W')
      ret = nbd_pwrite (nbd, buf, slot, off, fua ? LIBNBD_CMD_FLAG_FUA : 0);
    else if (kind == 'Z')
      ret = nbd_zero (nbd, slot, off, r < 85 ? LIBNBD_CMD_FLAG_NO_HOLE : 0);
    else
      ret = nbd_trim (nbd, slot, off, 0);
    if (ret == -1)
      break;
    ops++;
    if (fua) {
      fprintf (log, "D %" PRIu32 " %" PRIu64 " %c\n", s, seq, kind);
      continue;
    }
    pending[npending].slot = s;
    pending[npending].seq = seq;
    pending[npending].kind = kind;
    npending++;
    if (--until_flush == 0 || npending == 64) {
      if (nbd_flush (nbd, 0) == -1)
        break;
      for (unsigned i = 0; i < npending; i++)
        fprintf (log, "D %" PRIu32 " %" PRIu64 " %c\n",
                 pending[i].slot, pending[i].seq, pending[i].kind);
      npending = 0;
      until_flush = 1 + rnd () % 8;
    }
  }
  fprintf (stderr, "crashwriter: stopped after %" PRIu64 " requests: %s\n",
           ops, nbd_get_error ());
  fclose (log);
  nbd_close (nbd);
  return 0;
}

struct slotstate {
  uint64_t durable;             /* newest durable seq, 0 = none */
  char durable_kind;
  uint64_t *issued;             /* seqs of issued writes and zeroes */
  char *kinds;
  size_t n, cap;
};

static int
do_check (int argc, char **argv)
{
  if (argc < 7) {
    fprintf (stderr, "usage: check RAW START LEN SLOT [--initial F] LOG...\n");
    return 2;
  }
  int fd = open (argv[2], O_RDONLY);
  uint64_t start = strtoull (argv[3], NULL, 0);
  uint64_t len = strtoull (argv[4], NULL, 0);
  uint64_t slot = strtoull (argv[5], NULL, 0);
  int a = 6, initfd = -1;
  if (fd == -1) {
    perror (argv[2]);
    return 2;
  }
  if (strcmp (argv[a], "--initial") == 0) {
    initfd = open (argv[a + 1], O_RDONLY);
    if (initfd == -1) {
      perror (argv[a + 1]);
      return 2;
    }
    a += 2;
  }
  uint64_t nslots = len / slot;
  struct slotstate *st = calloc (nslots, sizeof *st);
  if (!st)
    return 2;
  uint64_t ndurable = 0, nissued = 0;
  for (; a < argc; a++) {
    FILE *fp = fopen (argv[a], "r");
    if (!fp) {
      perror (argv[a]);
      return 2;
    }
    char t, k;
    uint32_t s;
    uint64_t q;
    while (fscanf (fp, " %c %" SCNu32 " %" SCNu64 " %c", &t, &s, &q, &k) == 4) {
      if (s >= nslots) {
        fprintf (stderr, "bad log line in %s\n", argv[a]);
        return 2;
      }
      struct slotstate *x = &st[s];
      if (t == 'D') {
        ndurable++;
        if (q > x->durable) {
          x->durable = q;
          x->durable_kind = k;
        }
      }
      else {
        nissued++;
        if (x->n == x->cap) {
          x->cap = x->cap ? 2 * x->cap : 8;
          x->issued = realloc (x->issued, x->cap * sizeof *x->issued);
          x->kinds = realloc (x->kinds, x->cap);
          if (!x->issued || !x->kinds)
            return 2;
        }
        x->issued[x->n] = q;
        x->kinds[x->n] = k;
        x->n++;
      }
    }
    fclose (fp);
  }

  uint8_t got[CHUNK], want[CHUNK], init[CHUNK];
  static const uint8_t zero[CHUNK];
  uint64_t bad = 0, checked = 0, undefined = 0;
  for (uint64_t s = 0; s < nslots; s++) {
    struct slotstate *x = &st[s];
    bool zero_ok = false, trimmed = false;
    if (x->durable == 0)
      zero_ok = initfd == -1;
    for (size_t i = 0; i < x->n; i++) {
      if (x->issued[i] < x->durable)
        continue;
      if (x->kinds[i] == 'Z')
        zero_ok = true;
      if (x->kinds[i] == 'T')
        trimmed = true;
    }
    if (trimmed) {
      undefined++;
      continue;
    }
    checked++;
    for (uint64_t c = 0; c < slot / CHUNK; c++) {
      uint64_t off = start + s * slot + c * CHUNK;
      if (pread (fd, got, CHUNK, off) != CHUNK) {
        fprintf (stderr, "short read at %" PRIu64 "\n", off);
        return 2;
      }
      if (memcmp (got, zero, CHUNK) == 0 && zero_ok)
        continue;
      if (x->durable == 0 && initfd != -1) {
        if (pread (initfd, init, CHUNK, off) == CHUNK &&
            memcmp (got, init, CHUNK) == 0)
          continue;
      }
      const char *why = NULL;
      uint32_t gs;
      uint64_t gq;
      memcpy (&gs, got + 4, 4);
      memcpy (&gq, got + 8, 8);
      if (memcmp (got, "QCWR", 4) != 0)
        why = memcmp (got, zero, CHUNK) == 0 ? "zeroes" : "foreign data";
      else if (gs != s)
        why = "data of another slot";
      else {
        bool issued = false;
        for (size_t i = 0; i < x->n; i++)
          if (x->issued[i] == gq && x->kinds[i] == 'W')
            issued = true;
        make_chunk (want, s, gq, c);
        if (!issued)
          why = "data of a write never issued";
        else if (memcmp (got, want, CHUNK) != 0)
          why = "corrupted chunk";
        else if (gq < x->durable)
          why = "stale data older than a durable request";
      }
      if (why) {
        if (bad < 20)
          fprintf (stderr,
                   "LOST: offset %" PRIu64 " (slot %" PRIu64 " chunk %"
                   PRIu64 "): %s (found seq %" PRIu64 ", durable seq %"
                   PRIu64 " %c)\n", off, s, c, why,
                   memcmp (got, "QCWR", 4) == 0 ? gq : 0,
                   x->durable, x->durable ? x->durable_kind : '-');
        bad++;
      }
    }
  }
  printf ("checked %" PRIu64 " slots (%" PRIu64 " undefined after trim), "
          "%" PRIu64 " requests issued, %" PRIu64 " durable, %" PRIu64
          " bad chunks\n", checked, undefined, nissued, ndurable, bad);
  return bad ? 1 : 0;
}

int
main (int argc, char **argv)
{
  if (argc >= 2 && strcmp (argv[1], "write") == 0)
    return do_write (argc, argv);
  if (argc >= 2 && strcmp (argv[1], "check") == 0)
    return do_check (argc, argv);
  fprintf (stderr, "usage: qcow2-crashwriter write|check ...\n");
  return 2;
}
