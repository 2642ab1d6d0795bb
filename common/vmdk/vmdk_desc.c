/* SPDX-License-Identifier: BSD-3-Clause */
/* The VMDK descriptor: a text file of "key=value" lines, extent lines
 * ("RW 2048 SPARSE "name.vmdk"", "RW 2048 FLAT "name-flat.vmdk" 0",
 * "RDONLY 2048 ZERO") and a disk database of "ddb.key = "value"" lines.
 * Comments start with '#'.  Unknown keys are ignored; a malformed extent
 * line or value of a known key is an error.
 */
#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "vmdk.h"
#include "util/checked.h"
#include "util/log.h"

void
vmdk_desc_free (struct vmdk_desc *d)
{
  for (size_t i = 0; i < d->next; i++)
    free (d->ext[i].file);
  free (d->ext);
  free (d->create_type);
  free (d->parent_hint);
  free (d->adapter_type);
  memset (d, 0, sizeof *d);
}

static const char *
skip_ws (const char *p, const char *end)
{
  while (p < end && (*p == ' ' || *p == '\t'))
    p++;
  return p;
}

/* An unsigned decimal number (no sign, no overflow). */
static bool
parse_u64 (const char **pp, const char *end, uint64_t *out)
{
  const char *p = *pp;
  uint64_t v = 0;
  if (p >= end || !isdigit ((unsigned char) *p))
    return false;
  while (p < end && isdigit ((unsigned char) *p)) {
    if (!ck_mul64 (v, 10, &v) || !ck_add64 (v, *p - '0', &v))
      return false;
    p++;
  }
  *pp = p;
  *out = v;
  return true;
}

/* A value: the rest of the line without surrounding blanks and quotes. */
static char *
dup_value (const char *p, const char *end)
{
  p = skip_ws (p, end);
  while (end > p && (end[-1] == ' ' || end[-1] == '\t'))
    end--;
  if (end - p >= 2 && *p == '"' && end[-1] == '"') {
    p++;
    end--;
  }
  char *s = strndup (p, end - p);
  if (s && strlen (s) != (size_t) (end - p)) {       /* embedded NUL */
    free (s);
    errno = EINVAL;
    return NULL;
  }
  return s;
}

static bool
parse_hex32 (const char *s, uint32_t *out)
{
  uint64_t v = 0;
  if (!*s || strlen (s) > 8)
    return false;
  for (; *s; s++) {
    int c = tolower ((unsigned char) *s), d;
    if (c >= '0' && c <= '9') d = c - '0';
    else if (c >= 'a' && c <= 'f') d = c - 'a' + 10;
    else return false;
    v = v * 16 + d;
  }
  *out = v;
  return true;
}

static int
parse_extent (const char *p, const char *end, struct vmdk_desc *d,
              unsigned lineno, char *err, size_t errlen)
{
  struct vmdk_desc_extent e = { 0 };
  const char *w = p;

  while (p < end && isalpha ((unsigned char) *p))
    p++;
  if ((size_t) (p - w) == 2 && memcmp (w, "RW", 2) == 0)
    e.readonly = false;
  else if (((size_t) (p - w) == 6 && memcmp (w, "RDONLY", 6) == 0) ||
           ((size_t) (p - w) == 8 && memcmp (w, "NOACCESS", 8) == 0))
    e.readonly = true;
  p = skip_ws (p, end);
  if (!parse_u64 (&p, end, &e.sectors) || e.sectors == 0 ||
      e.sectors > INT64_MAX / 512) {
    kvm_seterr (err, errlen, "descriptor line %u: invalid extent size",
                lineno);
    return -1;
  }
  p = skip_ws (p, end);
  w = p;
  while (p < end && (isalnum ((unsigned char) *p) || *p == '_'))
    p++;
  size_t n = p - w;
#define IS(s) (n == strlen (s) && memcmp (w, s, n) == 0)
  if (IS ("SPARSE")) e.type = VMDK_EXT_SPARSE;
  else if (IS ("FLAT")) e.type = VMDK_EXT_FLAT;
  else if (IS ("ZERO")) e.type = VMDK_EXT_ZERO;
  else if (IS ("VMFS") || IS ("VMFSRAW") || IS ("VMFSRDM"))
    e.type = VMDK_EXT_VMFS;
  else if (IS ("VMFSSPARSE")) e.type = VMDK_EXT_VMFSSPARSE;
  else if (IS ("SESPARSE")) e.type = VMDK_EXT_SESPARSE;
  else {
    kvm_seterr (err, errlen, "descriptor line %u: unknown extent type "
                "'%.*s'", lineno, (int) (n > 32 ? 32 : n), w);
    return -1;
  }
#undef IS
  p = skip_ws (p, end);
  if (e.type != VMDK_EXT_ZERO) {
    if (p >= end || *p != '"') {
      kvm_seterr (err, errlen, "descriptor line %u: extent without a "
                  "quoted file name", lineno);
      return -1;
    }
    const char *q = memchr (p + 1, '"', end - p - 1);
    if (!q || q == p + 1 || memchr (p + 1, '\0', q - p - 1)) {
      kvm_seterr (err, errlen, "descriptor line %u: invalid extent file "
                  "name", lineno);
      return -1;
    }
    e.file = strndup (p + 1, q - p - 1);
    if (!e.file) {
      kvm_seterr (err, errlen, "out of memory");
      return -1;
    }
    p = skip_ws (q + 1, end);
    if (p < end && (e.type == VMDK_EXT_FLAT || e.type == VMDK_EXT_VMFS)) {
      if (!parse_u64 (&p, end, &e.offset) || e.offset > INT64_MAX / 512) {
        free (e.file);
        kvm_seterr (err, errlen, "descriptor line %u: invalid extent "
                    "offset", lineno);
        return -1;
      }
      p = skip_ws (p, end);
    }
  }
  if (p < end) {
    free (e.file);
    kvm_seterr (err, errlen, "descriptor line %u: trailing characters in "
                "extent line", lineno);
    return -1;
  }
  uint64_t total;
  if (d->next >= VMDK_MAX_EXTENTS ||
      !ck_add64 (d->total_sectors, e.sectors, &total) ||
      total > INT64_MAX / 512) {
    free (e.file);
    kvm_seterr (err, errlen, "too many extents (at most %d) or total size "
                "too large", VMDK_MAX_EXTENTS);
    return -1;
  }
  if (d->next % 16 == 0) {
    struct vmdk_desc_extent *ne = realloc (d->ext, (d->next + 16) * sizeof *ne);
    if (!ne) {
      free (e.file);
      kvm_seterr (err, errlen, "out of memory");
      return -1;
    }
    d->ext = ne;
  }
  d->ext[d->next++] = e;
  d->total_sectors = total;
  return 0;
}

int
vmdk_desc_parse (const char *text, size_t len, struct vmdk_desc *d,
                 char *err, size_t errlen)
{
  const char *p = text, *end = text + len;
  unsigned lineno = 0;

  memset (d, 0, sizeof *d);
  d->parent_cid = 0xffffffff;
  if (len > VMDK_MAX_DESC) {
    kvm_seterr (err, errlen, "descriptor larger than %d bytes", VMDK_MAX_DESC);
    goto fail;
  }
  /* An embedded descriptor is padded with NULs. */
  const char *nul = memchr (text, '\0', len);
  if (nul)
    end = nul;

  while (p < end) {
    const char *eol = memchr (p, '\n', end - p);
    const char *next = eol ? eol + 1 : end;
    if (!eol)
      eol = end;
    lineno++;
    const char *le = eol;
    if (le > p && le[-1] == '\r')
      le--;
    const char *s = skip_ws (p, le);
    p = next;
    if (s == le || *s == '#')
      continue;
    if ((le - s > 3 && memcmp (s, "RW ", 3) == 0) ||
        (le - s > 7 && memcmp (s, "RDONLY ", 7) == 0) ||
        (le - s > 9 && memcmp (s, "NOACCESS ", 9) == 0)) {
      if (parse_extent (s, le, d, lineno, err, errlen) == -1)
        goto fail;
      continue;
    }
    const char *eq = memchr (s, '=', le - s);
    if (!eq)
      continue;                 /* not ours to judge */
    const char *ke = eq;
    while (ke > s && (ke[-1] == ' ' || ke[-1] == '\t'))
      ke--;
    size_t kn = ke - s;
    char *v = dup_value (eq + 1, le);
    if (!v) {
      kvm_seterr (err, errlen, "descriptor line %u: invalid value", lineno);
      goto fail;
    }
#define KEY(k) (kn == strlen (k) && memcmp (s, k, kn) == 0)
    if (KEY ("version")) {
      if (strcmp (v, "1") && strcmp (v, "2") && strcmp (v, "3")) {
        kvm_seterr (err, errlen, "descriptor: unsupported version '%.16s'",
                    v);
        free (v);
        goto fail;
      }
      d->version = v[0] - '0';
    }
    else if (KEY ("CID") || KEY ("parentCID")) {
      uint32_t x;
      if (!parse_hex32 (v, &x)) {
        kvm_seterr (err, errlen, "descriptor line %u: invalid %.*s", lineno,
                    (int) kn, s);
        free (v);
        goto fail;
      }
      if (KEY ("CID")) {
        d->cid = x;
        d->has_cid = true;
      }
      else
        d->parent_cid = x;
    }
    else if (KEY ("createType")) {
      free (d->create_type);
      d->create_type = v;
      v = NULL;
    }
    else if (KEY ("parentFileNameHint")) {
      free (d->parent_hint);
      d->parent_hint = v;
      v = NULL;
    }
    else if (KEY ("ddb.adapterType")) {
      free (d->adapter_type);
      d->adapter_type = v;
      v = NULL;
    }
#undef KEY
    free (v);
  }
  if (!d->create_type) {
    kvm_seterr (err, errlen, "descriptor has no createType");
    goto fail;
  }
  return 0;

 fail:
  vmdk_desc_free (d);
  errno = EINVAL;
  return -1;
}
