/* SPDX-License-Identifier: BSD-3-Clause */
/* qcow2 engine. Repair of a dirty image: an image with lazy refcounts
 * whose writer died has the dirty bit set, and its refcounts may be too
 * low (never written back), too high or leaked.  On a read-write open the
 * refcounts are rebuilt from what references each cluster:
 *
 *   - cluster 0 (header, header extensions, backing file name),
 *   - the active L1 table, every L2 table it points to and every host
 *     cluster those map (a compressed cluster: each host cluster its byte
 *     range touches, once per referencing entry),
 *   - the snapshot table and, per snapshot, its L1 table and the L2 and
 *     data clusters reached from it (a cluster shared by several tables
 *     counts once per reference),
 *   - the persistent bitmaps (directory, bitmap tables, bitmap data) when
 *     the autoclear bit says they are consistent; bitmaps that cannot be
 *     accounted for get their autoclear bit cleared (QEMU then ignores
 *     them) and their clusters become free,
 *   - the new refcount table and blocks themselves.
 * Data clusters in an external data file have no refcounts.
 *
 * Crash safety: the new refcount blocks and table go to clusters that
 * nothing references (neither the counted structures nor the old refcount
 * table and blocks, which stay in use until the header switches), are
 * written and synced; only then does the header point at the new table.
 * The old refcount structures are free in the new counts.  OFLAG_COPIED
 * is then made to agree with the new refcounts in the active L1 and L2
 * tables, and last the dirty bit is cleared.  A crash at any point leaves
 * the dirty bit set, and the next open repairs again.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "qcow2.h"
#include "qcow2_int.h"
#include "util/checked.h"
#include "util/endian.h"
#include "util/log.h"

/* At most this many clusters are counted (4 bytes each in memory). */
#define REPAIR_MAX_CLUSTERS (1ull << 28)
/* At most this many L1 entries are walked over all L1 tables (hostile
 * images: many snapshots sharing one huge L1 table).
 */
#define REPAIR_MAX_L1_ENTRIES (1ull << 27)
#define BM_MAX_DIR_BYTES  (64u << 20)
#define BM_MAX_TABLE_ENTRIES 0x8000000u
#define BMT_OFFSET_MASK  0x00fffffffffffe00ull
/* Changes logged one by one, per kind. */
#define LOG_DETAILS 8

struct repair {
  struct qcow2 *q;
  uint64_t cs;
  uint32_t *cnt;                /* new refcount of each cluster */
  uint8_t *keep;                /* bit map: old refcount table and blocks */
  uint64_t n;                   /* clusters covered by cnt and keep */
  uint64_t cap;                 /* clusters allocated in cnt and keep */
  uint64_t ref_end;             /* references must end at or before this */
  uint64_t alloc_max;           /* new structures end at or before this
                                 * cluster index */
  uint64_t hint;                /* first cluster that may be free */
  uint64_t l1_budget;
  uint8_t *buf;                 /* one cluster */
  bool corrupt;                 /* a reference could not be counted */
};

static bool
keep_get (const struct repair *r, uint64_t c)
{
  return c < r->n && (r->keep[c / 8] >> (c % 8)) & 1;
}

/* Cover clusters [0, need) in the arrays (zero filled). */
static int
cover (struct repair *r, uint64_t need)
{
  struct qcow2 *q = r->q;
  if (need <= r->n)
    return 0;
  if (need > REPAIR_MAX_CLUSTERS) {
    kvm_fail (EFBIG, "%s: the image has more than %llu clusters: too large "
              "to repair its refcounts here; run 'qemu-img check -r all'",
              q->path, REPAIR_MAX_CLUSTERS);
    return -1;
  }
  if (need > r->cap) {
    uint64_t nc = r->cap * 2 > need ? r->cap * 2 : need + 1024;
    if (nc > REPAIR_MAX_CLUSTERS)
      nc = REPAIR_MAX_CLUSTERS;
    size_t old_bytes = r->cap ? r->cap / 8 + 1 : 0, new_bytes = nc / 8 + 1;
    uint32_t *c = realloc (r->cnt, nc * sizeof *c);
    if (c)
      r->cnt = c;
    uint8_t *k = realloc (r->keep, new_bytes);
    if (k)
      r->keep = k;
    if (!c || !k) {
      kvm_fail (ENOMEM, "%s: out of memory counting references", q->path);
      return -1;
    }
    memset (r->cnt + r->cap, 0, (nc - r->cap) * sizeof *c);
    memset (r->keep + old_bytes, 0, new_bytes - old_bytes);
    r->cap = nc;
  }
  r->n = need;
  return 0;
}

/* One more reference (MULT of them) to every cluster [OFF, OFF+LEN)
 * touches.  A reference past the end of the file cannot be repaired.
 */
static int
ref (struct repair *r, uint64_t off, uint64_t len, const char *what)
{
  struct qcow2 *q = r->q;
  uint64_t end;
  if (len == 0)
    return 0;
  if (!ck_add64 (off, len, &end) || end > r->ref_end) {
    kvm_fail (EIO, "%s: corrupt image: %s at %#" PRIx64 " (%" PRIu64 " bytes) "
              "is beyond the end of the file; cannot repair the refcounts, "
              "run 'qemu-img check -r all'", q->path, what, off, len);
    r->corrupt = true;
    return -1;
  }
  uint64_t first = off / r->cs, last = (end - 1) / r->cs;
  if (cover (r, last + 1) == -1)
    return -1;
  for (uint64_t c = first; c <= last; c++)
    if (r->cnt[c] != UINT32_MAX)
      r->cnt[c]++;
  return 0;
}

static int
aligned (struct repair *r, uint64_t off, const char *what)
{
  struct qcow2 *q = r->q;
  if (off & (r->cs - 1)) {
    kvm_fail (EIO, "%s: corrupt image: %s offset %#" PRIx64 " is not cluster "
              "aligned; cannot repair the refcounts, run 'qemu-img check -r "
              "all'", q->path, what, off);
    r->corrupt = true;
    return -1;
  }
  return 0;
}

/* Read N big-endian u64 entries at OFF into host order (caller frees). */
static uint64_t *
read_u64s (struct repair *r, uint64_t off, uint64_t n, const char *what)
{
  struct qcow2 *q = r->q;
  uint64_t bytes;
  if (!ck_mul64 (n, 8, &bytes) || bytes > MAX_L1_BYTES ||
      !ck_range_within (off, bytes, r->ref_end)) {
    kvm_fail (EIO, "%s: corrupt image: %s at %#" PRIx64 " (%" PRIu64 " "
              "entries) is invalid; cannot repair the refcounts", q->path,
              what, off, n);
    r->corrupt = true;
    return NULL;
  }
  return q2_read_u64_table (q, off, n, what);
}

/* Count the clusters the L2 table in r->buf maps. */
static int
count_l2 (struct repair *r)
{
  struct qcow2 *q = r->q;
  uint64_t entries = 1ull << q->l2_bits;
  bool external = q->incompat & INCOMPAT_DATA_FILE;
  for (uint64_t i = 0; i < entries; i++) {
    uint64_t e = l2_entry (q, r->buf, i);
    if (e & OFLAG_COMPRESSED) {
      if (external) {
        kvm_fail (EIO, "%s: corrupt image: compressed cluster with an "
                  "external data file; cannot repair the refcounts", q->path);
        r->corrupt = true;
        return -1;
      }
      uint64_t o = e & ((1ull << q->csize_shift) - 1);
      uint64_t nsect = (e >> q->csize_shift) & q->csize_mask;
      if (ref (r, o, (nsect + 1) * 512 - (o & 511), "compressed cluster")
          == -1)
        return -1;
      continue;
    }
    uint64_t off = e & L2E_OFFSET_MASK;
    if (off == 0 || external)
      continue;
    if (aligned (r, off, "data cluster") == -1 ||
        ref (r, off, r->cs, "data cluster") == -1)
      return -1;
  }
  return 0;
}

/* Count an L1 table, the L2 tables it points to and what they map. */
static int
count_l1 (struct repair *r, uint64_t l1_off, uint64_t l1_size,
          const char *what)
{
  struct qcow2 *q = r->q;
  if (l1_size == 0)
    return 0;
  if (l1_size > r->l1_budget) {
    kvm_fail (EFBIG, "%s: the L1 tables of the image and its snapshots have "
              "too many entries to repair the refcounts here; run 'qemu-img "
              "check -r all'", q->path);
    return -1;
  }
  r->l1_budget -= l1_size;
  if (aligned (r, l1_off, what) == -1 ||
      ref (r, l1_off, l1_size * 8, what) == -1)
    return -1;
  uint64_t *l1 = read_u64s (r, l1_off, l1_size, what);
  if (!l1)
    return -1;
  int ret = 0;
  for (uint64_t i = 0; i < l1_size && ret == 0; i++) {
    uint64_t off = l1[i] & L1E_OFFSET_MASK;
    if (off == 0)
      continue;
    if (aligned (r, off, "L2 table") == -1 ||
        ref (r, off, r->cs, "L2 table") == -1 ||
        bdev_pread_padded (q->file, r->buf, r->cs, off) == -1 ||
        count_l2 (r) == -1)
      ret = -1;
  }
  free (l1);
  return ret;
}

/* The snapshot table's size in bytes (validated when it was parsed). */
static int
snapshot_table_size (struct repair *r, uint64_t off, uint32_t nb,
                     uint64_t *size)
{
  struct qcow2 *q = r->q;
  uint64_t pos = off;
  for (uint32_t i = 0; i < nb; i++) {
    uint8_t h[40];
    if (!ck_range_within (pos, sizeof h, bdev_size (q->file)) ||
        bdev_pread (q->file, h, sizeof h, pos) == -1) {
      kvm_fail (EIO, "%s: corrupt image: snapshot table beyond the end of "
                "the file", q->path);
      return -1;
    }
    uint64_t var = (uint64_t) load_be32 (h + 36) + load_be16 (h + 12) +
      load_be16 (h + 14);
    if (var > 1024 + 2 * 65535) {
      kvm_fail (EIO, "%s: corrupt image: snapshot table entry too large",
                q->path);
      return -1;
    }
    pos = (pos + 40 + var + 7) & ~7ull;
  }
  *size = pos - off;
  return 0;
}

/* Walk the persistent bitmaps: check them (APPLY false) or count their
 * clusters (APPLY true).  -1 if they cannot be accounted for.
 */
static int
walk_bitmaps (struct repair *r, bool apply)
{
  struct qcow2 *q = r->q;
  uint8_t ext[24];
  uint8_t *dir = NULL;
  int ret = -1;
  uint64_t bm_ext_data;

  if (!ck_add64 (q->bm_ext_pos, 8, &bm_ext_data) ||
      !ck_range_within (bm_ext_data, sizeof ext, q->ext_area_end) ||
      bdev_pread (q->file, ext, sizeof ext, bm_ext_data) == -1)
    return -1;
  uint32_t nb = load_be32 (ext);
  uint64_t dir_size = load_be64 (ext + 8), dir_off = load_be64 (ext + 16);
  if (nb == 0 || dir_size == 0 || dir_size > BM_MAX_DIR_BYTES ||
      (dir_off & (r->cs - 1)) || dir_off == 0 ||
      !ck_range_within (dir_off, dir_size, r->ref_end))
    return -1;
  dir = malloc (dir_size);
  if (!dir || bdev_pread_padded (q->file, dir, dir_size, dir_off) == -1)
    goto out;
  if (apply && ref (r, dir_off, dir_size, "bitmap directory") == -1)
    goto out;
  uint64_t p = 0;
  for (uint32_t i = 0; i < nb; i++) {
    if (dir_size - p < 24)
      goto out;
    uint64_t toff = load_be64 (dir + p);
    uint32_t tsize = load_be32 (dir + p + 8);
    uint64_t esize = (24 + (uint64_t) load_be16 (dir + p + 18) +
                      load_be32 (dir + p + 20) + 7) & ~7ull;
    if (esize > dir_size - p || tsize > BM_MAX_TABLE_ENTRIES)
      goto out;
    p += esize;
    if (tsize == 0)
      continue;
    uint64_t tbytes = (uint64_t) tsize * 8;
    if ((toff & (r->cs - 1)) || toff == 0 ||
        !ck_range_within (toff, tbytes, r->ref_end))
      goto out;
    if (apply && ref (r, toff, tbytes, "bitmap table") == -1)
      goto out;
    /* The table one cluster at a time. */
    for (uint64_t done = 0; done < tbytes; done += r->cs) {
      uint64_t chunk = tbytes - done < r->cs ? tbytes - done : r->cs;
      if (bdev_pread_padded (q->file, r->buf, chunk, toff + done) == -1)
        goto out;
      for (uint64_t j = 0; j < chunk / 8; j++) {
        uint64_t off = load_be64 (r->buf + 8 * j) & BMT_OFFSET_MASK;
        if (off == 0)
          continue;
        if ((off & (r->cs - 1)) ||
            !ck_range_within (off, r->cs, r->ref_end))
          goto out;
        if (apply && ref (r, off, r->cs, "bitmap data") == -1)
          goto out;
      }
    }
  }
  ret = 0;
 out:
  free (dir);
  return ret;
}

/* Lowest run of K clusters that nothing references and that holds no old
 * refcount structure; marked referenced.
 */
static int
alloc_run (struct repair *r, uint64_t k, uint64_t from, uint64_t *first)
{
  struct qcow2 *q = r->q;
  uint64_t c = from, run = 0;
  for (;;) {
    if (c >= r->alloc_max) {
      kvm_fail (ENOSPC, "%s: no room left in the container for new refcount "
                "blocks; cannot repair the refcounts", q->path);
      return -1;
    }
    if (c >= r->n || (r->cnt[c] == 0 && !keep_get (r, c))) {
      if (++run == k)
        break;
    }
    else
      run = 0;
    c++;
  }
  *first = c + 1 - k;
  if (cover (r, *first + k) == -1)
    return -1;
  for (uint64_t i = *first; i < *first + k; i++)
    r->cnt[i]++;
  return 0;
}

/* Does refcount block BI (covering PER clusters) have a nonzero count? */
static bool
block_needed (const struct repair *r, uint64_t bi, uint64_t per)
{
  uint64_t end = (bi + 1) * per < r->n ? (bi + 1) * per : r->n;
  for (uint64_t c = bi * per; c < end; c++)
    if (r->cnt[c])
      return true;
  return false;
}

static void
put_rc (unsigned order, uint8_t *b, uint64_t i, uint64_t v)
{
  unsigned sh;
  switch (order) {
  case 0: sh = i % 8; b[i / 8] |= v << sh; break;
  case 1: sh = 2 * (i % 4); b[i / 4] |= v << sh; break;
  case 2: sh = 4 * (i % 2); b[i / 2] |= v << sh; break;
  case 3: b[i] = v; break;
  case 4: store_be16 (b + 2 * i, v); break;
  case 5: store_be32 (b + 4 * i, v); break;
  default: store_be64 (b + 8 * i, v); break;
  }
}

/* Compare the old refcounts with the new counts (before the new refcount
 * structures are placed) and log the differences.
 */
static int
log_changes (struct repair *r, uint64_t *low, uint64_t *high,
             uint64_t *leaked)
{
  struct qcow2 *q = r->q;
  uint64_t per = 1ull << q->rb_bits;
  uint64_t nlow = 0, nhigh = 0, nleak = 0;
  for (uint64_t bi = 0; bi * per < r->n; bi++) {
    bool have = false;
    if (bi < q->rt_entries) {
      uint64_t ob = q->rt[bi] & REFT_OFFSET_MASK;
      have = ob && !(ob & (r->cs - 1)) &&
        ck_range_within (ob, r->cs, bdev_size (q->file)) &&
        bdev_pread (q->file, r->buf, r->cs, ob) == 0;
    }
    uint64_t end = (bi + 1) * per < r->n ? (bi + 1) * per : r->n;
    for (uint64_t c = bi * per; c < end; c++) {
      if (keep_get (r, c))
        continue;
      uint64_t old = have ? rc_get (q, r->buf, c - bi * per) : 0;
      uint64_t now = r->cnt[c];
      const char *kind;
      uint64_t n;
      if (old == now)
        continue;
      if (old < now) { kind = "too low"; n = nlow++; }
      else if (now) { kind = "too high"; n = nhigh++; }
      else { kind = "leaked"; n = nleak++; }
      if (n < LOG_DETAILS)
        kvm_debug ("%s: repair: cluster %#" PRIx64 ": refcount %" PRIu64
                   ", references %" PRIu64 " (%s)", q->path,
                   c * r->cs, old, now, kind);
    }
  }
  *low = nlow; *high = nhigh; *leaked = nleak;
  return 0;
}

/* Make OFLAG_COPIED agree with the new refcounts in the active L1 table
 * and its L2 tables.
 */
static int
fix_copied (struct repair *r, uint64_t *fixed)
{
  struct qcow2 *q = r->q;
  bool external = q->incompat & INCOMPAT_DATA_FILE;
  bool l1_changed = false;
  uint64_t entries = 1ull << q->l2_bits;
  *fixed = 0;
  for (uint64_t i = 0; i < q->l1_size; i++) {
    uint64_t off = q->l1[i] & L1E_OFFSET_MASK;
    if (off == 0)
      continue;
    bool want = r->cnt[off / r->cs] == 1;
    if (want != !!(q->l1[i] & OFLAG_COPIED)) {
      q->l1[i] ^= OFLAG_COPIED;
      l1_changed = true;
      ++*fixed;
    }
    if (bdev_pread_padded (q->file, r->buf, r->cs, off) == -1)
      return -1;
    bool changed = false;
    for (uint64_t j = 0; j < entries; j++) {
      uint64_t e = l2_entry (q, r->buf, j), ne = e;
      if (e & OFLAG_COMPRESSED)
        ne = e & ~OFLAG_COPIED;
      else if (external) {
        if (e & L2E_OFFSET_MASK)
          ne = e | OFLAG_COPIED;
      }
      else if (e & L2E_OFFSET_MASK) {
        if (r->cnt[(e & L2E_OFFSET_MASK) / r->cs] == 1)
          ne = e | OFLAG_COPIED;
        else
          ne = e & ~OFLAG_COPIED;
      }
      if (ne != e) {
        store_be64 (r->buf + (j << q->l2_entry_shift), ne);
        changed = true;
        ++*fixed;
      }
    }
    if (changed && bdev_pwrite (q->file, r->buf, r->cs, off, 0) == -1)
      return -1;
  }
  if (l1_changed) {
    uint64_t bytes = q->l1_size * 8;
    uint8_t *t = malloc (bytes);
    if (!t) {
      kvm_fail (ENOMEM, "%s: out of memory", q->path);
      return -1;
    }
    for (uint64_t i = 0; i < q->l1_size; i++)
      store_be64 (t + 8 * i, q->l1[i]);
    int ret = bdev_pwrite (q->file, t, bytes, q->l1_offset, 0);
    free (t);
    if (ret == -1)
      return -1;
  }
  return q2_sync_file (q, q->file);
}

/* Place, fill and write the new refcount blocks and table; switch the
 * header to them.
 */
static int
write_refcounts (struct repair *r)
{
  struct qcow2 *q = r->q;
  uint64_t per = 1ull << q->rb_bits;
  uint64_t *blk = NULL, nblk = 0;
  uint64_t rt_off = 0, rt_cl = 0;
  uint64_t *nrt = NULL;
  int ret = -1;

  /* Blocks for every range with a nonzero count, and a table for them;
   * each placement can need another block, so repeat until stable.
   */
  for (bool changed = true; changed;) {
    changed = false;
    uint64_t nb = div_round_up64 (r->n, per);
    if (nb > nblk) {
      uint64_t *nbk = realloc (blk, nb * sizeof *nbk);
      if (!nbk) {
        kvm_fail (ENOMEM, "%s: out of memory", q->path);
        goto out;
      }
      memset (nbk + nblk, 0, (nb - nblk) * sizeof *nbk);
      blk = nbk;
      nblk = nb;
    }
    uint64_t highest = 0;
    for (uint64_t bi = 0; bi < nblk; bi++) {
      if (!blk[bi] && block_needed (r, bi, per)) {
        uint64_t c;
        if (alloc_run (r, 1, r->hint, &c) == -1)
          goto out;
        r->hint = c + 1;
        blk[bi] = c * r->cs;
        changed = true;
        if (c / per >= nblk)
          break;                /* the arrays grow: start over */
      }
      if (blk[bi])
        highest = bi + 1;
    }
    uint64_t need = div_round_up64 (highest * 8, r->cs);
    if (need == 0)
      need = 1;
    if (need > rt_cl) {
      if (rt_cl)
        for (uint64_t i = 0; i < rt_cl; i++)
          r->cnt[rt_off / r->cs + i]--;
      rt_cl = need + 1;         /* room to grow */
      if (rt_cl * r->cs > MAX_RT_BYTES) {
        kvm_fail (EFBIG, "%s: the refcount table would exceed %u MiB",
                  q->path, MAX_RT_BYTES >> 20);
        goto out;
      }
      uint64_t c;
      if (alloc_run (r, rt_cl, 1, &c) == -1)
        goto out;
      rt_off = c * r->cs;
      changed = true;
    }
  }

  /* The blocks, then the table; synced before the header names it. */
  for (uint64_t bi = 0; bi < nblk; bi++) {
    if (!blk[bi])
      continue;
    memset (r->buf, 0, r->cs);
    uint64_t end = (bi + 1) * per < r->n ? (bi + 1) * per : r->n;
    for (uint64_t c = bi * per; c < end; c++) {
      if (r->cnt[c] > q->refcount_max || r->cnt[c] == UINT32_MAX) {
        kvm_fail (EIO, "%s: cluster %#" PRIx64 " has %" PRIu32 " references, "
                  "more than refcount_bits=%u can count; cannot repair the "
                  "refcounts", q->path, c * r->cs, r->cnt[c],
                  1u << q->refcount_order);
        goto out;
      }
      put_rc (q->refcount_order, r->buf, c - bi * per, r->cnt[c]);
    }
    if (bdev_pwrite (q->file, r->buf, r->cs, blk[bi], 0) == -1)
      goto out;
  }
  uint64_t rt_entries = rt_cl * r->cs / 8;
  nrt = calloc (rt_entries, sizeof *nrt);
  uint8_t *t = calloc (rt_cl, r->cs);
  if (!nrt || !t) {
    free (t);
    kvm_fail (ENOMEM, "%s: out of memory", q->path);
    goto out;
  }
  for (uint64_t bi = 0; bi < nblk; bi++) {
    nrt[bi] = blk[bi];
    store_be64 (t + 8 * bi, blk[bi]);
  }
  int w = bdev_pwrite (q->file, t, rt_cl * r->cs, rt_off, 0);
  free (t);
  if (w == -1 || q2_sync_file (q, q->file) == -1)
    goto out;

  uint64_t old_off = q->rt_offset, old_cl = q->rt_clusters;
  q->rt_offset = rt_off;
  q->rt_clusters = rt_cl;
  if (q2_write_header (q) == -1 || q2_sync_file (q, q->file) == -1) {
    q->rt_offset = old_off;
    q->rt_clusters = old_cl;
    goto out;
  }
  free (q->rt);
  q->rt = nrt;
  nrt = NULL;
  q->rt_entries = rt_entries;
  kvm_debug ("%s: repair: new refcount table at %#" PRIx64 " (%" PRIu64
             " clusters), replacing the one at %#" PRIx64, q->path,
             rt_off, rt_cl, old_off);
  ret = 0;
 out:
  free (blk);
  free (nrt);
  return ret;
}

int
q2_repair (struct qcow2 *q)
{
  struct repair r = { .q = q, .cs = q->cluster_size,
                      .l1_budget = REPAIR_MAX_L1_ENTRIES };
  int ret = -1;
  uint64_t low = 0, high = 0, leaked = 0, fixed = 0;
  bool drop_bitmaps = false;

  /* References end within the file's last (partial) cluster. */
  if (!ck_round_up64 (bdev_size (q->file), r.cs, &r.ref_end)) {
    kvm_fail (EFBIG, "%s: file too large", q->path);
    return -1;
  }
  r.alloc_max = q->file->growable ? REPAIR_MAX_CLUSTERS
    : bdev_size (q->file) / r.cs;
  r.hint = 1;
  r.buf = malloc (r.cs);
  if (!r.buf) {
    kvm_fail (ENOMEM, "%s: out of memory", q->path);
    return -1;
  }
  if (cover (&r, r.ref_end / r.cs) == -1)
    goto out;

  /* The old refcount table and blocks stay in use until the header
   * switches: new structures must not overwrite them.
   */
  for (uint64_t i = 0; i < q->rt_clusters; i++) {
    uint64_t c = q->rt_offset / r.cs + i;
    if (c < r.n)
      r.keep[c / 8] |= 1u << (c % 8);
  }
  for (uint64_t i = 0; i < q->rt_entries; i++) {
    uint64_t c = (q->rt[i] & REFT_OFFSET_MASK) / r.cs;
    if (c && c < r.n)
      r.keep[c / 8] |= 1u << (c % 8);
  }

  /* Count every reference. */
  if (ref (&r, 0, r.cs, "header") == -1 ||
      count_l1 (&r, q->l1_offset, q->l1_size, "L1 table") == -1)
    goto out;
  uint32_t nb_snap = load_be32 (q->hdr + H_NB_SNAPSHOTS);
  if (nb_snap) {
    uint64_t soff = load_be64 (q->hdr + H_SNAPSHOTS_OFFSET), ssize;
    if (snapshot_table_size (&r, soff, nb_snap, &ssize) == -1 ||
        ref (&r, soff, ssize, "snapshot table") == -1)
      goto out;
    for (size_t i = 0; i < q->nsnaps; i++)
      if (count_l1 (&r, q->snaps[i].l1_offset, q->snaps[i].l1_size,
                    "snapshot L1 table") == -1)
        goto out;
  }
  if (q->version >= 3 && (q->autoclear & AUTOCLEAR_BITMAPS)) {
    if (q->bm_ext_pos && walk_bitmaps (&r, false) == 0) {
      if (walk_bitmaps (&r, true) == -1)
        goto out;
    }
    else
      drop_bitmaps = true;
  }

  if (log_changes (&r, &low, &high, &leaked) == -1)
    goto out;

  /* Bitmaps QEMU must ignore from now on: before their clusters can be
   * reused for refcount blocks.
   */
  if (drop_bitmaps) {
    q->autoclear &= ~AUTOCLEAR_BITMAPS;
    if (q2_write_header (q) == -1 || q2_sync_file (q, q->file) == -1)
      goto out;
    kvm_debug ("%s: repair: the persistent bitmaps cannot be accounted "
               "for; cleared their autoclear bit (QEMU ignores them now)",
               q->path);
  }

  if (write_refcounts (&r) == -1 || fix_copied (&r, &fixed) == -1)
    goto out;

  /* The old refcount structures are free now: give their space back. */
  for (uint64_t c = 1; c < r.n; c++)
    if (keep_get (&r, c) && r.cnt[c] == 0)
      q2_punch (q, c * r.cs, r.cs);

  q->incompat &= ~INCOMPAT_DIRTY;
  if (q2_write_header (q) == -1 || q2_sync_file (q, q->file) == -1) {
    q->incompat |= INCOMPAT_DIRTY;
    goto out;
  }
  /* The file may have grown: allocate after the new end. */
  if (q->file->growable) {
    uint64_t end;
    if (ck_round_up64 (bdev_size (q->file), r.cs, &end) && end > q->cursor)
      q->cursor = q->zero_from = q->alloc_end = end;
  }
  kvm_debug ("%s: repaired the refcounts of the dirty image: %" PRIu64
             " too low, %" PRIu64 " too high, %" PRIu64 " leaked clusters "
             "freed, %" PRIu64 " OFLAG_COPIED flags fixed%s; dirty bit "
             "cleared", q->path, low, high, leaked, fixed,
             drop_bitmaps ? ", bitmaps dropped" : "");
  ret = 0;
 out:
  free (r.cnt);
  free (r.keep);
  free (r.buf);
  return ret;
}
