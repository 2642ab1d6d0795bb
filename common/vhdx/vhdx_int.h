/* SPDX-License-Identifier: BSD-3-Clause */
/* VHDX engine internals: on-disk constants ([MS-VHDX] section 2) and the
 * engine state shared by vhdx.c, vhdx_meta.c, vhdx_io.c, vhdx_log.c and
 * vhdx_create.c.
 */
#ifndef KVM_VHDX_INT_H
#define KVM_VHDX_INT_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include "bdev/bdev.h"

#define VHDX_MiB (UINT64_C (1) << 20)
#define VHDX_KiB (UINT64_C (1) << 10)

/* Fixed layout of the first megabyte. */
#define VHDX_HEADER1_OFF  (64 * VHDX_KiB)
#define VHDX_HEADER2_OFF  (128 * VHDX_KiB)
#define VHDX_REGION1_OFF  (192 * VHDX_KiB)
#define VHDX_REGION2_OFF  (256 * VHDX_KiB)
#define VHDX_HEADER_SIZE  4096
#define VHDX_REGION_SIZE  (64 * VHDX_KiB)
#define VHDX_METATAB_SIZE (64 * VHDX_KiB)
#define VHDX_LOG_SECTOR   4096

/* The largest virtual disk we open. */
#define VHDX_MAX_VSIZE (UINT64_C (64) << 40)

/* Header fields (offsets in the 4 KiB header). */
#define H_SIG        0          /* "head" */
#define H_CKSUM      4
#define H_SEQ        8
#define H_FILE_GUID  16
#define H_DATA_GUID  32
#define H_LOG_GUID   48
#define H_LOG_VER    64
#define H_VERSION    66
#define H_LOG_LEN    68
#define H_LOG_OFF    72

/* BAT entry states (bits 0-2) and the file offset in MiB (bits 20-63). */
#define PB_NOT_PRESENT       0
#define PB_UNDEFINED         1
#define PB_ZERO              2
#define PB_UNMAPPED          3
#define PB_FULLY_PRESENT     6
#define PB_PARTIALLY_PRESENT 7
#define SB_NOT_PRESENT       0
#define SB_PRESENT           6
#define BAT_STATE(e)   ((unsigned) ((e) & 7))
#define BAT_OFFSET(e)  (((e) >> 20) << 20)

/* A GUID as stored on disk: Data1..3 little-endian, Data4 as bytes. */
#define VHDX_GUID(d1, d2, d3, b0, b1, b2, b3, b4, b5, b6, b7)           \
  { (d1) & 0xff, ((d1) >> 8) & 0xff, ((d1) >> 16) & 0xff,               \
    ((d1) >> 24) & 0xff, (d2) & 0xff, ((d2) >> 8) & 0xff,                \
    (d3) & 0xff, ((d3) >> 8) & 0xff, b0, b1, b2, b3, b4, b5, b6, b7 }

extern const uint8_t vhdx_guid_bat[16];
extern const uint8_t vhdx_guid_metadata[16];
extern const uint8_t vhdx_guid_file_params[16];
extern const uint8_t vhdx_guid_disk_size[16];
extern const uint8_t vhdx_guid_page83[16];
extern const uint8_t vhdx_guid_lss[16];
extern const uint8_t vhdx_guid_pss[16];
extern const uint8_t vhdx_guid_parent_locator[16];
extern const uint8_t vhdx_guid_locator_type[16];

/* Changes the replay of a dirty log makes, kept in memory when the file
 * must not be written (read-only open): applied in order over reads of
 * the container.
 */
struct vhdx_ovl_op {
  uint64_t off, len;
  uint8_t *data;                /* NULL: zeroes */
};

struct vhdx_overlay {
  struct vhdx_ovl_op *ops;
  size_t n, cap;
  uint64_t lo, hi;              /* union of the ranges */
  uint64_t size;                /* the file's size after replay */
};

struct vhdx {
  struct bdev bd;
  struct bdev *file;            /* the container */
  struct bdev *parent;          /* differencing disks */
  char *path;                   /* for messages; may be a description */
  struct vhdx_overlay *ovl;     /* read-only replay, or NULL */

  uint8_t hdr[VHDX_HEADER_SIZE];/* current header */
  uint64_t seq;
  uint64_t log_off, log_len;
  uint64_t bat_off, bat_len, meta_off, meta_len;

  uint32_t block_size, lss, pss;
  uint64_t vsize;
  uint64_t chunk_ratio;         /* payload blocks per sector bitmap block */
  uint64_t nblocks;             /* payload blocks */
  uint64_t nbat;                /* BAT entries */
  bool has_parent, leave_alloc;
  uint8_t data_guid[16], page83[16];
  char *parent_linkage, *parent_linkage2;

  uint64_t *bat;                /* read with __atomic loads */

  /* Writers (allocation, state changes, header and BAT updates). */
  pthread_mutex_t lock;
  bool guids_done;              /* new File/DataWriteGuid written */
  uint64_t file_end;            /* next 1 MiB-aligned free offset */
  uint8_t *bat_dirty;           /* one byte per 4 KiB of BAT */
  bool any_dirty;

  /* Sector bitmap blocks (1 MiB each), loaded on demand. */
  pthread_mutex_t sbm_lock;
  uint8_t **sbm;
  uint64_t nsbm;
};

/* Do [A, A+ALEN) and [B, B+BLEN) overlap? */
static inline bool
vhdx_overlaps (uint64_t a, uint64_t alen, uint64_t b, uint64_t blen)
{
  return a < b + blen && b < a + alen;
}

/* The parent locator of a differencing disk (UTF-8 copies). */
struct vhdx_locator {
  char *linkage, *linkage2, *relative, *volume, *absolute;
};
void vhdx_locator_free (struct vhdx_locator *l);

/* Open steps (vhdx_meta.c), each 0 or -1 with a message: the current
 * header into v->hdr; the region table (BAT and metadata regions); the
 * metadata items (sizes, sector sizes, parent locator into LOC).
 */
int vhdx_read_headers (struct vhdx *v);
int vhdx_read_regions (struct vhdx *v);
int vhdx_read_metadata (struct vhdx *v, struct vhdx_locator *loc);

/* bdev operations (vhdx_io.c); vhdx_flush_locked with v->lock held. */
int vhdx_pread (struct bdev *bd, void *buf, size_t count, uint64_t offset);
int vhdx_pwrite (struct bdev *bd, const void *buf, size_t count,
                 uint64_t offset, uint32_t flags);
int vhdx_zero (struct bdev *bd, uint64_t count, uint64_t offset,
               uint32_t flags);
int vhdx_trim (struct bdev *bd, uint64_t count, uint64_t offset,
               uint32_t flags);
int vhdx_extents (struct bdev *bd, uint64_t count, uint64_t offset,
                  uint32_t flags, bdev_extent_fn fn, void *opaque);
int vhdx_flush (struct bdev *bd);
int vhdx_flush_locked (struct vhdx *v);

/* Read the container as the log replay left it. */
int vhdx_file_read (struct vhdx *v, void *buf, size_t n, uint64_t off);

/* Find, validate and replay the log (vhdx_log.c).  Writes to the file
 * when !v->bd.readonly, else builds v->ovl.  0 or -1 with message.
 */
int vhdx_log_replay (struct vhdx *v, uint64_t file_size);
void vhdx_overlay_free (struct vhdx_overlay *o);

/* Write header: the current one with SEQ+1, LOG_GUID (NULL: zero) and
 * the given write GUIDs (NULL: unchanged), to both header slots, flushed.
 */
int vhdx_write_headers (struct vhdx *v, const uint8_t *file_guid,
                        const uint8_t *data_guid, const uint8_t *log_guid);

void vhdx_new_guid (uint8_t g[16]);
void vhdx_guid_str (const uint8_t g[16], char out[39]);

#endif
