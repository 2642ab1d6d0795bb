/* SPDX-License-Identifier: BSD-3-Clause */
/* LVM2 on-disk structures: the label (sectors 0-3), the PV header and the
 * metadata areas (mda header + circular buffer of metadata text).
 */
#ifndef KVM_LVM_DISK_H
#define KVM_LVM_DISK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "bdev/bdev.h"
#include "lvm_meta.h"

#define LVM_LABEL_SCAN_SECTORS 4
#define LVM_LABEL_ID "LABELONE"
#define LVM_LABEL_TYPE "LVM2 001"
#define LVM_MDA_HEADER_SIZE 512
#define LVM_MDA_MAGIC " LVM2 x[5A%r0N*>"
#define LVM_MDA_VERSION 1
#define LVM_RAW_LOCN_IGNORED 0x1u
#define LVM_INITIAL_CRC 0xf597a6cfu
#define LVM_MAX_MDAS 8
#define LVM_MAX_METADATA (64u << 20)  /* largest text we read */

/* LVM2's checksum: CRC-32 (reflected 0xedb88320) without the final
 * inversion, seeded with LVM_INITIAL_CRC.  Chainable.
 */
uint32_t lvm_crc (uint32_t crc, const void *buf, size_t len);

struct lvm_disk_locn {
  uint64_t offset, size;        /* bytes */
};

struct lvm_label {
  unsigned sector;              /* where the label was found */
  char uuid[LVM_UUID_LEN + 1];
  uint64_t dev_size;            /* as recorded in the PV header */
  size_t data_count, mda_count;
  struct lvm_disk_locn data[LVM_MAX_MDAS];
  struct lvm_disk_locn mda[LVM_MAX_MDAS];
};

/* Read the label and PV header.  Returns 1 if found, 0 if BD carries no
 * LVM2 label, -1 on an I/O error or a corrupt label (message in ERR).
 */
int lvm_read_label (struct bdev *bd, struct lvm_label *l,
                    char *err, size_t errlen);

struct lvm_mda_text {
  uint64_t mda_offset, mda_size;  /* from the mda header */
  bool empty;                   /* no metadata (orphan PV) */
  bool ignored;                 /* RAW_LOCN_IGNORED */
  uint64_t text_offset, text_size;  /* relative to the mda start */
  uint32_t checksum;
  char *text;                   /* malloc'd, text_size bytes + NUL */
};

/* Read the metadata area at LOC: header, committed location and (if
 * WANT_TEXT) the text, following the wrap-around of the circular buffer
 * and verifying both checksums.  0 or -1 with a message in ERR.
 */
int lvm_read_mda (struct bdev *bd, const struct lvm_disk_locn *loc,
                  bool want_text, struct lvm_mda_text *out,
                  char *err, size_t errlen);

#endif
