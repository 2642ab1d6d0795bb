/* SPDX-License-Identifier: BSD-3-Clause */
/* Internals of the VMDK engine shared by its source files. */
#ifndef KVM_VMDK_INT_H
#define KVM_VMDK_INT_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "vmdk.h"

#define SECTOR 512u

/* Hosted sparse extent header ("KDMV"), little-endian, one sector. */
#define SPARSE_MAGIC     0x564d444bu    /* "KDMV" */
#define COWD_MAGIC       0x44574f43u    /* "COWD" (VMFSSPARSE) */
#define H_VERSION        4
#define H_FLAGS          8
#define H_CAPACITY       12
#define H_GRAIN          20
#define H_DESC_OFFSET    28
#define H_DESC_SIZE      36
#define H_NUM_GTES       44
#define H_RGD_OFFSET     48
#define H_GD_OFFSET      56
#define H_OVERHEAD       64
#define H_UNCLEAN        72
#define H_NL_CHARS       73             /* '\n', ' ', '\r', '\n' */
#define H_COMPRESS_ALG   77

#define FLAG_NL_TEST     (1u << 0)
#define FLAG_RGD         (1u << 1)
#define FLAG_ZERO_GRAIN  (1u << 2)
#define FLAG_COMPRESSED  (1u << 16)
#define FLAG_MARKERS     (1u << 17)

#define GD_AT_END        0xffffffffffffffffull

/* Stream markers (streamOptimized): u64 value, u32 size, u32 type. */
#define MARKER_EOS       0
#define MARKER_GT        1
#define MARKER_GD        2
#define MARKER_FOOTER    3

/* Grain table entries with a meaning of their own. */
#define GTE_UNALLOC      0
#define GTE_ZERO         1
/* In memory only: an entry read from the file that named a grain at or
 * past the end of the file as opened (vmdk_get_gt).  Grains allocated
 * later go there, so such an entry must never start to name them.
 */
#define GTE_PAST_END     UINT32_MAX

/* COWD header fields (after the magic), little-endian u32. */
#define C_VERSION        4
#define C_FLAGS          8
#define C_CAPACITY       12
#define C_GRAIN          16
#define C_GD_OFFSET      20
#define C_GD_SIZE        24
#define COWD_GTES        4096

/* seSparse (vSphere "space-efficient sparse"): a 512-byte constant
 * header of little-endian u64 fields at byte 0, a volatile header, a
 * grain directory and grain tables of u64 entries.  Offsets and sizes are
 * in sectors.
 */
#define SE_CONST_MAGIC   0xcafebabeull
#define SE_VOL_MAGIC     0xcafecafeull
#define SE_VERSION       0x0000000200000001ull
#define SE_GRAIN_SECTORS 8
#define SE_GT_SECTORS    64             /* 4096 entries */
#define SE_GTES          (SE_GT_SECTORS * SECTOR / 8)
/* u64 indexes into the constant header. */
#define SE_H_MAGIC       0
#define SE_H_VERSION     1
#define SE_H_CAPACITY    2
#define SE_H_GRAIN       3
#define SE_H_GT_SIZE     4
#define SE_H_FLAGS       5              /* 6..9: reserved, must be 0 */
#define SE_H_VOL_OFF     10
#define SE_H_GD_OFF      16
#define SE_H_GD_SIZE     17
#define SE_H_GT_OFF      18
#define SE_H_GRAINS_OFF  24
#define SE_H_FIELDS      26             /* then zero padding */
/* Volatile header: magic, free GT number, next txn, replay_journal. */
#define SE_V_REPLAY      3
#define SE_V_FIELDS      4

enum ext_kind { EK_FLAT, EK_ZERO, EK_SPARSE };

/* One grain table's entries [lo, hi) changed since the last flush, and
 * whether its directory entries (both directories) changed.
 */
struct vmdk_dirty {
  uint64_t gdi;
  uint32_t lo, hi;
  bool gd;
};

struct extent {
  enum ext_kind kind;
  uint64_t start, size;         /* virtual range, bytes */
  struct bdev *file;            /* NULL for ZERO */
  bool own_file;                /* closed with the engine */
  bool readonly;
  dev_t file_dev;               /* of a local file (shares_file), else 0 */
  ino_t file_ino;
  uint64_t flat_off;            /* FLAT: bytes into the file */

  /* Sparse extents. */
  bool cowd;                    /* VMFSSPARSE */
  bool se;                      /* SESPARSE: read-only, u64 tables below */
  uint64_t se_gt_off, se_grains_off;    /* bytes */
  uint64_t *se_gd;              /* ngd entries, host order */
  uint64_t **se_gt;             /* ngd lazily loaded tables (atomic) */
  uint32_t version, flags;
  bool compressed, markers, zero_grain, has_rgd;
  uint64_t grain;               /* bytes, power of two */
  unsigned grain_shift;
  uint32_t gt_entries;          /* entries per grain table */
  uint64_t ngd;                 /* grain directory entries */
  uint64_t gd_off, rgd_off;     /* bytes (rgd_off 0: none) */
  uint64_t desc_off, desc_size; /* the header's embedded descriptor area,
                                 * bytes (text or not: never written) */
  uint32_t *gd, *rgd;           /* in host order; rgd entries naming a
                                 * table past open_end are cleared */
  uint64_t open_end;            /* file size at open (bytes): what the
                                 * file's tables may name lies below it */
  uint64_t *gt_at;              /* writable: the sorted offsets of the
                                 * grain tables named at open (both
                                 * directories), never changed after */
  size_t ngt_at;
  uint32_t **gt;                /* ngd lazily loaded tables (atomic) */
  /* Grain table and directory entries changed in memory since the last
   * flush: written by the flush once the data they name is durable
   * (vmdk_write.c).  Under lock.
   */
  struct vmdk_dirty *dirty;
  size_t ndirty, capdirty;
  uint32_t *dirty_at;           /* ngd entries: index in dirty + 1, or 0 */
  pthread_mutex_t lock;         /* allocation */
  uint64_t alloc_end;           /* next free byte in the file */
  uint64_t claimed_end;         /* where allocations past the end of the
                                 * file began: the first alloc_end, or the
                                 * end of a cut-short last grain written
                                 * (vmdk_write.c) */
};

struct vmdk {
  struct bdev bd;
  char *path;
  struct bdev *container;       /* the opened file (descriptor or extent) */
  struct bdev *parent;
  struct extent *ext;
  size_t next;
  /* The descriptor, to update its CID on the first write. */
  struct bdev *desc_file;       /* container or NULL (none) */
  uint64_t desc_off, desc_max;  /* bytes; desc_max 0: standalone file */
  char *desc_text;
  size_t desc_len;
  uint32_t cid;
  bool has_cid;                 /* the descriptor gives a CID */
  bool cid_done;                /* atomic */
  uint64_t gt_mem;              /* bytes of grain tables loaded (atomic) */
  uint64_t gt_open_bytes;       /* bytes of tables the directories name */
  pthread_mutex_t cid_lock;
};

/* Shared by vmdk.c (open), vmdk_read.c (grain tables, reads, block
 * status) and vmdk_write.c (writes, zeroes, trims, flush).
 */
enum grain_state { G_UNALLOC, G_ZERO, G_DATA, G_COMPRESSED };

uint64_t vmdk_file_end (struct extent *e);
bool vmdk_gt_charge (struct vmdk *v, uint64_t bytes);
void vmdk_gt_release (struct vmdk *v, uint64_t bytes);
uint32_t *vmdk_gt_publish (struct vmdk *v, struct extent *e, uint64_t gdi,
                           uint32_t *gt, uint64_t bytes);
int vmdk_get_gt (struct vmdk *v, struct extent *e, uint64_t gdi,
                 uint32_t **gtp);
int vmdk_get_gte (struct vmdk *v, struct extent *e, uint64_t gi,
                  uint32_t *out);
int vmdk_check_data_run (struct vmdk *v, struct extent *e, uint64_t phys,
                         uint64_t len);
enum grain_state vmdk_grain_state (struct extent *e, uint32_t gte);
int vmdk_read_below (struct vmdk *v, void *buf, size_t count,
                     uint64_t voff);
int vmdk_sparse_run (struct vmdk *v, struct extent *e, uint64_t off,
                     uint64_t count, enum grain_state *st, uint64_t *len,
                     uint64_t *phys);
struct extent *vmdk_find_extent (struct vmdk *v, uint64_t off);

/* The bdev operations (vmdk.c's vmdk_ops). */
int vmdk_pread (struct bdev *bd, void *vbuf, size_t count, uint64_t offset);
int vmdk_pwrite (struct bdev *bd, const void *vbuf, size_t count,
                 uint64_t offset, uint32_t flags);
int vmdk_zero (struct bdev *bd, uint64_t count, uint64_t offset,
               uint32_t flags);
int vmdk_trim (struct bdev *bd, uint64_t count, uint64_t offset,
               uint32_t flags);
int vmdk_flush (struct bdev *bd);
int vmdk_extents (struct bdev *bd, uint64_t count, uint64_t offset,
                  uint32_t flags, bdev_extent_fn fn, void *opaque);

/* [A, A_END) and [B, B + B_LEN) share a byte (offsets in a file, far below
 * 2^64).
 */
static inline bool
vmdk_overlaps (uint64_t a, uint64_t a_end, uint64_t b, uint64_t b_len)
{
  return b_len && a < b + b_len && b < a_end;
}

/* [OFF, END) of sparse extent E's file meets its header or the descriptor
 * area the header reserves.
 */
static inline bool
vmdk_hits_head (const struct extent *e, uint64_t off, uint64_t end)
{
  return off < SECTOR || vmdk_overlaps (off, end, e->desc_off, e->desc_size);
}

#endif
