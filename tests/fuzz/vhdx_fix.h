/* SPDX-License-Identifier: BSD-3-Clause */
/* Checksum repair for the VHDX fuzz targets.  The headers, region tables
 * and log entries of a VHDX file each carry a CRC-32C, so a mutation of
 * any of their fields almost never gets past the check.  The targets
 * repair inputs of even length (odd lengths keep testing the checks
 * themselves): every checksum the file's structures carry is recomputed
 * over what they hold, so that the mutated fields reach the parsers.
 * The offsets are those of the VHDX specification (MS-VHDX 2.2).
 */
#ifndef VHDX_FIX_H
#define VHDX_FIX_H

#include <fcntl.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "util/crc32c.h"
#include "util/endian.h"

#define VHDX_FIX_MAX_ENTRY (16u << 20)  /* largest log entry repaired */

/* Give the LEN bytes at OFF whose signature is SIG a fresh CRC-32C (the
 * u32 at CKOFF, zero while summing).  Returns the block (malloc'd) or NULL
 * if it is not there.
 */
static uint8_t *
vhdx_fix_block (int fd, uint64_t off, size_t len, const char *sig,
                size_t ckoff)
{
  uint8_t *b = malloc (len);
  if (!b)
    abort ();
  if (pread (fd, b, len, (off_t) off) != (ssize_t) len ||
      memcmp (b, sig, 4) != 0) {
    free (b);
    return NULL;
  }
  store_le32 (b + ckoff, 0);
  store_le32 (b + ckoff, crc32c (0, b, len));
  if (pwrite (fd, b, len, (off_t) off) != (ssize_t) len)
    abort ();
  return b;
}

/* Repair the log entries that lie whole inside the log a header names. */
static void
vhdx_fix_log (int fd, const uint8_t *h)
{
  uint64_t log_off = load_le64 (h + 72), log_len = load_le32 (h + 68);
  uint8_t sec[4096];
  if (log_off % 4096 || log_len % 4096 || log_off > (1ull << 40))
    return;
  for (uint64_t at = 0; at < log_len; at += 4096) {
    if (pread (fd, sec, 4096, (off_t) (log_off + at)) != 4096)
      return;
    uint32_t len = load_le32 (sec + 8);
    if (memcmp (sec, "loge", 4) != 0 || len == 0 || len % 4096 ||
        len > VHDX_FIX_MAX_ENTRY || len > log_len - at)
      continue;
    free (vhdx_fix_block (fd, log_off + at, len, "loge", 4));
  }
}

/* Repair the file at PATH: both headers and the logs they name, both
 * region tables.
 */
static void
vhdx_fix_checksums (const char *path)
{
  int fd = open (path, O_RDWR);
  if (fd == -1)
    abort ();
  for (int i = 1; i <= 2; i++) {
    uint8_t *h = vhdx_fix_block (fd, i * 65536, 4096, "head", 4);
    if (h)
      vhdx_fix_log (fd, h);
    free (h);
  }
  for (int i = 3; i <= 4; i++)
    free (vhdx_fix_block (fd, i * 65536, 65536, "regi", 4));
  close (fd);
}

#endif
