/* SPDX-License-Identifier: BSD-3-Clause */
/* The input format of the VHDX fuzz targets: a VHDX file is megabytes of
 * mostly zeroes, so an input lists only its non-zero 4 KiB sectors as
 * records { u16 le sector index, u16 le length (<= 4096), data }, written
 * into an otherwise zero file (at most 64 MiB).  make-vhdx-corpus.sh
 * encodes real images this way.
 */
#ifndef VHDX_SPARSE_H
#define VHDX_SPARSE_H

#include <fcntl.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define VHDX_SPARSE_MAX_SECTOR 16384

/* Decode DATA into a new file at PATH.  -1 if it cannot be written. */
static int
vhdx_sparse_write (const char *path, const uint8_t *data, size_t size)
{
  int fd = open (path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
  if (fd == -1)
    return -1;
  uint64_t end = 0;
  while (size >= 4) {
    uint32_t sec = data[0] | (uint32_t) data[1] << 8;
    uint32_t len = data[2] | (uint32_t) data[3] << 8;
    data += 4;
    size -= 4;
    sec %= VHDX_SPARSE_MAX_SECTOR;
    if (len > 4096)
      len = 4096;
    if (len > size)
      len = size;
    if (len && pwrite (fd, data, len, (off_t) sec * 4096) != (ssize_t) len) {
      close (fd);
      return -1;
    }
    if ((uint64_t) sec * 4096 + 4096 > end)
      end = (uint64_t) sec * 4096 + 4096;
    data += len;
    size -= len;
  }
  /* Whole sectors, and a whole MiB at the end as VHDX files have. */
  end = (end + (1 << 20) - 1) & ~(uint64_t) ((1 << 20) - 1);
  if (ftruncate (fd, end) == -1) {
    close (fd);
    return -1;
  }
  return close (fd);
}

#endif
