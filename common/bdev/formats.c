/* SPDX-License-Identifier: BSD-3-Clause */
/* The format table, and opening an image by format name or by probing its
 * first bytes.  This file (library kvm_formats) is the only part of
 * common/bdev that knows the engines: whoever opens formats by name links
 * kvm_formats, which links every format engine; whoever needs only the
 * interface and the raw backend (the lvm engine) links kvm_bdev.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdint.h>
#include <string.h>
#include <unistd.h>

#include "formats.h"
#include "qcow2/qcow2.h"
#include "vmdk/vmdk.h"
#include "vhdx/vhdx.h"
#include "util/log.h"

static struct bdev *
raw_open (const char *path, const struct bdev_open_opts *opts, unsigned depth)
{
  (void) depth;
  /* A raw image names no backing file, so a backing given by the caller
   * could only be ignored: refuse it rather than serve the raw bytes
   * alone, and close it, as every engine does on a failed open.
   */
  if (opts->backing) {
    kvm_error ("%s: a raw image cannot have a backing file", path);
    bdev_close (opts->backing);
    errno = EINVAL;
    return NULL;
  }
  return bdev_storage_open (path, opts);
}

/* A sparse file of SIZE bytes; raw images have no options. */
static int
raw_create (const char *path, uint64_t size, const char *const *options)
{
  if (options && options[0]) {
    kvm_error ("%s: unknown raw creation option '%s'", path, options[0]);
    errno = EINVAL;
    return -1;
  }
  if (size > INT64_MAX) {
    kvm_error ("%s: size %" PRIu64 " is too large", path, size);
    errno = EINVAL;
    return -1;
  }
  int fd = open (path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd == -1) {
    kvm_error ("%s: create: %m", path);
    return -1;
  }
  if (ftruncate (fd, size) == -1) {
    kvm_error ("%s: setting the size: %m", path);
    close (fd);
    unlink (path);
    return -1;
  }
  return close (fd);
}

/* Probed in order; raw comes last and is never probed (it is the fallback). */
const struct bdev_format bdev_formats[] = {
  { "qcow2", qcow2_probe, qcow2_open, qcow2_create_options },
  { "vmdk", vmdk_probe, vmdk_open, vmdk_create_options },
  { "vhdx", vhdx_probe, vhdx_open, vhdx_create_options },
  { "raw", NULL, raw_open, raw_create },
  { NULL, NULL, NULL, NULL },
};

const struct bdev_format *
bdev_format_find (const char *name)
{
  for (const struct bdev_format *f = bdev_formats; f->name; f++)
    if (strcmp (f->name, name) == 0)
      return f;
  return NULL;
}

const char *
bdev_probe (const void *buf, size_t len)
{
  for (const struct bdev_format *f = bdev_formats; f->name; f++)
    if (f->probe && f->probe (buf, len))
      return f->name;
  return "raw";
}

static const char *
probe_file (const char *path, const struct bdev_open_opts *opts,
            char *hdr, size_t hdrlen)
{
  struct bdev_open_opts ro = { .readonly = true,
                               .allowed_dirs = opts->allowed_dirs,
                               .allow_any_path = opts->allow_any_path,
                               .resolved = opts->resolved };
  struct bdev *bd = bdev_storage_open (path, &ro);
  if (!bd)
    return NULL;
  size_t n = bd->size < hdrlen ? (size_t) bd->size : hdrlen;
  int r = bdev_pread (bd, hdr, n, 0);
  int saved = errno;
  bdev_close (bd);
  if (r == -1) {
    errno = saved;
    kvm_error ("%s: reading header: %m", path);
    return NULL;
  }
  return bdev_probe (hdr, n);
}

struct bdev *
bdev_open (const char *path, const char *format,
           const struct bdev_open_opts *opts, unsigned depth)
{
  unsigned max = opts->max_chain_depth ? opts->max_chain_depth : BDEV_MAX_CHAIN;
  char hdr[4096];

  if (depth > max) {
    kvm_error ("%s: backing chain longer than %u images", path, max);
    errno = ELOOP;
    goto fail;
  }
  if (!format) {
    format = probe_file (path, opts, hdr, sizeof hdr);
    if (!format)
      goto fail;
    kvm_debug ("%s: probed format %s", path, format);
  }
  const struct bdev_format *f = bdev_format_find (format);
  if (!f) {
    kvm_error ("%s: unknown or unsupported format '%s'", path, format);
    errno = ENOTSUP;
    goto fail;
  }
  struct bdev_open_opts lo = *opts;
  lo.qemu_locks = !opts->no_locks; /* and so on every file it names */
  return f->open (path, &lo, depth);

 fail:
  /* opts->backing is ours also on failure (bdev.h). */
  if (opts->backing) {
    int e = errno;
    bdev_close (opts->backing);
    errno = e;
  }
  return NULL;
}
