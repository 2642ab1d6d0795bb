/* SPDX-License-Identifier: BSD-3-Clause */
/* Creating VHDX images: dynamic, fixed and differencing.
 *
 * Layout: file identifier, two headers, two region tables in the first
 * MiB; a 1 MiB log at 1 MiB (empty: the log GUID is zero); the metadata
 * region at 2 MiB; the BAT at 3 MiB; payload blocks of a fixed disk after
 * the BAT, 1 MiB-aligned.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bdev/formats.h"
#include "util/checked.h"
#include "util/confine.h"
#include "util/crc32c.h"
#include "util/endian.h"
#include "util/log.h"
#include "vhdx.h"
#include "vhdx_int.h"

#define LOG_OFF  (1 * VHDX_MiB)
#define LOG_LEN  (1 * VHDX_MiB)
#define META_OFF (2 * VHDX_MiB)
#define META_LEN (1 * VHDX_MiB)
#define BAT_OFF  (3 * VHDX_MiB)

static int
pwrite_all (int fd, const void *buf, size_t n, uint64_t off)
{
  const uint8_t *p = buf;
  while (n) {
    ssize_t r = pwrite (fd, p, n, off);
    if (r == -1) {
      if (errno == EINTR)
        continue;
      return -1;
    }
    p += r;
    n -= r;
    off += r;
  }
  return 0;
}

/* UTF-8 (ASCII expected) -> UTF-16LE; returns bytes written. */
static size_t
put_utf16 (uint8_t *dst, const char *s)
{
  size_t n = 0;
  for (; *s; s++, n += 2)
    store_le16 (dst + n, (unsigned char) *s);
  return n;
}

/* relative_path of the parent locator: the way from the child's
 * directory to the parent, both canonical, with Windows separators
 * ("..\\images\\base.vhdx"), so that the pair can move together and
 * Hyper-V can follow it.  No absolute_win32_path is written: a Linux path
 * is not one.  Returns a malloc'd string, or NULL with errno set.
 */
static char *
parent_relative_path (const char *child, const char *parent)
{
  char *cdir = confine_image_dir (child), *cpar = NULL, *r = NULL;
  cpar = realpath (parent, NULL);
  if (!cdir || !cpar)
    goto out;
  /* The components the two have in common ("/" counts as none). */
  size_t i = 0, common = 0;
  for (;;) {
    char a = cdir[i], b = cpar[i];
    if ((a == '/' || a == '\0') && b == '/')
      common = i;
    if (a != b || a == '\0')
      break;
    i++;
  }
  size_t ups = 0;
  for (const char *c = cdir + common; *c; c++)
    ups += *c == '/' && c[1] != '\0';
  const char *rest = cpar + common + 1;
  size_t len = 3 * ups + strlen (rest) + 1;
  r = malloc (len);
  if (!r)
    goto out;
  char *o = r;
  for (size_t k = 0; k < ups; k++, o += 3)
    memcpy (o, "..\\", 3);
  for (const char *c = rest; *c; c++)
    *o++ = *c == '/' ? '\\' : *c;
  *o = '\0';
 out:;
  int err = errno;
  free (cdir);
  free (cpar);
  errno = err;
  return r;
}

/* The parent locator item: returns its length. */
static size_t
make_locator (uint8_t *p, size_t cap, const char *linkage,
              const char *relative)
{
  const char *keys[2] = { "parent_linkage", "relative_path" };
  const char *vals[2] = { linkage, relative };
  unsigned n = 2;
  size_t pos = 20 + 12 * n;
  memcpy (p, vhdx_guid_locator_type, 16);
  store_le16 (p + 18, n);
  unsigned k = 0;
  for (int i = 0; i < 2; i++) {
    if (pos + 2 * (strlen (keys[i]) + strlen (vals[i])) > cap)
      return 0;
    uint8_t *e = p + 20 + 12 * k++;
    size_t kl = put_utf16 (p + pos, keys[i]);
    store_le32 (e, pos);
    store_le16 (e + 8, kl);
    pos += kl;
    size_t vl = put_utf16 (p + pos, vals[i]);
    store_le32 (e + 4, pos);
    store_le16 (e + 10, vl);
    pos += vl;
  }
  return pos;
}

static void
put_header (uint8_t *h, uint64_t seq, const uint8_t *fg, const uint8_t *dg)
{
  memset (h, 0, VHDX_HEADER_SIZE);
  memcpy (h + H_SIG, "head", 4);
  store_le64 (h + H_SEQ, seq);
  memcpy (h + H_FILE_GUID, fg, 16);
  memcpy (h + H_DATA_GUID, dg, 16);
  store_le16 (h + H_LOG_VER, 0);
  store_le16 (h + H_VERSION, 1);
  store_le32 (h + H_LOG_LEN, LOG_LEN);
  store_le64 (h + H_LOG_OFF, LOG_OFF);
  store_le32 (h + H_CKSUM, crc32c (0, h, VHDX_HEADER_SIZE));
}

int
vhdx_create (const char *path, const struct vhdx_create_opts *o)
{
  uint32_t bs = o->block_size ? o->block_size : 32 * VHDX_MiB;
  uint32_t lss = o->logical_sector_size ? o->logical_sector_size : 512;
  uint32_t pss = o->physical_sector_size ? o->physical_sector_size : 4096;
  uint64_t size = o->size;
  uint8_t pguid[16];
  char linkage[39];
  char *relative = NULL;
  uint8_t *buf = NULL, *bat = NULL;
  int fd = -1, r = -1;

  if (o->parent) {
    struct bdev_open_opts po = { .readonly = true, .allow_any_path = true };
    static const char *const fo[] = { "vhdx.parent=none", NULL };
    po.format_opts = fo;
    struct bdev *p = bdev_open (o->parent, "vhdx", &po, 1);
    if (!p)
      return -1;
    if (!vhdx_is (p)) {
      bdev_close (p);
      kvm_error ("%s: the parent of a VHDX differencing disk must be VHDX",
                 o->parent);
      errno = EINVAL;
      return -1;
    }
    struct vhdx *pv = (struct vhdx *) p;
    memcpy (pguid, pv->data_guid, 16);
    if (!size)
      size = pv->vsize;
    if (!o->logical_sector_size)
      lss = pv->lss;
    if (!o->physical_sector_size)
      pss = pv->pss;
    if (lss != pv->lss || size != pv->vsize) {
      kvm_error ("%s: a differencing disk must have its parent's size and "
                 "logical sector size (%" PRIu64 ", %" PRIu32 ")", path,
                 pv->vsize, pv->lss);
      bdev_close (p);
      errno = EINVAL;
      return -1;
    }
    bdev_close (p);
    vhdx_guid_str (pguid, linkage);
    if (confine_is_url (o->parent)) {
      kvm_error ("%s: the parent of a new differencing disk must be a local "
                 "file", o->parent);
      errno = EINVAL;
      return -1;
    }
    relative = parent_relative_path (path, o->parent);
    if (!relative) {
      kvm_error ("%s: finding the way to the parent %s: %m", path, o->parent);
      return -1;
    }
  }
  if (!is_power_of_2 (bs) || bs < VHDX_MiB || bs > 256 * VHDX_MiB) {
    kvm_error ("%s: block size %" PRIu32 " must be a power of 2 between 1 "
               "MiB and 256 MiB", path, bs);
    errno = EINVAL;
    goto out;
  }
  if ((lss != 512 && lss != 4096) || (pss != 512 && pss != 4096)) {
    kvm_error ("%s: sector sizes must be 512 or 4096", path);
    errno = EINVAL;
    goto out;
  }
  if (size == 0 || size % lss || size > (UINT64_C (64) << 40)) {
    kvm_error ("%s: size %" PRIu64 " must be a non-zero multiple of the "
               "logical sector size %" PRIu32 ", at most 64 TiB", path, size,
               lss);
    errno = EINVAL;
    goto out;
  }
  uint64_t cr = ((UINT64_C (1) << 23) * lss) / bs;
  uint64_t nblocks = div_round_up64 (size, bs);
  uint64_t nbat = o->parent ? div_round_up64 (nblocks, cr) * (cr + 1)
    : nblocks + (nblocks - 1) / cr;
  uint64_t bat_len, payload;
  if (!ck_round_up64 (nbat * 8, VHDX_MiB, &bat_len) ||
      bat_len > UINT32_MAX || !ck_add64 (BAT_OFF, bat_len, &payload)) {
    kvm_error ("%s: BAT too large", path);
    errno = EFBIG;
    goto out;
  }

  buf = calloc (1, META_LEN);
  bat = calloc (1, bat_len);
  if (!buf || !bat) {
    errno = ENOMEM;
    kvm_error ("%s: out of memory", path);
    goto out;
  }
  fd = open (path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd == -1) {
    kvm_error ("%s: create: %m", path);
    goto out;
  }

  /* File identifier. */
  memcpy (buf, "vhdxfile", 8);
  put_utf16 (buf + 8, "nbdkit-kvm");
  if (pwrite_all (fd, buf, 64 * VHDX_KiB, 0) == -1)
    goto ioerr;

  /* Headers. */
  uint8_t fg[16], dg[16], h[VHDX_HEADER_SIZE];
  vhdx_new_guid (fg);
  vhdx_new_guid (dg);
  put_header (h, 0, fg, dg);
  if (pwrite_all (fd, h, sizeof h, VHDX_HEADER1_OFF) == -1)
    goto ioerr;
  put_header (h, 1, fg, dg);
  if (pwrite_all (fd, h, sizeof h, VHDX_HEADER2_OFF) == -1)
    goto ioerr;

  /* Region tables. */
  memset (buf, 0, VHDX_REGION_SIZE);
  memcpy (buf, "regi", 4);
  store_le32 (buf + 8, 2);
  memcpy (buf + 16, vhdx_guid_bat, 16);
  store_le64 (buf + 32, BAT_OFF);
  store_le32 (buf + 40, bat_len);
  store_le32 (buf + 44, 1);
  memcpy (buf + 48, vhdx_guid_metadata, 16);
  store_le64 (buf + 64, META_OFF);
  store_le32 (buf + 72, META_LEN);
  store_le32 (buf + 76, 1);
  store_le32 (buf + 4, crc32c (0, buf, VHDX_REGION_SIZE));
  if (pwrite_all (fd, buf, VHDX_REGION_SIZE, VHDX_REGION1_OFF) == -1 ||
      pwrite_all (fd, buf, VHDX_REGION_SIZE, VHDX_REGION2_OFF) == -1)
    goto ioerr;

  /* Metadata. */
  memset (buf, 0, META_LEN);
  memcpy (buf, "metadata", 8);
  unsigned n = 0;
  uint32_t ioff = VHDX_METATAB_SIZE;
#define ITEM(guid, len, flags) do {                     \
    uint8_t *e = buf + 32 + 32 * n++;                   \
    memcpy (e, guid, 16);                               \
    store_le32 (e + 16, ioff);                          \
    store_le32 (e + 20, len);                           \
    store_le32 (e + 24, flags);                         \
  } while (0)
  ITEM (vhdx_guid_file_params, 8, 4);
  store_le32 (buf + ioff, bs);
  store_le32 (buf + ioff + 4, (o->fixed ? 1 : 0) | (o->parent ? 2 : 0));
  ioff += 4096;
  ITEM (vhdx_guid_disk_size, 8, 6);
  store_le64 (buf + ioff, size);
  ioff += 4096;
  ITEM (vhdx_guid_page83, 16, 6);
  vhdx_new_guid (buf + ioff);
  ioff += 4096;
  ITEM (vhdx_guid_lss, 4, 6);
  store_le32 (buf + ioff, lss);
  ioff += 4096;
  ITEM (vhdx_guid_pss, 4, 6);
  store_le32 (buf + ioff, pss);
  ioff += 4096;
  if (o->parent) {
    size_t ll = make_locator (buf + ioff, META_LEN - ioff, linkage, relative);
    if (ll == 0) {
      kvm_error ("%s: parent path too long", path);
      errno = ENAMETOOLONG;
      goto err;
    }
    ITEM (vhdx_guid_parent_locator, ll, 4);
  }
#undef ITEM
  store_le16 (buf + 10, n);
  if (pwrite_all (fd, buf, META_LEN, META_OFF) == -1)
    goto ioerr;

  /* BAT, and the file's size. */
  uint64_t end = payload;
  if (o->fixed) {
    uint64_t at = payload;
    for (uint64_t b = 0; b < nblocks; b++) {
      store_le64 (bat + 8 * (b + b / cr), PB_FULLY_PRESENT | at);
      at += bs;
    }
    end = at;
  }
  if (pwrite_all (fd, bat, bat_len, BAT_OFF) == -1)
    goto ioerr;
  if (ftruncate (fd, end) == -1 || fsync (fd) == -1)
    goto ioerr;
  if (close (fd) == -1) {
    fd = -1;
    goto ioerr;
  }
  fd = -1;
  r = 0;
  goto out;
 ioerr:
  kvm_error ("%s: writing the new image: %m", path);
 err:
  if (fd != -1) {
    close (fd);
    fd = -1;
  }
  unlink (path);
 out:
  if (fd != -1)
    close (fd);
  free (relative);
  free (buf);
  free (bat);
  return r;
}

static int
parse_u32 (const char *path, const char *key, const char *v, uint32_t *out)
{
  char *end;
  errno = 0;
  unsigned long long x = strtoull (v, &end, 0);
  uint64_t mul = 1;
  if (*end == 'k' || *end == 'K') mul = 1024, end++;
  else if (*end == 'M' || *end == 'm') mul = 1024 * 1024, end++;
  if (errno || *end || end == v || x > UINT32_MAX / mul) {
    kvm_error ("%s: bad %s '%s'", path, key, v);
    errno = EINVAL;
    return -1;
  }
  *out = x * mul;
  return 0;
}

int
vhdx_create_options (const char *path, uint64_t size,
                     const char *const *options)
{
  struct vhdx_create_opts o = { .size = size };
  bool diff = false;
  for (size_t i = 0; options && options[i]; i++) {
    const char *kv = options[i], *eq = strchr (kv, '=');
    if (!eq) {
      kvm_error ("%s: bad creation option '%s'", path, kv);
      errno = EINVAL;
      return -1;
    }
    size_t kl = eq - kv;
    const char *val = eq + 1;
#define KEY(s) (kl == strlen (s) && strncmp (kv, s, kl) == 0)
    if (KEY ("subformat")) {
      if (strcmp (val, "dynamic") == 0) o.fixed = false;
      else if (strcmp (val, "fixed") == 0) o.fixed = true;
      else if (strcmp (val, "differencing") == 0) diff = true;
      else {
        kvm_error ("%s: subformat must be dynamic, fixed or differencing",
                   path);
        errno = EINVAL;
        return -1;
      }
    }
    else if (KEY ("block_size")) {
      if (parse_u32 (path, "block_size", val, &o.block_size) == -1)
        return -1;
    }
    else if (KEY ("logical_sector_size")) {
      if (parse_u32 (path, "logical_sector_size", val,
                     &o.logical_sector_size) == -1)
        return -1;
    }
    else if (KEY ("physical_sector_size")) {
      if (parse_u32 (path, "physical_sector_size", val,
                     &o.physical_sector_size) == -1)
        return -1;
    }
    else if (KEY ("parent") || KEY ("backing_file"))
      o.parent = val;
    else {
      kvm_error ("%s: unknown vhdx creation option '%s'", path, kv);
      errno = EINVAL;
      return -1;
    }
#undef KEY
  }
  if (diff && !o.parent) {
    kvm_error ("%s: a differencing disk needs parent=", path);
    errno = EINVAL;
    return -1;
  }
  if (o.parent && o.fixed) {
    kvm_error ("%s: a differencing disk cannot be fixed", path);
    errno = EINVAL;
    return -1;
  }
  /* A size in whole logical sectors, rounded up as qemu-img and the
   * other format plugins round it (0: the parent's size).
   */
  uint64_t lss = o.logical_sector_size ? o.logical_sector_size : 512;
  if (is_power_of_2 (lss))      /* else refused by vhdx_create */
    (void) ck_round_up64 (o.size, lss, &o.size);  /* overflow: refused too */
  return vhdx_create (path, &o);
}
