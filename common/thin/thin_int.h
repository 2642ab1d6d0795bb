/* SPDX-License-Identifier: BSD-3-Clause */
/* Internals of the thin engine shared by thin.c (the running pool) and
 * thin_meta.c (the metadata format and the checker).
 */
#ifndef KVM_THIN_INT_H
#define KVM_THIN_INT_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "thin/thin.h"
#include "util/bitmap.h"
#include "util/progress.h"

#define TBLK 4096u
#define TPB 1023u                       /* table entries per block */
#define BPB (4092u * 8)                 /* bitmap bits per block */
#define THIN_BUSY UINT32_MAX
#define PROGRESS_STEP 4096u             /* chunks per progress update */
#define THIN_MAX_VCHUNKS (1ull << 28)   /* 1 GiB of map in memory */

struct geom {
  uint64_t vsize;
  uint32_t chunk;
  uint32_t flags;                       /* 1: separate metadata */
  uint64_t nv;
  uint64_t data_off;
  uint32_t tblocks, bblocks;
  uint64_t body_bytes;                  /* one slot's table + bitmap */
};

struct thin {
  struct bdev bd;
  struct bdev *pool, *meta;             /* meta == pool if internal */
  struct geom g;
  _Atomic uint64_t pool_chunks;
  _Atomic uint32_t *map;
  struct bitmap alloc;                  /* mapped, busy or freed-uncommitted */
  struct bitmap mapped;                 /* published mappings */
  uint64_t n_alloc, n_mapped;
  pthread_mutex_t lock;
  pthread_cond_t cond;
  uint64_t seq;                         /* last committed transaction */
  uint64_t *tgen, *bgen;                /* txn that last changed each block */
  bool dirty;
  /* A commit's header write or flush failed: that header may or may not
   * be on disk, so it is written again before anything else changes the
   * metadata (thin.c, finish_header_locked).
   */
  _Atomic bool hdr_pending;
  uint64_t hdr_used, hdr_pool_chunks;   /* what that header records */
  size_t hdr_npend;                     /* pend[] entries it releases */
  uint64_t *pend;                       /* freed since the last commit */
  size_t npend, cappend;
  _Atomic uint64_t epoch;
  _Atomic long inflight[2];
  struct thin_alerts *al;               /* the caller's, or own_al */
  struct thin_alerts own_al;
  uint64_t free_hint;                   /* no free chunk below this */
  unsigned warn;
  void *opaque;
  void (*watermark) (void *, const struct thin_stats *);
  int64_t (*pool_size_fn) (void *);
  _Atomic uint64_t allocs, releases, commits, enospc;
};

/* Does BUF hold N zero bytes? */
static inline bool
thin_is_zero (const void *buf, size_t n)
{
  const unsigned char *p = buf;
  return n == 0 || (p[0] == 0 && memcmp (p, p + 1, n - 1) == 0);
}

#define TH(bd) ((struct thin *) (bd))

/* Problems of a mapping table against its bitmap.  REPORT: print each
 * one; LEAKS: count of leaked chunks (set, unmapped).
 */
struct verify_result {
  uint64_t out_of_range, doubles, unmarked, leaks, mapped;
};

/* thin_meta.c, used by thin.c to open, format and commit. */
int thin_geom_compute (struct geom *g, uint64_t vsize, uint32_t chunk,
                       bool external, char *err, size_t errlen);
uint64_t thin_body_off (const struct geom *g, unsigned slot);
/* Bytes of metadata (at the start of the pool, or the separate file). */
uint64_t thin_meta_bytes (const struct geom *g);
uint32_t thin_block_crc (uint32_t seed, const uint8_t *blk);
/* The CRC seed of body block I: table block I, then bitmap block
 * I - tblocks (thin.h).
 */
uint32_t thin_body_seed (const struct geom *g, uint64_t i);
void thin_header_encode (uint8_t *b, const struct geom *g, uint64_t seq,
                         uint64_t used, uint64_t pool_chunks);
int thin_headers_read (struct bdev *meta, struct geom *g, uint64_t *seq,
                       uint64_t *used, bool *allzero, char *err,
                       size_t errlen, FILE *report);
uint64_t thin_pool_chunks_of (const struct geom *g, uint64_t pool_size);
/* 1 if the metadata area of geometry G on BD reads as zeroes, except for
 * body blocks that hold what a format of G writes there (a format cut
 * short before its headers: it is redone); 0 if not (*NONZERO: the MiB
 * where), -1 on error.
 */
int thin_area_is_blank (struct bdev *bd, const struct geom *g,
                        uint64_t *nonzero);
long thin_body_read (struct bdev *meta, const struct geom *g, unsigned slot,
                     uint32_t *entries, struct bitmap *bits, FILE *report,
                     struct kvm_progress *pr);
int thin_verify (const struct geom *g, const uint32_t *entries,
                 const struct bitmap *bits, uint64_t pool_chunks,
                 FILE *report, struct verify_result *r,
                 struct kvm_progress *pr);

#endif
