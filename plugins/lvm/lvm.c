/* SPDX-License-Identifier: BSD-3-Clause */
/* nbdkit lvm plugin: serve the LVs of an LVM2 volume group, read from the
 * PVs' on-disk metadata without device-mapper.  Thin adapter over
 * common/lvm (lvm.h).
 */
#define NBDKIT_API_VERSION 2
#define THREAD_MODEL NBDKIT_THREAD_MODEL_PARALLEL
#include <nbdkit-plugin.h>

#include <errno.h>
#include <glob.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bdev/bdev.h"
#include "bdev/bdev_nbdkit.h"
#include "kvm_version.h"
#include "lvm/lvm.h"
#include "lvm/lvm_disk.h"
#include "util/log.h"

static char **pvs;              /* pv= paths after glob expansion */
static bool *pv_optional;       /* came from a glob pattern */
static size_t npvs;
static char *vg_name;
static char *default_lv;
static bool readonly_opt;
static bool degraded_opt;
static unsigned recheck_ms = 1000;
static struct lvm_vgset *vgset;

static void
lvm_load (void)
{
  kvm_log_set (nbdkit_verror, nbdkit_vdebug);
}

static void
lvm_unload (void)
{
  lvm_vgset_close (vgset);
  for (size_t i = 0; i < npvs; i++)
    free (pvs[i]);
  free (pvs);
  free (pv_optional);
  free (vg_name);
  free (default_lv);
}

static int
add_pv (const char *path, bool optional)
{
  char **p = realloc (pvs, (npvs + 1) * sizeof *pvs);
  bool *o;
  if (!p) {
    nbdkit_error ("realloc: %m");
    return -1;
  }
  pvs = p;
  o = realloc (pv_optional, (npvs + 1) * sizeof *o);
  if (!o) {
    nbdkit_error ("realloc: %m");
    return -1;
  }
  pv_optional = o;
  if (!(pvs[npvs] = nbdkit_realpath (path)))
    return -1;
  pv_optional[npvs] = optional;
  npvs++;
  return 0;
}

static int
lvm_config (const char *key, const char *value)
{
  if (strcmp (key, "pv") == 0) {
    if (strpbrk (value, "*?[")) {
      glob_t g;
      int r = glob (value, 0, NULL, &g);
      if (r == GLOB_NOMATCH) {
        nbdkit_error ("pv=%s: no file matches", value);
        return -1;
      }
      if (r != 0) {
        nbdkit_error ("pv=%s: glob failed", value);
        return -1;
      }
      for (size_t i = 0; i < g.gl_pathc; i++)
        if (add_pv (g.gl_pathv[i], true) == -1) {
          globfree (&g);
          return -1;
        }
      globfree (&g);
      return 0;
    }
    return add_pv (value, false);
  }
  else if (strcmp (key, "vg") == 0) {
    free (vg_name);
    if (!(vg_name = strdup (value))) {
      nbdkit_error ("strdup: %m");
      return -1;
    }
  }
  else if (strcmp (key, "lv") == 0) {
    free (default_lv);
    if (!(default_lv = strdup (value))) {
      nbdkit_error ("strdup: %m");
      return -1;
    }
  }
  else if (strcmp (key, "readonly") == 0) {
    int r = nbdkit_parse_bool (value);
    if (r == -1)
      return -1;
    readonly_opt = r;
  }
  else if (strcmp (key, "recheck") == 0) {
    if (nbdkit_parse_unsigned ("recheck", value, &recheck_ms) == -1)
      return -1;
  }
  else if (strcmp (key, "degraded") == 0) {
    int r = nbdkit_parse_bool (value);
    if (r == -1)
      return -1;
    degraded_opt = r;
  }
  else {
    nbdkit_error ("unknown parameter '%s'", key);
    return -1;
  }
  return 0;
}

static int
lvm_config_complete (void)
{
  if (npvs == 0) {
    nbdkit_error ("at least one pv=DEVICE|FILE parameter is required");
    return -1;
  }
  return 0;
}

#define lvm_config_help \
  "pv=<PATH>         (required, repeatable) A PV: block device or file;\n" \
  "                  glob patterns are allowed (non-PVs are skipped).\n" \
  "vg=<NAME>         The volume group (needed if the PVs hold several).\n" \
  "lv=<NAME>         The LV served as the default export.\n" \
  "readonly=true     Open the PVs read-only.\n" \
  "recheck=<MS>      Re-check the metadata every MS ms while serving\n" \
  "                  (default 1000, 0 = only on new connections).\n" \
  "degraded=true     Serve a mirror/raid1 LV from another leg when its\n" \
  "                  first leg's PV is missing."

static void
lvm_dump_plugin (void)
{
  printf ("lvm_max_metadata_size=%u\n", LVM_MAX_METADATA);
  printf ("lvm_segment_types=linear,striped,mirror(ro),raid1(ro),zero,error\n");
}

static int
lvm_get_ready (void)
{
  struct lvm_vgset_opts o = {
    .readonly = readonly_opt,
    .vg_name = vg_name,
    .recheck_ms = recheck_ms,
    .degraded = degraded_opt,
  };
  vgset = lvm_vgset_open ((const char *const *) pvs, pv_optional, npvs, &o);
  if (!vgset)
    return -1;
  char name[256];
  uint64_t seqno;
  lvm_vgset_info (vgset, name, sizeof name, &seqno);
  nbdkit_debug ("serving volume group %s (metadata seqno %" PRIu64 ")%s",
                name, seqno, lvm_vgset_writable (vgset) ? "" : " read-only");
  return 0;
}

struct list_ctx {
  struct nbdkit_exports *exports;
  const char *vg;
  size_t count;                 /* exports added */
};

/* nbdkit refuses more exports than this in one listing (MAX_EXPORTS in
 * its server/exports.c).
 */
#define LVM_MAX_EXPORTS 10000

static int
add_export (void *opaque, const char *name, uint64_t size,
            const char *layout)
{
  struct list_ctx *c = opaque;
  char desc[512];
  if (c->count >= LVM_MAX_EXPORTS) {
    nbdkit_error ("warning: volume group %s has more than %d LVs to list: "
                  "listing the first %d (the others can still be opened "
                  "by name)", c->vg, LVM_MAX_EXPORTS, LVM_MAX_EXPORTS);
    return 1;
  }
  snprintf (desc, sizeof desc, "LV %s/%s, %" PRIu64 " bytes, %s", c->vg,
            name, size, layout);
  /* Names are at most 127 bytes (lvm_lv_name_problem) and descriptions
   * 511, far below nbdkit's 4096: a failure here is out of memory.  The
   * LVs listed so far are still returned.
   */
  if (nbdkit_add_export (c->exports, name, desc) == -1) {
    nbdkit_error ("warning: LV %s not listed", name);
    return 1;
  }
  c->count++;
  return 0;
}

static int
lvm_list_exports (int readonly, int is_tls, struct nbdkit_exports *exports)
{
  char name[256];
  uint64_t seqno;
  (void) readonly; (void) is_tls;
  lvm_vgset_info (vgset, name, sizeof name, &seqno);
  struct list_ctx c = { exports, name, 0 };
  return lvm_vgset_list (vgset, add_export, &c);
}

static const char *
lvm_default_export (int readonly, int is_tls)
{
  (void) readonly; (void) is_tls;
  return default_lv ? default_lv : "";
}

/* Each connection opens its own LV bdev over the shared PV files. */
static void *
lvm_open (int readonly)
{
  const char *name = nbdkit_export_name ();
  struct bdev_nbdkit_handle *h;

  /* A context that a filter opened shared (the thin filter asking for
   * the pool's size again) has no connection, hence no export name:
   * nbdkit logs "no connection in this thread" and the default LV is
   * opened; the thin filter checks that it is its pool before using it.
   */
  if (!name)
    nbdkit_debug ("lvm: no export name (a shared context): the default "
                  "LV %s", default_lv ? default_lv : "(none: lv= unset)");
  if (!name || !*name)
    name = default_lv;
  if (!name) {
    nbdkit_error ("no export name given and no lv= default: name an LV "
                  "(list them with nbdinfo --list)");
    return NULL;
  }
  h = calloc (1, sizeof *h);
  if (!h) {
    nbdkit_error ("calloc: %m");
    return NULL;
  }
  h->bd = lvm_lv_open (vgset, name, readonly);
  if (!h->bd) {
    free (h);
    return NULL;
  }
  h->readonly = readonly;
  return h;
}

static void
lvm_close (void *handle)
{
  struct bdev_nbdkit_handle *h = handle;
  bdev_close (h->bd);
  free (h);
}

static struct nbdkit_plugin plugin = {
  .name              = "lvm",
  .version           = KVM_VERSION,
  .longname          = "nbdkit LVM2 volume group plugin",
  .description       = "Serve the LVs of an LVM2 VG read from its PVs",
  .load              = lvm_load,
  .unload            = lvm_unload,
  .config            = lvm_config,
  .config_complete   = lvm_config_complete,
  .config_help       = lvm_config_help,
  .magic_config_key  = "pv",
  .dump_plugin       = lvm_dump_plugin,
  .get_ready         = lvm_get_ready,
  .list_exports      = lvm_list_exports,
  .default_export    = lvm_default_export,
  .open              = lvm_open,
  .close             = lvm_close,
  BDEV_NBDKIT_PLUGIN_CALLBACKS,
};

NBDKIT_REGISTER_PLUGIN (plugin)
