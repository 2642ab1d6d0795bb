/* SPDX-License-Identifier: BSD-3-Clause */
/* Creating empty VMDK images in the layouts qemu-img writes:
 *   monolithicSparse      one hosted sparse file, descriptor embedded
 *   streamOptimized       the same with compressed-grain flags (version 3)
 *   monolithicFlat        descriptor + NAME-flat.vmdk
 *   twoGbMaxExtentSparse  descriptor + NAME-s001.vmdk ... (2 GiB each)
 *   twoGbMaxExtentFlat    descriptor + NAME-f001.vmdk ...
 * Sparse files get every grain table preallocated (primary and redundant).
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "vmdk.h"
#include "vmdk_int.h"
#include "util/checked.h"
#include "util/endian.h"
#include "util/log.h"

#define GRAIN_SECTORS   128             /* 64 KiB */
#define GTES            512
#define DESC_OFFSET     1
#define DESC_SECTORS    20
#define SPLIT_BYTES     (2ull * 1024 * 1024 * 1024)

struct create_opts {
  const char *subformat;
  const char *adapter;
  bool zeroed_grain;
  unsigned hwversion;
};

static int
write_all (int fd, const void *buf, size_t len, uint64_t off, const char *path)
{
  const char *p = buf;
  while (len) {
    ssize_t r = pwrite (fd, p, len, off);
    if (r == -1) {
      kvm_error ("%s: write: %m", path);
      return -1;
    }
    p += r;
    len -= r;
    off += r;
  }
  return 0;
}

static int
create_file (const char *path)
{
  int fd = open (path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd == -1)
    kvm_error ("%s: create: %m", path);
  return fd;
}

/* A hosted sparse file of CAP bytes (a multiple of 512); DESC (may be
 * NULL) embedded.
 */
static int
create_sparse (const char *path, uint64_t cap, bool compressed,
               bool zeroed, const char *desc)
{
  uint64_t grains = div_round_up64 (cap, GRAIN_SECTORS * SECTOR);
  uint64_t ngt = div_round_up64 (grains, GTES);
  uint64_t gd_sectors = div_round_up64 (ngt * 4, SECTOR);
  uint64_t gt_sectors = GTES * 4 / SECTOR;
  uint64_t rgd = DESC_OFFSET + DESC_SECTORS;
  uint64_t rgt = rgd + gd_sectors;
  uint64_t gd = rgt + ngt * gt_sectors;
  uint64_t gt = gd + gd_sectors;
  uint64_t end = gt + ngt * gt_sectors;
  uint64_t overhead;
  ck_round_up64 (end, GRAIN_SECTORS, &overhead);
  if (overhead > UINT32_MAX) {
    kvm_error ("%s: image too large for a sparse extent", path);
    errno = EFBIG;
    return -1;
  }
  if (desc && strlen (desc) > DESC_SECTORS * SECTOR) {
    kvm_error ("%s: descriptor too long", path);
    errno = EINVAL;
    return -1;
  }

  uint8_t h[SECTOR] = { 0 };
  store_le32 (h, SPARSE_MAGIC);
  store_le32 (h + H_VERSION, compressed ? 3 : zeroed ? 2 : 1);
  store_le32 (h + H_FLAGS, FLAG_NL_TEST | FLAG_RGD |
              (zeroed ? FLAG_ZERO_GRAIN : 0) |
              (compressed ? FLAG_COMPRESSED | FLAG_MARKERS : 0));
  store_le64 (h + H_CAPACITY, cap / SECTOR);
  store_le64 (h + H_GRAIN, GRAIN_SECTORS);
  store_le64 (h + H_DESC_OFFSET, DESC_OFFSET);
  store_le64 (h + H_DESC_SIZE, DESC_SECTORS);
  store_le32 (h + H_NUM_GTES, GTES);
  store_le64 (h + H_RGD_OFFSET, rgd);
  store_le64 (h + H_GD_OFFSET, gd);
  store_le64 (h + H_OVERHEAD, overhead);
  memcpy (h + H_NL_CHARS, "\n \r\n", 4);
  store_le16 (h + H_COMPRESS_ALG, compressed ? 1 : 0);

  int fd = create_file (path);
  if (fd == -1)
    return -1;
  size_t dirbytes = gd_sectors * SECTOR;
  uint32_t *dir = calloc (1, dirbytes);
  if (!dir) {
    kvm_error ("%s: out of memory", path);
    goto fail;
  }
  if (write_all (fd, h, SECTOR, 0, path) == -1 ||
      (desc && write_all (fd, desc, strlen (desc), DESC_OFFSET * SECTOR,
                          path) == -1))
    goto fail;
  for (uint64_t i = 0; i < ngt; i++)
    dir[i] = htole32 (rgt + i * gt_sectors);
  if (write_all (fd, dir, dirbytes, rgd * SECTOR, path) == -1)
    goto fail;
  for (uint64_t i = 0; i < ngt; i++)
    dir[i] = htole32 (gt + i * gt_sectors);
  if (write_all (fd, dir, dirbytes, gd * SECTOR, path) == -1)
    goto fail;
  if (ftruncate (fd, overhead * SECTOR) == -1) {
    kvm_error ("%s: setting the size: %m", path);
    goto fail;
  }
  free (dir);
  if (close (fd) == -1) {
    kvm_error ("%s: close: %m", path);
    unlink (path);
    return -1;
  }
  return 0;
 fail:
  free (dir);
  close (fd);
  unlink (path);
  return -1;
}

static int
create_flat (const char *path, uint64_t size)
{
  int fd = create_file (path);
  if (fd == -1)
    return -1;
  if (ftruncate (fd, size) == -1) {
    kvm_error ("%s: setting the size: %m", path);
    close (fd);
    unlink (path);
    return -1;
  }
  return close (fd);
}

/* The descriptor text, extents given as already formatted lines. */
static char *
make_desc (const struct create_opts *o, uint64_t size, const char *extents)
{
  struct timespec ts;
  clock_gettime (CLOCK_REALTIME, &ts);
  uint32_t cid = (uint32_t) (ts.tv_nsec ^ ts.tv_sec ^ getpid ());
  if (cid == 0xffffffff)
    cid = 0;
  unsigned heads = strcmp (o->adapter, "ide") == 0 ? 16 : 255;
  uint64_t cyl = size / SECTOR / (heads * 63);
  if (cyl > 16383)
    cyl = 16383;
  char *d;
  if (asprintf (&d,
                "# Disk DescriptorFile\n"
                "version=1\n"
                "CID=%08" PRIx32 "\n"
                "parentCID=ffffffff\n"
                "createType=\"%s\"\n"
                "\n"
                "# Extent description\n"
                "%s"
                "\n"
                "# The Disk Data Base\n"
                "#DDB\n"
                "\n"
                "ddb.virtualHWVersion = \"%u\"\n"
                "ddb.geometry.cylinders = \"%" PRIu64 "\"\n"
                "ddb.geometry.heads = \"%u\"\n"
                "ddb.geometry.sectors = \"63\"\n"
                "ddb.adapterType = \"%s\"\n",
                cid, o->subformat, extents, o->hwversion, cyl, heads,
                o->adapter) == -1)
    return NULL;
  return d;
}

static const char *
base_name (const char *path)
{
  const char *s = strrchr (path, '/');
  return s ? s + 1 : path;
}

/* PATH without ".vmdk" + SUFFIX (e.g. "-s001.vmdk"); *REL: the same
 * without the directory.
 */
static char *
extent_path (const char *path, const char *suffix, char **rel)
{
  size_t n = strlen (path);
  if (n > 5 && strcmp (path + n - 5, ".vmdk") == 0)
    n -= 5;
  char *p;
  if (asprintf (&p, "%.*s%s", (int) n, path, suffix) == -1)
    return NULL;
  *rel = strdup (base_name (p));
  if (!*rel) {
    free (p);
    return NULL;
  }
  return p;
}

static int
append (char **s, const char *fmt, ...)
  __attribute__ ((format (printf, 2, 3)));

static int
append (char **s, const char *fmt, ...)
{
  va_list ap;
  char *t;
  va_start (ap, fmt);
  int r = vasprintf (&t, fmt, ap);
  va_end (ap);
  if (r == -1)
    return -1;
  char *n;
  if (asprintf (&n, "%s%s", *s ? *s : "", t) == -1) {
    free (t);
    return -1;
  }
  free (t);
  free (*s);
  *s = n;
  return 0;
}

static int
write_desc_file (const char *path, const char *desc)
{
  int fd = create_file (path);
  if (fd == -1)
    return -1;
  if (write_all (fd, desc, strlen (desc), 0, path) == -1) {
    close (fd);
    unlink (path);
    return -1;
  }
  return close (fd);
}

static int
create_split (const char *path, uint64_t size, const struct create_opts *o,
              bool sparse, bool split)
{
  char *lines = NULL, *desc = NULL;
  char **made = NULL;
  size_t nmade = 0;
  int r = -1;
  uint64_t chunk = split ? SPLIT_BYTES : size;
  uint64_t n = div_round_up64 (size, chunk);

  made = calloc (n, sizeof *made);
  if (!made)
    goto out;
  for (uint64_t i = 0; i < n; i++) {
    uint64_t len = size - i * chunk < chunk ? size - i * chunk : chunk;
    char suffix[32], *rel;
    if (split)
      snprintf (suffix, sizeof suffix, "-%c%03" PRIu64 ".vmdk",
                sparse ? 's' : 'f', i + 1);
    else
      snprintf (suffix, sizeof suffix, "-flat.vmdk");
    char *p = extent_path (path, suffix, &rel);
    if (!p)
      goto out;
    made[nmade++] = p;
    int cr = sparse ? create_sparse (p, len, false, o->zeroed_grain, NULL)
      : create_flat (p, len);
    if (cr == -1 ||
        append (&lines, "RW %" PRIu64 " %s \"%s\"%s\n", len / SECTOR,
                sparse ? "SPARSE" : "FLAT", rel, sparse ? "" : " 0") == -1) {
      free (rel);
      if (cr == -1)
        nmade--, free (p);
      goto out;
    }
    free (rel);
  }
  if (!(desc = make_desc (o, size, lines)))
    goto out;
  r = write_desc_file (path, desc);
 out:
  if (r == -1) {
    if (errno == 0)
      errno = ENOMEM;
    for (size_t i = 0; i < nmade; i++)
      unlink (made[i]);
  }
  for (size_t i = 0; i < nmade; i++)
    free (made[i]);
  free (made);
  free (lines);
  free (desc);
  return r;
}

static int
bad_option (const char *path, const char *opt)
{
  kvm_error ("%s: unknown or invalid vmdk creation option '%s'", path, opt);
  errno = EINVAL;
  return -1;
}

int
vmdk_create_options (const char *path, uint64_t size,
                     const char *const *options)
{
  struct create_opts o = { .subformat = "monolithicSparse",
                           .adapter = "ide", .hwversion = 4 };
  for (size_t i = 0; options && options[i]; i++) {
    const char *opt = options[i], *eq = strchr (opt, '=');
    if (!eq)
      return bad_option (path, opt);
    const char *val = eq + 1;
    size_t kn = eq - opt;
#define KEY(k) (kn == strlen (k) && strncmp (opt, k, kn) == 0)
    if (KEY ("subformat")) {
      static const char *const subs[] = {
        "monolithicSparse", "monolithicFlat", "twoGbMaxExtentSparse",
        "twoGbMaxExtentFlat", "streamOptimized", NULL };
      o.subformat = NULL;
      for (size_t j = 0; subs[j]; j++)
        if (strcmp (val, subs[j]) == 0)
          o.subformat = subs[j];
      if (!o.subformat)
        return bad_option (path, opt);
    }
    else if (KEY ("adapter_type") || KEY ("adapter-type")) {
      static const char *const ads[] = {
        "ide", "buslogic", "lsilogic", "legacyESX", NULL };
      o.adapter = NULL;
      for (size_t j = 0; ads[j]; j++)
        if (strcmp (val, ads[j]) == 0)
          o.adapter = ads[j];
      if (!o.adapter)
        return bad_option (path, opt);
    }
    else if (KEY ("zeroed_grain") || KEY ("zeroed-grain")) {
      if (strcmp (val, "on") == 0 || strcmp (val, "true") == 0)
        o.zeroed_grain = true;
      else if (strcmp (val, "off") == 0 || strcmp (val, "false") == 0)
        o.zeroed_grain = false;
      else
        return bad_option (path, opt);
    }
    else if (KEY ("hwversion")) {
      char *end;
      unsigned long v = strtoul (val, &end, 10);
      if (*end || v == 0 || v > 100)
        return bad_option (path, opt);
      o.hwversion = v;
    }
    else
      return bad_option (path, opt);
#undef KEY
  }
  uint64_t sz;
  if (!ck_round_up64 (size, SECTOR, &sz) || sz == 0 ||
      sz > (1ull << 50)) {
    kvm_error ("%s: invalid size %" PRIu64 " for a vmdk image", path, size);
    errno = EINVAL;
    return -1;
  }
  /* Sparse extents get every grain table made now, and the engine keeps
   * at most VMDK_MAX_GT_MEM of them in memory: a larger image could not
   * be opened.
   */
  if (strstr (o.subformat, "Sparse")) {
    uint64_t tables = div_round_up64 (sz, (uint64_t) GRAIN_SECTORS * SECTOR
                                      * GTES);
    if (tables * GTES * 4 > VMDK_MAX_GT_MEM) {
      kvm_error ("%s: a %s image of %" PRIu64 " bytes would have %" PRIu64
                 " MiB of grain tables, more than the %u MiB this plugin "
                 "keeps (at most %" PRIu64 " bytes)", path, o.subformat, sz,
                 (tables * GTES * 4) >> 20, VMDK_MAX_GT_MEM >> 20,
                 (uint64_t) VMDK_MAX_GT_MEM / (GTES * 4) * GTES
                 * GRAIN_SECTORS * SECTOR);
      errno = EFBIG;
      return -1;
    }
  }
  if (strcmp (o.subformat, "monolithicSparse") == 0 ||
      strcmp (o.subformat, "streamOptimized") == 0) {
    bool comp = o.subformat[0] == 's';
    char *lines = NULL, *desc;
    if (append (&lines, "RW %" PRIu64 " SPARSE \"%s\"\n", sz / SECTOR,
                base_name (path)) == -1) {
      errno = ENOMEM;
      return -1;
    }
    desc = make_desc (&o, sz, lines);
    free (lines);
    if (!desc) {
      errno = ENOMEM;
      return -1;
    }
    int r = create_sparse (path, sz, comp, o.zeroed_grain, desc);
    free (desc);
    return r;
  }
  if (strcmp (o.subformat, "monolithicFlat") == 0)
    return create_split (path, sz, &o, false, false);
  if (strcmp (o.subformat, "twoGbMaxExtentSparse") == 0)
    return create_split (path, sz, &o, true, true);
  return create_split (path, sz, &o, false, true);
}
