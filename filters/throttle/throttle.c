/* SPDX-License-Identifier: BSD-3-Clause */
/* nbdkit throttle filter: QEMU-style I/O limits (bytes and I/Os per
 * second, total/read/write, with bursts) shared by groups of connections,
 * changeable at run time through a file.  A thin adapter over the engine
 * in common/throttle (buckets and the fair scheduler).
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <nbdkit-filter.h>

#include "throttle/throttle.h"
#include "util/clock.h"
#include "util/log.h"
#include "util/single.h"

/* -D throttle.stats=N: per-group statistics when connections close and
 * every N seconds while requests flow.
 */
NBDKIT_DLL_PUBLIC int throttle_debug_stats = 0;

/* How often the throttle file is checked for a change, at most. */
#define FILE_CHECK_NS 200000000ULL      /* 200 ms */
/* Largest throttle file accepted. */
#define FILE_MAX 65536

enum zero_mode { ZERO_IOPS, ZERO_BYTES, ZERO_NONE };

/* Configuration. */
static struct thr_limits cmdline_limits;
static bool scope_connection;
static char *group_name;                /* NULL = "default" */
static bool group_by_export;
struct mapping { char *export, *group; };
static struct mapping *mappings;
static size_t nmappings;
static char *throttle_file;
static enum zero_mode zero_mode = ZERO_IOPS;

/* Effective limits (command line + throttle file) and every live group;
 * protected by groups_lock.
 */
struct group_ref {
  struct group_ref *next;
  struct thr_group *g;
  bool shared;                          /* in the list below */
  unsigned refs;
  unsigned long long conn_seq;          /* private groups: connection no. */
};
static pthread_mutex_t groups_lock = PTHREAD_MUTEX_INITIALIZER;
static struct thr_limits current_limits;  /* defaults, for debug */
static char *file_text;                 /* last valid throttle file */
static struct group_ref *groups;
static unsigned long long conn_counter;
static void free_group_locked (struct group_ref **p);

/* Throttle file state; reload_lock serializes readers of the file. */
static pthread_mutex_t reload_lock = PTHREAD_MUTEX_INITIALIZER;
static uint64_t next_check_ns;          /* atomic */
static struct stat file_st;             /* identity of the last version */
static bool file_seen;                  /* file_st is valid */
static bool stat_error_reported;

struct handle {
  struct group_ref *ref;
  struct thr_member *m;
};

static uint64_t
clock_now (void *opaque)
{
  (void) opaque;
  return kvm_mono_ns ();
}

static int
clock_sleep (void *opaque, uint64_t ns)
{
  (void) opaque;
  /* Sets errno (ESHUTDOWN) when the server or the connection is closing. */
  return nbdkit_nanosleep (ns / 1000000000ULL, ns % 1000000000ULL);
}

static void maybe_reload (void *opaque);

static const struct thr_clock nbdkit_clock = {
  .now = clock_now,
  .sleep = clock_sleep,
  .poll = maybe_reload,
};

/* .load calls: more than one means --filter=throttle twice (util/single.h). */
static unsigned loads;

static void
throttle_load (void)
{
  loads++;
  kvm_log_set (nbdkit_verror, nbdkit_vdebug);
}

static void
throttle_unload (void)
{
  size_t i;

  if (--loads > 0)             /* another instance: its state too */
    return;
  for (i = 0; i < nmappings; ++i) {
    free (mappings[i].export);
    free (mappings[i].group);
  }
  free (mappings);
  free (group_name);
  free (throttle_file);
  free (file_text);
  while (groups)                /* parked ones: no connection is left */
    free_group_locked (&groups);
}

static int
throttle_config (nbdkit_next_config *next, nbdkit_backend *nxdata,
                 const char *key, const char *value)
{
  char err[256];
  int r;

  r = thr_limits_set (&cmdline_limits, key, value, nbdkit_parse_size,
                      err, sizeof err);
  if (r == -1) {
    nbdkit_error ("throttle: %s", err);
    return -1;
  }
  if (r == 1)
    return 0;

  if (strcmp (key, "scope") == 0) {
    if (strcmp (value, "connection") == 0)
      scope_connection = true;
    else if (strcmp (value, "group") == 0 || strcmp (value, "process") == 0)
      scope_connection = false;
    else {
      nbdkit_error ("throttle: scope must be 'group' or 'connection', "
                    "not '%s'", value);
      return -1;
    }
    return 0;
  }
  if (strcmp (key, "group") == 0 || strcmp (key, "group_name") == 0) {
    if (*value == '\0' || strchr (value, ':')) {
      nbdkit_error ("throttle: %s: a group name must be non-empty and "
                    "have no ':'", key);
      return -1;
    }
    free (group_name);
    group_name = strdup (value);
    if (group_name == NULL) {
      nbdkit_error ("strdup: %m");
      return -1;
    }
    return 0;
  }
  if (strcmp (key, "group-by") == 0) {
    if (strcmp (value, "export") == 0)
      group_by_export = true;
    else if (strcmp (value, "none") == 0)
      group_by_export = false;
    else {
      nbdkit_error ("throttle: group-by must be 'none' or 'export', "
                    "not '%s'", value);
      return -1;
    }
    return 0;
  }
  if (strcmp (key, "export-group") == 0) {
    const char *colon = strrchr (value, ':');
    struct mapping *n;

    if (colon == NULL || colon[1] == '\0') {
      nbdkit_error ("throttle: export-group must be EXPORT:GROUP, "
                    "not '%s'", value);
      return -1;
    }
    n = realloc (mappings, (nmappings + 1) * sizeof *n);
    if (n == NULL) {
      nbdkit_error ("realloc: %m");
      return -1;
    }
    mappings = n;
    n[nmappings].export = strndup (value, colon - value);
    n[nmappings].group = strdup (colon + 1);
    if (!n[nmappings].export || !n[nmappings].group) {
      free (n[nmappings].export);
      free (n[nmappings].group);
      nbdkit_error ("strdup: %m");
      return -1;
    }
    nmappings++;
    return 0;
  }
  if (strcmp (key, "throttle-file") == 0) {
    free (throttle_file);
    throttle_file = nbdkit_absolute_path (value);
    return throttle_file ? 0 : -1;
  }
  if (strcmp (key, "zero-trim") == 0) {
    if (strcmp (value, "iops") == 0)
      zero_mode = ZERO_IOPS;
    else if (strcmp (value, "bytes") == 0)
      zero_mode = ZERO_BYTES;
    else if (strcmp (value, "none") == 0)
      zero_mode = ZERO_NONE;
    else {
      nbdkit_error ("throttle: zero-trim must be 'iops', 'bytes' or "
                    "'none', not '%s'", value);
      return -1;
    }
    return 0;
  }
  return next (nxdata, key, value);
}

/* Log the limits in force (debug). */
static void
debug_limits (const char *why, const struct thr_limits *lim)
{
  char buf[1024];
  size_t len = 0;
  int k;

  buf[0] = '\0';
  for (k = 0; k < THR_NR_KINDS; ++k) {
    const struct thr_limit *l = &lim->l[k];
    if (!l->avg)
      continue;
    len += snprintf (buf + len, sizeof buf - len, " %s=%" PRIu64,
                     thr_kind_names[k], l->avg);
    if (len < sizeof buf && l->max)
      len += snprintf (buf + len, sizeof buf - len,
                       " %s-max=%" PRIu64 " %s-max-length=%" PRIu64,
                       thr_kind_names[k], l->max, thr_kind_names[k],
                       l->max_length ? l->max_length : 1);
    if (len >= sizeof buf)
      break;
  }
  if (lim->iops_size && len < sizeof buf)
    snprintf (buf + len, sizeof buf - len, " iops-size=%" PRIu64,
              lim->iops_size);
  nbdkit_debug ("throttle: %s:%s", why, buf[0] ? buf : " no limits");
}

/* Read and check the throttle file.  Returns 1 and the text in *textp
 * (to free) if read and valid, 0 if it does not exist, -1 on error
 * (reported).
 */
static int
read_throttle_file (char **textp, struct stat *st, bool startup)
{
  const char *keep = startup ? "" : "; keeping the previous limits";
  char *text = NULL, err[512];
  struct thr_limits lim;
  int fd, r = -1;
  ssize_t n;
  size_t len = 0;

  /* O_NONBLOCK: a FIFO put there must not block the request (or the
   * start-up) that reads the file; it is refused below.
   */
  fd = open (throttle_file, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd == -1) {
    if (errno == ENOENT)
      return 0;
    nbdkit_error ("throttle: %s: %m%s", throttle_file, keep);
    return -1;
  }
  if (fstat (fd, st) == -1) {
    nbdkit_error ("throttle: fstat: %s: %m", throttle_file);
    goto out;
  }
  if (!S_ISREG (st->st_mode)) {
    nbdkit_error ("throttle: %s: not a regular file%s", throttle_file, keep);
    goto out;
  }
  text = malloc (FILE_MAX + 1);
  if (text == NULL) {
    nbdkit_error ("malloc: %m");
    goto out;
  }
  while (len < FILE_MAX + 1 &&
         (n = read (fd, text + len, FILE_MAX + 1 - len)) != 0) {
    if (n == -1) {
      if (errno == EINTR)
        continue;
      nbdkit_error ("throttle: read: %s: %m%s", throttle_file, keep);
      goto out;
    }
    len += n;
  }
  if (len > FILE_MAX) {
    nbdkit_error ("throttle: %s: larger than %d bytes%s",
                  throttle_file, FILE_MAX, keep);
    goto out;
  }
  if (memchr (text, '\0', len)) {
    nbdkit_error ("throttle: %s: contains a NUL byte%s",
                  throttle_file, keep);
    goto out;
  }
  text[len] = '\0';
  /* Checks every line and section. */
  if (thr_limits_parse_text (&cmdline_limits, text, NULL, nbdkit_parse_size,
                             &lim, err, sizeof err) == -1) {
    nbdkit_error ("throttle: %s: %s%s", throttle_file, err, keep);
    goto out;
  }
  *textp = text;
  text = NULL;
  r = 1;
 out:
  free (text);
  close (fd);
  return r;
}

/* Limits of a group: command line, overridden by the throttle file's
 * defaults and its [GROUP] sections.  Call with groups_lock held.
 */
static void
limits_for (const char *group, struct thr_limits *out)
{
  char err[512];

  if (file_text == NULL)
    *out = cmdline_limits;
  else if (thr_limits_parse_text (&cmdline_limits, file_text, group,
                                  nbdkit_parse_size, out, err,
                                  sizeof err) == -1) {
    /* Not expected: the text was checked as a whole when read. */
    nbdkit_error ("throttle: %s: %s: using the command line's limits%s%s",
                  throttle_file, err, group ? " for group " : "",
                  group ? group : "");
    *out = cmdline_limits;
  }
}

/* Install a new throttle file text (owned; NULL: no file) and apply the
 * limits to every group.
 */
static void
apply_file_text (char *text, const char *why)
{
  struct group_ref *r;
  struct thr_limits lim;

  pthread_mutex_lock (&groups_lock);
  free (file_text);
  file_text = text;
  limits_for (NULL, &lim);
  if (!thr_limits_equal (&current_limits, &lim)) {
    current_limits = lim;
    debug_limits (why, &lim);
  }
  for (r = groups; r; r = r->next) {
    limits_for (thr_group_name (r->g), &lim);
    if (thr_group_set_limits (r->g, &lim) &&
        !thr_limits_equal (&lim, &current_limits)) {
      char what[128];
      snprintf (what, sizeof what, "group \"%.64s\"", thr_group_name (r->g));
      debug_limits (what, &lim);
    }
  }
  pthread_mutex_unlock (&groups_lock);
}

static bool
same_version (const struct stat *a, const struct stat *b)
{
  return a->st_dev == b->st_dev && a->st_ino == b->st_ino &&
    a->st_size == b->st_size &&
    a->st_mtim.tv_sec == b->st_mtim.tv_sec &&
    a->st_mtim.tv_nsec == b->st_mtim.tv_nsec &&
    a->st_ctim.tv_sec == b->st_ctim.tv_sec &&
    a->st_ctim.tv_nsec == b->st_ctim.tv_nsec;
}

/* Re-read the throttle file if it changed; at most every FILE_CHECK_NS.
 * Called before requests and by waiting requests between sleeps.
 */
static void
maybe_reload (void *opaque)
{
  uint64_t now;
  struct stat st;
  char *text = NULL;
  int r;

  (void) opaque;
  if (throttle_file == NULL)
    return;
  now = kvm_mono_ns ();
  if (now < __atomic_load_n (&next_check_ns, __ATOMIC_RELAXED))
    return;
  if (pthread_mutex_trylock (&reload_lock) != 0)
    return;
  __atomic_store_n (&next_check_ns, now + FILE_CHECK_NS, __ATOMIC_RELAXED);

  if (stat (throttle_file, &st) == -1) {
    if (errno == ENOENT) {
      if (file_seen) {
        file_seen = false;
        apply_file_text (NULL, "throttle file removed, command line limits");
      }
    }
    else if (!stat_error_reported) {
      nbdkit_error ("throttle: stat: %s: %m; keeping the previous limits",
                    throttle_file);
      stat_error_reported = true;
    }
    goto out;
  }
  stat_error_reported = false;
  if (file_seen && same_version (&st, &file_st))
    goto out;

  r = read_throttle_file (&text, &st, false);
  /* Remember this version, good or bad: a bad file is reported once and
   * the previous limits stay until the file changes again.
   */
  file_st = st;
  file_seen = true;
  if (r == 1)
    apply_file_text (text, "new limits from throttle file");
 out:
  pthread_mutex_unlock (&reload_lock);
}

static int
throttle_config_complete (nbdkit_next_config_complete *next,
                          nbdkit_backend *nxdata)
{
  char err[256];

  if (thr_limits_check (&cmdline_limits, err, sizeof err) == -1) {
    nbdkit_error ("throttle: %s", err);
    return -1;
  }
  if (scope_connection && (group_by_export || nmappings)) {
    nbdkit_error ("throttle: scope=connection cannot be combined with "
                  "group-by or export-group");
    return -1;
  }
  if (throttle_file) {
    struct stat st;
    int r = read_throttle_file (&file_text, &st, true);
    if (r == -1)
      return -1;
    if (r == 1) {
      file_st = st;
      file_seen = true;
    }
  }
  limits_for (NULL, &current_limits);
  debug_limits ("initial limits", &current_limits);
  return next (nxdata);
}

#define throttle_config_help \
  "bps-total|bps-read|bps-write=SIZE   Bytes per second (e.g. 100M).\n" \
  "iops-total|iops-read|iops-write=N   I/Os per second.\n" \
  "LIMIT-max=RATE                      Burst rate for LIMIT.\n" \
  "LIMIT-max-length=SECS               How long a burst may last.\n" \
  "iops-size=SIZE                      Larger requests count as several I/Os.\n" \
  "scope=group|connection              Share limits or per connection.\n" \
  "group=NAME                          Name of the group (default 'default').\n" \
  "group-by=none|export                One group per export name.\n" \
  "export-group=EXPORT:GROUP           Put an export in a named group.\n" \
  "throttle-file=PATH                  Limits re-read when the file changes.\n" \
  "zero-trim=iops|bytes|none           How zero and trim requests count."

/* Name of the group for a connection to this export. */
static const char *
group_for_export (const char *exportname)
{
  size_t i;

  for (i = 0; i < nmappings; ++i)
    if (strcmp (mappings[i].export, exportname) == 0)
      return mappings[i].group;
  if (group_by_export)
    return exportname;
  return group_name ? group_name : "default";
}

static void
print_stats (struct group_ref *r, const char *when)
{
  struct thr_stats st;
  char name[64];
  const char *n = thr_group_name (r->g);

  if (throttle_debug_stats <= 0)
    return;
  thr_group_get_stats (r->g, &st);
  if (!r->shared) {
    snprintf (name, sizeof name, "connection %llu", r->conn_seq);
    n = name;
  }
  nbdkit_debug ("throttle: stats (%s) group \"%s\": admitted "
                "%" PRIu64 " reads (%" PRIu64 " bytes), "
                "%" PRIu64 " writes/zeroes/trims (%" PRIu64 " bytes); "
                "delayed %" PRIu64 " requests (%" PRIu64 " bytes) "
                "for %.3f s in total; %" PRIu64 " waits abandoned",
                when, n, st.read_ops, st.read_bytes,
                st.write_ops, st.write_bytes,
                st.delayed_ops, st.delayed_bytes, st.delay_ns / 1e9,
                st.aborted_ops);
}

/* Shared groups whose last connection closed stay listed (refs 0) until
 * their buckets have leaked empty: a client that reconnects must not get
 * a full burst allowance again.  Export names chosen by clients
 * (group-by=export) could make many of them, so at most this many are
 * kept; beyond it the oldest go first.
 */
#define MAX_PARKED_GROUPS 1024

static void
free_group_locked (struct group_ref **p)
{
  struct group_ref *r = *p;
  *p = r->next;
  thr_group_free (r->g);
  free (r);
}

/* Free parked groups that have drained, and the oldest beyond the limit
 * (new groups are put first in the list, so the oldest are last).
 */
static void
sweep_parked_locked (void)
{
  struct group_ref **p;
  unsigned parked = 0;

  for (p = &groups; *p; ) {
    if ((*p)->refs == 0 &&
        (++parked > MAX_PARKED_GROUPS || thr_group_drained ((*p)->g)))
      free_group_locked (p);
    else
      p = &(*p)->next;
  }
}

/* Find or create the group; takes a reference. */
static struct group_ref *
get_group (const char *exportname)
{
  struct group_ref *r;
  const char *name;
  struct thr_limits lim;

  pthread_mutex_lock (&groups_lock);
  sweep_parked_locked ();
  if (!scope_connection) {
    name = group_for_export (exportname);
    for (r = groups; r; r = r->next)
      if (r->shared && strcmp (thr_group_name (r->g), name) == 0) {
        r->refs++;
        goto out;
      }
  }
  else                          /* private, but [GROUP] sections apply */
    name = group_name ? group_name : "default";
  limits_for (name, &lim);

  r = calloc (1, sizeof *r);
  if (r == NULL) {
    nbdkit_error ("calloc: %m");
    goto out;
  }
  r->g = thr_group_new (name, &lim, &nbdkit_clock);
  if (r->g == NULL) {
    nbdkit_error ("throttle: cannot create group: %m");
    free (r);
    r = NULL;
    goto out;
  }
  thr_group_count_unlimited (r->g, throttle_debug_stats);
  r->refs = 1;
  r->conn_seq = ++conn_counter;
  /* Private groups are listed too, so that limit changes reach them. */
  r->shared = !scope_connection;
  r->next = groups;
  groups = r;
  if (r->shared)
    nbdkit_debug ("throttle: new group \"%s\"", name);
 out:
  pthread_mutex_unlock (&groups_lock);
  return r;
}

static void
put_group (struct group_ref *ref)
{
  struct group_ref **p;

  pthread_mutex_lock (&groups_lock);
  print_stats (ref, "connection closed");
  if (--ref->refs == 0 && (!ref->shared || thr_group_drained (ref->g))) {
    for (p = &groups; *p; p = &(*p)->next)
      if (*p == ref) {
        free_group_locked (p);
        break;
      }
  }
  pthread_mutex_unlock (&groups_lock);
}

static void *
throttle_open (nbdkit_next_open *next, nbdkit_context *nxdata,
               int readonly, const char *exportname, int is_tls)
{
  struct handle *h;

  (void) is_tls;
  if (next (nxdata, readonly, exportname) == -1)
    return NULL;

  h = calloc (1, sizeof *h);
  if (h == NULL) {
    nbdkit_error ("calloc: %m");
    return NULL;
  }
  h->ref = get_group (exportname);
  if (h->ref == NULL) {
    free (h);
    return NULL;
  }
  h->m = thr_member_new (h->ref->g);
  if (h->m == NULL) {
    nbdkit_error ("throttle: %m");
    put_group (h->ref);
    free (h);
    return NULL;
  }
  return h;
}

static void
throttle_close (void *handle)
{
  struct handle *h = handle;

  thr_member_free (h->m);
  put_group (h->ref);
  free (h);
}

static uint64_t next_stats_ns;          /* atomic */

static void
periodic_stats (void)
{
  uint64_t now = kvm_mono_ns ();
  uint64_t next = __atomic_load_n (&next_stats_ns, __ATOMIC_RELAXED);
  struct group_ref *r;

  if (now < next)
    return;
  if (next == 0) {              /* first request: start the period */
    __atomic_compare_exchange_n (&next_stats_ns, &next,
                                 now + throttle_debug_stats * 1000000000ULL,
                                 false, __ATOMIC_RELAXED, __ATOMIC_RELAXED);
    return;
  }
  if (!__atomic_compare_exchange_n (&next_stats_ns, &next,
                                    now + throttle_debug_stats * 1000000000ULL,
                                    false, __ATOMIC_RELAXED,
                                    __ATOMIC_RELAXED))
    return;                     /* another thread prints */
  pthread_mutex_lock (&groups_lock);
  for (r = groups; r; r = r->next)
    print_stats (r, "periodic");
  pthread_mutex_unlock (&groups_lock);
}

static inline int
admit (struct handle *h, enum thr_op op, uint32_t count, bool count_bytes,
       int *err)
{
  maybe_reload (NULL);
  if (throttle_debug_stats > 0)
    periodic_stats ();
  if (thr_admit (h->m, op, count, count_bytes) == -1) {
    *err = errno ? errno : ESHUTDOWN;
    return -1;
  }
  return 0;
}

static int
throttle_pread (nbdkit_next *next, void *handle, void *buf, uint32_t count,
                uint64_t offset, uint32_t flags, int *err)
{
  if (admit (handle, THR_OP_READ, count, true, err) == -1)
    return -1;
  return next->pread (next, buf, count, offset, flags, err);
}

static int
throttle_pwrite (nbdkit_next *next, void *handle, const void *buf,
                 uint32_t count, uint64_t offset, uint32_t flags, int *err)
{
  if (admit (handle, THR_OP_WRITE, count, true, err) == -1)
    return -1;
  return next->pwrite (next, buf, count, offset, flags, err);
}

/* Advertised always: nbdkit 1.32 aborts when a client's fast zero
 * reaches a layer that did not advertise it (a plugin of its own, say);
 * throttle_zero answers ENOTSUP for the layer below then.
 */
static int
throttle_can_fast_zero (nbdkit_next *next, void *handle)
{
  (void) next; (void) handle;
  return 1;
}

static int
throttle_zero (nbdkit_next *next, void *handle, uint32_t count,
               uint64_t offset, uint32_t flags, int *err)
{
  if ((flags & NBDKIT_FLAG_FAST_ZERO) && next->can_fast_zero (next) != 1) {
    *err = ENOTSUP;
    return -1;
  }
  if (zero_mode != ZERO_NONE &&
      admit (handle, THR_OP_WRITE, count, zero_mode == ZERO_BYTES, err) == -1)
    return -1;
  return next->zero (next, count, offset, flags, err);
}

static int
throttle_trim (nbdkit_next *next, void *handle, uint32_t count,
               uint64_t offset, uint32_t flags, int *err)
{
  if (zero_mode != ZERO_NONE &&
      admit (handle, THR_OP_WRITE, count, zero_mode == ZERO_BYTES, err) == -1)
    return -1;
  return next->trim (next, count, offset, flags, err);
}

/* NBD_CMD_CACHE makes the backend read ahead: one read I/O, no bytes
 * (nothing reaches the client).
 */
static int
throttle_cache (nbdkit_next *next, void *handle, uint32_t count,
                uint64_t offset, uint32_t flags, int *err)
{
  if (admit (handle, THR_OP_READ, count, false, err) == -1)
    return -1;
  return next->cache (next, count, offset, flags, err);
}

static int
throttle_get_ready (int thread_model)
{
  (void) thread_model;
  return kvm_filter_single (loads, "throttle");
}

static struct nbdkit_filter filter = {
  .name              = "throttle",
  .longname          = "nbdkit throttle filter",
  .load              = throttle_load,
  .unload            = throttle_unload,
  .get_ready         = throttle_get_ready,
  .config            = throttle_config,
  .config_complete   = throttle_config_complete,
  .config_help       = throttle_config_help,
  .open              = throttle_open,
  .close             = throttle_close,
  .pread             = throttle_pread,
  .pwrite            = throttle_pwrite,
  .can_fast_zero     = throttle_can_fast_zero,
  .zero              = throttle_zero,
  .trim              = throttle_trim,
  .cache             = throttle_cache,
};

NBDKIT_REGISTER_FILTER (filter)
