/* SPDX-License-Identifier: BSD-3-Clause */
/* snapshot engine: the chain of qcow2 layers (snapshot.h explains the
 * directory and the guarantees).
 *
 * Stacking: each layer is a qcow2 engine whose backing device is a
 * "link", a small bdev forwarding to the layer below it (the bottom
 * layer's link to the device below).  The engine of a layer owns its
 * link, but the link only borrows its target, so the chain can retarget
 * a link when the layer under it is merged away (delete) and close layers
 * in any order.  A link in probe mode answers extents with SNAP_EXT_BELOW
 * instead of asking its target: the extents of a layer then show which
 * ranges that layer holds itself (operations use this, under the
 * exclusive lock).
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <libgen.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "snapshot_int.h"
#include "qcow2/qcow2.h"
#include "util/checked.h"
#include "util/log.h"
#include "util/progress.h"
#include "util/grow.h"

/* Extent type a link in probe mode reports (not an NBD type). */
#define SNAP_EXT_BELOW (1u << 7)

/* Copy buffer for merges and commits. */
#define COPY_CHUNK (1u << 20)

/* Crash tests: KVM_SNAPSHOT_CRASH_AT=POINT makes the process kill itself
 * (SIGKILL, as a power cut would stop it) when an operation reaches
 * POINT, so that every step of every operation can be interrupted.
 */
static void
crashpoint (const char *point)
{
  const char *at = getenv ("KVM_SNAPSHOT_CRASH_AT");
  if (at && strcmp (at, point) == 0) {
    kvm_debug ("snapshot: crash point %s reached", point);
    kill (getpid (), SIGKILL);
  }
}

/* ---- links ---------------------------------------------------------- */

struct link {
  struct bdev bd;
  struct bdev *target;          /* borrowed */
  bool probe;
};

static void
link_close (struct bdev *bd)
{
  bdev_free_common (bd);
}

static int
link_pread (struct bdev *bd, void *buf, size_t count, uint64_t offset)
{
  return bdev_pread (((struct link *) bd)->target, buf, count, offset);
}

static int
link_pwrite (struct bdev *bd, const void *buf, size_t count, uint64_t offset,
             uint32_t flags)
{
  (void) buf; (void) count; (void) offset; (void) flags;
  kvm_error ("%s: a layer wrote into the layer below it", bd->name);
  errno = EROFS;
  return -1;
}

static int
link_flush (struct bdev *bd)
{
  (void) bd;
  return 0;                     /* nothing is ever written through a link */
}

static int
link_extents (struct bdev *bd, uint64_t count, uint64_t offset,
              uint32_t flags, bdev_extent_fn fn, void *opaque)
{
  struct link *l = (struct link *) bd;
  if (l->probe)
    return fn (opaque, offset, count, SNAP_EXT_BELOW);
  return bdev_extents (l->target, count, offset, flags, fn, opaque);
}

static const struct bdev_ops link_ops = {
  .format = "snapshot-link",
  .close = link_close,
  .pread = link_pread,
  .pwrite = link_pwrite,
  .flush = link_flush,
  .extents = link_extents,
};

static struct link *
link_new (struct bdev *target)
{
  struct link *l = bdev_alloc (sizeof *l, &link_ops, "snapshot layer below");
  if (!l)
    return NULL;
  l->target = target;
  l->bd.size = target->size;
  l->bd.readonly = true;
  l->bd.caps = BDEV_CAN_EXTENTS;
  return l;
}

/* ---- the chain ------------------------------------------------------ */

#define TOP(c) ((c)->layers[(c)->n - 1])

bool
snap_name_valid (const char *name)
{
  size_t len = strlen (name);
  if (len == 0 || len > SNAP_NAME_MAX || name[0] == '.' || name[0] == '-')
    return false;
  for (size_t i = 0; i < len; i++) {
    char ch = name[i];
    if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
          (ch >= '0' && ch <= '9') || ch == '.' || ch == '_' || ch == '-' ||
          ch == '+' || ch == ':'))
      return false;
  }
  return true;
}

static char *
layer_path (const struct snap_chain *c, unsigned id)
{
  char *p;
  if (asprintf (&p, "%s/layer-%u.qcow2", c->dir, id) == -1) {
    kvm_error ("%s: out of memory", c->dir);
    errno = ENOMEM;
    return NULL;
  }
  return p;
}

/* ---- layers --------------------------------------------------------- */

/* Open layer file ID over TARGET; fills L->bd and L->link. */
static int
layer_open (struct snap_chain *c, struct layer *l, struct bdev *target)
{
  char *path = layer_path (c, l->id);
  if (!path)
    return -1;
  struct link *lk = link_new (target);
  if (!lk) {
    free (path);
    return -1;
  }
  struct bdev_open_opts o = {
    .backing = &lk->bd,
    .format_opts = (const char *const *) c->fopts,
  };
  l->bd = qcow2_open (path, &o, 0);     /* owns lk, also on failure */
  if (!l->bd) {
    kvm_error ("%s: cannot open snapshot layer", path);
    free (path);
    return -1;
  }
  free (path);
  if (l->bd->size != c->size) {
    kvm_error ("%s: layer %u is %" PRIu64 " bytes, the chain %" PRIu64,
               c->dir, l->id, l->bd->size, c->size);
    bdev_close (l->bd);
    l->bd = NULL;
    errno = EINVAL;
    return -1;
  }
  l->link = lk;
  return 0;
}

/* A new empty layer file with id c->next_id (bumped). */
static int
layer_create (struct snap_chain *c, struct layer *l, struct bdev *target)
{
  memset (l, 0, sizeof *l);
  if (c->next_id > SNAP_MAX_ID) {
    kvm_error ("%s: no layer ids are left (next-id %u in the state file)",
               c->dir, c->next_id);
    errno = EOVERFLOW;
    return -1;
  }
  l->id = c->next_id;
  char *path = layer_path (c, l->id);
  if (!path)
    return -1;
  /* An id above next-id is never named by the state file: a left-over. */
  if (unlinkat (c->dirfd, strrchr (path, '/') + 1, 0) == -1 &&
      errno != ENOENT) {
    kvm_error ("%s: %m", path);
    free (path);
    return -1;
  }
  struct qcow2_create_opts o = { .size = c->size, .version = 3 };
  int r = qcow2_create (path, &o);
  free (path);
  if (r == -1 || snap_fsync_dir (c) == -1)
    return -1;
  if (layer_open (c, l, target) == -1) {
    char *p = layer_path (c, l->id);
    if (p)
      unlink (p);
    free (p);
    return -1;
  }
  c->next_id++;
  return 0;
}

/* Close layer L and remove its file (it is no longer in the state),
 * unless a state may not be durable (keep_files).
 */
static void
layer_drop (struct snap_chain *c, struct layer *l)
{
  bdev_close (l->bd);
  l->bd = NULL;
  char *p = c->keep_files ? NULL : layer_path (c, l->id);
  if (p && unlink (p) == -1 && errno != ENOENT)
    kvm_error ("%s: cannot remove: %m", p);
  free (p);
  free (l->name);
  l->name = NULL;
}

/* Remove files that the state does not name (left by a crash). */
static void
collect_garbage (struct snap_chain *c)
{
  int fd = dup (c->dirfd);
  DIR *d = fd >= 0 ? fdopendir (fd) : NULL;
  if (!d) {
    if (fd >= 0)
      close (fd);
    return;
  }
  rewinddir (d);
  struct dirent *e;
  bool removed = false;
  while ((e = readdir (d))) {
    unsigned id;
    int pos = 0;
    bool stale = false;
    if (sscanf (e->d_name, "layer-%u.qcow2%n", &id, &pos) == 1 &&
        e->d_name[pos] == '\0') {
      stale = true;
      for (size_t i = 0; i < c->n; i++)
        if (c->layers[i].id == id)
          stale = false;
    }
    else if (strcmp (e->d_name, SNAP_STATE_FILE ".tmp") == 0)
      stale = true;
    if (stale) {
      kvm_debug ("%s: removing left-over %s", c->dir, e->d_name);
      if (unlinkat (c->dirfd, e->d_name, 0) == 0)
        removed = true;
    }
  }
  closedir (d);
  if (removed)
    snap_fsync_dir (c);
}

/* ---- extents collection and copying ------------------------------- */

struct run {
  uint64_t off, len;
  uint32_t type;
};

struct runs {
  struct run *v;
  size_t n, cap;
};

static int
runs_add (void *opaque, uint64_t off, uint64_t len, uint32_t type)
{
  struct runs *r = opaque;
  if (r->n && r->v[r->n - 1].type == type &&
      r->v[r->n - 1].off + r->v[r->n - 1].len == off) {
    r->v[r->n - 1].len += len;
    return 0;
  }
  if (GROW_FOR (r->v, r->n, r->cap, 64) == -1) {
    kvm_error ("snapshot: out of memory");
    return -1;
  }
  r->v[r->n++] = (struct run) { off, len, type };
  return 0;
}

/* Copy [off, off+len) from SRC to DST: zeroes as zero requests. */
static int
copy_range (struct bdev *src, struct bdev *dst, uint64_t off, uint64_t len,
            uint32_t type, uint8_t *buf, const char *point,
            struct kvm_progress *pr)
{
  if (type & BDEV_EXTENT_ZERO) {
    if (bdev_zero (dst, len, off, BDEV_MAY_TRIM) == -1)
      return -1;
    crashpoint (point);
    kvm_progress_set (pr, off + len);
    return 0;
  }
  while (len > 0) {
    size_t n = len < COPY_CHUNK ? len : COPY_CHUNK;
    if (bdev_pread (src, buf, n, off) == -1 ||
        bdev_pwrite (dst, buf, n, off, 0) == -1)
      return -1;
    crashpoint (point);
    off += n;
    len -= n;
    kvm_progress_set (pr, off);
  }
  return 0;
}

/* Merge layer I into layer I + 1: what I holds and I + 1 does not is
 * copied up.  The content of every snapshot stays the same throughout
 * (I + 1 only gets what it read through from I anyway), so a crash in
 * the middle is harmless.  Exclusive lock held.
 */
static int
merge_up (struct snap_chain *c, size_t i)
{
  struct layer *lo = &c->layers[i], *hi = &c->layers[i + 1];
  struct runs rh = { 0 }, rl = { 0 };
  uint8_t *buf = malloc (COPY_CHUNK);
  struct kvm_progress pr;
  char what[64];
  int r = -1;

  if (!buf) {
    kvm_error ("%s: out of memory", c->dir);
    return -1;
  }
  snprintf (what, sizeof what, "snapshot delete: merging layer %zu", i);
  kvm_progress_start (&pr, what, c->size);
  hi->link->probe = lo->link->probe = true;
  if (bdev_extents (hi->bd, c->size, 0, 0, runs_add, &rh) == -1)
    goto out;
  for (size_t k = 0; k < rh.n; k++) {
    if (rh.v[k].type != SNAP_EXT_BELOW)
      continue;
    rl.n = 0;
    if (bdev_extents (lo->bd, rh.v[k].len, rh.v[k].off, 0, runs_add,
                      &rl) == -1)
      goto out;
    for (size_t j = 0; j < rl.n; j++)
      if (rl.v[j].type != SNAP_EXT_BELOW &&
          copy_range (lo->bd, hi->bd, rl.v[j].off, rl.v[j].len,
                      rl.v[j].type, buf, "delete-merge", &pr) == -1)
        goto out;
    kvm_progress_set (&pr, rh.v[k].off + rh.v[k].len);
  }
  r = bdev_flush (hi->bd);
  if (r == 0)
    kvm_progress_end (&pr);
 out:
  hi->link->probe = lo->link->probe = false;
  free (rh.v);
  free (rl.v);
  free (buf);
  return r;
}

/* Write everything the chain holds into the device below and flush it.
 * Exclusive lock held (or the chain not yet shared).
 */
static int
commit_copy (struct snap_chain *c)
{
  struct runs rs = { 0 };
  uint8_t *buf = malloc (COPY_CHUNK);
  struct kvm_progress pr;
  int r = -1;

  if (!buf) {
    kvm_error ("%s: out of memory", c->dir);
    return -1;
  }
  c->layers[0].link->probe = true;
  r = bdev_extents (TOP (c).bd, c->size, 0, 0, runs_add, &rs);
  c->layers[0].link->probe = false;
  kvm_progress_start (&pr, "snapshot commit", c->size);
  for (size_t k = 0; r == 0 && k < rs.n; k++)
    if (rs.v[k].type != SNAP_EXT_BELOW)
      r = copy_range (TOP (c).bd, c->below, rs.v[k].off, rs.v[k].len,
                      rs.v[k].type, buf, "commit-copy", &pr);
  if (r == 0)
    r = bdev_flush (c->below);
  if (r == 0)
    kvm_progress_end (&pr);
  if (r == 0)
    crashpoint ("commit-copied");
  free (rs.v);
  free (buf);
  return r;
}

/* The commit after its state file says "committing": copy, then a new
 * empty chain.
 */
static int
commit_finish (struct snap_chain *c)
{
  struct layer nl;
  if (commit_copy (c) == -1 || layer_create (c, &nl, c->below) == -1)
    return -1;
  crashpoint ("commit-layer");
  if (snap_write_layers (c, &nl, 1, false) == -1) {
    layer_drop (c, &nl);
    return -1;
  }
  crashpoint ("commit-state");
  for (size_t i = c->n; i-- > 0; ) {
    layer_drop (c, &c->layers[i]);
    crashpoint ("commit-drop");
  }
  c->layers[0] = nl;
  c->n = 1;
  c->committing = false;
  return 0;
}

/* ---- the chain as a device ----------------------------------------- */

#define CHAIN(bd) ((struct snap_chain *) (bd))

static void
chain_bd_close (struct bdev *bd)
{
  (void) bd;                    /* snap_chain_close does it */
}

static int
chain_pread (struct bdev *bd, void *buf, size_t count, uint64_t offset)
{
  struct snap_chain *c = CHAIN (bd);
  pthread_rwlock_rdlock (&c->lock);
  int r = bdev_pread (TOP (c).bd, buf, count, offset);
  pthread_rwlock_unlock (&c->lock);
  return r;
}

static int
chain_pwrite (struct bdev *bd, const void *buf, size_t count,
              uint64_t offset, uint32_t flags)
{
  struct snap_chain *c = CHAIN (bd);
  pthread_rwlock_rdlock (&c->lock);
  int r = bdev_pwrite (TOP (c).bd, buf, count, offset, flags);
  pthread_rwlock_unlock (&c->lock);
  return r;
}

static int
chain_flush (struct bdev *bd)
{
  struct snap_chain *c = CHAIN (bd);
  pthread_rwlock_rdlock (&c->lock);
  int r = bdev_flush (TOP (c).bd);
  /* The state naming the top layer must be durable too. */
  if (r == 0 && atomic_load (&c->state_unsynced))
    r = snap_fsync_dir (c);
  pthread_rwlock_unlock (&c->lock);
  return r;
}

/* Trim and zero stay in the top layer (zero clusters), never below. */
static int
chain_trim (struct bdev *bd, uint64_t count, uint64_t offset, uint32_t flags)
{
  struct snap_chain *c = CHAIN (bd);
  pthread_rwlock_rdlock (&c->lock);
  int r = bdev_trim (TOP (c).bd, count, offset, flags);
  pthread_rwlock_unlock (&c->lock);
  return r;
}

static int
chain_zero (struct bdev *bd, uint64_t count, uint64_t offset, uint32_t flags)
{
  struct snap_chain *c = CHAIN (bd);
  pthread_rwlock_rdlock (&c->lock);
  int r = bdev_zero (TOP (c).bd, count, offset, flags);
  pthread_rwlock_unlock (&c->lock);
  return r;
}

static int
chain_extents (struct bdev *bd, uint64_t count, uint64_t offset,
               uint32_t flags, bdev_extent_fn fn, void *opaque)
{
  struct snap_chain *c = CHAIN (bd);
  pthread_rwlock_rdlock (&c->lock);
  int r = bdev_extents (TOP (c).bd, count, offset, flags, fn, opaque);
  pthread_rwlock_unlock (&c->lock);
  return r;
}

static const struct bdev_ops chain_ops = {
  .format = "snapshot",
  .close = chain_bd_close,
  .pread = chain_pread,
  .pwrite = chain_pwrite,
  .flush = chain_flush,
  .trim = chain_trim,
  .zero = chain_zero,
  .extents = chain_extents,
};

struct bdev *
snap_chain_bdev (struct snap_chain *c)
{
  return &c->bd;
}

/* ---- open and close ------------------------------------------------- */

static void
chain_free (struct snap_chain *c)
{
  for (size_t i = c->n; i-- > 0; ) {
    bdev_close (c->layers[i].bd);
    free (c->layers[i].name);
  }
  free (c->layers);
  bdev_close (c->below);
  if (c->dirfd >= 0)
    close (c->dirfd);             /* also drops the flock */
  if (c->fopts)
    for (char **p = c->fopts; *p; p++)
      free (*p);
  free (c->fopts);
  free (c->dir);
  pthread_rwlock_destroy (&c->lock);
  bdev_free_common (&c->bd);
}

void
snap_chain_close (struct snap_chain *c)
{
  if (!c)
    return;
  if (atomic_load (&c->state_unsynced) && snap_fsync_dir (c) == -1)
    kvm_error ("%s: closing with a state that may not survive a crash",
               c->dir);
  chain_free (c);
}

/* fsync the directory that holds DIR: DIR's own entry (a new overlay
 * directory) is durable only then, and with it everything inside.
 */
static int
fsync_parent (const char *dir)
{
  char *copy = strdup (dir);
  if (!copy) {
    kvm_error ("%s: out of memory", dir);
    return -1;
  }
  const char *parent = dirname (copy);
  int fd = open (parent, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  int r = fd == -1 ? -1 : fsync (fd);
  if (r == -1)
    kvm_error ("%s: fsync: %m", parent);
  if (fd >= 0)
    close (fd);
  free (copy);
  return r;
}

struct snap_chain *
snap_chain_open (const char *dir, struct bdev *below,
                 const char *const *format_opts)
{
  struct snap_chain *c;
  char *name;
  struct state s;

  if (asprintf (&name, "snapshot chain %s", dir) == -1) {
    bdev_close (below);
    kvm_error ("%s: out of memory", dir);
    return NULL;
  }
  c = bdev_alloc (sizeof *c, &chain_ops, name);
  free (name);
  if (!c) {
    bdev_close (below);
    return NULL;
  }
  c->below = below;
  c->dirfd = -1;
  pthread_rwlockattr_t attr;
  pthread_rwlockattr_init (&attr);
  /* Operations must not wait forever behind a stream of I/O. */
  pthread_rwlockattr_setkind_np (&attr,
                                 PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
  pthread_rwlock_init (&c->lock, &attr);
  pthread_rwlockattr_destroy (&attr);
  if (!(c->dir = strdup (dir)))
    goto nomem;
  size_t nf = 0;
  while (format_opts && format_opts[nf])
    nf++;
  if (!(c->fopts = calloc (nf + 1, sizeof *c->fopts)))
    goto nomem;
  for (size_t i = 0; i < nf; i++)
    if (!(c->fopts[i] = strdup (format_opts[i])))
      goto nomem;

  if (mkdir (dir, 0700) == -1 && errno != EEXIST) {
    kvm_error ("%s: cannot create the overlay directory: %m", dir);
    goto fail;
  }
  c->dirfd = open (dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (c->dirfd == -1) {
    kvm_error ("%s: %m", dir);
    goto fail;
  }
  if (flock (c->dirfd, LOCK_EX | LOCK_NB) == -1) {
    kvm_error ("%s: the overlay directory is in use by another process "
               "(%m)", dir);
    goto fail;
  }

  if (snap_state_read (c->dirfd, dir, &s) == -1) {
    if (errno != ENOENT)
      goto fail;
    /* First use: an empty top layer over the device below. */
    if (below->size == 0) {
      kvm_error ("%s: the device below is empty", dir);
      errno = EINVAL;
      goto fail;
    }
    c->size = below->size;
    c->next_id = 1;
    if (!(c->layers = calloc (1, sizeof *c->layers)))
      goto nomem;
    collect_garbage (c);        /* a crash during an earlier first use */
    if (layer_create (c, &c->layers[0], below) == -1)
      goto fail;
    c->n = 1;
    /* The directory may be new (now or before a crash): its entry in
     * its parent must be durable with the state, or a power loss can
     * take the whole chain away after writes to it were flushed.
     */
    if (snap_write_layers (c, c->layers, 1, false) == -1 ||
        fsync_parent (dir) == -1)
      goto fail;
    kvm_debug ("%s: new snapshot chain over %" PRIu64 " bytes", dir,
               c->size);
  }
  else {
    c->size = s.size;
    c->next_id = s.next_id;
    c->committing = s.committing;
    c->layers = s.layers;
    c->n = s.n;
    if (below->size != c->size) {
      kvm_error ("%s: the export below is %" PRIu64 " bytes but the "
                 "snapshot chain was made over %" PRIu64 " bytes: refusing "
                 "a changed size", dir, below->size, c->size);
      errno = EINVAL;
      goto fail;
    }
    for (size_t i = 0; i < c->n; i++) {
      struct bdev *target = i ? c->layers[i - 1].bd : below;
      if (layer_open (c, &c->layers[i], target) == -1) {
        /* Layers after i were never opened. */
        for (size_t j = i; j < c->n; j++)
          free (c->layers[j].name);
        c->n = i;
        goto fail;
      }
    }
    /* The state just read may be a rename that a crash kept from being
     * synced (killed between the rename and the fsync of the directory):
     * make it durable before removing what the previous state names, and
     * before writes to its top layer are flushed, or a power loss could
     * bring back the previous state without its layers, or without
     * flushed writes.  The directory's own entry too: a server killed
     * right after writing the first state never synced it.
     */
    if (snap_fsync_dir (c) == -1 || fsync_parent (dir) == -1)
      goto fail;
    collect_garbage (c);
    if (c->committing) {
      kvm_debug ("%s: finishing an interrupted commit", dir);
      if (commit_finish (c) == -1)
        goto fail;
    }
  }
  c->bd.size = c->size;
  c->bd.caps = TOP (c).bd->caps & ~BDEV_CAN_FUA;
  c->bd.caps |= BDEV_CAN_MULTI_CONN | BDEV_CAN_EXTENTS;
  c->bd.block_size = 1;
  return c;

 nomem:
  kvm_error ("%s: out of memory", dir);
  errno = ENOMEM;
 fail:
  chain_free (c);
  return NULL;
}

/* ---- operations ------------------------------------------------------ */

/* After a commit that failed, the device below holds part of the chain's
 * data: the snapshots no longer read as they were, and only a commit
 * (finishing the copy) may follow.  Lock held.
 */
static int
refuse_if_committing (struct snap_chain *c)
{
  if (!c->committing)
    return 0;
  kvm_error ("%s: a commit started and did not finish, and the device "
             "below is partly written: the snapshots cannot be used; "
             "commit again", c->dir);
  errno = EBUSY;
  return -1;
}

static ssize_t
find_snapshot (struct snap_chain *c, const char *name)
{
  for (size_t i = 0; i + 1 < c->n; i++)
    if (strcmp (c->layers[i].name, name) == 0)
      return i;
  return -1;
}

static int
no_such (struct snap_chain *c, const char *name)
{
  kvm_error ("%s: no snapshot named '%s'", c->dir, name);
  errno = ENOENT;
  return -1;
}

int
snap_create (struct snap_chain *c, const char *name)
{
  struct layer nl;
  int r = -1;

  if (!snap_name_valid (name)) {
    kvm_error ("'%s' is not a valid snapshot name (1-%d characters of "
               "A-Z a-z 0-9 . _ - + :, not starting with . or -)",
               name, SNAP_NAME_MAX);
    errno = EINVAL;
    return -1;
  }
  pthread_rwlock_wrlock (&c->lock);
  if (refuse_if_committing (c) == -1)
    goto out;
  if (find_snapshot (c, name) >= 0) {
    kvm_error ("%s: a snapshot named '%s' exists already", c->dir, name);
    errno = EEXIST;
    goto out;
  }
  if (c->n >= SNAP_MAX_LAYERS) {
    kvm_error ("%s: %zu layers: at most %d (delete or commit snapshots "
               "first)", c->dir, c->n, SNAP_MAX_LAYERS);
    errno = EFBIG;
    goto out;
  }
  struct layer *nv = realloc (c->layers, (c->n + 1) * sizeof *nv);
  if (!nv) {
    kvm_error ("%s: out of memory", c->dir);
    goto out;
  }
  c->layers = nv;
  /* Everything acknowledged so far is durable in the layer we freeze. */
  if (bdev_flush (TOP (c).bd) == -1 ||
      layer_create (c, &nl, TOP (c).bd) == -1)
    goto out;
  crashpoint ("create-layer");
  TOP (c).name = strdup (name);
  TOP (c).time = time (NULL);
  if (!TOP (c).name) {
    layer_drop (c, &nl);
    goto out;
  }
  c->layers[c->n] = nl;
  if (snap_write_layers (c, c->layers, c->n + 1, false) == -1) {
    layer_drop (c, &c->layers[c->n]);
    free (TOP (c).name);
    TOP (c).name = NULL;
    goto out;
  }
  crashpoint ("create-state");
  c->n++;
  r = 0;
 out:
  pthread_rwlock_unlock (&c->lock);
  return r;
}

int
snap_revert (struct snap_chain *c, const char *name)
{
  struct layer nl;
  int r = -1;

  pthread_rwlock_wrlock (&c->lock);
  if (refuse_if_committing (c) == -1)
    goto out;
  ssize_t i = find_snapshot (c, name);
  if (i < 0) {
    no_such (c, name);
    goto out;
  }
  if (layer_create (c, &nl, c->layers[i].bd) == -1)
    goto out;
  crashpoint ("revert-layer");
  /* The new state: snapshots up to NAME, a new empty top. */
  struct layer *keep = malloc ((i + 2) * sizeof *keep);
  if (!keep) {
    layer_drop (c, &nl);
    goto out;
  }
  memcpy (keep, c->layers, (i + 1) * sizeof *keep);
  keep[i + 1] = nl;
  if (snap_write_layers (c, keep, i + 2, false) == -1) {
    free (keep);
    layer_drop (c, &nl);
    goto out;
  }
  free (keep);
  crashpoint ("revert-state");
  for (size_t j = c->n; j-- > (size_t) i + 1; ) {
    layer_drop (c, &c->layers[j]);
    crashpoint ("revert-drop");
  }
  c->layers[i + 1] = nl;
  c->n = i + 2;
  snap_fsync_dir (c);
  r = 0;
 out:
  pthread_rwlock_unlock (&c->lock);
  return r;
}

int
snap_delete (struct snap_chain *c, const char *name)
{
  int r = -1;

  pthread_rwlock_wrlock (&c->lock);
  if (refuse_if_committing (c) == -1)
    goto out;
  ssize_t i = find_snapshot (c, name);
  if (i < 0) {
    no_such (c, name);
    goto out;
  }
  if (merge_up (c, i) == -1)
    goto out;
  crashpoint ("delete-merged");
  struct layer *keep = malloc ((c->n - 1) * sizeof *keep);
  if (!keep) {
    kvm_error ("%s: out of memory", c->dir);
    goto out;
  }
  memcpy (keep, c->layers, i * sizeof *keep);
  memcpy (keep + i, c->layers + i + 1, (c->n - i - 1) * sizeof *keep);
  if (snap_write_layers (c, keep, c->n - 1, false) == -1) {
    free (keep);
    goto out;
  }
  free (keep);
  crashpoint ("delete-state");
  /* The layer above now reads through to what was under NAME. */
  c->layers[i + 1].link->target = c->layers[i].link->target;
  layer_drop (c, &c->layers[i]);
  memmove (c->layers + i, c->layers + i + 1,
           (c->n - i - 1) * sizeof *c->layers);
  c->n--;
  snap_fsync_dir (c);
  r = 0;
 out:
  pthread_rwlock_unlock (&c->lock);
  return r;
}

int
snap_commit (struct snap_chain *c)
{
  int r = -1;

  pthread_rwlock_wrlock (&c->lock);
  if (c->below->readonly) {
    kvm_error ("%s: the export below is read-only: cannot commit", c->dir);
    errno = EROFS;
    goto out;
  }
  if (bdev_flush (TOP (c).bd) == -1)
    goto out;
  /* From here on the snapshots' content may change (the device below is
   * written), so the state says so first: a crash makes the next open
   * finish the commit.
   */
  if (snap_write_layers (c, c->layers, c->n, true) == -1)
    goto out;
  crashpoint ("commit-marked");
  c->committing = true;
  /* The mark must be durable before the device below is written: if the
   * directory sync after its rename failed, a crash could bring back the
   * state without it, whose layers would then read through to a device
   * below that the commit has partly overwritten.  Until the sync
   * succeeds, nothing is written below; the state on disk may say
   * "committing", so the chain behaves as after a failed commit.
   */
  if (atomic_load (&c->state_unsynced) && snap_fsync_dir (c) == -1) {
    kvm_error ("%s: the commit cannot start: its state is not durable",
               c->dir);
    goto out;
  }
  r = commit_finish (c);
 out:
  pthread_rwlock_unlock (&c->lock);
  return r;
}

int
snap_list (struct snap_chain *c, snap_list_fn fn, void *opaque)
{
  int r = 0;
  pthread_rwlock_rdlock (&c->lock);
  for (size_t i = 0; r == 0 && i + 1 < c->n; i++) {
    struct snap_info info = {
      .name = c->layers[i].name, .time = c->layers[i].time,
    };
    char *p = layer_path (c, c->layers[i].id);
    struct stat st;
    if (p && stat (p, &st) == 0)
      info.bytes = st.st_size;
    free (p);
    r = fn (opaque, &info);
  }
  pthread_rwlock_unlock (&c->lock);
  return r;
}

/* ---- snapshot views --------------------------------------------------- */

struct view {
  struct bdev bd;
  struct snap_chain *c;
  unsigned id;
};

/* The layer of the view, or NULL (ENOENT, reported).  Shared lock held. */
static struct bdev *
view_layer (struct view *v)
{
  struct snap_chain *c = v->c;
  if (refuse_if_committing (c) == -1)
    return NULL;
  for (size_t i = 0; i + 1 < c->n; i++)
    if (c->layers[i].id == v->id)
      return c->layers[i].bd;
  kvm_error ("%s: the snapshot was deleted or reverted away", v->bd.name);
  errno = ENOENT;
  return NULL;
}

static void
view_close (struct bdev *bd)
{
  bdev_free_common (bd);
}

static int
view_pread (struct bdev *bd, void *buf, size_t count, uint64_t offset)
{
  struct view *v = (struct view *) bd;
  pthread_rwlock_rdlock (&v->c->lock);
  struct bdev *l = view_layer (v);
  int r = l ? bdev_pread (l, buf, count, offset) : -1;
  pthread_rwlock_unlock (&v->c->lock);
  return r;
}

static int
view_pwrite (struct bdev *bd, const void *buf, size_t count, uint64_t offset,
             uint32_t flags)
{
  (void) buf; (void) count; (void) offset; (void) flags;
  kvm_error ("%s: a snapshot is read-only", bd->name);
  errno = EROFS;
  return -1;
}

static int
view_flush (struct bdev *bd)
{
  (void) bd;
  return 0;
}

static int
view_extents (struct bdev *bd, uint64_t count, uint64_t offset,
              uint32_t flags, bdev_extent_fn fn, void *opaque)
{
  struct view *v = (struct view *) bd;
  pthread_rwlock_rdlock (&v->c->lock);
  struct bdev *l = view_layer (v);
  int r = l ? bdev_extents (l, count, offset, flags, fn, opaque) : -1;
  pthread_rwlock_unlock (&v->c->lock);
  return r;
}

static const struct bdev_ops view_ops = {
  .format = "snapshot-view",
  .close = view_close,
  .pread = view_pread,
  .pwrite = view_pwrite,
  .flush = view_flush,
  .extents = view_extents,
};

struct bdev *
snap_view_open (struct snap_chain *c, const char *name)
{
  char *desc;
  struct view *v = NULL;

  if (asprintf (&desc, "snapshot '%s'", name) == -1) {
    kvm_error ("out of memory");
    return NULL;
  }
  pthread_rwlock_rdlock (&c->lock);
  ssize_t i = -1;
  if (refuse_if_committing (c) == 0 && (i = find_snapshot (c, name)) < 0)
    no_such (c, name);
  if (i >= 0 && (v = bdev_alloc (sizeof *v, &view_ops, desc))) {
    v->c = c;
    v->id = c->layers[i].id;
    v->bd.size = c->size;
    v->bd.readonly = true;
    v->bd.caps = BDEV_CAN_EXTENTS | BDEV_CAN_MULTI_CONN;
  }
  pthread_rwlock_unlock (&c->lock);
  free (desc);
  return v ? &v->bd : NULL;
}
