/* Internal definitions shared by the qcow2 engine sources. */
#ifndef KVM_QCOW2_INT_H
#define KVM_QCOW2_INT_H

#include <stdint.h>

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

#endif
