/* SPDX-License-Identifier: BSD-3-Clause */
/* For the C tests that model what each sector may hold: a 512-byte
 * sector stamped with the test's magic, a token (the request that wrote
 * it) and its own sector number, so that data landing in the wrong place
 * is told apart from data that is merely old.
 */
#ifndef KVM_TEST_SECTOR_TOKEN_H
#define KVM_TEST_SECTOR_TOKEN_H

#include <stdint.h>

#define SECTOR_SALT 0x5a5a000000000000ull

static inline void
sector_fill (unsigned char *buf, uint32_t magic, uint64_t sect, uint32_t tok)
{
  uint64_t *w = (uint64_t *) buf;
  for (int i = 0; i < 64; i += 2) {
    w[i] = ((uint64_t) magic << 32) | tok;
    w[i + 1] = sect ^ SECTOR_SALT;
  }
}

#endif
