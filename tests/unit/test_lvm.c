/* SPDX-License-Identifier: BSD-3-Clause */
/* Unit tests for the LVM2 engine: text parser details, model validation,
 * striped mapping (checked against hand-computed dm-stripe positions),
 * mirror/raid1 leg choice and the prefix rule used after metadata changes.
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bdev/bdev.h"
#include "util/endian.h"

#include "check.h"
#include "lvm/lvm.h"
#include "lvm/lvm_disk.h"
#include "lvm/lvm_meta.h"
#include "lvm/lvm_text.h"

static char err[512];

static struct lvm_text *
parse (const char *s)
{
  return lvm_text_parse (s, strlen (s), err, sizeof err);
}

static void
test_parser (void)
{
  struct lvm_text *t;
  const struct lvm_node *r, *n;
  int64_t v;

  t = parse ("# comment\n"
             "a = 1 b = -42\n"
             "s = \"x\\\"y\\\\z\"  # trailing comment\n"
             "q = 'single'\n"
             "f = 1.5\n"
             "arr = [ \"p\", 7, \"q\", 8, ]\n"
             "e = []\n"
             "sec { inner { deep = \"v\" } }\n");
  CHECK (t);
  r = lvm_text_root (t);
  CHECK (lvm_node_get_int (r, "a", &v) && v == 1);
  CHECK (lvm_node_get_int (r, "b", &v) && v == -42);
  CHECK (strcmp (lvm_node_get_str (r, "s"), "x\"y\\z") == 0);
  CHECK (strcmp (lvm_node_get_str (r, "q"), "single") == 0);
  n = lvm_node_get (r, "f");
  CHECK (n && n->type == LVM_NODE_FLOAT && strcmp (n->s, "1.5") == 0);
  n = lvm_node_get (r, "arr");
  CHECK (n && n->type == LVM_NODE_ARRAY && n->count == 4);
  CHECK (n->child->next->type == LVM_NODE_INT && n->child->next->i == 7);
  n = lvm_node_get (r, "e");
  CHECK (n && n->type == LVM_NODE_ARRAY && n->count == 0);
  n = lvm_node_get_section (lvm_node_get_section (r, "sec"), "inner");
  CHECK (n && strcmp (lvm_node_get_str (n, "deep"), "v") == 0);
  CHECK (!lvm_node_get_str (r, "a"));          /* wrong type */
  CHECK (!lvm_node_get (r, "missing"));
  lvm_text_free (t);

  /* A NUL ends the text (LVM pads with zeroes). */
  t = lvm_text_parse ("a = 1\0garbage{{{", 16, err, sizeof err);
  CHECK (t);
  lvm_text_free (t);

  /* Errors carry the line number. */
  CHECK (!parse ("a = 1\nb = \"open\n\n"));
  CHECK (strstr (err, "line 2: unterminated string"));
  CHECK (!parse ("x {\n y = 1\n"));
  CHECK (strstr (err, "not closed"));
  CHECK (!parse ("a = 99999999999999999999"));
  CHECK (strstr (err, "out of range"));
  CHECK (!parse ("a = 12abc"));
  CHECK (!parse ("a = [ [ 1 ] ]"));
  CHECK (!parse ("}"));
  CHECK (!parse ("a = "));
  CHECK (!parse ("= 1"));
  t = parse ("a = -9223372036854775808");
  CHECK (t && lvm_node_get_int (lvm_text_root (t), "a", &v) && v == INT64_MIN);
  lvm_text_free (t);
  CHECK (!parse ("a = -9223372036854775809"));

  char deep[200];
  size_t k = 0;
  for (int i = 0; i < 40; i++) { deep[k++] = 'a'; deep[k++] = '{'; }
  for (int i = 0; i < 40; i++) deep[k++] = '}';
  deep[k] = 0;
  CHECK (!parse (deep));
  CHECK (strstr (err, "nesting too deep"));
}

#define VG_HEAD \
  "vg {\n id = \"aaaaaa-aaaa-aaaa-aaaa-aaaa-aaaa-aaaaaa\"\n seqno = 3\n" \
  " extent_size = 8\n"  /* 4 KiB extents */ \
  " physical_volumes {\n" \
  "  pv0 { id = \"bbbbbb-bbbb-bbbb-bbbb-bbbb-bbbb-bbbbbb\" pe_start = 2048 pe_count = 100 }\n" \
  "  pv1 { id = \"cccccc-cccc-cccc-cccc-cccc-cccc-cccccc\" pe_start = 4096 pe_count = 100 }\n" \
  "  pv2 { id = \"dddddd-dddd-dddd-dddd-dddd-dddd-dddddd\" pe_start = 2048 pe_count = 100 }\n" \
  " }\n logical_volumes {\n"
#define VG_TAIL " }\n}\n"
#define LV(name, ch, segs, body) \
  "  " name " { id = \"" ch ch ch ch ch ch "-" ch ch ch ch "-" ch ch ch ch "-" \
  ch ch ch ch "-" ch ch ch ch "-" ch ch ch ch "-" ch ch ch ch ch ch "\"\n" \
  "   status = [\"READ\", \"WRITE\", \"VISIBLE\"] segment_count = " #segs "\n" \
  body "  }\n"
#define HIDDEN(name, ch, body) \
  "  " name " { id = \"" ch ch ch ch ch ch "-" ch ch ch ch "-" ch ch ch ch "-" \
  ch ch ch ch "-" ch ch ch ch "-" ch ch ch ch "-" ch ch ch ch ch ch "\"\n" \
  "   status = [\"READ\"] segment_count = 1\n" body "  }\n"
#define LINEAR(n, start, count, pv, pe) \
  "   segment" #n " { start_extent = " #start " extent_count = " #count \
  " type = \"striped\" stripe_count = 1 stripes = [\"" pv "\", " #pe "] }\n"

static bool
ok_all (void *o, size_t pv)
{
  (void) o; (void) pv;
  return true;
}

static bool
no_pv1 (void *o, size_t pv)
{
  (void) o;
  return pv != 1;
}

static const void *
ident (void *o, size_t pv)
{
  (void) o;
  return (const void *) (uintptr_t) (pv + 1);
}

static struct lvm_meta_vg *
vg_of (const char *text)
{
  struct lvm_meta_vg *vg = lvm_meta_parse (text, strlen (text), err,
                                           sizeof err);
  if (!vg)
    fprintf (stderr, "metadata error: %s\n", err);
  return vg;
}

static void
test_striped (void)
{
  /* 3 stripes with 2 KiB chunks (4 sectors) over 12 extents of 4 KiB,
   * then a linear segment of 2 extents.
   */
  struct lvm_meta_vg *vg = vg_of (VG_HEAD
    LV ("s", "e", 2,
        "   segment1 { start_extent = 0 extent_count = 12 type = \"striped\"\n"
        "     stripe_count = 3 stripe_size = 4\n"
        "     stripes = [\"pv0\", 10, \"pv1\", 20, \"pv2\", 30] }\n"
        LINEAR (2, 12, 2, "pv1", 50))
    VG_TAIL);
  CHECK (vg);
  CHECK (vg->extent_size == 4096);
  ssize_t i = lvm_meta_find_lv (vg, "s");
  CHECK (i >= 0);
  struct lvm_map *m = lvm_map_build (vg, i, ok_all, NULL, err, sizeof err);
  CHECK (m);
  CHECK_EQ_U64 (m->size, 14 * 4096);
  CHECK (!m->readonly);

  /* dm-stripe: chunk c = off / 2048 goes to stripe c % 3, row c / 3. */
  static const struct { uint64_t off; size_t pv; uint64_t pv_off, contig; }
  cases[] = {
    { 0,      0, 1048576 + 10 * 4096,              2048 },
    { 2047,   0, 1048576 + 10 * 4096 + 2047,       1 },
    { 2048,   1, 2097152 + 20 * 4096,              2048 },
    { 4096+5, 2, 1048576 + 30 * 4096 + 5,          2043 },
    { 6144,   0, 1048576 + 10 * 4096 + 2048,       2048 },   /* row 1 */
    { 6*2048+100, 0, 1048576 + 10 * 4096 + 2*2048 + 100, 1948 },
    { 12 * 4096, 1, 2097152 + 50 * 4096,           2 * 4096 },  /* linear */
  };
  for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
    const struct lvm_piece *p = lvm_map_find (m, cases[k].off);
    size_t pv;
    uint64_t off, contig;
    CHECK (p);
    lvm_piece_resolve (p, cases[k].off, &pv, &off, &contig);
    CHECK_EQ_U64 (pv, cases[k].pv);
    CHECK_EQ_U64 (off, cases[k].pv_off);
    CHECK_EQ_U64 (contig, cases[k].contig);
  }
  CHECK (lvm_map_find (m, m->size) == NULL);

  /* A missing PV makes the LV unavailable, naming the PV UUID. */
  CHECK (!lvm_map_build (vg, i, no_pv1, NULL, err, sizeof err));
  CHECK (strstr (err, "missing PV cccccc-cccc-cccc-cccc-cccc-cccc-cccccc"));
  lvm_map_free (m);
  lvm_meta_free (vg);
}

static void
test_validation (void)
{
  /* Two LVs on the same extents. */
  CHECK (!vg_of (VG_HEAD LV ("a", "e", 1, LINEAR (1, 0, 4, "pv0", 0))
                 LV ("b", "f", 1, LINEAR (1, 0, 4, "pv0", 3)) VG_TAIL));
  CHECK (strstr (err, "used by both"));
  /* Past pe_count. */
  CHECK (!vg_of (VG_HEAD LV ("a", "e", 1, LINEAR (1, 0, 4, "pv0", 97))
                 VG_TAIL));
  CHECK (strstr (err, "which has only 100"));
  /* Gap between segments. */
  CHECK (!vg_of (VG_HEAD LV ("a", "e", 2, LINEAR (1, 0, 4, "pv0", 0)
                                          LINEAR (2, 5, 1, "pv0", 10))
                 VG_TAIL));
  CHECK (strstr (err, "not contiguous"));
  /* Wrong segment_count. */
  CHECK (!vg_of (VG_HEAD LV ("a", "e", 2, LINEAR (1, 0, 4, "pv0", 0))
                 VG_TAIL));
  /* Unknown area. */
  CHECK (!vg_of (VG_HEAD LV ("a", "e", 1, LINEAR (1, 0, 4, "pv9", 0))
                 VG_TAIL));
  CHECK (strstr (err, "unknown PV or LV 'pv9'"));
  /* Duplicate LV names. */
  CHECK (!vg_of (VG_HEAD LV ("a", "e", 1, LINEAR (1, 0, 4, "pv0", 0))
                 LV ("a", "f", 1, LINEAR (1, 0, 4, "pv0", 10)) VG_TAIL));
  CHECK (strstr (err, "appears twice"));
  /* Stripe size not dividing the stripe length. */
  CHECK (!vg_of (VG_HEAD LV ("a", "e", 1,
    "   segment1 { start_extent = 0 extent_count = 2 type = \"striped\"\n"
    "     stripe_count = 2 stripe_size = 3 stripes = [\"pv0\", 0, \"pv1\", 0] }\n")
                 VG_TAIL));
  /* type = "linear" is accepted as one stripe. */
  struct lvm_meta_vg *vl = vg_of (VG_HEAD LV ("a", "e", 1,
    "   segment1 { start_extent = 0 extent_count = 2 type = \"linear\"\n"
    "     stripes = [\"pv0\", 5] }\n") VG_TAIL);
  CHECK (vl && vl->lvs[0].segs[0].type == LVM_SEG_STRIPED);
  lvm_meta_free (vl);
  /* A self-referencing LV. */
  CHECK (!vg_of (VG_HEAD LV ("a", "e", 1, LINEAR (1, 0, 4, "a", 0))
                 VG_TAIL));
}

static void
test_legs_and_prefix (void)
{
  struct lvm_meta_vg *vg = vg_of (VG_HEAD
    LV ("m", "e", 1,
        "   segment1 { start_extent = 0 extent_count = 4 type = \"raid1\"\n"
        "     device_count = 2 raids = [\"\", \"m_rimage_0\", \"\", \"m_rimage_1\"] }\n")
    HIDDEN ("m_rimage_0", "f", LINEAR (1, 0, 4, "pv1", 0))
    HIDDEN ("m_rimage_1", "g", LINEAR (1, 0, 4, "pv2", 0))
    LV ("t", "h", 1,
        "   segment1 { start_extent = 0 extent_count = 4 type = \"thin\" }\n")
    VG_TAIL);
  CHECK (vg);
  ssize_t i = lvm_meta_find_lv (vg, "m");
  struct lvm_map *a = lvm_map_build (vg, i, ok_all, NULL, err, sizeof err);
  struct lvm_map *b = lvm_map_build (vg, i, no_pv1, NULL, err, sizeof err);
  CHECK (a && b);
  CHECK (a->readonly && b->readonly);
  CHECK (a->pieces[0].pv[0] == 1);      /* first leg */
  CHECK (b->pieces[0].pv[0] == 2);      /* the healthy leg */
  CHECK (lvm_map_is_prefix (a, ident, NULL, a, ident, NULL));
  CHECK (!lvm_map_is_prefix (a, ident, NULL, b, ident, NULL));
  lvm_map_free (a);
  lvm_map_free (b);

  CHECK (!lvm_map_build (vg, lvm_meta_find_lv (vg, "t"), ok_all, NULL, err,
                         sizeof err));
  CHECK (strstr (err, "segment type 'thin' is not supported"));
  char desc[100];
  lvm_meta_lv_describe (vg, lvm_meta_find_lv (vg, "t"), desc, sizeof desc);
  CHECK (strcmp (desc, "thin, unsupported") == 0);
  lvm_meta_free (vg);

  /* lvextend: the old map is a prefix of the new one; lvreduce is not. */
  struct lvm_meta_vg *v1 = vg_of (VG_HEAD
    LV ("x", "e", 1, LINEAR (1, 0, 4, "pv0", 0)) VG_TAIL);
  struct lvm_meta_vg *v2 = vg_of (VG_HEAD
    LV ("x", "e", 2, LINEAR (1, 0, 6, "pv0", 0) LINEAR (2, 6, 3, "pv2", 7))
    VG_TAIL);
  struct lvm_meta_vg *v3 = vg_of (VG_HEAD
    LV ("x", "e", 1, LINEAR (1, 0, 3, "pv0", 0)) VG_TAIL);
  struct lvm_meta_vg *v4 = vg_of (VG_HEAD
    LV ("x", "e", 1, LINEAR (1, 0, 4, "pv0", 1)) VG_TAIL);
  CHECK (v1 && v2 && v3 && v4);
  struct lvm_map *m1 = lvm_map_build (v1, 0, ok_all, NULL, err, sizeof err);
  struct lvm_map *m2 = lvm_map_build (v2, 0, ok_all, NULL, err, sizeof err);
  struct lvm_map *m3 = lvm_map_build (v3, 0, ok_all, NULL, err, sizeof err);
  struct lvm_map *m4 = lvm_map_build (v4, 0, ok_all, NULL, err, sizeof err);
  CHECK (lvm_map_is_prefix (m1, ident, NULL, m2, ident, NULL));
  CHECK (!lvm_map_is_prefix (m1, ident, NULL, m3, ident, NULL));
  CHECK (!lvm_map_is_prefix (m1, ident, NULL, m4, ident, NULL));
  lvm_map_free (m1); lvm_map_free (m2); lvm_map_free (m3); lvm_map_free (m4);
  lvm_meta_free (v1); lvm_meta_free (v2); lvm_meta_free (v3);
  lvm_meta_free (v4);
}

static void
test_crc_uuid (void)
{
  /* CRC-32 (IEEE, reflected) of "123456789" is 0xcbf43926 with the usual
   * ~0 seed and final inversion; LVM uses neither.
   */
  CHECK_EQ_U64 (~lvm_crc (0xffffffffu, "123456789", 9), 0xcbf43926u);
  char u[LVM_UUID_LEN + 1], f[LVM_UUID_LEN + 7];
  CHECK (lvm_uuid_normalize ("EPDLq6-fuhW-RFoD-r5dA-pXCY-6TX3-Ya63to", u));
  CHECK (strcmp (u, "EPDLq6fuhWRFoDr5dApXCY6TX3Ya63to") == 0);
  lvm_uuid_format (u, f);
  CHECK (strcmp (f, "EPDLq6-fuhW-RFoD-r5dA-pXCY-6TX3-Ya63to") == 0);
  CHECK (!lvm_uuid_normalize ("short", u));
  CHECK (!lvm_uuid_normalize ("EPDLq6-fuhW-RFoD-r5dA-pXCY-6TX3-Ya63to-x", u));
}

/* A label sector: LABELONE, sector number, checksum, PV header with one
 * data area and one metadata area.
 */
static void
make_label (uint8_t *sec, uint64_t sector_no, const char *uuid)
{
  memset (sec, 0, 512);
  memcpy (sec, "LABELONE", 8);
  store_le64 (sec + 8, sector_no);
  store_le32 (sec + 20, 32);
  memcpy (sec + 24, "LVM2 001", 8);
  memcpy (sec + 32, uuid, 32);
  store_le64 (sec + 64, 8 << 20);
  store_le64 (sec + 72, 1 << 20);       /* data area */
  store_le64 (sec + 104, 4096);         /* mda */
  store_le64 (sec + 112, 1 << 20);
  store_le32 (sec + 16, lvm_crc (LVM_INITIAL_CRC, sec + 20, 512 - 20));
}

static void
test_label (void)
{
  char path[] = "/tmp/test_lvm.XXXXXX";
  int fd = mkstemp (path);
  uint8_t img[2048];
  struct bdev_open_opts o = { .readonly = true };
  struct lvm_label l;
  CHECK (fd >= 0);

  /* Sector 0: a damaged candidate (bad checksum); sector 1: valid. */
  memset (img, 0, sizeof img);
  make_label (img, 0, "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA");
  img[300] ^= 1;
  make_label (img + 512, 1, "BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB");
  CHECK (pwrite (fd, img, sizeof img, 0) == sizeof img);
  struct bdev *bd = bdev_file_open (path, &o);
  CHECK (bd);
  CHECK (lvm_read_label (bd, &l, err, sizeof err) == 1);
  CHECK (l.sector == 1);
  CHECK (strcmp (l.uuid, "BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB") == 0);
  CHECK (l.data_count == 1 && l.mda_count == 1);
  CHECK_EQ_U64 (l.mda[0].offset, 4096);
  bdev_close (bd);

  /* Only the damaged one: an error naming the cause. */
  memset (img + 512, 0, 512);
  CHECK (pwrite (fd, img, sizeof img, 0) == sizeof img);
  bd = bdev_file_open (path, &o);
  CHECK (bd);
  CHECK (lvm_read_label (bd, &l, err, sizeof err) == -1);
  CHECK (strstr (err, "bad checksum"));
  bdev_close (bd);

  /* No label at all. */
  memset (img, 0, sizeof img);
  CHECK (pwrite (fd, img, sizeof img, 0) == sizeof img);
  bd = bdev_file_open (path, &o);
  CHECK (bd);
  CHECK (lvm_read_label (bd, &l, err, sizeof err) == 0);
  bdev_close (bd);
  close (fd);
  unlink (path);
}

/* Issue #23: an empty segment type made lvm_meta_lv_describe() spin
 * forever.  Malformed types are now refused, naming the LV and segment.
 */
static void
test_segment_types (void)
{
  static const struct { const char *type, *msg; } bad[] = {
    { "", "the type is empty" },
    { "str ped", "holds byte 0x20 at position 3" },
    { "1striped", "does not begin with a letter" },
    { "striped+", "empty '+' flag" },
    { "raid5++RESHAPE", "empty '+' flag" },
    { "thin\\\"x", "holds byte 0x22 at position 4" },
  };
  for (size_t k = 0; k < sizeof bad / sizeof bad[0]; k++) {
    char text[2048];
    snprintf (text, sizeof text, "%s%s%s%s",
              VG_HEAD LV ("good", "e", 1, LINEAR (1, 0, 4, "pv0", 0)),
              "  bad { id = \"ffffff-ffff-ffff-ffff-ffff-ffff-ffffff\"\n"
              "   status = [\"READ\", \"VISIBLE\"] segment_count = 2\n"
              LINEAR (1, 0, 2, "pv1", 0)
              "   segment2 { start_extent = 2 extent_count = 2 type = \"",
              bad[k].type, "\" }\n  }\n" VG_TAIL);
    CHECK (!vg_of (text));
    if (!strstr (err, "LV bad segment2: invalid segment type (line ") ||
        !strstr (err, bad[k].msg)) {
      fprintf (stderr, "type '%s': %s\n", bad[k].type, err);
      CHECK (false);
    }
  }
  /* A type longer than LVM_SEGTYPE_MAX. */
  char text[4096], longtype[LVM_SEGTYPE_MAX + 2];
  memset (longtype, 'a', sizeof longtype - 1);
  longtype[sizeof longtype - 1] = 0;
  snprintf (text, sizeof text, "%s%s%s", VG_HEAD
            LV ("bad", "e", 1,
                "   segment1 { start_extent = 0 extent_count = 2 type = \""),
            longtype, "\" }\n" "  }\n" VG_TAIL);
  CHECK (!vg_of (text));
  CHECK (strstr (err, "LV bad segment1: invalid segment type"));
  CHECK (strstr (err, "longer than 256 bytes"));

  /* lvm2's "type+FLAG" form is well-formed (and unsupported here); the
   * description lists each type once, even with '+' inside type names,
   * and says whether the LV is supported.
   */
  struct lvm_meta_vg *vg = vg_of (VG_HEAD
    LV ("u", "e", 4,
        LINEAR (1, 0, 1, "pv0", 0)
        "   segment2 { start_extent = 1 extent_count = 1 type = \"raid5+RESHAPE\" }\n"
        "   segment3 { start_extent = 2 extent_count = 1 type = \"raid5\" }\n"
        "   segment4 { start_extent = 3 extent_count = 1 type = \"raid5+RESHAPE\" }\n")
    LV ("l", "f", 3, LINEAR (1, 0, 1, "pv0", 5) LINEAR (2, 1, 1, "pv1", 5)
        LINEAR (3, 2, 1, "pv0", 9))
    VG_TAIL);
  CHECK (vg);
  char desc[64];
  CHECK (!lvm_meta_lv_describe (vg, lvm_meta_find_lv (vg, "u"), desc,
                                sizeof desc));
  CHECK (strcmp (desc, "linear+raid5+RESHAPE+raid5, unsupported") == 0);
  CHECK (lvm_meta_lv_describe (vg, lvm_meta_find_lv (vg, "l"), desc,
                               sizeof desc));
  CHECK (strcmp (desc, "linear") == 0);
  /* Too small a buffer: whole type names only, still "unsupported". */
  char small[12];
  CHECK (!lvm_meta_lv_describe (vg, lvm_meta_find_lv (vg, "u"), small,
                                sizeof small));
  CHECK (strcmp (small, "linear") == 0);
  lvm_meta_free (vg);
}

static void
test_lv_names (void)
{
  char n127[128], n128[129];
  memset (n127, 'a', 127); n127[127] = 0;
  memset (n128, 'a', 128); n128[128] = 0;
  /* As lvcreate: up to 127 bytes, and "VG/LV" up to 127 bytes. */
  CHECK (!lvm_lv_name_problem ("", "ok.+_-Z9"));
  CHECK (!lvm_lv_name_problem ("v", n127 + 2));   /* "v/" + 125 */
  CHECK (strstr (lvm_lv_name_problem ("", n128), "longer than 127"));
  CHECK (strstr (lvm_lv_name_problem ("vg", n127), "VG/LV"));
  CHECK (!lvm_lv_name_problem ("vg", n127 + 3));
  CHECK (strstr (lvm_lv_name_problem ("vg", ""), "empty"));
  CHECK (strstr (lvm_lv_name_problem ("vg", "-a"), "begins with '-'"));
  CHECK (strstr (lvm_lv_name_problem ("vg", "."), "'.'"));
  CHECK (strstr (lvm_lv_name_problem ("vg", ".."), "'.'"));
  CHECK (!lvm_lv_name_problem ("vg", "..."));
  CHECK (strstr (lvm_lv_name_problem ("vg", "a@b"), "characters"));
  CHECK (strstr (lvm_lv_name_problem ("vg", "a/b"), "characters"));
}

/* Segments are found by binary search: a reference into the middle of a
 * many-segment LV maps exactly the overlapping segments; a small budget
 * fails with "layout too complex".
 */
static void
test_stacked_range (void)
{
  char text[16384];
  size_t k = 0;
  k += snprintf (text + k, sizeof text - k, "%s",
                 VG_HEAD LV ("top", "e", 1,
                   "   segment1 { start_extent = 0 extent_count = 10 "
                   "type = \"striped\" stripe_count = 1 "
                   "stripes = [\"big\", 17] }\n")
                 "  big { id = \"ffffff-ffff-ffff-ffff-ffff-ffff-ffffff\"\n"
                 "   status = [\"READ\"] segment_count = 40\n");
  for (int i = 0; i < 40; i++)   /* extent i on pv(i%2), extent 2i */
    k += snprintf (text + k, sizeof text - k,
                   "   segment%d { start_extent = %d extent_count = 1 "
                   "type = \"striped\" stripe_count = 1 "
                   "stripes = [\"pv%d\", %d] }\n", i + 1, i, i % 2, 2 * i);
  snprintf (text + k, sizeof text - k, "  }\n" VG_TAIL);
  struct lvm_meta_vg *vg = vg_of (text);
  CHECK (vg);
  ssize_t t = lvm_meta_find_lv (vg, "top");
  struct lvm_map *m = lvm_map_build (vg, t, ok_all, NULL, err, sizeof err);
  CHECK (m);
  CHECK_EQ_U64 (m->count, 10);
  for (size_t i = 0; i < 10; i++) {
    size_t e = 17 + i;          /* extent of big */
    const struct lvm_piece *p = &m->pieces[i];
    CHECK_EQ_U64 (p->lv_off, i * 4096);
    CHECK_EQ_U64 (p->pv[0], e % 2);
    CHECK_EQ_U64 (p->pv_off[0], (e % 2 ? 4096 : 2048) * 512ull + 2 * e * 4096);
  }
  lvm_map_free (m);
  uint64_t budget = 5;
  CHECK (!lvm_map_build_budget (vg, t, ok_all, NULL, &budget, err,
                                sizeof err));
  CHECK (strstr (err, "LV top: layout too complex"));
  CHECK (budget == 0);
  budget = 1000;
  m = lvm_map_build_budget (vg, t, ok_all, NULL, &budget, err, sizeof err);
  CHECK (m && budget < 1000);
  lvm_map_free (m);
  lvm_meta_free (vg);
}

/* The same striped mapping written as one segment or as two: the second
 * piece is compared chunk by chunk.  Below LVM_PREFIX_MAX_STEPS chunks the
 * answer is exact; above it, conservatively "changed".
 */
static struct lvm_meta_vg *
striped_vg (unsigned extents, bool split)
{
  char text[2048];
  const char *head =
    "vg {\n id = \"aaaaaa-aaaa-aaaa-aaaa-aaaa-aaaa-aaaaaa\"\n seqno = 3\n"
    " extent_size = 8192\n physical_volumes {\n"
    "  pv0 { id = \"bbbbbb-bbbb-bbbb-bbbb-bbbb-bbbb-bbbbbb\" pe_start = 2048 pe_count = 1000 }\n"
    "  pv1 { id = \"cccccc-cccc-cccc-cccc-cccc-cccc-cccccc\" pe_start = 2048 pe_count = 1000 }\n"
    " }\n logical_volumes {\n  s { id = \"eeeeee-eeee-eeee-eeee-eeee-eeee-eeeeee\"\n"
    "   status = [\"READ\", \"WRITE\", \"VISIBLE\"]\n";
  if (!split)
    snprintf (text, sizeof text, "%s   segment_count = 1\n"
              "   segment1 { start_extent = 0 extent_count = %u type = \"striped\""
              " stripe_count = 2 stripe_size = 1 stripes = [\"pv0\", 0, \"pv1\", 0] }\n"
              "  }\n }\n}\n", head, extents);
  else
    snprintf (text, sizeof text, "%s   segment_count = 2\n"
              "   segment1 { start_extent = 0 extent_count = %u type = \"striped\""
              " stripe_count = 2 stripe_size = 1 stripes = [\"pv0\", 0, \"pv1\", 0] }\n"
              "   segment2 { start_extent = %u extent_count = %u type = \"striped\""
              " stripe_count = 2 stripe_size = 1 stripes = [\"pv0\", %u, \"pv1\", %u] }\n"
              "  }\n }\n}\n", head, extents / 2, extents / 2, extents / 2,
              extents / 4, extents / 4);
  return vg_of (text);
}

static void
test_prefix_bound (void)
{
  /* 40 extents of 4 MiB: the second half is 163840 chunks of 512 bytes;
   * 400 extents: 1638400 chunks, past the bound.
   */
  for (unsigned extents = 40; extents <= 400; extents *= 10) {
    struct lvm_meta_vg *v1 = striped_vg (extents, false);
    struct lvm_meta_vg *v2 = striped_vg (extents, true);
    CHECK (v1 && v2);
    struct lvm_map *m1 = lvm_map_build (v1, 0, ok_all, NULL, err, sizeof err);
    struct lvm_map *m2 = lvm_map_build (v2, 0, ok_all, NULL, err, sizeof err);
    CHECK (m1 && m2 && m1->count == 1 && m2->count == 2);
    bool expect = (uint64_t) extents / 2 * 4194304 / 512 <= LVM_PREFIX_MAX_STEPS;
    CHECK (expect == (extents == 40));
    CHECK (lvm_map_is_prefix (m1, ident, NULL, m2, ident, NULL) == expect);
    CHECK (lvm_map_is_prefix (m2, ident, NULL, m1, ident, NULL) == expect);
    lvm_map_free (m1); lvm_map_free (m2);
    lvm_meta_free (v1); lvm_meta_free (v2);
  }
}

/* A whole PV image in a file: label in sector 1, one metadata area at
 * 4096 holding TEXT, extents from 2 MiB.
 */
static void
write_pv (int fd, const char *uuid, const char *text)
{
  static uint8_t img[4 << 20];
  size_t len = strlen (text);
  uint64_t mda = 4096, mda_size = (1 << 20) - 4096;
  memset (img, 0, sizeof img);
  make_label (img + 512, 1, uuid);
  uint8_t *h = img + mda;
  memcpy (h + 4, LVM_MDA_MAGIC, 16);
  store_le32 (h + 20, LVM_MDA_VERSION);
  store_le64 (h + 24, mda);
  store_le64 (h + 32, mda_size);
  store_le64 (h + 40, 512);
  store_le64 (h + 48, len);
  store_le32 (h + 56, lvm_crc (LVM_INITIAL_CRC, text, len));
  store_le32 (h, lvm_crc (LVM_INITIAL_CRC, h + 4, 512 - 4));
  memcpy (h + 512, text, len);
  CHECK (pwrite (fd, img, sizeof img, 0) == sizeof img);
}

static int
collect (void *opaque, const char *name, uint64_t size, const char *layout)
{
  char *names = opaque;
  (void) size; (void) layout;
  strcat (names, name);
  strcat (names, ",");
  return 0;
}

/* Issue #23: an LV named with 5000 bytes made the whole listing fail. */
static void
test_listing_skips_bad_names (void)
{
  char path[] = "/tmp/test_lvm_pv.XXXXXX";
  int fd = mkstemp (path);
  CHECK (fd >= 0);
  char *text = malloc (16384);
  char longname[5001];
  memset (longname, 'x', 5000); longname[5000] = 0;
  CHECK (text);
  snprintf (text, 16384,
    "vg {\n id = \"aaaaaa-aaaa-aaaa-aaaa-aaaa-aaaa-aaaaaa\"\n seqno = 3\n"
    " extent_size = 8\n physical_volumes {\n"
    "  pv0 { id = \"bbbbbb-bbbb-bbbb-bbbb-bbbb-bbbb-bbbbbb\" pe_start = 4096 pe_count = 100 }\n"
    " }\n logical_volumes {\n%s%s%s%s%s }\n}\n",
    LV ("first", "e", 1, LINEAR (1, 0, 4, "pv0", 0)),
    longname,
    " { id = \"ffffff-ffff-ffff-ffff-ffff-ffff-ffffff\"\n"
    "   status = [\"READ\", \"WRITE\", \"VISIBLE\"] segment_count = 1\n"
    LINEAR (1, 0, 4, "pv0", 10) "  }\n",
    LV ("bad@name", "g", 1, LINEAR (1, 0, 4, "pv0", 20)),
    LV ("last", "h", 1, LINEAR (1, 0, 4, "pv0", 30)));
  write_pv (fd, "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb", text);
  close (fd);

  const char *paths[] = { path };
  struct lvm_vgset_opts o = { .readonly = true };
  struct lvm_vgset *set = lvm_vgset_open (paths, NULL, 1, &o);
  CHECK (set);
  char names[512] = "";
  CHECK (lvm_vgset_list (set, collect, names) == 0);
  CHECK (strcmp (names, "first,last,") == 0);
  /* Opening it by name fails cleanly; its neighbours open. */
  CHECK (!lvm_lv_open (set, longname, true));
  CHECK (!lvm_lv_open (set, "bad@name", true));
  struct bdev *bd = lvm_lv_open (set, "last", true);
  CHECK (bd && bd->size == 4 * 4096);
  bdev_close (bd);
  lvm_vgset_close (set);
  free (text);
  unlink (path);
}

int
main (void)
{
  test_parser ();
  test_striped ();
  test_validation ();
  test_legs_and_prefix ();
  test_crc_uuid ();
  test_label ();
  test_segment_types ();
  test_lv_names ();
  test_stacked_range ();
  test_prefix_bound ();
  test_listing_skips_bad_names ();
  printf ("test_lvm: OK\n");
  return 0;
}
