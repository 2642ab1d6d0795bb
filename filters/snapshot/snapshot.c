/* SPDX-License-Identifier: BSD-3-Clause */
/* nbdkit snapshot filter: a persistent qcow2 overlay chain with named
 * snapshots (common/snapshot) over whatever plugin the filter sits on.
 *
 * Exports: "" is the chain (read-write); "@NAME" is snapshot NAME,
 * read-only.  Both reach the plugin's default export.
 *
 * One chain for the whole server.  It is opened by the first connection's
 * .prepare (the device below is the routed bdev of bdev_nbdkit_filter.h)
 * and stays open until .unload: unlike the qcow2 filter's engine, the
 * chain keeps its metadata in local files, and the device below is only
 * used inside a request or during a commit, which borrows the context of
 * a live connection (or, with none, opens a shared one).
 *
 * control=SOCKET: a unix socket served by a thread (started after nbdkit
 * forks) with a one-line-per-connection protocol:
 *   request:  COMMAND [NAME]\n      (create, revert, delete, commit, list)
 *   reply:    zero or more lines, then "OK" or "ERROR message"
 * nbdkit-snapshot-ctl(1) is its client.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <nbdkit-filter.h>

#include "bdev/bdev.h"
#include "bdev/bdev_nbdkit_filter.h"
#include "snapshot/snapshot.h"
#include "util/clock.h"
#include "util/log.h"
#include "util/single.h"

static char *overlay_dir;       /* overlay-dir=DIR (absolute) */
static char *control_path;      /* control=SOCKET */
static int64_t cache_size = -1; /* snapshot-cache=SIZE (qcow2 L2 cache) */

/* The chain, opened by the first connection. */
static pthread_mutex_t chain_lock = PTHREAD_MUTEX_INITIALIZER;
static struct snap_chain *chain;
static nbdkit_backend *backend; /* for a commit without connections */

/* Contexts of live connections (between .prepare and .finalize), which
 * a commit may borrow; ctx_lock is held for the whole commit, so a
 * connection cannot finish while its context is in use.
 */
struct live {
  struct live *next;
  nbdkit_next *ctx;
};
static pthread_mutex_t ctx_lock = PTHREAD_MUTEX_INITIALIZER;
static struct live *lives;

/* Control socket. */
static int ctl_fd = -1;
static dev_t ctl_dev;           /* the socket file we bound */
static ino_t ctl_ino;
static int ctl_wake[2] = { -1, -1 };
static pthread_t ctl_thread;
static bool ctl_running;

/* Errors reported while the control thread runs an operation are also
 * copied here, for the reply.
 */
static __thread char *ctl_errbuf;
#define CTL_ERRLEN 512

static void
snapshot_verror (const char *fmt, va_list args)
{
  if (ctl_errbuf && !*ctl_errbuf) {
    va_list c;
    va_copy (c, args);
    vsnprintf (ctl_errbuf, CTL_ERRLEN, fmt, c);
    va_end (c);
  }
  nbdkit_verror (fmt, args);
}

struct handle {
  struct bdev_nbdkit_handle h;  /* first: the shared callbacks use it */
  char *snap;                   /* "@NAME" export: NAME, else NULL */
  struct live live;
  bool in_list;
};

/* .load calls: more than one means --filter=snapshot twice (util/single.h). */
static unsigned loads;

static void
snapshot_load (void)
{
  loads++;
  kvm_log_set (snapshot_verror, nbdkit_vdebug);
}

static void
ctl_stop (void)
{
  if (ctl_running) {
    char x = 'q';
    if (write (ctl_wake[1], &x, 1) == -1)
      nbdkit_debug ("snapshot: waking the control thread: %m");
    pthread_join (ctl_thread, NULL);
    ctl_running = false;
  }
  if (ctl_fd >= 0) {
    struct stat st;
    close (ctl_fd);
    ctl_fd = -1;
    /* Only our own socket: the path may now name another server's. */
    if (lstat (control_path, &st) == 0 && st.st_dev == ctl_dev &&
        st.st_ino == ctl_ino)
      unlink (control_path);
  }
  for (int i = 0; i < 2; i++)
    if (ctl_wake[i] >= 0) {
      close (ctl_wake[i]);
      ctl_wake[i] = -1;
    }
}

/* The control thread stops here, not in .unload: nbdkit 1.32 frees the
 * plugin before it unloads the filters, and a commit the thread runs
 * (with no client connected, through a context of its own) must finish
 * while the plugin is still there.
 */
static void
snapshot_cleanup (nbdkit_backend *backend)
{
  (void) backend;
  ctl_stop ();
}

static void
snapshot_unload (void)
{
  if (--loads > 0)             /* another instance: its state too */
    return;
  ctl_stop ();                  /* if .cleanup did not run */
  /* Every connection is gone: nothing uses the chain. */
  snap_chain_close (chain);
  chain = NULL;
  free (overlay_dir);
  free (control_path);
}

static int
snapshot_config (nbdkit_next_config *next, nbdkit_backend *nxdata,
                 const char *key, const char *value)
{
  if (strcmp (key, "overlay-dir") == 0) {
    free (overlay_dir);
    overlay_dir = nbdkit_absolute_path (value);
    return overlay_dir ? 0 : -1;
  }
  if (strcmp (key, "control") == 0) {
    free (control_path);
    control_path = nbdkit_absolute_path (value);
    if (!control_path)
      return -1;
    if (strlen (control_path) >= sizeof ((struct sockaddr_un *) 0)->sun_path) {
      nbdkit_error ("control=%s: path too long for a unix socket", value);
      return -1;
    }
    return 0;
  }
  if (strcmp (key, "snapshot-cache") == 0) {
    cache_size = nbdkit_parse_size (value);
    return cache_size == -1 ? -1 : 0;
  }
  return next (nxdata, key, value);
}

static int
snapshot_config_complete (nbdkit_next_config_complete *next,
                          nbdkit_backend *nxdata)
{
  if (!overlay_dir) {
    nbdkit_error ("the snapshot filter needs overlay-dir=DIR");
    return -1;
  }
  return next (nxdata);
}

#define snapshot_config_help \
  "overlay-dir=DIR      (required) Directory of the qcow2 overlay chain.\n" \
  "control=SOCKET       Unix socket for nbdkit-snapshot-ctl.\n" \
  "snapshot-cache=SIZE  L2 metadata cache of each layer."

static int
snapshot_thread_model (void)
{
  return NBDKIT_THREAD_MODEL_PARALLEL;
}

/* ---- control socket ---------------------------------------------------- */

static int
snapshot_get_ready (int thread_model)
{
  (void) thread_model;
  if (kvm_filter_single (loads, "snapshot") == -1)
    return -1;
  if (!control_path)
    return 0;
  struct sockaddr_un a = { .sun_family = AF_UNIX };
  struct stat st;
  strcpy (a.sun_path, control_path);
  /* A socket left by a killed server (nbdkit cannot remove it then) is
   * replaced; one that answers, or whose backlog is full, belongs to a
   * live server and is not.  (The probe does not block.)
   */
  if (lstat (control_path, &st) == 0 && S_ISSOCK (st.st_mode)) {
    int p = socket (AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (p == -1) {
      nbdkit_error ("socket: %m");
      return -1;
    }
    int c = connect (p, (struct sockaddr *) &a, sizeof a);
    int e = errno;
    close (p);
    if (c == 0 || e == EAGAIN) {
      nbdkit_error ("control socket %s is in use by another server",
                    control_path);
      return -1;
    }
    if (e == ECONNREFUSED)
      unlink (control_path);
    /* Otherwise bind reports what is wrong with the path. */
  }
  ctl_fd = socket (AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (ctl_fd == -1) {
    nbdkit_error ("socket: %m");
    return -1;
  }
  /* Created mode 0600 (umask), and listening at once: another server
   * probing it meanwhile must not take it for a stale one.
   */
  mode_t old = umask (0177);
  int r = bind (ctl_fd, (struct sockaddr *) &a, sizeof a);
  umask (old);
  if (r == 0 && lstat (control_path, &st) == 0) {
    ctl_dev = st.st_dev;
    ctl_ino = st.st_ino;
  }
  if (r == -1 || listen (ctl_fd, 8) == -1 || chmod (control_path, 0600) == -1) {
    nbdkit_error ("control socket %s: %m", control_path);
    close (ctl_fd);
    ctl_fd = -1;
    if (r == 0)
      unlink (control_path);
    return -1;
  }
  if (pipe2 (ctl_wake, O_CLOEXEC) == -1) {
    nbdkit_error ("pipe2: %m");
    return -1;
  }
  return 0;
}

/* Write all of S to FD (the client may be gone: errors ignored). */
static void
ctl_send (int fd, const char *s)
{
  size_t len = strlen (s);
  while (len > 0) {
    ssize_t r = send (fd, s, len, MSG_NOSIGNAL);
    if (r <= 0) {
      if (r == -1 && errno == EINTR)
        continue;
      return;
    }
    s += r;
    len -= r;
  }
}

static int
ctl_list_line (void *opaque, const struct snap_info *info)
{
  int fd = *(int *) opaque;
  char line[SNAP_NAME_MAX + 100], when[32];
  struct tm tm;
  if (!gmtime_r (&info->time, &tm) ||
      strftime (when, sizeof when, "%Y-%m-%dT%H:%M:%SZ", &tm) == 0)
    snprintf (when, sizeof when, "@%lld", (long long) info->time);
  snprintf (line, sizeof line, "%s %s %" PRIu64 "\n", info->name, when,
            info->bytes);
  ctl_send (fd, line);
  return 0;
}

/* Commit through the context of a live connection, or a shared one. */
static int
ctl_commit (void)
{
  int r;
  pthread_mutex_lock (&ctx_lock);
  if (lives) {
    bdev_next_enter (lives->ctx);
    r = snap_commit (chain);
    bdev_next_leave ();
    pthread_mutex_unlock (&ctx_lock);
    return r;
  }
  nbdkit_next *ctx = nbdkit_next_context_open (backend, 0, "", 1);
  if (!ctx) {
    pthread_mutex_unlock (&ctx_lock);
    /* kvm_error, not nbdkit_error: the control client gets it too. */
    kvm_error ("commit: cannot open a context into the plugin");
    return -1;
  }
  if (ctx->prepare (ctx) == -1 || bdev_next_prime (ctx) == -1) {
    kvm_error ("commit: no client is connected, and opening the plugin "
               "failed (the server's log says why; a plugin that needs the "
               "client's export name cannot be opened without one: connect "
               "a client and retry)");
    ctx->finalize (ctx);
    nbdkit_next_context_close (ctx);
    pthread_mutex_unlock (&ctx_lock);
    return -1;
  }
  bdev_next_enter (ctx);
  r = snap_commit (chain);
  if (bdev_next_connection_done (ctx) == -1)
    r = -1;
  bdev_next_leave ();
  ctx->finalize (ctx);
  nbdkit_next_context_close (ctx);
  pthread_mutex_unlock (&ctx_lock);
  return r;
}

static void
ctl_serve (int fd)
{
  char req[256], err[CTL_ERRLEN] = "";
  size_t len = 0;

  /* One line, within 10 s in all (a client sending a byte at a time must
   * not hold the channel longer).
   */
  struct timespec end = kvm_deadline_in (10);
  while (len < sizeof req - 1) {
    int left = kvm_ms_left (&end);
    struct pollfd p = { .fd = fd, .events = POLLIN };
    if (left == 0 || poll (&p, 1, left) <= 0)
      return;
    ssize_t r = recv (fd, req + len, sizeof req - 1 - len, 0);
    if (r <= 0)
      break;
    len += r;
    if (memchr (req, '\n', len))
      break;
  }
  req[len] = '\0';
  char *nl = strchr (req, '\n');
  if (!nl) {
    ctl_send (fd, "ERROR request is not one line\n");
    return;
  }
  *nl = '\0';
  char *cmd = req, *arg = strchr (req, ' ');
  if (arg)
    *arg++ = '\0';
  bool needs_name = strcmp (cmd, "create") == 0 ||
    strcmp (cmd, "revert") == 0 || strcmp (cmd, "delete") == 0;
  bool no_name = strcmp (cmd, "commit") == 0 || strcmp (cmd, "list") == 0;
  if (!needs_name && !no_name) {
    ctl_send (fd, "ERROR unknown command (create, revert, delete, commit, "
              "list)\n");
    return;
  }
  if (needs_name && (!arg || !*arg)) {
    ctl_send (fd, "ERROR this command needs a snapshot name\n");
    return;
  }
  if (no_name && arg) {
    ctl_send (fd, "ERROR this command takes no name\n");
    return;
  }

  pthread_mutex_lock (&chain_lock);
  if (!chain) {
    pthread_mutex_unlock (&chain_lock);
    ctl_send (fd, "ERROR the snapshot chain is not open yet: it opens "
              "when the first client connects\n");
    return;
  }
  pthread_mutex_unlock (&chain_lock);   /* it stays open until unload */

  int r;
  ctl_errbuf = err;
  nbdkit_debug ("snapshot: control: %s%s%s", cmd, arg ? " " : "",
                arg ? arg : "");
  if (strcmp (cmd, "create") == 0)
    r = snap_create (chain, arg);
  else if (strcmp (cmd, "revert") == 0)
    r = snap_revert (chain, arg);
  else if (strcmp (cmd, "delete") == 0)
    r = snap_delete (chain, arg);
  else if (strcmp (cmd, "commit") == 0)
    r = ctl_commit ();
  else
    r = snap_list (chain, ctl_list_line, &fd);
  int e = errno;
  ctl_errbuf = NULL;
  if (r == 0)
    ctl_send (fd, "OK\n");
  else {
    char line[CTL_ERRLEN + 16];
    /* No message of ours: the layer below failed, and logged why. */
    if (!*err)
      snprintf (err, CTL_ERRLEN, "%s (the server's log says more)",
                strerror (e ? e : EIO));
    for (char *p = err; *p; p++)
      if (*p == '\n')
        *p = ' ';
    snprintf (line, sizeof line, "ERROR %s\n", err);
    ctl_send (fd, line);
  }
}

static void *
ctl_main (void *arg)
{
  (void) arg;
  for (;;) {
    struct pollfd p[2] = {
      { .fd = ctl_fd, .events = POLLIN },
      { .fd = ctl_wake[0], .events = POLLIN },
    };
    if (poll (p, 2, -1) == -1) {
      if (errno == EINTR)
        continue;
      nbdkit_error ("control socket: poll: %m");
      return NULL;
    }
    if (p[1].revents)
      return NULL;
    if (p[0].revents & POLLIN) {
      int fd = accept4 (ctl_fd, NULL, NULL, SOCK_CLOEXEC);
      if (fd >= 0) {
        ctl_serve (fd);
        close (fd);
      }
    }
  }
}

static int
snapshot_after_fork (nbdkit_backend *nxdata)
{
  pthread_mutex_lock (&chain_lock);
  if (!backend)
    backend = nxdata;
  pthread_mutex_unlock (&chain_lock);
  if (ctl_fd < 0)
    return 0;
  int err = pthread_create (&ctl_thread, NULL, ctl_main, NULL);
  if (err) {
    errno = err;
    nbdkit_error ("pthread_create: %m");
    return -1;
  }
  ctl_running = true;
  return 0;
}

/* ---- exports ------------------------------------------------------------- */

static int
snapshot_list_exports (nbdkit_next_list_exports *next,
                       nbdkit_backend *nxdata, int readonly, int is_tls,
                       struct nbdkit_exports *exports)
{
  (void) next; (void) nxdata; (void) readonly; (void) is_tls;
  if (nbdkit_add_export (exports, "", "the snapshot chain") == -1)
    return -1;
  char **names = snap_state_names (overlay_dir);
  if (!names)
    return 0;                   /* no chain yet: no snapshots */
  int r = 0;
  for (char **p = names; r == 0 && *p; p++) {
    char n[SNAP_NAME_MAX + 2], d[SNAP_NAME_MAX + 32];
    snprintf (n, sizeof n, "@%s", *p);
    snprintf (d, sizeof d, "snapshot %s (read-only)", *p);
    r = nbdkit_add_export (exports, n, d);
  }
  snap_names_free (names);
  return r;
}

static const char *
snapshot_default_export (nbdkit_next_default_export *next,
                         nbdkit_backend *nxdata, int readonly, int is_tls)
{
  (void) next; (void) nxdata; (void) readonly; (void) is_tls;
  return "";
}

static void *
snapshot_open (nbdkit_next_open *next, nbdkit_context *context,
               int readonly, const char *exportname, int is_tls)
{
  struct handle *h;
  (void) is_tls;

  if (exportname[0] && exportname[0] != '@') {
    nbdkit_error ("export '%s': the snapshot filter serves the chain (the "
                  "default export) and snapshots as '@NAME'", exportname);
    return NULL;
  }
  if (exportname[0] == '@' && !snap_name_valid (exportname + 1)) {
    nbdkit_error ("export '%s': not a snapshot name", exportname);
    return NULL;
  }
  if (next (context, readonly, "") == -1)
    return NULL;
  pthread_mutex_lock (&chain_lock);
  if (!backend)
    backend = nbdkit_context_get_backend (context);
  pthread_mutex_unlock (&chain_lock);
  h = calloc (1, sizeof *h);
  if (!h) {
    nbdkit_error ("calloc: %m");
    return NULL;
  }
  if (exportname[0] == '@' && !(h->snap = strdup (exportname + 1))) {
    nbdkit_error ("strdup: %m");
    free (h);
    return NULL;
  }
  h->h.readonly = readonly || h->snap;
  h->h.shared = true;
  return h;
}

static int
snapshot_prepare (nbdkit_next *next, void *handle, int readonly)
{
  struct handle *h = handle;
  (void) readonly;

  if (bdev_next_prime (next) == -1)
    return -1;
  pthread_mutex_lock (&chain_lock);
  if (!chain) {
    const char *fopts[2] = { NULL, NULL };
    char cachebuf[64];
    if (cache_size >= 0) {
      snprintf (cachebuf, sizeof cachebuf, "qcow2.cache=%" PRIi64,
                cache_size);
      fopts[0] = cachebuf;
    }
    bdev_next_enter (next);     /* an interrupted commit writes below */
    struct bdev *below = bdev_next_routed (next, "snapshot filter: the "
                                           "export below", false);
    if (below)
      chain = snap_chain_open (overlay_dir, below, fopts);
    bdev_next_leave ();
    if (!chain) {
      pthread_mutex_unlock (&chain_lock);
      goto failed;
    }
  }
  pthread_mutex_unlock (&chain_lock);

  if (h->snap) {
    h->h.bd = snap_view_open (chain, h->snap);
    if (!h->h.bd)
      goto failed;
  }
  else
    h->h.bd = snap_chain_bdev (chain);
  h->live.ctx = next;
  pthread_mutex_lock (&ctx_lock);
  h->live.next = lives;
  lives = &h->live;
  h->in_list = true;
  pthread_mutex_unlock (&ctx_lock);
  return 0;

 failed:
  /* What the open wrote through this context (finishing a commit), which
   * nbdkit frees without .finalize: flushed, and off the list now.
   */
  bdev_next_connection_done (next);
  return -1;
}

static int
snapshot_finalize (nbdkit_next *next, void *handle)
{
  struct handle *h = handle;

  if (h->in_list) {
    pthread_mutex_lock (&ctx_lock);   /* waits for a commit using it */
    for (struct live **pp = &lives; *pp; pp = &(*pp)->next)
      if (*pp == &h->live) {
        *pp = h->live.next;
        break;
      }
    h->in_list = false;
    pthread_mutex_unlock (&ctx_lock);
  }
  if (h->snap && h->h.bd)
    bdev_close (h->h.bd);
  h->h.bd = NULL;
  /* A failure is logged; returning it would stop nbdkit from finalizing
   * the layers below (bdev_next_connection_done).
   */
  bdev_next_enter (next);
  bdev_next_connection_done (next);
  bdev_next_leave ();
  return 0;
}

static void
snapshot_close (void *handle)
{
  struct handle *h = handle;
  free (h->snap);
  free (h);
}

static struct nbdkit_filter filter = {
  .name = "snapshot",
  .longname = "nbdkit snapshot filter",
  .load = snapshot_load,
  .unload = snapshot_unload,
  .cleanup = snapshot_cleanup,
  .config = snapshot_config,
  .config_complete = snapshot_config_complete,
  .config_help = snapshot_config_help,
  .thread_model = snapshot_thread_model,
  .get_ready = snapshot_get_ready,
  .after_fork = snapshot_after_fork,
  .list_exports = snapshot_list_exports,
  .default_export = snapshot_default_export,
  .open = snapshot_open,
  .prepare = snapshot_prepare,
  .finalize = snapshot_finalize,
  .close = snapshot_close,
  BDEV_NBDKIT_FILTER_CALLBACKS,
};

NBDKIT_REGISTER_FILTER (filter)
