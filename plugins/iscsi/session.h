/* One iSCSI session (one libiscsi context) driven by its own service
 * thread.
 *
 * libiscsi contexts are not thread-safe.  Every call on the context is
 * made either by the service thread or by another thread holding
 * session->lock.  Request threads build a task under the lock (which only
 * queues PDUs), wake the service thread through an eventfd and sleep on a
 * per-command condition variable until the completion callback, which the
 * service thread runs from iscsi_service() with the lock held, wakes them.
 * Many commands from many threads are therefore in flight on one session
 * at the same time.
 *
 * libiscsi reconnects by itself after a connection loss.  If the session
 * stays logged out for reconnect_timeout seconds, the service thread gives
 * up: it fails every command in flight with EIO, never touches the
 * context again, and the session fails every later command at once.
 * libiscsi still holds pointers to the abandoned commands' tickets (the
 * callback's opaque and the iovec), so tickets belong to the session and
 * are freed only after the context is destroyed.
 */
#ifndef ISCSI_SESSION_H
#define ISCSI_SESSION_H

#include <pthread.h>
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

struct session {
  struct iscsi_context *iscsi;
  int lun;
  const struct session_config *cfg;
  pthread_mutex_t lock;         /* protects iscsi and every struct cmd */
  pthread_t thread;
  bool thread_running;
  bool stop;                    /* under lock */
  int wakefd;                   /* eventfd */
  struct lun_info info;
  struct ticket *tickets;       /* under lock: commands libiscsi knows of */
  bool dead;                    /* under lock: gave up reconnecting */
  struct timespec lost_since;   /* service thread: logged out since (0: is up) */
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
  pthread_cond_t cond;
  bool done;
  bool abandoned;               /* the session gave up on the target */
};

/* Create the context, log in, probe the LUN.  Returns NULL after
 * nbdkit_error().  Does not start the service thread.
 */
extern struct session *session_connect (const struct session_config *cfg,
                                        int lun, bool probe);
extern int session_start (struct session *s);
extern void session_close (struct session *s);

/* Run one command to completion, retrying transient conditions.  Returns
 * 0 on success (cmd->task holds the task, free it), or -1 with errno set
 * and the error reported (cmd->task freed).
 */
extern int session_run (struct session *s, struct cmd *c);

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
