/* SPDX-License-Identifier: BSD-3-Clause */
/* Arrays that grow one element at a time: the capacity doubles, from a
 * first size, and the byte count is checked for overflow.
 */
#ifndef KVM_GROW_H
#define KVM_GROW_H

#include <errno.h>
#include <stddef.h>
#include <stdlib.h>

#include "checked.h"

/* V, room for CAP elements of SIZE bytes, reallocated for twice as many
 * (FIRST when CAP is 0).  The new array (*NCAP elements), or NULL with
 * errno ENOMEM and V unchanged.
 */
static inline void *
grow_array (void *v, size_t cap, size_t size, size_t first, size_t *ncap)
{
  size_t nc, bytes;
  void *nv;

  if (!ck_size_mul (cap ? cap : 1, cap ? 2 : first, &nc) ||
      !ck_size_mul (nc, size, &bytes) || !(nv = realloc (v, bytes))) {
    errno = ENOMEM;
    return NULL;
  }
  *ncap = nc;
  return nv;
}

/* Make room for element N of the array V of capacity CAP (both lvalues,
 * updated): 0, or -1 with errno ENOMEM (V and CAP unchanged).
 */
#define GROW_FOR(v, n, cap, first) __extension__ ({                     \
      int grow_r_ = 0;                                                  \
      if ((n) >= (cap)) {                                               \
        size_t grow_nc_;                                                \
        void *grow_nv_ = grow_array ((v), (cap), sizeof *(v), (first),  \
                                     &grow_nc_);                        \
        if (grow_nv_) {                                                 \
          (v) = grow_nv_;                                               \
          (cap) = grow_nc_;                                             \
        }                                                               \
        else                                                            \
          grow_r_ = -1;                                                 \
      }                                                                 \
      grow_r_;                                                          \
    })

#endif
