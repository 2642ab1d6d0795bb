/* SPDX-License-Identifier: BSD-3-Clause */
/* The block-device interface every storage engine implements.
 *
 * A struct bdev is an open image or device of fixed size.  The raw file
 * backend (bdev_file.c) and the format engines (qcow2, later vmdk, vhdx)
 * implement struct bdev_ops; engines open their backing/parent files with
 * bdev_open(), so any format can sit on any other.  nbdkit plugins and
 * filters are thin adapters over this interface.
 *
 * Conventions:
 * - Functions return 0 on success or -1 with errno set and a message already
 *   reported through kvm_error() (common/util/log.h).
 * - All operations may be called concurrently from many threads; an engine
 *   does its own locking.
 * - Requests are bounds-checked by the bdev_* wrappers below, so engines
 *   may assume offset + count <= size.
 */
#ifndef KVM_BDEV_H
#define KVM_BDEV_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Request flags. */
#define BDEV_FUA        (1u << 0)  /* durable before return */
#define BDEV_MAY_TRIM   (1u << 1)  /* zero: may deallocate */
#define BDEV_FAST_ZERO  (1u << 2)  /* zero: fail with ENOTSUP unless fast */
#define BDEV_REQ_ONE    (1u << 3)  /* extents: one extent is enough */

/* Extent types, numerically equal to NBDKIT_EXTENT_HOLE/ZERO. */
#define BDEV_EXTENT_DATA 0
#define BDEV_EXTENT_HOLE (1u << 0)
#define BDEV_EXTENT_ZERO (1u << 1)

/* Capabilities (struct bdev.caps). */
#define BDEV_CAN_TRIM       (1u << 0)  /* trim frees space */
#define BDEV_CAN_ZERO       (1u << 1)  /* zero is faster than writing zeroes */
#define BDEV_CAN_FAST_ZERO  (1u << 2)  /* honours BDEV_FAST_ZERO */
#define BDEV_CAN_EXTENTS    (1u << 3)  /* extents are meaningful */
#define BDEV_CAN_FUA        (1u << 4)  /* native FUA (else flush after) */
#define BDEV_CAN_MULTI_CONN (1u << 5)  /* flush on one handle covers all */

struct bdev;

/* Called once per extent, in ascending order, contiguous from the request
 * offset.  Return -1 to stop with an error.
 */
typedef int (*bdev_extent_fn) (void *opaque, uint64_t offset,
                               uint64_t length, uint32_t type);

struct bdev_ops {
  const char *format;           /* "raw", "qcow2", ... */
  void (*close) (struct bdev *bd);
  int (*pread) (struct bdev *bd, void *buf, size_t count, uint64_t offset);
  int (*pwrite) (struct bdev *bd, const void *buf, size_t count,
                 uint64_t offset, uint32_t flags);
  int (*flush) (struct bdev *bd);
  /* Optional; NULL means "not supported" (trim) or "write zeroes" (zero). */
  int (*trim) (struct bdev *bd, uint64_t count, uint64_t offset,
               uint32_t flags);
  int (*zero) (struct bdev *bd, uint64_t count, uint64_t offset,
               uint32_t flags);
  /* Optional; NULL means everything is data. */
  int (*extents) (struct bdev *bd, uint64_t count, uint64_t offset,
                  uint32_t flags, bdev_extent_fn fn, void *opaque);
};

struct bdev {
  const struct bdev_ops *ops;
  char *name;                   /* path or description, for messages */
  uint64_t size;                /* virtual size in bytes */
  bool readonly;
  uint32_t caps;                /* BDEV_CAN_* */
  uint32_t block_size;          /* preferred I/O granularity (>= 1) */
  bool growable;                /* writes past the end extend the device */
};

/* The size of BD.  A growable device (a container file an engine
 * extends) grows while other threads write to it (bdev_file.c keeps a
 * lock-free maximum): its size is read and raised only through these two,
 * atomically, never as a plain field (ThreadSanitizer finds the race:
 * tests/unit/test_qcow2_threads.c).
 */
static inline uint64_t
bdev_size (const struct bdev *bd)
{
  return __atomic_load_n (&bd->size, __ATOMIC_RELAXED);
}

/* Raise BD's size to at least END (never lowers it). */
static inline void
bdev_size_grow (struct bdev *bd, uint64_t end)
{
  uint64_t cur = __atomic_load_n (&bd->size, __ATOMIC_RELAXED);
  while (end > cur &&
         !__atomic_compare_exchange_n (&bd->size, &cur, end, true,
                                       __ATOMIC_RELAXED, __ATOMIC_RELAXED))
    ;
}

/* How to open an image and whatever it refers to. */
struct bdev_open_opts {
  bool readonly;
  bool direct;                  /* O_DIRECT on the files underneath */
  bool growable;                /* raw file: writes past EOF extend it (a
                                 * container file that an engine grows) */
  /* Format engines open backing/parent/data files only through
   * confine_resolve() (common/util/confine.h): paths stored inside an image
   * must stay inside the image's directory or one of these directories.
   */
  const char *const *allowed_dirs;  /* NULL-terminated, may be NULL */
  bool allow_any_path;          /* user explicitly allowed any path */
  /* The path is confine_resolve()'s canonical result: local files are
   * opened without following any symlink, so that a symlink put in its
   * place after the check cannot lead elsewhere (the open fails).
   */
  bool resolved;
  /* The caller opens again read-only if a local file refuses writing
   * (bdev_nbdkit_open_rw_else_ro): that refusal is not logged as an error.
   */
  bool quiet_write_refusal;
  /* Take QEMU's image locks on a local file (bdev_file.c): set by
   * bdev_open for every image and every file an image names, so that
   * QEMU and this process refuse to write one image at once.  Raw
   * storage opened directly (lvm's physical volumes, thin metadata) is
   * not locked: several servers may share it, each on its own part.
   */
  bool qemu_locks;
  /* The user's locking=off (QEMU's file.locking=off): bdev_open sets no
   * qemu_locks, here or on any file the image names.
   */
  bool no_locks;
  unsigned max_chain_depth;     /* 0 means the default (BDEV_MAX_CHAIN) */
  /* A backing device chosen by the caller instead of the one the image
   * names (for an overlay whose backing is the layer below an nbdkit
   * filter, or a backing file the user named).  The engine takes
   * ownership: it is closed with the engine, and on a failed open.
   * Applies to the top image only; engines clear it before opening
   * anything further down.
   */
  struct bdev *backing;
  /* The image has no directory that paths inside it could be relative to
   * (it lives in an nbdkit export): refuse every backing or data file name
   * the image holds, unless .backing (or qcow2.backing=none) replaces it.
   */
  bool no_paths;
  /* Format-specific options, "key=value" strings; engines ignore unknown
   * keys.  NULL-terminated, may be NULL.
   */
  const char *const *format_opts;
};

#define BDEV_MAX_CHAIN 64

/* The value of format option KEY ("qcow2.cache") in opts->format_opts, or
 * NULL if absent.
 */
const char *bdev_open_opt (const struct bdev_open_opts *opts, const char *key);

/* Open PATH.  FORMAT is a format name or NULL to probe the content.  DEPTH
 * is the position in a backing chain (0 for the top image); engines pass
 * depth + 1 when opening a backing file.
 */
struct bdev *bdev_open (const char *path, const char *format,
                        const struct bdev_open_opts *opts, unsigned depth);

/* Guess the format of the first bytes of a file ("raw" if nothing else). */
const char *bdev_probe (const void *buf, size_t len);

/* The storage PATH names, as a raw device: a local file or block device,
 * or a URL of a network storage backend.  Format engines open every file
 * (container, extent, data file) through this, never through a backend
 * directly.  opts->growable makes writes past the end extend it.  URLs:
 * nfs://server/export/path[?options] (bdev_nfs.h; without libnfs at
 * build time it fails with ENOTSUP).
 */
struct bdev *bdev_storage_open (const char *path,
                                const struct bdev_open_opts *opts);

/* Is PATH a URL ("scheme://...") rather than a local path?  Plugins keep
 * such a file= as it is (no realpath, no access()).
 */
bool bdev_storage_is_url (const char *path);

/* The raw file/block-device backend. */
struct bdev *bdev_file_open (const char *path, const struct bdev_open_opts *opts);

/* The descriptor behind a raw file backend (-1 for any other bdev): for
 * engines that need to grow, truncate or fallocate their container file.
 */
int bdev_file_fd (struct bdev *bd);

void bdev_close (struct bdev *bd);

/* Checked entry points: validate the range and flags, then dispatch. */
int bdev_pread (struct bdev *bd, void *buf, size_t count, uint64_t offset);
int bdev_pwrite (struct bdev *bd, const void *buf, size_t count,
                 uint64_t offset, uint32_t flags);
int bdev_flush (struct bdev *bd);
int bdev_trim (struct bdev *bd, uint64_t count, uint64_t offset,
               uint32_t flags);
int bdev_zero (struct bdev *bd, uint64_t count, uint64_t offset,
               uint32_t flags);
int bdev_extents (struct bdev *bd, uint64_t count, uint64_t offset,
                  uint32_t flags, bdev_extent_fn fn, void *opaque);

/* Trim (TRIM) or zero with FLAGS the part of [OFFSET, OFFSET+COUNT) that
 * lies inside BD: for engines giving back the bytes of a grain or block
 * that may end past the end of its container (which reads as zeroes).
 */
int bdev_discard_within (struct bdev *bd, uint64_t count, uint64_t offset,
                         bool trim, uint32_t flags);

/* Zero by writing a buffer of zeroes through BD's own pwrite (no checks):
 * bdev_zero's fallback, for engines whose zero cannot always be native.
 */
int bdev_zero_by_writing (struct bdev *bd, uint64_t count, uint64_t offset,
                          uint32_t flags);

/* Read that tolerates ranges past the end of BD, returning zeroes there:
 * what an overlay needs from a shorter backing file.
 */
int bdev_pread_padded (struct bdev *bd, void *buf, size_t count,
                       uint64_t offset);

/* Helpers for engines: allocate and fill the common part. */
void *bdev_alloc (size_t struct_size, const struct bdev_ops *ops,
                  const char *name);
void bdev_free_common (struct bdev *bd);

#endif
