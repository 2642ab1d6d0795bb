/* SPDX-License-Identifier: BSD-3-Clause */
/* Throttle engine (common/throttle): limits parsing, bucket arithmetic
 * with a virtual clock (sustained rate, burst, iops-size splitting,
 * read/write/total interplay, zero/trim) and the group scheduler
 * (round-robin fairness, limit changes, abandoned waits), also on a
 * virtual clock.  No assertion depends on wall-clock time.
 */
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <time.h>
#include <stdint.h>

#include "throttle/throttle.h"
#include "check.h"

#define NS 1000000000ULL
#define MiB (1024.0 * 1024.0)

/* |a - b| <= rel * b */
#define CHECK_NEAR(a, b, rel)                                           \
  do {                                                                  \
    double a_ = (a), b_ = (b);                                          \
    if (fabs (a_ - b_) > (rel) * fabs (b_)) {                           \
      fprintf (stderr, "%s:%d: %s ~ %s failed: %g vs %g (±%g%%)\n",      \
               __FILE__, __LINE__, #a, #b, a_, b_, (rel) * 100);        \
      exit (1);                                                         \
    }                                                                   \
  } while (0)

static struct thr_limits
limits (const char *text)
{
  struct thr_limits zero = { 0 }, lim;
  char err[256];
  if (thr_limits_parse_text (&zero, text, NULL, thr_parse_size_simple, &lim,
                             err, sizeof err) == -1) {
    fprintf (stderr, "limits \"%s\": %s\n", text, err);
    exit (1);
  }
  return lim;
}

static void
test_parse (void)
{
  struct thr_limits lim = { 0 }, out;
  char err[256];

  CHECK (thr_parse_size_simple ("100M") == 100 * 1024 * 1024);
  CHECK (thr_parse_size_simple ("4k") == 4096);
  CHECK (thr_parse_size_simple ("123") == 123);
  CHECK (thr_parse_size_simple ("1x") == -1);
  CHECK (thr_parse_size_simple ("") == -1);
  CHECK (thr_parse_size_simple ("-1") == -1);
  CHECK (thr_parse_size_simple ("16E") == -1);

  CHECK (thr_limits_set (&lim, "bps-total", "100M", thr_parse_size_simple,
                         err, sizeof err) == 1);
  CHECK_EQ_U64 (lim.l[THR_BPS_TOTAL].avg, 100 << 20);
  CHECK (thr_limits_set (&lim, "iops-read-max", "3000",
                         thr_parse_size_simple, err, sizeof err) == 1);
  CHECK_EQ_U64 (lim.l[THR_IOPS_READ].max, 3000);
  CHECK (thr_limits_set (&lim, "write_iops_sec_max_length", "7",
                         thr_parse_size_simple, err, sizeof err) == 1);
  CHECK_EQ_U64 (lim.l[THR_IOPS_WRITE].max_length, 7);
  CHECK (thr_limits_set (&lim, "size_iops_sec", "16k",
                         thr_parse_size_simple, err, sizeof err) == 1);
  CHECK_EQ_U64 (lim.iops_size, 16384);
  CHECK (thr_limits_set (&lim, "bps-totally", "1", thr_parse_size_simple,
                         err, sizeof err) == 0);
  CHECK (thr_limits_set (&lim, "file", "x", thr_parse_size_simple,
                         err, sizeof err) == 0);
  CHECK (thr_limits_set (&lim, "iops-total", "1k", thr_parse_size_simple,
                         err, sizeof err) == -1);
  CHECK (strstr (err, "iops-total") != NULL);
  CHECK (thr_limits_set (&lim, "bps-read", "fast", thr_parse_size_simple,
                         err, sizeof err) == -1);
  CHECK (thr_limits_set (&lim, "bps-read-max-length", "0",
                         thr_parse_size_simple, err, sizeof err) == -1);
  CHECK (thr_limits_set (&lim, "iops-read", "1000000000000001",
                         thr_parse_size_simple, err, sizeof err) == -1);

  /* QEMU's consistency rules. */
  memset (&lim, 0, sizeof lim);
  lim.l[THR_BPS_READ].max = 10;
  CHECK (thr_limits_check (&lim, err, sizeof err) == -1);
  CHECK (strstr (err, "bps-read-max needs bps-read") != NULL);
  lim.l[THR_BPS_READ].avg = 20;
  CHECK (thr_limits_check (&lim, err, sizeof err) == -1);
  lim.l[THR_BPS_READ].avg = 5;
  CHECK (thr_limits_check (&lim, err, sizeof err) == 0);
  lim.l[THR_IOPS_TOTAL].avg = 5;
  lim.l[THR_IOPS_TOTAL].max_length = 3;
  CHECK (thr_limits_check (&lim, err, sizeof err) == -1);
  CHECK (strstr (err, "iops-total-max-length") != NULL);

  /* Files: comments, blanks, overrides of the base, errors by line. */
  memset (&lim, 0, sizeof lim);
  lim.l[THR_BPS_TOTAL].avg = 1000;
  lim.l[THR_IOPS_TOTAL].avg = 50;
  CHECK (thr_limits_parse_text (&lim,
                                "# limits\n\n  bps-total = 2M  # two\n"
                                "iops-total=0\r\niops-write=7", NULL,
                                thr_parse_size_simple, &out,
                                err, sizeof err) == 0);
  CHECK_EQ_U64 (out.l[THR_BPS_TOTAL].avg, 2 << 20);
  CHECK_EQ_U64 (out.l[THR_IOPS_TOTAL].avg, 0);
  CHECK_EQ_U64 (out.l[THR_IOPS_WRITE].avg, 7);
  out.l[THR_BPS_READ].avg = 99;
  CHECK (thr_limits_parse_text (&lim, "bps-total=1M\n\nbogus\n", NULL,
                                thr_parse_size_simple, &out,
                                err, sizeof err) == -1);
  CHECK (strstr (err, "line 3") != NULL);
  CHECK_EQ_U64 (out.l[THR_BPS_READ].avg, 99);   /* untouched */
  CHECK (thr_limits_parse_text (&lim, "scope=connection\n", NULL,
                                thr_parse_size_simple, &out,
                                err, sizeof err) == -1);
  CHECK (strstr (err, "unknown key 'scope'") != NULL);
  CHECK (thr_limits_parse_text (&lim, "bps-total-max=10\n", NULL,
                                thr_parse_size_simple, &out,
                                err, sizeof err) == -1);
  CHECK (thr_limits_parse_text (&lim, "", NULL,
                                thr_parse_size_simple, &out,
                                err, sizeof err) == 0);
  CHECK (thr_limits_equal (&lim, &out));
  CHECK (thr_limits_any (&out));
  memset (&out, 0, sizeof out);
  CHECK (!thr_limits_any (&out));

  /* Sections: defaults for every group, then per-group overrides, in
   * whatever order; every section is checked.
   */
  {
    const char *text =
      "iops-total=100\n"
      "[db]\n"
      "bps-total=8M   # db only\n"
      "[web]\n"
      "iops-total=0\n"
      "[db]\n"
      "iops-total=300\n";
    memset (&lim, 0, sizeof lim);
    lim.l[THR_BPS_WRITE].avg = 5;
    CHECK (thr_limits_parse_text (&lim, text, NULL, thr_parse_size_simple,
                                  &out, err, sizeof err) == 0);
    CHECK_EQ_U64 (out.l[THR_IOPS_TOTAL].avg, 100);
    CHECK_EQ_U64 (out.l[THR_BPS_TOTAL].avg, 0);
    CHECK_EQ_U64 (out.l[THR_BPS_WRITE].avg, 5);
    CHECK (thr_limits_parse_text (&lim, text, "db", thr_parse_size_simple,
                                  &out, err, sizeof err) == 0);
    CHECK_EQ_U64 (out.l[THR_IOPS_TOTAL].avg, 300);
    CHECK_EQ_U64 (out.l[THR_BPS_TOTAL].avg, 8 << 20);
    CHECK_EQ_U64 (out.l[THR_BPS_WRITE].avg, 5);
    CHECK (thr_limits_parse_text (&lim, text, "web", thr_parse_size_simple,
                                  &out, err, sizeof err) == 0);
    CHECK_EQ_U64 (out.l[THR_IOPS_TOTAL].avg, 0);
    CHECK_EQ_U64 (out.l[THR_BPS_TOTAL].avg, 0);
    CHECK (thr_limits_parse_text (&lim, text, "other", thr_parse_size_simple,
                                  &out, err, sizeof err) == 0);
    CHECK_EQ_U64 (out.l[THR_IOPS_TOTAL].avg, 100);
    /* A bad section fails the whole file, for every group. */
    CHECK (thr_limits_parse_text (&lim, "iops-read=10\n[a]\n"
                                  "iops-read-max=5\n[b]\n", "b",
                                  thr_parse_size_simple, &out,
                                  err, sizeof err) == -1);
    CHECK (strstr (err, "section [a]: iops-read-max (5) cannot be lower")
           != NULL);
    /* So does a group whose sections are each fine but not together. */
    CHECK (thr_limits_parse_text (&lim, "bps-total=10M\n[db1]\n"
                                  "bps-total-max=20M\n[db1]\n"
                                  "bps-total=30M\n", NULL,
                                  thr_parse_size_simple, &out,
                                  err, sizeof err) == -1);
    CHECK (strstr (err, "section [db1]: bps-total-max") != NULL);
    CHECK (thr_limits_parse_text (&lim, "[a\nbps-total=1\n", NULL,
                                  thr_parse_size_simple, &out,
                                  err, sizeof err) == -1);
    CHECK (strstr (err, "line 1: expected [GROUP]") != NULL);
    CHECK (thr_limits_parse_text (&lim, "[]\n", NULL,
                                  thr_parse_size_simple, &out,
                                  err, sizeof err) == -1);
    CHECK (thr_limits_parse_text (&lim, "[x]\nbps-total=zz\n", NULL,
                                  thr_parse_size_simple, &out,
                                  err, sizeof err) == -1);
    CHECK (strstr (err, "line 2: bps-total") != NULL);
  }
}

/* One client that always has a request of `bytes' ready: admit it as soon
 * as the buckets allow, until virtual time `until'.  Returns the bytes
 * admitted; *now is advanced.
 */
static double
run_client (struct thr_buckets *b, const struct thr_limits *lim,
            enum thr_op op, uint64_t bytes, uint64_t *now, uint64_t until,
            uint64_t *nreq)
{
  double total = 0;
  uint64_t w;

  while (*now < until) {
    w = thr_buckets_wait (b, lim, op, true, *now);
    if (w) {
      *now += w;
      continue;
    }
    thr_buckets_account (b, lim, op, bytes, true);
    total += bytes;
    if (nreq)
      ++*nreq;
  }
  return total;
}

static void
test_sustained (void)
{
  struct thr_limits lim = limits ("bps-total=1M");
  struct thr_buckets b;
  uint64_t now = 5 * NS, w;
  double got;

  thr_buckets_init (&b, now);
  /* An idle bucket admits at once. */
  CHECK_EQ_U64 (thr_buckets_wait (&b, &lim, THR_OP_READ, true, now), 0);
  /* One 4 MiB request is admitted (conform, then account) and the next
   * waits for the excess over the capacity (1M/10) to leak: 3.9 s.
   */
  thr_buckets_account (&b, &lim, THR_OP_READ, 4 << 20, true);
  w = thr_buckets_wait (&b, &lim, THR_OP_WRITE, true, now);
  CHECK_NEAR ((double) w, 3.9 * NS, 1e-6);
  /* Half way, half the wait is left. */
  CHECK_NEAR ((double) thr_buckets_wait (&b, &lim, THR_OP_READ, true,
                                         now + w / 2), w / 2.0, 1e-6);
  /* After exactly the wait: admitted, never later than needed. */
  CHECK_EQ_U64 (thr_buckets_wait (&b, &lim, THR_OP_READ, true, now + w), 0);
  /* A time going backwards leaks nothing and does not crash. */
  CHECK (thr_buckets_wait (&b, &lim, THR_OP_READ, true, now) == 0);

  /* Over 100 s of 64 KiB requests: 1 MiB/s plus the initial capacity. */
  thr_buckets_init (&b, now);
  got = run_client (&b, &lim, THR_OP_READ, 65536, &now, now + 100 * NS, NULL);
  CHECK_NEAR (got, 100 * MiB + 0.1 * MiB, 0.002);

  /* Requests much larger than the bucket: the rate is still exact. */
  lim = limits ("bps-write=10M");
  thr_buckets_init (&b, now);
  got = run_client (&b, &lim, THR_OP_WRITE, 8 << 20, &now, now + 100 * NS,
                    NULL);
  CHECK_NEAR (got, 1000 * MiB, 0.01);
}

static void
test_burst (void)
{
  /* 1 MiB/s sustained, bursts at 10 MiB/s holding 20 MiB (max * 2 s). */
  struct thr_limits lim =
    limits ("bps-read=1M\nbps-read-max=10M\nbps-read-max-length=2");
  struct thr_buckets b;
  uint64_t now = 0;
  double first, total;

  thr_buckets_init (&b, now);
  /* During the first second the burst bucket limits to 10 MiB/s (plus
   * its own capacity, max/10, at once). */
  first = run_client (&b, &lim, THR_OP_READ, 65536, &now, NS, NULL);
  CHECK_NEAR (first, 11 * MiB, 0.01);
  /* The burst ends when the main bucket holds 20 MiB: after ≈ 20/9 s at
   * a net 9 MiB/s; then 1 MiB/s.  Over 100 s: 100 MiB + 20 MiB.
   */
  total = first + run_client (&b, &lim, THR_OP_READ, 65536, &now, 100 * NS,
                              NULL);
  CHECK_NEAR (total, 120 * MiB, 0.01);
  /* Writes are not limited by read limits. */
  CHECK_EQ_U64 (thr_buckets_wait (&b, &lim, THR_OP_WRITE, true, now), 0);
  /* After 20 s idle the main bucket is empty again: a new burst. */
  now += 20 * NS;
  first = run_client (&b, &lim, THR_OP_READ, 65536, &now, now + NS, NULL);
  CHECK_NEAR (first, 11 * MiB, 0.01);

  /* max without max-length: bucket of max * 1 s, no burst-rate bucket. */
  lim = limits ("iops-total=10\niops-total-max=100");
  thr_buckets_init (&b, now);
  uint64_t n = 0;
  run_client (&b, &lim, THR_OP_READ, 512, &now, now + 1, &n);
  CHECK (n >= 100 && n <= 101);     /* the whole bucket at once */
}

static void
test_iops_size (void)
{
  struct thr_limits lim = limits ("iops-total=100\niops-size=4k");
  struct thr_buckets b;
  uint64_t now = 0, n = 0;

  CHECK (thr_io_units (&lim, 512) == 1);
  CHECK (thr_io_units (&lim, 4096) == 1);
  CHECK (thr_io_units (&lim, 16384) == 4);
  CHECK (thr_io_units (&lim, 6144) == 1.5);

  /* 16 KiB requests count as 4 I/Os: 25 requests a second. */
  thr_buckets_init (&b, now);
  run_client (&b, &lim, THR_OP_READ, 16384, &now, 20 * NS, &n);
  CHECK_NEAR ((double) n, 20 * 25, 0.03);
  /* 2 KiB requests count as one. */
  n = 0;
  thr_buckets_init (&b, now);
  run_client (&b, &lim, THR_OP_WRITE, 2048, &now, now + 20 * NS, &n);
  CHECK_NEAR ((double) n, 20 * 100, 0.03);
  /* Without iops-size every request is one I/O. */
  lim.iops_size = 0;
  CHECK (thr_io_units (&lim, 1 << 20) == 1);
}

/* Readers and writers competing, each always ready: at every step admit
 * whichever direction can go first.
 */
static void
run_mixed (const struct thr_limits *lim, uint64_t secs,
           double *rd, double *wr, uint64_t rbytes, uint64_t wbytes)
{
  struct thr_buckets b;
  uint64_t now = 0, wr_wait, rd_wait;

  *rd = *wr = 0;
  thr_buckets_init (&b, now);
  while (now < secs * NS) {
    rd_wait = rbytes ? thr_buckets_wait (&b, lim, THR_OP_READ, true, now)
      : UINT64_MAX;
    wr_wait = wbytes ? thr_buckets_wait (&b, lim, THR_OP_WRITE, true, now)
      : UINT64_MAX;
    if (rd_wait == 0) {
      thr_buckets_account (&b, lim, THR_OP_READ, rbytes, true);
      *rd += rbytes;
    }
    if (wr_wait == 0) {
      thr_buckets_account (&b, lim, THR_OP_WRITE, wbytes, true);
      *wr += wbytes;
    }
    if (rd_wait && wr_wait)
      now += rd_wait < wr_wait ? rd_wait : wr_wait;
  }
}

static void
test_interplay (void)
{
  struct thr_limits lim;
  double rd, wr;

  /* Total caps the sum, read caps reads: reads 1, writes the other 1. */
  lim = limits ("bps-total=2M\nbps-read=1M\nbps-write=4M");
  run_mixed (&lim, 100, &rd, &wr, 65536, 65536);
  CHECK_NEAR (rd, 100 * MiB, 0.02);
  CHECK_NEAR (rd + wr, 200 * MiB, 0.02);

  /* Only a write limit: reads are free (they never wait, so run a few
   * seconds of writes and check the reads do not count against them).
   */
  lim = limits ("bps-write=1M");
  run_mixed (&lim, 10, &rd, &wr, 0, 65536);
  CHECK_NEAR (wr, 10 * MiB, 0.03);

  /* iops total with bps write: writes bounded by bytes, reads by I/Os. */
  lim = limits ("iops-total=100\nbps-write=64k");
  run_mixed (&lim, 100, &rd, &wr, 4096, 4096);
  CHECK_NEAR (wr, 100 * 65536, 0.03);                 /* 16 writes/s */
  CHECK_NEAR (rd / 4096 + wr / 4096, 100 * 100, 0.03); /* 100 I/Os/s */

  /* Zero and trim (count_bytes false) count one I/O, no bytes. */
  {
    struct thr_buckets b;
    uint64_t now = 0;
    int i;
    lim = limits ("bps-write=1M\niops-write=10");
    thr_buckets_init (&b, now);
    CHECK_EQ_U64 (thr_buckets_wait (&b, &lim, THR_OP_WRITE, false, now), 0);
    thr_buckets_account (&b, &lim, THR_OP_WRITE, 1ULL << 40, false);
    CHECK (b.level[THR_BPS_WRITE] == 0);
    CHECK (b.level[THR_IOPS_WRITE] == 1);
    /* Saturate the bytes bucket: zeroes still pass (one I/O each). */
    thr_buckets_account (&b, &lim, THR_OP_WRITE, 64 << 20, true);
    CHECK (thr_buckets_wait (&b, &lim, THR_OP_WRITE, true, now) > 60 * NS);
    for (i = 0; i < 5; ++i) {
      uint64_t w = thr_buckets_wait (&b, &lim, THR_OP_WRITE, false, now);
      CHECK (w <= NS / 10 + 1);
      now += w;
      thr_buckets_account (&b, &lim, THR_OP_WRITE, 1 << 30, false);
    }
  }
}

/* ---- Scheduler on a virtual clock ---- */

static uint64_t vnow;                   /* atomic */
static int fail_sleeps;                 /* atomic: sleep returns -1 */
static int polls;
static struct thr_group *poll_group;
static struct thr_limits poll_new_limits;

static uint64_t
v_now (void *opaque)
{
  (void) opaque;
  return __atomic_load_n (&vnow, __ATOMIC_SEQ_CST);
}

static int
v_sleep (void *opaque, uint64_t ns)
{
  (void) opaque;
  if (__atomic_load_n (&fail_sleeps, __ATOMIC_SEQ_CST)) {
    errno = ESHUTDOWN;
    return -1;
  }
  /* Also pass a little real time (1/100 of the virtual sleep, at most
   * 1 ms), so that the other threads get to queue up as they would while
   * a real request sleeps.
   */
  {
    uint64_t real = ns / 100;
    struct timespec ts = { 0, real > 1000000 ? 1000000 : (long) real };
    nanosleep (&ts, NULL);
  }
  __atomic_fetch_add (&vnow, ns, __ATOMIC_SEQ_CST);
  return 0;
}

static void
v_poll (void *opaque)
{
  (void) opaque;
  if (poll_group && ++polls == 3)
    thr_group_set_limits (poll_group, &poll_new_limits);
}

static const struct thr_clock vclock = {
  .now = v_now, .sleep = v_sleep, .poll = v_poll, .max_sleep_ns = 0,
};

static pthread_barrier_t start_barrier;

struct worker {
  bool barrier;
  struct thr_member *m;
  uint64_t until;
  uint64_t bytes;               /* admitted by this thread */
  int result;
};

static void *
worker_main (void *arg)
{
  struct worker *w = arg;
  if (w->barrier)
    pthread_barrier_wait (&start_barrier);
  while (v_now (NULL) < w->until) {
    if (thr_admit (w->m, THR_OP_READ, 65536, true) == -1) {
      w->result = errno;
      return NULL;
    }
    w->bytes += 65536;
  }
  return NULL;
}

static void
test_fairness (void)
{
  /* Four members with 1, 2, 4 and 8 requests in flight. */
  enum { NM = 4 };
  const int depth[NM] = { 1, 2, 4, 8 };
  struct thr_limits lim = limits ("bps-total=8M");
  struct thr_group *g;
  struct thr_member *m[NM];
  struct worker w[NM][8];
  pthread_t th[NM][8];
  double per[NM] = { 0 }, sum = 0;
  uint64_t start;
  struct thr_stats st;
  int i, j;

  vnow = 1000 * NS;
  g = thr_group_new ("fair", &lim, &vclock);
  CHECK (g != NULL);
  CHECK (strcmp (thr_group_name (g), "fair") == 0);
  start = v_now (NULL);
  CHECK (pthread_barrier_init (&start_barrier, NULL, 1 + 2 + 4 + 8) == 0);
  for (i = 0; i < NM; ++i) {
    m[i] = thr_member_new (g);
    CHECK (m[i] != NULL);
    for (j = 0; j < depth[i]; ++j) {
      w[i][j] = (struct worker) { .barrier = true, .m = m[i],
                                  .until = start + 30 * NS };
      CHECK (pthread_create (&th[i][j], NULL, worker_main, &w[i][j]) == 0);
    }
  }
  for (i = 0; i < NM; ++i) {
    for (j = 0; j < depth[i]; ++j) {
      CHECK (pthread_join (th[i][j], NULL) == 0);
      CHECK (w[i][j].result == 0);
      per[i] += w[i][j].bytes;
    }
    sum += per[i];
  }
  pthread_barrier_destroy (&start_barrier);
  for (i = 0; i < NM; ++i) {
    fprintf (stderr, "member %d (depth %d): %.1f%%\n",
             i, depth[i], 100 * per[i] / sum);
    CHECK (per[i] / sum >= 0.15 && per[i] / sum <= 0.35);
  }
  /* The group as a whole got its rate (virtual time is exact). */
  CHECK_NEAR (sum / ((v_now (NULL) - start) / (double) NS), 8 * MiB, 0.05);
  thr_group_get_stats (g, &st);
  CHECK_NEAR ((double) st.read_bytes, sum, 1e-9);
  CHECK_EQ_U64 (st.read_ops, (uint64_t) (sum / 65536));
  CHECK (st.delayed_ops > 0 && st.delay_ns > 0);
  CHECK_EQ_U64 (st.write_ops, 0);
  for (i = 0; i < NM; ++i)
    thr_member_free (m[i]);
  thr_group_free (g);
}

static void
test_change_and_abort (void)
{
  struct thr_limits lim = limits ("bps-total=1k"), none = { 0 };
  struct thr_group *g;
  struct thr_member *m;
  struct worker w[3];
  pthread_t th[3];
  uint64_t t0, r;
  int i;

  vnow = 0;
  g = thr_group_new ("change", &lim, &vclock);
  m = thr_member_new (g);
  CHECK (g && m);
  /* A 1 GiB request goes through (the bucket was empty) ... */
  CHECK (thr_admit (m, THR_OP_WRITE, 1 << 30, true) == 0);
  /* ... and the next would wait 12 days.  The poll callback lifts the
   * limit during the third sleep: the request then goes within one more
   * sleep slice (100 ms), not 12 days later.
   */
  poll_group = g;
  poll_new_limits = none;
  polls = 0;
  t0 = v_now (NULL);
  CHECK (thr_admit (m, THR_OP_WRITE, 4096, true) == 0);
  r = v_now (NULL) - t0;
  CHECK (polls == 3);
  CHECK (r <= 3 * 100000000ULL);
  poll_group = NULL;
  /* Unlimited now: the fast path, no time passes. */
  t0 = v_now (NULL);
  CHECK (thr_admit (m, THR_OP_READ, 1 << 30, true) == 0);
  CHECK (v_now (NULL) == t0);
  /* Same limits again: not a change. */
  CHECK (!thr_group_set_limits (g, &none));
  CHECK (thr_group_set_limits (g, &lim));

  /* Abandoned waits (shutdown): every waiter returns -1, none hangs, and
   * the turn passes from one to the next.
   */
  CHECK (thr_admit (m, THR_OP_READ, 1 << 20, true) == 0);
  __atomic_store_n (&fail_sleeps, 1, __ATOMIC_SEQ_CST);
  for (i = 0; i < 3; ++i) {
    w[i] = (struct worker) { .m = m, .until = UINT64_MAX };
    CHECK (pthread_create (&th[i], NULL, worker_main, &w[i]) == 0);
  }
  for (i = 0; i < 3; ++i) {
    CHECK (pthread_join (th[i], NULL) == 0);
    CHECK (w[i].result == ESHUTDOWN);
    CHECK (w[i].bytes == 0);
  }
  __atomic_store_n (&fail_sleeps, 0, __ATOMIC_SEQ_CST);
  {
    struct thr_stats st;
    thr_group_get_stats (g, &st);
    CHECK_EQ_U64 (st.aborted_ops, 3);
  }
  thr_member_free (m);
  thr_group_free (g);
}

/* thr_group_drained: true only once every bucket (burst ones too) has
 * leaked empty.
 */
static void
test_drained (void)
{
  struct thr_limits lim = limits ("iops-total=10\niops-total-max=100\n"
                                  "iops-total-max-length=2");
  struct thr_group *g;
  struct thr_member *m;

  vnow = 0;
  g = thr_group_new ("drain", &lim, &vclock);
  m = thr_member_new (g);
  CHECK (g && m);
  CHECK (thr_group_drained (g));                /* new: empty */
  for (int i = 0; i < 5; ++i)
    CHECK (thr_admit (m, THR_OP_READ, 4096, true) == 0);
  CHECK (!thr_group_drained (g));
  __atomic_fetch_add (&vnow, 400000000ULL, __ATOMIC_SEQ_CST);  /* 0.4 s */
  CHECK (!thr_group_drained (g));               /* 5 I/Os at 10/s: 0.5 s */
  __atomic_fetch_add (&vnow, 200000000ULL, __ATOMIC_SEQ_CST);
  CHECK (thr_group_drained (g));
  thr_member_free (m);
  thr_group_free (g);
}

int
main (void)
{
  test_parse ();
  test_sustained ();
  test_burst ();
  test_iops_size ();
  test_interplay ();
  test_fairness ();
  test_change_and_abort ();
  test_drained ();
  printf ("test_throttle: OK\n");
  return 0;
}
