/* SPDX-License-Identifier: BSD-3-Clause */
/* VHDX engine: struct bdev_ops over a Hyper-V VHDX image ([MS-VHDX]):
 * fixed, dynamic and differencing disks, log replay (to disk when
 * writable, into memory when read-only), writes on dynamic and
 * differencing disks, and image creation.
 *
 * Format options (bdev_open_opts.format_opts):
 *   vhdx.ignore-parent-linkage=1  open a differencing disk whose parent's
 *                                 DataWriteGuid does not match the child's
 *                                 parent_linkage
 *   vhdx.parent=none              no parent: unset sectors read as zeroes
 */
#ifndef KVM_VHDX_H
#define KVM_VHDX_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "bdev/bdev.h"

bool vhdx_probe (const void *buf, size_t len);
struct bdev *vhdx_open (const char *path, const struct bdev_open_opts *opts,
                        unsigned depth);

/* Open a VHDX image whose bytes are CONTAINER (any bdev).  Takes ownership
 * of CONTAINER (and of opts->backing, the parent), also on failure.
 * PATH is the image's path for locating the parent, or NULL.
 */
struct bdev *vhdx_open_container (struct bdev *container, const char *name,
                                  const char *path,
                                  const struct bdev_open_opts *opts,
                                  unsigned depth);

/* Is BD a VHDX engine bdev? */
bool vhdx_is (struct bdev *bd);

/* Creation parameters. */
struct vhdx_create_opts {
  uint64_t size;
  uint32_t block_size;          /* 0: 32 MiB (1 MiB..256 MiB, power of 2) */
  uint32_t logical_sector_size; /* 0: 512 (512 or 4096) */
  uint32_t physical_sector_size;/* 0: 4096 */
  bool fixed;
  const char *parent;           /* differencing: the parent image */
};

/* Create a new image at PATH (must not exist).  0 or -1 with message. */
int vhdx_create (const char *path, const struct vhdx_create_opts *o);

/* The same from "key=value" options (struct bdev_format's create hook):
 * subformat=dynamic|fixed|differencing, block_size=, logical_sector_size=,
 * physical_sector_size=, parent= (a differencing disk's parent; implies
 * subformat=differencing; the size may then be 0 = the parent's).
 */
int vhdx_create_options (const char *path, uint64_t size,
                         const char *const *options);

#endif
