/* SPDX-License-Identifier: BSD-3-Clause */
/* LVM2 volume groups read directly from their PVs, and LVs as block
 * devices (struct bdev), without device-mapper.
 *
 * A struct lvm_vgset owns the opened PVs and the current metadata of one
 * VG.  lvm_vgset_refresh() re-reads the metadata area headers and, when the
 * committed metadata changed, the text.  LV devices (lvm_lv_open) keep the
 * layout they were opened with; when the metadata changes they re-check
 * that their byte range still maps to the same PV bytes (e.g. after
 * lvextend) and otherwise fail every request (the LV was reduced, moved or
 * removed: reconnect).
 */
#ifndef KVM_LVM_H
#define KVM_LVM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "bdev/bdev.h"

struct lvm_vgset;

struct lvm_vgset_opts {
  bool readonly;                /* open PVs read-only */
  const char *vg_name;          /* NULL: the only VG on the PVs */
  /* While serving, re-check the metadata at most every recheck_ms
   * milliseconds (0: only when an LV is opened).
   */
  unsigned recheck_ms;
  /* Serve a mirror or raid1 LV from a leg other than the first when the
   * first lies on a missing PV (its sync state cannot be checked here).
   */
  bool degraded;
};

/* Open the PVs PATHS[0..N-1].  OPTIONAL[i] (may be NULL) means "skip this
 * path if it is not a PV" (glob matches); otherwise a path without an
 * LVM2 label is an error.  Reads and validates the metadata.
 */
struct lvm_vgset *lvm_vgset_open (const char *const *paths,
                                  const bool *optional, size_t n,
                                  const struct lvm_vgset_opts *opts);
void lvm_vgset_close (struct lvm_vgset *set);

/* Re-read the metadata if it changed on disk.  0 or -1 (message reported;
 * the previous metadata stays in use).
 */
int lvm_vgset_refresh (struct lvm_vgset *set);

/* Were all PVs opened for writing? */
bool lvm_vgset_writable (const struct lvm_vgset *set);

/* Current VG name and seqno (copied into NAME). */
void lvm_vgset_info (struct lvm_vgset *set, char *name, size_t namelen,
                     uint64_t *seqno);

/* Call FN for every visible LV of the current metadata that can be
 * opened, in metadata order.  Skipped: unsupported segment types, missing
 * PVs, names lvm2 refuses (a warning per metadata version), and the LVs
 * left when the listing's work budget runs out.  LAYOUT describes the
 * segment types ("linear", "striped", "raid1, read-only", ...).  FN
 * returns 0 to go on, 1 to stop (0 returned), -1 to fail (-1 returned).
 */
typedef int (*lvm_list_fn) (void *opaque, const char *name, uint64_t size,
                            const char *layout);
int lvm_vgset_list (struct lvm_vgset *set, lvm_list_fn fn, void *opaque);

/* Open the LV NAME of the current metadata (refreshed first) as a block
 * device.  Fails with a clear message if the LV does not exist, uses
 * a missing PV or an unsupported segment type.  Mirror/raid1 LVs and
 * snapshot origins are read-only.  Close with bdev_close().
 */
struct bdev *lvm_lv_open (struct lvm_vgset *set, const char *name,
                          bool readonly);

#endif
