/* SPDX-License-Identifier: BSD-3-Clause */
/* libFuzzer target: the LVM2 text metadata parser, the VG/LV model built
 * from it and the LV map (mapping, leg selection, prefix comparison).
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "lvm/lvm_meta.h"
#include "lvm/lvm_text.h"

static bool
all_ok (void *opaque, size_t pv)
{
  (void) opaque; (void) pv;
  return true;
}

static bool
even_ok (void *opaque, size_t pv)
{
  (void) opaque;
  return pv % 2 == 0;
}

static const void *
id (void *opaque, size_t pv)
{
  (void) opaque;
  return (const void *) (uintptr_t) (pv + 1);
}

int
LLVMFuzzerTestOneInput (const uint8_t *data, size_t size)
{
  char err[512], desc[256];
  struct lvm_meta_vg *vg = lvm_meta_parse ((const char *) data, size,
                                           err, sizeof err);
  if (!vg)
    return 0;
  for (size_t i = 0; i < vg->lv_count && i < 64; i++) {
    bool supported = lvm_meta_lv_describe (vg, i, desc, sizeof desc);
    if (strlen (desc) >= sizeof desc)
      abort ();
    /* The name check is a pure function of the names. */
    if (lvm_lv_name_problem (vg->name, vg->lvs[i].name) !=
        vg->lvs[i].name_problem)
      abort ();
    struct lvm_map *a = lvm_map_build (vg, i, all_ok, NULL, err, sizeof err);
    struct lvm_map *b = lvm_map_build (vg, i, even_ok, NULL, err, sizeof err);
    /* An LV described as unsupported never maps. */
    if (!supported && a)
      abort ();
    if (a) {
      /* Walk the map: every byte resolves inside its piece. */
      uint64_t off = 0;
      for (int n = 0; off < a->size && n < 256; n++) {
        const struct lvm_piece *p = lvm_map_find (a, off);
        size_t pv;
        uint64_t pv_off, contig;
        if (!p)
          abort ();
        lvm_piece_resolve (p, off, &pv, &pv_off, &contig);
        if (contig == 0 || contig > p->lv_off + p->len - off)
          abort ();
        off += contig;
      }
      if (!lvm_map_is_prefix (a, id, NULL, a, id, NULL))
        abort ();
      if (b)
        (void) lvm_map_is_prefix (a, id, NULL, b, id, NULL);
    }
    lvm_map_free (a);
    lvm_map_free (b);
  }
  lvm_meta_free (vg);
  return 0;
}
