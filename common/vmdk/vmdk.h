/* SPDX-License-Identifier: BSD-3-Clause */
/* VMDK engine: struct bdev_ops over a VMware virtual disk.
 *
 * Reads descriptor files (standalone, or embedded in a hosted sparse
 * extent) with extents of types SPARSE (hosted sparse, header versions 1
 * to 3, any power-of-two grain size, zeroed-grain entries, streamOptimized
 * compressed grains with markers and a footer), FLAT, VMFS (flat), ZERO and
 * VMFSSPARSE (COWD, read-only); delta disks through parentFileNameHint
 * (the parent opened with bdev_open(), any format).  Writes go to sparse
 * and flat extents; streamOptimized (compressed) extents are read-only.
 *
 * Every extent and parent file name is resolved with confine_resolve()
 * and opened with bdev_storage_open().
 *
 * Engine options (opts->format_opts):
 *   vmdk.backing=none        ignore the parent (unallocated grains read
 *                            as zeroes)
 *   vmdk.ignore-parent-cid=1 open a delta disk whose VMDK parent's CID is
 *                            not its parentCID (the parent changed since)
 */
#ifndef KVM_VMDK_H
#define KVM_VMDK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "bdev/bdev.h"

bool vmdk_probe (const void *buf, size_t len);
struct bdev *vmdk_open (const char *path, const struct bdev_open_opts *opts,
                        unsigned depth);

/* Open a VMDK whose bytes are CONTAINER: a hosted sparse extent
 * (monolithicSparse, streamOptimized) or a descriptor whose extent files
 * are found relative to NAME (refused when opts->no_paths).  Takes
 * ownership of CONTAINER and opts->backing, also on failure.
 */
struct bdev *vmdk_open_container (struct bdev *container, const char *name,
                                  const struct bdev_open_opts *opts,
                                  unsigned depth);

/* Create a new image (struct bdev_format's create).  Options:
 * subformat=monolithicSparse (default), monolithicFlat,
 * twoGbMaxExtentSparse, twoGbMaxExtentFlat, streamOptimized;
 * adapter_type=ide (default), buslogic, lsilogic, legacyESX;
 * zeroed_grain=on|off; hwversion=N.
 */
int vmdk_create_options (const char *path, uint64_t size,
                         const char *const *options);

/* --- The descriptor parser (exposed for the fuzz target) --------------- */

enum vmdk_ext_type {
  VMDK_EXT_SPARSE, VMDK_EXT_FLAT, VMDK_EXT_ZERO, VMDK_EXT_VMFS,
  VMDK_EXT_VMFSSPARSE, VMDK_EXT_SESPARSE,
};

struct vmdk_desc_extent {
  enum vmdk_ext_type type;
  bool readonly;                /* RDONLY or NOACCESS */
  uint64_t sectors;
  char *file;                   /* NULL for ZERO */
  uint64_t offset;              /* FLAT/VMFS: start in the file, sectors */
};

struct vmdk_desc {
  unsigned version;
  bool has_cid;
  uint32_t cid, parent_cid;
  char *create_type;
  char *parent_hint;            /* parentFileNameHint, or NULL */
  char *adapter_type;
  struct vmdk_desc_extent *ext;
  size_t next;
  uint64_t total_sectors;       /* sum of the extents' sizes */
};

#define VMDK_MAX_DESC (1024 * 1024)     /* bytes of descriptor text */
#define VMDK_MAX_EXTENTS 4096
/* Grain tables held in memory by one open image (all its extents): each
 * table is loaded once and kept, so a grain directory whose entries all
 * name the same table would otherwise cost one copy per entry.  256 MiB
 * holds every table of a 4 TiB disk with the usual 64 KiB grains.
 */
#define VMDK_MAX_GT_MEM (256u << 20)

/* Parse LEN bytes of descriptor text (need not be NUL-terminated).  0, or
 * -1 with errno EINVAL and the reason in ERR.
 */
int vmdk_desc_parse (const char *text, size_t len, struct vmdk_desc *d,
                     char *err, size_t errlen);
void vmdk_desc_free (struct vmdk_desc *d);

#endif
