/* SPDX-License-Identifier: BSD-3-Clause */
/* For the snapshot engine's C tests: how many layer files an overlay
 * directory holds (left-overs show up as extra ones).
 */
#ifndef KVM_TEST_SNAPSHOT_LAYERS_H
#define KVM_TEST_SNAPSHOT_LAYERS_H

#include <dirent.h>
#include <string.h>

#include "check.h"

static inline int
count_layer_files_in (const char *overlay)
{
  DIR *d = opendir (overlay);
  struct dirent *e;
  int n = 0;
  CHECK (d);
  while ((e = readdir (d)))
    n += strncmp (e->d_name, "layer-", 6) == 0;
  closedir (d);
  return n;
}

#endif
