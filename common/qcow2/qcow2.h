/* SPDX-License-Identifier: BSD-3-Clause */
/* qcow2 engine: struct bdev_ops over a qcow2 image (versions 2 and 3).
 *
 * Opened through bdev_open(path, "qcow2" or NULL, opts, depth).  Engine
 * options come in opts->format_opts as "key=value" strings:
 *   qcow2.backing=none       ignore the backing file (reads zeroes)
 *   qcow2.snapshot=NAME|ID   open an internal snapshot (read-only)
 *   qcow2.cache=BYTES        L2 metadata cache size
 *   qcow2.verbose=1          dump header, snapshots and cache stats
 *   qcow2.compress=zlib|zstd write whole new clusters compressed (the
 *                            image's compression type)
 */
#ifndef KVM_QCOW2_H
#define KVM_QCOW2_H

#include <stdbool.h>
#include <stdint.h>

#include "bdev/bdev.h"

bool qcow2_probe (const void *buf, size_t len);
struct bdev *qcow2_open (const char *path, const struct bdev_open_opts *opts,
                         unsigned depth);

/* Open a qcow2 image whose bytes are CONTAINER (any bdev: a file, or the
 * layer below an nbdkit filter).  The engine takes ownership of CONTAINER
 * (closed by bdev_close of the result, and on failure).  NAME is used in
 * messages and, when it is a path, as the base for relative backing and
 * data-file names; confinement rules apply as for qcow2_open.  A container
 * that is not growable bounds the image (running out of it is not handled
 * yet: issue #14).  A read-only container gives a read-only image.
 * qcow2_open (PATH) is bdev_storage_open (PATH, growable when writable)
 * followed by this.
 */
struct bdev *qcow2_open_container (struct bdev *container, const char *name,
                                   const struct bdev_open_opts *opts,
                                   unsigned depth);

/* Internal snapshots of an open qcow2 bdev (BD must come from qcow2_open). */
struct qcow2_snapshot_info {
  const char *id;
  const char *name;
  uint64_t size;                /* virtual disk size */
  uint32_t date_sec;
  uint64_t vm_clock_nsec;
};
/* Number of snapshots; *OUT points into BD (valid until bdev_close). */
size_t qcow2_snapshots (struct bdev *bd,
                        const struct qcow2_snapshot_info **out);
/* Is BD a qcow2 engine bdev? */
bool qcow2_is (struct bdev *bd);

struct qcow2_create_opts {
  uint64_t size;
  uint32_t cluster_size;        /* 0: 64 KiB */
  int version;                  /* 2 or 3 (0: 3) */
  const char *backing;          /* stored as given, may be NULL */
  const char *backing_format;   /* may be NULL */
  bool extended_l2;
  unsigned refcount_bits;       /* 0: 16 */
  int compression_type;         /* 0 zlib, 1 zstd */
};

/* Create a new image at PATH (must not exist).  0 or -1 with message. */
int qcow2_create (const char *path, const struct qcow2_create_opts *o);

/* The same from qemu-img style "key=value" options (struct bdev_format's
 * create): cluster_size, compat (0.10/1.1), backing_file, backing_fmt,
 * extended_l2 (on/off), refcount_bits, compression_type (zlib/zstd).
 */
int qcow2_create_options (const char *path, uint64_t size,
                          const char *const *options);

#endif
