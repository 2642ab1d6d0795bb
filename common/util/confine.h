/* SPDX-License-Identifier: BSD-3-Clause */
/* Confinement of paths found inside images (backing files, external data
 * files, extent files).  A hostile image must not be able to expose an
 * arbitrary host file (the CVE-2024-32498 class): the path is resolved
 * relative to the directory of the image that names it, every symlink is
 * followed, and the result must lie inside that directory or inside one of
 * the directories the user explicitly allowed.
 */
#ifndef KVM_CONFINE_H
#define KVM_CONFINE_H

#include <stdbool.h>

/* Resolve REF, a path stored inside the image IMAGE_PATH.
 *
 * - A relative REF is taken relative to IMAGE_PATH's directory; an absolute
 *   one as it is.
 * - The result is canonical (realpath): no "..", no symlinks.
 * - It must be inside the canonical image directory (the canonical form
 *   of IMAGE_PATH's directory part; IMAGE_PATH itself is not followed) or
 *   one of ALLOWED_DIRS (NULL-terminated, may be NULL; local entries
 *   canonical absolute paths, as nbdkit_realpath makes them, compared as
 *   they are), unless ALLOW_ANY is true.
 *
 * Returns a malloc'd canonical path, or NULL with errno set (EACCES for an
 * escape, ENOENT etc. from realpath) after reporting a message that names
 * the image and the reference.  Open the result with
 * bdev_open_opts.resolved set, so that no symlink put in its way after
 * this check is followed.
 */
char *confine_resolve (const char *image_path, const char *ref,
                       const char *const *allowed_dirs, bool allow_any);

/* The parameter that the refusal message of confine_resolve suggests
 * ("allow-backing-path=DIR" unless set): each plugin and filter sets the
 * name it accepts (a filter's are prefixed, e.g. "qcow2-allow-backing-path=DIR").
 * HINT must stay valid (a string literal).
 */
void confine_set_allow_hint (const char *hint);

/* URLs (nfs://server/export/dir/image.qcow2?options): an image whose
 * path is a URL has a directory on its server.  A relative REF resolves
 * lexically beside it, on the same server, and must stay in that
 * directory ("..." may not climb out of it); the result keeps the image's
 * query string (its connection options), and REF itself may not carry one.
 * An absolute REF ("/x") is a local path, and a URL REF names its own
 * server: both are refused unless inside ALLOWED_DIRS or ALLOW_ANY.
 * ALLOWED_DIRS may hold URL prefixes ("nfs://server/export/dir"), matched
 * lexically on whole path components; local entries never match a URL
 * and URL entries never match a local path.
 */

/* The canonical directory of IMAGE_PATH, the one paths inside it are
 * relative to: its directory part made canonical (IMAGE_PATH itself is
 * not followed).  Malloc'd, or NULL with errno set.
 */
char *confine_image_dir (const char *image_path);

/* Is RESOLVED (a result of confine_resolve for IMAGE_PATH) inside the
 * image's own directory, rather than reached only through ALLOWED_DIRS or
 * ALLOW_ANY?  A directory allowed for reading (templates, golden images)
 * is not one an image may write into: unless ALLOW_ANY, the engines open
 * a file found only there read-only, and serve the image read-only.
 */
bool confine_in_image_dir (const char *image_path, const char *resolved);

/* Is P a URL ("scheme://...", scheme of letters, digits, "+-.")? */
bool confine_is_url (const char *p);

/* Is canonical PATH equal to or below canonical directory DIR? */
bool confine_is_within (const char *path, const char *dir);

#endif
