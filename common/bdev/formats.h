/* SPDX-License-Identifier: BSD-3-Clause */
/* The table of image formats bdev_open() knows.  A new format engine
 * (common/NAME, library kvm_NAME) adds one line to the table in formats.c
 * and one link in its CMakeLists.txt (kvm_formats <-> kvm_NAME).
 */
#ifndef KVM_BDEV_FORMATS_H
#define KVM_BDEV_FORMATS_H

#include "bdev.h"

struct bdev_format {
  const char *name;
  /* Does this header belong to the format?  NULL: never probed. */
  bool (*probe) (const void *buf, size_t len);
  struct bdev *(*open) (const char *path, const struct bdev_open_opts *opts,
                        unsigned depth);
  /* Create a new, empty image of SIZE virtual bytes at PATH, which must not
   * exist.  OPTIONS: "key=value" strings named as qemu-img's -o options
   * (NULL-terminated, may be NULL); an unknown key is an error.  0, or -1
   * with a message.  NULL: the format cannot be created.
   */
  int (*create) (const char *path, uint64_t size,
                 const char *const *options);
};

/* Terminated by an entry with name == NULL. */
extern const struct bdev_format bdev_formats[];

const struct bdev_format *bdev_format_find (const char *name);

#endif
