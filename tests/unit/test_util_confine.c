/* SPDX-License-Identifier: BSD-3-Clause */
/* Path confinement: relative, absolute, "..", symlink escapes, allowed
 * directories.
 */
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include "util/confine.h"
#include "check.h"

static char root[PATH_MAX / 2];

static void
touch (const char *rel)
{
  char p[PATH_MAX];
  snprintf (p, sizeof p, "%s/%s", root, rel);
  int fd = open (p, O_CREAT | O_WRONLY, 0644);
  CHECK (fd >= 0);
  close (fd);
}

static char *
path (const char *rel)
{
  static char p[4][PATH_MAX];
  static int i;
  i = (i + 1) % 4;
  snprintf (p[i], sizeof p[i], "%s/%s", root, rel);
  return p[i];
}

int
main (void)
{
  char tmpl[] = "/tmp/confineXXXXXX";
  CHECK (mkdtemp (tmpl));
  { char full[PATH_MAX]; CHECK (realpath (tmpl, full) && strlen (full) < sizeof root); strcpy (root, full); }
  CHECK (mkdir (path ("img"), 0755) == 0);
  CHECK (mkdir (path ("img/sub"), 0755) == 0);
  CHECK (mkdir (path ("other"), 0755) == 0);
  touch ("img/top.qcow2");
  touch ("img/base.raw");
  touch ("img/sub/deep.raw");
  touch ("other/secret");
  touch ("outside.raw");
  CHECK (symlink ("../other/secret", path ("img/link-out")) == 0);
  CHECK (symlink ("base.raw", path ("img/link-in")) == 0);

  /* A copy: path () hands out one of four rotating buffers. */
  char img[PATH_MAX];
  strcpy (img, path ("img/top.qcow2"));
  char *r;

  /* Relative inside: allowed, canonical. */
  r = confine_resolve (img, "base.raw", NULL, false);
  CHECK (r && strcmp (r, path ("img/base.raw")) == 0);
  free (r);
  r = confine_resolve (img, "sub/../sub/deep.raw", NULL, false);
  CHECK (r && strcmp (r, path ("img/sub/deep.raw")) == 0);
  free (r);
  /* Absolute path that is inside the image directory: allowed. */
  r = confine_resolve (img, path ("img/base.raw"), NULL, false);
  CHECK (r != NULL);
  free (r);
  /* Symlink staying inside: allowed, resolved. */
  r = confine_resolve (img, "link-in", NULL, false);
  CHECK (r && strcmp (r, path ("img/base.raw")) == 0);
  free (r);

  /* Escapes: "..", absolute, symlink. */
  errno = 0;
  CHECK (confine_resolve (img, "../outside.raw", NULL, false) == NULL);
  CHECK (errno == EACCES);
  CHECK (confine_resolve (img, "/etc/passwd", NULL, false) == NULL);
  CHECK (errno == EACCES);
  CHECK (confine_resolve (img, "link-out", NULL, false) == NULL);
  CHECK (errno == EACCES);
  CHECK (confine_resolve (img, "sub/../../other/secret", NULL, false) == NULL);
  /* Missing file: ENOENT, not EACCES. */
  CHECK (confine_resolve (img, "missing.raw", NULL, false) == NULL);
  CHECK (errno == ENOENT);
  CHECK (confine_resolve (img, "", NULL, false) == NULL);

  /* Explicitly allowed directory, and allow-any. */
  const char *allowed[] = { path ("other"), NULL };
  r = confine_resolve (img, "link-out", allowed, false);
  CHECK (r && strcmp (r, path ("other/secret")) == 0);
  free (r);
  CHECK (confine_resolve (img, "../outside.raw", allowed, false) == NULL);
  r = confine_resolve (img, "../outside.raw", NULL, true);
  CHECK (r != NULL);
  free (r);

  /* The image's directory is its directory part's, not that of whatever
   * IMAGE_PATH leads to now: an image file swapped for a symlink to
   * /etc/hostname after it was opened must not make /etc the confinement.
   */
  touch ("img/swapped.qcow2");
  CHECK (unlink (path ("img/swapped.qcow2")) == 0);
  CHECK (symlink ("/etc/hostname", path ("img/swapped.qcow2")) == 0);
  errno = 0;
  CHECK (confine_resolve (path ("img/swapped.qcow2"), "passwd", NULL,
                          false) == NULL);
  CHECK (errno == ENOENT);
  CHECK (confine_resolve (path ("img/swapped.qcow2"), "/etc/passwd", NULL,
                          false) == NULL);
  CHECK (errno == EACCES);

  /* An allowed directory is the one given (canonical then): a symlink to
   * "/" put in its place since must not allow everything.
   */
  CHECK (mkdir (path ("shared"), 0755) == 0);
  const char *allowed2[] = { path ("shared"), NULL };
  CHECK (confine_resolve (img, "/etc/passwd", allowed2, false) == NULL);
  CHECK (rmdir (path ("shared")) == 0);
  CHECK (symlink ("/", path ("shared")) == 0);
  errno = 0;
  CHECK (confine_resolve (img, "/etc/passwd", allowed2, false) == NULL);
  CHECK (errno == EACCES);
  CHECK (confine_resolve (img, path ("shared/etc/passwd"), allowed2,
                          false) == NULL);

  /* Prefix confusion: /x/img must not admit /x/img2. */
  CHECK (confine_is_within ("/x/img/a", "/x/img"));
  CHECK (confine_is_within ("/x/img", "/x/img/"));
  CHECK (!confine_is_within ("/x/img2/a", "/x/img"));
  CHECK (confine_is_within ("/anything", "/"));

  /* URLs: lexical resolution on the image's server and directory. */
  const char *u = "nfs://h/exp/dir/top.qcow2?uid=7&timeout=5";
  CHECK (confine_is_url (u));
  CHECK (confine_is_url ("nfs+x.y://a"));
  CHECK (!confine_is_url ("/a/nfs://b"));
  CHECK (!confine_is_url ("base.qcow2"));
  CHECK (!confine_is_url ("1nfs://a"));
  r = confine_resolve (u, "base.qcow2", NULL, false);
  CHECK (r && strcmp (r, "nfs://h/exp/dir/base.qcow2?uid=7&timeout=5") == 0);
  free (r);
  r = confine_resolve (u, "./sub/../sub//b.raw", NULL, false);
  CHECK (r && strcmp (r, "nfs://h/exp/dir/sub/b.raw?uid=7&timeout=5") == 0);
  free (r);
  /* A URL on the same server and directory keeps the image's options. */
  r = confine_resolve (u, "nfs://h/exp/dir/x/y.qcow2", NULL, false);
  CHECK (r && strcmp (r, "nfs://h/exp/dir/x/y.qcow2?uid=7&timeout=5") == 0);
  free (r);
  /* Escapes: "..", above the root, other directories, exports, servers,
   * local paths, options chosen by the image.
   */
  errno = 0;
  CHECK (confine_resolve (u, "../base.qcow2", NULL, false) == NULL);
  CHECK (errno == EACCES);
  CHECK (confine_resolve (u, "../../../../../etc/passwd", NULL, false) == NULL);
  CHECK (errno == EACCES);
  CHECK (confine_resolve (u, "sub/../../dir2/b", NULL, false) == NULL);
  CHECK (confine_resolve (u, "nfs://h/exp2/dir/b", NULL, false) == NULL);
  CHECK (confine_resolve (u, "nfs://other/exp/dir/b", NULL, false) == NULL);
  CHECK (confine_resolve (u, "nfs://h/exp/dir2/b", NULL, false) == NULL);
  CHECK (confine_resolve (u, "nfs://h/exp/dir/b?uid=0", NULL, false) == NULL);
  CHECK (errno == EACCES);
  CHECK (confine_resolve (u, path ("img/base.raw"), NULL, false) == NULL);
  CHECK (errno == EACCES);
  CHECK (confine_resolve (u, "a?b", NULL, false) == NULL);
  CHECK (errno == EINVAL);
  /* A URL whose own path climbs above its root, named by a URL image, by
   * a local image, or as the image itself: refused (this once freed the
   * URL's parts twice).
   */
  errno = 0;
  CHECK (confine_resolve (u, "nfs://h/../etc/passwd", NULL, false) == NULL);
  CHECK (errno == EACCES);
  errno = 0;
  CHECK (confine_resolve (img, "C://///../x", NULL, false) == NULL);
  CHECK (errno == EACCES);
  errno = 0;
  CHECK (confine_resolve ("nfs://h/../top.qcow2", "base.qcow2", NULL,
                          false) == NULL);
  CHECK (errno == EACCES);
  /* A local image may not name a URL either. */
  CHECK (confine_resolve (img, "nfs://h/exp/dir/base.qcow2", NULL,
                          false) == NULL);
  CHECK (errno == EACCES);
  /* Allowed URL prefixes (whole components) and local directories. */
  const char *uallowed[] = { "nfs://h/exp/shared", path ("img"), NULL };
  r = confine_resolve (u, "../shared/b.qcow2", uallowed, false);
  CHECK (r && strcmp (r, "nfs://h/exp/shared/b.qcow2?uid=7&timeout=5") == 0);
  free (r);
  CHECK (confine_resolve (u, "../shared2/b", uallowed, false) == NULL);
  CHECK (confine_resolve (u, "nfs://h2/exp/shared/b", uallowed,
                          false) == NULL);
  r = confine_resolve (u, path ("img/base.raw"), uallowed, false);
  CHECK (r && strcmp (r, path ("img/base.raw")) == 0);
  free (r);
  r = confine_resolve (img, "nfs://h/exp/shared/c", uallowed, false);
  CHECK (r && strcmp (r, "nfs://h/exp/shared/c") == 0);
  free (r);
  /* URL entries never admit local paths. */
  const char *uonly[] = { "nfs://h/", NULL };
  CHECK (confine_resolve (img, "../outside.raw", uonly, false) == NULL);
  /* allow-any admits everything but still normalises. */
  r = confine_resolve (u, "../other/b", NULL, true);
  CHECK (r && strcmp (r, "nfs://h/exp/other/b?uid=7&timeout=5") == 0);
  free (r);
  CHECK (confine_resolve (u, "../../../../x", NULL, true) == NULL);

  char cmd[PATH_MAX + 16];
  snprintf (cmd, sizeof cmd, "rm -rf '%s'", root);
  CHECK (system (cmd) == 0);
  printf ("confine: ok\n");
  return 0;
}
