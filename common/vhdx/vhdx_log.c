/* SPDX-License-Identifier: BSD-3-Clause */
/* VHDX log replay ([MS-VHDX] 2.3): find the active sequence of log
 * entries, validate every entry (signature, log GUID, length, CRC-32C over
 * the whole entry, descriptors and data sectors carrying the entry's
 * sequence number), and apply its data and zero descriptors in order,
 * either to the file (read-write) or into an in-memory overlay
 * (read-only: the file is never touched).
 *
 * The active sequence: valid entries chained so that each one starts
 * where the previous ended (circularly) with the next sequence number;
 * among the chains whose last entry (the head) names the chain's first
 * entry as its Tail, the one with the highest head sequence number.
 *
 * The log is scanned through a small window and each candidate entry is
 * read on its own (the log is mostly stale sectors, and two log-sized
 * buffers per open cost more than the whole scan).  Entries are written
 * one after the other around the ring, so the headers still on disk
 * belong to at most the last two laps and their lengths add up to at
 * most about twice the log: checksumming more than CRC_BUDGET_LAPS
 * times the log means a forged log (every sector a header claiming the
 * whole log would cost sectors x length), which is refused.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "util/checked.h"
#include "util/crc32c.h"
#include "util/endian.h"
#include "util/log.h"
#include "util/progress.h"
#include "util/grow.h"
#include "vhdx_int.h"

/* The largest log we replay. */
#define MAX_LOG (64 * VHDX_MiB)
/* Bytes of candidate entries checksummed while scanning, in logs. */
#define CRC_BUDGET_LAPS 4
/* The scan window. */
#define WINDOW (64 * 1024)

#define LE_SIG     0
#define LE_CKSUM   4
#define LE_LEN     8
#define LE_TAIL    12
#define LE_SEQ     16
#define LE_NDESC   24
#define LE_GUID    32
#define LE_FLUSHED 48
#define LE_LAST    56
#define LE_HDR     64

struct entry {
  bool valid;
  uint32_t len, tail;
  uint64_t seq, flushed, last;
  int64_t next;                 /* successor's sector index, or -1 */
  int64_t head;                 /* memo: last sector of its chain */
};

struct ctx {
  struct vhdx *v;
  uint64_t len;                 /* the log's length */
  uint8_t *ebuf;                /* one entry, contiguous */
  uint64_t ebuf_cap;
  uint64_t crc_left;            /* scan budget, bytes */
};

void
vhdx_overlay_free (struct vhdx_overlay *o)
{
  if (!o)
    return;
  for (size_t i = 0; i < o->n; i++)
    free (o->ops[i].data);
  free (o->ops);
  free (o);
}

/* Read LEN bytes of the circular log from OFF. */
static int
log_read (const struct ctx *c, uint8_t *dst, uint64_t off, uint64_t len)
{
  struct vhdx *v = c->v;
  off %= c->len;
  uint64_t first = c->len - off < len ? c->len - off : len;
  if (bdev_pread (v->file, dst, first, v->log_off + off) == -1 ||
      (first < len &&
       bdev_pread (v->file, dst + first, len - first, v->log_off) == -1)) {
    kvm_error ("%s: reading the log: %m", v->path);
    return -1;
  }
  return 0;
}

/* Is the header H one of this log's entries, with sane fields? */
static bool
header_plausible (const struct ctx *c, const uint8_t *h)
{
  uint64_t len = load_le32 (h + LE_LEN), tail = load_le32 (h + LE_TAIL);
  uint64_t seq = load_le64 (h + LE_SEQ), nd = load_le32 (h + LE_NDESC);
  return memcmp (h + LE_SIG, "loge", 4) == 0 &&
    memcmp (h + LE_GUID, c->v->hdr + H_LOG_GUID, 16) == 0 &&
    len != 0 && len % VHDX_LOG_SECTOR == 0 && len <= c->len &&
    tail % VHDX_LOG_SECTOR == 0 && tail < c->len &&
    seq != 0 && seq != UINT64_MAX &&
    div_round_up64 (LE_HDR + 32 * nd, VHDX_LOG_SECTOR) * VHDX_LOG_SECTOR
      <= len;
}

/* Read and validate the entry whose header H is at log offset OFF;
 * fills E and leaves the entry's bytes in c->ebuf.  BUDGET: count its
 * length against the scan's checksum budget.  Returns 1 if valid, 0 if
 * not, -1 on an I/O error or an exhausted budget.
 */
static int
check_entry (struct ctx *c, const uint8_t *h, uint64_t off, struct entry *e,
             bool budget)
{
  struct vhdx *v = c->v;

  if (!header_plausible (c, h))
    return 0;
  uint64_t len = load_le32 (h + LE_LEN), seq = load_le64 (h + LE_SEQ);
  uint64_t nd = load_le32 (h + LE_NDESC);
  uint64_t dsec = div_round_up64 (LE_HDR + 32 * nd, VHDX_LOG_SECTOR);
  if (budget) {
    if (len > c->crc_left) {
      kvm_error ("%s: the log holds more entry headers than a log written "
                 "in order can (over %d times its size to check): refused",
                 v->path, CRC_BUDGET_LAPS);
      errno = EINVAL;
      return -1;
    }
    c->crc_left -= len;
  }
  if (len > c->ebuf_cap) {
    uint8_t *n = realloc (c->ebuf, len);
    if (!n) {
      errno = ENOMEM;
      kvm_error ("%s: out of memory for a log entry", v->path);
      return -1;
    }
    c->ebuf = n;
    c->ebuf_cap = len;
  }
  if (log_read (c, c->ebuf, off, len) == -1)
    return -1;
  uint32_t ck = load_le32 (c->ebuf + LE_CKSUM);
  memset (c->ebuf + LE_CKSUM, 0, 4);
  uint32_t got = crc32c (0, c->ebuf, len);
  store_le32 (c->ebuf + LE_CKSUM, ck);
  if (got != ck) {
    kvm_debug ("%s: log entry at %" PRIu64 " (sequence %" PRIu64
               "): bad CRC-32C", v->path, off, seq);
    return 0;
  }
  uint64_t ndata = 0;
  for (uint64_t i = 0; i < nd; i++) {
    const uint8_t *d = c->ebuf + LE_HDR + 32 * i;
    if (load_le64 (d + 24) != seq || load_le64 (d + 16) % VHDX_LOG_SECTOR)
      return 0;
    if (memcmp (d, "desc", 4) == 0) {
      uint64_t ds = dsec + ndata++;
      if ((ds + 1) * VHDX_LOG_SECTOR > len)
        return 0;
      const uint8_t *s = c->ebuf + ds * VHDX_LOG_SECTOR;
      if (memcmp (s, "data", 4) != 0 ||
          ((uint64_t) load_le32 (s + 4) << 32 | load_le32 (s + 4092)) != seq)
        return 0;
    }
    else if (memcmp (d, "zero", 4) == 0) {
      uint64_t zl = load_le64 (d + 8);
      if (zl == 0 || zl % VHDX_LOG_SECTOR)
        return 0;
    }
    else
      return 0;
  }
  e->valid = true;
  e->len = len;
  e->tail = load_le32 (h + LE_TAIL);
  e->seq = seq;
  e->flushed = load_le64 (h + LE_FLUSHED);
  e->last = load_le64 (h + LE_LAST);
  e->next = -1;
  e->head = -1;
  return 1;
}

static int
ovl_add (struct vhdx_overlay *o, uint64_t off, uint64_t len, uint8_t *data)
{
  if (GROW_FOR (o->ops, o->n, o->cap, 16) == -1) {
    free (data);
    return -1;
  }
  o->ops[o->n++] = (struct vhdx_ovl_op) { off, len, data };
  if (o->n == 1 || off < o->lo)
    o->lo = off;
  if (o->n == 1 || off + len > o->hi)
    o->hi = off + len;
  return 0;
}

/* Apply the entry in c->ebuf (validated); LIMIT bounds every target. */
static int
apply_entry (struct ctx *c, struct vhdx_overlay *o, uint64_t limit)
{
  struct vhdx *v = c->v;
  uint64_t nd = load_le32 (c->ebuf + LE_NDESC);
  uint64_t dsec = div_round_up64 (LE_HDR + 32 * nd, VHDX_LOG_SECTOR);
  uint64_t ndata = 0;

  for (uint64_t i = 0; i < nd; i++) {
    const uint8_t *d = c->ebuf + LE_HDR + 32 * i;
    uint64_t foff = load_le64 (d + 16);
    bool data = memcmp (d, "desc", 4) == 0;
    uint64_t len = data ? VHDX_LOG_SECTOR : load_le64 (d + 8);
    if (!ck_range_within (foff, len, limit) || foff < VHDX_REGION1_OFF ||
        (foff < v->log_off + v->log_len && v->log_off < foff + len)) {
      kvm_error ("%s: log entry %" PRIu64 " writes %" PRIu64 "+%" PRIu64
                 ", outside the file or into the headers or the log",
                 v->path, load_le64 (c->ebuf + LE_SEQ), foff, len);
      errno = EINVAL;
      return -1;
    }
    if (data) {
      const uint8_t *s = c->ebuf + (dsec + ndata++) * VHDX_LOG_SECTOR;
      uint8_t *sec = malloc (VHDX_LOG_SECTOR);
      if (!sec) {
        errno = ENOMEM;
        kvm_error ("%s: out of memory", v->path);
        return -1;
      }
      memcpy (sec, d + 8, 8);                 /* leading bytes */
      memcpy (sec + 8, s + 8, 4084);
      memcpy (sec + 4092, d + 4, 4);          /* trailing bytes */
      if (o) {
        if (ovl_add (o, foff, VHDX_LOG_SECTOR, sec) == -1) {
          kvm_error ("%s: out of memory", v->path);
          return -1;
        }
      }
      else {
        int r = bdev_pwrite (v->file, sec, VHDX_LOG_SECTOR, foff, 0);
        free (sec);
        if (r == -1) {
          kvm_error ("%s: log replay: writing %" PRIu64 ": %m", v->path,
                     foff);
          return -1;
        }
      }
    }
    else if (o) {
      if (ovl_add (o, foff, len, NULL) == -1) {
        kvm_error ("%s: out of memory", v->path);
        return -1;
      }
    }
    else {
      /* Past the end of the file, zeroes are implicit until it grows. */
      uint64_t fs = v->file->size;
      uint64_t zl = foff >= fs ? 0 : foff + len > fs ? fs - foff : len;
      if (zl && bdev_zero (v->file, zl, foff, 0) == -1) {
        kvm_error ("%s: log replay: zeroing %" PRIu64 ": %m", v->path, foff);
        return -1;
      }
    }
  }
  return 0;
}

int
vhdx_log_replay (struct vhdx *v, uint64_t file_size)
{
  struct ctx c = { .v = v, .len = v->log_len };
  struct entry *ents = NULL;
  uint8_t *window = NULL;
  struct vhdx_overlay *o = NULL;
  int r = -1;

  if (v->log_len > MAX_LOG) {
    kvm_error ("%s: the log must be replayed but is %" PRIu64 " bytes "
               "(at most %" PRIu64 ")", v->path, v->log_len,
               (uint64_t) MAX_LOG);
    errno = EFBIG;
    return -1;
  }
  if (!ck_range_within (v->log_off, v->log_len, file_size)) {
    kvm_error ("%s: the log (%" PRIu64 "+%" PRIu64 ") lies past the end of "
               "the file", v->path, v->log_off, v->log_len);
    errno = EINVAL;
    return -1;
  }
  uint64_t nsec = v->log_len / VHDX_LOG_SECTOR;
  c.crc_left = CRC_BUDGET_LAPS * v->log_len;
  window = malloc (WINDOW);
  ents = calloc (nsec, sizeof *ents);
  if (!window || !ents) {
    errno = ENOMEM;
    kvm_error ("%s: out of memory for the log", v->path);
    goto out;
  }
  for (uint64_t w = 0; w < v->log_len; w += WINDOW) {
    uint64_t n = v->log_len - w < WINDOW ? v->log_len - w : WINDOW;
    if (log_read (&c, window, w, n) == -1)
      goto out;
    for (uint64_t k = 0; k < n; k += VHDX_LOG_SECTOR) {
      if (check_entry (&c, window + k, w + k,
                       &ents[(w + k) / VHDX_LOG_SECTOR], true) == -1)
        goto out;
    }
  }
  for (uint64_t i = 0; i < nsec; i++) {
    if (!ents[i].valid)
      continue;
    uint64_t n = ((i * VHDX_LOG_SECTOR + ents[i].len) % v->log_len)
      / VHDX_LOG_SECTOR;
    if (n != i && ents[n].valid && ents[n].seq == ents[i].seq + 1)
      ents[i].next = n;
  }
  /* Heads: follow successors (sequence numbers strictly increase, so a
   * chain has no cycle), memoised.
   */
  int64_t best = -1, best_head = -1;
  for (uint64_t i = 0; i < nsec; i++) {
    if (!ents[i].valid)
      continue;
    int64_t h = i;
    while (ents[h].next != -1 && ents[h].head == -1)
      h = ents[h].next;
    if (ents[h].head != -1)
      h = ents[h].head;
    for (int64_t k = i; k != h && ents[k].head == -1; k = ents[k].next)
      ents[k].head = h;
    ents[h].head = h;
    if (ents[h].tail == i * VHDX_LOG_SECTOR &&
        (best_head == -1 || ents[h].seq > ents[best_head].seq)) {
      best = i;
      best_head = h;
    }
  }
  if (best == -1) {
    kvm_error ("%s: the header names a log, but the log has no valid "
               "sequence of entries", v->path);
    errno = EINVAL;
    goto out;
  }
  const struct entry *head = &ents[best_head];
  kvm_debug ("%s: replaying log entries %" PRIu64 "..%" PRIu64, v->path,
             ents[best].seq, head->seq);
  if (head->flushed > file_size) {
    kvm_error ("%s: the file is %" PRIu64 " bytes but its log says it was "
               "at least %" PRIu64 ": truncated", v->path, file_size,
               head->flushed);
    errno = EINVAL;
    goto out;
  }
  if (head->last > INT64_MAX) {
    kvm_error ("%s: log LastFileOffset %" PRIu64 " is too large", v->path,
               head->last);
    errno = EINVAL;
    goto out;
  }
  uint64_t limit = file_size > head->last ? file_size : head->last;
  if (v->bd.readonly) {
    o = calloc (1, sizeof *o);
    if (!o) {
      errno = ENOMEM;
      kvm_error ("%s: out of memory", v->path);
      goto out;
    }
    o->size = limit;
  }
  struct kvm_progress pr;
  char what[160];
  snprintf (what, sizeof what, "%s: vhdx log replay", v->path);
  kvm_progress_start (&pr, what, head->seq - ents[best].seq + 1);
  for (int64_t i = best; ; i = ents[i].next) {
    struct entry e = { 0 };
    uint8_t h[LE_HDR];
    int ok = log_read (&c, h, i * VHDX_LOG_SECTOR, LE_HDR);
    if (ok == 0)
      ok = check_entry (&c, h, i * VHDX_LOG_SECTOR, &e, false);
    if (ok != 1) {
      if (ok == 0) {      /* replay writes only outside the log */
        kvm_error ("%s: log entry at %" PRIu64 " changed during replay",
                   v->path, (uint64_t) i * VHDX_LOG_SECTOR);
        errno = EIO;
      }
      goto out;
    }
    if (apply_entry (&c, o, limit) == -1)
      goto out;
    kvm_progress_add (&pr, 1);
    if (i == best_head)
      break;
  }
  kvm_progress_end (&pr);
  if (o) {
    v->ovl = o;
    o = NULL;
  }
  else {
    if (v->file->size < head->last) {
      static const uint8_t z[VHDX_LOG_SECTOR];
      if (bdev_pwrite (v->file, z, sizeof z, head->last - sizeof z, 0) == -1)
        goto out;
    }
    if (bdev_flush (v->file) == -1 ||
        vhdx_write_headers (v, NULL, NULL, NULL) == -1)
      goto out;
  }
  r = 0;
 out:
  vhdx_overlay_free (o);
  free (ents);
  free (c.ebuf);
  free (window);
  return r;
}
