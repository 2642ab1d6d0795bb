/* SPDX-License-Identifier: BSD-3-Clause */
/* Unaligned big/little-endian loads and stores for on-disk structures. */
#ifndef KVM_ENDIAN_H
#define KVM_ENDIAN_H

#include <stdint.h>
#include <string.h>
#include <endian.h>

#define KVM_DEFINE_LOADSTORE(bits)                                      \
  static inline uint##bits##_t                                          \
  load_be##bits (const void *p)                                         \
  {                                                                     \
    uint##bits##_t v; memcpy (&v, p, sizeof v); return be##bits##toh (v); \
  }                                                                     \
  static inline uint##bits##_t                                          \
  load_le##bits (const void *p)                                         \
  {                                                                     \
    uint##bits##_t v; memcpy (&v, p, sizeof v); return le##bits##toh (v); \
  }                                                                     \
  static inline void                                                    \
  store_be##bits (void *p, uint##bits##_t v)                            \
  {                                                                     \
    v = htobe##bits (v); memcpy (p, &v, sizeof v);                      \
  }                                                                     \
  static inline void                                                    \
  store_le##bits (void *p, uint##bits##_t v)                            \
  {                                                                     \
    v = htole##bits (v); memcpy (p, &v, sizeof v);                      \
  }

KVM_DEFINE_LOADSTORE (16)
KVM_DEFINE_LOADSTORE (32)
KVM_DEFINE_LOADSTORE (64)

#undef KVM_DEFINE_LOADSTORE

#endif
