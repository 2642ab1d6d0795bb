/* SPDX-License-Identifier: BSD-3-Clause */
/* Thin provisioning engine: a virtual disk whose chunks are allocated on
 * first write from a smaller pool (any struct bdev), as dm-thin does.
 *
 * On-disk format (all integers little-endian; "block" = 4096 bytes)
 * ------------------------------------------------------------------
 * The metadata lives at the start of the pool (then the data chunks start
 * at data_offset, a multiple of the chunk size), or in a separate
 * metadata device (then data_offset is 0).  It holds two copies ("slots")
 * of the whole metadata; a commit writes the slot not holding the newest
 * transaction and then its header, so one slot is always complete
 * (dm-thin's two superblocks, simplified).  Transaction T is always
 * written to slot T & 1, so that the next one never overwrites the
 * current slot: a header whose seq does not match its slot is invalid.
 *
 * Layout: header of slot 0 at byte 0, header of slot 1 at 4096, then the
 * body of slot 0 at 8192 and the body of slot 1 at 8192 + body_bytes.  A
 * body is table_blocks table blocks, then bitmap_blocks bitmap blocks.
 *
 * Header block:
 *   0   char[8] magic "NBDKTHIN"
 *   8   u32 version (1)
 *   12  u32 block size (4096)
 *   16  u64 seq: transaction number (the valid slot with the higher
 *       seq is current; seq & 1 is the slot's index)
 *   24  u64 virtual size in bytes
 *   32  u32 chunk size in bytes (power of 2, 4 KiB .. 64 MiB)
 *   36  u32 flags (bit 0: metadata in a separate device)
 *   40  u64 nr_virtual: virtual chunks, ceil(virtual size / chunk size)
 *   48  u64 data_offset: byte offset of physical chunk 0 in the pool
 *   56  u32 table_blocks = ceil(nr_virtual / 1023)
 *   60  u32 bitmap_blocks = ceil(nr_virtual / 32736)
 *   64  u64 body_bytes = (table_blocks + bitmap_blocks) * 4096
 *   72  u64 used chunks at the commit (must equal the bits set)
 *   80  u64 pool chunks at the commit (informational)
 *   4092 u32 crc32c of bytes 0..4091
 * Table block i: 1023 u32 entries for virtual chunks i*1023 .. i*1023+1022:
 *   0 = unmapped, p + 1 = mapped to physical chunk p; then at 4092 a u32
 *   crc32c (seeded with i) of bytes 0..4091.
 * Bitmap block j: 4092 bytes = bits for physical chunks j*32736 ..
 *   (bit k of byte b = chunk b*8+k), set = in use; crc32c seeded with
 *   0x80000000 | j at 4092.
 *
 * The number of physical chunks is min(nr_virtual, (pool size -
 * data_offset) / chunk size); it grows when the pool grows.  Every field
 * read from disk is checked against these bounds; a mapping outside the
 * pool, two virtual chunks mapped to one physical chunk or a mapped chunk
 * whose bit is clear make the open fail (nbdkit-thin-check(1) reports
 * them).  A bit set for an unmapped chunk (a leak) is reported and
 * reclaimed, and a header whose used count differs from the mapped
 * chunks is corrected.
 *
 * Crash safety: data is written into a newly allocated chunk before its
 * mapping is published; a commit (on flush and FUA) flushes the pool,
 * writes the changed blocks of the other slot, flushes, writes its
 * header, flushes; only then are chunks freed since the previous commit
 * available again (and trimmed below).
 */
#ifndef KVM_THIN_H
#define KVM_THIN_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "bdev/bdev.h"

#define THIN_DEFAULT_CHUNK (64 * 1024)
#define THIN_MIN_CHUNK 4096
#define THIN_MAX_CHUNK (64 * 1024 * 1024)

struct thin_stats {
  uint64_t virtual_size;
  uint64_t chunk_size;
  uint64_t pool_chunks;         /* physical chunks usable now */
  uint64_t used_chunks;         /* allocated, incl. freed-not-committed */
  uint64_t mapped_chunks;
  uint64_t allocs, releases, commits, enospc;
  uint64_t seq;
};

/* What the engine has told the user about a pool: kept by the caller
 * across opens of the same pool, so that clients reconnecting near the
 * watermark or to a full pool do not run the hook or log again.
 */
struct thin_alerts {
  bool above;                   /* at or over the watermark, reported */
  bool full_logged;             /* "pool full" reported, no allocation since */
};

struct thin_opts {
  uint64_t virtual_size;        /* 0: take it from the metadata */
  uint32_t chunk_size;          /* 0: from the metadata, or the default */
  unsigned warn_percent;        /* 0: no watermark */
  bool format;                  /* may format a zeroed metadata area */
  /* Metadata in a separate device (the engine owns it), or NULL. */
  struct bdev *meta;
  void *opaque;
  /* Usage reached warn_percent (once per crossing); called without locks
   * held, from the thread whose write crossed it.
   */
  void (*watermark) (void *opaque, const struct thin_stats *st);
  /* The pool is full: return the pool's size now (it may have grown), or
   * -1.  Optional.  Called with the allocation lock held: it must not
   * call into the engine.
   */
  int64_t (*pool_size) (void *opaque);
  /* Kept across opens (used under the engine's lock while open), or
   * NULL: forgotten at close.
   */
  struct thin_alerts *alerts;
};

/* Open (or format, if opts->format and the metadata area reads as zeroes)
 * the thin device over POOL.  Takes ownership of POOL and opts->meta,
 * also on failure.
 */
struct bdev *thin_open (struct bdev *pool, const struct thin_opts *opts);

void thin_get_stats (struct bdev *bd, struct thin_stats *st);

/* The pool has NEW_SIZE bytes now; use them (never shrinks). */
int thin_grow (struct bdev *bd, uint64_t new_size);

/* One line: "thin: virtual 1 GiB, used 3 MiB (4%), free ..., chunk 64 KiB" */
void thin_format_usage (const struct thin_stats *st, char *buf, size_t len);

/* Walk the metadata of a pool (and separate metadata device, or NULL),
 * printing one line per problem to OUT (and a summary).  Returns the
 * number of problems found, or -1 if the metadata cannot be read at all.
 */
long thin_check (struct bdev *pool, struct bdev *meta, FILE *out,
                 bool verbose);

#endif
