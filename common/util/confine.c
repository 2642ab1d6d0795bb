/* SPDX-License-Identifier: BSD-3-Clause */
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "confine.h"
#include "log.h"

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

/* Canonical directory containing IMAGE_PATH. */
static char *
image_dir (const char *image_path)
{
  char *real = realpath (image_path, NULL);
  if (!real)
    return NULL;
  char *slash = strrchr (real, '/');
  if (slash == real)
    slash[1] = '\0';            /* image in "/" */
  else
    *slash = '\0';
  return real;
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
  dir = image_dir (image_path);
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
  if (allow_any || confine_is_within (real, dir))
    goto ok;
  for (const char *const *a = allowed_dirs; a && *a; a++) {
    char *ad = realpath (*a, NULL);
    bool in = ad && confine_is_within (real, ad);
    free (ad);
    if (in)
      goto ok;
  }
  kvm_error ("%s: refusing file '%s' named by the image: it resolves to %s, "
             "outside the image's directory %s (allow it explicitly with an "
             "allow-path style parameter)", image_path, ref, real, dir);
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
