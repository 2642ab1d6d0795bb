/* SPDX-License-Identifier: BSD-3-Clause */
/* Fuzz target for the VMDK descriptor parser (vmdk_desc_parse): the input
 * is descriptor text.  A parsed descriptor must be self-consistent: every
 * extent has a size, a file name unless it is a ZERO extent, and the
 * total stays within the limits.
 *
 * Seeds: tests/fuzz/corpus/vmdk_desc/.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "vmdk/vmdk.h"

int
LLVMFuzzerTestOneInput (const uint8_t *data, size_t size)
{
  struct vmdk_desc d;
  char err[128];
  if (vmdk_desc_parse ((const char *) data, size, &d, err, sizeof err) == 0) {
    uint64_t total = 0;
    if (!d.create_type || d.next > VMDK_MAX_EXTENTS)
      abort ();
    for (size_t i = 0; i < d.next; i++) {
      if (d.ext[i].sectors == 0 || (d.ext[i].type != VMDK_EXT_ZERO &&
                                    (!d.ext[i].file || !*d.ext[i].file)))
        abort ();
      total += d.ext[i].sectors;
    }
    if (total != d.total_sectors || total > INT64_MAX / 512)
      abort ();
    vmdk_desc_free (&d);
  }
  else if (!err[0])
    abort ();                   /* a failure always says why */
  return 0;
}
