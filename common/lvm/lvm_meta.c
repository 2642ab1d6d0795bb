/* SPDX-License-Identifier: BSD-3-Clause */
/* VG/LV/segment model from LVM2 text metadata, and LV -> PV mapping. */
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lvm_meta.h"
#include "util/checked.h"
#include "util/log.h"
#include "util/grow.h"

bool
lvm_uuid_normalize (const char *in, char out[LVM_UUID_LEN + 1])
{
  size_t n = 0;
  if (!in)
    return false;
  for (; *in; in++) {
    if (*in == '-')
      continue;
    if (!((*in >= 'a' && *in <= 'z') || (*in >= 'A' && *in <= 'Z') ||
          (*in >= '0' && *in <= '9') || *in == '!' || *in == '#'))
      return false;
    if (n == LVM_UUID_LEN)
      return false;
    out[n++] = *in;
  }
  out[n] = 0;
  return n == LVM_UUID_LEN;
}

void
lvm_uuid_format (const char *u, char out[LVM_UUID_LEN + 7])
{
  static const int groups[] = { 6, 4, 4, 4, 4, 4, 6 };
  size_t j = 0, k = 0;
  for (size_t g = 0; g < 7; g++) {
    for (int i = 0; i < groups[g] && u[k]; i++)
      out[j++] = u[k++];
    if (g < 6)
      out[j++] = '-';
  }
  out[j] = 0;
}

/* --- freeing ------------------------------------------------------------- */

void
lvm_meta_free (struct lvm_meta_vg *vg)
{
  if (!vg)
    return;
  for (size_t i = 0; i < vg->pv_count; i++) {
    free (vg->pvs[i].name);
    free (vg->pvs[i].device);
  }
  for (size_t i = 0; i < vg->lv_count; i++) {
    struct lvm_meta_lv *lv = &vg->lvs[i];
    for (size_t j = 0; j < lv->seg_count; j++) {
      free (lv->segs[j].type_name);
      free (lv->segs[j].areas);
    }
    free (lv->segs);
    free (lv->name);
    free (lv->status_flags);
  }
  free (vg->pvs);
  free (vg->lvs);
  free (vg->name);
  free (vg);
}

/* --- building ------------------------------------------------------------ */

/* A name and the index of its PV or LV, sorted by name for lookups:
 * hostile metadata may hold very many PVs and LVs, so nothing quadratic.
 */
struct name_idx {
  const char *name;
  size_t idx;
};

struct builder {
  struct lvm_meta_vg *vg;
  char *err;
  size_t errlen;
  struct name_idx *pv_names, *lv_names;
};

static int
cmp_name_idx (const void *a, const void *b)
{
  return strcmp (((const struct name_idx *) a)->name,
                 ((const struct name_idx *) b)->name);
}

/* Sort N names and fail on duplicates. */
static bool
sort_unique (struct builder *b, struct name_idx *names, size_t n,
             const char *what)
{
  qsort (names, n, sizeof *names, cmp_name_idx);
  for (size_t k = 1; k < n; k++)
    if (strcmp (names[k - 1].name, names[k].name) == 0) {
      kvm_seterr (b->err, b->errlen, "%s %s appears twice", what, names[k].name);
      return false;
    }
  return true;
}

static ssize_t
bsearch_name (const struct name_idx *names, size_t n, const char *key)
{
  size_t lo = 0, hi = n;
  while (lo < hi) {
    size_t mid = lo + (hi - lo) / 2;
    int c = strcmp (names[mid].name, key);
    if (c == 0)
      return names[mid].idx;
    if (c < 0)
      lo = mid + 1;
    else
      hi = mid;
  }
  return -1;
}

#define FAIL(...) do { kvm_seterr (b->err, b->errlen, __VA_ARGS__); return false; } while (0)

static bool
get_uint (struct builder *b, const struct lvm_node *sec, const char *what,
          const char *key, uint64_t *v, bool required)
{
  const struct lvm_node *n = lvm_node_get (sec, key);
  if (!n) {
    if (!required) {
      *v = 0;
      return true;
    }
    FAIL ("%s: missing '%s'", what, key);
  }
  if (n->type != LVM_NODE_INT || n->i < 0)
    FAIL ("%s: '%s' (line %u) must be a non-negative integer", what, key,
          n->line);
  *v = n->i;
  return true;
}

static ssize_t
find_pv_name (struct builder *b, const char *name)
{
  return bsearch_name (b->pv_names, b->vg->pv_count, name);
}

static ssize_t
find_lv_name (struct builder *b, const char *name)
{
  return bsearch_name (b->lv_names, b->vg->lv_count, name);
}

const char *
lvm_lv_name_problem (const char *vgname, const char *name)
{
  size_t n = strlen (name);
  if (n == 0)
    return "the name is empty";
  if (n >= LVM_NAME_LEN)
    return "the name is longer than 127 bytes";
  if (strlen (vgname) + 1 + n >= LVM_NAME_LEN)
    return "the full name VG/LV is longer than 127 bytes";
  if (name[0] == '-')
    return "the name begins with '-'";
  if (strcmp (name, ".") == 0 || strcmp (name, "..") == 0)
    return "the name is '.' or '..'";
  for (const char *c = name; *c; c++)
    if (!((*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') ||
          (*c >= '0' && *c <= '9') || *c == '.' || *c == '_' || *c == '+' ||
          *c == '-'))
      return "the name holds characters other than A-Z a-z 0-9 . _ + -";
  return NULL;
}

/* Segment types as lvm2 writes them: a type name ("striped",
 * "thin-pool", "raid5_ls") optionally followed by "+FLAG" parts
 * ("raid5+RESHAPE").  Returns NULL if TYPE has that shape; otherwise
 * writes why into WHY.
 */
static const char *
segtype_problem (const char *type, char *why, size_t whylen)
{
  size_t n = strlen (type);
  if (n == 0)
    return "is empty";
  if (n > LVM_SEGTYPE_MAX) {
    snprintf (why, whylen, "is longer than %d bytes", LVM_SEGTYPE_MAX);
    return why;
  }
  if (!((type[0] >= 'a' && type[0] <= 'z') ||
        (type[0] >= 'A' && type[0] <= 'Z')))
    return "does not begin with a letter";
  for (size_t i = 0; i < n; i++) {
    unsigned char c = type[i];
    if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
          (c >= '0' && c <= '9') || c == '_' || c == '-' || c == '+')) {
      snprintf (why, whylen, "holds byte 0x%02x at position %zu (segment "
                "types are made of letters, digits, '_', '-' and '+')",
                c, i);
      return why;
    }
    if (c == '+' && (i + 1 == n || type[i + 1] == '+'))
      return "has an empty '+' flag";
  }
  return NULL;
}

ssize_t
lvm_meta_find_lv (const struct lvm_meta_vg *vg, const char *name)
{
  for (size_t i = 0; i < vg->lv_count; i++)
    if (strcmp (vg->lvs[i].name, name) == 0)
      return i;
  return -1;
}

ssize_t
lvm_meta_find_lv_uuid (const struct lvm_meta_vg *vg, const char *uuid)
{
  for (size_t i = 0; i < vg->lv_count; i++)
    if (strcmp (vg->lvs[i].uuid, uuid) == 0)
      return i;
  return -1;
}

static size_t
count_sections (const struct lvm_node *sec)
{
  size_t n = 0;
  for (const struct lvm_node *c = sec ? sec->child : NULL; c; c = c->next)
    if (c->type == LVM_NODE_SECTION)
      n++;
  return n;
}

static bool
build_pv (struct builder *b, const struct lvm_node *s, struct lvm_meta_pv *pv)
{
  char what[300];
  uint64_t v;
  const char *id = lvm_node_get_str (s, "id");

  snprintf (what, sizeof what, "PV %s", s->key);
  if (!(pv->name = strdup (s->key)))
    FAIL ("out of memory");
  if (!id || !lvm_uuid_normalize (id, pv->uuid))
    FAIL ("%s: missing or invalid 'id'", what);
  const char *dev = lvm_node_get_str (s, "device");
  if (dev && !(pv->device = strdup (dev)))
    FAIL ("out of memory");
  pv->missing = lvm_node_has_flag (s, "flags", "MISSING");
  if (!get_uint (b, s, what, "pe_start", &v, true))
    return false;
  if (!ck_mul64 (v, LVM_SECTOR, &pv->pe_start))
    FAIL ("%s: pe_start %" PRIu64 " out of range", what, v);
  if (!get_uint (b, s, what, "pe_count", &pv->pe_count, true))
    return false;
  if (!get_uint (b, s, what, "dev_size", &v, false))
    return false;
  if (!ck_mul64 (v, LVM_SECTOR, &pv->dev_size))
    FAIL ("%s: dev_size %" PRIu64 " out of range", what, v);
  uint64_t end;
  if (!ck_muladd64 (pv->pe_start, pv->pe_count, b->vg->extent_size, &end))
    FAIL ("%s: pe_count %" PRIu64 " with extent size %" PRIu64
          " overflows", what, pv->pe_count, b->vg->extent_size);
  return true;
}

/* Resolve an area name: a PV first (as LVM does), then an LV. */
static bool
resolve_area (struct builder *b, const char *what, const struct lvm_node *n,
              uint64_t start, struct lvm_area *a)
{
  ssize_t i;
  if (!n || n->type != LVM_NODE_STRING)
    FAIL ("%s: area name must be a string", what);
  if ((i = find_pv_name (b, n->s)) >= 0) {
    a->kind = LVM_AREA_PV;
    a->index = i;
  }
  else if ((i = find_lv_name (b, n->s)) >= 0) {
    a->kind = LVM_AREA_LV;
    a->index = i;
  }
  else
    FAIL ("%s: area refers to unknown PV or LV '%s' (line %u)", what, n->s,
          n->line);
  a->start = start;
  return true;
}

/* Areas given as [ "name", extent, "name", extent, ... ]. */
static bool
name_extent_areas (struct builder *b, const char *what,
                   const struct lvm_node *sec, const char *key,
                   uint64_t expected, struct lvm_meta_seg *seg)
{
  const struct lvm_node *arr = lvm_node_get (sec, key);
  if (!arr || arr->type != LVM_NODE_ARRAY)
    FAIL ("%s: missing array '%s'", what, key);
  if (arr->count != expected * 2)
    FAIL ("%s: '%s' has %zu elements, expected %" PRIu64, what, key,
          arr->count, expected * 2);
  seg->areas = calloc (expected, sizeof *seg->areas);
  if (!seg->areas)
    FAIL ("out of memory");
  seg->area_count = expected;
  const struct lvm_node *e = arr->child;
  for (size_t i = 0; i < expected; i++) {
    const struct lvm_node *nm = e, *ext = e->next;
    if (ext->type != LVM_NODE_INT || ext->i < 0)
      FAIL ("%s: '%s' element %zu must be a non-negative extent number",
            what, key, 2 * i + 1);
    if (!resolve_area (b, what, nm, ext->i, &seg->areas[i]))
      return false;
    e = ext->next;
  }
  return true;
}

static bool
build_seg (struct builder *b, const struct lvm_meta_lv *lv,
           const struct lvm_node *s, struct lvm_meta_seg *seg)
{
  char what[600];
  const char *type;
  uint64_t v;

  /* Long names are cut so that the segment is still named. */
  snprintf (what, sizeof what, "LV %.200s%s %.100s%s", lv->name,
            strlen (lv->name) > 200 ? "..." : "", s->key,
            strlen (s->key) > 100 ? "..." : "");
  if (!get_uint (b, s, what, "start_extent", &seg->start_extent, true) ||
      !get_uint (b, s, what, "extent_count", &seg->extent_count, true))
    return false;
  if (seg->extent_count == 0)
    FAIL ("%s: extent_count is 0", what);
  if (!(type = lvm_node_get_str (s, "type")))
    FAIL ("%s: missing 'type'", what);
  char why[160];
  const char *bad = segtype_problem (type, why, sizeof why);
  if (bad)
    FAIL ("%s: invalid segment type (line %u): the type %s", what,
          lvm_node_get (s, "type")->line, bad);
  if (!(seg->type_name = strdup (type)))
    FAIL ("out of memory");

  if (strcmp (type, "striped") == 0 || strcmp (type, "linear") == 0) {
    uint64_t n;
    bool linear = type[0] == 'l';
    seg->type = LVM_SEG_STRIPED;
    if (!get_uint (b, s, what, "stripe_count", &n, !linear))
      return false;
    if (linear && n == 0)
      n = 1;
    if (n < 1 || n > LVM_MAX_STRIPES)
      FAIL ("%s: stripe_count %" PRIu64 " out of range (1-%d)", what, n,
            LVM_MAX_STRIPES);
    if (seg->extent_count % n)
      FAIL ("%s: extent_count %" PRIu64 " is not a multiple of "
            "stripe_count %" PRIu64, what, seg->extent_count, n);
    if (n > 1) {
      uint64_t stripe_bytes;
      if (!get_uint (b, s, what, "stripe_size", &v, true))
        return false;
      if (v == 0 || !ck_mul64 (v, LVM_SECTOR, &seg->stripe_size) ||
          seg->stripe_size > b->vg->extent_size * (seg->extent_count / n))
        FAIL ("%s: invalid stripe_size %" PRIu64, what, v);
      if (!ck_mul64 (seg->extent_count / n, b->vg->extent_size,
                     &stripe_bytes))
        FAIL ("%s: extent_count out of range", what);
      if (stripe_bytes % seg->stripe_size)
        FAIL ("%s: stripe length %" PRIu64 " is not a multiple of "
              "stripe_size %" PRIu64, what, stripe_bytes, seg->stripe_size);
    }
    if (!name_extent_areas (b, what, s, "stripes", n, seg))
      return false;
  }
  else if (strcmp (type, "mirror") == 0) {
    uint64_t n;
    seg->type = LVM_SEG_MIRROR;
    if (!get_uint (b, s, what, "mirror_count", &n, true))
      return false;
    if (n < 1 || n > LVM_MAX_STRIPES)
      FAIL ("%s: mirror_count %" PRIu64 " out of range", what, n);
    if (!name_extent_areas (b, what, s, "mirrors", n, seg))
      return false;
  }
  else if (strcmp (type, "raid1") == 0) {
    const struct lvm_node *arr = lvm_node_get (s, "raids");
    seg->type = LVM_SEG_RAID1;
    if (!arr || arr->type != LVM_NODE_ARRAY || arr->count == 0 ||
        arr->count % 2 || arr->count / 2 > LVM_MAX_STRIPES)
      FAIL ("%s: 'raids' must list (metadata, image) LV pairs", what);
    seg->area_count = arr->count / 2;
    seg->areas = calloc (seg->area_count, sizeof *seg->areas);
    if (!seg->areas)
      FAIL ("out of memory");
    const struct lvm_node *e = arr->child;
    for (size_t i = 0; i < seg->area_count; i++) {
      const struct lvm_node *img = e->next;
      /* Image extents line up with the raid LV's segment. */
      if (!resolve_area (b, what, img, 0, &seg->areas[i]))
        return false;
      if (seg->areas[i].kind != LVM_AREA_LV)
        FAIL ("%s: raid1 image '%s' is not an LV", what, img->s);
      e = img->next;
    }
  }
  else if (strcmp (type, "zero") == 0)
    seg->type = LVM_SEG_ZERO;
  else if (strcmp (type, "error") == 0)
    seg->type = LVM_SEG_ERROR;
  else {
    seg->type = LVM_SEG_UNSUPPORTED;
    if (strcmp (type, "snapshot") == 0) {
      /* Mark the origin and the exception store: neither may be
       * treated as a plain LV.
       */
      const char *o = lvm_node_get_str (s, "origin");
      const char *c = lvm_node_get_str (s, "cow_store");
      /* While lvm2 merges a snapshot back (lvconvert --merge), the
       * segment names its store "merging_store", and the origin's
       * content is what dm-snapshot-merge shows, not its own extents.
       */
      const char *m = lvm_node_get_str (s, "merging_store");
      ssize_t i;
      if (o && (i = find_lv_name (b, o)) >= 0) {
        b->vg->lvs[i].is_origin = true;
        if (m)
          b->vg->lvs[i].is_merging = true;
      }
      if (c && (i = find_lv_name (b, c)) >= 0)
        b->vg->lvs[i].is_cow = true;
      if (m && (i = find_lv_name (b, m)) >= 0)
        b->vg->lvs[i].is_cow = true;
    }
  }
  return true;
}

static int
cmp_seg (const void *a, const void *b)
{
  const struct lvm_meta_seg *x = a, *y = b;
  return x->start_extent < y->start_extent ? -1 :
         x->start_extent > y->start_extent;
}

static bool
build_lv_segments (struct builder *b, const struct lvm_node *s,
                   struct lvm_meta_lv *lv)
{
  uint64_t count;
  size_t n = count_sections (s), j = 0;

  if (!get_uint (b, s, lv->name, "segment_count", &count, true))
    return false;
  if (count != n)
    FAIL ("LV %s: segment_count is %" PRIu64 " but %zu segments are "
          "present", lv->name, count, n);
  if (n == 0)
    FAIL ("LV %s: no segments", lv->name);
  lv->segs = calloc (n, sizeof *lv->segs);
  if (!lv->segs)
    FAIL ("out of memory");
  lv->seg_count = n;
  for (const struct lvm_node *c = s->child; c; c = c->next)
    if (c->type == LVM_NODE_SECTION)
      if (!build_seg (b, lv, c, &lv->segs[j++]))
        return false;
  qsort (lv->segs, n, sizeof *lv->segs, cmp_seg);
  uint64_t next = 0;
  for (size_t i = 0; i < n; i++) {
    if (lv->segs[i].start_extent != next)
      FAIL ("LV %s: segments are not contiguous (extent %" PRIu64
            " expected, segment starts at %" PRIu64 ")", lv->name, next,
            lv->segs[i].start_extent);
    if (!ck_add64 (next, lv->segs[i].extent_count, &next))
      FAIL ("LV %s: extent counts overflow", lv->name);
  }
  lv->extent_count = next;
  uint64_t bytes;
  if (!ck_mul64 (next, b->vg->extent_size, &bytes) || bytes > INT64_MAX)
    FAIL ("LV %s: size of %" PRIu64 " extents out of range", lv->name, next);
  return true;
}

/* Extent ranges of PVs, to refuse metadata where two users overlap. */
struct use {
  size_t pv;
  uint64_t start, len;
  size_t lv;
};

static int
cmp_use (const void *a, const void *b)
{
  const struct use *x = a, *y = b;
  if (x->pv != y->pv)
    return x->pv < y->pv ? -1 : 1;
  return x->start < y->start ? -1 : x->start > y->start;
}

static bool
check_areas (struct builder *b)
{
  struct lvm_meta_vg *vg = b->vg;
  size_t nuse = 0, cap = 0;
  struct use *uses = NULL;
  bool ok = false;

  for (size_t l = 0; l < vg->lv_count; l++) {
    struct lvm_meta_lv *lv = &vg->lvs[l];
    for (size_t si = 0; si < lv->seg_count; si++) {
      struct lvm_meta_seg *seg = &lv->segs[si];
      uint64_t len = seg->extent_count;
      if (seg->type == LVM_SEG_STRIPED)
        len /= seg->area_count;
      for (size_t a = 0; a < seg->area_count; a++) {
        struct lvm_area *ar = &seg->areas[a];
        uint64_t end, limit;
        const char *tname;
        if (ar->kind == LVM_AREA_PV) {
          limit = vg->pvs[ar->index].pe_count;
          tname = vg->pvs[ar->index].name;
        }
        else {
          limit = vg->lvs[ar->index].extent_count;
          tname = vg->lvs[ar->index].name;
          if (ar->index == l) {
            kvm_seterr (b->err, b->errlen, "LV %s: segment refers to itself",
                    lv->name);
            goto out;
          }
        }
        if (!ck_add64 (ar->start, len, &end) || end > limit) {
          kvm_seterr (b->err, b->errlen,
                  "LV %s: segment at extent %" PRIu64 " uses extents %"
                  PRIu64 "-%" PRIu64 " of %s, which has only %" PRIu64,
                  lv->name, seg->start_extent, ar->start,
                  ar->start + len - 1, tname, limit);
          goto out;
        }
        if (ar->kind != LVM_AREA_PV)
          continue;
        if (GROW_FOR (uses, nuse, cap, 64) == -1) {
          kvm_seterr (b->err, b->errlen, "out of memory");
          goto out;
        }
        uses[nuse++] = (struct use) { ar->index, ar->start, len, l };
      }
    }
  }
  if (nuse)
    qsort (uses, nuse, sizeof *uses, cmp_use);
  for (size_t i = 1; i < nuse; i++) {
    struct use *p = &uses[i - 1], *u = &uses[i];
    /* A mirror log or pvmove both reference the same extents legally
     * only through LV areas, never PV areas twice.
     */
    if (p->pv == u->pv && p->start + p->len > u->start) {
      kvm_seterr (b->err, b->errlen,
              "PV %s extent %" PRIu64 " is used by both LV %s and LV %s",
              vg->pvs[u->pv].name, u->start, vg->lvs[p->lv].name,
              vg->lvs[u->lv].name);
      goto out;
    }
  }
  ok = true;
 out:
  free (uses);
  return ok;
}

static char *
join_flags (const struct lvm_node *sec, const char *key)
{
  const struct lvm_node *arr = lvm_node_get (sec, key);
  size_t len = 1;
  char *r;
  if (arr && arr->type == LVM_NODE_ARRAY)
    for (const struct lvm_node *e = arr->child; e; e = e->next)
      if (e->type == LVM_NODE_STRING)
        len += e->len + 1;
  r = malloc (len);
  if (!r)
    return NULL;
  r[0] = 0;
  if (arr && arr->type == LVM_NODE_ARRAY)
    for (const struct lvm_node *e = arr->child; e; e = e->next)
      if (e->type == LVM_NODE_STRING) {
        if (r[0])
          strcat (r, " ");
        strncat (r, e->s, e->len);
      }
  return r;
}

static bool
build_vg (struct builder *b, const struct lvm_node *vs)
{
  struct lvm_meta_vg *vg = b->vg;
  const struct lvm_node *pvs, *lvs;
  const char *id;
  uint64_t v;
  char what[300];

  snprintf (what, sizeof what, "VG %s", vs->key);
  if (!(vg->name = strdup (vs->key)))
    FAIL ("out of memory");
  if (!(id = lvm_node_get_str (vs, "id")) ||
      !lvm_uuid_normalize (id, vg->uuid))
    FAIL ("%s: missing or invalid 'id'", what);
  if (!get_uint (b, vs, what, "seqno", &vg->seqno, true) ||
      !get_uint (b, vs, what, "extent_size", &v, true))
    return false;
  if (v == 0 || v > UINT32_MAX)
    FAIL ("%s: extent_size %" PRIu64 " sectors out of range", what, v);
  vg->extent_size = v * LVM_SECTOR;

  pvs = lvm_node_get_section (vs, "physical_volumes");
  if (!pvs)
    FAIL ("%s: no physical_volumes section", what);
  vg->pv_count = count_sections (pvs);
  if (vg->pv_count == 0)
    FAIL ("%s: no physical volumes", what);
  if (!(vg->pvs = calloc (vg->pv_count, sizeof *vg->pvs))) {
    vg->pv_count = 0;
    FAIL ("out of memory");
  }
  b->pv_names = calloc (vg->pv_count * 2, sizeof *b->pv_names);
  if (!b->pv_names)
    FAIL ("out of memory");
  size_t i = 0;
  for (const struct lvm_node *c = pvs->child; c; c = c->next)
    if (c->type == LVM_NODE_SECTION) {
      if (!build_pv (b, c, &vg->pvs[i]))
        return false;
      b->pv_names[i] = (struct name_idx) { vg->pvs[i].name, i };
      b->pv_names[vg->pv_count + i] = (struct name_idx) { vg->pvs[i].uuid, i };
      i++;
    }
  if (!sort_unique (b, b->pv_names + vg->pv_count, vg->pv_count, "PV UUID") ||
      !sort_unique (b, b->pv_names, vg->pv_count, "PV"))
    return false;

  lvs = lvm_node_get_section (vs, "logical_volumes");
  vg->lv_count = count_sections (lvs);
  if (vg->lv_count) {
    vg->lvs = calloc (vg->lv_count, sizeof *vg->lvs);
    b->lv_names = calloc (vg->lv_count * 2, sizeof *b->lv_names);
    if (!vg->lvs || !b->lv_names) {
      free (vg->lvs);
      vg->lvs = NULL;
      vg->lv_count = 0;
      FAIL ("out of memory");
    }
  }
  /* First pass: names, so that segments can refer to any LV. */
  i = 0;
  for (const struct lvm_node *c = lvs ? lvs->child : NULL; c; c = c->next)
    if (c->type == LVM_NODE_SECTION) {
      struct lvm_meta_lv *lv = &vg->lvs[i];
      if (!(lv->name = strdup (c->key)))
        FAIL ("out of memory");
      if (!(id = lvm_node_get_str (c, "id")) ||
          !lvm_uuid_normalize (id, lv->uuid))
        FAIL ("LV %s: missing or invalid 'id'", lv->name);
      if (!(lv->status_flags = join_flags (c, "status")))
        FAIL ("out of memory");
      lv->name_problem = lvm_lv_name_problem (vg->name, lv->name);
      lv->visible = lvm_node_has_flag (c, "status", "VISIBLE");
      lv->writable = lvm_node_has_flag (c, "status", "WRITE");
      lv->write_locked = !lv->writable &&
        (lvm_node_has_flag (c, "flags", "WRITE_LOCKED") ||
         lvm_node_has_flag (c, "status", "WRITE_LOCKED"));
      b->lv_names[i] = (struct name_idx) { lv->name, i };
      b->lv_names[vg->lv_count + i] = (struct name_idx) { lv->uuid, i };
      i++;
    }
  if (vg->lv_count &&
      (!sort_unique (b, b->lv_names + vg->lv_count, vg->lv_count, "LV UUID") ||
       !sort_unique (b, b->lv_names, vg->lv_count, "LV")))
    return false;
  i = 0;
  for (const struct lvm_node *c = lvs ? lvs->child : NULL; c; c = c->next)
    if (c->type == LVM_NODE_SECTION)
      if (!build_lv_segments (b, c, &vg->lvs[i++]))
        return false;
  return check_areas (b);
}

struct lvm_meta_vg *
lvm_meta_build (const struct lvm_node *root, char *err, size_t errlen)
{
  struct builder b = { .err = err, .errlen = errlen };
  const struct lvm_node *vs = NULL;
  size_t nsec = 0;

  if (errlen)
    err[0] = 0;
  for (const struct lvm_node *c = root->child; c; c = c->next)
    if (c->type == LVM_NODE_SECTION) {
      vs = c;
      nsec++;
    }
  if (nsec != 1) {
    if (nsec)
      kvm_seterr (err, errlen, "metadata holds %zu volume groups, expected one",
              nsec);
    else
      kvm_seterr (err, errlen, "metadata holds no volume group");
    errno = EINVAL;
    return NULL;
  }
  if (!(b.vg = calloc (1, sizeof *b.vg))) {
    kvm_seterr (err, errlen, "out of memory");
    errno = ENOMEM;
    return NULL;
  }
  bool ok = build_vg (&b, vs);
  free (b.pv_names);
  free (b.lv_names);
  if (!ok) {
    lvm_meta_free (b.vg);
    errno = EINVAL;
    return NULL;
  }
  return b.vg;
}

struct lvm_meta_vg *
lvm_meta_parse (const char *text, size_t len, char *err, size_t errlen)
{
  struct lvm_text *t = lvm_text_parse (text, len, err, errlen);
  struct lvm_meta_vg *vg;
  if (!t)
    return NULL;
  vg = lvm_meta_build (lvm_text_root (t), err, errlen);
  lvm_text_free (t);
  return vg;
}

/* --- flattened LV maps --------------------------------------------------- */

void
lvm_map_free (struct lvm_map *m)
{
  if (!m)
    return;
  for (size_t i = 0; i < m->count; i++) {
    free (m->pieces[i].pv);
    free (m->pieces[i].pv_off);
  }
  free (m->pieces);
  free (m);
}

struct flat {
  const struct lvm_meta_vg *vg;
  lvm_pv_ok_fn pv_ok;
  void *opaque;
  const char *top;              /* the LV being mapped, for messages */
  char *err;
  size_t errlen;
  struct lvm_map *m;
  size_t cap;
  bool readonly;
  uint64_t *budget;             /* bounds the work on hostile stacking */
};

/* Charge N units of work; false (with a message) when the budget is
 * exhausted.
 */
static bool
charge (struct flat *f, uint64_t n)
{
  if (*f->budget < n) {
    *f->budget = 0;
    kvm_seterr (f->err, f->errlen, "LV %s: layout too complex", f->top);
    return false;
  }
  *f->budget -= n;
  return true;
}

static struct lvm_piece *
add_piece (struct flat *f, uint64_t lv_off, uint64_t len,
           enum lvm_piece_kind kind, unsigned nstripes)
{
  struct lvm_map *m = f->m;
  struct lvm_piece *p;
  if (GROW_FOR (m->pieces, m->count, f->cap, 8) == -1)
    goto oom;
  p = &m->pieces[m->count];
  memset (p, 0, sizeof *p);
  p->lv_off = lv_off;
  p->len = len;
  p->kind = kind;
  p->stripe_count = nstripes;
  if (nstripes) {
    p->pv = calloc (nstripes, sizeof *p->pv);
    p->pv_off = calloc (nstripes, sizeof *p->pv_off);
    if (!p->pv || !p->pv_off) {
      free (p->pv);
      free (p->pv_off);
      goto oom;
    }
  }
  m->count++;
  return p;
 oom:
  kvm_seterr (f->err, f->errlen, "out of memory");
  return NULL;
}

static void
truncate_pieces (struct flat *f, size_t count)
{
  while (f->m->count > count) {
    struct lvm_piece *p = &f->m->pieces[--f->m->count];
    free (p->pv);
    free (p->pv_off);
  }
}

static bool
pv_usable (struct flat *f, size_t pv, const char *lvname)
{
  const struct lvm_meta_pv *mp = &f->vg->pvs[pv];
  if (!mp->missing && f->pv_ok (f->opaque, pv))
    return true;
  char u[LVM_UUID_LEN + 7];
  lvm_uuid_format (mp->uuid, u);
  kvm_seterr (f->err, f->errlen,
          "LV %s%s%s uses %s PV %s (%s%s%s)", f->top,
          strcmp (f->top, lvname) ? " via " : "",
          strcmp (f->top, lvname) ? lvname : "",
          mp->missing ? "a PV flagged MISSING in the metadata:" : "missing",
          u, mp->name, mp->device ? ", last seen as " : "",
          mp->device ? mp->device : "");
  return false;
}

static bool flatten (struct flat *f, size_t lvi, uint64_t le, uint64_t count,
                     uint64_t out_off, unsigned depth);

/* Map COUNT extents starting at extent LE of area A. */
static bool
flatten_area (struct flat *f, const struct lvm_meta_lv *lv,
              const struct lvm_area *a, uint64_t le, uint64_t count,
              uint64_t out_off, unsigned depth)
{
  const struct lvm_meta_vg *vg = f->vg;
  if (a->kind == LVM_AREA_LV)
    return flatten (f, a->index, a->start + le, count, out_off, depth + 1);
  if (!pv_usable (f, a->index, lv->name))
    return false;
  struct lvm_piece *p = add_piece (f, out_off, count * vg->extent_size,
                                   LVM_PIECE_LINEAR, 1);
  if (!p)
    return false;
  p->pv[0] = a->index;
  p->pv_off[0] = vg->pvs[a->index].pe_start +
                 (a->start + le) * vg->extent_size;
  return true;
}

static bool
flatten (struct flat *f, size_t lvi, uint64_t le, uint64_t count,
         uint64_t out_off, unsigned depth)
{
  const struct lvm_meta_vg *vg = f->vg;
  const struct lvm_meta_lv *lv = &vg->lvs[lvi];
  uint64_t le_end = le + count;   /* checked by check_areas */

  if (!charge (f, 1))
    return false;
  if (depth > LVM_MAX_STACK) {
    kvm_seterr (f->err, f->errlen, "LV %s: LVs stacked more than %d deep "
            "(or a loop) at LV %s", f->top, LVM_MAX_STACK, lv->name);
    return false;
  }
  if (lv->is_cow) {
    kvm_seterr (f->err, f->errlen, "LV %s: LV %s is the exception store of a "
            "snapshot (segment type 'snapshot' is not supported)",
            f->top, lv->name);
    return false;
  }
  if (lv->is_merging) {
    kvm_seterr (f->err, f->errlen, "LV %s: a snapshot is being merged into "
            "LV %s (its content is the merge's, which needs device-mapper)",
            f->top, lv->name);
    return false;
  }
  if (lv->is_origin)
    f->readonly = true;

  /* Segments are sorted and contiguous from extent 0: find the first one
   * that ends after LE, and visit only those that overlap the range.
   */
  size_t lo_i = 0, hi_i = lv->seg_count;
  while (lo_i < hi_i) {
    size_t mid = lo_i + (hi_i - lo_i) / 2;
    const struct lvm_meta_seg *sm = &lv->segs[mid];
    if (sm->start_extent + sm->extent_count <= le)
      lo_i = mid + 1;
    else
      hi_i = mid;
  }
  for (size_t si = lo_i; si < lv->seg_count; si++) {
    const struct lvm_meta_seg *seg = &lv->segs[si];
    uint64_t s_end = seg->start_extent + seg->extent_count;
    if (seg->start_extent >= le_end)
      break;
    if (!charge (f, 1))
      return false;
    uint64_t lo = seg->start_extent > le ? seg->start_extent : le;
    uint64_t hi = s_end < le_end ? s_end : le_end;
    uint64_t rel = lo - seg->start_extent;  /* extents into the segment */
    uint64_t n = hi - lo;
    uint64_t off = out_off + (lo - le) * vg->extent_size;

    switch (seg->type) {
    case LVM_SEG_STRIPED:
      if (seg->area_count == 1) {
        if (!flatten_area (f, lv, &seg->areas[0], rel, n, off, depth))
          return false;
        break;
      }
      {
        struct lvm_piece *p;
        for (size_t s = 0; s < seg->area_count; s++) {
          if (seg->areas[s].kind != LVM_AREA_PV) {
            kvm_seterr (f->err, f->errlen, "LV %s: striped segment of LV %s "
                    "over LVs is not supported", f->top, lv->name);
            return false;
          }
          if (!pv_usable (f, seg->areas[s].index, lv->name))
            return false;
        }
        p = add_piece (f, off, n * vg->extent_size, LVM_PIECE_STRIPED,
                       seg->area_count);
        if (!p)
          return false;
        p->stripe_size = seg->stripe_size;
        p->base = rel * vg->extent_size;
        for (size_t s = 0; s < seg->area_count; s++) {
          const struct lvm_area *a = &seg->areas[s];
          p->pv[s] = a->index;
          p->pv_off[s] = vg->pvs[a->index].pe_start +
                         a->start * vg->extent_size;
        }
      }
      break;

    case LVM_SEG_MIRROR:
    case LVM_SEG_RAID1: {
      /* Read-only: serve the first leg that maps completely onto
       * present PVs (for pvmove and unsynchronised mirrors the first
       * leg is the original).
       */
      size_t mark = f->m->count;
      bool ok = false;
      char first_err[512] = "";
      if (seg->type == LVM_SEG_RAID1 && lv->seg_count != 1) {
        kvm_seterr (f->err, f->errlen, "LV %s: raid1 LV %s with %zu segments "
                "is not supported", f->top, lv->name, lv->seg_count);
        return false;
      }
      f->readonly = true;
      for (size_t a = 0; a < seg->area_count && !ok; a++) {
        if (flatten_area (f, lv, &seg->areas[a], rel, n, off, depth)) {
          ok = true;
          /* Whether that leg is in sync lvm2 keeps outside the metadata
           * (mirror log, raid metadata): the caller decides.
           */
          if (a > 0)
            f->m->other_leg = true;
        }
        else {
          if (!first_err[0])
            snprintf (first_err, sizeof first_err, "%s", f->err);
          truncate_pieces (f, mark);
        }
      }
      if (!ok) {
        char tmp[600];
        snprintf (tmp, sizeof tmp, "%s (no usable %s leg of LV %s)",
                  first_err, seg->type_name, lv->name);
        kvm_seterr (f->err, f->errlen, "%s", tmp);
        return false;
      }
      break;
    }

    case LVM_SEG_ZERO:
      if (!add_piece (f, off, n * vg->extent_size, LVM_PIECE_ZERO, 0))
        return false;
      break;

    case LVM_SEG_ERROR:
      if (!add_piece (f, off, n * vg->extent_size, LVM_PIECE_ERROR, 0))
        return false;
      break;

    case LVM_SEG_UNSUPPORTED:
      kvm_seterr (f->err, f->errlen, "LV %s%s%s: segment type '%s' is not "
              "supported (supported: linear, striped; mirror and raid1 "
              "read-only)", f->top,
              strcmp (f->top, lv->name) ? " via LV " : "",
              strcmp (f->top, lv->name) ? lv->name : "", seg->type_name);
      return false;
    }
  }
  return true;
}

struct lvm_map *
lvm_map_build (const struct lvm_meta_vg *vg, size_t lvi, lvm_pv_ok_fn pv_ok,
               void *opaque, char *err, size_t errlen)
{
  uint64_t budget = LVM_MAP_BUDGET;
  return lvm_map_build_budget (vg, lvi, pv_ok, opaque, &budget, err, errlen);
}

struct lvm_map *
lvm_map_build_budget (const struct lvm_meta_vg *vg, size_t lvi,
                      lvm_pv_ok_fn pv_ok, void *opaque, uint64_t *budget,
                      char *err, size_t errlen)
{
  const struct lvm_meta_lv *lv = &vg->lvs[lvi];
  struct flat f = { .vg = vg, .pv_ok = pv_ok, .opaque = opaque,
                    .top = lv->name, .err = err, .errlen = errlen,
                    .budget = budget };

  if (errlen)
    err[0] = 0;
  f.m = calloc (1, sizeof *f.m);
  if (!f.m) {
    kvm_seterr (err, errlen, "out of memory");
    return NULL;
  }
  f.m->size = lv->extent_count * vg->extent_size;
  if (!flatten (&f, lvi, 0, lv->extent_count, 0, 0)) {
    lvm_map_free (f.m);
    errno = EINVAL;
    return NULL;
  }
  f.m->readonly = f.readonly || !lv->writable;

  /* Merge linear pieces that continue on the same PV. */
  struct lvm_map *m = f.m;
  size_t j = 0;
  for (size_t i = 0; i < m->count; i++) {
    struct lvm_piece *p = &m->pieces[i];
    if (j > 0) {
      struct lvm_piece *q = &m->pieces[j - 1];
      if (q->kind == LVM_PIECE_LINEAR && p->kind == LVM_PIECE_LINEAR &&
          q->pv[0] == p->pv[0] && q->pv_off[0] + q->len == p->pv_off[0]) {
        q->len += p->len;
        free (p->pv);
        free (p->pv_off);
        continue;
      }
      if (q->kind == p->kind && (p->kind == LVM_PIECE_ZERO ||
                                 p->kind == LVM_PIECE_ERROR)) {
        q->len += p->len;
        continue;
      }
    }
    m->pieces[j++] = *p;
  }
  m->count = j;
  return m;
}

const struct lvm_piece *
lvm_map_find (const struct lvm_map *m, uint64_t offset)
{
  size_t lo = 0, hi = m->count;
  while (lo < hi) {
    size_t mid = lo + (hi - lo) / 2;
    const struct lvm_piece *p = &m->pieces[mid];
    if (offset < p->lv_off)
      hi = mid;
    else if (offset - p->lv_off >= p->len)
      lo = mid + 1;
    else
      return p;
  }
  return NULL;
}

void
lvm_piece_resolve (const struct lvm_piece *p, uint64_t offset, size_t *pv,
                   uint64_t *pv_off, uint64_t *contig)
{
  uint64_t x = offset - p->lv_off;
  switch (p->kind) {
  case LVM_PIECE_LINEAR:
    *pv = p->pv[0];
    *pv_off = p->pv_off[0] + x;
    *contig = p->len - x;
    return;
  case LVM_PIECE_STRIPED: {
    uint64_t s = p->base + x;
    uint64_t chunk = s / p->stripe_size;
    uint64_t within = s % p->stripe_size;
    uint64_t stripe = chunk % p->stripe_count;
    uint64_t row = chunk / p->stripe_count;
    uint64_t left = p->stripe_size - within;
    *pv = p->pv[stripe];
    *pv_off = p->pv_off[stripe] + row * p->stripe_size + within;
    *contig = left < p->len - x ? left : p->len - x;
    return;
  }
  default:
    *pv = 0;
    *pv_off = 0;
    *contig = p->len - x;
  }
}

/* Same stripe geometry, same devices, same position for the same LV byte:
 * then the two pieces agree on their whole overlap.
 */
static bool
same_striping (const struct lvm_piece *a, lvm_pv_id_fn ida, void *oa,
               const struct lvm_piece *b, lvm_pv_id_fn idb, void *ob)
{
  if (a->stripe_count != b->stripe_count || a->stripe_size != b->stripe_size)
    return false;
  /* base - lv_off must agree (mod 2^64 is fine: equality of mappings) */
  if (a->base - a->lv_off != b->base - b->lv_off)
    return false;
  for (unsigned s = 0; s < a->stripe_count; s++)
    if (ida (oa, a->pv[s]) != idb (ob, b->pv[s]) ||
        a->pv_off[s] != b->pv_off[s])
      return false;
  return true;
}

bool
lvm_map_is_prefix (const struct lvm_map *old, lvm_pv_id_fn id_old,
                   void *o_old, const struct lvm_map *new,
                   lvm_pv_id_fn id_new, void *o_new)
{
  uint64_t o = 0, steps = 0;
  if (new->size < old->size)
    return false;
  while (o < old->size) {
    const struct lvm_piece *a = lvm_map_find (old, o);
    const struct lvm_piece *b = lvm_map_find (new, o);
    uint64_t step;
    if (!a || !b || a->kind != b->kind)
      return false;
    uint64_t end_a = a->lv_off + a->len, end_b = b->lv_off + b->len;
    step = (end_a < end_b ? end_a : end_b) - o;
    if (a->kind == LVM_PIECE_STRIPED &&
        same_striping (a, id_old, o_old, b, id_new, o_new))
      ;                          /* whole overlap agrees */
    else if (a->kind == LVM_PIECE_LINEAR || a->kind == LVM_PIECE_STRIPED) {
      size_t pa, pb;
      uint64_t offa, offb, ca, cb;
      /* Stripes compared chunk by chunk can take size / stripe_size
       * steps (512-byte stripes on a large PV: billions).  Past a bound,
       * answer "changed": the LV then fails safe (reconnect) instead of
       * holding its connection for minutes.  (Linear pieces take one step
       * each, and their number is bounded by the mapping budget.)
       */
      if (a->kind == LVM_PIECE_STRIPED && ++steps > LVM_PREFIX_MAX_STEPS)
        return false;
      lvm_piece_resolve (a, o, &pa, &offa, &ca);
      lvm_piece_resolve (b, o, &pb, &offb, &cb);
      if (id_old (o_old, pa) != id_new (o_new, pb) || offa != offb)
        return false;
      step = ca < cb ? ca : cb;
    }
    o += step;
  }
  return true;
}

/* Append ITEM (with SEP before it) to BUF if it fits whole. */
static bool
append (char *buf, size_t len, size_t *used, const char *sep,
        const char *item)
{
  size_t a = strlen (sep), b = strlen (item);
  if (*used + a + b >= len)
    return false;
  memcpy (buf + *used, sep, a);
  memcpy (buf + *used + a, item, b + 1);
  *used += a + b;
  return true;
}

bool
lvm_meta_lv_describe (const struct lvm_meta_vg *vg, size_t lvi, char *buf,
                      size_t len)
{
  const struct lvm_meta_lv *lv = &vg->lvs[lvi];
  /* The distinct types listed so far: each costs at least 2 bytes of BUF,
   * so a short array is enough, and the work stays linear.
   */
  const char *listed[64];
  size_t nlisted = 0, used = 0;
  bool unsupported = false, full = false;

  if (len == 0)
    return !lv->is_cow;
  buf[0] = 0;
  if (lv->is_cow) {
    snprintf (buf, len, "snapshot exception store, unsupported");
    return false;
  }
  for (size_t i = 0; i < lv->seg_count; i++) {
    const struct lvm_meta_seg *s = &lv->segs[i];
    const char *t = s->type_name;
    if (s->type == LVM_SEG_STRIPED)
      t = s->area_count == 1 ? "linear" : "striped";
    if (s->type == LVM_SEG_UNSUPPORTED)
      unsupported = true;
    if (full)
      continue;
    bool seen = false;
    for (size_t k = 0; k < nlisted && !seen; k++)
      seen = strcmp (listed[k], t) == 0;
    if (seen)
      continue;
    if (nlisted == sizeof listed / sizeof listed[0] ||
        !append (buf, len, &used, used ? "+" : "", t)) {
      full = true;
      continue;
    }
    listed[nlisted++] = t;
  }
  if (unsupported)
    append (buf, len, &used, "", ", unsupported");
  return !unsupported;
}
