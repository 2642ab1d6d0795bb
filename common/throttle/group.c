/* SPDX-License-Identifier: BSD-3-Clause */
/* Throttle groups: shared buckets and a fair, sleeping scheduler.
 *
 * Requests are sorted into four classes (read / write, counting bytes or
 * only I/Os), each with its own queue, so that a read waiting for the
 * read bucket never holds back a write (as QEMU keeps separate read and
 * write queues).  Within a class:
 *
 *  - when nobody waits and the buckets allow it, a request is admitted at
 *    once (the fast path: one lock, no sleep);
 *  - otherwise it joins its member's queue.  Members with waiting requests
 *    form a ring; only the head request of the member at the ring's cursor
 *    ("the head") is active: it sleeps with the clock's sleep function
 *    (no lock held, at most max_sleep_ns at a time) until the buckets
 *    admit it.  Every other waiting request blocks on its own condition
 *    variable.  After an admission the cursor moves to the next member of
 *    the ring and its head request is signalled: members take turns, so
 *    no connection starves, whatever its queue depth.
 */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "throttle/throttle.h"

#define NR_CLASSES 4
#define DEFAULT_MAX_SLEEP_NS 100000000ULL  /* 100 ms */
/* The waits of a connection that went away end one at a time, this far
 * apart: nbdkit 1.32 aborts (raw_send_socket: Assertion 'sock >= 0')
 * when several error replies race with its closing of the socket; with
 * them spaced, every one after the first finds the socket closed.
 */
#define ABORT_SPACING_NS 100000000L        /* 100 ms */

struct waiter {
  pthread_cond_t cond;
  struct waiter *next;
};

struct queue {
  struct waiter *head, *tail;
  struct thr_member *rr_next, *rr_prev;   /* ring links while active */
  bool active;
};

struct thr_member {
  struct thr_group *g;
  struct queue q[NR_CLASSES];
  int abort_errno;                      /* a sleep failed: going away */
};

struct thr_group {
  pthread_mutex_t lock;
  char *name;
  struct thr_limits lim;
  bool limited;                         /* thr_limits_any (&lim), atomic */
  struct thr_buckets b;
  struct thr_clock clock;
  struct thr_member *cur[NR_CLASSES];   /* ring cursors */
  size_t nmembers;
  bool count_unlimited;
  struct thr_stats st;                  /* atomic counters */
};

static int
class_of (enum thr_op op, bool count_bytes)
{
  return (op == THR_OP_WRITE ? 2 : 0) + (count_bytes ? 0 : 1);
}

struct thr_group *
thr_group_new (const char *name, const struct thr_limits *lim,
               const struct thr_clock *clock)
{
  struct thr_group *g = calloc (1, sizeof *g);

  if (g == NULL)
    return NULL;
  g->name = strdup (name);
  if (g->name == NULL) {
    free (g);
    return NULL;
  }
  pthread_mutex_init (&g->lock, NULL);
  g->lim = *lim;
  g->limited = thr_limits_any (lim);
  g->clock = *clock;
  if (g->clock.max_sleep_ns == 0)
    g->clock.max_sleep_ns = DEFAULT_MAX_SLEEP_NS;
  thr_buckets_init (&g->b, g->clock.now (g->clock.opaque));
  return g;
}

void
thr_group_free (struct thr_group *g)
{
  if (g == NULL)
    return;
  pthread_mutex_destroy (&g->lock);
  free (g->name);
  free (g);
}

const char *
thr_group_name (const struct thr_group *g)
{
  return g->name;
}

bool
thr_group_set_limits (struct thr_group *g, const struct thr_limits *lim)
{
  bool changed;

  pthread_mutex_lock (&g->lock);
  changed = !thr_limits_equal (&g->lim, lim);
  if (changed) {
    g->lim = *lim;
    thr_buckets_init (&g->b, g->clock.now (g->clock.opaque));
    __atomic_store_n (&g->limited, thr_limits_any (lim), __ATOMIC_RELEASE);
  }
  pthread_mutex_unlock (&g->lock);
  /* A sleeping head notices after its current sleep (max_sleep_ns). */
  return changed;
}

bool
thr_group_drained (struct thr_group *g)
{
  bool drained = true;

  pthread_mutex_lock (&g->lock);
  thr_buckets_leak (&g->b, &g->lim, g->clock.now (g->clock.opaque));
  for (int k = 0; k < THR_NR_KINDS; ++k)
    if (g->b.level[k] > 0 || g->b.burst_level[k] > 0)
      drained = false;
  pthread_mutex_unlock (&g->lock);
  return drained;
}

void
thr_group_get_limits (struct thr_group *g, struct thr_limits *lim)
{
  pthread_mutex_lock (&g->lock);
  *lim = g->lim;
  pthread_mutex_unlock (&g->lock);
}

#define LOAD(f) __atomic_load_n (&g->st.f, __ATOMIC_RELAXED)
#define ADD(f, v) __atomic_fetch_add (&g->st.f, (v), __ATOMIC_RELAXED)

void
thr_group_get_stats (struct thr_group *g, struct thr_stats *st)
{
  st->read_ops = LOAD (read_ops);
  st->write_ops = LOAD (write_ops);
  st->read_bytes = LOAD (read_bytes);
  st->write_bytes = LOAD (write_bytes);
  st->delayed_ops = LOAD (delayed_ops);
  st->delayed_bytes = LOAD (delayed_bytes);
  st->delay_ns = LOAD (delay_ns);
  st->aborted_ops = LOAD (aborted_ops);
}

void
thr_group_count_unlimited (struct thr_group *g, bool on)
{
  g->count_unlimited = on;
}

static void
count_admitted (struct thr_group *g, enum thr_op op, uint64_t bytes)
{
  if (op == THR_OP_READ) {
    ADD (read_ops, 1);
    ADD (read_bytes, bytes);
  }
  else {
    ADD (write_ops, 1);
    ADD (write_bytes, bytes);
  }
}

struct thr_member *
thr_member_new (struct thr_group *g)
{
  struct thr_member *m = calloc (1, sizeof *m);

  if (m == NULL)
    return NULL;
  m->g = g;
  pthread_mutex_lock (&g->lock);
  g->nmembers++;
  pthread_mutex_unlock (&g->lock);
  return m;
}

void
thr_member_free (struct thr_member *m)
{
  struct thr_group *g;

  if (m == NULL)
    return;
  g = m->g;
  pthread_mutex_lock (&g->lock);
  g->nmembers--;
  pthread_mutex_unlock (&g->lock);
  free (m);
}

/* Ring of members with waiting requests of class c.  New members join just
 * before the cursor, i.e. they get their turn after every member already
 * waiting.
 */
static void
ring_insert (struct thr_group *g, int c, struct thr_member *m)
{
  struct thr_member *cur = g->cur[c];

  if (cur == NULL) {
    m->q[c].rr_next = m->q[c].rr_prev = m;
    g->cur[c] = m;
  }
  else {
    m->q[c].rr_next = cur;
    m->q[c].rr_prev = cur->q[c].rr_prev;
    cur->q[c].rr_prev->q[c].rr_next = m;
    cur->q[c].rr_prev = m;
  }
  m->q[c].active = true;
}

static void
ring_remove (struct thr_group *g, int c, struct thr_member *m)
{
  if (m->q[c].rr_next == m)
    g->cur[c] = NULL;
  else {
    m->q[c].rr_prev->q[c].rr_next = m->q[c].rr_next;
    m->q[c].rr_next->q[c].rr_prev = m->q[c].rr_prev;
    if (g->cur[c] == m)
      g->cur[c] = m->q[c].rr_next;
  }
  m->q[c].rr_next = m->q[c].rr_prev = NULL;
  m->q[c].active = false;
}

int
thr_admit (struct thr_member *m, enum thr_op op, uint64_t bytes,
           bool count_bytes)
{
  struct thr_group *g = m->g;
  const int c = class_of (op, count_bytes);
  struct queue *q = &m->q[c];
  struct waiter w;
  uint64_t now, t0, wait;
  int r = 0, saved_errno = 0;

  if (!__atomic_load_n (&g->limited, __ATOMIC_ACQUIRE)) {
    if (g->count_unlimited)
      count_admitted (g, op, bytes);
    return 0;
  }

  pthread_mutex_lock (&g->lock);
  if (m->abort_errno) {
    ADD (aborted_ops, 1);
    pthread_mutex_unlock (&g->lock);
    errno = m->abort_errno;
    return -1;
  }
  t0 = now = g->clock.now (g->clock.opaque);
  if (g->cur[c] == NULL &&
      thr_buckets_wait (&g->b, &g->lim, op, count_bytes, now) == 0) {
    thr_buckets_account (&g->b, &g->lim, op, bytes, count_bytes);
    pthread_mutex_unlock (&g->lock);
    count_admitted (g, op, bytes);
    return 0;
  }

  /* Queue up behind the member's other waiting requests of this class. */
  pthread_cond_init (&w.cond, NULL);
  w.next = NULL;
  if (q->tail)
    q->tail->next = &w;
  else
    q->head = &w;
  q->tail = &w;
  if (!q->active)
    ring_insert (g, c, m);

  for (;;) {
    while (!m->abort_errno && (g->cur[c] != m || q->head != &w))
      pthread_cond_wait (&w.cond, &g->lock);
    if (m->abort_errno) {               /* another request's sleep failed */
      const struct timespec spacing = { 0, ABORT_SPACING_NS };
      pthread_mutex_unlock (&g->lock);
      nanosleep (&spacing, NULL);
      pthread_mutex_lock (&g->lock);
      r = -1;
      saved_errno = m->abort_errno;
      break;
    }

    /* We are the head of this class. */
    if (!g->limited)
      break;
    now = g->clock.now (g->clock.opaque);
    wait = thr_buckets_wait (&g->b, &g->lim, op, count_bytes, now);
    if (wait == 0)
      break;
    if (wait > g->clock.max_sleep_ns)
      wait = g->clock.max_sleep_ns;
    pthread_mutex_unlock (&g->lock);
    r = g->clock.sleep (g->clock.opaque, wait);
    saved_errno = errno;
    if (g->clock.poll)
      g->clock.poll (g->clock.opaque);
    pthread_mutex_lock (&g->lock);
    if (r == -1) {
      /* The connection is going away (or the server): the requests of
       * it waiting behind this one leave too, not when their turns come
       * (each one, leaving, wakes the next: see ABORT_SPACING_NS).
       */
      m->abort_errno = saved_errno ? saved_errno : ESHUTDOWN;
      break;
    }
  }

  if (r == 0) {
    if (g->limited)
      thr_buckets_account (&g->b, &g->lim, op, bytes, count_bytes);
    now = g->clock.now (g->clock.opaque);
    ADD (delayed_ops, 1);
    ADD (delayed_bytes, bytes);
    ADD (delay_ns, now > t0 ? now - t0 : 0);
    count_admitted (g, op, bytes);
  }
  else
    ADD (aborted_ops, 1);

  /* Leave the queue (from its middle if aborted), and pass the turn to
   * the next member if it was ours.
   */
  bool had_turn = g->cur[c] == m && q->head == &w;
  struct waiter **pp = &q->head, *prev = NULL;
  while (*pp != &w) {
    prev = *pp;
    pp = &(*pp)->next;
  }
  *pp = w.next;
  if (q->tail == &w)
    q->tail = prev;
  if (q->head == NULL)
    ring_remove (g, c, m);
  else if (had_turn)
    g->cur[c] = q->rr_next;
  if (g->cur[c])
    pthread_cond_signal (&g->cur[c]->q[c].head->cond);
  if (m->abort_errno)
    for (int k = 0; k < NR_CLASSES; k++)
      if (m->q[k].head) {
        pthread_cond_signal (&m->q[k].head->cond);
        break;
      }
  pthread_mutex_unlock (&g->lock);
  pthread_cond_destroy (&w.cond);

  if (r == -1)
    errno = saved_errno;
  return r;
}
