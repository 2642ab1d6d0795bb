/* SPDX-License-Identifier: BSD-3-Clause */
/* One iSCSI session: one libiscsi context, logged in to one LUN.
 *
 * libiscsi contexts are not thread-safe, and a session is never shared:
 * the pool (pool.h) lends it to one request thread at a time, and that
 * thread queues its command and then drives the context itself (poll on
 * the socket, iscsi_service) until the command completes.  No other thread
 * is involved, so a request costs no thread hand-off: the kernel wakes the
 * request thread directly when the target answers.
 *
 * libiscsi reconnects by itself after a connection loss.  If the session
 * stays logged out for reconnect_timeout seconds, the request thread gives
 * up: it fails its command with EIO, marks the session dead (never used
 * again) and raises the pool's shared give-up flag, which makes every
 * other session of the pool fail its command at once too.  libiscsi still
 * holds pointers to an abandoned command's ticket (the callback's opaque
 * and the iovec), so the ticket lives in the session, which is freed only
 * after the context is destroyed.
 */
#ifndef ISCSI_SESSION_H
#define ISCSI_SESSION_H

#include <stdbool.h>
#include <stdint.h>
#include <time.h>

#include <iscsi/iscsi.h>
#include <iscsi/scsi-lowlevel.h>

/* How to log in: filled from the plugin parameters. */
struct session_config {
  const char *portal;           /* host[:port] */
  const char *target;           /* IQN */
  const char *initiator;        /* our IQN */
  const char *user, *password;  /* CHAP (NULL: none) */
  const char *target_user, *target_password; /* mutual CHAP */
  enum iscsi_header_digest header_digest;
  int timeout;                  /* seconds per command, 0 = none */
  int reconnect_retries;        /* -1 = forever */
  int reconnect_timeout;        /* seconds logged out before giving up, 0 = never */
  int retries;                  /* transient SCSI errors (UA, BUSY) */
  int log_level;                /* libiscsi debug level, 0 = off */
};

/* What the logical unit told us at open time. */
struct lun_info {
  uint32_t block_size;
  uint64_t num_blocks;
  bool readonly;                /* write-protected (MODE SENSE WP bit) */
  bool dpofua;                  /* honours FUA on WRITE (MODE SENSE) */
  bool no_wce;                  /* caching page: no volatile write cache */
  bool use_16;                  /* 16-byte CDBs (else 10-byte) */
  uint32_t max_xfer_blocks;     /* per READ/WRITE, always >= 1 */
  uint32_t opt_xfer_gran;       /* blocks, 0 = not reported */
  bool lbpme;                   /* thin provisioned: GET LBA STATUS works */
  bool lbprz;                   /* unmapped blocks read as zero */
  bool lbpu;                    /* UNMAP supported */
  bool lbpws;                   /* WRITE SAME(16) with UNMAP supported */
  uint32_t max_unmap;           /* blocks per UNMAP descriptor list */
  uint32_t max_unmap_bdc;       /* descriptors per UNMAP */
  uint32_t unmap_gran;          /* blocks, >= 1 */
  uint32_t unmap_gran_align;    /* blocks */
  uint64_t max_ws_len;          /* blocks per WRITE SAME, >= 1 */
  char vendor[9], product[17];
};

/* What libiscsi's callback refers to for the command in flight.  While
 * cmd is set, the request thread waits for it; once the session gives up
 * on the target, cmd is cleared and the callback (if libiscsi ever runs
 * it) frees the task.
 */
struct ticket {
  struct cmd *cmd;              /* NULL once abandoned */
  struct scsi_task *task;       /* while in flight, or abandoned */
  struct scsi_iovec iov;        /* libiscsi keeps a pointer to it */
};

struct session {
  struct iscsi_context *iscsi;
  int lun;
  const struct session_config *cfg;
  struct lun_info *info;        /* shared by the sessions of a pool */
  int *gave_up;                 /* shared: set once any session gives up */
  struct ticket ticket;         /* one command at a time (see above) */
  bool dead;                    /* gave up reconnecting */
  struct timespec lost_since;   /* logged out since (0: is up) */
  time_t last_scan;             /* last libiscsi timeout scan */
  struct session *next;         /* the pool's idle list */
  time_t idle_since;            /* the pool's keeper */
};

/* Operations the request threads submit. */
enum cmd_op {
  OP_READ, OP_WRITE, OP_SYNC, OP_UNMAP, OP_WRITESAME, OP_GET_LBA_STATUS,
};

struct cmd {
  enum cmd_op op;
  uint64_t lba;
  uint32_t nblocks;
  void *buf;                    /* READ/WRITE data, WRITE SAME one block */
  bool fua;                     /* WRITE */
  bool unmap;                   /* WRITE SAME */
  struct unmap_list *ul;        /* UNMAP */
  int nul;
  uint32_t alloc_len;           /* GET LBA STATUS */
  bool quiet;                   /* failure is handled: debug, not error */

  /* Results, valid after session_run. */
  int status;
  bool unsupported;             /* failed: target lacks command/field */
  struct scsi_task *task;       /* caller frees with scsi_free_scsi_task */

  /* Private. */
  bool done;
  bool abandoned;               /* the session gave up on the target */
  int breaks;                   /* connection broke while outstanding */
};

/* Create the context and log in.  With probe, also probe the LUN and
 * fill *info.  info and gave_up are shared with the other sessions of a
 * pool.  Returns NULL after reporting the failure: with nbdkit_error, or
 * with nbdkit_debug when quiet.
 */
extern struct session *session_connect (const struct session_config *cfg,
                                        int lun, struct lun_info *info,
                                        int *gave_up, bool probe, bool quiet);
extern void session_close (struct session *s);

/* Run one command to completion on this session, from the calling
 * thread, retrying transient conditions.  Returns 0 on success (cmd->task
 * holds the task, free it), or -1 with errno set and the error reported
 * (cmd->task freed).
 */
extern int session_run (struct session *s, struct cmd *c);

/* On an idle session: let libiscsi process whatever the target sent
 * (answer a NOP-In, notice a closed connection), without waiting.
 */
extern void session_tend (struct session *s);

/* List the LUNs of a target that are direct-access block devices. */
extern int session_list_luns (const struct session_config *cfg,
                              int **luns, int *n);

/* Map SCSI status + sense to an errno; for messages, describe it. */
extern int scsi_errno (int status, const struct scsi_sense *sense);
extern bool scsi_is_transient (int status, const struct scsi_sense *sense);
extern bool scsi_is_unsupported (int status, const struct scsi_sense *sense);
extern void scsi_describe (int status, const struct scsi_sense *sense,
                           char *buf, size_t len);

/* Debug flags (nbdkit -D iscsi.FLAG=1). */
extern int iscsi_debug_requests;

#endif
