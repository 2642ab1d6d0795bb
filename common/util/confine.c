/* SPDX-License-Identifier: BSD-3-Clause */
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "confine.h"
#include "log.h"

bool
confine_is_url (const char *p)
{
  const char *c = p;
  if (!((*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z')))
    return false;
  while ((*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') ||
         (*c >= '0' && *c <= '9') || *c == '+' || *c == '-' || *c == '.')
    c++;
  return strncmp (c, "://", 3) == 0;
}

bool
confine_is_within (const char *path, const char *dir)
{
  size_t n = strlen (dir);
  if (n == 1 && dir[0] == '/')
    return path[0] == '/';
  while (n > 1 && dir[n - 1] == '/')
    n--;
  return strncmp (path, dir, n) == 0 && (path[n] == '\0' || path[n] == '/');
}

/* Canonical directory containing IMAGE_PATH: its directory part made
 * canonical, not IMAGE_PATH itself.  The image is open already; whoever
 * can write its directory could since have put a symlink in its place
 * (to /etc/x, say), and the directory of that symlink's target must not
 * become the confinement.
 */
char *
confine_image_dir (const char *image_path)
{
  char *d = strdup (image_path);
  if (!d)
    return NULL;
  char *slash = strrchr (d, '/');
  if (!slash)
    strcpy (d, ".");
  else if (slash == d)
    slash[1] = '\0';            /* image in "/" */
  else
    *slash = '\0';
  char *real = realpath (d, NULL);
  int e = errno;
  free (d);
  errno = e;
  return real;
}

/* A URL cut in three: ORIGIN "scheme://host[:port]", PATH "/dir/file"
 * (lexically normalised: no "", "." or ".." components; NULL if ".."
 * would climb above "/") and QUERY ("?..." or "").  All malloc'd.
 */
struct url_parts {
  char *origin, *path, *query;
};

/* Frees and clears, so that freeing again (a failed url_split, then the
 * caller's cleanup) is harmless.
 */
static void
url_parts_free (struct url_parts *u)
{
  free (u->origin);
  free (u->path);
  free (u->query);
  memset (u, 0, sizeof *u);
}

/* Normalise absolute path P of length N lexically.  NULL with errno EACCES
 * when ".." climbs above the root, ENOMEM.
 */
static char *
norm_path (const char *p, size_t n)
{
  char *out = malloc (n + 2);
  size_t len = 0;
  if (!out) {
    errno = ENOMEM;
    return NULL;
  }
  for (size_t i = 0; i < n; ) {
    while (i < n && p[i] == '/')
      i++;
    size_t j = i;
    while (j < n && p[j] != '/')
      j++;
    size_t cl = j - i;
    if (cl == 0 || (cl == 1 && p[i] == '.'))
      ;
    else if (cl == 2 && p[i] == '.' && p[i + 1] == '.') {
      if (len == 0) {
        free (out);
        errno = EACCES;
        return NULL;
      }
      while (len > 0 && out[len - 1] != '/')
        len--;
      len--;                    /* the slash before it */
    }
    else {
      out[len++] = '/';
      memcpy (out + len, p + i, cl);
      len += cl;
    }
    i = j;
  }
  if (len == 0)
    out[len++] = '/';
  out[len] = '\0';
  return out;
}

/* Split URL; -1 with errno set (EACCES: ".." above the root). */
static int
url_split (const char *url, struct url_parts *u)
{
  const char *host = strstr (url, "://") + 3;
  const char *q = strchr (host, '?');
  const char *slash = strchr (host, '/');
  if (!q)
    q = host + strlen (host);
  if (!slash || slash > q)
    slash = q;
  memset (u, 0, sizeof *u);
  u->origin = strndup (url, slash - url);
  u->query = strdup (q);
  if (!u->origin || !u->query) {
    url_parts_free (u);
    errno = ENOMEM;
    return -1;
  }
  u->path = norm_path (slash, q - slash);
  if (!u->path) {
    url_parts_free (u);
    return -1;
  }
  return 0;
}

/* Is local canonical path REAL inside one of the local ALLOWED_DIRS?
 * They were made canonical when given, and are not resolved again: a
 * symlink put in place of one since (to "/") must not widen it.
 */
static bool
local_allowed (const char *real, const char *const *allowed_dirs)
{
  for (const char *const *a = allowed_dirs; a && *a; a++)
    if (!confine_is_url (*a) && (*a)[0] == '/' &&
        confine_is_within (real, *a))
      return true;
  return false;
}

/* Is URL ORIGIN+PATH inside one of the URL prefixes of ALLOWED_DIRS? */
static bool
url_allowed (const char *origin, const char *path,
             const char *const *allowed_dirs)
{
  for (const char *const *a = allowed_dirs; a && *a; a++) {
    struct url_parts u;
    if (!confine_is_url (*a) || url_split (*a, &u) == -1)
      continue;
    bool in = strcmp (u.origin, origin) == 0 &&
      confine_is_within (path, u.path);
    url_parts_free (&u);
    if (in)
      return true;
  }
  return false;
}

static const char *allow_hint = "allow-backing-path=DIR";

void
confine_set_allow_hint (const char *hint)
{
  allow_hint = hint;
}

static char *
refuse (const char *image_path, const char *ref, const char *what,
        const char *where)
{
  kvm_error ("%s: refusing file '%s' named by the image: it resolves to %s, "
             "outside the image's directory%s%s (allow it explicitly with "
             "%s)", image_path, ref, what,
             where ? " " : "", where ? where : "", allow_hint);
  errno = EACCES;
  return NULL;
}

/* confine_resolve where the image or REF is a URL. */
static char *
resolve_url (const char *image_path, const char *ref,
             const char *const *allowed_dirs, bool allow_any)
{
  struct url_parts img = { 0 }, r = { 0 };
  bool img_url = confine_is_url (image_path);
  char *dir = NULL, *joined = NULL, *out = NULL;

  if (img_url) {
    if (url_split (image_path, &img) == -1) {
      kvm_error ("%s: cannot parse the image's URL: %m", image_path);
      return NULL;
    }
    char *slash = strrchr (img.path, '/');
    dir = slash == img.path ? strdup ("/") : strndup (img.path,
                                                      slash - img.path);
    if (!dir) {
      errno = ENOMEM;
      goto out;
    }
  }

  if (!confine_is_url (ref) && ref[0] == '/') {
    /* A local path named by an image on a server. */
    char *real = realpath (ref, NULL);
    if (!real) {
      kvm_error ("%s: file '%s' named by the image: %m", image_path, ref);
      goto out;
    }
    if (allow_any || local_allowed (real, allowed_dirs))
      out = real;
    else {
      refuse (image_path, ref, "a local file", NULL);
      free (real);
    }
    goto out;
  }

  if (confine_is_url (ref)) {
    if (url_split (ref, &r) == -1) {
      if (errno == EACCES)
        refuse (image_path, ref, "a path above the server's root", NULL);
      else
        kvm_error ("%s: file '%s' named by the image: %m", image_path, ref);
      goto out;
    }
    if (*r.query && !allow_any) {
      kvm_error ("%s: refusing file '%s' named by the image: a file name "
                 "inside an image may not set connection options",
                 image_path, ref);
      errno = EACCES;
      goto out;
    }
    /* The same server: the image's connection options hold for it too. */
    if (!*r.query && img_url && strcmp (r.origin, img.origin) == 0) {
      free (r.query);
      if (!(r.query = strdup (img.query))) {
        errno = ENOMEM;
        goto out;
      }
    }
  }
  else {
    /* Relative to the image's directory on its server. */
    if (strchr (ref, '?')) {
      kvm_error ("%s: file '%s' named by the image: a name with '?' "
                 "cannot be opened on a server", image_path, ref);
      errno = EINVAL;
      goto out;
    }
    if (asprintf (&joined, "%s/%s", dir, ref) == -1) {
      joined = NULL;
      errno = ENOMEM;
      goto out;
    }
    r.origin = strdup (img.origin);
    r.query = strdup (img.query);
    r.path = norm_path (joined, strlen (joined));
    if (!r.path) {
      if (errno == EACCES)
        refuse (image_path, ref, "a path above the server's root", NULL);
      goto out;
    }
    if (!r.origin || !r.query) {
      errno = ENOMEM;
      goto out;
    }
  }

  char *cand;
  if (asprintf (&cand, "%s%s%s", r.origin, r.path, r.query) == -1) {
    errno = ENOMEM;
    goto out;
  }
  if (allow_any ||
      (img_url && strcmp (r.origin, img.origin) == 0 &&
       confine_is_within (r.path, dir)) ||
      url_allowed (r.origin, r.path, allowed_dirs))
    out = cand;
  else {
    char *where = NULL;
    if (img_url && asprintf (&where, "%s%s", img.origin, dir) == -1)
      where = NULL;
    refuse (image_path, ref, cand, where);
    free (where);
    free (cand);
  }

 out:
  url_parts_free (&img);
  url_parts_free (&r);
  free (dir);
  free (joined);
  return out;
}

char *
confine_resolve (const char *image_path, const char *ref,
                 const char *const *allowed_dirs, bool allow_any)
{
  char *dir = NULL, *joined = NULL, *real = NULL;

  if (ref[0] == '\0') {
    kvm_error ("%s: empty file reference", image_path);
    errno = EINVAL;
    return NULL;
  }
  if (confine_is_url (image_path) || confine_is_url (ref))
    return resolve_url (image_path, ref, allowed_dirs, allow_any);
  dir = confine_image_dir (image_path);
  if (!dir) {
    kvm_error ("%s: %m", image_path);
    return NULL;
  }
  if (ref[0] == '/')
    joined = strdup (ref);
  else if (asprintf (&joined, "%s/%s", dir, ref) == -1)
    joined = NULL;
  if (!joined) {
    errno = ENOMEM;
    goto fail;
  }
  real = realpath (joined, NULL);
  if (!real) {
    kvm_error ("%s: file '%s' named by the image: %m", image_path, ref);
    goto fail;
  }
  if (allow_any || confine_is_within (real, dir) ||
      local_allowed (real, allowed_dirs))
    goto ok;
  kvm_error ("%s: refusing file '%s' named by the image: it resolves to %s, "
             "outside the image's directory %s (allow it explicitly with "
             "%s)", image_path, ref, real, dir, allow_hint);
  free (real);
  real = NULL;
  errno = EACCES;
  goto fail;

 ok:
  free (dir);
  free (joined);
  return real;
 fail:
  free (dir);
  free (joined);
  return NULL;
}

bool
confine_in_image_dir (const char *image_path, const char *resolved)
{
  if (confine_is_url (image_path) != confine_is_url (resolved))
    return false;
  if (confine_is_url (image_path)) {
    struct url_parts img, r;
    if (url_split (image_path, &img) == -1)
      return false;
    if (url_split (resolved, &r) == -1) {
      url_parts_free (&img);
      return false;
    }
    char *slash = strrchr (img.path, '/');
    slash[slash == img.path ? 1 : 0] = '\0';
    bool in = strcmp (img.origin, r.origin) == 0 &&
      confine_is_within (r.path, img.path);
    url_parts_free (&img);
    url_parts_free (&r);
    return in;
  }
  char *dir = confine_image_dir (image_path);
  bool in = dir && confine_is_within (resolved, dir);
  free (dir);
  return in;
}
