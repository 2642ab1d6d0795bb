/* SPDX-License-Identifier: BSD-3-Clause */
/* NFS backend of the block-device interface over libnfs: see bdev_nfs.h.
 *
 * Every RPC goes through libnfs's asynchronous interface and our own poll
 * loop (wait_calls), so a request has one deadline for everything it does
 * (connecting, mounting, transferring, reconnecting) and fails with EIO
 * when that passes instead of hanging on a server that is gone.  libnfs's
 * own reconnection is off: a broken connection is destroyed and replaced
 * by a fresh one (mount, lookup, open), and the request repeated; every
 * request here (positional read/write, COMMIT) may safely be repeated.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include <nfsc/libnfs.h>
#include <nfsc/libnfs-raw-nfs.h>

#include "bdev.h"
#include "bdev_nfs.h"
#include "../util/clock.h"
#include "../util/log.h"

#define DEFAULT_TIMEOUT 60      /* seconds */
#define DEFAULT_CONNS 16      /* nbdkit's default thread count */
#define MAX_CONNS 64
#define MAX_IO (1024 * 1024)    /* bytes per READ/WRITE RPC at most */
#define MAX_INFLIGHT 16         /* RPCs of one request in flight */

/* --- configuration from the URL ------------------------------------------ */

struct nfs_cfg {
  char *url;                    /* as given, for messages */
  char *server;
  char *path;                   /* "/export/dir/file" */
  char *args;                   /* query parameters for libnfs, or NULL */
  int uid, gid;                 /* -1: libnfs's default */
  int version;
  int timeout;
  unsigned conns;
};

static void
cfg_free (struct nfs_cfg *c)
{
  free (c->url);
  free (c->server);
  free (c->path);
  free (c->args);
  memset (c, 0, sizeof *c);     /* freeing twice is harmless */
}

bool
bdev_nfs_is_url (const char *path)
{
  return strncmp (path, "nfs://", 6) == 0;
}

static int
parse_int (const char *url, const char *key, const char *v, int min, int max,
           int *out)
{
  char *end;
  errno = 0;
  long n = strtol (v, &end, 10);
  if (errno || end == v || *end || n < min || n > max) {
    kvm_error ("%s: %s must be an integer from %d to %d", url, key, min, max);
    errno = EINVAL;
    return -1;
  }
  *out = n;
  return 0;
}

/* Append "KEY=VALUE" to the libnfs argument string *ARGS. */
static int
add_arg (char **args, const char *kv, size_t len)
{
  size_t old = *args ? strlen (*args) : 0;
  char *n = realloc (*args, old + len + 2);
  if (!n)
    return -1;
  if (old)
    n[old++] = '&';
  memcpy (n + old, kv, len);
  n[old + len] = '\0';
  *args = n;
  return 0;
}

static int
cfg_parse (const char *url, struct nfs_cfg *c)
{
  memset (c, 0, sizeof *c);
  c->uid = c->gid = -1;
  c->version = 3;
  c->timeout = DEFAULT_TIMEOUT;
  c->conns = DEFAULT_CONNS;
  if (!(c->url = strdup (url)))
    goto nomem;
  if (!bdev_nfs_is_url (url))
    goto bad;
  const char *host = url + 6;
  const char *slash = strchr (host, '/');
  const char *q = strchr (host, '?');
  if (!slash || slash == host || (q && q < slash))
    goto bad;
  size_t hl = slash - host;
  const char *colon = memchr (host, ':', hl);
  if (host[0] == '[') {                 /* [IPv6 address] */
    if (hl < 3 || host[hl - 1] != ']')
      goto bad;
    host++;
    hl -= 2;
  }
  else if (colon && !memchr (colon + 1, ':', hl - (colon + 1 - host))) {
    kvm_error ("%s: a port in the URL is not supported: use the URL "
               "parameters nfsport=PORT and mountport=PORT", url);
    goto inval;
  }
  if (!(c->server = strndup (host, hl)))
    goto nomem;
  size_t plen = q ? (size_t) (q - slash) : strlen (slash);
  if (!(c->path = strndup (slash, plen)))
    goto nomem;
  if (!q)
    return 0;
  for (const char *p = q + 1; *p; ) {
    size_t len = strcspn (p, "&");
    const char *eq = memchr (p, '=', len);
    if (!eq) {
      kvm_error ("%s: URL parameter '%.*s' has no value", url, (int) len, p);
      goto inval;
    }
    char key[32], val[64];
    size_t kl = eq - p, vl = len - kl - 1;
    if (kl >= sizeof key || vl >= sizeof val) {
      kvm_error ("%s: URL parameter '%.*s' is too long", url, (int) len, p);
      goto inval;
    }
    memcpy (key, p, kl); key[kl] = '\0';
    memcpy (val, eq + 1, vl); val[vl] = '\0';
    int n;
    if (strcmp (key, "uid") == 0) {
      if (parse_int (url, key, val, 0, INT32_MAX, &c->uid) == -1)
        goto fail;
    }
    else if (strcmp (key, "gid") == 0) {
      if (parse_int (url, key, val, 0, INT32_MAX, &c->gid) == -1)
        goto fail;
    }
    else if (strcmp (key, "version") == 0) {
      if (strcmp (val, "3") == 0 || strcmp (val, "4") == 0)
        c->version = val[0] - '0';
      else {
        kvm_error ("%s: version must be 3 or 4", url);
        goto inval;
      }
    }
    else if (strcmp (key, "timeout") == 0) {
      if (parse_int (url, key, val, 1, 86400, &c->timeout) == -1)
        goto fail;
    }
    else if (strcmp (key, "conns") == 0) {
      if (parse_int (url, key, val, 1, MAX_CONNS, &n) == -1)
        goto fail;
      c->conns = n;
    }
    else if (strcmp (key, "nfsport") == 0 || strcmp (key, "mountport") == 0) {
      if (parse_int (url, key, val, 1, 65535, &n) == -1)
        goto fail;
      if (add_arg (&c->args, p, len) == -1)
        goto nomem;
    }
    else {
      kvm_error ("%s: unknown URL parameter '%s' (known: uid, gid, version, "
                 "timeout, conns, nfsport, mountport)", url, key);
      goto inval;
    }
    p += len;
    if (*p == '&')
      p++;
  }
  return 0;

 bad:
  kvm_error ("%s: not an NFS URL of the form nfs://SERVER/EXPORT/PATH", url);
 inval:
  errno = EINVAL;
  goto fail;
 nomem:
  errno = ENOMEM;
  kvm_error ("%s: out of memory", url);
 fail:
  cfg_free (c);
  return -1;
}

/* --- deadlines and the poll loop ----------------------------------------- */

/* One asynchronous call.  The callback stores the status and copies what
 * the caller asked for; it also runs (with an error) when the context is
 * destroyed with the call outstanding, while the struct is still alive.
 */
struct call {
  bool done;
  int status;                   /* >= 0 or -errno */
  void *copy;                   /* read: where the data goes */
  size_t cap;                   /* read: at most this much */
  void *out;                    /* open/opendir: the handle; stat: copy */
  char msg[160];                /* error string from libnfs */
};

static void
call_cb (int err, struct nfs_context *nfs, void *data, void *priv)
{
  struct call *c = priv;
  c->status = err;
  if (err == -EFAULT && nfs) {
    /* libnfs (4.0) reports an NFS error status of a READ or WRITE split
     * into several calls, and an RPC failure, as EFAULT, passing the
     * reply rather than a message: the context has the message, which
     * ends with the error as a negative errno ("NFS: Write failed with
     * NFS3ERR_NOSPC(-28)").  Anything else: EIO.
     */
    const char *e = nfs_get_error (nfs);
    const char *p = e ? strrchr (e, '(') : NULL;
    int n;
    c->status = p && sscanf (p, "(%d)", &n) == 1 && n < 0 && n > -4096
      ? n : -EIO;
    snprintf (c->msg, sizeof c->msg, "%s", e ? e : strerror (EIO));
  }
  else if (err < 0) {
    snprintf (c->msg, sizeof c->msg, "%s", data ? (const char *) data
              : strerror (-err));
  }
  else if (c->copy && data)
    memcpy (c->copy, data, (size_t) err < c->cap ? (size_t) err : c->cap);
  else if (c->out == (void *) 1)
    c->out = data;              /* handle */
  else if (c->out && data)
    memcpy (c->out, data, sizeof (struct nfs_stat_64));
  c->done = true;
}

enum { WAIT_OK = 0, WAIT_BROKEN = -1, WAIT_TIMEOUT = -2 };

/* Service NFS until every one of the N calls is done.  WAIT_BROKEN: the
 * connection failed (the context is unusable); WAIT_TIMEOUT: the
 * deadline passed.
 */
static int
wait_calls (struct nfs_context *nfs, struct call *calls, size_t n,
            const struct timespec *deadline)
{
  for (;;) {
    size_t i;
    for (i = 0; i < n && calls[i].done; i++)
      ;
    if (i == n)
      return WAIT_OK;
    int ms = kvm_ms_left (deadline);
    if (ms == 0)
      return WAIT_TIMEOUT;
    struct pollfd pfd = { .fd = nfs_get_fd (nfs),
                          .events = nfs_which_events (nfs) };
    if (pfd.fd < 0)
      return WAIT_BROKEN;
    int r = poll (&pfd, 1, ms < 1000 ? ms : 1000);
    if (r == -1) {
      if (errno == EINTR)
        continue;
      return WAIT_BROKEN;
    }
    if (nfs_service (nfs, r > 0 ? pfd.revents : 0) < 0)
      return WAIT_BROKEN;
  }
}

/* --- connections ----------------------------------------------------------- */

struct conn {
  struct nfs_context *nfs;
  struct nfsfh *fh;
  /* A write's RPC slots (MAX_INFLIGHT, allocated at its first write):
   * they outlive the write if it times out (late_add takes them over).
   */
  struct call *wcalls;
  struct conn *next;
};

/* Where the file is: the export (or directory of it) mounted, and the
 * file's path below it.  Found by the first connection, shared by all.
 */
struct place {
  char *mount;
  char *rel;
  bool nofollow;                /* a file named by an image: no symlinks */
};

static struct nfs_context *
context_new (const struct nfs_cfg *c)
{
  static unsigned counter;
  struct nfs_context *nfs = nfs_init_context ();
  if (!nfs) {
    kvm_error ("%s: cannot create an NFS context", c->url);
    errno = ENOMEM;
    return NULL;
  }
  if (c->args) {
    char *u;
    if (asprintf (&u, "nfs://%s/?%s", c->server, c->args) == -1) {
      nfs_destroy_context (nfs);
      errno = ENOMEM;
      return NULL;
    }
    struct nfs_url *pu = nfs_parse_url_incomplete (nfs, u);
    free (u);
    if (!pu) {
      kvm_error ("%s: %s", c->url, nfs_get_error (nfs));
      nfs_destroy_context (nfs);
      errno = EINVAL;
      return NULL;
    }
    nfs_destroy_url (pu);
  }
  if (c->uid >= 0)
    nfs_set_uid (nfs, c->uid);
  if (c->gid >= 0)
    nfs_set_gid (nfs, c->gid);
  nfs_set_autoreconnect (nfs, 0);
  if (c->version == 4) {
    char name[64];
    snprintf (name, sizeof name, "nbdkit-kvm-%ld-%u", (long) getpid (),
              __atomic_add_fetch (&counter, 1, __ATOMIC_RELAXED));
    nfs4_set_client_name (nfs, name);
    if (nfs_set_version (nfs, 4) != 0) {
      kvm_error ("%s: NFSv4: %s", c->url, nfs_get_error (nfs));
      nfs_destroy_context (nfs);
      errno = EINVAL;
      return NULL;
    }
  }
  return nfs;
}

/* errno for a failed wait, with a message. */
static void
wait_error (const struct nfs_cfg *c, int w, const char *what)
{
  if (w == WAIT_TIMEOUT)
    kvm_error ("%s: %s: the NFS server did not answer within %d s",
               c->url, what, c->timeout);
  else
    kvm_error ("%s: %s: lost the connection to the NFS server", c->url,
               what);
  errno = EIO;
}

/* Run one started call to completion.  0, or -1 with errno set: EIO for a
 * broken connection or a timeout (*BROKEN set, and the context destroyed
 * and *NFSP cleared here, while CL is still alive: destroying a context
 * completes its outstanding calls), else the call's error.
 */
static int
finish (const struct nfs_cfg *c, struct nfs_context **nfsp, struct call *cl,
        const struct timespec *dl, const char *what, bool *broken, bool quiet)
{
  int w = wait_calls (*nfsp, cl, 1, dl);
  if (w != WAIT_OK) {
    nfs_destroy_context (*nfsp);
    *nfsp = NULL;
    *broken = true;
    if (!quiet)
      wait_error (c, w, what);
    errno = EIO;
    return -1;
  }
  if (cl->status < 0) {
    if (!quiet)
      kvm_error ("%s: %s: %s", c->url, what, cl->msg);
    errno = -cl->status;
    return -1;
  }
  return 0;
}

static int
do_mount (const struct nfs_cfg *c, struct nfs_context **nfsp, const char *mnt,
          const struct timespec *dl, bool *broken, bool quiet)
{
  struct nfs_context *nfs = *nfsp;
  struct call cl = { 0 };
  if (nfs_mount_async (nfs, c->server, mnt, call_cb, &cl) != 0) {
    if (!quiet)
      kvm_error ("%s: mount %s:%s: %s", c->url, c->server, mnt,
                 nfs_get_error (nfs));
    *broken = true;
    errno = EIO;
    return -1;
  }
  return finish (c, nfsp, &cl, dl, "mount", broken, quiet);
}

/* Mount M (taken over) on a new context: the context, with *PL filled in
 * (M, and REL: the file's path below M, "/" if empty); or NULL with errno,
 * and *BROKEN when the server did not answer.
 */
static struct nfs_context *
mount_place (const struct nfs_cfg *c, char *m, const char *rel,
             struct place *pl, const struct timespec *dl, bool *broken,
             bool quiet)
{
  struct nfs_context *nfs = context_new (c);
  if (!nfs) {
    free (m);
    return NULL;
  }
  if (do_mount (c, &nfs, m, dl, broken, quiet) == -1) {
    int e = errno;
    /* A failed MNT may leave the context half set up. */
    if (nfs)
      nfs_destroy_context (nfs);
    free (m);
    errno = e;
    return NULL;
  }
  pl->mount = m;
  pl->rel = strdup (*rel ? rel : "/");
  if (!pl->rel) {
    nfs_destroy_context (nfs);
    free (m);
    pl->mount = NULL;
    errno = ENOMEM;
    return NULL;
  }
  return nfs;
}

/* Mount what holds PATH (a file or directory) on a new context: first its
 * directory (or itself if DIR), then each parent, as servers differ in
 * which directories of an export they let a client mount; if PATH may be
 * a file (!DIR) and no parent can be mounted, PATH itself at last (the
 * root of an export is a directory that only it can mount).  Fills *PL.
 */
static struct nfs_context *
mount_for (const struct nfs_cfg *c, const char *path, bool dir,
           struct place *pl, const struct timespec *dl)
{
  char *m = strdup (path);
  bool self_left = !dir && strcmp (path, "/") != 0, self_now = false;
  if (!m) {
    errno = ENOMEM;
    return NULL;
  }
  if (!dir) {
    char *s = strrchr (m, '/');
    s[s == m ? 1 : 0] = '\0';
  }
  for (;;) {
    bool broken = false;
    bool last = self_now || (!self_left && strcmp (m, "/") == 0);
    size_t ml = strcmp (m, "/") == 0 ? 0 : strlen (m);
    char *mc = strdup (m);
    if (!mc) {
      free (m);
      errno = ENOMEM;
      return NULL;
    }
    struct nfs_context *nfs = mount_place (c, mc, path + ml, pl, dl, &broken,
                                           !last);
    if (nfs) {
      free (m);
      return nfs;
    }
    int e = errno;
    if (broken && !last) {
      /* The server itself is not answering: no use trying parents. */
      kvm_error ("%s: cannot mount %s:%s: no answer from the server",
                 c->url, c->server, m);
      errno = EIO;
      break;
    }
    if (last) {
      errno = e;
      break;
    }
    if (strcmp (m, "/") == 0) {         /* parents tried: PATH itself */
      free (m);
      if (!(m = strdup (path))) {
        errno = ENOMEM;
        return NULL;
      }
      self_left = false;
      self_now = true;
      continue;
    }
    char *s = strrchr (m, '/');
    s[s == m ? 1 : 0] = '\0';
  }
  free (m);
  return NULL;
}

/* lstat PATH (below the mount of NFS) into *ST. */
static int
conn_lstat (const struct nfs_cfg *c, struct nfs_context **nfsp,
            const char *path, struct nfs_stat_64 *st,
            const struct timespec *dl, bool *broken, bool quiet)
{
  struct call cl = { .out = st };
  if (nfs_lstat64_async (*nfsp, path, call_cb, &cl) != 0) {
    if (!quiet)
      kvm_error ("%s: lstat %s: %s", c->url, path, nfs_get_error (*nfsp));
    errno = EIO;
    return -1;
  }
  return finish (c, nfsp, &cl, dl, "lstat", broken, quiet);
}

/* Refuse a symbolic link in any component of REL (below the mount):
 * ELOOP.  The file's inode number in *INO.
 */
static int
check_no_symlinks (const struct nfs_cfg *c, struct nfs_context **nfsp,
                   const char *rel, uint64_t *ino,
                   const struct timespec *dl, bool *broken, bool quiet)
{
  char *p = strdup (rel);
  if (!p) {
    errno = ENOMEM;
    return -1;
  }
  size_t n = strlen (p);
  for (size_t i = 1; i <= n; i++) {
    if (p[i] != '/' && p[i] != '\0')
      continue;
    char save = p[i];
    p[i] = '\0';
    struct nfs_stat_64 st;
    if (conn_lstat (c, nfsp, p, &st, dl, broken, quiet) == -1) {
      free (p);
      return -1;
    }
    if (S_ISLNK (st.nfs_mode)) {
      kvm_error ("%s: %s on the server is a symbolic link: refused (a file "
                 "named by an image is opened without following links)",
                 c->url, p);
      free (p);
      errno = ELOOP;
      return -1;
    }
    *ino = st.nfs_ino;
    p[i] = save;
  }
  free (p);
  return 0;
}

/* For a file named by an image (confined lexically): mount a prefix of
 * PATH's directory and check every component below it (check_no_symlinks),
 * trying the shortest prefix first (the export, or the NFSv4 pseudo
 * root).  A mount of a deeper path would follow symbolic links in it
 * (NFSv4) before anything could be checked; a deeper one is tried only
 * when a shorter one cannot be mounted, or its check fails without
 * meeting a link (a nested export that the shorter mount does not show).
 * A link refuses the file (ELOOP).  Fills *PL.
 */
static struct nfs_context *
mount_top_down (const struct nfs_cfg *c, const char *path, struct place *pl,
                const struct timespec *dl)
{
  const char *end = strrchr (path, '/');
  size_t len = 1;                       /* "/" first */
  for (;;) {
    bool broken = false, last = (size_t) (end - path) <= len;
    char *m = strndup (path, len);
    if (!m) {
      errno = ENOMEM;
      return NULL;
    }
    struct nfs_context *nfs = mount_place (c, m, len == 1 ? path : path + len,
                                           pl, dl, &broken, !last);
    if (nfs) {
      uint64_t ino;
      if (check_no_symlinks (c, &nfs, pl->rel, &ino, dl, &broken,
                             !last) == 0)
        return nfs;
      if (nfs)
        nfs_destroy_context (nfs);
      free (pl->mount);
      free (pl->rel);
      pl->mount = pl->rel = NULL;
      if (errno == ELOOP)
        return NULL;
    }
    int e = errno;
    if (broken && !last) {
      kvm_error ("%s: cannot mount %s: no answer from the server", c->url,
                 c->server);
      errno = EIO;
      return NULL;
    }
    if (last) {
      errno = e;
      return NULL;
    }
    /* The next component. */
    const char *n = strchr (path + len + 1, '/');
    len = n ? (size_t) (n - path) : (size_t) (end - path);
  }
}

/* Connect, mount PL->mount (known) and open the file; or only open it
 * on MOUNTED, a context that has mounted it already (taken over).
 */
static struct conn *
conn_open (const struct nfs_cfg *c, const struct place *pl, int flags,
           const struct timespec *dl, bool quiet, struct nfs_context *mounted)
{
  bool broken = false;
  struct call closing = { 0 };  /* alive until the context is destroyed */
  struct conn *cn = calloc (1, sizeof *cn);
  if (!cn) {
    if (mounted)
      nfs_destroy_context (mounted);
    errno = ENOMEM;
    return NULL;
  }
  if (mounted)
    cn->nfs = mounted;
  else if (!(cn->nfs = context_new (c)))
    goto fail;
  else if (do_mount (c, &cn->nfs, pl->mount, dl, &broken, quiet) == -1)
    goto fail;
  /* A file named by an image: no symbolic link anywhere below the mount
   * (checked first), and the file opened is the one checked (a component
   * swapped for a link in between gives another inode).
   */
  uint64_t ino = 0;
  if (pl->nofollow &&
      check_no_symlinks (c, &cn->nfs, pl->rel, &ino, dl, &broken, quiet) == -1)
    goto fail;
  struct call cl = { .out = (void *) 1 };
  if (nfs_open_async (cn->nfs, pl->rel, flags | (pl->nofollow ? O_NOFOLLOW : 0),
                      call_cb, &cl) != 0) {
    if (!quiet)
      kvm_error ("%s: open: %s", c->url, nfs_get_error (cn->nfs));
    errno = EIO;
    goto fail;
  }
  if (finish (c, &cn->nfs, &cl, dl, "open", &broken, quiet) == -1)
    goto fail;
  cn->fh = cl.out;
  if (pl->nofollow) {
    struct nfs_stat_64 st;
    struct call fc = { .out = &st };
    if (nfs_fstat64_async (cn->nfs, cn->fh, call_cb, &fc) != 0 ||
        finish (c, &cn->nfs, &fc, dl, "fstat", &broken, quiet) == -1) {
      errno = EIO;
      goto fail;
    }
    if (st.nfs_ino != ino) {
      kvm_error ("%s: the file changed while it was opened (a symbolic link "
                 "put in its path?): refused", c->url);
      nfs_close_async (cn->nfs, cn->fh, call_cb, &closing);
      errno = EACCES;
      goto fail;
    }
  }
  return cn;
 fail:;
  int e = errno;
  if (cn->nfs)
    nfs_destroy_context (cn->nfs);
  free (cn);
  errno = e;
  return NULL;
}

static void
noop_cb (int err, struct nfs_context *nfs, void *data, void *priv)
{
  (void) err; (void) nfs; (void) data; (void) priv;
}

/* Close the file and destroy the context (which completes every call
 * still outstanding on it: do it while their struct call is alive).
 */
static void
conn_kill (struct conn *cn)
{
  if (!cn->nfs)
    return;
  /* NFSv3 closes locally (frees the handle); v4 sends CLOSE, which the
   * context's destruction cancels.
   */
  if (cn->fh)
    nfs_close_async (cn->nfs, cn->fh, noop_cb, NULL);
  nfs_destroy_context (cn->nfs);
  cn->nfs = NULL;
  cn->fh = NULL;
}

static void
conn_close (struct conn *cn)
{
  if (!cn)
    return;
  conn_kill (cn);
  free (cn->wcalls);
  free (cn);
}

/* --- the bdev ------------------------------------------------------------- */

/* A connection whose WRITEs timed out: the server may still have them
 * queued (a server that stalls, a network that pauses) and would apply
 * them later, over any write sent since on another connection.  So the
 * connection is not closed but kept here, with its calls, until the
 * server has answered every one of them (or the connection breaks: a
 * server that restarts loses its queue), and no write or flush starts
 * before that.
 */
struct late {
  struct nfs_context *nfs;
  struct nfsfh *fh;
  struct call *calls;           /* what the callbacks still write to */
  size_t n;
  struct late *next;
};

struct nfs_bdev {
  struct bdev bd;
  struct nfs_cfg cfg;
  struct place pl;
  int flags;                    /* of nfs_open */
  uint64_t readmax, writemax;
  pthread_mutex_t lock;
  pthread_cond_t returned;
  struct conn *idle;
  unsigned nconns;
  pthread_mutex_t late_lock;    /* the late list (held briefly) */
  pthread_mutex_t drain_lock;   /* held by the one thread serving it */
  struct late *late;
  unsigned nlate;               /* atomic: entries in late */
};

static void
late_free (struct late *l)
{
  if (l->fh)
    nfs_close_async (l->nfs, l->fh, noop_cb, NULL);
  nfs_destroy_context (l->nfs);   /* completes what is left: calls alive */
  free (l->calls);
  free (l);
}

static void
nfsb_close (struct bdev *bd)
{
  struct nfs_bdev *nb = (struct nfs_bdev *) bd;
  while (nb->idle) {
    struct conn *cn = nb->idle;
    nb->idle = cn->next;
    conn_close (cn);
  }
  while (nb->late) {
    struct late *l = nb->late;
    nb->late = l->next;
    late_free (l);
  }
  pthread_mutex_destroy (&nb->late_lock);
  pthread_mutex_destroy (&nb->drain_lock);
  pthread_cond_destroy (&nb->returned);
  pthread_mutex_destroy (&nb->lock);
  free (nb->pl.mount);
  free (nb->pl.rel);
  cfg_free (&nb->cfg);
  bdev_free_common (bd);
}

/* An idle connection, a new one, or wait for one.  NULL with errno when
 * a new one cannot be made (quietly: the caller retries until its
 * deadline).
 */
static struct conn *
borrow (struct nfs_bdev *nb, const struct timespec *dl)
{
  pthread_mutex_lock (&nb->lock);
  for (;;) {
    if (nb->idle) {
      struct conn *cn = nb->idle;
      nb->idle = cn->next;
      pthread_mutex_unlock (&nb->lock);
      return cn;
    }
    if (nb->nconns < nb->cfg.conns) {
      nb->nconns++;
      pthread_mutex_unlock (&nb->lock);
      struct conn *cn = conn_open (&nb->cfg, &nb->pl, nb->flags, dl, true,
                                   NULL);
      if (cn)
        return cn;
      int e = errno;
      pthread_mutex_lock (&nb->lock);
      nb->nconns--;
      pthread_cond_broadcast (&nb->returned);
      pthread_mutex_unlock (&nb->lock);
      errno = e;
      return NULL;
    }
    /* All connections busy: wait for one, but not past the deadline
     * (a slow server with a long queue must not hold a request longer
     * than timeout=).
     */
    if (pthread_cond_timedwait (&nb->returned, &nb->lock, dl) == ETIMEDOUT) {
      pthread_mutex_unlock (&nb->lock);
      errno = ETIMEDOUT;
      return NULL;
    }
  }
}

static void
give_back (struct nfs_bdev *nb, struct conn *cn, bool broken)
{
  pthread_mutex_lock (&nb->lock);
  if (broken) {
    nb->nconns--;
    pthread_cond_broadcast (&nb->returned);
  }
  else {
    cn->next = nb->idle;
    nb->idle = cn;
    pthread_cond_signal (&nb->returned);
  }
  pthread_mutex_unlock (&nb->lock);
  if (broken)
    conn_close (cn);
}

/* Keep CN's context and CALLS (N, its wcalls) on the late list: taken
 * over (CN is left without a context or slots).  -1 if out of memory.
 */
static int
late_add (struct nfs_bdev *nb, struct conn *cn, struct call *calls, size_t n)
{
  struct late *l = malloc (sizeof *l);
  if (!l)
    return -1;
  *l = (struct late) { .nfs = cn->nfs, .fh = cn->fh, .calls = calls, .n = n };
  cn->nfs = NULL;
  cn->fh = NULL;
  cn->wcalls = NULL;
  pthread_mutex_lock (&nb->late_lock);
  l->next = nb->late;
  nb->late = l;
  __atomic_add_fetch (&nb->nlate, 1, __ATOMIC_RELEASE);
  pthread_mutex_unlock (&nb->late_lock);
  return 0;
}

/* Before a write or flush: wait (until DL) for the server to answer every
 * write that timed out earlier.  0, or -1 with errno EIO.
 */
static int
drain_late (struct nfs_bdev *nb, const struct timespec *dl)
{
  if (__atomic_load_n (&nb->nlate, __ATOMIC_ACQUIRE) == 0)
    return 0;
  /* One thread serves the late contexts (libnfs contexts are not
   * thread-safe), with the list unlocked meanwhile: a write timing out
   * elsewhere adds to it without waiting (late_add).
   */
  if (pthread_mutex_clocklock (&nb->drain_lock, CLOCK_MONOTONIC, dl) != 0)
    goto timeout;
  for (;;) {
    pthread_mutex_lock (&nb->late_lock);
    struct late *l = nb->late;
    if (l)
      nb->late = l->next;
    pthread_mutex_unlock (&nb->late_lock);
    if (!l)
      break;
    if (wait_calls (l->nfs, l->calls, l->n, dl) == WAIT_TIMEOUT) {
      pthread_mutex_lock (&nb->late_lock);
      l->next = nb->late;
      nb->late = l;
      pthread_mutex_unlock (&nb->late_lock);
      pthread_mutex_unlock (&nb->drain_lock);
      goto timeout;
    }
    late_free (l);
    __atomic_sub_fetch (&nb->nlate, 1, __ATOMIC_RELEASE);
  }
  pthread_mutex_unlock (&nb->drain_lock);
  return 0;
 timeout:
  kvm_error ("%s: writes that timed out earlier are still unanswered by the "
             "NFS server after %d s (timeout=): nothing more is written "
             "before they are", nb->bd.name, nb->cfg.timeout);
  errno = EIO;
  return -1;
}

enum op { OP_READ, OP_WRITE, OP_FLUSH };

static const char *
op_name (enum op op)
{
  return op == OP_READ ? "read" : op == OP_WRITE ? "write" : "flush";
}

/* One attempt of a request on connection CN.  0, -1 with errno (a final
 * error), or -2: the connection broke or timed out (retry elsewhere).
 */
static int
attempt (struct nfs_bdev *nb, struct conn *cn, enum op op, char *buf,
         size_t count, uint64_t offset, const struct timespec *dl)
{
  struct call stack_calls[MAX_INFLIGHT];
  struct call *calls = stack_calls;
  struct nfs_context *nfs = cn->nfs;

  if (op == OP_FLUSH) {
    memset (calls, 0, sizeof calls[0]);
    if (nfs_fsync_async (nfs, cn->fh, call_cb, &calls[0]) != 0)
      return -2;
    int w = nfs_service (nfs, POLLOUT) < 0 ? WAIT_BROKEN
      : wait_calls (nfs, calls, 1, dl);
    if (w != WAIT_OK) {
      conn_kill (cn);
      return -2;
    }
    if (calls[0].status < 0) {
      kvm_error ("%s: flush (COMMIT): %s", nb->bd.name, calls[0].msg);
      errno = -calls[0].status;
      return -1;
    }
    return 0;
  }

  if (op == OP_WRITE) {
    if (!cn->wcalls && !(cn->wcalls = malloc (sizeof stack_calls))) {
      errno = ENOMEM;
      return -1;
    }
    calls = cn->wcalls;
  }
  uint64_t maxio = op == OP_READ ? nb->readmax : nb->writemax;
  while (count > 0) {
    size_t n = 0;
    uint64_t off = offset;
    size_t left = count;
    while (n < MAX_INFLIGHT && left > 0) {
      size_t len = left < maxio ? left : maxio;
      char *p = buf + (off - offset);
      int r;
      calls[n] = (struct call) { .cap = len };
      if (op == OP_READ) {
        calls[n].copy = p;
        r = nfs_pread_async (nfs, cn->fh, off, len, call_cb, &calls[n]);
      }
      else
        r = nfs_pwrite_async (nfs, cn->fh, off, len, p, call_cb, &calls[n]);
      if (r != 0) {
        if (n == 0)
          return -2;
        break;                  /* wait for those started */
      }
      n++;
      off += len;
      left -= len;
    }
    /* Send at once: libnfs only queues the calls, and waiting for poll
     * to report the socket writable first costs a system call per
     * request.  What does not fit is sent by wait_calls.
     */
    int w = nfs_service (nfs, POLLOUT) < 0 ? WAIT_BROKEN
      : wait_calls (nfs, calls, n, dl);
    if (w != WAIT_OK) {
      /* Timed-out writes may still be applied by the server. */
      if (!(w == WAIT_TIMEOUT && op == OP_WRITE &&
            late_add (nb, cn, calls, n) == 0))
        conn_kill (cn);
      return -2;
    }
    /* Done in order up to the first short transfer; the rest again. */
    size_t done = 0;
    for (size_t i = 0; i < n; i++) {
      if (calls[i].status < 0) {
        kvm_error ("%s: %s at %" PRIu64 ": %s", nb->bd.name, op_name (op),
                   offset + done, calls[i].msg);
        errno = -calls[i].status;
        return -1;
      }
      size_t got = calls[i].status;
      if (got > calls[i].cap)
        got = calls[i].cap;
      if (got == 0 && op == OP_READ) {
        /* End of file (the file shrank under us): zeroes. */
        memset (buf + done, 0, calls[i].cap);
        got = calls[i].cap;
      }
      else if (got == 0) {
        kvm_error ("%s: write at %" PRIu64 ": the server wrote nothing",
                   nb->bd.name, offset + done);
        errno = EIO;
        return -1;
      }
      done += got;
      if (got < calls[i].cap)
        break;
    }
    buf += done;
    offset += done;
    count -= done;
  }
  return 0;
}

/* A request: borrow a connection, try, and on a broken connection drop it
 * and try again on a new one until the deadline.
 */
static int
run (struct nfs_bdev *nb, enum op op, char *buf, size_t count,
     uint64_t offset)
{
  struct timespec dl = kvm_deadline_in (nb->cfg.timeout);
  unsigned tries = 0;
  if (op != OP_READ && drain_late (nb, &dl) == -1)
    return -1;
  for (;;) {
    struct conn *cn = borrow (nb, &dl);
    if (!cn && errno == ETIMEDOUT) {
      kvm_error ("%s: %s at %" PRIu64 ": every connection (conns=%u) was "
                 "busy for %d s (timeout=)", nb->bd.name, op_name (op),
                 offset, nb->cfg.conns, nb->cfg.timeout);
      errno = EIO;
      return -1;
    }
    if (cn) {
      int r = attempt (nb, cn, op, buf, count, offset, &dl);
      give_back (nb, cn, r == -2);
      if (r != -2) {
        if (tries)
          kvm_debug ("%s: %s succeeded after %u reconnection(s)",
                     nb->bd.name, op_name (op), tries);
        return r;
      }
    }
    tries++;
    if (kvm_ms_left (&dl) == 0) {
      kvm_error ("%s: %s at %" PRIu64 ": no working connection to the NFS "
                 "server within %d s (timeout=)", nb->bd.name, op_name (op),
                 offset, nb->cfg.timeout);
      errno = EIO;
      return -1;
    }
    kvm_debug ("%s: %s: connection to the server lost, reconnecting",
               nb->bd.name, op_name (op));
    int ms = kvm_ms_left (&dl);
    struct timespec ts = { 0, (ms < 200 ? ms : 200) * 1000000L };
    nanosleep (&ts, NULL);
  }
}

static int
nfsb_pread (struct bdev *bd, void *buf, size_t count, uint64_t offset)
{
  return run ((struct nfs_bdev *) bd, OP_READ, buf, count, offset);
}

static int
nfsb_pwrite (struct bdev *bd, const void *buf, size_t count, uint64_t offset,
             uint32_t flags)
{
  (void) flags;                 /* FUA: bdev_pwrite flushes after */
  if (run ((struct nfs_bdev *) bd, OP_WRITE, (char *) buf, count,
           offset) == -1)
    return -1;
  if (bd->growable)             /* size only ever grows: lock-free max */
    bdev_size_grow (bd, offset + count);
  return 0;
}

static int
nfsb_flush (struct bdev *bd)
{
  return run ((struct nfs_bdev *) bd, OP_FLUSH, NULL, 0, 0);
}

static const struct bdev_ops nfs_ops = {
  .format = "raw",
  .close = nfsb_close,
  .pread = nfsb_pread,
  .pwrite = nfsb_pwrite,
  .flush = nfsb_flush,
};

/* fstat of an open connection's file. */
static int
conn_fstat (const struct nfs_cfg *c, struct conn *cn, struct nfs_stat_64 *st,
            const struct timespec *dl)
{
  bool broken = false;
  struct call cl = { .out = st };
  if (nfs_fstat64_async (cn->nfs, cn->fh, call_cb, &cl) != 0) {
    kvm_error ("%s: fstat: %s", c->url, nfs_get_error (cn->nfs));
    errno = EIO;
    return -1;
  }
  return finish (c, &cn->nfs, &cl, dl, "fstat", &broken, false);
}

static uint64_t
io_size (uint64_t server_max)
{
  if (server_max < 4096)
    return 4096;
  return server_max < MAX_IO ? server_max : MAX_IO;
}

struct bdev *
bdev_nfs_open (const char *url, const struct bdev_open_opts *opts)
{
  struct nfs_bdev *nb = bdev_alloc (sizeof *nb, &nfs_ops, url);
  if (!nb)
    return NULL;
  pthread_mutex_init (&nb->lock, NULL);
  pthread_mutex_init (&nb->late_lock, NULL);
  pthread_mutex_init (&nb->drain_lock, NULL);
  pthread_condattr_t ca;                /* deadlines are CLOCK_MONOTONIC */
  pthread_condattr_init (&ca);
  pthread_condattr_setclock (&ca, CLOCK_MONOTONIC);
  pthread_cond_init (&nb->returned, &ca);
  pthread_condattr_destroy (&ca);
  if (cfg_parse (url, &nb->cfg) == -1) {
    int e = errno;
    pthread_cond_destroy (&nb->returned);
    pthread_mutex_destroy (&nb->late_lock);
    pthread_mutex_destroy (&nb->drain_lock);
    pthread_mutex_destroy (&nb->lock);
    bdev_free_common (&nb->bd);
    errno = e;
    return NULL;
  }
  const struct nfs_cfg *c = &nb->cfg;
  bool readonly = opts->readonly;
  if (!readonly && c->version == 4) {
    kvm_debug ("%s: NFSv4 is read-only (libnfs 4.0 cannot send NFSv4 "
               "writes of 4 KiB or more): opening read-only", url);
    readonly = true;
  }
  nb->flags = readonly ? O_RDONLY : O_RDWR;

  struct timespec dl = kvm_deadline_in (c->timeout);
  nb->pl.nofollow = opts->resolved;
  struct nfs_context *nfs = opts->resolved
    ? mount_top_down (c, c->path, &nb->pl, &dl)
    : mount_for (c, c->path, false, &nb->pl, &dl);
  struct conn *cn = NULL;
  if (!nfs)
    goto fail;
  /* The first connection: mounted already, open the file on it. */
  cn = conn_open (c, &nb->pl, nb->flags, &dl, false, nfs);
  if (!cn)
    goto fail;
  struct nfs_stat_64 st;
  if (conn_fstat (c, cn, &st, &dl) == -1)
    goto fail;
  if (!S_ISREG (st.nfs_mode)) {
    kvm_error ("%s: not a regular file", url);
    errno = EINVAL;
    goto fail;
  }
  nb->readmax = io_size (nfs_get_readmax (cn->nfs));
  nb->writemax = io_size (nfs_get_writemax (cn->nfs));
  nb->idle = cn;
  nb->nconns = 1;
  nb->bd.size = st.nfs_size;
  nb->bd.readonly = readonly;
  nb->bd.caps = BDEV_CAN_MULTI_CONN;  /* COMMIT is per file, server-wide */
  nb->bd.growable = opts->growable;
  kvm_debug ("%s: mounted %s:%s, file %s, %" PRIu64 " bytes, NFSv%d, "
             "I/O %" PRIu64 "/%" PRIu64 " bytes", url, c->server,
             nb->pl.mount, nb->pl.rel, nb->bd.size, c->version, nb->readmax,
             nb->writemax);
  return &nb->bd;

 fail:;
  int e = errno;
  conn_close (cn);
  nfsb_close (&nb->bd);
  errno = e ? e : EIO;
  return NULL;
}

/* --- files and directories, for the nfs plugin ----------------------------- */

/* Mount what holds URL's path (itself if DIR) on a temporary context. */
static struct nfs_context *
tmp_mount (const char *url, struct nfs_cfg *c, struct place *pl, bool dir,
           struct timespec *dl)
{
  memset (pl, 0, sizeof *pl);
  if (cfg_parse (url, c) == -1)
    return NULL;
  *dl = kvm_deadline_in (c->timeout);
  struct nfs_context *nfs = mount_for (c, c->path, dir, pl, dl);
  if (!nfs)
    cfg_free (c);
  return nfs;
}

static void
tmp_done (struct nfs_context *nfs, struct nfs_cfg *c, struct place *pl)
{
  if (nfs)
    nfs_destroy_context (nfs);
  cfg_free (c);
  free (pl->mount);
  free (pl->rel);
}

int
bdev_nfs_create (const char *url, uint64_t size)
{
  struct nfs_cfg c;
  struct place pl;
  struct timespec dl;
  bool broken = false;
  int r = -1;
  struct nfs_context *nfs = tmp_mount (url, &c, &pl, false, &dl);
  if (!nfs)
    return -1;
  if (c.version == 4) {
    kvm_error ("%s: cannot create files over NFSv4 (read-only)", url);
    errno = EROFS;
    goto out;
  }
  struct call cl = { .out = (void *) 1 };
  if (nfs_create_async (nfs, pl.rel, O_RDWR | O_EXCL, 0644, call_cb,
                        &cl) != 0 ||
      finish (&c, &nfs, &cl, &dl, "create", &broken, false) == -1)
    goto out;
  struct nfsfh *fh = cl.out;
  struct call tc = { 0 };
  if (nfs_ftruncate_async (nfs, fh, size, call_cb, &tc) != 0 ||
      finish (&c, &nfs, &tc, &dl, "setting the size", &broken, false) == -1) {
    int e = errno;
    struct call uc = { 0 };
    if (nfs) {
      nfs_close_async (nfs, fh, noop_cb, NULL);
      if (nfs_unlink_async (nfs, pl.rel, call_cb, &uc) == 0)
        (void) finish (&c, &nfs, &uc, &dl, "removing it", &broken, true);
    }
    errno = e;
    goto out;
  }
  nfs_close_async (nfs, fh, noop_cb, NULL);
  r = 0;
 out:
  tmp_done (nfs, &c, &pl);
  return r;
}

int
bdev_nfs_stat (const char *url, uint64_t *size)
{
  struct nfs_cfg c;
  struct place pl;
  struct timespec dl;
  bool broken = false;
  struct nfs_context *nfs = tmp_mount (url, &c, &pl, false, &dl);
  if (!nfs)
    return -1;
  struct nfs_stat_64 st;
  struct call cl = { .out = &st };
  int r = -1;
  if (nfs_stat64_async (nfs, pl.rel, call_cb, &cl) != 0) {
    kvm_error ("%s: stat: %s", url, nfs_get_error (nfs));
    errno = EIO;
  }
  else if (finish (&c, &nfs, &cl, &dl, "stat", &broken, true) == -1) {
    if (!broken && errno == ENOENT)
      r = 0;
    else
      kvm_error ("%s: stat: %s", url, broken ? "no answer from the server"
                 : cl.msg);
  }
  else if (S_ISDIR (st.nfs_mode))
    r = 2;
  else {
    r = 1;
    if (size)
      *size = st.nfs_size;
  }
  tmp_done (nfs, &c, &pl);
  return r;
}

int
bdev_nfs_list (const char *url,
               int (*fn) (void *opaque, const char *name, uint64_t size),
               void *opaque)
{
  struct nfs_cfg c;
  struct place pl;
  struct timespec dl;
  bool broken = false;
  struct nfs_context *nfs = tmp_mount (url, &c, &pl, true, &dl);
  if (!nfs)
    return -1;
  int r = -1;
  struct call cl = { .out = (void *) 1 };
  if (nfs_opendir_async (nfs, pl.rel, call_cb, &cl) != 0 ||
      finish (&c, &nfs, &cl, &dl, "opendir", &broken, false) == -1)
    goto out;
  struct nfsdir *d = cl.out;
  struct nfsdirent *e;
  r = 0;
  while ((e = nfs_readdir (nfs, d)) != NULL)
    if ((S_ISREG (e->mode) || e->type == NF3REG) && fn (opaque, e->name, e->size) == -1) {
      r = -1;
      break;
    }
  nfs_closedir (nfs, d);
 out:
  tmp_done (nfs, &c, &pl);
  return r;
}
