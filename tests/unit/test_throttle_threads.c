/* SPDX-License-Identifier: BSD-3-Clause */
/* The throttle group's shared buckets driven from many threads at once,
 * as the throttle filter's connections do under nbdkit's PARALLEL model:
 * members joining and leaving, requests admitted on several members
 * concurrently, limits changed and statistics read meanwhile, unlimited
 * counting switched on and off.  Real clock, limits high enough that a
 * run takes a fraction of a second unloaded.  The statistics must add up
 * to exactly what the threads had admitted.  Under -DSANITIZE=thread this
 * is the race detector's test of the group scheduler.
 */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "throttle/throttle.h"
#include "check.h"
#include "stress.h"

#define NTH 6

static uint64_t
clk_now (void *opaque)
{
  (void) opaque;
  struct timespec ts;
  clock_gettime (CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1000000000ull + ts.tv_nsec;
}

static int
clk_sleep (void *opaque, uint64_t ns)
{
  (void) opaque;
  struct timespec ts = { ns / 1000000000ull, ns % 1000000000ull };
  nanosleep (&ts, NULL);
  return 0;
}

static struct thr_group *g;
static int stop;

struct worker {
  unsigned seed, id;
  uint64_t rops, wops, rbytes, wbytes;
  pthread_t th;
};

static void *
worker (void *arg)
{
  struct worker *w = arg;
  struct thr_member *m = thr_member_new (g);
  CHECK (m);
  for (unsigned i = 0; i < stress_ops (400); i++) {
    if (i % 100 == 99) {        /* a connection leaves, another joins */
      thr_member_free (m);
      CHECK ((m = thr_member_new (g)));
    }
    unsigned r = stress_rand (&w->seed);
    uint64_t bytes = 512 * (1 + r % 128);
    bool write = r & 0x100, count = (r & 0x600) != 0;
    CHECK (thr_admit (m, write ? THR_OP_WRITE : THR_OP_READ, bytes, count)
           == 0);
    /* The statistics count every admitted request's length, also of
     * those that count as one I/O only in the buckets (zero, trim). */
    if (write)
      w->wops++, w->wbytes += bytes;
    else
      w->rops++, w->rbytes += bytes;
  }
  thr_member_free (m);
  return NULL;
}

static void *
controller (void *arg)
{
  (void) arg;
  unsigned n = 0;
  while (!__atomic_load_n (&stop, __ATOMIC_ACQUIRE)) {
    struct thr_limits lim = { 0 };
    struct thr_stats st;
    /* Fast enough to finish quickly, slow enough that requests wait. */
    lim.l[THR_BPS_TOTAL].avg = (n % 2 ? 64 : 96) << 20;
    lim.l[THR_IOPS_TOTAL].avg = n % 2 ? 20000 : 30000;
    lim.l[THR_IOPS_WRITE].avg = 15000;
    lim.iops_size = n % 3 ? 0 : 4096;
    thr_group_set_limits (g, &lim);
    thr_group_get_limits (g, &lim);
    thr_group_get_stats (g, &st);
    struct timespec ts = { 0, 3000000 };
    nanosleep (&ts, NULL);
    n++;
  }
  printf ("%u limit changes\n", n);
  return NULL;
}

int
main (void)
{
  struct thr_limits lim = { 0 };
  lim.l[THR_BPS_TOTAL].avg = 64 << 20;
  struct thr_clock clock = { .now = clk_now, .sleep = clk_sleep,
                             .max_sleep_ns = 2000000 };
  CHECK ((g = thr_group_new ("stress", &lim, &clock)));
  thr_group_count_unlimited (g, true);

  struct worker w[NTH];
  pthread_t ctl;
  CHECK (pthread_create (&ctl, NULL, controller, NULL) == 0);
  for (unsigned i = 0; i < NTH; i++) {
    w[i] = (struct worker) { .seed = 77 + i, .id = i };
    CHECK (pthread_create (&w[i].th, NULL, worker, &w[i]) == 0);
  }
  struct thr_stats want = { 0 };
  for (unsigned i = 0; i < NTH; i++) {
    CHECK (pthread_join (w[i].th, NULL) == 0);
    want.read_ops += w[i].rops, want.write_ops += w[i].wops;
    want.read_bytes += w[i].rbytes, want.write_bytes += w[i].wbytes;
  }
  __atomic_store_n (&stop, 1, __ATOMIC_RELEASE);
  CHECK (pthread_join (ctl, NULL) == 0);

  struct thr_stats st;
  thr_group_get_stats (g, &st);
  printf ("admitted %llu reads, %llu writes; %llu delayed\n",
          (unsigned long long) st.read_ops, (unsigned long long) st.write_ops,
          (unsigned long long) st.delayed_ops);
  CHECK_EQ_U64 (st.read_ops, want.read_ops);
  CHECK_EQ_U64 (st.write_ops, want.write_ops);
  CHECK_EQ_U64 (st.read_bytes, want.read_bytes);
  CHECK_EQ_U64 (st.write_bytes, want.write_bytes);
  CHECK_EQ_U64 (st.aborted_ops, 0);
  CHECK (st.delayed_ops > 0);
  thr_group_free (g);
  return 0;
}
