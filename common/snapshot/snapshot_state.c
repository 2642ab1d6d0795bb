/* SPDX-License-Identifier: BSD-3-Clause */
/* The snapshot engine's state file (format in snapshot.h): parsed at open,
 * replaced atomically (written beside, fsynced, renamed, directory
 * fsynced) by every operation.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "snapshot_int.h"
#include "util/checked.h"
#include "util/log.h"

static void
state_free (struct state *s)
{
  for (size_t i = 0; i < s->n; i++)
    free (s->layers[i].name);
  free (s->layers);
  s->layers = NULL;
  s->n = 0;
}

static int
parse_uint (const char *s, uint64_t max, uint64_t *v)
{
  char *end;
  if (*s < '0' || *s > '9')
    return -1;
  errno = 0;
  unsigned long long x = strtoull (s, &end, 10);
  if (errno || *end || x > max)
    return -1;
  *v = x;
  return 0;
}

/* Parse the state file at DIRFD.  -1 with errno ENOENT if there is none
 * (no message), other errors reported.
 */
int
snap_state_read (int dirfd, const char *dir, struct state *s)
{
  memset (s, 0, sizeof *s);
  int fd = openat (dirfd, SNAP_STATE_FILE, O_RDONLY | O_CLOEXEC);
  if (fd == -1) {
    if (errno != ENOENT)
      kvm_error ("%s/%s: %m", dir, SNAP_STATE_FILE);
    return -1;
  }
  FILE *f = fdopen (fd, "r");
  if (!f) {
    close (fd);
    kvm_error ("%s: fdopen: %m", dir);
    return -1;
  }
  char line[256];
  unsigned lineno = 0;
  bool have_top = false, have_end = false, have_size = false;
  while (fgets (line, sizeof line, f)) {
    lineno++;
    size_t len = strlen (line);
    if (len == 0 || line[len - 1] != '\n' || have_end)
      goto bad;
    line[len - 1] = '\0';
    char *sp = strchr (line, ' ');
    char *arg = sp ? sp + 1 : line + len - 1;
    if (sp)
      *sp = '\0';
    uint64_t v;
    if (lineno == 1) {
      if (strcmp (line, "nbdkit-snapshot-chain") || strcmp (arg, "1"))
        goto bad;
    }
    else if (strcmp (line, "size") == 0) {
      if (parse_uint (arg, INT64_MAX, &s->size) == -1)
        goto bad;
      have_size = true;
    }
    else if (strcmp (line, "next-id") == 0) {
      if (parse_uint (arg, SNAP_MAX_ID + 1, &v) == -1)
        goto bad;
      s->next_id = v;
    }
    else if (strcmp (line, "committing") == 0) {
      if (parse_uint (arg, 1, &v) == -1)
        goto bad;
      s->committing = v;
    }
    else if (strcmp (line, "layer") == 0 || strcmp (line, "top") == 0) {
      bool top = line[0] == 't';
      char *f2 = NULL, *f3 = NULL;
      if (have_top)
        goto bad;
      if (s->n >= SNAP_MAX_LAYERS) {
        fclose (f);
        state_free (s);
        kvm_error ("%s/%s: more than %d layers (the limit) at line %u",
                   dir, SNAP_STATE_FILE, SNAP_MAX_LAYERS, lineno);
        errno = EFBIG;
        return -1;
      }
      if (!top) {               /* layer ID TIME NAME */
        if (!(f2 = strchr (arg, ' ')))
          goto bad;
        *f2++ = '\0';
        if (!(f3 = strchr (f2, ' ')))
          goto bad;
        *f3++ = '\0';
      }
      struct layer *nl = realloc (s->layers, (s->n + 1) * sizeof *nl);
      if (!nl) {
        fclose (f);
        state_free (s);
        kvm_error ("%s: out of memory", dir);
        errno = ENOMEM;
        return -1;
      }
      s->layers = nl;
      struct layer *l = memset (&nl[s->n], 0, sizeof *l);
      if (parse_uint (arg, SNAP_MAX_ID, &v) == -1)
        goto bad;
      l->id = v;
      if (!top) {
        if (parse_uint (f2, INT64_MAX, &v) == -1 || !snap_name_valid (f3))
          goto bad;
        l->time = v;
        if (!(l->name = strdup (f3))) {
          fclose (f);
          state_free (s);
          errno = ENOMEM;
          kvm_error ("%s: out of memory", dir);
          return -1;
        }
      }
      s->n++;
      for (size_t i = 0; i + 1 < s->n; i++)
        if (s->layers[i].id == l->id ||
            (!top && s->layers[i].name && strcmp (s->layers[i].name,
                                                  l->name) == 0))
          goto bad;
      have_top = top;
    }
    else if (strcmp (line, "end") == 0)
      have_end = true;
    else
      goto bad;
  }
  if (ferror (f)) {             /* an I/O error, not a corrupt file */
    int e = errno;
    fclose (f);
    state_free (s);
    errno = e ? e : EIO;
    kvm_error ("%s/%s: reading: %m", dir, SNAP_STATE_FILE);
    return -1;
  }
  fclose (f);
  if (!have_end || !have_top || !have_size || s->size == 0)
    goto bad_closed;
  for (size_t i = 0; i < s->n; i++)
    if (s->layers[i].id >= s->next_id)
      goto bad_closed;
  return 0;

 bad:
  fclose (f);
 bad_closed:
  state_free (s);
  kvm_error ("%s/%s: corrupt chain state file (line %u)", dir,
             SNAP_STATE_FILE, lineno);
  errno = EINVAL;
  return -1;
}

int
snap_fsync_dir (struct snap_chain *c)
{
  if (fsync (c->dirfd) == -1) {
    kvm_error ("%s: fsync: %m", c->dir);
    return -1;
  }
  atomic_store (&c->state_unsynced, false);
  return 0;
}

/* Replace the state file with S: temp file, fsync, rename, fsync dir. */
static int
state_write (struct snap_chain *c, const struct state *s)
{
  static const char tmp[] = SNAP_STATE_FILE ".tmp";
  char *buf = NULL;
  size_t len = 0;
  FILE *m = open_memstream (&buf, &len);
  if (!m) {
    kvm_error ("%s: open_memstream: %m", c->dir);
    return -1;
  }
  fprintf (m, "nbdkit-snapshot-chain 1\nsize %" PRIu64 "\nnext-id %u\n"
           "committing %d\n", s->size, s->next_id, s->committing ? 1 : 0);
  for (size_t i = 0; i < s->n; i++) {
    if (s->layers[i].name)
      fprintf (m, "layer %u %" PRIu64 " %s\n", s->layers[i].id,
               (uint64_t) s->layers[i].time, s->layers[i].name);
    else
      fprintf (m, "top %u\n", s->layers[i].id);
  }
  fprintf (m, "end\n");
  if (fclose (m) != 0) {
    free (buf);
    kvm_error ("%s: out of memory", c->dir);
    return -1;
  }
  int fd = openat (c->dirfd, tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC,
                   0600);
  if (fd == -1) {
    kvm_error ("%s/%s: %m", c->dir, tmp);
    free (buf);
    return -1;
  }
  size_t done = 0;
  while (done < len) {
    ssize_t r = write (fd, buf + done, len - done);
    if (r <= 0) {
      if (r == -1 && errno == EINTR)
        continue;
      if (r == 0)
        errno = ENOSPC;
      kvm_error ("%s/%s: write: %m", c->dir, tmp);
      goto fail;
    }
    done += r;
  }
  if (fsync (fd) == -1) {
    kvm_error ("%s/%s: fsync: %m", c->dir, tmp);
    goto fail;
  }
  close (fd);
  free (buf);
  if (renameat (c->dirfd, tmp, c->dirfd, SNAP_STATE_FILE) == -1) {
    kvm_error ("%s: rename %s: %m", c->dir, tmp);
    return -1;
  }
  /* From here the new state is the state: undoing the operation now
   * would remove the layer it names.  If the directory cannot be synced,
   * a crash may bring back the old state, whose layers must then still
   * exist: no layer file is removed until the chain is opened again.
   * Nor may a flush of the chain succeed before the directory is synced:
   * writes it acknowledges go to layers that only the new state names.
   */
  if (snap_fsync_dir (c) == -1) {
    kvm_error ("%s: the new state may not survive a crash; layer files "
               "are kept until the next open, and flushes fail until the "
               "directory can be synced", c->dir);
    c->keep_files = true;
    atomic_store (&c->state_unsynced, true);
  }
  return 0;
 fail:
  close (fd);
  free (buf);
  unlinkat (c->dirfd, tmp, 0);
  return -1;
}

/* The chain's state with layers L (N of them) and the given flag. */
int
snap_write_layers (struct snap_chain *c, const struct layer *l, size_t n,
                   bool committing)
{
  struct state s = {
    .size = c->size, .next_id = c->next_id, .committing = committing,
    .layers = (struct layer *) l, .n = n,
  };
  return state_write (c, &s);
}

char **
snap_state_names (const char *dir)
{
  struct state s;
  int dirfd = open (dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dirfd == -1)
    return NULL;
  int r = snap_state_read (dirfd, dir, &s);
  close (dirfd);
  if (r == -1)
    return NULL;
  char **names = calloc (s.n + 1, sizeof *names);
  if (!names) {
    state_free (&s);
    errno = ENOMEM;
    return NULL;
  }
  size_t k = 0;
  for (size_t i = 0; i < s.n; i++)
    if (s.layers[i].name) {
      names[k++] = s.layers[i].name;
      s.layers[i].name = NULL;
    }
  state_free (&s);
  return names;
}

void
snap_names_free (char **names)
{
  if (!names)
    return;
  for (char **p = names; *p; p++)
    free (*p);
  free (names);
}
