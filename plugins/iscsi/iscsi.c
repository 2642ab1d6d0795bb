/* SPDX-License-Identifier: BSD-3-Clause */
/* nbdkit iscsi plugin: serve an iSCSI logical unit over NBD.
 *
 * Each NBD connection gets a small pool of iSCSI sessions (pool.c); each
 * request borrows one and runs its command on it from nbdkit's worker
 * thread (session.c), so requests run concurrently without any thread
 * hand-off.  This file is the nbdkit adapter: parameters, exports, block
 * size handling (read-modify-write for unaligned requests), splitting at
 * the target's limits, and the mapping of NBD commands to SCSI commands.
 */
#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define NBDKIT_API_VERSION 2
#include <nbdkit-plugin.h>

#include "kvm_version.h"
#include "pool.h"

#define THREAD_MODEL NBDKIT_THREAD_MODEL_PARALLEL

/* iSCSI sessions per NBD connection, at most (see pool.h). */
#define DEFAULT_SESSIONS 16
#define MAX_SESSIONS 64

/* -D iscsi.requests=1: log every SCSI command.
 * -D iscsi.libiscsi=N: libiscsi's own debug level (1-10).
 */
NBDKIT_DLL_PUBLIC int iscsi_debug_requests = 0;
NBDKIT_DLL_PUBLIC int iscsi_debug_libiscsi = 0;

/* Parameters. */
static char *url;
static char *portal, *target, *initiator;
static int lun = -1;
static char *user, *password, *target_user, *target_password;
static enum iscsi_header_digest header_digest = ISCSI_HEADER_DIGEST_NONE;
static int timeout = 30;
static int reconnect_retries = 10;
static int reconnect_timeout = 120;   /* as open-iscsi's replacement_timeout */
static int retries = 8;
static uint32_t max_transfer;   /* bytes, 0 = target's limit */
static unsigned sessions = DEFAULT_SESSIONS;   /* per NBD connection */

static struct session_config cfg;

/* Serialises read-modify-write cycles of partial blocks, across all
 * connections, so two unaligned writes into one block cannot lose each
 * other's bytes.
 */
static pthread_mutex_t rmw_lock = PTHREAD_MUTEX_INITIALIZER;

struct handle {
  struct pool *p;
  bool ws_unsupported;          /* WRITE SAME rejected: write zeroes */
  bool ws_unmap_unsupported;    /* WRITE SAME + UNMAP rejected */
  bool unmap_unsupported;       /* UNMAP rejected: trim is a no-op */
};

static void
iscsi_unload (void)
{
  free (url);
  free (portal);
  free (target);
  free (initiator);
  free (user);
  free (password);
  free (target_user);
  free (target_password);
}

static int
set_string (char **dst, const char *key, const char *value)
{
  if (*dst) {
    nbdkit_error ("%s parameter given more than once", key);
    return -1;
  }
  *dst = strdup (value);
  if (*dst == NULL) {
    nbdkit_error ("strdup: %m");
    return -1;
  }
  return 0;
}

static int
parse_lun (const char *what, const char *value, int *r)
{
  unsigned u;

  if (nbdkit_parse_unsigned (what, value, &u) == -1)
    return -1;
  if (u > 16383) {              /* flat/peripheral addressing limit */
    nbdkit_error ("%s: LUN %u out of range (0-16383)", what, u);
    return -1;
  }
  *r = (int) u;
  return 0;
}

static int
iscsi_config (const char *key, const char *value)
{
  if (strcmp (key, "url") == 0)
    return set_string (&url, key, value);
  else if (strcmp (key, "portal") == 0)
    return set_string (&portal, key, value);
  else if (strcmp (key, "target") == 0)
    return set_string (&target, key, value);
  else if (strcmp (key, "initiator") == 0)
    return set_string (&initiator, key, value);
  else if (strcmp (key, "lun") == 0)
    return parse_lun ("lun", value, &lun);
  else if (strcmp (key, "user") == 0)
    return set_string (&user, key, value);
  else if (strcmp (key, "password") == 0) {
    free (password);
    password = NULL;
    return nbdkit_read_password (value, &password);
  }
  else if (strcmp (key, "target-user") == 0)
    return set_string (&target_user, key, value);
  else if (strcmp (key, "target-password") == 0) {
    free (target_password);
    target_password = NULL;
    return nbdkit_read_password (value, &target_password);
  }
  else if (strcmp (key, "header-digest") == 0) {
    if (strcmp (value, "none") == 0)
      header_digest = ISCSI_HEADER_DIGEST_NONE;
    else if (strcmp (value, "crc32c") == 0)
      header_digest = ISCSI_HEADER_DIGEST_CRC32C;
    else if (strcmp (value, "prefer-none") == 0)
      header_digest = ISCSI_HEADER_DIGEST_NONE_CRC32C;
    else if (strcmp (value, "prefer-crc32c") == 0)
      header_digest = ISCSI_HEADER_DIGEST_CRC32C_NONE;
    else {
      nbdkit_error ("header-digest must be none, crc32c, prefer-none "
                    "or prefer-crc32c, not \"%s\"", value);
      return -1;
    }
    return 0;
  }
  else if (strcmp (key, "timeout") == 0) {
    if (nbdkit_parse_int ("timeout", value, &timeout) == -1)
      return -1;
    if (timeout < 0) {
      nbdkit_error ("timeout must be >= 0 (0 = no timeout)");
      return -1;
    }
    return 0;
  }
  else if (strcmp (key, "reconnect-timeout") == 0) {
    if (nbdkit_parse_int ("reconnect-timeout", value,
                          &reconnect_timeout) == -1)
      return -1;
    if (reconnect_timeout < 0) {
      nbdkit_error ("reconnect-timeout must be >= 0 (0 = wait forever)");
      return -1;
    }
    return 0;
  }
  else if (strcmp (key, "reconnect-retries") == 0) {
    if (nbdkit_parse_int ("reconnect-retries", value,
                          &reconnect_retries) == -1)
      return -1;
    if (reconnect_retries < -1) {
      nbdkit_error ("reconnect-retries must be >= -1 (-1 = forever)");
      return -1;
    }
    return 0;
  }
  else if (strcmp (key, "retries") == 0) {
    if (nbdkit_parse_int ("retries", value, &retries) == -1)
      return -1;
    if (retries < 0 || retries > 100) {
      nbdkit_error ("retries must be between 0 and 100");
      return -1;
    }
    return 0;
  }
  else if (strcmp (key, "sessions") == 0) {
    if (nbdkit_parse_unsigned ("sessions", value, &sessions) == -1)
      return -1;
    if (sessions < 1 || sessions > MAX_SESSIONS) {
      nbdkit_error ("sessions must be between 1 and %d", MAX_SESSIONS);
      return -1;
    }
    return 0;
  }
  else if (strcmp (key, "max-transfer") == 0) {
    int64_t r = nbdkit_parse_size (value);
    if (r == -1)
      return -1;
    if (r < 512 || r > 1024 * 1024 * 1024) {
      nbdkit_error ("max-transfer must be between 512 and 1G");
      return -1;
    }
    max_transfer = (uint32_t) r;
    return 0;
  }
  else {
    nbdkit_error ("unknown parameter '%s'", key);
    return -1;
  }
}

/* Split url= into portal, target, lun and CHAP credentials using
 * libiscsi's own parser.  The LUN may be omitted (list the target's LUNs).
 */
static int
parse_url (void)
{
  struct iscsi_context *tmp;
  struct iscsi_url *u;
  char *copy = NULL, *withlun = NULL;
  size_t len;
  bool have_lun = true;
  int r = -1;

  if (strncmp (url, "iscsi://", 8) != 0) {
    nbdkit_error ("url must start with iscsi:// (syntax: %s)",
                  ISCSI_URL_SYNTAX);
    return -1;
  }
  tmp = iscsi_create_context ("iqn.2026-11.invalid:url-parser");
  if (tmp == NULL) {
    nbdkit_error ("iscsi_create_context failed");
    return -1;
  }
  copy = strdup (url);
  if (copy == NULL) {
    nbdkit_error ("strdup: %m");
    goto out;
  }
  len = strlen (copy);
  while (len > 8 && copy[len - 1] == '/')
    copy[--len] = '\0';
  /* Count the path components after the host: target[/lun]. */
  {
    const char *path = strchr (copy + 8, '/');
    if (path && strchr (path + 1, '/') == NULL)
      have_lun = false;
  }
  if (!have_lun) {
    if (asprintf (&withlun, "%s/0", copy) == -1) {
      nbdkit_error ("asprintf: %m");
      goto out;
    }
  }
  u = iscsi_parse_full_url (tmp, have_lun ? copy : withlun);
  if (u == NULL) {
    /* libiscsi's message quotes the whole URL, CHAP password included. */
    nbdkit_error ("cannot parse url= (syntax: %s)", ISCSI_URL_SYNTAX);
    goto out;
  }
  if (portal || target || (have_lun && lun >= 0)) {
    nbdkit_error ("url= cannot be combined with portal=, target= "
                  "or (when the url has a LUN) lun=");
    iscsi_destroy_url (u);
    goto out;
  }
  portal = strdup (u->portal);
  target = strdup (u->target);
  if (portal == NULL || target == NULL) {
    nbdkit_error ("strdup: %m");
    iscsi_destroy_url (u);
    goto out;
  }
  if (have_lun)
    lun = u->lun;
  if (u->user[0] && !user) {
    user = strdup (u->user);
    if (!password)
      password = strdup (u->passwd);
    if (user == NULL || password == NULL) {
      nbdkit_error ("strdup: %m");
      iscsi_destroy_url (u);
      goto out;
    }
  }
  iscsi_destroy_url (u);
  r = 0;

 out:
  free (copy);
  free (withlun);
  iscsi_destroy_context (tmp);
  return r;
}

/* A stable default initiator name derived from the host name. */
static char *
default_initiator (void)
{
  char host[256] = "localhost";
  char *ret, *p;

  if (gethostname (host, sizeof host - 1) == -1 || host[0] == '\0')
    strcpy (host, "localhost");
  host[sizeof host - 1] = '\0';
  if (asprintf (&ret, "iqn.2026-11.org.nbdkit-kvm-storage:%s", host) == -1)
    return NULL;
  for (p = strchr (ret, ':') + 1; *p; ++p) {
    *p = tolower ((unsigned char) *p);
    if (!isalnum ((unsigned char) *p) && *p != '.' && *p != '-')
      *p = '-';
  }
  return ret;
}

static int
iscsi_config_complete (void)
{
  if (url && parse_url () == -1)
    return -1;
  if (!portal || !target) {
    nbdkit_error ("you must give url=iscsi://HOST[:PORT]/TARGET[/LUN] "
                  "or portal= and target=");
    return -1;
  }
  if (!initiator) {
    initiator = default_initiator ();
    if (initiator == NULL) {
      nbdkit_error ("asprintf: %m");
      return -1;
    }
  }
  if (password && !user) {
    nbdkit_error ("password= needs user=");
    return -1;
  }
  if ((target_user || target_password) && !user) {
    nbdkit_error ("mutual CHAP (target-user=) needs CHAP (user=) as well");
    return -1;
  }
  if (target_password && !target_user) {
    nbdkit_error ("target-password= needs target-user=");
    return -1;
  }

  cfg.portal = portal;
  cfg.target = target;
  cfg.initiator = initiator;
  cfg.user = user;
  cfg.password = password;
  cfg.target_user = target_user;
  cfg.target_password = target_password;
  cfg.header_digest = header_digest;
  cfg.timeout = timeout;
  cfg.reconnect_retries = reconnect_retries;
  cfg.reconnect_timeout = reconnect_timeout;
  cfg.retries = retries;
  cfg.log_level = iscsi_debug_libiscsi;
  nbdkit_debug ("iscsi: portal %s target %s lun %d initiator %s%s",
                portal, target, lun, initiator, user ? " (CHAP)" : "");
  return 0;
}

#define iscsi_config_help \
  "url=iscsi://[USER[%PASSWORD]@]HOST[:PORT]/TARGET[/LUN]\n" \
  "                           iSCSI URL (or portal=, target=, lun=).\n" \
  "portal=HOST[:PORT]         Target portal (default port 3260).\n" \
  "target=IQN                 Target name.\n" \
  "lun=N                      Logical unit (default: export name).\n" \
  "initiator=IQN              Initiator name.\n" \
  "user=USER password=PASSWORD|-|+FILE|-FD  CHAP credentials.\n" \
  "target-user=USER target-password=PASSWORD  Mutual CHAP.\n" \
  "header-digest=none|crc32c|prefer-none|prefer-crc32c\n" \
  "timeout=SECS               Per-command timeout (default 30, 0 = none).\n" \
  "reconnect-retries=N        Reconnect attempts (default 10, -1 = forever).\n" \
  "reconnect-timeout=SECS     Give up on a lost target (default 120, 0 = never).\n" \
  "retries=N                  Retries of transient SCSI errors (default 8).\n" \
  "sessions=N                 iSCSI sessions per connection (default 16).\n" \
  "max-transfer=SIZE          Split requests above SIZE bytes."

static void
iscsi_dump_plugin (void)
{
  printf ("iscsi_libiscsi_api=%d\n", LIBISCSI_API_VERSION);
  printf ("iscsi_header_digest=yes\n");
  printf ("iscsi_chap=yes\n");
  printf ("iscsi_mutual_chap=yes\n");
}

/* --- exports --------------------------------------------------------- */

static int
iscsi_list_exports (int readonly, int is_tls, struct nbdkit_exports *exports)
{
  int *luns, n, i;
  char name[16], desc[512];

  (void) readonly;
  (void) is_tls;
  if (lun >= 0) {
    snprintf (name, sizeof name, "%d", lun);
    snprintf (desc, sizeof desc, "iSCSI %s LUN %d", target, lun);
    return nbdkit_add_export (exports, name, desc);
  }
  if (session_list_luns (&cfg, &luns, &n) == -1)
    return -1;
  for (i = 0; i < n; ++i) {
    snprintf (name, sizeof name, "%d", luns[i]);
    snprintf (desc, sizeof desc, "iSCSI %s LUN %d", target, luns[i]);
    if (nbdkit_add_export (exports, name, desc) == -1) {
      free (luns);
      return -1;
    }
  }
  free (luns);
  return 0;
}

static const char *
iscsi_default_export (int readonly, int is_tls)
{
  int *luns, n;
  const char *ret;

  (void) readonly;
  (void) is_tls;
  if (lun >= 0)
    return nbdkit_printf_intern ("%d", lun);
  if (session_list_luns (&cfg, &luns, &n) == -1)
    return NULL;
  if (n == 0) {
    free (luns);
    nbdkit_error ("iscsi: target %s has no block device LUNs", target);
    return NULL;
  }
  ret = nbdkit_printf_intern ("%d", luns[0]);
  free (luns);
  return ret;
}

/* --- connections ----------------------------------------------------- */

static void *
iscsi_open (int readonly)
{
  struct handle *h;
  int l = lun;

  (void) readonly;
  if (l < 0) {
    const char *name = nbdkit_export_name ();
    if (name == NULL || name[0] == '\0') {
      name = iscsi_default_export (readonly, 0);
      if (name == NULL)
        return NULL;
    }
    if (parse_lun ("export name (LUN number)", name, &l) == -1)
      return NULL;
  }

  h = calloc (1, sizeof *h);
  if (h == NULL) {
    nbdkit_error ("calloc: %m");
    return NULL;
  }
  h->p = pool_open (&cfg, l, sessions);
  if (h->p == NULL) {
    free (h);
    return NULL;
  }
  if (max_transfer) {
    uint32_t m = max_transfer / h->p->info.block_size;
    if (m == 0)
      m = 1;
    if (m < h->p->info.max_xfer_blocks)
      h->p->info.max_xfer_blocks = m;
  }
  return h;
}

static void
iscsi_close (void *handle)
{
  struct handle *h = handle;

  pool_close (h->p);
  free (h);
}

static const char *
iscsi_export_description (void *handle)
{
  struct handle *h = handle;
  const struct lun_info *li = &h->p->info;

  return nbdkit_printf_intern ("iSCSI %s LUN %d at %s (%s %s)",
                               target, h->p->lun, portal,
                               li->vendor, li->product);
}

static int64_t
iscsi_get_size (void *handle)
{
  struct handle *h = handle;

  return (int64_t) (h->p->info.num_blocks * h->p->info.block_size);
}

static int
iscsi_block_size (void *handle, uint32_t *minimum, uint32_t *preferred,
                  uint32_t *maximum)
{
  struct handle *h = handle;
  const struct lun_info *li = &h->p->info;
  uint64_t pref = li->block_size;

  if (li->opt_xfer_gran > 0)
    pref = (uint64_t) li->opt_xfer_gran * li->block_size;
  if (pref > 32 * 1024 * 1024)
    pref = 32 * 1024 * 1024;
  /* NBD wants a power of 2; the target's granularity need not be one. */
  while ((pref & (pref - 1)) != 0)
    pref &= pref - 1;
  if (pref < 4096)
    pref = 4096;
  if (pref < li->block_size)
    pref = li->block_size;
  *minimum = li->block_size;
  *preferred = (uint32_t) pref;
  *maximum = 0xffffffff;        /* we split ourselves */
  return 0;
}

static int
iscsi_can_write (void *handle)
{
  struct handle *h = handle;

  return !h->p->info.readonly;
}

static int
iscsi_can_flush (void *handle)
{
  (void) handle;
  return 1;
}

/* Native FUA only where MODE SENSE says the target honours it (DPOFUA):
 * Linux LIO, for one, rejects WRITE with FUA on a LUN without a write
 * cache.  Otherwise nbdkit flushes after the write.
 */
static int
iscsi_can_fua (void *handle)
{
  struct handle *h = handle;
  return h->p->info.dpofua ? NBDKIT_FUA_NATIVE : NBDKIT_FUA_EMULATE;
}

/* SYNCHRONIZE CACHE acts on the logical unit, not the I_T nexus: a flush
 * on one connection covers writes completed on every other one.
 */
static int
iscsi_can_multi_conn (void *handle)
{
  (void) handle;
  return 1;
}

static int
iscsi_can_trim (void *handle)
{
  struct handle *h = handle;

  return h->p->info.lbpu;
}

static int
iscsi_can_zero (void *handle)
{
  (void) handle;
  return 1;
}

/* Advertised always (nbdkit 1.32 aborts on a fast zero it did not
 * advertise); iscsi_zero answers ENOTSUP unless WRITE SAME can unmap.
 */
static int
iscsi_can_fast_zero (void *handle)
{
  (void) handle;
  return 1;
}

static int
iscsi_can_extents (void *handle)
{
  struct handle *h = handle;

  return h->p->info.lbpme;
}

/* --- I/O ------------------------------------------------------------- */

/* Blocks per READ/WRITE: may drop once, when the target turns out to
 * take only 10-byte CDBs.
 */
static uint32_t
max_xfer (const struct pool *p)
{
  return __atomic_load_n (&p->info.max_xfer_blocks, __ATOMIC_RELAXED);
}

static int flush_lun (struct handle *h);

/* READ or WRITE of whole blocks, split at the transfer limit. */
static int
rw_blocks (struct handle *h, enum cmd_op op, void *buf, uint64_t lba,
           uint64_t nblocks, bool fua)
{
  struct pool *p = h->p;
  uint32_t bs = p->info.block_size;
  bool flush_after = false;

  while (nblocks > 0) {
    uint32_t n = nblocks > max_xfer (p) ? max_xfer (p) : (uint32_t) nblocks;
    struct cmd c = { .op = op, .lba = lba, .nblocks = n, .buf = buf,
                     .fua = fua };

    if (iscsi_debug_requests)
      nbdkit_debug ("iscsi: %s lba=%" PRIu64 " blocks=%" PRIu32 "%s",
                    op == OP_READ ? "READ" : "WRITE", lba, n,
                    fua ? " FUA" : "");
    if (pool_run (p, &c) == -1) {
      /* A WRITE with FUA rejected although DPOFUA was reported: write
       * without it, then flush (before the caller's request completes).
       */
      if (c.unsupported && fua) {
        nbdkit_debug ("iscsi: WRITE with FUA rejected, writing without "
                      "and flushing");
        fua = false;
        flush_after = true;
        continue;
      }
      /* A target without READ(16)/WRITE(16): fall back to 10-byte CDBs,
       * for good, only if every LBA of the LUN fits in them (else later
       * requests past 2^32 blocks would be cut to 32 bits).
       */
      if (c.unsupported &&
          __atomic_load_n (&p->info.use_16, __ATOMIC_RELAXED) &&
          p->info.num_blocks <= (uint64_t) UINT32_MAX + 1 && n <= 0xffff) {
        nbdkit_debug ("iscsi: 16-byte READ/WRITE rejected, "
                      "using 10-byte CDBs");
        /* Idempotent: threads falling back at once store the same. */
        if (max_xfer (p) > 0xffff)
          __atomic_store_n (&p->info.max_xfer_blocks, 0xffff,
                            __ATOMIC_RELAXED);
        __atomic_store_n (&p->info.use_16, false, __ATOMIC_RELAXED);
        continue;
      }
      if (c.unsupported)
        nbdkit_error ("iscsi: the target rejected %s at LBA %" PRIu64,
                      op == OP_READ ? "READ" : "WRITE", lba);
      return -1;
    }
    scsi_free_scsi_task (c.task);
    buf = (char *) buf + (uint64_t) n * bs;
    lba += n;
    nblocks -= n;
  }
  return flush_after ? flush_lun (h) : 0;
}

static int
flush_lun (struct handle *h)
{
  struct cmd c = { .op = OP_SYNC };

  if (iscsi_debug_requests)
    nbdkit_debug ("iscsi: SYNCHRONIZE CACHE");
  if (pool_run (h->p, &c) == -1) {
    if (c.unsupported && h->p->info.no_wce) {
      /* The caching page says there is no volatile cache. */
      nbdkit_debug ("iscsi: SYNCHRONIZE CACHE not supported, and no "
                    "write cache (WCE=0): nothing to flush");
      return 0;
    }
    if (c.unsupported) {
      nbdkit_error ("iscsi: the target rejects SYNCHRONIZE CACHE and does "
                    "not report that it has no write cache: cannot flush");
      errno = EIO;
    }
    return -1;
  }
  scsi_free_scsi_task (c.task);
  return 0;
}

static int
iscsi_pread (void *handle, void *buf, uint32_t count, uint64_t offset,
             uint32_t flags)
{
  struct handle *h = handle;
  uint32_t bs = h->p->info.block_size;
  char *p = buf;
  unsigned char *bounce = NULL;

  (void) flags;
  while (count > 0) {
    uint64_t lba = offset / bs;
    uint32_t skip = offset % bs;

    if (skip == 0 && count >= bs) {
      uint64_t nb = count / bs;
      if (rw_blocks (h, OP_READ, p, lba, nb, false) == -1)
        goto err;
      p += nb * bs;
      offset += nb * bs;
      count -= nb * bs;
    }
    else {
      uint32_t n = bs - skip < count ? bs - skip : count;
      if (!bounce && (bounce = malloc (bs)) == NULL) {
        nbdkit_error ("malloc: %m");
        goto err;
      }
      if (rw_blocks (h, OP_READ, bounce, lba, 1, false) == -1)
        goto err;
      memcpy (p, bounce + skip, n);
      p += n;
      offset += n;
      count -= n;
    }
  }
  free (bounce);
  return 0;

 err:
  free (bounce);
  return -1;
}

/* Read-modify-write of part of one block: data == NULL writes zeroes. */
static int
rmw_block (struct handle *h, uint64_t lba, uint32_t skip, uint32_t n,
           const void *data, bool fua)
{
  uint32_t bs = h->p->info.block_size;
  unsigned char *bounce;
  int r = -1;

  bounce = malloc (bs);
  if (bounce == NULL) {
    nbdkit_error ("malloc: %m");
    return -1;
  }
  pthread_mutex_lock (&rmw_lock);
  if (rw_blocks (h, OP_READ, bounce, lba, 1, false) == -1)
    goto out;
  if (data)
    memcpy (bounce + skip, data, n);
  else
    memset (bounce + skip, 0, n);
  if (rw_blocks (h, OP_WRITE, bounce, lba, 1, fua) == -1)
    goto out;
  r = 0;
 out:
  pthread_mutex_unlock (&rmw_lock);
  free (bounce);
  return r;
}

static int
iscsi_pwrite (void *handle, const void *buf, uint32_t count, uint64_t offset,
              uint32_t flags)
{
  struct handle *h = handle;
  uint32_t bs = h->p->info.block_size;
  bool fua = flags & NBDKIT_FLAG_FUA;
  const char *p = buf;

  while (count > 0) {
    uint64_t lba = offset / bs;
    uint32_t skip = offset % bs;

    if (skip == 0 && count >= bs) {
      uint64_t nb = count / bs;
      /* The SCSI layer does not modify the buffer. */
      if (rw_blocks (h, OP_WRITE, (void *) p, lba, nb, fua) == -1)
        return -1;
      p += nb * bs;
      offset += nb * bs;
      count -= nb * bs;
    }
    else {
      uint32_t n = bs - skip < count ? bs - skip : count;
      if (rmw_block (h, lba, skip, n, p, fua) == -1)
        return -1;
      p += n;
      offset += n;
      count -= n;
    }
  }
  return 0;
}

static int
iscsi_flush (void *handle, uint32_t flags)
{
  (void) flags;
  return flush_lun (handle);
}

/* Write zeroes over whole blocks with WRITE commands. */
static int
write_zero_blocks (struct handle *h, uint64_t lba, uint64_t nblocks, bool fua)
{
  uint32_t bs = h->p->info.block_size;
  uint64_t chunk = (1024 * 1024) / bs;
  void *zeroes;
  int r = 0;

  if (chunk > max_xfer (h->p))
    chunk = max_xfer (h->p);
  if (chunk == 0)
    chunk = 1;
  zeroes = calloc (chunk, bs);
  if (zeroes == NULL) {
    nbdkit_error ("calloc: %m");
    return -1;
  }
  while (nblocks > 0 && r == 0) {
    uint64_t n = nblocks < chunk ? nblocks : chunk;
    r = rw_blocks (h, OP_WRITE, zeroes, lba, n, fua);
    lba += n;
    nblocks -= n;
  }
  free (zeroes);
  return r;
}

static int
iscsi_zero (void *handle, uint32_t count, uint64_t offset, uint32_t flags)
{
  struct handle *h = handle;
  struct pool *p = h->p;
  uint32_t bs = p->info.block_size;
  bool fua = flags & NBDKIT_FLAG_FUA;
  bool unmap = (flags & NBDKIT_FLAG_MAY_TRIM) && p->info.lbpws;
  uint64_t lba, end_lba, nblocks;
  uint32_t head, tail;
  void *block = NULL;
  bool need_flush = false;

  if ((flags & NBDKIT_FLAG_FAST_ZERO) &&
      (__atomic_load_n (&h->ws_unsupported, __ATOMIC_RELAXED) || !unmap)) {
    errno = ENOTSUP;
    return -1;
  }

  /* Partial blocks at either end: read-modify-write. */
  head = offset % bs;
  if (head) {
    uint32_t n = bs - head < count ? bs - head : count;
    if (rmw_block (h, offset / bs, head, n, NULL, fua) == -1)
      return -1;
    offset += n;
    count -= n;
  }
  tail = count % bs;
  if (tail) {
    if (rmw_block (h, (offset + count) / bs, 0, tail, NULL, fua) == -1)
      return -1;
    count -= tail;
  }
  if (count == 0)
    return 0;

  lba = offset / bs;
  nblocks = count / bs;
  end_lba = lba + nblocks;

  block = calloc (1, bs);
  if (block == NULL) {
    nbdkit_error ("calloc: %m");
    return -1;
  }
  while (lba < end_lba) {
    uint64_t n = end_lba - lba;
    struct cmd c;

    if (unmap && __atomic_load_n (&h->ws_unmap_unsupported, __ATOMIC_RELAXED))
      unmap = false;
    if (!unmap && __atomic_load_n (&h->ws_unsupported, __ATOMIC_RELAXED)) {
      if (write_zero_blocks (h, lba, n, fua) == -1)
        goto err;
      break;
    }
    if (n > p->info.max_ws_len)
      n = p->info.max_ws_len;
    c = (struct cmd) { .op = OP_WRITESAME, .lba = lba,
                       .nblocks = (uint32_t) n, .buf = block,
                       .unmap = unmap, .quiet = true };
    if (iscsi_debug_requests)
      nbdkit_debug ("iscsi: WRITE SAME lba=%" PRIu64 " blocks=%" PRIu64
                    " unmap=%d", lba, n, unmap);
    if (pool_run (p, &c) == -1) {
      if (flags & NBDKIT_FLAG_FAST_ZERO) {
        free (block);
        errno = ENOTSUP;
        return -1;
      }
      /* Some targets reject WRITE SAME (or, like tgtd 1.0.85 without the
       * UNMAP bit, fail it with a bogus MEDIUM ERROR).  Write the zeroes
       * with plain WRITEs: if the medium really is bad, that fails too.
       * Only when that works is WRITE SAME given up for this connection.
       */
      nbdkit_debug ("iscsi: WRITE SAME(16)%s failed, writing zeroes instead",
                    unmap ? " with UNMAP" : "");
      if (write_zero_blocks (h, lba, n, fua) == -1)
        goto err;
      __atomic_store_n (unmap ? &h->ws_unmap_unsupported : &h->ws_unsupported,
                        true, __ATOMIC_RELAXED);
      lba += n;
      continue;
    }
    scsi_free_scsi_task (c.task);
    need_flush = fua;           /* WRITE SAME has no FUA bit */
    lba += n;
  }
  free (block);
  if (need_flush)
    return flush_lun (h);
  return 0;

 err:
  free (block);
  return -1;
}

#define UNMAP_DESCRIPTORS 64    /* per UNMAP command */

static int
iscsi_trim (void *handle, uint32_t count, uint64_t offset, uint32_t flags)
{
  struct handle *h = handle;
  struct pool *p = h->p;
  uint32_t bs = p->info.block_size;
  uint64_t lba, end_lba;
  struct unmap_list ul[UNMAP_DESCRIPTORS];
  uint32_t per_desc, ndesc_max;

  if (__atomic_load_n (&h->unmap_unsupported, __ATOMIC_RELAXED))
    return 0;

  /* Only whole blocks can be unmapped; trim is advisory, so the partial
   * blocks at the ends are simply left alone.
   */
  lba = (offset + bs - 1) / bs;
  end_lba = (offset + count) / bs;
  per_desc = p->info.max_unmap;
  ndesc_max = p->info.max_unmap_bdc < UNMAP_DESCRIPTORS ?
    p->info.max_unmap_bdc : UNMAP_DESCRIPTORS;

  while (lba < end_lba) {
    int nul = 0;
    struct cmd c;
    uint64_t total = 0;

    while (lba < end_lba && (uint32_t) nul < ndesc_max &&
           total < p->info.max_unmap) {
      uint64_t n = end_lba - lba;
      if (n > per_desc)
        n = per_desc;
      if (n > p->info.max_unmap - total)
        n = p->info.max_unmap - total;
      ul[nul].lba = lba;
      ul[nul].num = (uint32_t) n;
      nul++;
      total += n;
      lba += n;
    }
    c = (struct cmd) { .op = OP_UNMAP, .ul = ul, .nul = nul,
                       .lba = ul[0].lba, .nblocks = (uint32_t) total };
    if (iscsi_debug_requests)
      nbdkit_debug ("iscsi: UNMAP lba=%" PRIu64 " blocks=%" PRIu64
                    " descriptors=%d", ul[0].lba, total, nul);
    if (pool_run (p, &c) == -1) {
      if (c.unsupported) {
        nbdkit_debug ("iscsi: UNMAP not supported, trim ignored");
        __atomic_store_n (&h->unmap_unsupported, true, __ATOMIC_RELAXED);
        return 0;
      }
      return -1;
    }
    scsi_free_scsi_task (c.task);
  }
  if (flags & NBDKIT_FLAG_FUA)
    return flush_lun (h);
  return 0;
}

#define LBA_STATUS_DESCRIPTORS 128

static int
iscsi_extents (void *handle, uint32_t count, uint64_t offset, uint32_t flags,
               struct nbdkit_extents *extents)
{
  struct handle *h = handle;
  struct pool *p = h->p;
  uint32_t bs = p->info.block_size;
  uint64_t lba = offset / bs;
  uint64_t end_lba = (offset + count + bs - 1) / bs;
  bool added = false;

  if (end_lba > p->info.num_blocks)
    end_lba = p->info.num_blocks;

  while (lba < end_lba) {
    struct cmd c = { .op = OP_GET_LBA_STATUS, .lba = lba,
                     .alloc_len = 8 + 16 * LBA_STATUS_DESCRIPTORS };
    struct scsi_get_lba_status *st;
    uint64_t next = lba;
    uint32_t i;

    if (pool_run (p, &c) == -1) {
      if (c.unsupported && !added) {
        /* Report everything as data rather than failing. */
        return nbdkit_add_extent (extents, offset, count, 0);
      }
      return -1;
    }
    st = scsi_datain_unmarshall (c.task);
    if (st == NULL) {
      scsi_free_scsi_task (c.task);
      nbdkit_error ("iscsi: cannot parse GET LBA STATUS data");
      return -1;
    }
    for (i = 0; i < st->num_descriptors && next < end_lba; ++i) {
      const struct scsi_lba_status_descriptor *d = &st->descriptors[i];
      uint32_t type = 0;
      uint64_t dend;

      /* Descriptors must be contiguous from the requested LBA. */
      if (d->lba != next || d->num_blocks == 0 ||
          __builtin_add_overflow (d->lba, (uint64_t) d->num_blocks, &dend))
        break;
      if (dend > end_lba)
        dend = end_lba;
      if (d->provisioning != SCSI_PROVISIONING_TYPE_MAPPED)
        type = NBDKIT_EXTENT_HOLE |
          (p->info.lbprz ? NBDKIT_EXTENT_ZERO : 0);
      if (iscsi_debug_requests)
        nbdkit_debug ("iscsi: LBA status %" PRIu64 "+%" PRIu64 " type %u",
                      next, dend - next, type);
      if (nbdkit_add_extent (extents, next * bs, (dend - next) * bs,
                             type) == -1) {
        scsi_free_scsi_task (c.task);
        return -1;
      }
      added = true;
      next = dend;
    }
    scsi_free_scsi_task (c.task);
    if (next == lba) {
      /* The target told us nothing usable: call the rest data. */
      if (nbdkit_add_extent (extents, lba * bs, (end_lba - lba) * bs,
                             0) == -1)
        return -1;
      break;
    }
    lba = next;
    if (flags & NBDKIT_FLAG_REQ_ONE)
      break;
  }
  return 0;
}

static struct nbdkit_plugin plugin = {
  .name               = "iscsi",
  .longname           = "nbdkit iSCSI plugin",
  .version            = KVM_VERSION,
  .description        = "Serve an iSCSI logical unit (libiscsi initiator)",
  .unload             = iscsi_unload,
  .config             = iscsi_config,
  .config_complete    = iscsi_config_complete,
  .config_help        = iscsi_config_help,
  .magic_config_key   = "url",
  .dump_plugin        = iscsi_dump_plugin,
  .list_exports       = iscsi_list_exports,
  .default_export     = iscsi_default_export,
  .open               = iscsi_open,
  .close              = iscsi_close,
  .export_description = iscsi_export_description,
  .get_size           = iscsi_get_size,
  .block_size         = iscsi_block_size,
  .can_write          = iscsi_can_write,
  .can_flush          = iscsi_can_flush,
  .can_fua            = iscsi_can_fua,
  .can_multi_conn     = iscsi_can_multi_conn,
  .can_trim           = iscsi_can_trim,
  .can_zero           = iscsi_can_zero,
  .can_fast_zero      = iscsi_can_fast_zero,
  .can_extents        = iscsi_can_extents,
  .pread              = iscsi_pread,
  .pwrite             = iscsi_pwrite,
  .flush              = iscsi_flush,
  .trim               = iscsi_trim,
  .zero               = iscsi_zero,
  .extents            = iscsi_extents,
  .errno_is_preserved = 1,
};

NBDKIT_REGISTER_PLUGIN (plugin)
