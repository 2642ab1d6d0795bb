/* SPDX-License-Identifier: BSD-3-Clause */
/* iSCSI session: login, LUN discovery, command execution.  See
 * session.h for the threading rules.
 */
#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/random.h>

#include <nbdkit-plugin.h>

#include "session.h"

#define MIB (1024 * 1024)

/* When the target reports no maximum transfer length, requests are still
 * split at this size so a single command never pins huge buffers.
 */
#define DEFAULT_MAX_XFER (32 * MIB)

/* How often the connection may break while one command is outstanding
 * before that command fails (a target restart breaks it once).
 */
#define MAX_BREAKS 4

static void
libiscsi_log (int level, const char *message)
{
  nbdkit_debug ("libiscsi[%d]: %s", level, message);
}

static const char *
op_name (enum cmd_op op)
{
  switch (op) {
  case OP_READ: return "READ";
  case OP_WRITE: return "WRITE";
  case OP_SYNC: return "SYNCHRONIZE CACHE";
  case OP_UNMAP: return "UNMAP";
  case OP_WRITESAME: return "WRITE SAME";
  case OP_GET_LBA_STATUS: return "GET LBA STATUS";
  }
  return "?";
}

/* Create a context and log in.  lun < 0: login only (no TEST UNIT READY).
 * Failures are reported through report (nbdkit_error or nbdkit_debug).
 */
static struct iscsi_context *
login (const struct session_config *cfg, int lun,
       void (*report) (const char *fs, ...))
{
  struct iscsi_context *iscsi;
  uint32_t rnd[2];

  iscsi = iscsi_create_context (cfg->initiator);
  if (iscsi == NULL) {
    report ("iscsi: could not create libiscsi context "
                  "(initiator name \"%s\")", cfg->initiator);
    return NULL;
  }
  if (cfg->log_level > 0) {
    iscsi_set_log_level (iscsi, cfg->log_level);
    iscsi_set_log_fn (iscsi, libiscsi_log);
  }

  /* Every session needs its own ISID: two sessions from the same
   * initiator name with the same ISID make the target drop the older one
   * (session reinstatement).  libiscsi's default uses rand(), which gives
   * the same sequence in every process.
   */
  if (getrandom (rnd, sizeof rnd, 0) != sizeof rnd) {
    rnd[0] = (uint32_t) getpid () ^ (uint32_t) time (NULL);
    rnd[1] = (uint32_t) (uintptr_t) iscsi;
  }
  iscsi_set_isid_random (iscsi, rnd[0] & 0xffffff, rnd[1] & 0xffff);

  if (iscsi_set_targetname (iscsi, cfg->target) != 0 ||
      iscsi_set_session_type (iscsi, ISCSI_SESSION_NORMAL) != 0 ||
      iscsi_set_header_digest (iscsi, cfg->header_digest) != 0) {
    report ("iscsi: %s", iscsi_get_error (iscsi));
    goto err;
  }
  if (cfg->user &&
      iscsi_set_initiator_username_pwd (iscsi, cfg->user,
                                        cfg->password ? cfg->password : "")
      != 0) {
    report ("iscsi: CHAP: %s", iscsi_get_error (iscsi));
    goto err;
  }
  if (cfg->target_user &&
      iscsi_set_target_username_pwd (iscsi, cfg->target_user,
                                     cfg->target_password ?
                                     cfg->target_password : "") != 0) {
    report ("iscsi: mutual CHAP: %s", iscsi_get_error (iscsi));
    goto err;
  }
  iscsi_set_timeout (iscsi, cfg->timeout);
  iscsi_set_reconnect_max_retries (iscsi, cfg->reconnect_retries);
  /* After a reconnect, swallow the target's UNIT ATTENTION (power on,
   * reset) with TEST UNIT READY instead of failing a replayed command.
   */
  iscsi_set_no_ua_on_reconnect (iscsi, 1);

  if (lun >= 0) {
    if (iscsi_full_connect_sync (iscsi, cfg->portal, lun) != 0) {
      report ("iscsi: cannot log in to %s at %s, LUN %d: %s",
                    cfg->target, cfg->portal, lun, iscsi_get_error (iscsi));
      goto err;
    }
  }
  else {
    if (iscsi_connect_sync (iscsi, cfg->portal) != 0) {
      report ("iscsi: cannot connect to %s: %s",
                    cfg->portal, iscsi_get_error (iscsi));
      goto err;
    }
    if (iscsi_login_sync (iscsi) != 0) {
      report ("iscsi: cannot log in to %s at %s: %s",
                    cfg->target, cfg->portal, iscsi_get_error (iscsi));
      goto err;
    }
  }
  return iscsi;

 err:
  iscsi_destroy_context (iscsi);
  return NULL;
}

/* Report a failed synchronous probe command. */
static bool
sync_ok (struct iscsi_context *iscsi, struct scsi_task *task, const char *what,
         bool quiet_if_unsupported)
{
  char msg[256];

  if (task == NULL) {
    nbdkit_error ("iscsi: %s: %s", what, iscsi_get_error (iscsi));
    return false;
  }
  if (task->status == SCSI_STATUS_GOOD)
    return true;
  if (quiet_if_unsupported && scsi_is_unsupported (task->status, &task->sense))
    return false;
  scsi_describe (task->status, &task->sense, msg, sizeof msg);
  if (quiet_if_unsupported)
    nbdkit_debug ("iscsi: %s failed: %s", what, msg);
  else
    nbdkit_error ("iscsi: %s failed: %s", what, msg);
  return false;
}

static int
probe_lun (struct session *s)
{
  struct iscsi_context *iscsi = s->iscsi;
  struct lun_info *li = s->info;
  struct scsi_task *task;
  bool have_b0 = false, have_b2 = false;
  int i;

  memset (li, 0, sizeof *li);

  /* Standard INQUIRY: must be a block device. */
  task = iscsi_inquiry_sync (iscsi, s->lun, 0, 0, 255);
  if (!sync_ok (iscsi, task, "INQUIRY", false))
    goto err;
  {
    struct scsi_inquiry_standard *inq = scsi_datain_unmarshall (task);
    if (inq == NULL) {
      nbdkit_error ("iscsi: cannot parse INQUIRY data");
      goto err;
    }
    if (inq->qualifier != SCSI_INQUIRY_PERIPHERAL_QUALIFIER_CONNECTED ||
        inq->device_type != SCSI_INQUIRY_PERIPHERAL_DEVICE_TYPE_DIRECT_ACCESS) {
      nbdkit_error ("iscsi: LUN %d of %s is not a block device "
                    "(peripheral qualifier %d, device type %d)",
                    s->lun, s->cfg->target, (int) inq->qualifier,
                    (int) inq->device_type);
      goto err;
    }
    snprintf (li->vendor, sizeof li->vendor, "%s", inq->vendor_identification);
    snprintf (li->product, sizeof li->product, "%s",
              inq->product_identification);
  }
  scsi_free_scsi_task (task);

  /* READ CAPACITY(16), falling back to (10). */
  task = iscsi_readcapacity16_sync (iscsi, s->lun);
  if (sync_ok (iscsi, task, "READ CAPACITY(16)", true)) {
    struct scsi_readcapacity16 *rc = scsi_datain_unmarshall (task);
    if (rc == NULL) {
      nbdkit_error ("iscsi: cannot parse READ CAPACITY(16) data");
      goto err;
    }
    li->block_size = rc->block_length;
    li->num_blocks = rc->returned_lba + 1;
    li->lbpme = rc->lbpme;
    li->lbprz = rc->lbprz;
    li->use_16 = true;
    if (rc->returned_lba == UINT64_MAX) {
      nbdkit_error ("iscsi: READ CAPACITY(16) returned an invalid last LBA");
      goto err;
    }
  }
  else {
    if (task == NULL)
      goto err;
    scsi_free_scsi_task (task);
    task = iscsi_readcapacity10_sync (iscsi, s->lun, 0, 0);
    if (!sync_ok (iscsi, task, "READ CAPACITY(10)", false))
      goto err;
    struct scsi_readcapacity10 *rc = scsi_datain_unmarshall (task);
    if (rc == NULL) {
      nbdkit_error ("iscsi: cannot parse READ CAPACITY(10) data");
      goto err;
    }
    li->block_size = rc->block_size;
    li->num_blocks = (uint64_t) rc->lba + 1;
    li->use_16 = false;
  }
  scsi_free_scsi_task (task);
  if (li->block_size < 512 || li->block_size > 65536 ||
      (li->block_size & (li->block_size - 1)) != 0) {
    nbdkit_error ("iscsi: unsupported logical block size %" PRIu32
                  " (must be a power of 2 between 512 and 65536)",
                  li->block_size);
    return -1;
  }
  if (li->num_blocks > INT64_MAX / li->block_size) {
    nbdkit_error ("iscsi: LUN capacity of %" PRIu64 " blocks of %" PRIu32
                  " bytes is too large", li->num_blocks, li->block_size);
    return -1;
  }

  /* Which VPD pages are there? */
  task = iscsi_inquiry_sync (iscsi, s->lun, 1,
                             SCSI_INQUIRY_PAGECODE_SUPPORTED_VPD_PAGES, 255);
  if (sync_ok (iscsi, task, "INQUIRY (supported VPD pages)", true)) {
    struct scsi_inquiry_supported_pages *sp = scsi_datain_unmarshall (task);
    for (i = 0; sp && i < sp->num_pages; ++i) {
      if (sp->pages[i] == SCSI_INQUIRY_PAGECODE_BLOCK_LIMITS)
        have_b0 = true;
      if (sp->pages[i] == SCSI_INQUIRY_PAGECODE_LOGICAL_BLOCK_PROVISIONING)
        have_b2 = true;
    }
  }
  if (task)
    scsi_free_scsi_task (task);

  li->unmap_gran = 1;
  if (have_b0) {
    task = iscsi_inquiry_sync (iscsi, s->lun, 1,
                               SCSI_INQUIRY_PAGECODE_BLOCK_LIMITS, 255);
    if (sync_ok (iscsi, task, "INQUIRY (Block Limits VPD)", true)) {
      struct scsi_inquiry_block_limits *bl = scsi_datain_unmarshall (task);
      if (bl) {
        li->max_xfer_blocks = bl->max_xfer_len;
        li->opt_xfer_gran = bl->opt_gran;
        li->max_unmap = bl->max_unmap;
        li->max_unmap_bdc = bl->max_unmap_bdc;
        if (bl->opt_unmap_gran > 0)
          li->unmap_gran = bl->opt_unmap_gran;
        if (bl->ugavalid)
          li->unmap_gran_align = bl->unmap_gran_align;
        li->max_ws_len = bl->max_ws_len;
      }
    }
    if (task)
      scsi_free_scsi_task (task);
  }
  if (have_b2 && li->lbpme) {
    task = iscsi_inquiry_sync (iscsi, s->lun, 1,
                               SCSI_INQUIRY_PAGECODE_LOGICAL_BLOCK_PROVISIONING,
                               255);
    if (sync_ok (iscsi, task, "INQUIRY (Logical Block Provisioning VPD)",
                 true)) {
      struct scsi_inquiry_logical_block_provisioning *lbp =
        scsi_datain_unmarshall (task);
      if (lbp) {
        li->lbpu = lbp->lbpu;
        li->lbpws = lbp->lbpws;
        li->lbprz = li->lbprz || lbp->lbprz;
      }
    }
    if (task)
      scsi_free_scsi_task (task);
  }

  /* MODE SENSE(6), all pages: the device-specific parameter's WP and
   * DPOFUA bits, and the caching page's WCE bit (SBC-4 6.5).  A target
   * that does not tell keeps the safe defaults: FUA emulated by a
   * flush, and a volatile cache assumed.
   */
  task = iscsi_modesense6_sync (iscsi, s->lun, 1, SCSI_MODESENSE_PC_CURRENT,
                                SCSI_MODEPAGE_RETURN_ALL_PAGES, 0, 255);
  if (sync_ok (iscsi, task, "MODE SENSE(6)", true) &&
      task->datain.size >= 4) {
    const unsigned char *d = task->datain.data;
    size_t len = (size_t) task->datain.size;
    if (len > (size_t) d[0] + 1)
      len = (size_t) d[0] + 1;      /* the mode data length field */
    li->readonly = (d[2] & 0x80) != 0;
    li->dpofua = (d[2] & 0x10) != 0;
    for (size_t o = 4 + (size_t) d[3]; o + 2 < len; o += 2 + d[o + 1])
      if ((d[o] & 0x3f) == 0x08 && o + 2 < len) {
        li->no_wce = (d[o + 2] & 0x04) == 0;
        break;
      }
  }
  if (task)
    scsi_free_scsi_task (task);

  /* Limits, with sane defaults. */
  {
    uint64_t cap = DEFAULT_MAX_XFER / li->block_size;
    if (li->max_xfer_blocks == 0 || li->max_xfer_blocks > cap)
      li->max_xfer_blocks = cap;
    if (!li->use_16 && li->max_xfer_blocks > 0xffff)
      li->max_xfer_blocks = 0xffff;
    if (li->max_unmap == 0)
      li->max_unmap = 0;        /* 0 = UNMAP not supported */
    if (li->max_unmap_bdc == 0)
      li->max_unmap_bdc = 0;
    if (li->max_ws_len == 0 || li->max_ws_len > UINT32_MAX)
      li->max_ws_len = UINT32_MAX;
    if (li->max_ws_len > cap * 8)
      li->max_ws_len = cap * 8; /* keep each command reasonably short */
  }
  if (li->max_unmap == 0 || li->max_unmap_bdc == 0)
    li->lbpu = false;

  nbdkit_debug ("iscsi: LUN %d: \"%s\" \"%s\", %" PRIu64 " blocks of %"
                PRIu32 " bytes, %s CDBs, max transfer %" PRIu32
                " blocks, lbpme=%d lbprz=%d lbpu=%d lbpws=%d "
                "unmap granularity %" PRIu32 " max unmap %" PRIu32
                " write-protected=%d",
                s->lun, li->vendor, li->product, li->num_blocks,
                li->block_size, li->use_16 ? "16-byte" : "10-byte",
                li->max_xfer_blocks, li->lbpme, li->lbprz, li->lbpu,
                li->lbpws, li->unmap_gran, li->max_unmap, li->readonly);
  return 0;

 err:
  if (task)
    scsi_free_scsi_task (task);
  return -1;
}

struct session *
session_connect (const struct session_config *cfg, int lun,
                 struct lun_info *info, int *gave_up, bool probe, bool quiet)
{
  struct session *s;

  s = calloc (1, sizeof *s);
  if (s == NULL) {
    nbdkit_error ("calloc: %m");
    return NULL;
  }
  s->cfg = cfg;
  s->lun = lun;
  s->info = info;
  s->gave_up = gave_up;

  s->iscsi = login (cfg, lun, quiet ? nbdkit_debug : nbdkit_error);
  if (s->iscsi == NULL)
    goto err;
  if (probe && probe_lun (s) == -1)
    goto err;
  return s;

 err:
  session_close (s);
  return NULL;
}

void
session_close (struct session *s)
{
  if (s == NULL)
    return;
  if (s->iscsi) {
    /* A dead target must not delay shutdown: only log out politely when
     * the session is up.
     */
    if (!s->dead && iscsi_is_logged_in (s->iscsi)) {
      iscsi_set_timeout (s->iscsi, 2);
      iscsi_logout_sync (s->iscsi);
    }
    iscsi_destroy_context (s->iscsi);
  }
  /* The task of an abandoned command, unless destroying the context ran
   * its callback (which frees it).
   */
  if (s->ticket.task)
    scsi_free_scsi_task (s->ticket.task);
  free (s);
}

/* Has this session been logged out for longer than reconnect_timeout?
 * Starts the clock when it first sees the session logged out.
 */
static bool
lost_for_good (struct session *s)
{
  struct timespec now;

  if (s->cfg->reconnect_timeout <= 0)
    return false;
  if (iscsi_is_logged_in (s->iscsi)) {
    s->lost_since.tv_sec = 0;
    return false;
  }
  clock_gettime (CLOCK_MONOTONIC, &now);
  if (s->lost_since.tv_sec == 0) {
    s->lost_since = now;
    if (now.tv_sec == 0)        /* 0 means "up" */
      s->lost_since.tv_sec = 1;
    nbdkit_debug ("iscsi: LUN %d: session lost, reconnecting", s->lun);
    return false;
  }
  return now.tv_sec - s->lost_since.tv_sec >= s->cfg->reconnect_timeout;
}

/* Stop waiting for c: the session is given up (by this session, or by
 * another one of the pool).  The ticket stays with the session.
 */
static void
abandon (struct session *s, struct cmd *c, struct ticket *t, bool timed_out)
{
  s->dead = true;
  t->cmd = NULL;
  c->abandoned = true;
  c->done = true;
  if (timed_out &&
      __atomic_exchange_n (s->gave_up, 1, __ATOMIC_SEQ_CST) == 0)
    nbdkit_error ("iscsi: LUN %d: the target has been unreachable for %d s "
                  "(reconnect-timeout), giving up: the commands in flight "
                  "and all later requests on this connection fail with EIO",
                  s->lun, s->cfg->reconnect_timeout);
}

/* Completion callback, run from iscsi_service() in the waiting thread. */
static void
cmd_done (struct iscsi_context *iscsi, int status, void *command_data,
          void *opaque)
{
  struct ticket *t = opaque;
  struct cmd *c = t->cmd;

  (void) iscsi;
  (void) command_data;          /* may be NULL when cancelled */
  if (c == NULL) {              /* abandoned: nobody waits for it */
    scsi_free_scsi_task (t->task);
    t->task = NULL;
    return;
  }
  c->status = status;
  c->done = true;
}

/* Drive the context until c completes or the session is given up. */
static void
wait_for (struct session *s, struct cmd *c, struct ticket *t)
{
  struct iscsi_context *iscsi = s->iscsi;
  bool was_up;

  /* Send the command now rather than after a poll: when the session is up
   * the socket is almost always writable, and libiscsi keeps whatever the
   * socket does not take.
   */
  if (iscsi_is_logged_in (iscsi) && (iscsi_which_events (iscsi) & POLLOUT)) {
    if (iscsi_service (iscsi, POLLOUT) < 0)
      nbdkit_debug ("iscsi: LUN %d: iscsi_service: %s",
                    s->lun, iscsi_get_error (iscsi));
  }

  was_up = iscsi_is_logged_in (iscsi);
  while (!c->done) {
    struct pollfd pfd;
    int timeout_ms, r;
    time_t now;
    bool now_up;

    if (__atomic_load_n (s->gave_up, __ATOMIC_RELAXED)) {
      abandon (s, c, t, false);
      return;
    }
    if (lost_for_good (s)) {
      abandon (s, c, t, true);
      return;
    }

    pfd.fd = iscsi_get_fd (iscsi);
    pfd.events = iscsi_which_events (iscsi);
    pfd.revents = 0;
    /* which_events == 0: libiscsi is waiting before a reconnect attempt
     * and wants to be called again after about 100 ms.  Otherwise wake at
     * least once a second for libiscsi's timeout processing.
     */
    if (pfd.events == 0)
      pfd.fd = -1;
    timeout_ms = pfd.events ? 1000 : 100;
    r = poll (&pfd, 1, timeout_ms);
    if (r == -1 && errno != EINTR)
      nbdkit_debug ("iscsi: poll: %m");

    now = time (NULL);
    if (pfd.revents || pfd.events == 0 || now != s->last_scan) {
      s->last_scan = now;
      if (iscsi_service (iscsi, pfd.revents) < 0)
        nbdkit_debug ("iscsi: LUN %d: iscsi_service: %s",
                      s->lun, iscsi_get_error (iscsi));
    }

    /* After a broken connection libiscsi logs in again and sends the
     * command again.  A target that answers it with something libiscsi
     * cannot accept, or that drops the connection on it, would make
     * that go on forever: count the breaks.
     */
    now_up = iscsi_is_logged_in (iscsi);
    if (was_up && !now_up && !c->done && ++c->breaks >= MAX_BREAKS)
      abandon (s, c, t, false);
    was_up = now_up;
  }
}

void
session_tend (struct session *s)
{
  int i;

  if (s->dead)
    return;
  /* A few rounds: reading a NOP-In queues the NOP-Out that answers it. */
  for (i = 0; i < 4; ++i) {
    struct pollfd pfd;

    pfd.fd = iscsi_get_fd (s->iscsi);
    pfd.events = iscsi_which_events (s->iscsi);
    pfd.revents = 0;
    if (pfd.events == 0 || poll (&pfd, 1, 0) <= 0 || pfd.revents == 0)
      return;
    if (iscsi_service (s->iscsi, pfd.revents) < 0) {
      nbdkit_debug ("iscsi: LUN %d: idle session: %s",
                    s->lun, iscsi_get_error (s->iscsi));
      return;
    }
  }
}

/* Build and queue the task. */
static struct scsi_task *
submit (struct session *s, struct cmd *c, struct ticket *t)
{
  struct iscsi_context *iscsi = s->iscsi;
  const struct lun_info *li = s->info;
  uint32_t bs = li->block_size;
  uint32_t len = c->nblocks * bs;
  struct scsi_iovec *iov = &t->iov;
  bool use_16 = __atomic_load_n (&li->use_16, __ATOMIC_RELAXED);

  iov->iov_base = c->buf;
  iov->iov_len = len;

  switch (c->op) {
  case OP_READ:
    if (use_16)
      return iscsi_read16_iov_task (iscsi, s->lun, c->lba, len, bs,
                                    0, 0, 0, 0, 0, cmd_done, t, iov, 1);
    return iscsi_read10_iov_task (iscsi, s->lun, (uint32_t) c->lba, len, bs,
                                  0, 0, 0, 0, 0, cmd_done, t, iov, 1);
  case OP_WRITE:
    if (use_16)
      return iscsi_write16_iov_task (iscsi, s->lun, c->lba, NULL, len, bs,
                                     0, 0, c->fua, 0, 0, cmd_done, t,
                                     iov, 1);
    return iscsi_write10_iov_task (iscsi, s->lun, (uint32_t) c->lba, NULL,
                                   len, bs, 0, 0, c->fua, 0, 0, cmd_done, t,
                                   iov, 1);
  case OP_SYNC:
    /* LBA 0 and 0 blocks: the whole LUN, whatever its size; (10) is the
     * one every target has (SYNCHRONIZE CACHE(16) is optional).
     */
    return iscsi_synchronizecache10_task (iscsi, s->lun, 0, 0, 0, 0,
                                          cmd_done, t);
  case OP_UNMAP:
    return iscsi_unmap_task (iscsi, s->lun, 0, 0, c->ul, c->nul,
                             cmd_done, t);
  case OP_WRITESAME:
    iov->iov_len = bs;
    return iscsi_writesame16_iov_task (iscsi, s->lun, c->lba, NULL, bs,
                                       c->nblocks, 0, c->unmap, 0, 0,
                                       cmd_done, t, iov, 1);
  case OP_GET_LBA_STATUS:
    return iscsi_get_lba_status_task (iscsi, s->lun, c->lba, c->alloc_len,
                                      cmd_done, t);
  }
  return NULL;
}

/* A READ's data goes straight into the caller's buffer, which holds
 * whatever was in that memory before.  If the target sends less than
 * asked, the rest must not reach the client: residual counts catch an
 * honest short transfer, and the canary (random bytes at the end of the
 * buffer, put there before the command) one the target does not report.
 */
static unsigned char canary[16];
static pthread_once_t canary_once = PTHREAD_ONCE_INIT;

static void
canary_init (void)
{
  if (getrandom (canary, sizeof canary, 0) != sizeof canary) {
    /* Weaker, still unknown to the target. */
    uint64_t x[2] = { (uint64_t) getpid () ^ (uint64_t) time (NULL) << 20,
                      (uint64_t) (uintptr_t) &x ^ (uint64_t) clock () };
    memcpy (canary, x, sizeof canary);
  }
}

static size_t
transfer_len (const struct session *s, const struct cmd *c)
{
  return (size_t) c->nblocks * s->info->block_size;
}

static void
set_canary (const struct session *s, const struct cmd *c)
{
  size_t len = transfer_len (s, c);

  pthread_once (&canary_once, canary_init);
  memcpy ((char *) c->buf + len - sizeof canary, canary, sizeof canary);
}

static bool
transfer_ok (const struct session *s, const struct cmd *c,
             const struct scsi_task *task)
{
  if (c->op != OP_READ && c->op != OP_WRITE)
    return true;
  if (task->residual_status != SCSI_RESIDUAL_NO_RESIDUAL &&
      task->residual > 0) {
    nbdkit_error ("iscsi: %s at LBA %" PRIu64 ", %" PRIu32 " blocks: the "
                  "target transferred %zu bytes %s than the %zu asked for",
                  op_name (c->op), c->lba, c->nblocks, task->residual,
                  task->residual_status == SCSI_RESIDUAL_UNDERFLOW ?
                  "fewer" : "more", transfer_len (s, c));
    return false;
  }
  if (c->op == OP_READ &&
      memcmp ((const char *) c->buf + transfer_len (s, c) - sizeof canary,
              canary, sizeof canary) == 0) {
    nbdkit_error ("iscsi: READ at LBA %" PRIu64 ", %" PRIu32 " blocks: "
                  "the target reported success but did not send all the "
                  "data", c->lba, c->nblocks);
    return false;
  }
  return true;
}

/* A task management function in flight. */
struct tmf {
  bool done;
  int status;
  uint32_t response;
};

static void
tmf_done (struct iscsi_context *iscsi, int status, void *command_data,
          void *opaque)
{
  struct tmf *t = opaque;
  (void) iscsi;
  t->status = status;
  if (status == SCSI_STATUS_GOOD && command_data)
    t->response = *(uint32_t *) command_data;
  t->done = true;
}

/* Drive the context until T completes, for at most SECONDS. */
static bool
tmf_wait (struct session *s, struct tmf *t, int seconds)
{
  time_t end = time (NULL) + seconds;
  while (!t->done && time (NULL) < end && iscsi_is_logged_in (s->iscsi)) {
    struct pollfd pfd = {
      .fd = iscsi_get_fd (s->iscsi), .events = iscsi_which_events (s->iscsi),
    };
    if (poll (&pfd, 1, 200) == -1 && errno != EINTR)
      break;
    if (iscsi_service (s->iscsi, pfd.revents) < 0)
      break;
  }
  return t->done && t->status == SCSI_STATUS_GOOD &&
    (t->response == ISCSI_TMR_FUNC_COMPLETE ||
     t->response == ISCSI_TMR_TASK_DOES_NOT_EXIST);
}

/* A command that changes data timed out: the target may still hold it
 * and run it after the client was told it failed, maybe after the client
 * wrote the same blocks again.  Before reporting the failure, abort it
 * (ABORT TASK), or if the target answers but does not confirm that,
 * reset the LUN; if neither is confirmed, drop the session (the target
 * then ends the session's tasks) and let later requests log in anew.
 * A task management request still unanswered also drops the session:
 * destroying the context is what keeps its callback from running later
 * on this stack frame.
 */
static void
abort_timed_out (struct session *s, struct scsi_task *task)
{
  int seconds = s->cfg->timeout > 0 ? s->cfg->timeout : 10;
  struct tmf a = { 0 }, r = { 0 };

  if (iscsi_task_mgmt_abort_task_async (s->iscsi, task, tmf_done, &a) == 0) {
    if (tmf_wait (s, &a, seconds)) {
      nbdkit_debug ("iscsi: LUN %d: timed-out command aborted", s->lun);
      return;
    }
    if (!a.done)
      goto drop;
  }
  if (iscsi_task_mgmt_lun_reset_async (s->iscsi, s->lun, tmf_done, &r) == 0 &&
      tmf_wait (s, &r, seconds)) {
    nbdkit_error ("iscsi: LUN %d: a timed-out command could not be aborted; "
                  "the LUN was reset", s->lun);
    return;
  }

 drop:
  nbdkit_error ("iscsi: LUN %d: a timed-out command could be neither "
                "aborted nor ended by a LUN reset: dropping the session",
                s->lun);
  s->dead = true;
}

int
session_run (struct session *s, struct cmd *c)
{
  int attempt, err;
  char msg[256];

  c->breaks = 0;
  for (attempt = 0; ; ++attempt) {
    struct scsi_task *task;
    struct scsi_sense sense;
    struct ticket *t = &s->ticket;

    c->done = false;
    c->abandoned = false;
    c->unsupported = false;
    c->status = -1;
    c->task = NULL;

    if (s->dead || __atomic_load_n (s->gave_up, __ATOMIC_RELAXED)) {
      /* Once given up, every later request fails: logged at error level
       * once (abandon()), not once per request.
       */
      if (__atomic_load_n (s->gave_up, __ATOMIC_RELAXED))
        nbdkit_debug ("iscsi: %s: the target of LUN %d is unreachable "
                      "(gave up reconnecting): EIO", op_name (c->op), s->lun);
      else
        nbdkit_error ("iscsi: %s: the target of LUN %d is unreachable "
                      "(gave up reconnecting)", op_name (c->op), s->lun);
      errno = EIO;
      return -1;
    }
    t->cmd = c;
    if (c->op == OP_READ)
      set_canary (s, c);
    task = submit (s, c, t);
    if (task == NULL) {
      nbdkit_error ("iscsi: %s: cannot queue command: %s",
                    op_name (c->op), iscsi_get_error (s->iscsi));
      errno = EIO;
      return -1;
    }
    t->task = c->task = task;

    wait_for (s, c, t);

    if (c->abandoned) {
      c->task = NULL;           /* the session's ticket keeps it */
      if (c->breaks >= MAX_BREAKS)
        nbdkit_error ("iscsi: %s at LBA %" PRIu64 ", %" PRIu32 " blocks "
                      "failed: the connection to the target broke %d times "
                      "while the command was outstanding (the target drops "
                      "it, or answers with something libiscsi rejects)",
                      op_name (c->op), c->lba, c->nblocks, c->breaks);
      else
        nbdkit_error ("iscsi: %s at LBA %" PRIu64 ", %" PRIu32 " blocks "
                      "failed: the target is unreachable", op_name (c->op),
                      c->lba, c->nblocks);
      errno = EIO;
      return -1;
    }
    t->task = NULL;             /* the caller's now */

    if (c->status == SCSI_STATUS_GOOD && !transfer_ok (s, c, task)) {
      scsi_free_scsi_task (task);
      c->task = NULL;
      errno = EIO;
      return -1;
    }
    if (c->status == SCSI_STATUS_GOOD)
      return 0;
    memset (&sense, 0, sizeof sense);
    if (c->status == SCSI_STATUS_CHECK_CONDITION)
      sense = task->sense;
    err = scsi_errno (c->status, &sense);
    if (err == 0) {             /* recovered error: data is good ... */
      if (transfer_ok (s, c, task))
        return 0;               /* ... if it all came */
      scsi_free_scsi_task (task);
      c->task = NULL;
      errno = EIO;
      return -1;
    }

    if (c->status == SCSI_STATUS_TIMEOUT &&
        (c->op == OP_WRITE || c->op == OP_WRITESAME || c->op == OP_UNMAP))
      abort_timed_out (s, task);

    scsi_describe (c->status, &sense, msg, sizeof msg);
    if (scsi_is_transient (c->status, &sense) && attempt < s->cfg->retries) {
      unsigned ms = 10u << (attempt < 7 ? attempt : 7);   /* <= 1.28 s */
      nbdkit_debug ("iscsi: %s LBA %" PRIu64 ": %s, retrying in %u ms",
                    op_name (c->op), c->lba, msg, ms);
      scsi_free_scsi_task (task);
      c->task = NULL;
      nbdkit_nanosleep (ms / 1000, (ms % 1000) * 1000000);
      continue;
    }

    if (c->quiet || scsi_is_unsupported (c->status, &sense))
      /* Callers decide whether to fall back; keep it quiet here. */
      nbdkit_debug ("iscsi: %s: %s", op_name (c->op), msg);
    else
      nbdkit_error ("iscsi: %s at LBA %" PRIu64 ", %" PRIu32
                    " blocks failed: %s", op_name (c->op), c->lba,
                    c->nblocks, msg);
    c->unsupported = scsi_is_unsupported (c->status, &sense);
    scsi_free_scsi_task (task);
    c->task = NULL;
    errno = err;
    return -1;
  }
}

/* The first two bytes of a REPORT LUNS entry (SAM-5 4.7): peripheral
 * device addressing on bus 0, or flat space addressing.  -1 otherwise.
 */
static int
lun_from_address (uint16_t a)
{
  switch (a >> 14) {
  case 0:                       /* peripheral: bus in the low 6 bits */
    return (a >> 8) == 0 ? (a & 0xff) : -1;
  case 1:                       /* flat space */
    return a & 0x3fff;
  default:
    return -1;
  }
}

int
session_list_luns (const struct session_config *cfg, int **luns, int *n)
{
  struct iscsi_context *iscsi;
  struct scsi_task *task = NULL;
  struct scsi_reportluns_list *list;
  int *ret = NULL, nret = 0;
  uint32_t i, nlist;

  *luns = NULL;
  *n = 0;
  iscsi = login (cfg, -1, nbdkit_error);
  if (iscsi == NULL)
    return -1;

  /* The first command after a plain login sees the target's UNIT
   * ATTENTION (power on / reset): repeat it.
   */
  for (i = 0; i < 5; ++i) {
    task = iscsi_reportluns_sync (iscsi, 0, 16384);
    if (task == NULL || task->status != SCSI_STATUS_CHECK_CONDITION ||
        task->sense.key != SCSI_SENSE_UNIT_ATTENTION)
      break;
    scsi_free_scsi_task (task);
    task = NULL;
  }
  if (!sync_ok (iscsi, task, "REPORT LUNS", false))
    goto err;
  list = scsi_datain_unmarshall (task);
  if (list == NULL) {
    nbdkit_error ("iscsi: cannot parse REPORT LUNS data");
    goto err;
  }
  /* libiscsi takes the count from the list's length field: believe no
   * more entries than the data holds (8 bytes each after the header).
   */
  nlist = list->num;
  if (task->datain.size < 8)
    nlist = 0;
  else if (nlist > (uint32_t) (task->datain.size - 8) / 8)
    nlist = (uint32_t) (task->datain.size - 8) / 8;
  ret = calloc (nlist ? nlist : 1, sizeof *ret);
  if (ret == NULL) {
    nbdkit_error ("calloc: %m");
    goto err;
  }
  for (i = 0; i < nlist; ++i) {
    int lun = lun_from_address (list->luns[i]);
    struct scsi_task *inq;
    struct scsi_inquiry_standard *std;
    int j;

    if (lun < 0) {
      nbdkit_debug ("iscsi: REPORT LUNS: LUN address 0x%04x not understood, "
                    "not listed", (unsigned) list->luns[i]);
      continue;
    }
    for (j = 0; j < nret && ret[j] != lun; ++j)
      ;
    if (j < nret)               /* listed twice */
      continue;

    inq = iscsi_inquiry_sync (iscsi, lun, 0, 0, 255);
    if (inq == NULL)
      continue;
    if (inq->status == SCSI_STATUS_GOOD &&
        (std = scsi_datain_unmarshall (inq)) != NULL &&
        std->qualifier == SCSI_INQUIRY_PERIPHERAL_QUALIFIER_CONNECTED &&
        std->device_type == SCSI_INQUIRY_PERIPHERAL_DEVICE_TYPE_DIRECT_ACCESS)
      ret[nret++] = lun;
    else
      nbdkit_debug ("iscsi: LUN %d is not a block device, not listed", lun);
    scsi_free_scsi_task (inq);
  }
  scsi_free_scsi_task (task);
  iscsi_logout_sync (iscsi);
  iscsi_destroy_context (iscsi);
  *luns = ret;
  *n = nret;
  return 0;

 err:
  free (ret);
  if (task)
    scsi_free_scsi_task (task);
  iscsi_destroy_context (iscsi);
  return -1;
}
