/* SPDX-License-Identifier: BSD-3-Clause */
/* nbdkit thin filter: thin provisioning over the export of any plugin.
 * The engine (common/thin) maps virtual chunks on first write onto
 * chunks of the export below (the pool), keeping its metadata there or in
 * a separate file.  One engine, shared by every connection (or one per
 * export name, with thin-exports=per-name); the pool is routed to the
 * context of the connection being served (bdev_nbdkit_filter.h).
 *
 * Growing pools: nbdkit caches the size of the export below per context,
 * and checks every request against it.  When the pool is full (at most
 * once a second) or the watermark hook has run, the connection opens a
 * fresh context into the plugin, whose size is current, and uses it from
 * then on if it is larger; a connection whose context is too short for a
 * chunk another connection allocated does the same before touching it.
 * nbdkit 1.32 allows a second context of a connection into a plugin only
 * as a *shared* one, which has no export name: plugins that choose their
 * content by export name open their default export there (the lvm
 * plugin: lv=), so such a context is used only if it shows the same pool
 * (same_pool); otherwise the new space is seen by new connections only
 * (.prepare).
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <spawn.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <nbdkit-filter.h>

#include "bdev/bdev.h"
#include "bdev/bdev_nbdkit_filter.h"
#include "bdev/bdev_registry.h"
#include "thin/thin.h"
#include "util/log.h"
#include "util/single.h"

extern char **environ;

/* -D thin.stats=1: usage and counters after every flush and at close. */
NBDKIT_DLL_PUBLIC int thin_debug_stats = 0;

static int64_t virtual_size;            /* thin-size */
static uint32_t chunk_size;             /* thin-chunk */
static unsigned warn_percent;           /* thin-warn */
static char *hook;                      /* thin-hook */
static char *metadata_path;             /* thin-metadata */

/* One pool, or one per export name with thin-exports=per-name. */
static struct bdev_registry pools =
  BDEV_REGISTRY_INIT_ONE_NAME ("thin-exports");

/* What each export's pool has reported (the watermark crossed, the pool
 * full), kept while no client is connected so that reconnecting clients
 * do not run thin-hook or log again.  With thin-exports=one there is one
 * pool whatever the name, so one record (under "").  Used under the
 * registry's lock (open_pool) and by the one engine open for that name.
 * Past MAX_ALERTS names, further names are forgotten at close.
 */
struct alerts_entry {
  struct alerts_entry *next;
  char *export;
  struct thin_alerts a;
};
static struct alerts_entry *alerts;
static size_t n_alerts;
#define MAX_ALERTS 1024

#define MAX_EXTRA_CONTEXTS 32

struct handle {
  struct bdev_nbdkit_handle h;          /* first: the shared callbacks */
  struct bdev_registry_entry *img;
  char *export;
  nbdkit_backend *backend;
  bool readonly;
  /* Contexts this connection opened to see a grown pool; the newest is
   * used for I/O.  Closed in .finalize.
   */
  pthread_mutex_t lock;
  nbdkit_next *extra[MAX_EXTRA_CONTEXTS];
  size_t nextra;
  _Atomic (nbdkit_next *) cur;
  time_t last_refresh;
};

/* The handle whose request this thread serves. */
static __thread struct handle *cur_handle;

static void
enter (nbdkit_next *next, struct handle *h)
{
  nbdkit_next *c = atomic_load (&h->cur);
  bdev_next_enter (c ? c : next);
  cur_handle = h;
}

static int
leave (int r, int *err)
{
  cur_handle = NULL;
  return bdev_nbdkit_filter_result (r, err);
}

/* A shared context has no export name: a plugin that chooses its content
 * by export name opens its default there (the lvm plugin: the LV given
 * by lv=), which may be another export than the connection's.  Use the
 * new context only if it shows the same pool: the same first
 * IDENTITY_BYTES (the metadata headers, or physical chunk 0 with
 * thin-metadata=), not all zeroes.  Both contexts are at least that long
 * (a pool is never shorter than its metadata header and one chunk).
 */
#define IDENTITY_BYTES 65536

static bool
same_pool (nbdkit_next *c, nbdkit_next *n)
{
  int64_t len = c->get_size (c);
  if (len > IDENTITY_BYTES)
    len = IDENTITY_BYTES;
  if (len <= 0)
    return false;
  char *a = malloc (len), *b = malloc (len);
  int err = 0;
  bool same = a && b &&
    c->pread (c, a, len, 0, 0, &err) == 0 &&
    n->pread (n, b, len, 0, 0, &err) == 0 &&
    memcmp (a, b, len) == 0;
  if (same) {
    same = false;
    for (int64_t i = 0; i < len; i++)
      if (a[i]) {
        same = true;
        break;
      }
  }
  free (a);
  free (b);
  if (!same)
    nbdkit_debug ("thin: a new context into the layer below shows another "
                  "export (or cannot be compared): not used");
  return same;
}

/* The name the plugin below gives its default export (recorded by
 * thin_filter_default_export): a connection to it may be refreshed.
 */
static char *plugin_default;
static pthread_mutex_t plugin_default_lock = PTHREAD_MUTEX_INITIALIZER;

static bool
is_plugin_default (const char *export)
{
  pthread_mutex_lock (&plugin_default_lock);
  bool r = plugin_default && strcmp (plugin_default, export) == 0;
  pthread_mutex_unlock (&plugin_default_lock);
  return r;
}

/* Open a fresh context into the plugin for handle H (a connection
 * thread), make it H's I/O context; its size, or -1.  FORCE: even if the
 * last refresh was less than a second ago.
 *
 * Only for the plugin's default export with thin-exports=one.  nbdkit
 * 1.32 can open a second context into the plugin only as a shared one,
 * which has no export name: the plugin opens its default storage, not
 * another name's, and one that reads the name in .open may not expect
 * none (nbdkit's file plugin with dir= crashes).
 */
static int64_t
refresh (struct handle *h, bool force)
{
  int64_t size = -1;
  if (!pools.one_name || !is_plugin_default (h->export))
    return -1;
  pthread_mutex_lock (&h->lock);
  time_t now = time (NULL);
  if ((!force && now == h->last_refresh) || h->nextra == MAX_EXTRA_CONTEXTS)
    goto out;
  h->last_refresh = now;
  nbdkit_next *n = nbdkit_next_context_open (h->backend, h->readonly,
                                             h->export, 1);
  if (!n)
    goto out;
  if (n->prepare (n) == -1 || bdev_next_prime (n) == -1) {
    n->finalize (n);
    nbdkit_next_context_close (n);
    goto out;
  }
  size = n->get_size (n);
  nbdkit_next *c = bdev_next_current;
  if (size == -1 || (c && size <= c->get_size (c)) ||
      (c && !same_pool (c, n))) {
    /* Not grown (the context we have is as good), or not our pool. */
    n->finalize (n);
    nbdkit_next_context_close (n);
    size = -1;
    goto out;
  }
  h->extra[h->nextra++] = n;
  atomic_store (&h->cur, n);
  bdev_next_enter (n);
  nbdkit_debug ("thin: export '%s': the layer below has %" PRIi64
                " bytes now", h->export, size);
 out:
  pthread_mutex_unlock (&h->lock);
  return size;
}

/* ---- the pool: the routed layer below, and contexts that reach -------- */

struct tpool {
  struct bdev bd;
  struct bdev *inner;
};

#define TP(bd) ((struct tpool *) (bd))

/* Make sure the current context accepts a request ending at END. */
static int
reach (struct tpool *p, uint64_t end)
{
  nbdkit_next *c = bdev_next_current;
  if (!c || (uint64_t) c->get_size (c) >= end)
    return 0;
  if (cur_handle) {
    refresh (cur_handle, true);
    c = bdev_next_current;
    if ((uint64_t) c->get_size (c) >= end)
      return 0;
  }
  kvm_error ("%s: the layer below is shorter than %" PRIu64 " bytes",
             p->bd.name, end);
  errno = EIO;
  return -1;
}

static void
tpool_close (struct bdev *bd)
{
  bdev_close (TP (bd)->inner);
  bdev_free_common (bd);
}

static int
tpool_pread (struct bdev *bd, void *buf, size_t count, uint64_t offset)
{
  struct tpool *p = TP (bd);
  if (reach (p, offset + count) == -1)
    return -1;
  return p->inner->ops->pread (p->inner, buf, count, offset);
}

static int
tpool_pwrite (struct bdev *bd, const void *buf, size_t count,
              uint64_t offset, uint32_t flags)
{
  struct tpool *p = TP (bd);
  if (reach (p, offset + count) == -1)
    return -1;
  return p->inner->ops->pwrite (p->inner, buf, count, offset, flags);
}

static int
tpool_flush (struct bdev *bd)
{
  struct tpool *p = TP (bd);
  return p->inner->ops->flush (p->inner);
}

static int
tpool_trim (struct bdev *bd, uint64_t count, uint64_t offset, uint32_t flags)
{
  struct tpool *p = TP (bd);
  if (reach (p, offset + count) == -1)
    return -1;
  return p->inner->ops->trim (p->inner, count, offset, flags);
}

static int
tpool_zero (struct bdev *bd, uint64_t count, uint64_t offset, uint32_t flags)
{
  struct tpool *p = TP (bd);
  if (reach (p, offset + count) == -1)
    return -1;
  return p->inner->ops->zero (p->inner, count, offset, flags);
}

static const struct bdev_ops tpool_ops = {
  .format = "thin-pool",
  .close = tpool_close,
  .pread = tpool_pread,
  .pwrite = tpool_pwrite,
  .flush = tpool_flush,
  .trim = tpool_trim,
  .zero = tpool_zero,
};

/* ---- watermark ------------------------------------------------------- */

static void
run_hook (const struct thin_stats *st, const char *export)
{
  char e[8][96];
  uint64_t free_chunks = st->pool_chunks > st->used_chunks
    ? st->pool_chunks - st->used_chunks : 0;
  snprintf (e[0], sizeof e[0], "THIN_USED_PERCENT=%u",
            st->pool_chunks
            ? (unsigned) (st->used_chunks * 100 / st->pool_chunks) : 100);
  snprintf (e[1], sizeof e[1], "THIN_USED_BYTES=%" PRIu64,
            st->used_chunks * st->chunk_size);
  snprintf (e[2], sizeof e[2], "THIN_FREE_BYTES=%" PRIu64,
            free_chunks * st->chunk_size);
  snprintf (e[3], sizeof e[3], "THIN_POOL_BYTES=%" PRIu64,
            st->pool_chunks * st->chunk_size);
  snprintf (e[4], sizeof e[4], "THIN_VIRTUAL_SIZE=%" PRIu64,
            st->virtual_size);
  snprintf (e[5], sizeof e[5], "THIN_CHUNK_SIZE=%" PRIu64, st->chunk_size);
  snprintf (e[6], sizeof e[6], "THIN_WARN_PERCENT=%u", warn_percent);
  size_t n = 0;
  while (environ[n])
    n++;
  char **env = calloc (n + 10, sizeof *env);
  char *exp = NULL;
  if (!env || asprintf (&exp, "THIN_EXPORT=%s", export) == -1) {
    nbdkit_error ("thin: cannot run thin-hook: out of memory");
    free (env);
    return;
  }
  size_t k = 0;
  for (size_t i = 0; i < n; i++)
    if (strncmp (environ[i], "THIN_", 5) != 0)
      env[k++] = environ[i];
  for (int i = 0; i < 7; i++)
    env[k++] = e[i];
  env[k++] = exp;
  env[k] = NULL;
  char *argv[] = { (char *) "sh", (char *) "-c", hook, NULL };
  pid_t pid;
  int r = posix_spawn (&pid, "/bin/sh", NULL, NULL, argv, env);
  if (r != 0)
    nbdkit_error ("thin: cannot run thin-hook: %s", strerror (r));
  else {
    int status;
    while (waitpid (pid, &status, 0) == -1 && errno == EINTR)
      ;
    if (!WIFEXITED (status) || WEXITSTATUS (status) != 0)
      nbdkit_error ("thin: thin-hook failed (status 0x%x)", status);
    else
      nbdkit_debug ("thin: thin-hook ran");
  }
  free (exp);
  free (env);
}

static void
on_watermark (void *opaque, const struct thin_stats *st)
{
  struct handle *h = cur_handle;
  char line[256];
  (void) opaque;
  thin_format_usage (st, line, sizeof line);
  nbdkit_error ("thin: warning: export '%s' reached thin-warn=%u%%: %s",
                h ? h->export : "", warn_percent, line);
  if (hook && h) {
    run_hook (st, h->export);
    /* The hook may have grown the export below. */
    int64_t s = refresh (h, true);
    if (s > 0)
      thin_grow (h->h.bd, s);
  }
}

/* Called by the engine (its lock held) when the pool is full. */
static int64_t
on_pool_full (void *opaque)
{
  (void) opaque;
  return cur_handle ? refresh (cur_handle, false) : -1;
}

/* ---- configuration --------------------------------------------------- */

/* .load calls: more than one means --filter=thin twice (util/single.h). */
static unsigned loads;

static void
thin_filter_load (void)
{
  loads++;
  kvm_log_set (nbdkit_verror, nbdkit_vdebug);
}

static void
thin_filter_unload (void)
{
  if (--loads > 0)             /* another instance: its state too */
    return;
  bdev_registry_close_all (&pools);
  for (struct alerts_entry *e = alerts, *n; e; e = n) {
    n = e->next;
    free (e->export);
    free (e);
  }
  alerts = NULL;
  n_alerts = 0;
  free (hook);
  free (metadata_path);
  free (plugin_default);
}

static const char *
thin_filter_default_export (nbdkit_next_default_export *next,
                            nbdkit_backend *nxdata, int readonly, int is_tls)
{
  (void) is_tls;
  const char *d = next (nxdata, readonly);
  pthread_mutex_lock (&plugin_default_lock);
  if (d && (!plugin_default || strcmp (plugin_default, d) != 0)) {
    free (plugin_default);
    plugin_default = strdup (d);        /* NULL: no refresh */
  }
  pthread_mutex_unlock (&plugin_default_lock);
  return d;
}

static int
thin_filter_config (nbdkit_next_config *next, nbdkit_backend *nxdata,
                    const char *key, const char *value)
{
  if (strcmp (key, "thin-size") == 0) {
    virtual_size = nbdkit_parse_size (value);
    if (virtual_size <= 0) {
      if (virtual_size == 0)
        nbdkit_error ("thin-size must be > 0");
      return -1;
    }
    return 0;
  }
  if (strcmp (key, "thin-chunk") == 0) {
    int64_t c = nbdkit_parse_size (value);
    if (c == -1)
      return -1;
    if (c < THIN_MIN_CHUNK || c > THIN_MAX_CHUNK || (c & (c - 1))) {
      nbdkit_error ("thin-chunk must be a power of 2 between 4K and 64M");
      return -1;
    }
    chunk_size = c;
    return 0;
  }
  if (strcmp (key, "thin-warn") == 0) {
    unsigned v;
    char pct[2] = "";
    if (sscanf (value, "%u%1s", &v, pct) < 1 || (pct[0] && pct[0] != '%') ||
        v > 100) {
      nbdkit_error ("thin-warn: expected a percentage 0..100: %s", value);
      return -1;
    }
    warn_percent = v;
    return 0;
  }
  if (strcmp (key, "thin-hook") == 0) {
    free (hook);
    hook = strdup (value);
    if (!hook) {
      nbdkit_error ("strdup: %m");
      return -1;
    }
    return 0;
  }
  if (strcmp (key, "thin-metadata") == 0) {
    free (metadata_path);
    metadata_path = nbdkit_absolute_path (value);
    if (!metadata_path)
      return -1;
    /* Created empty if missing: the filter formats it. */
    int fd = open (metadata_path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd == -1) {
      nbdkit_error ("thin-metadata: %s: %m", metadata_path);
      return -1;
    }
    close (fd);
    return 0;
  }
  if (strcmp (key, "thin-exports") == 0)
    return bdev_registry_names_param (&pools, key, value);
  return next (nxdata, key, value);
}

static int
thin_filter_config_complete (nbdkit_next_config_complete *next,
                             nbdkit_backend *nxdata)
{
  if (metadata_path && !pools.one_name) {
    nbdkit_error ("thin-metadata= holds the metadata of one pool: it "
                  "cannot go with thin-exports=per-name");
    return -1;
  }
  return next (nxdata);
}

#define thin_filter_config_help \
  "thin-size=SIZE              Virtual size (required to format a pool).\n" \
  "thin-chunk=SIZE             Allocation unit (default 64K).\n" \
  "thin-metadata=FILE          Metadata in FILE instead of the pool.\n" \
  "thin-warn=PERCENT%          Warn when the pool is this full.\n" \
  "thin-hook=COMMAND           Run COMMAND at the warning (THIN_* env).\n" \
  "thin-exports=one|per-name   One export name at a time (default), or\n" \
  "                            each name its own pool (a plugin that\n" \
  "                            stores each name apart)."

static int
thin_filter_thread_model (void)
{
  return NBDKIT_THREAD_MODEL_PARALLEL;
}

/* ---- open ------------------------------------------------------------ */

/* The alerts kept for EXPORT (added if new), or NULL. */
static struct thin_alerts *
alerts_of (const char *export)
{
  struct alerts_entry *e;
  for (e = alerts; e; e = e->next)
    if (strcmp (e->export, export) == 0)
      return &e->a;
  if (n_alerts >= MAX_ALERTS)
    return NULL;
  e = calloc (1, sizeof *e);
  if (!e || !(e->export = strdup (export))) {
    free (e);
    return NULL;                /* only the memory of the alerts is lost */
  }
  e->next = alerts;
  alerts = e;
  n_alerts++;
  return &e->a;
}

struct open_args {
  nbdkit_next *next;
  bool readonly;
};

static struct bdev *
open_pool (const char *export, void *arg)
{
  struct open_args *a = arg;
  struct bdev *inner, *meta = NULL;
  struct tpool *p;
  char *name;

  if (asprintf (&name, "thin filter (export '%s')", export) == -1) {
    nbdkit_error ("asprintf: %m");
    return NULL;
  }
  inner = bdev_next_routed (a->next, name, a->readonly);
  if (!inner) {
    free (name);
    return NULL;
  }
  p = bdev_alloc (sizeof *p, &tpool_ops, name);
  free (name);
  if (!p) {
    bdev_close (inner);
    return NULL;
  }
  p->inner = inner;
  p->bd.size = inner->size;
  p->bd.readonly = inner->readonly;
  p->bd.caps = inner->caps & (BDEV_CAN_TRIM | BDEV_CAN_ZERO |
                              BDEV_CAN_FAST_ZERO | BDEV_CAN_MULTI_CONN);
  p->bd.block_size = inner->block_size;
  if (metadata_path) {
    struct bdev_open_opts o = {
      .readonly = p->bd.readonly,
      .growable = true,
    };
    meta = bdev_storage_open (metadata_path, &o);
    if (!meta) {
      bdev_close (&p->bd);
      return NULL;
    }
  }
  struct thin_opts o = {
    .virtual_size = virtual_size,
    .chunk_size = chunk_size,
    .warn_percent = warn_percent,
    .format = true,
    .meta = meta,
    .watermark = on_watermark,
    .pool_size = on_pool_full,
    /* With thin-exports=one every name may reach the same pool (the
     * layer below may ignore the name): one record, whatever the name.
     */
    .alerts = alerts_of (pools.one_name ? "" : export),
  };
  return thin_open (&p->bd, &o);
}

static void *
thin_filter_open (nbdkit_next_open *next, nbdkit_context *context,
                  int readonly, const char *exportname, int is_tls)
{
  struct handle *h;
  (void) is_tls;

  if (next (context, readonly, exportname) == -1)
    return NULL;
  h = calloc (1, sizeof *h);
  if (!h || !(h->export = strdup (exportname))) {
    nbdkit_error ("calloc: %m");
    free (h);
    return NULL;
  }
  pthread_mutex_init (&h->lock, NULL);
  h->backend = nbdkit_context_get_backend (context);
  h->readonly = readonly;
  h->h.readonly = readonly;
  h->h.shared = true;
  return h;
}

static void
log_stats (struct handle *h, const char *when)
{
  struct thin_stats st;
  char line[256];
  thin_get_stats (h->h.bd, &st);
  thin_format_usage (&st, line, sizeof line);
  nbdkit_debug ("thin stats (%s, export '%s'): %s; allocations %" PRIu64
                ", releases %" PRIu64 ", commits %" PRIu64 ", ENOSPC %"
                PRIu64 ", transaction %" PRIu64, when, h->export, line,
                st.allocs, st.releases, st.commits, st.enospc, st.seq);
}

static int
thin_filter_prepare (nbdkit_next *next, void *handle, int readonly)
{
  struct handle *h = handle;
  struct open_args a = { .next = next, .readonly = readonly };

  if (bdev_next_prime (next) == -1)
    return -1;
  bdev_next_enter (next);
  h->img = bdev_registry_get (&pools, h->export, open_pool, &a);
  /* A failed open may have written through this context, which nbdkit
   * frees without .finalize: flush it and drop it from the list now.
   */
  if (!h->img)
    bdev_next_connection_done (next);
  bdev_next_leave ();
  if (!h->img)
    return -1;
  h->h.bd = h->img->bd;
  /* A new connection sees the current size of the layer below. */
  int64_t s = next->get_size (next);
  if (s > 0)
    thin_grow (h->h.bd, s);
  if (thin_debug_stats)
    log_stats (h, "connect");
  return 0;
}

static int
thin_filter_finalize (nbdkit_next *next, void *handle)
{
  struct handle *h = handle;

  if (!h->img)
    return 0;
  if (thin_debug_stats)
    log_stats (h, "disconnect");
  enter (next, h);
  bdev_registry_put (&pools, h->img);
  /* Failures are logged; returning them would stop nbdkit from
   * finalizing the layers below (bdev_next_connection_done).
   */
  bdev_next_connection_done (next);
  for (size_t i = 0; i < h->nextra; i++) {
    bdev_next_connection_done (h->extra[i]);
    h->extra[i]->finalize (h->extra[i]);
    nbdkit_next_context_close (h->extra[i]);
  }
  h->nextra = 0;
  atomic_store (&h->cur, NULL);
  bdev_next_leave ();
  cur_handle = NULL;
  h->img = NULL;
  return 0;
}

static void
thin_filter_close (void *handle)
{
  struct handle *h = handle;
  pthread_mutex_destroy (&h->lock);
  free (h->export);
  free (h);
}

static const char *
thin_filter_export_description (nbdkit_next *next, void *handle)
{
  struct handle *h = handle;
  struct thin_stats st;
  char line[256];
  (void) next;
  if (!h->h.bd)
    return NULL;
  thin_get_stats (h->h.bd, &st);
  thin_format_usage (&st, line, sizeof line);
  return nbdkit_strdup_intern (line);
}

/* ---- data callbacks: the connection's newest context ------------------ */

#define H(handle) ((struct handle *) (handle))

static int
thin_filter_pread (nbdkit_next *next, void *handle, void *buf,
                   uint32_t count, uint64_t offset, uint32_t flags, int *err)
{
  (void) flags;
  enter (next, H (handle));
  return leave (bdev_pread (H (handle)->h.bd, buf, count, offset), err);
}

static int
thin_filter_pwrite (nbdkit_next *next, void *handle, const void *buf,
                    uint32_t count, uint64_t offset, uint32_t flags,
                    int *err)
{
  enter (next, H (handle));
  return leave (bdev_pwrite (H (handle)->h.bd, buf, count, offset,
                             bdev_flags_of_nbdkit (flags)), err);
}

static int
thin_filter_flush (nbdkit_next *next, void *handle, uint32_t flags, int *err)
{
  (void) flags;
  enter (next, H (handle));
  int r = bdev_flush (H (handle)->h.bd);
  if (r == 0 && thin_debug_stats)
    log_stats (H (handle), "flush");
  return leave (r, err);
}

static int
thin_filter_trim (nbdkit_next *next, void *handle, uint32_t count,
                  uint64_t offset, uint32_t flags, int *err)
{
  enter (next, H (handle));
  return leave (bdev_trim (H (handle)->h.bd, count, offset,
                           bdev_flags_of_nbdkit (flags)), err);
}

static int
thin_filter_zero (nbdkit_next *next, void *handle, uint32_t count,
                  uint64_t offset, uint32_t flags, int *err)
{
  enter (next, H (handle));
  return leave (bdev_zero (H (handle)->h.bd, count, offset,
                           bdev_flags_of_nbdkit (flags)), err);
}

static int
thin_filter_extents (nbdkit_next *next, void *handle, uint32_t count,
                     uint64_t offset, uint32_t flags,
                     struct nbdkit_extents *extents, int *err)
{
  enter (next, H (handle));
  return leave (bdev_extents (H (handle)->h.bd, count, offset,
                              bdev_flags_of_nbdkit (flags),
                              bdev_nbdkit_filter_add_extent, extents), err);
}

static int
thin_filter_get_ready (int thread_model)
{
  (void) thread_model;
  return kvm_filter_single (loads, "thin");
}

static struct nbdkit_filter filter = {
  .name = "thin",
  .longname = "nbdkit thin provisioning filter",
  .load = thin_filter_load,
  .unload = thin_filter_unload,
  .get_ready = thin_filter_get_ready,
  .config = thin_filter_config,
  .config_complete = thin_filter_config_complete,
  .config_help = thin_filter_config_help,
  .thread_model = thin_filter_thread_model,
  .default_export = thin_filter_default_export,
  .open = thin_filter_open,
  .prepare = thin_filter_prepare,
  .finalize = thin_filter_finalize,
  .close = thin_filter_close,
  .export_description = thin_filter_export_description,
  .get_size       = bdev_nbdkit_fcb_get_size,
  .block_size     = bdev_nbdkit_fcb_block_size,
  .can_write      = bdev_nbdkit_fcb_can_write,
  .can_flush      = bdev_nbdkit_fcb_true,
  .is_rotational  = bdev_nbdkit_fcb_false,
  .can_trim       = bdev_nbdkit_fcb_can_trim,
  .can_zero       = bdev_nbdkit_fcb_can_zero,
  .can_fast_zero  = bdev_nbdkit_fcb_can_fast_zero,
  .can_extents    = bdev_nbdkit_fcb_true,
  .can_fua        = bdev_nbdkit_fcb_can_fua,
  .can_multi_conn = bdev_nbdkit_fcb_can_multi_conn,
  .can_cache      = bdev_nbdkit_fcb_can_cache,
  .pread          = thin_filter_pread,
  .pwrite         = thin_filter_pwrite,
  .flush          = thin_filter_flush,
  .trim           = thin_filter_trim,
  .zero           = thin_filter_zero,
  .extents        = thin_filter_extents,
};

NBDKIT_REGISTER_FILTER (filter)
