/* SPDX-License-Identifier: BSD-3-Clause */
/* The VG/LV/segment model built from parsed LVM2 text metadata, and the
 * mapping of LV byte ranges to PV byte ranges.  No I/O here: the model
 * refers to PVs by index; lvm.c binds indices to opened devices.
 */
#ifndef KVM_LVM_META_H
#define KVM_LVM_META_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "lvm_text.h"

#define LVM_UUID_LEN 32          /* without the hyphens */
#define LVM_SECTOR 512u
#define LVM_MAX_STRIPES 128      /* LVM2's own limit */
#define LVM_MAX_STACK 8          /* LV-on-LV nesting (mirror legs, pvmove) */
#define LVM_NAME_LEN 128         /* lvm2's NAME_LEN: names and "VG/LV" < this */
#define LVM_SEGTYPE_MAX 256      /* longest segment type string accepted */
/* Work allowed to lvm_map_build() for one LV (segments visited + calls).
 * Each unit may add a piece to the map (about 100 bytes), so this also
 * bounds its memory (about 200 MB); real layouts need thousands.
 */
#define LVM_MAP_BUDGET 2000000u

struct lvm_meta_pv {
  char *name;                   /* "pv0" */
  char uuid[LVM_UUID_LEN + 1];  /* hyphens removed */
  char *device;                 /* hint, may be NULL */
  uint64_t pe_start;            /* bytes */
  uint64_t pe_count;            /* extents */
  uint64_t dev_size;            /* bytes (0 if not recorded) */
  bool missing;                 /* flagged MISSING in the metadata */
};

enum lvm_area_kind { LVM_AREA_PV, LVM_AREA_LV };

struct lvm_area {
  enum lvm_area_kind kind;
  size_t index;                 /* into vg->pvs or vg->lvs */
  uint64_t start;               /* first extent on that PV/LV */
};

enum lvm_seg_type {
  LVM_SEG_STRIPED,              /* linear is striped with one stripe */
  LVM_SEG_MIRROR,               /* areas: the legs (PVs or LVs) */
  LVM_SEG_RAID1,                /* areas: the data images (LVs) */
  LVM_SEG_ZERO,                 /* reads as zeroes */
  LVM_SEG_ERROR,                /* every access fails */
  LVM_SEG_UNSUPPORTED,          /* type_name says which */
};

struct lvm_meta_seg {
  uint64_t start_extent, extent_count;
  enum lvm_seg_type type;
  char *type_name;              /* as in the metadata */
  uint64_t stripe_size;         /* bytes, striped with > 1 stripe */
  size_t area_count;
  struct lvm_area *areas;
};

struct lvm_meta_lv {
  char *name;
  /* Why lvm2 would refuse this name (lvm_lv_name_problem), or NULL.  Such
   * an LV is kept in the model (others may refer to it) but not served.
   */
  const char *name_problem;
  char uuid[LVM_UUID_LEN + 1];
  bool visible, writable;
  /* No WRITE but WRITE_LOCKED: a VG with a system ID or a lock type,
   * writable only on the host that owns it, which cannot be told here.
   */
  bool write_locked;
  bool is_origin;               /* has snapshots: writes would bypass them */
  bool is_merging;              /* a snapshot is being merged into it */
  bool is_cow;                  /* the exception store of a snapshot */
  uint64_t extent_count;
  size_t seg_count;
  struct lvm_meta_seg *segs;    /* sorted, contiguous from extent 0 */
  char *status_flags;           /* e.g. "READ WRITE VISIBLE" for messages */
};

struct lvm_meta_vg {
  char *name;
  char uuid[LVM_UUID_LEN + 1];
  uint64_t seqno;
  uint64_t extent_size;         /* bytes */
  size_t pv_count, lv_count;
  struct lvm_meta_pv *pvs;
  struct lvm_meta_lv *lvs;
};

/* Build the model of the (single) VG in the metadata TEXT.  Errors go to
 * ERR.  Every count, extent and offset is validated: extents within each
 * PV's pe_count, byte offsets without overflow, no two LVs sharing a PV
 * extent, segments contiguous, stripe parameters consistent.
 */
struct lvm_meta_vg *lvm_meta_build (const struct lvm_node *root,
                                    char *err, size_t errlen);
void lvm_meta_free (struct lvm_meta_vg *vg);

/* Parse text and build in one step (used by the fuzzer and tools). */
struct lvm_meta_vg *lvm_meta_parse (const char *text, size_t len,
                                    char *err, size_t errlen);

/* Why lvm2 would refuse NAME as the name of an LV of volume group VGNAME
 * (as lvcreate/lvrename do): empty, longer than 127 bytes, "VG/LV"
 * longer than 127 bytes, characters other than A-Z a-z 0-9 . _ + -,
 * a leading '-', "." or "..".  NULL if the name is acceptable; otherwise a
 * static description of the problem.
 */
const char *lvm_lv_name_problem (const char *vgname, const char *name);

/* Find an LV by name; -1 if absent. */
ssize_t lvm_meta_find_lv (const struct lvm_meta_vg *vg, const char *name);
ssize_t lvm_meta_find_lv_uuid (const struct lvm_meta_vg *vg,
                               const char *uuid);

/* Remove the hyphens of an LVM UUID ("abcdef-ghij-...") into OUT
 * (LVM_UUID_LEN + 1 bytes); false unless exactly 32 UUID characters.
 */
bool lvm_uuid_normalize (const char *in, char out[LVM_UUID_LEN + 1]);
/* Format a 32-character UUID the way LVM prints it (6-4-4-4-4-4-6). */
void lvm_uuid_format (const char *uuid32, char out[LVM_UUID_LEN + 7]);

/* --- The flattened map of an LV ------------------------------------------
 * An LV's byte range resolved down to PV byte ranges, through mirror and
 * raid1 legs (the first usable leg) and LV-on-LV areas.
 */
enum lvm_piece_kind { LVM_PIECE_LINEAR, LVM_PIECE_STRIPED, LVM_PIECE_ZERO,
                      LVM_PIECE_ERROR };

struct lvm_piece {
  uint64_t lv_off, len;         /* bytes of the LV */
  enum lvm_piece_kind kind;
  /* LINEAR: pv[0] at pv_off[0].
   * STRIPED: stripe_count PVs; LV byte lv_off + x is segment byte base + x;
   * stripe s begins at pv_off[s].
   */
  unsigned stripe_count;
  uint64_t stripe_size;
  uint64_t base;
  size_t *pv;                   /* metadata PV indices */
  uint64_t *pv_off;
};

struct lvm_map {
  uint64_t size;                /* bytes */
  size_t count;
  struct lvm_piece *pieces;     /* sorted, contiguous from 0 */
  bool readonly;                /* mirror/raid1 legs, snapshot origins */
  bool other_leg;               /* a mirror/raid1 leg other than the first */
};

/* Is PV index usable?  Used to choose mirror/raid legs. */
typedef bool (*lvm_pv_ok_fn) (void *opaque, size_t pv_index);

/* Flatten LV LVI.  On error (unsupported segment type, missing PV, ...)
 * returns NULL with a message naming the LV and the cause in ERR.  The
 * work is bounded by LVM_MAP_BUDGET (hostile stacking fails with "layout
 * too complex").
 */
struct lvm_map *lvm_map_build (const struct lvm_meta_vg *vg, size_t lvi,
                               lvm_pv_ok_fn pv_ok, void *opaque,
                               char *err, size_t errlen);
/* The same, drawing the work from *BUDGET (shared by several calls, e.g.
 * one listing of all LVs, so that their total work is bounded too).
 * When *BUDGET runs out the message says "layout too complex".
 */
struct lvm_map *lvm_map_build_budget (const struct lvm_meta_vg *vg,
                                      size_t lvi, lvm_pv_ok_fn pv_ok,
                                      void *opaque, uint64_t *budget,
                                      char *err, size_t errlen);
void lvm_map_free (struct lvm_map *m);

/* The piece containing OFFSET (< m->size). */
const struct lvm_piece *lvm_map_find (const struct lvm_map *m,
                                      uint64_t offset);

/* Translate OFFSET inside piece P to (PV index, PV byte offset) and the
 * number of bytes from there that stay contiguous on that PV (within P).
 */
void lvm_piece_resolve (const struct lvm_piece *p, uint64_t offset,
                        size_t *pv, uint64_t *pv_off, uint64_t *contig);

/* Does NEW map the range [0, OLD->size) exactly as OLD does (same PV
 * bytes for every LV byte)?  PV indices are compared through PV_ID_OLD
 * and PV_ID_NEW, which return a stable identity (e.g. the opened device).
 */
typedef const void *(*lvm_pv_id_fn) (void *opaque, size_t pv_index);
/* Comparing striped pieces whose striping differs goes chunk by chunk;
 * after this many chunks the answer is false (conservative: the LV is
 * treated as changed).
 */
#define LVM_PREFIX_MAX_STEPS (1u << 20)
bool lvm_map_is_prefix (const struct lvm_map *old, lvm_pv_id_fn id_old,
                        void *o_old, const struct lvm_map *new,
                        lvm_pv_id_fn id_new, void *o_new);

/* Short description of an LV's layout for listings: "linear",
 * "striped", "linear+striped", "raid1", "thin, unsupported" ...  (each
 * type once; cut short at a whole type name if BUF is too small).  Returns
 * false if a segment type is not supported (or the LV is a snapshot
 * exception store), whatever fitted into BUF.  Work: linear in the number
 * of segments.
 */
bool lvm_meta_lv_describe (const struct lvm_meta_vg *vg, size_t lvi,
                           char *buf, size_t len);

#endif
