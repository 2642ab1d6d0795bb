/* SPDX-License-Identifier: BSD-3-Clause */
/* CRC-32C (Castagnoli), as used by VHDX and LVM-adjacent formats. */
#ifndef KVM_CRC32C_H
#define KVM_CRC32C_H

#include <stddef.h>
#include <stdint.h>

/* Running CRC: start with crc = 0 for a fresh checksum. */
uint32_t crc32c (uint32_t crc, const void *buf, size_t len);

#endif
