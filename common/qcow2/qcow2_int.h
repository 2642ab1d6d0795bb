/* SPDX-License-Identifier: BSD-3-Clause */
/* Internal definitions shared by the qcow2 engine sources:
 *   qcow2.c           design notes, read and block status
 *   qcow2_map.c       L1/L2 lookup and the walk over a guest range
 *   qcow2_cache.c     table caches and dirty tracking
 *   qcow2_overlap.c   no write lands in metadata it does not mean to change
 *   qcow2_refcount.c  refcounts and cluster allocation
 *   qcow2_flush.c     write-back in dependency order
 *   qcow2_compress.c  compressed clusters
 *   qcow2_write.c     write, zero, trim
 *   qcow2_open.c      open, close, snapshots
 *   qcow2_create.c    new images
 *   qcow2_bitmap.c    persistent dirty bitmaps
 *   qcow2_repair.c    refcount repair of dirty images
 */
#ifndef KVM_QCOW2_INT_H
#define KVM_QCOW2_INT_H

#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "bdev/bdev.h"
#include "qcow2.h"
#include "util/endian.h"
#include "util/log.h"

struct lru;

#define QCOW2_MAGIC 0x514649fbu        /* "QFI\xfb" */

/* Header field offsets (big-endian). */
#define H_MAGIC            0
#define H_VERSION          4
#define H_BACKING_OFFSET   8
#define H_BACKING_SIZE     16
#define H_CLUSTER_BITS     20
#define H_SIZE             24
#define H_CRYPT            32
#define H_L1_SIZE          36
#define H_L1_OFFSET        40
#define H_RT_OFFSET        48
#define H_RT_CLUSTERS      56
#define H_NB_SNAPSHOTS     60
#define H_SNAPSHOTS_OFFSET 64
#define H_INCOMPAT         72
#define H_COMPAT           80
#define H_AUTOCLEAR        88
#define H_REFCOUNT_ORDER   96
#define H_HEADER_LENGTH    100
#define H_COMPRESSION      104
#define H_V2_LENGTH        72
#define H_V3_LENGTH        104
#define H_V3_LENGTH_CT     112

/* Feature bits. */
#define INCOMPAT_DIRTY       (1ull << 0)
#define INCOMPAT_CORRUPT     (1ull << 1)
#define INCOMPAT_DATA_FILE   (1ull << 2)
#define INCOMPAT_COMPRESSION (1ull << 3)
#define INCOMPAT_EXTL2       (1ull << 4)
#define INCOMPAT_KNOWN       0x1full
#define COMPAT_LAZY_REFCOUNTS (1ull << 0)
#define AUTOCLEAR_BITMAPS    (1ull << 0)
#define AUTOCLEAR_DATA_RAW   (1ull << 1)

/* Header extension types. */
#define EXT_END          0x00000000u
#define EXT_BACKING_FMT  0xe2792acau
#define EXT_FEATURES     0x6803f857u
#define EXT_BITMAPS      0x23852875u
#define EXT_CRYPTO       0x0537be77u
#define EXT_DATA_FILE    0x44415441u

/* Table entry bits. */
#define L1E_OFFSET_MASK  0x00fffffffffffe00ull
#define L2E_OFFSET_MASK  0x00fffffffffffe00ull
#define REFT_OFFSET_MASK 0xfffffffffffffe00ull
#define OFLAG_COPIED     (1ull << 63)
#define OFLAG_COMPRESSED (1ull << 62)
#define OFLAG_ZERO       (1ull << 0)

#define MAX_L1_BYTES       (32u << 20)    /* as QEMU */
#define MAX_RT_BYTES       (8u << 20)     /* as QEMU */
#define MAX_SNAPSHOTS      65536
#define MAX_SNAPSHOT_TABLE (64u << 20)
#define DEFAULT_CACHE_MAX  (32u << 20)
#define MIN_CACHE          (1u << 20)

/* Cached table buffer: cluster_size bytes followed by this trailer. */
struct tmeta {
  uint64_t key;
  uint8_t dirty;
};

struct snap {
  char *id, *name;
  uint64_t l1_offset;
  uint32_t l1_size;
  uint64_t disk_size;
  uint32_t date_sec, date_nsec;
  uint64_t vm_clock;
};

/* Tables named by other tables, for the overlap checks (qcow2_overlap.c). */
enum q2_meta { Q2_META_NONE, Q2_META_L2, Q2_META_REFBLOCK, Q2_META_SNAP_L1 };
struct q2_mentry {
  uint64_t off;
  uint32_t len;                 /* at most MAX_L1_BYTES */
  uint32_t kind;                /* enum q2_meta */
};
struct q2_metaset {
  struct q2_mentry *v;          /* sorted by off; duplicates allowed */
  size_t n, cap;
  uint64_t maxlen;              /* of any entry */
};

struct dirty_list {
  void **v;
  size_t n, cap;
};

struct qcow2 {
  struct bdev bd;
  char *path;
  struct bdev *file;            /* the image container (owned) */
  struct bdev *data;            /* where data clusters live */
  struct bdev *backing;
  int fd;                       /* of file (fallocate, ftruncate, fstat);
                                 * -1 if the container is not a file */
  bool external_data;
  bool verbose;

  uint8_t hdr[H_V3_LENGTH_CT];  /* first bytes of the header, patched */
  uint64_t bm_ext_pos;          /* bitmaps extension in cluster 0, or 0 */
  uint64_t ext_area_end;        /* end of the header extension area */
  uint32_t header_write_len;
  uint32_t version;
  unsigned cluster_bits;
  uint64_t cluster_size;
  unsigned l2_bits;             /* log2 entries per L2 table */
  unsigned l2_entry_shift;      /* 3 (8 bytes) or 4 (16 bytes) */
  bool ext_l2;
  unsigned sc_bits;             /* log2 subcluster size */
  uint64_t incompat, compat, autoclear;
  unsigned refcount_order;
  unsigned rb_bits;             /* log2 refcount entries per block */
  uint64_t refcount_max;
  int compression_type;
  unsigned csize_shift;
  uint64_t csize_mask;
  bool compress;                /* qcow2.compress: whole new clusters are
                                 * written compressed */
  uint64_t cfree;               /* next free byte of the host cluster being
                                 * filled with compressed data, or 0 */

  /* Active L1 (or snapshot L1, read-only). */
  uint64_t l1_offset;
  uint64_t l1_size;
  uint64_t *l1;
  bool l1_dirty;

  uint64_t rt_offset;
  uint64_t rt_clusters;
  uint64_t rt_entries;
  uint64_t *rt;
  bool rt_dirty;
  bool header_dirty;
  uint64_t old_rt_offset, old_rt_clusters;  /* freed after flush */

  struct lru *l2c, *rbc;
  size_t l2c_capacity, rbc_capacity;
  /* Lock-free fast path for reads: l2ptr[i] is the cached L2 table of L1
   * entry i, holding a permanent pin in l2c (at most l2ptr_max of them).
   * Published with a CAS under the shared lock, cleared under the
   * exclusive lock when the L1 entry changes.
   */
  void **l2ptr;
  size_t l2ptr_count, l2ptr_max;
  struct dirty_list dl2, drb;
  uint64_t *pending_free;
  size_t npending, cappending;
  uint64_t cursor;              /* next candidate host offset */
  uint64_t alloc_end;           /* end of the highest cluster allocated */
  uint64_t zero_from;           /* clusters from here were never written */
  bool first_write_done;
  struct q2_bitmaps *bitmaps;   /* persistent bitmaps kept valid, or NULL */

  struct snap *snaps;
  struct qcow2_snapshot_info *snapinfo;
  size_t nsnaps;
  uint64_t snap_offset, snap_bytes;     /* the snapshot table (no writes) */
  struct q2_metaset meta;       /* empty unless writable */

  pthread_rwlock_t lock;
  pthread_mutex_t detect_lock;
  /* Writes whose data goes out after the exclusive lock is dropped
   * (qcow2_pwrite's deferred runs), counted while in flight: a flush
   * waits for them before it frees clusters, or a cluster being written
   * could be freed (by a concurrent trim) and given to another request
   * before the late data lands in it.
   */
  pthread_mutex_t deferred_lock;
  pthread_cond_t deferred_done;
  unsigned deferred_inflight;
  int meta_prealloc;            /* -1 unknown, 0 no, 1 yes */
};

struct load_ctx {
  struct qcow2 *q;
  const char *what;
  bool zero;
};

enum utype { U_DATA, U_ZERO, U_UNALLOC, U_COMPRESSED };

typedef int (*run_fn) (struct qcow2 *q, void *opaque, enum utype type,
                       uint64_t guest, uint64_t host, uint64_t len,
                       uint64_t entry);

/* Small helpers on hot paths, inlined everywhere. */

static inline struct tmeta *
tmeta_of (struct qcow2 *q, void *buf)
{
  return (struct tmeta *) ((char *) buf + q->cluster_size);
}

static inline uint64_t
rc_get (const struct qcow2 *q, const uint8_t *b, uint64_t i)
{
  switch (q->refcount_order) {
  case 0: return (b[i / 8] >> (i % 8)) & 1;
  case 1: return (b[i / 4] >> (2 * (i % 4))) & 3;
  case 2: return (b[i / 2] >> (4 * (i % 2))) & 15;
  case 3: return b[i];
  case 4: return load_be16 (b + 2 * i);
  case 5: return load_be32 (b + 4 * i);
  default: return load_be64 (b + 8 * i);
  }
}

static inline uint64_t
l2_entry (const struct qcow2 *q, const uint8_t *t, uint64_t i)
{
  return load_be64 (t + (i << q->l2_entry_shift));
}

static inline uint64_t
l2_bitmap (const struct qcow2 *q, const uint8_t *t, uint64_t i)
{
  return q->ext_l2 ? load_be64 (t + (i << q->l2_entry_shift) + 8) : 0;
}

/* qcow2_overlap.c: q2_check_no_overlap for data and everything else that
 * is not a table below; q2_check_table_write for an L2 table or refcount
 * block; q2_check_fixed_table_write for the L1 and refcount tables.
 */
int q2_check_no_overlap (struct qcow2 *q, uint64_t off, uint64_t len,
                         const char *what);
int q2_check_table_write (struct qcow2 *q, uint64_t off, enum q2_meta kind);
int q2_check_fixed_table_write (struct qcow2 *q, uint64_t off, uint64_t len,
                                const char *what);
int q2_meta_build (struct qcow2 *q);
void q2_meta_free (struct qcow2 *q);
int q2_meta_add (struct qcow2 *q, uint64_t off, enum q2_meta kind);
void q2_meta_remove (struct qcow2 *q, uint64_t off, enum q2_meta kind);

/* qcow2_cache.c */
int q2_check_table_offset (struct qcow2 *q, uint64_t off, const char *what);
int q2_mark_dirty (struct qcow2 *q, struct lru *c, struct dirty_list *d,
                  void *buf);
void *q2_table_get (struct qcow2 *q, struct lru *c, uint64_t off,
                    const char *what, bool zero);
int q2_table_load (void *opaque, uint64_t key, void *buf);

/* qcow2_refcount.c */
int q2_alloc_clusters (struct qcow2 *q, uint64_t n, uint64_t *off);
uint64_t *q2_read_u64_table (struct qcow2 *q, uint64_t off, uint64_t n,
                             const char *what);
int q2_defer_free (struct qcow2 *q, uint64_t off);
int q2_refcount_get (struct qcow2 *q, uint64_t off, uint64_t *rc);
int q2_refcount_update (struct qcow2 *q, uint64_t off, int delta,
                        uint64_t *newval);

/* qcow2_flush.c */
int q2_flush_locked (struct qcow2 *q);
int q2_maybe_flush (struct qcow2 *q);
void q2_punch (struct qcow2 *q, uint64_t off, uint64_t len);
void q2_release_cluster (struct qcow2 *q, uint64_t off);
int q2_sync_file (struct qcow2 *q, struct bdev *b);
int q2_write_header (struct qcow2 *q);

/* qcow2_compress.c */
int q2_free_compressed (struct qcow2 *q, uint64_t e);
int q2_read_compressed (struct qcow2 *q, uint64_t e, uint8_t *out);
/* Compressed writes: the whole aligned clusters of one write request,
 * compressed before the exclusive lock is taken.
 */
#define CB_ZERO UINT32_C(0)             /* the cluster is all zeroes */
#define CB_RAW  UINT32_MAX              /* does not compress: store it raw */
struct q2_cbatch {
  uint64_t first, n;            /* guest clusters [first, first + n) */
  uint32_t *len;                /* compressed bytes, or CB_ZERO / CB_RAW */
  uint64_t *pos;                /* where in out */
  uint8_t *out;
};
int q2_setup_compress (struct qcow2 *q, const char *opt, bool readonly);
int q2_compress_batch (struct qcow2 *q, struct q2_cbatch *cb,
                       const uint8_t *buf, uint64_t count, uint64_t offset);
void q2_cbatch_free (struct q2_cbatch *cb);
int q2_compress_alloc (struct qcow2 *q, uint64_t len, uint64_t *off);
uint64_t q2_compressed_entry (struct qcow2 *q, uint64_t off, uint64_t len);

/* qcow2_repair.c */
int q2_repair (struct qcow2 *q);

/* qcow2_bitmap.c: persistent dirty bitmaps.  Open (read-write) loads
 * them; before guest content changes, first_write() calls
 * q2_bitmap_first_write once, then q2_bitmap_mark (IN_USE durable) and
 * q2_bitmap_dirty (bits set; also from the shared-lock fast path, which
 * must take the slow path while q2_bitmap_needs_mark); q2_flush_locked
 * stores them with q2_bitmap_prepare and q2_bitmap_commit.
 */
int q2_bitmap_open (struct qcow2 *q);
void q2_bitmap_close (struct qcow2 *q);
int q2_bitmap_first_write (struct qcow2 *q);
int q2_bitmap_mark (struct qcow2 *q);
bool q2_bitmap_needs_mark (struct qcow2 *q);
void q2_bitmap_dirty (struct qcow2 *q, uint64_t offset, uint64_t count);
int q2_bitmap_prepare (struct qcow2 *q);
int q2_bitmap_commit (struct qcow2 *q);

/* qcow2_map.c */
int q2_classify (struct qcow2 *q, uint64_t e, uint64_t bm, unsigned sc,
                 enum utype *type, uint64_t *host);
int q2_l2_lookup_table (struct qcow2 *q, const uint64_t *l1, uint64_t n,
                        uint64_t i, uint8_t **t);
void q2_l2ptr_drop (struct qcow2 *q, uint64_t i);
int q2_walk (struct qcow2 *q, const uint64_t *l1, uint64_t l1n,
             uint64_t offset, uint64_t count, run_fn fn, void *opaque);

/* qcow2.c */
int qcow2_extents (struct bdev *bd, uint64_t count, uint64_t offset,
                   uint32_t flags, bdev_extent_fn fn, void *opaque);
int qcow2_pread (struct bdev *bd, void *buf, size_t count, uint64_t offset);
int q2_read_locked (struct qcow2 *q, void *buf, uint64_t count,
                    uint64_t offset);

/* qcow2_write.c */
int qcow2_flush (struct bdev *bd);
int qcow2_pwrite (struct bdev *bd, const void *buf, size_t count,
                  uint64_t offset, uint32_t flags);
int qcow2_trim (struct bdev *bd, uint64_t count, uint64_t offset,
                uint32_t flags);
int qcow2_zero (struct bdev *bd, uint64_t count, uint64_t offset,
                uint32_t flags);

#endif
