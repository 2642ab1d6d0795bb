/* SPDX-License-Identifier: BSD-3-Clause */
/* The iSCSI sessions of one NBD connection.
 *
 * A session serves one command at a time, driven by the request thread
 * that borrowed it (session.h).  So that a connection still has many
 * commands in flight, it owns a small pool of sessions to the same LUN:
 * a request borrows an idle session, or logs in a new one while there are
 * fewer than max_sessions, or waits for one to come back.  The idle list
 * is last-in first-out, so a connection with little parallelism keeps
 * using the same few sessions.
 *
 * Nobody drives an idle session's context, yet the target may talk on it:
 * a NOP-In ping that needs an answer (Linux LIO sends one every 15 s and
 * drops the connection when it goes unanswered), or a closed connection.
 * So each pool has a keeper thread that, once a second, borrows the
 * sessions that have been idle since the last tick and lets libiscsi
 * process whatever arrived on them.
 *
 * SCSI makes this safe: the volatile cache that SYNCHRONIZE CACHE flushes
 * belongs to the logical unit, not to the session, and NBD imposes no
 * order between requests in flight.
 */
#ifndef ISCSI_POOL_H
#define ISCSI_POOL_H

#include <pthread.h>
#include <stdbool.h>
#include <time.h>

#include "session.h"

struct pool {
  const struct session_config *cfg;
  int lun;
  struct lun_info info;         /* probed by the first session, shared */
  int gave_up;                  /* atomic: a session gave up on the target */

  pthread_mutex_t lock;         /* protects the fields below */
  pthread_cond_t returned;      /* a session went back to the idle list */
  struct session *idle;         /* LIFO */
  unsigned nsessions;           /* idle or lent out */
  unsigned max_sessions;
  time_t no_grow_until;         /* a login failed: no new sessions before */

  pthread_t keeper;
  bool keeper_running;
  bool stopping;                /* tells the keeper to exit */
  pthread_cond_t keeper_wake;   /* CLOCK_MONOTONIC */
};

/* Log in the first session and probe the LUN.  Returns NULL after
 * nbdkit_error().
 */
extern struct pool *pool_open (const struct session_config *cfg, int lun,
                               unsigned max_sessions);
/* Close every session.  No command may be running. */
extern void pool_close (struct pool *p);

/* Run one command on a borrowed session (see session_run). */
extern int pool_run (struct pool *p, struct cmd *c);

#endif
