/* SPDX-License-Identifier: BSD-3-Clause */
/* The iSCSI sessions of one NBD connection: see pool.h. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <nbdkit-plugin.h>

#include "pool.h"

/* After a failed login, how long to make do with the sessions we have. */
#define NO_GROW_SECONDS 10

/* Once a second, tend the sessions that have been idle since before the
 * previous tick.  They are taken off the idle list while being tended, so
 * a request never shares a context with the keeper.
 */
static void *
keeper (void *vp)
{
  struct pool *p = vp;

  pthread_mutex_lock (&p->lock);
  while (!p->stopping) {
    struct timespec deadline;
    struct session *tend = NULL, **pp;
    time_t now;

    clock_gettime (CLOCK_MONOTONIC, &deadline);
    deadline.tv_sec += 1;
    pthread_cond_timedwait (&p->keeper_wake, &p->lock, &deadline);
    if (p->stopping)
      break;

    now = time (NULL);
    for (pp = &p->idle; *pp != NULL; ) {
      struct session *s = *pp;
      if (s->idle_since < now) {
        *pp = s->next;
        s->next = tend;
        tend = s;
      }
      else
        pp = &s->next;
    }
    if (tend == NULL)
      continue;

    pthread_mutex_unlock (&p->lock);
    for (struct session *s = tend; s != NULL; s = s->next)
      session_tend (s);
    pthread_mutex_lock (&p->lock);

    /* Back at the end of the idle list: busy sessions stay at the top. */
    pp = &p->idle;
    while (*pp != NULL)
      pp = &(*pp)->next;
    *pp = tend;
    pthread_cond_broadcast (&p->returned);
  }
  pthread_mutex_unlock (&p->lock);
  return NULL;
}

struct pool *
pool_open (const struct session_config *cfg, int lun, unsigned max_sessions)
{
  struct pool *p;
  int err;

  p = calloc (1, sizeof *p);
  if (p == NULL) {
    nbdkit_error ("calloc: %m");
    return NULL;
  }
  p->cfg = cfg;
  p->lun = lun;
  p->max_sessions = max_sessions > 0 ? max_sessions : 1;
  pthread_mutex_init (&p->lock, NULL);
  pthread_cond_init (&p->returned, NULL);
  {
    pthread_condattr_t attr;
    pthread_condattr_init (&attr);
    pthread_condattr_setclock (&attr, CLOCK_MONOTONIC);
    pthread_cond_init (&p->keeper_wake, &attr);
    pthread_condattr_destroy (&attr);
  }

  p->idle = session_connect (cfg, lun, &p->info, &p->gave_up, true, false);
  if (p->idle == NULL) {
    pool_close (p);
    return NULL;
  }
  p->idle->idle_since = time (NULL);
  p->nsessions = 1;

  err = pthread_create (&p->keeper, NULL, keeper, p);
  if (err != 0) {
    nbdkit_error ("iscsi: cannot start the session keeper thread: %s",
                  strerror (err));
    pool_close (p);
    return NULL;
  }
  p->keeper_running = true;
  return p;
}

void
pool_close (struct pool *p)
{
  if (p == NULL)
    return;
  if (p->keeper_running) {
    pthread_mutex_lock (&p->lock);
    p->stopping = true;
    pthread_cond_signal (&p->keeper_wake);
    pthread_mutex_unlock (&p->lock);
    pthread_join (p->keeper, NULL);
  }
  while (p->idle) {
    struct session *s = p->idle;
    p->idle = s->next;
    session_close (s);
  }
  pthread_cond_destroy (&p->returned);
  pthread_cond_destroy (&p->keeper_wake);
  pthread_mutex_destroy (&p->lock);
  free (p);
}

/* Borrow an idle session, or log in a new one, or wait.  NULL (after
 * nbdkit_error) when the pool has given up on the target, or has no
 * session left and cannot log one in.
 */
static struct session *
borrow (struct pool *p)
{
  struct session *s;

  pthread_mutex_lock (&p->lock);
  for (;;) {
    if (__atomic_load_n (&p->gave_up, __ATOMIC_RELAXED)) {
      pthread_mutex_unlock (&p->lock);
      /* Said once at error level when the pool gave up (abandon() in
       * session.c); a guest retrying would otherwise flood the log with
       * one error per request for as long as the connection stays.
       */
      nbdkit_debug ("iscsi: LUN %d: the target is unreachable "
                    "(gave up reconnecting): EIO", p->lun);
      return NULL;
    }
    if (p->idle) {
      s = p->idle;
      p->idle = s->next;
      pthread_mutex_unlock (&p->lock);
      return s;
    }
    /* With no session at all nobody would give one back: log in now. */
    if (p->nsessions == 0 ||
        (p->nsessions < p->max_sessions && time (NULL) >= p->no_grow_until)) {
      bool last = p->nsessions == 0;
      unsigned n = ++p->nsessions;

      pthread_mutex_unlock (&p->lock);
      /* Quiet unless it is the only one: then failing costs the request,
       * otherwise only parallelism.
       */
      s = session_connect (p->cfg, p->lun, &p->info, &p->gave_up,
                           false, !last);
      if (s != NULL) {
        nbdkit_debug ("iscsi: LUN %d: session %u logged in", p->lun, n);
        return s;
      }
      pthread_mutex_lock (&p->lock);
      p->nsessions--;
      p->no_grow_until = time (NULL) + NO_GROW_SECONDS;
      pthread_cond_broadcast (&p->returned);
      if (last) {
        pthread_mutex_unlock (&p->lock);
        return NULL;
      }
      nbdkit_debug ("iscsi: LUN %d: could not log in another session, "
                    "continuing with %u", p->lun, p->nsessions);
      continue;
    }
    pthread_cond_wait (&p->returned, &p->lock);
  }
}

static void
give_back (struct pool *p, struct session *s)
{
  if (s->dead) {
    /* Given up: on the target (then every later request fails anyway),
     * or on one command that kept breaking the connection.  Later
     * requests log in a fresh session.
     */
    session_close (s);
    pthread_mutex_lock (&p->lock);
    p->nsessions--;
    pthread_cond_broadcast (&p->returned);    /* all must look again */
    pthread_mutex_unlock (&p->lock);
    return;
  }
  s->idle_since = time (NULL);
  pthread_mutex_lock (&p->lock);
  s->next = p->idle;
  p->idle = s;
  pthread_cond_signal (&p->returned);
  pthread_mutex_unlock (&p->lock);
}

int
pool_run (struct pool *p, struct cmd *c)
{
  struct session *s;
  int r, err;

  s = borrow (p);
  if (s == NULL) {
    errno = EIO;
    return -1;
  }
  r = session_run (s, c);
  err = errno;
  give_back (p, s);
  errno = err;
  return r;
}
