/* SPDX-License-Identifier: BSD-3-Clause */
/* nbdkit rbd plugin: serve Ceph RBD images over NBD through librbd.
 *
 * Design:
 * - One cluster connection (rados_t + one ioctx on pool[/namespace]) per
 *   nbdkit process.  librados starts threads, so it is created in
 *   .after_fork (after nbdkit has daemonised), never earlier.  .get_ready
 *   only checks parameters.
 * - Image handles are shared: every NBD connection to the same (image,
 *   snapshot, read-only) uses one refcounted librbd handle.  librbd image
 *   handles are thread-safe, and sharing gives all connections a single
 *   librbd cache and a single exclusive-lock owner, which is what makes
 *   .can_multi_conn true: a flush on any connection flushes the one cache
 *   that every connection's writes went through, and several writing
 *   connections do not pass the exclusive lock back and forth.
 * - Thread model PARALLEL: every request is one rbd_aio_* call plus a wait
 *   on its completion, so many requests per connection are in flight in
 *   librbd at once.
 */

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <rados/librados.h>
#include <rbd/librbd.h>

#define NBDKIT_API_VERSION 2
#include <nbdkit-plugin.h>

#include "kvm_version.h"
#include "util/checked.h"
#include "util/sort.h"
#include "util/grow.h"

#define THREAD_MODEL NBDKIT_THREAD_MODEL_PARALLEL
#define UNUSED __attribute__ ((unused))

/* -D rbd.extents=1: log every extent reported from rbd_diff_iterate2.
 * -D rbd.zero_fallback=1: never use rbd_aio_write_zeroes (tests the
 *    discard + explicit zeroes fallback used with older librbd). */
NBDKIT_DLL_PUBLIC int rbd_debug_extents = 0;
NBDKIT_DLL_PUBLIC int rbd_debug_zero_fallback = 0;

/* Parameters. */
static char *pool;
static char *nspace;
static char *image_name;
static char *snapshot;
static char *conf_file;
static char *client_id;
static char *keyring;
static char *key;               /* from nbdkit_read_password */
static char *mon_host;
static unsigned connect_timeout = 30;  /* seconds, client_mount_timeout */
static unsigned op_timeout = 0;        /* seconds, 0 = librados default */

struct ceph_opt {
  char *name;
  char *value;
};
static struct ceph_opt *ceph_opts;
static size_t nr_ceph_opts;

/* The cluster connection (after .after_fork). */
static rados_t cluster;
static bool cluster_created;
static rados_ioctx_t ioctx;
static bool ioctx_created;
static bool cluster_stuck;      /* a request never returned: no shutdown */

/* Shared image handles. */
struct image {
  struct image *next;
  char *name;
  bool readonly;
  unsigned refs;
  rbd_image_t img;
  char *description;            /* malloc'd, may be NULL */
};
static struct image *images;
static pthread_mutex_t images_lock = PTHREAD_MUTEX_INITIALIZER;

/* Per NBD connection. */
struct handle {
  struct image *im;
};

static void
rbdp_unload (void)
{
  size_t i;

  free (pool);
  free (nspace);
  free (image_name);
  free (snapshot);
  free (conf_file);
  free (client_id);
  free (keyring);
  free (key);
  free (mon_host);
  for (i = 0; i < nr_ceph_opts; i++) {
    free (ceph_opts[i].name);
    free (ceph_opts[i].value);
  }
  free (ceph_opts);
}

static void
rbdp_cleanup (void)
{
  /* Every connection has been closed by now. */
  if (cluster_stuck)
    return;
  if (ioctx_created)
    rados_ioctx_destroy (ioctx);
  ioctx_created = false;
  if (cluster_created)
    rados_shutdown (cluster);
  cluster_created = false;
}

static int
set_string (char **dst, const char *key_name, const char *value)
{
  if (*dst) {
    nbdkit_error ("%s= given more than once", key_name);
    return -1;
  }
  if (*value == '\0') {
    nbdkit_error ("%s= must not be empty", key_name);
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
parse_seconds (const char *key_name, const char *value, unsigned *r)
{
  char *end;
  unsigned long v;

  errno = 0;
  v = strtoul (value, &end, 10);
  if (errno || end == value || *end != '\0' || value[0] == '-' ||
      v > 86400) {
    nbdkit_error ("%s=%s: expecting a number of seconds (0..86400)",
                  key_name, value);
    return -1;
  }
  *r = v;
  return 0;
}

static int
rbdp_config (const char *k, const char *value)
{
  if (strcmp (k, "pool") == 0)
    return set_string (&pool, k, value);
  else if (strcmp (k, "namespace") == 0)
    return set_string (&nspace, k, value);
  else if (strcmp (k, "image") == 0)
    return set_string (&image_name, k, value);
  else if (strcmp (k, "snapshot") == 0 || strcmp (k, "snap") == 0)
    return set_string (&snapshot, "snapshot", value);
  else if (strcmp (k, "conf") == 0)
    return set_string (&conf_file, k, value);
  else if (strcmp (k, "id") == 0 || strcmp (k, "user") == 0) {
    /* Accept "admin" as well as "client.admin". */
    if (strncmp (value, "client.", 7) == 0)
      value += 7;
    return set_string (&client_id, "id", value);
  }
  else if (strcmp (k, "keyring") == 0)
    return set_string (&keyring, k, value);
  else if (strcmp (k, "key") == 0) {
    if (key) {
      nbdkit_error ("key= given more than once");
      return -1;
    }
    return nbdkit_read_password (value, &key);
  }
  else if (strcmp (k, "mon-host") == 0 || strcmp (k, "mon_host") == 0)
    return set_string (&mon_host, "mon-host", value);
  else if (strcmp (k, "connect-timeout") == 0) {
    if (parse_seconds (k, value, &connect_timeout) == -1)
      return -1;
    if (connect_timeout == 0) {
      /* Ceph would take 0 as "wait forever": the point of the option is
       * the opposite. */
      nbdkit_error ("connect-timeout=0: must be at least 1 second");
      return -1;
    }
    return 0;
  }
  else if (strcmp (k, "op-timeout") == 0)
    return parse_seconds (k, value, &op_timeout);
  else if (strncmp (k, "ceph.", 5) == 0 && k[5] != '\0') {
    struct ceph_opt *n;

    n = realloc (ceph_opts, (nr_ceph_opts + 1) * sizeof *n);
    if (n == NULL) {
      nbdkit_error ("realloc: %m");
      return -1;
    }
    ceph_opts = n;
    n[nr_ceph_opts].name = strdup (&k[5]);
    n[nr_ceph_opts].value = strdup (value);
    if (n[nr_ceph_opts].name == NULL || n[nr_ceph_opts].value == NULL) {
      free (n[nr_ceph_opts].name);
      free (n[nr_ceph_opts].value);
      nbdkit_error ("strdup: %m");
      return -1;
    }
    nr_ceph_opts++;
    return 0;
  }
  else {
    nbdkit_error ("unknown parameter '%s'", k);
    return -1;
  }
}

static int
rbdp_config_complete (void)
{
  if (pool == NULL) {
    nbdkit_error ("you must give the pool= parameter");
    return -1;
  }
  if (snapshot && image_name == NULL) {
    nbdkit_error ("snapshot= needs image=");
    return -1;
  }
  return 0;
}

#define rbdp_config_help \
  "pool=POOL             (required) Ceph pool.\n" \
  "namespace=NS          RADOS namespace inside the pool.\n" \
  "image=IMAGE           Image to serve (default: the export name selects\n" \
  "                      one of the pool's images).\n" \
  "snapshot=SNAP         Serve this snapshot of image= (read-only).\n" \
  "conf=CEPH.CONF        Ceph configuration file.\n" \
  "id=ID | user=ID       cephx client id (default: admin).\n" \
  "keyring=FILE          cephx keyring.\n" \
  "key=SECRET            cephx key (password syntax: -, +FILE, -FD).\n" \
  "mon-host=ADDRS        Monitor addresses (overrides conf=).\n" \
  "connect-timeout=SECS  Give up connecting after SECS (default 30).\n" \
  "op-timeout=SECS       Fail OSD/monitor operations after SECS (default:\n" \
  "                      never).\n" \
  "ceph.OPTION=VALUE     Any Ceph configuration option."

static void
rbdp_dump_plugin (void)
{
  int maj, min, ext;

  rbd_version (&maj, &min, &ext);
  printf ("rbd_librbd_version=%d.%d.%d\n", maj, min, ext);
  rados_version (&maj, &min, &ext);
  printf ("rbd_librados_version=%d.%d.%d\n", maj, min, ext);
#ifdef LIBRBD_SUPPORTS_WRITE_ZEROES
  printf ("rbd_write_zeroes=yes\n");
#else
  printf ("rbd_write_zeroes=no\n");
#endif
}

static int
rbdp_get_ready (void)
{
  /* Nothing that starts threads may happen here: nbdkit may still fork. */
  if (nspace && strchr (nspace, '/')) {
    nbdkit_error ("namespace=%s: must not contain '/'", nspace);
    return -1;
  }
  return 0;
}

static const char *
describe_connect_error (int r)
{
  switch (-r) {
  case EACCES: case EPERM:
    return "authentication failed (wrong key, keyring or client id?)";
  case ETIMEDOUT:
    return "timed out: no monitor answered (check mon-host/conf and "
      "connect-timeout)";
  case ENOENT:
    return "no monitor address or key found (give conf=, mon-host=, "
      "keyring= or key=)";
  case EINVAL:
    return "invalid configuration (check conf=, mon-host=, key=)";
  default:
    return "connection failed";
  }
}

static int
conf_set (const char *name, const char *value)
{
  int r = rados_conf_set (cluster, name, value);
  if (r < 0) {
    nbdkit_error ("cannot set Ceph option %s=%s: %s", name, value,
                  r == -ENOENT ? "no such option" : strerror (-r));
    return -1;
  }
  return 0;
}

/* Open an image once (read-only) to check that it and the snapshot
 * exist, giving a clear message if not. */
static int
check_image (const char *name, const char *snap)
{
  rbd_image_t img;
  int r;

  r = rbd_open_read_only (ioctx, name, &img, NULL);
  if (r < 0) {
    if (r == -ENOENT)
      nbdkit_error ("image '%s' not found in pool '%s'%s%s",
                    name, pool, nspace ? " namespace " : "",
                    nspace ? nspace : "");
    else
      nbdkit_error ("cannot open image '%s' in pool '%s': %s",
                    name, pool, strerror (-r));
    return -1;
  }
  if (snap) {
    bool exists = false;
    r = rbd_snap_exists (img, snap, &exists);
    if (r < 0 || !exists) {
      if (r < 0)
        nbdkit_error ("cannot look up snapshot '%s' of image '%s': %s",
                      snap, name, strerror (-r));
      else
        nbdkit_error ("snapshot '%s' of image '%s' not found", snap, name);
      rbd_close (img);
      return -1;
    }
  }
  rbd_close (img);
  return 0;
}

static int connect_cluster (void);
static int bounded_checks (void);
static int startup_checks (void);

static int
rbdp_after_fork (void)
{
  /* On failure nbdkit exits at once: stop librados's threads first, or
   * they may still run (or hold libc locks) while exit handlers run. */
  if (connect_cluster () == -1) {
    rbdp_cleanup ();
#ifdef __SANITIZE_ADDRESS__
    /* Only in ASan builds (nbdkit runs with libasan preloaded): after a
     * failed rados_connect, glibc's internal locale lock is left in a
     * state where the next freelocale (p11-kit's destructor, run by
     * exit) blocks forever, so nbdkit would hang instead of exiting.
     * The same lock is already odd in an ASan-preloaded "nbdkit null"
     * and fine without ASan, so this is an ASan/glibc/Ceph interaction,
     * not our code.  Exit the way nbdkit would, minus exit handlers. */
    fflush (NULL);
    _exit (EXIT_FAILURE);
#endif
    return -1;
  }
  return 0;
}

static int
connect_cluster (void)
{
  char name[256];
  char buf[32];
  size_t i;
  int r;

  snprintf (name, sizeof name, "client.%s", client_id ? client_id : "admin");
  r = rados_create2 (&cluster, "ceph", name, 0);
  if (r < 0) {
    nbdkit_error ("rados_create2: %s", strerror (-r));
    return -1;
  }
  cluster_created = true;

  if (conf_file) {
    r = rados_conf_read_file (cluster, conf_file);
    if (r < 0) {
      nbdkit_error ("cannot read Ceph configuration %s: %s",
                    conf_file, strerror (-r));
      return -1;
    }
  }
  else
    /* The default search path ($CEPH_CONF, /etc/ceph/ceph.conf, ...);
     * a missing file is fine when mon-host= is given. */
    (void) rados_conf_read_file (cluster, NULL);

  if (mon_host && conf_set ("mon_host", mon_host) == -1)
    return -1;
  if (keyring && conf_set ("keyring", keyring) == -1)
    return -1;
  if (key && conf_set ("key", key) == -1)
    return -1;
  snprintf (buf, sizeof buf, "%u", connect_timeout);
  if (conf_set ("client_mount_timeout", buf) == -1)
    return -1;
  if (op_timeout) {
    snprintf (buf, sizeof buf, "%u", op_timeout);
    if (conf_set ("rados_osd_op_timeout", buf) == -1 ||
        conf_set ("rados_mon_op_timeout", buf) == -1)
      return -1;
  }
  else {
    /* Still bound monitor commands (pool lookups) by the connect
     * timeout, so that a monitor that goes away cannot hang us. */
    snprintf (buf, sizeof buf, "%u", connect_timeout);
    if (conf_set ("rados_mon_op_timeout", buf) == -1)
      return -1;
  }
  /* librbd copies each write buffer unless told otherwise; the copy only
   * protects applications that change a buffer while its write is in
   * flight, and nbdkit's buffer stays untouched until librbd completes
   * the write (librbd delays the completion until it has dropped every
   * reference to the buffer).  With librbd's cache on, librbd copies into
   * the cache whatever this says.  ceph.rbd_disable_zero_copy_writes=true
   * (below) restores the copy.
   */
  if (conf_set ("rbd_disable_zero_copy_writes", "false") == -1)
    return -1;
  for (i = 0; i < nr_ceph_opts; i++)
    if (conf_set (ceph_opts[i].name, ceph_opts[i].value) == -1)
      return -1;
  {
    char cache[16] = "?", nocopy[16] = "?";
    rados_conf_get (cluster, "rbd_cache", cache, sizeof cache);
    rados_conf_get (cluster, "rbd_disable_zero_copy_writes",
                    nocopy, sizeof nocopy);
    nbdkit_debug ("rbd: rbd_cache=%s rbd_disable_zero_copy_writes=%s: "
                  "writes are %s", cache, nocopy,
                  strcmp (cache, "false") == 0 && strcmp (nocopy, "false") == 0
                  ? "zero-copy" : "copied by librbd");
  }

  nbdkit_debug ("rbd: connecting to the Ceph cluster as %s", name);
  r = rados_connect (cluster);
  if (r < 0) {
    nbdkit_error ("cannot connect to the Ceph cluster as %s: %s: %s",
                  name, describe_connect_error (r), strerror (-r));
    return -1;
  }

  r = rados_ioctx_create (cluster, pool, &ioctx);
  if (r < 0) {
    if (r == -ENOENT)
      nbdkit_error ("pool '%s' does not exist", pool);
    else
      nbdkit_error ("cannot open pool '%s': %s", pool, strerror (-r));
    return -1;
  }
  ioctx_created = true;
  return bounded_checks ();
}

/* The checks after connecting read objects from the OSDs, and librados
 * waits for ever for an OSD that is down (unless op-timeout= is set).
 * So they run in a thread that we wait for at most connect-timeout
 * seconds: start-up fails with a clear message instead of hanging. */
static struct {
  pthread_mutex_t lock;
  pthread_cond_t cond;
  bool done;
  int ret;
} checks = { PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, false, 0 };

static void *
checks_thread (void *arg UNUSED)
{
  int r = startup_checks ();

  pthread_mutex_lock (&checks.lock);
  checks.ret = r;
  checks.done = true;
  pthread_cond_signal (&checks.cond);
  pthread_mutex_unlock (&checks.lock);
  return NULL;
}

static int
bounded_checks (void)
{
  pthread_t thread;
  struct timespec deadline;
  int r, err = 0;

  r = pthread_create (&thread, NULL, checks_thread, NULL);
  if (r != 0) {
    errno = r;
    nbdkit_error ("pthread_create: %m");
    return -1;
  }
  clock_gettime (CLOCK_REALTIME, &deadline);
  deadline.tv_sec += connect_timeout;

  pthread_mutex_lock (&checks.lock);
  while (!checks.done && err != ETIMEDOUT)
    err = pthread_cond_timedwait (&checks.cond, &checks.lock, &deadline);
  r = checks.done ? checks.ret : -1;
  pthread_mutex_unlock (&checks.lock);

  if (checks.done) {
    pthread_join (thread, NULL);
    return r;
  }
  /* The thread is stuck inside librados: leave it, and do not shut
   * down the cluster handle it uses (that would wait for it too). */
  pthread_detach (thread);
  cluster_stuck = true;
  nbdkit_error ("the Ceph cluster did not answer within %u s "
                "(connect-timeout) while opening pool '%s'%s%s%s%s: "
                "are the OSDs up and the placement groups active?",
                connect_timeout, pool,
                nspace ? " namespace " : "", nspace ? nspace : "",
                image_name ? " image " : "", image_name ? image_name : "");
  return -1;
}

static int
startup_checks (void)
{
  int r;

  if (nspace) {
    bool exists = false;
    r = rbd_namespace_exists (ioctx, nspace, &exists);
    if (r < 0) {
      nbdkit_error ("cannot look up namespace '%s' in pool '%s': %s",
                    nspace, pool, strerror (-r));
      return -1;
    }
    if (!exists) {
      nbdkit_error ("namespace '%s' does not exist in pool '%s'",
                    nspace, pool);
      return -1;
    }
    rados_ioctx_set_namespace (ioctx, nspace);
  }

  if (image_name)
    return check_image (image_name, snapshot);
  else {
    /* Check that the pool (and namespace) is usable for RBD. */
    size_t n = 0;
    r = rbd_list2 (ioctx, NULL, &n);
    if (r < 0 && r != -ERANGE) {
      nbdkit_error ("cannot list the images of pool '%s'%s%s: %s", pool,
                    nspace ? " namespace " : "", nspace ? nspace : "",
                    strerror (-r));
      return -1;
    }
  }
  return 0;
}

static int
rbdp_list_exports (int readonly __attribute__ ((unused)),
                   int is_tls __attribute__ ((unused)),
                   struct nbdkit_exports *exports)
{
  rbd_image_spec_t *specs = NULL;
  size_t n = 64, i;
  int r;

  if (image_name)
    return nbdkit_add_export (exports, image_name, NULL);

  for (;;) {
    free (specs);
    specs = calloc (n, sizeof *specs);
    if (specs == NULL) {
      nbdkit_error ("calloc: %m");
      return -1;
    }
    r = rbd_list2 (ioctx, specs, &n);
    if (r != -ERANGE)
      break;
  }
  if (r < 0) {
    free (specs);
    nbdkit_error ("cannot list the images of pool '%s': %s", pool,
                  strerror (-r));
    return -1;
  }
  for (i = 0; i < n; i++) {
    if (r == 0 && nbdkit_add_export (exports, specs[i].name, NULL) == -1)
      r = -1;
  }
  rbd_image_spec_list_cleanup (specs, n);
  free (specs);
  return r < 0 ? -1 : 0;
}

static const char *
rbdp_default_export (int readonly __attribute__ ((unused)),
                     int is_tls __attribute__ ((unused)))
{
  return image_name ? image_name : "";
}

/* A human-readable description: size, features, parent.  Returns a
 * malloc'd string (or NULL).  The image is shared by connections, so the
 * string belongs to it, not to one connection's nbdkit_*_intern pool. */
static char *
make_description (rbd_image_t img, const char *name)
{
  uint64_t size = 0, features = 0;
  char feat[256] = "";
  size_t featlen = sizeof feat;
  rbd_linked_image_spec_t parent;
  rbd_snap_spec_t psnap;
  char *parent_str = NULL;
  char *ret = NULL;

  if (rbd_get_size (img, &size) < 0)
    size = 0;
  if (rbd_get_features (img, &features) < 0 ||
      rbd_features_to_string (features, feat, &featlen) < 0)
    snprintf (feat, sizeof feat, "0x%" PRIx64, features);

  memset (&parent, 0, sizeof parent);
  memset (&psnap, 0, sizeof psnap);
  if (rbd_get_parent (img, &parent, &psnap) == 0) {
    if (asprintf (&parent_str, ", parent %s%s%s/%s@%s",
                  parent.pool_name ? parent.pool_name : "?",
                  parent.pool_namespace && *parent.pool_namespace ? "/" : "",
                  parent.pool_namespace ? parent.pool_namespace : "",
                  parent.image_name ? parent.image_name : "?",
                  psnap.name ? psnap.name : "?") == -1)
      parent_str = NULL;
    rbd_linked_image_spec_cleanup (&parent);
    rbd_snap_spec_cleanup (&psnap);
  }

  if (asprintf (&ret, "rbd image %s/%s%s%s%s%s: %" PRIu64
                " bytes, features %s%s",
                pool, nspace ? nspace : "", nspace ? "/" : "",
                name, snapshot ? "@" : "", snapshot ? snapshot : "",
                size, *feat ? feat : "none",
                parent_str ? parent_str : "") == -1)
    ret = NULL;
  free (parent_str);
  return ret;
}

/* The open image NAME (read-only or not), with one more reference, or
 * NULL.  Lock held.
 */
static struct image *
find_image_locked (const char *name, int readonly)
{
  struct image *im;
  for (im = images; im; im = im->next)
    if (im->readonly == !!readonly && strcmp (im->name, name) == 0) {
      im->refs++;
      break;
    }
  return im;
}

static struct image *
find_image (const char *name, int readonly)
{
  pthread_mutex_lock (&images_lock);
  struct image *im = find_image_locked (name, readonly);
  pthread_mutex_unlock (&images_lock);
  return im;
}

static void *
rbdp_open (int readonly)
{
  const char *name = image_name;
  struct handle *h;
  struct image *im;
  int r;

  if (name == NULL) {
    name = nbdkit_export_name ();
    if (name == NULL || *name == '\0') {
      nbdkit_error ("no image selected: give image= or connect with the "
                    "image name as the export name (nbdinfo --list shows "
                    "the images of pool '%s')", pool);
      return NULL;
    }
  }
  if (snapshot)
    readonly = 1;

  h = calloc (1, sizeof *h);
  if (h == NULL) {
    nbdkit_error ("calloc: %m");
    return NULL;
  }

  if ((h->im = find_image (name, readonly)) != NULL)
    return h;

  /* Opened without the lock: an open can wait on the cluster for long
   * (an inactive placement group), and must not hold up the opens and
   * closes of other images meanwhile.
   */
  im = calloc (1, sizeof *im);
  if (im == NULL || (im->name = strdup (name)) == NULL) {
    nbdkit_error ("calloc: %m");
    goto err;
  }
  im->readonly = !!readonly;
  if (readonly)
    r = rbd_open_read_only (ioctx, name, &im->img, snapshot);
  else
    r = rbd_open (ioctx, name, &im->img, NULL);
  if (r < 0) {
    if (r == -ENOENT && snapshot)
      nbdkit_error ("image '%s' or its snapshot '%s' not found in pool '%s'",
                    name, snapshot, pool);
    else if (r == -ENOENT)
      nbdkit_error ("image '%s' not found in pool '%s'", name, pool);
    else
      nbdkit_error ("cannot open image '%s' in pool '%s': %s",
                    name, pool, strerror (-r));
    goto err;
  }
  nbdkit_debug ("rbd: opened image %s%s%s (%s)", name,
                snapshot ? "@" : "", snapshot ? snapshot : "",
                readonly ? "read-only" : "read-write");
  im->description = make_description (im->img, name);
  im->refs = 1;

  /* Another connection may have opened it meanwhile: share theirs. */
  pthread_mutex_lock (&images_lock);
  if ((h->im = find_image_locked (name, readonly)) == NULL) {
    im->next = images;
    images = im;
    h->im = im;
    im = NULL;
  }
  pthread_mutex_unlock (&images_lock);
  if (im) {
    rbd_close (im->img);
    free (im->description);
    free (im->name);
    free (im);
  }
  return h;

 err:
  if (im)
    free (im->name);
  free (im);
  free (h);
  return NULL;
}

static void
rbdp_close (void *handle)
{
  struct handle *h = handle;
  struct image *im = h->im, **pp;
  int r;

  pthread_mutex_lock (&images_lock);
  if (--im->refs == 0) {
    for (pp = &images; *pp; pp = &(*pp)->next)
      if (*pp == im) {
        *pp = im->next;
        break;
      }
  }
  else
    im = NULL;
  pthread_mutex_unlock (&images_lock);

  if (im) {
    r = rbd_close (im->img);
    if (r < 0)
      nbdkit_debug ("rbd: closing image %s: %s", im->name, strerror (-r));
    free (im->name);
    free (im->description);
    free (im);
  }
  free (h);
}

static const char *
rbdp_export_description (void *handle)
{
  struct handle *h = handle;

  if (h->im->description == NULL)
    return NULL;
  /* A copy that lives as long as this connection. */
  return nbdkit_strdup_intern (h->im->description);
}

static int64_t
rbdp_get_size (void *handle)
{
  struct handle *h = handle;
  uint64_t size;
  int r;

  r = rbd_get_size (h->im->img, &size);
  if (r < 0) {
    nbdkit_error ("rbd_get_size: %s", strerror (-r));
    return -1;
  }
  if (size > INT64_MAX) {
    nbdkit_error ("image size %" PRIu64 " is too large", size);
    return -1;
  }
  return size;
}

static int
rbdp_can_write (void *handle)
{
  struct handle *h = handle;
  return !h->im->readonly;
}

static int
rbdp_can_multi_conn (void *handle UNUSED)
{
  /* All connections to one image in this process share one librbd
   * handle (one cache, one exclusive-lock owner): see the top comment. */
  return 1;
}

static int
rbdp_can_flush (void *handle UNUSED)
{
  return 1;
}

static int
rbdp_can_fua (void *handle UNUSED)
{
  return NBDKIT_FUA_NATIVE;
}

static int
rbdp_can_trim (void *handle UNUSED)
{
  return 1;
}

static int
rbdp_can_zero (void *handle UNUSED)
{
  return 1;
}

/* Advertised (nbdkit 1.32 aborts on a fast zero it did not advertise);
 * rbdp_zero answers every one with ENOTSUP.
 */
static int
rbdp_can_fast_zero (void *handle UNUSED)
{
  return 1;
}

/* Whether rbd_diff_iterate2 gives a fast and correct map: the image must
 * have fast-diff (which implies object-map) and neither map may be
 * flagged invalid. */
static bool
fast_diff_usable (rbd_image_t img, const char **why)
{
  uint64_t features, flags;

  if (rbd_get_features (img, &features) < 0) {
    *why = "cannot read the image features";
    return false;
  }
  if (!(features & RBD_FEATURE_FAST_DIFF)) {
    *why = "the image has no fast-diff feature";
    return false;
  }
  if (rbd_get_flags (img, &flags) < 0) {
    *why = "cannot read the image flags";
    return false;
  }
  if (flags & (RBD_FLAG_FAST_DIFF_INVALID | RBD_FLAG_OBJECT_MAP_INVALID)) {
    *why = "the image's object map / fast-diff is flagged invalid";
    return false;
  }
  return true;
}

static int
rbdp_can_extents (void *handle)
{
  struct handle *h = handle;
  const char *why;

  if (!fast_diff_usable (h->im->img, &why)) {
    nbdkit_debug ("rbd: %s: %s, so every block is reported as data",
                  h->im->name, why);
    return 0;
  }
  return 1;
}

/* Run one asynchronous operation and wait for it: CALL submits it with
 * the fresh completion "c" and returns librbd's submission status; the
 * operation's result ends up in the caller's "aio_ret". */
#define AIO(what, call)                                                 \
  do {                                                                  \
    rbd_completion_t c;                                                 \
    int r_ = rbd_aio_create_completion (NULL, NULL, &c);                \
    if (r_ < 0) {                                                       \
      nbdkit_error ("rbd_aio_create_completion: %s", strerror (-r_));   \
      errno = -r_;                                                      \
      return -1;                                                        \
    }                                                                   \
    r_ = (call);                                                        \
    if (r_ < 0) {                                                       \
      rbd_aio_release (c);                                              \
      nbdkit_error ("%s: %s", what, strerror (-r_));                    \
      errno = -r_;                                                      \
      return -1;                                                        \
    }                                                                   \
    rbd_aio_wait_for_complete (c);                                      \
    aio_ret = rbd_aio_get_return_value (c);                             \
    rbd_aio_release (c);                                                \
    if (aio_ret < 0) {                                                  \
      nbdkit_error ("%s: %s", what, strerror ((int) -aio_ret));         \
      errno = (int) -aio_ret;                                           \
      return -1;                                                        \
    }                                                                   \
  } while (0)

static int
do_flush (struct handle *h)
{
  ssize_t aio_ret;

  AIO ("rbd_aio_flush", rbd_aio_flush (h->im->img, c));
  return 0;
}

/* librbd cuts a write at the end of an image that shrank under us and
 * reports success: check that the range still lies inside it.
 */
static bool
past_end (struct handle *h, const char *what, uint32_t count,
          uint64_t offset)
{
  uint64_t size;
  if (rbd_get_size (h->im->img, &size) < 0 || offset + count <= size)
    return false;
  nbdkit_error ("rbd: %s at %" PRIu64 " (%" PRIu32 " bytes) past the end "
                "of the image (%" PRIu64 " bytes): image resized?", what,
                offset, count, size);
  errno = EIO;
  return true;
}

static int
rbdp_pread (void *handle, void *buf, uint32_t count, uint64_t offset,
            uint32_t flags UNUSED)
{
  struct handle *h = handle;
  ssize_t aio_ret;

  AIO ("rbd_aio_read", rbd_aio_read (h->im->img, offset, count, buf, c));
  if ((uint64_t) aio_ret < count) {
    /* Only past the end of an image that shrank under us. */
    nbdkit_error ("rbd_aio_read: short read at %" PRIu64 " (%zd of %"
                  PRIu32 " bytes): image resized?", offset, aio_ret, count);
    errno = EIO;
    return -1;
  }
  return 0;
}

static int
rbdp_pwrite (void *handle, const void *buf, uint32_t count, uint64_t offset,
            uint32_t flags)
{
  struct handle *h = handle;
  ssize_t aio_ret;

  AIO ("rbd_aio_write",
       rbd_aio_write (h->im->img, offset, count, (const char *) buf, c));
  if (past_end (h, "write", count, offset))
    return -1;
  if ((flags & NBDKIT_FLAG_FUA) && do_flush (h) == -1)
    return -1;
  return 0;
}

static int
rbdp_flush (void *handle, uint32_t flags UNUSED)
{
  return do_flush (handle);
}

static int
rbdp_trim (void *handle, uint32_t count, uint64_t offset, uint32_t flags)
{
  struct handle *h = handle;
  ssize_t aio_ret;

  AIO ("rbd_aio_discard", rbd_aio_discard (h->im->img, offset, count, c));
  if ((flags & NBDKIT_FLAG_FUA) && do_flush (h) == -1)
    return -1;
  return 0;
}

/* Zeroing without rbd_aio_write_zeroes: a discard reads back as zeroes
 * only for whole objects (librbd may skip partial discards), so discard
 * the whole objects inside the range (when trimming is allowed) and write
 * explicit zeroes for the rest. */
static int
zero_fallback (struct handle *h, uint32_t count, uint64_t offset,
               bool may_trim)
{
  static const char zeroes[1024 * 1024];
  rbd_image_info_t info;
  uint64_t obj, start, end, first, last, len;
  ssize_t aio_ret;
  int r;

  if (!ck_add64 (offset, count, &end)) {
    errno = EINVAL;
    nbdkit_error ("zero: range overflows");
    return -1;
  }
  first = last = end;
  if (may_trim) {
    r = rbd_stat (h->im->img, &info, sizeof info);
    if (r < 0) {
      nbdkit_error ("rbd_stat: %s", strerror (-r));
      errno = -r;
      return -1;
    }
    /* With stripe-count > 1 an object holds slices of the range, which
     * librbd may skip as smaller than its discard granularity. */
    uint64_t stripes = 1;
    if (rbd_get_stripe_count (h->im->img, &stripes) < 0)
      stripes = 0;
    obj = info.obj_size;
    if (stripes == 1 && obj > 0 && ck_round_up64 (offset, obj, &first) &&
        (obj & (obj - 1)) == 0) {
      last = end & ~(obj - 1);
      if (first < last)
        AIO ("rbd_aio_discard",
             rbd_aio_discard (h->im->img, first, last - first, c));
      else
        first = last = end;
    }
    else
      first = last = end;
  }

  /* Explicit zeroes for [offset, first) and [last, end). */
  for (start = offset; start < end; start += len) {
    if (start == first) {
      start = last;
      if (start >= end)
        break;
    }
    len = (start < first ? first : end) - start;
    if (len > sizeof zeroes)
      len = sizeof zeroes;
    AIO ("rbd_aio_write", rbd_aio_write (h->im->img, start, len, zeroes, c));
  }
  return 0;
}

static int
rbdp_zero (void *handle, uint32_t count, uint64_t offset, uint32_t flags)
{
  struct handle *h = handle;
  bool may_trim = flags & NBDKIT_FLAG_MAY_TRIM;
  ssize_t aio_ret;

  if (flags & NBDKIT_FLAG_FAST_ZERO) {
    errno = ENOTSUP;
    return -1;
  }

#ifdef LIBRBD_SUPPORTS_WRITE_ZEROES
  if (!rbd_debug_zero_fallback) {
    rbd_completion_t c;
    int r = rbd_aio_create_completion (NULL, NULL, &c);
    if (r < 0) {
      nbdkit_error ("rbd_aio_create_completion: %s", strerror (-r));
      errno = -r;
      return -1;
    }
    /* Without may_trim the client asked for allocated zeroes. */
    r = rbd_aio_write_zeroes (h->im->img, offset, count, c,
                              may_trim ? 0 : RBD_WRITE_ZEROES_FLAG_THICK_PROVISION,
                              0);
    if (r == 0) {
      rbd_aio_wait_for_complete (c);
      aio_ret = rbd_aio_get_return_value (c);
    }
    else
      aio_ret = r;
    rbd_aio_release (c);
    if (aio_ret >= 0)
      goto done;
    if (aio_ret != -EOPNOTSUPP && aio_ret != -ENOSYS) {
      nbdkit_error ("rbd_aio_write_zeroes: %s", strerror ((int) -aio_ret));
      errno = (int) -aio_ret;
      return -1;
    }
    nbdkit_debug ("rbd: write_zeroes not supported by the cluster, "
                  "falling back to discard + writes");
  }
#endif
  if (zero_fallback (h, count, offset, may_trim) == -1)
    return -1;

#ifdef LIBRBD_SUPPORTS_WRITE_ZEROES
 done:
#endif
  if ((flags & NBDKIT_FLAG_FUA) && do_flush (h) == -1)
    return -1;
  return 0;
}

/* Extents from rbd_diff_iterate2 (against the beginning of time, so
 * every reported range is allocated; the gaps are holes that read as
 * zeroes).  The ranges are collected and sorted before anything is
 * reported: librbd's object-by-object path (when the object map cannot
 * be used) reports a striped image's ranges out of image order, and a
 * range taken for a gap must never turn out to be data.
 */
struct diff_range {
  uint64_t off, len;
  bool exists;
};

struct extents_state {
  uint64_t start, end;
  struct diff_range *v;
  size_t n, cap;
};

static int
diff_cb (uint64_t off, size_t len, int exists, void *arg)
{
  struct extents_state *st = arg;
  uint64_t end;

  if (!ck_add64 (off, len, &end))
    end = UINT64_MAX;
  if (off < st->start)
    off = st->start;
  if (end > st->end)
    end = st->end;
  if (off >= end)
    return 0;
  if (GROW_FOR (st->v, st->n, st->cap, 64) == -1)
    return -ENOMEM;
  st->v[st->n++] = (struct diff_range) { off, end - off, exists != 0 };
  return 0;
}

static int
cmp_range (const void *a, const void *b)
{
  return kvm_cmp_u64 (&((const struct diff_range *) a)->off,
                      &((const struct diff_range *) b)->off);
}

static int
add_extent (struct nbdkit_extents *exts, uint64_t off, uint64_t len,
            uint32_t type)
{
  if (rbd_debug_extents)
    nbdkit_debug ("rbd: extent %" PRIu64 "+%" PRIu64 " %s", off, len,
                  type ? "hole" : "data");
  return nbdkit_add_extent (exts, off, len, type);
}

static int
rbdp_extents (void *handle, uint32_t count, uint64_t offset,
              uint32_t flags UNUSED,
             struct nbdkit_extents *exts)
{
  const uint32_t hole = NBDKIT_EXTENT_HOLE | NBDKIT_EXTENT_ZERO;
  struct handle *h = handle;
  struct extents_state st = { .start = offset };
  const char *why;
  uint64_t next = offset;
  int r = -1;

  if (!ck_add64 (offset, count, &st.end)) {
    errno = EINVAL;
    nbdkit_error ("extents: range overflows");
    return -1;
  }

  /* The map may have been invalidated since .can_extents. */
  if (!fast_diff_usable (h->im->img, &why)) {
    nbdkit_debug ("rbd: %s: %s, reporting data", h->im->name, why);
    return nbdkit_add_extent (exts, offset, count, 0);
  }

  r = rbd_diff_iterate2 (h->im->img, NULL, offset, count,
                         1 /* include parent */, 1 /* whole object */,
                         diff_cb, &st);
  if (r < 0) {
    /* Data is always a correct answer. */
    nbdkit_debug ("rbd_diff_iterate2: %s, reporting data", strerror (-r));
    free (st.v);
    return nbdkit_add_extent (exts, offset, count, 0);
  }
  if (st.n > 1)
    qsort (st.v, st.n, sizeof *st.v, cmp_range);
  r = 0;
  /* A range that does not exist reads as zeroes like a gap: only the
   * data ranges count, merged, and everything between them is a hole.
   */
  for (size_t i = 0; r == 0 && i < st.n; i++) {
    uint64_t off = st.v[i].off, end = off + st.v[i].len;
    if (!st.v[i].exists || end <= next)
      continue;
    if (off < next)
      off = next;
    if (off > next)
      r = add_extent (exts, next, off - next, hole);
    if (r == 0)
      r = add_extent (exts, off, end - off, 0);
    next = end;
  }
  if (r == 0 && next < st.end)
    r = add_extent (exts, next, st.end - next, hole);
  free (st.v);
  return r;
}

static struct nbdkit_plugin plugin = {
  .name               = "rbd",
  .longname           = "nbdkit Ceph RBD plugin",
  .version            = KVM_VERSION,
  .description        = "Serve Ceph RBD images through librbd",
  .unload             = rbdp_unload,
  .config             = rbdp_config,
  .config_complete    = rbdp_config_complete,
  .config_help        = rbdp_config_help,
  .magic_config_key   = "image",
  .dump_plugin        = rbdp_dump_plugin,
  .get_ready          = rbdp_get_ready,
  .after_fork         = rbdp_after_fork,
  .cleanup            = rbdp_cleanup,
  .list_exports       = rbdp_list_exports,
  .default_export     = rbdp_default_export,
  .open               = rbdp_open,
  .close              = rbdp_close,
  .export_description = rbdp_export_description,
  .get_size           = rbdp_get_size,
  .can_write          = rbdp_can_write,
  .can_multi_conn     = rbdp_can_multi_conn,
  .can_flush          = rbdp_can_flush,
  .can_fua            = rbdp_can_fua,
  .can_trim           = rbdp_can_trim,
  .can_zero           = rbdp_can_zero,
  .can_fast_zero      = rbdp_can_fast_zero,
  .can_extents        = rbdp_can_extents,
  .pread              = rbdp_pread,
  .pwrite             = rbdp_pwrite,
  .flush              = rbdp_flush,
  .trim               = rbdp_trim,
  .zero               = rbdp_zero,
  .extents            = rbdp_extents,
  .errno_is_preserved = 1,
};

NBDKIT_REGISTER_PLUGIN (plugin)
