/* SPDX-License-Identifier: BSD-3-Clause */
/* Volume groups read from their PVs, and LVs as block devices. */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "lvm.h"
#include "lvm_disk.h"
#include "lvm_meta.h"
#include "lvm_text.h"
#include "util/checked.h"
#include "util/log.h"

#define NO_DEV SIZE_MAX
#define ERRLEN 1024
/* Work allowed to one listing of all LVs (see lvm_map_build_budget). */
#define LVM_LIST_BUDGET (2 * (uint64_t) LVM_MAP_BUDGET)

struct dev {
  char *path;
  struct bdev *bd;
  bool optional;
  bool is_pv;                   /* carried a label at the last scan */
  struct lvm_label label;
};

/* Where the committed metadata of each area was: a change means the
 * metadata must be read again.
 */
struct fp {
  size_t dev;
  uint64_t mda_off, toff, tsize;
  uint32_t csum;
  bool ignored, empty;
};

/* One version of the VG metadata, shared by the LVs opened from it. */
struct snap {
  atomic_uint refs;
  uint64_t gen;
  struct lvm_meta_vg *vg;
  size_t *pv_dev;               /* metadata PV index -> device or NO_DEV */
  size_t nfp;
  struct fp *fp;
};

struct lvm_vgset {
  pthread_mutex_t lock;         /* cur, refresh, devs[].label */
  size_t ndev;
  struct dev *devs;
  bool writable;
  bool degraded;                /* opts->degraded */
  char *vg_name;                /* vg= or NULL */
  char vg_uuid[LVM_UUID_LEN + 1];  /* chosen at the first scan */
  unsigned recheck_ms;
  struct snap *cur;
  atomic_uint_fast64_t gen;
  atomic_uint_fast64_t last_check;  /* ms, CLOCK_MONOTONIC_COARSE */
};

static void
snap_put (struct snap *s)
{
  if (s && atomic_fetch_sub (&s->refs, 1) == 1) {
    lvm_meta_free (s->vg);
    free (s->pv_dev);
    free (s->fp);
    free (s);
  }
}

static struct snap *
snap_get (struct lvm_vgset *set)
{
  struct snap *s;
  pthread_mutex_lock (&set->lock);
  s = set->cur;
  atomic_fetch_add (&s->refs, 1);
  pthread_mutex_unlock (&set->lock);
  return s;
}

static uint64_t
now_ms (void)
{
  struct timespec ts;
  clock_gettime (CLOCK_MONOTONIC_COARSE, &ts);
  return (uint64_t) ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* --- scanning ------------------------------------------------------------ */

struct record {                 /* one metadata area with text */
  size_t dev;
  uint64_t mda_off;
  char *text;
  size_t len;
  char *vgname;
  char vguuid[LVM_UUID_LEN + 1];
  uint64_t seqno;
};

static void
free_records (struct record *r, size_t n)
{
  for (size_t i = 0; i < n; i++) {
    free (r[i].text);
    free (r[i].vgname);
  }
  free (r);
}

/* Keep the first error message (truncated to ERRLEN). */
static void
keep_err (char *first_err, const char *msg)
{
  if (first_err[0])
    return;
  size_t n = strlen (msg);
  if (n >= ERRLEN)
    n = ERRLEN - 1;
  memcpy (first_err, msg, n);
  first_err[n] = 0;
}

static int
cmp_fp (const struct fp *a, size_t na, const struct fp *b, size_t nb)
{
  if (na != nb)
    return 1;
  for (size_t i = 0; i < na; i++)
    if (a[i].dev != b[i].dev || a[i].mda_off != b[i].mda_off ||
        a[i].toff != b[i].toff || a[i].tsize != b[i].tsize ||
        a[i].csum != b[i].csum || a[i].ignored != b[i].ignored ||
        a[i].empty != b[i].empty)
      return 1;
  return 0;
}

/* Read labels and mda headers (and texts if WANT_TEXT).  Appends to FP and
 * (with texts) RECS.  Returns -1 only on fatal errors (a required path is
 * not a PV, duplicate PV UUIDs); damaged metadata areas are skipped with
 * their message kept in FIRST_ERR.
 */
static int
scan_devices (struct lvm_vgset *set, bool want_text, struct fp **fpp,
              size_t *nfp, struct record **recp, size_t *nrec,
              char *first_err)
{
  char err[ERRLEN];
  struct fp *fp = NULL;
  struct record *recs = NULL;
  size_t nf = 0, nr = 0;

  for (size_t d = 0; d < set->ndev; d++) {
    struct dev *dv = &set->devs[d];
    int r = lvm_read_label (dv->bd, &dv->label, err, sizeof err);
    if (r == -1 && !dv->optional) {
      kvm_error ("%s", err);
      goto fail;
    }
    dv->is_pv = r == 1;
    if (r != 1) {
      if (!dv->optional) {
        kvm_error ("%s: no LVM2 label found in sectors 0-3 (not a PV; if "
                   "the PV is a partition, give the partition)", dv->path);
        goto fail;
      }
      kvm_debug ("%s: not an LVM2 PV, skipped", dv->path);
      continue;
    }
    for (size_t e = 0; e < d; e++)
      if (set->devs[e].is_pv &&
          strcmp (set->devs[e].label.uuid, dv->label.uuid) == 0) {
        char u[LVM_UUID_LEN + 7];
        lvm_uuid_format (dv->label.uuid, u);
        kvm_error ("%s and %s carry the same PV UUID %s (the same PV "
                   "given twice, e.g. a loop device and its file?)",
                   set->devs[e].path, dv->path, u);
        goto fail;
      }
    for (size_t m = 0; m < dv->label.mda_count; m++) {
      struct lvm_mda_text mt;
      struct fp *nfpp = realloc (fp, (nf + 1) * sizeof *fp);
      if (!nfpp) {
        kvm_error ("out of memory");
        goto fail;
      }
      fp = nfpp;
      if (lvm_read_mda (dv->bd, &dv->label.mda[m], want_text, &mt,
                        err, sizeof err) == -1) {
        kvm_debug ("%s", err);
        keep_err (first_err, err);
        fp[nf++] = (struct fp) { d, dv->label.mda[m].offset, 0, 0, 0,
                                 true, true };
        continue;
      }
      /* A PV header may record an area's size as 0: its own header
       * tells, and every mapped byte must stay out of it.
       */
      if (dv->label.mda[m].size == 0)
        dv->label.mda[m].size = mt.mda_size;
      fp[nf++] = (struct fp) { d, mt.mda_offset, mt.text_offset,
                               mt.text_size, mt.checksum, mt.ignored,
                               mt.empty };
      if (!mt.text)
        continue;

      struct record *nrecs = realloc (recs, (nr + 1) * sizeof *recs);
      if (!nrecs) {
        free (mt.text);
        kvm_error ("out of memory");
        goto fail;
      }
      recs = nrecs;
      struct record *rc = &recs[nr];
      memset (rc, 0, sizeof *rc);
      rc->dev = d;
      rc->mda_off = mt.mda_offset;
      rc->text = mt.text;
      rc->len = mt.text_size;
      nr++;
      /* Only one parsed text at a time (the parser's limits are per
       * text): what is needed to choose is kept, the tree freed, and the
       * chosen text parsed again.
       */
      struct lvm_text *tree = lvm_text_parse (rc->text, rc->len, err,
                                              sizeof err);
      const struct lvm_node *vgsec = NULL;
      size_t nsec = 0;
      if (tree)
        for (const struct lvm_node *c = lvm_text_root (tree)->child; c;
             c = c->next)
          if (c->type == LVM_NODE_SECTION) {
            vgsec = c;
            nsec++;
          }
      int64_t seq;
      if (!tree || nsec != 1 ||
          !lvm_uuid_normalize (lvm_node_get_str (vgsec, "id"), rc->vguuid) ||
          !lvm_node_get_int (vgsec, "seqno", &seq) || seq < 0 ||
          !(rc->vgname = strdup (vgsec->key))) {
        char msg[ERRLEN + 200];
        if (!tree)
          snprintf (msg, sizeof msg, "%s: metadata area at offset %" PRIu64
                    ": cannot parse the metadata text: %s", dv->path,
                    mt.mda_offset, err);
        else
          snprintf (msg, sizeof msg, "%s: metadata area at offset %" PRIu64
                    ": the text does not describe one VG with an id and "
                    "a seqno", dv->path, mt.mda_offset);
        kvm_debug ("%s", msg);
        keep_err (first_err, msg);
        lvm_text_free (tree);
        free (rc->text);
        nr--;
        continue;
      }
      lvm_text_free (tree);
      rc->seqno = seq;
    }
  }
  *fpp = fp;
  *nfp = nf;
  if (recp) {
    *recp = recs;
    *nrec = nr;
  }
  else
    free_records (recs, nr);
  return 0;
 fail:
  free (fp);
  free_records (recs, nr);
  return -1;
}

static void
pv_desc (struct lvm_vgset *set, size_t d, char *buf, size_t len)
{
  char u[LVM_UUID_LEN + 7];
  lvm_uuid_format (set->devs[d].label.uuid, u);
  snprintf (buf, len, "%s (PV UUID %s)", set->devs[d].path, u);
}

/* LV names for messages: a hostile name may be kilobytes long. */
#define SHORT_NAME(n) (int) (strlen (n) > 64 ? 64 : strlen (n)), (n), \
    strlen (n) > 64 ? "..." : ""

/* Visible LVs whose names lvm2 would refuse are not served: say so once
 * per metadata version (at most a few lines).
 */
static void
warn_bad_names (const struct lvm_meta_vg *vg)
{
  size_t n = 0;
  for (size_t i = 0; i < vg->lv_count; i++) {
    const struct lvm_meta_lv *lv = &vg->lvs[i];
    if (!lv->visible || !lv->name_problem)
      continue;
    if (n++ < 5)
      kvm_error ("warning: volume group %s: LV %.*s%s (name of %zu bytes) "
                 "is not served: %s (lvm2 refuses such names)", vg->name,
                 SHORT_NAME (lv->name), strlen (lv->name), lv->name_problem);
  }
  if (n > 5)
    kvm_error ("warning: volume group %s: %zu more LVs with names lvm2 "
               "refuses are not served", vg->name, n - 5);
}

/* Read everything and build a new snapshot (set->lock held). */
static struct snap *
full_scan (struct lvm_vgset *set)
{
  char first_err[ERRLEN] = "";
  struct fp *fp = NULL;
  struct record *recs = NULL;
  size_t nfp = 0, nrec = 0;
  struct snap *s = NULL;
  struct record *best = NULL;

  if (scan_devices (set, true, &fp, &nfp, &recs, &nrec, first_err) == -1)
    return NULL;

  /* Which VG? */
  const char *want_uuid = set->vg_uuid[0] ? set->vg_uuid : NULL;
  if (!want_uuid) {
    const char *found = NULL;
    for (size_t i = 0; i < nrec; i++) {
      if (set->vg_name && strcmp (recs[i].vgname, set->vg_name) != 0)
        continue;
      if (found && strcmp (found, recs[i].vguuid) != 0) {
        if (set->vg_name)
          kvm_error ("two different VGs named %s are on the given PVs "
                     "(%s on %s, %s on %s)", set->vg_name, found,
                     set->devs[best->dev].path, recs[i].vguuid,
                     set->devs[recs[i].dev].path);
        else {
          /* Each distinct name once (compared whole, not as a
           * substring of the list), as many as fit.
           */
          char names[1024] = "";
          for (size_t k = 0; k < nrec; k++) {
            bool dup = false;
            for (size_t j = 0; j < k && !dup; j++)
              dup = strcmp (recs[j].vgname, recs[k].vgname) == 0;
            if (!dup &&
                strlen (names) + strlen (recs[k].vgname) + 3 < sizeof names) {
              if (names[0])
                strcat (names, ", ");
              strcat (names, recs[k].vgname);
            }
          }
          kvm_error ("the PVs hold several volume groups (%s): choose one "
                     "with vg=NAME", names);
        }
        goto out;
      }
      found = recs[i].vguuid;
      best = &recs[i];
    }
    if (!found) {
      if (set->vg_name)
        kvm_error ("volume group %s not found on the given PVs%s%s",
                   set->vg_name, first_err[0] ? "; " : "", first_err);
      else
        kvm_error ("no usable LVM2 metadata found on the given PVs%s%s",
                   first_err[0] ? ": " : "", first_err);
      goto out;
    }
    want_uuid = found;
  }

  /* The newest committed metadata of that VG. */
  best = NULL;
  for (size_t i = 0; i < nrec; i++)
    if (strcmp (recs[i].vguuid, want_uuid) == 0 &&
        (!best || recs[i].seqno > best->seqno))
      best = &recs[i];
  if (!best) {
    kvm_error ("volume group %s (UUID %s): no readable metadata left on "
               "the PVs%s%s", set->cur ? set->cur->vg->name : "?", want_uuid,
               first_err[0] ? ": " : "", first_err);
    goto out;
  }
  for (size_t i = 0; i < nrec; i++) {
    struct record *r = &recs[i];
    if (r == best || strcmp (r->vguuid, want_uuid) != 0)
      continue;
    if (r->seqno == best->seqno &&
        (r->len != best->len || memcmp (r->text, best->text, r->len) != 0)) {
      char a[300], b[300];
      pv_desc (set, best->dev, a, sizeof a);
      pv_desc (set, r->dev, b, sizeof b);
      kvm_error ("volume group %s is inconsistent: the metadata on %s and "
                 "on %s both have seqno %" PRIu64 " but differ; refusing "
                 "to guess (repair with vgck --updatemetadata or "
                 "vgcfgrestore)", best->vgname, a, b, best->seqno);
      goto out;
    }
    if (r->seqno < best->seqno)
      kvm_debug ("%s: metadata area at offset %" PRIu64 " holds old seqno %"
                 PRIu64 " (newest is %" PRIu64 ")", set->devs[r->dev].path,
                 r->mda_off, r->seqno, best->seqno);
  }

  char err[ERRLEN];
  s = calloc (1, sizeof *s);
  if (!s) {
    kvm_error ("out of memory");
    goto out;
  }
  atomic_init (&s->refs, 1);
  struct lvm_text *tree = lvm_text_parse (best->text, best->len, err,
                                          sizeof err);
  s->vg = tree ? lvm_meta_build (lvm_text_root (tree), err, sizeof err)
    : NULL;
  lvm_text_free (tree);
  if (!s->vg) {
    kvm_error ("volume group %s: invalid metadata (seqno %" PRIu64 ", read "
               "from %s): %s", best->vgname, best->seqno,
               set->devs[best->dev].path, err);
    goto fail;
  }
  kvm_debug ("volume group %s: seqno %" PRIu64 " from %s, %zu PVs, %zu LVs",
             s->vg->name, s->vg->seqno, set->devs[best->dev].path,
             s->vg->pv_count, s->vg->lv_count);
  warn_bad_names (s->vg);
  s->pv_dev = malloc (s->vg->pv_count * sizeof *s->pv_dev);
  if (!s->pv_dev) {
    kvm_error ("out of memory");
    goto fail;
  }
  for (size_t p = 0; p < s->vg->pv_count; p++) {
    s->pv_dev[p] = NO_DEV;
    for (size_t d = 0; d < set->ndev; d++)
      if (set->devs[d].is_pv &&
          strcmp (set->devs[d].label.uuid, s->vg->pvs[p].uuid) == 0)
        s->pv_dev[p] = d;
    if (s->pv_dev[p] == NO_DEV) {
      char u[LVM_UUID_LEN + 7];
      lvm_uuid_format (s->vg->pvs[p].uuid, u);
      kvm_debug ("volume group %s: PV %s (UUID %s%s%s) is missing",
                 s->vg->name, s->vg->pvs[p].name, u,
                 s->vg->pvs[p].device ? ", last seen as " : "",
                 s->vg->pvs[p].device ? s->vg->pvs[p].device : "");
    }
  }
  s->fp = fp;
  s->nfp = nfp;
  fp = NULL;
  memcpy (set->vg_uuid, want_uuid, sizeof set->vg_uuid);
  goto out;
 fail:
  snap_put (s);
  s = NULL;
 out:
  free (fp);
  free_records (recs, nrec);
  return s;
}

/* set->lock held. */
static int
refresh_locked (struct lvm_vgset *set)
{
  char first_err[ERRLEN] = "";
  struct fp *fp;
  size_t nfp;
  struct snap *s;

  if (set->cur) {
    if (scan_devices (set, false, &fp, &nfp, NULL, NULL, first_err) == -1)
      return -1;
    int changed = cmp_fp (fp, nfp, set->cur->fp, set->cur->nfp);
    free (fp);
    if (!changed)
      return 0;
  }
  s = full_scan (set);
  if (!s)
    return -1;
  if (set->cur && set->cur->vg->seqno == s->vg->seqno &&
      cmp_fp (s->fp, s->nfp, set->cur->fp, set->cur->nfp) == 0) {
    snap_put (s);
    return 0;
  }
  if (set->cur)
    kvm_debug ("volume group %s: metadata changed (seqno %" PRIu64 " -> %"
               PRIu64 ")", s->vg->name, set->cur->vg->seqno, s->vg->seqno);
  s->gen = atomic_fetch_add (&set->gen, 1) + 1;
  snap_put (set->cur);
  set->cur = s;
  return 0;
}

int
lvm_vgset_refresh (struct lvm_vgset *set)
{
  int r;
  pthread_mutex_lock (&set->lock);
  r = refresh_locked (set);
  pthread_mutex_unlock (&set->lock);
  atomic_store (&set->last_check, now_ms ());
  return r;
}

/* Time-based re-check on the request path; at most one thread does it,
 * the others carry on with what they have.
 */
static void
maybe_refresh (struct lvm_vgset *set)
{
  if (set->recheck_ms == 0)
    return;
  uint64_t now = now_ms ();
  uint_fast64_t last = atomic_load (&set->last_check);
  if (now - last < set->recheck_ms)
    return;
  if (!atomic_compare_exchange_strong (&set->last_check, &last, now))
    return;
  if (pthread_mutex_trylock (&set->lock) != 0)
    return;
  refresh_locked (set);
  pthread_mutex_unlock (&set->lock);
}

void
lvm_vgset_close (struct lvm_vgset *set)
{
  if (!set)
    return;
  snap_put (set->cur);
  for (size_t d = 0; d < set->ndev; d++) {
    bdev_close (set->devs[d].bd);
    free (set->devs[d].path);
  }
  free (set->devs);
  free (set->vg_name);
  pthread_mutex_destroy (&set->lock);
  free (set);
}

struct lvm_vgset *
lvm_vgset_open (const char *const *paths, const bool *optional, size_t n,
                const struct lvm_vgset_opts *opts)
{
  struct lvm_vgset *set = calloc (1, sizeof *set);
  if (!set) {
    kvm_error ("out of memory");
    return NULL;
  }
  pthread_mutex_init (&set->lock, NULL);
  atomic_init (&set->gen, 0);
  atomic_init (&set->last_check, now_ms ());
  set->recheck_ms = opts->recheck_ms;
  set->writable = !opts->readonly;
  set->degraded = opts->degraded;
  if (opts->vg_name && !(set->vg_name = strdup (opts->vg_name)))
    goto oom;
  if (n == 0) {
    kvm_error ("no PVs given");
    goto fail;
  }
  set->devs = calloc (n, sizeof *set->devs);
  if (!set->devs)
    goto oom;
  for (size_t i = 0; i < n; i++) {
    struct dev *dv = &set->devs[set->ndev];
    struct bdev_open_opts bo = { .readonly = opts->readonly };
    if (!(dv->path = strdup (paths[i])))
      goto oom;
    dv->optional = optional && optional[i];
    set->ndev++;
    dv->bd = bdev_file_open (paths[i], &bo);
    if (!dv->bd && !opts->readonly &&
        (errno == EACCES || errno == EROFS || errno == EPERM)) {
      bo.readonly = true;
      dv->bd = bdev_file_open (paths[i], &bo);
      if (dv->bd) {
        kvm_debug ("%s: opened read-only", paths[i]);
        set->writable = false;
      }
    }
    if (!dv->bd)
      goto fail;                /* message already reported */
  }
  if (lvm_vgset_refresh (set) == -1)
    goto fail;
  return set;
 oom:
  kvm_error ("out of memory");
 fail:
  lvm_vgset_close (set);
  return NULL;
}

bool
lvm_vgset_writable (const struct lvm_vgset *set)
{
  return set->writable;
}

void
lvm_vgset_info (struct lvm_vgset *set, char *name, size_t namelen,
                uint64_t *seqno)
{
  struct snap *s = snap_get (set);
  snprintf (name, namelen, "%s", s->vg->name);
  *seqno = s->vg->seqno;
  snap_put (s);
}

static bool
snap_pv_ok (void *opaque, size_t pv)
{
  struct snap *s = opaque;
  return s->pv_dev[pv] != NO_DEV;
}

/* Every PV byte range of MAP must lie inside its device and outside the
 * label sectors and the metadata areas.  set->lock not needed: labels are
 * only replaced by scans, which keep the same areas.
 */
#define BERR(...) kvm_seterr (err, errlen, __VA_ARGS__)

/* On failure the reason is in ERR. */
static int
check_map_bounds (struct lvm_vgset *set, struct snap *s, const char *lv,
                  const struct lvm_map *m, char *err, size_t errlen)
{
  for (size_t i = 0; i < m->count; i++) {
    const struct lvm_piece *p = &m->pieces[i];
    unsigned n = p->kind == LVM_PIECE_LINEAR ? 1 :
                 p->kind == LVM_PIECE_STRIPED ? p->stripe_count : 0;
    for (unsigned k = 0; k < n; k++) {
      size_t d = s->pv_dev[p->pv[k]];
      struct dev *dv = &set->devs[d];
      uint64_t lo, hi;
      if (p->kind == LVM_PIECE_LINEAR) {
        lo = p->pv_off[0];
        hi = lo + p->len;      /* model checked: no overflow */
      }
      else {
        uint64_t row = p->stripe_size * p->stripe_count;
        uint64_t r0 = p->base / row;
        uint64_t r1 = div_round_up64 (p->base + p->len, row);
        lo = p->pv_off[k] + r0 * p->stripe_size;
        hi = p->pv_off[k] + r1 * p->stripe_size;
      }
      if (hi > dv->bd->size) {
        BERR ("LV %s: extents at PV bytes %" PRIu64 "-%" PRIu64
              " lie past the end of %s (%" PRIu64 " bytes): metadata "
              "and device disagree (truncated image or wrong device?)",
              lv, lo, hi, dv->path, dv->bd->size);
        return -1;
      }
      if (lo < LVM_LABEL_SCAN_SECTORS * LVM_SECTOR) {
        BERR ("LV %s: extents overlap the LVM label of %s", lv, dv->path);
        return -1;
      }
      for (size_t a = 0; a < dv->label.mda_count; a++) {
        uint64_t mo = dv->label.mda[a].offset;
        uint64_t ms = dv->label.mda[a].size;
        uint64_t me = mo + (ms ? ms : LVM_MDA_HEADER_SIZE);  /* unreadable */
        if (me < mo)
          me = UINT64_MAX;
        if (lo < me && mo < hi) {
          BERR ("LV %s: extents overlap the metadata area at offset %"
                PRIu64 " of %s", lv, mo, dv->path);
          return -1;
        }
      }
    }
  }
  return 0;
}

static void
other_leg_message (const char *lv, char *err, size_t len)
{
  snprintf (err, len, "LV %s: the first leg of its mirror or raid1 lies on "
            "a missing PV, and whether another leg is in sync is not in "
            "the metadata; degraded=true serves one anyway", lv);
}

int
lvm_vgset_list (struct lvm_vgset *set, lvm_list_fn fn, void *opaque)
{
  struct snap *s;
  int r = 0;
  char err[ERRLEN];

  /* All LVs of one listing share one work budget: hostile metadata
   * with very many LVs stacked on complex ones cannot make a listing
   * take hours.  LVs left when it runs out are not listed.
   */
  uint64_t budget = LVM_LIST_BUDGET;

  if (lvm_vgset_refresh (set) == -1)
    return -1;
  s = snap_get (set);
  for (size_t i = 0; i < s->vg->lv_count && r == 0; i++) {
    const struct lvm_meta_lv *lv = &s->vg->lvs[i];
    char layout[256];
    if (!lv->visible)
      continue;
    /* Only LVs that can be opened: NBD clients (nbdinfo --list) fail on
     * an export that is listed but refuses to open.
     */
    if (lv->name_problem) {
      kvm_debug ("LV %.*s%s not listed: %s", SHORT_NAME (lv->name),
                 lv->name_problem);
      continue;
    }
    if (!lvm_meta_lv_describe (s->vg, i, layout, sizeof layout)) {
      kvm_debug ("LV %s not listed: %s", lv->name, layout);
      continue;
    }
    if (budget == 0) {
      kvm_error ("warning: volume group %s: listing stopped at LV %s: the "
                 "layouts of the LVs before it are too complex to map in "
                 "one listing", s->vg->name, lv->name);
      break;
    }
    struct lvm_map *m = lvm_map_build_budget (s->vg, i, snap_pv_ok, s,
                                              &budget, err, sizeof err);
    int bad = 0;
    if (m) {
      pthread_mutex_lock (&set->lock);
      bad = check_map_bounds (set, s, lv->name, m, err, sizeof err);
      pthread_mutex_unlock (&set->lock);
    }
    if (m && bad != -1 && m->other_leg && !set->degraded) {
      other_leg_message (lv->name, err, sizeof err);
      bad = -1;
    }
    if (!m || bad == -1) {
      kvm_debug ("LV %s not listed: %s", lv->name, err);
      lvm_map_free (m);
      continue;
    }
    if (m->readonly)
      snprintf (layout + strlen (layout), sizeof layout - strlen (layout),
                ", read-only");
    lvm_map_free (m);
    r = fn (opaque, lv->name, lv->extent_count * s->vg->extent_size, layout);
  }
  snap_put (s);
  return r < 0 ? -1 : 0;
}

/* --- LV block devices ---------------------------------------------------- */

struct lv_dev {
  struct bdev bd;
  struct lvm_vgset *set;
  struct snap *snap;            /* the metadata the map came from */
  struct lvm_map *map;
  char uuid[LVM_UUID_LEN + 1];
  char *lvname;
  size_t nused;
  size_t *used;                 /* devices the map touches */
  pthread_mutex_t lock;         /* revalidation */
  atomic_uint_fast64_t gen;     /* metadata generation checked against */
  atomic_bool stale;
  atomic_bool became_readonly;  /* newer metadata: no more writes */
};

static const void *
dev_id (void *opaque, size_t pv)
{
  struct snap *s = opaque;
  return (const void *) (uintptr_t) (s->pv_dev[pv] + 1);
}

static void
revalidate (struct lv_dev *l)
{
  char err[ERRLEN];
  struct snap *s;

  pthread_mutex_lock (&l->lock);
  s = snap_get (l->set);
  if (atomic_load (&l->gen) != s->gen && !atomic_load (&l->stale)) {
    ssize_t i = lvm_meta_find_lv_uuid (s->vg, l->uuid);
    struct lvm_map *m = NULL;
    bool ok = false;
    if (i >= 0)
      m = lvm_map_build (s->vg, i, snap_pv_ok, s, err, sizeof err);
    if (m)
      ok = lvm_map_is_prefix (l->map, dev_id, l->snap, m, dev_id, s);
    if (!ok) {
      kvm_error ("LV %s: its layout changed in metadata seqno %" PRIu64
                 " (%s); refusing further I/O on this connection, "
                 "reconnect", l->lvname, s->vg->seqno,
                 i < 0 ? "removed" : !m ? err : "reduced or moved");
      atomic_store (&l->stale, true);
    }
    else if (m->readonly && !l->bd.readonly &&
             !atomic_load (&l->became_readonly)) {
      /* Made read-only (lvchange -pr), or now a snapshot origin or a
       * mirror leg, whose writes must go through dm: reads go on.
       */
      kvm_error ("LV %s: read-only from metadata seqno %" PRIu64 " on; "
                 "refusing further writes on this connection",
                 l->lvname, s->vg->seqno);
      atomic_store (&l->became_readonly, true);
    }
    else
      kvm_debug ("LV %s: still valid at metadata seqno %" PRIu64,
                 l->lvname, s->vg->seqno);
    lvm_map_free (m);
    atomic_store (&l->gen, s->gen);
  }
  snap_put (s);
  pthread_mutex_unlock (&l->lock);
}

static int
lv_check (struct lv_dev *l)
{
  maybe_refresh (l->set);
  if (atomic_load (&l->set->gen) != atomic_load (&l->gen))
    revalidate (l);
  if (atomic_load (&l->stale)) {
    kvm_error ("LV %s: layout changed while connected; reconnect",
               l->lvname);
    errno = EIO;
    return -1;
  }
  return 0;
}

enum op { OP_READ, OP_WRITE, OP_TRIM, OP_ZERO };

static int
lv_io (struct lv_dev *l, enum op op, void *buf, uint64_t count,
       uint64_t offset, uint32_t flags)
{
  char *b = buf;
  if (lv_check (l) == -1)
    return -1;
  if (op != OP_READ && atomic_load (&l->became_readonly)) {
    kvm_error ("LV %s: read-only in the current metadata; reconnect",
               l->lvname);
    errno = EROFS;
    return -1;
  }
  while (count > 0) {
    const struct lvm_piece *p = lvm_map_find (l->map, offset);
    size_t pv;
    uint64_t pv_off, contig, n;
    struct bdev *dev;
    int r;

    lvm_piece_resolve (p, offset, &pv, &pv_off, &contig);
    n = count < contig ? count : contig;
    switch (p->kind) {
    case LVM_PIECE_ZERO:
      if (op == OP_READ) {
        memset (b, 0, n);
        break;
      }
      /* fallthrough */
    case LVM_PIECE_ERROR:
      kvm_error ("LV %s: offset %" PRIu64 " lies in a '%s' segment",
                 l->lvname, offset,
                 p->kind == LVM_PIECE_ZERO ? "zero" : "error");
      errno = EIO;
      return -1;
    default:
      dev = l->set->devs[l->snap->pv_dev[pv]].bd;
      switch (op) {
      case OP_READ: r = bdev_pread (dev, b, n, pv_off); break;
      case OP_WRITE: r = bdev_pwrite (dev, b, n, pv_off, 0); break;
      case OP_TRIM: r = bdev_trim (dev, n, pv_off, 0); break;
      default: r = bdev_zero (dev, n, pv_off, flags & ~BDEV_FUA); break;
      }
      if (r == -1)
        return -1;
    }
    if (b)
      b += n;
    count -= n;
    offset += n;
  }
  if (flags & BDEV_FUA) {
    for (size_t i = 0; i < l->nused; i++)
      if (bdev_flush (l->set->devs[l->used[i]].bd) == -1)
        return -1;
  }
  return 0;
}

static int
lv_pread (struct bdev *bd, void *buf, size_t count, uint64_t offset)
{
  return lv_io ((struct lv_dev *) bd, OP_READ, buf, count, offset, 0);
}

static int
lv_pwrite (struct bdev *bd, const void *buf, size_t count, uint64_t offset,
           uint32_t flags)
{
  return lv_io ((struct lv_dev *) bd, OP_WRITE, (void *) buf, count, offset,
                flags);
}

static int
lv_trim (struct bdev *bd, uint64_t count, uint64_t offset, uint32_t flags)
{
  return lv_io ((struct lv_dev *) bd, OP_TRIM, NULL, count, offset, flags);
}

static int
lv_zero (struct bdev *bd, uint64_t count, uint64_t offset, uint32_t flags)
{
  return lv_io ((struct lv_dev *) bd, OP_ZERO, NULL, count, offset, flags);
}

static int
lv_flush (struct bdev *bd)
{
  struct lv_dev *l = (struct lv_dev *) bd;
  for (size_t i = 0; i < l->nused; i++)
    if (bdev_flush (l->set->devs[l->used[i]].bd) == -1)
      return -1;
  return 0;
}

static void
lv_close (struct bdev *bd)
{
  struct lv_dev *l = (struct lv_dev *) bd;
  lvm_map_free (l->map);
  snap_put (l->snap);
  free (l->used);
  free (l->lvname);
  pthread_mutex_destroy (&l->lock);
  bdev_free_common (bd);
}

static const struct bdev_ops lv_ops = {
  .format = "lvm-lv",
  .close = lv_close,
  .pread = lv_pread,
  .pwrite = lv_pwrite,
  .flush = lv_flush,
  .trim = lv_trim,
  .zero = lv_zero,
};

struct bdev *
lvm_lv_open (struct lvm_vgset *set, const char *name, bool readonly)
{
  char err[ERRLEN];
  struct snap *s;
  struct lv_dev *l = NULL;
  struct lvm_map *m = NULL;
  ssize_t i;

  if (lvm_vgset_refresh (set) == -1)
    return NULL;
  s = snap_get (set);
  i = lvm_meta_find_lv (s->vg, name);
  if (i < 0) {
    kvm_error ("volume group %s has no LV named '%s'", s->vg->name, name);
    errno = ENOENT;
    goto fail;
  }
  if (!s->vg->lvs[i].visible) {
    kvm_error ("LV %s is an internal (hidden) LV of volume group %s",
               name, s->vg->name);
    errno = ENOENT;
    goto fail;
  }
  if (s->vg->lvs[i].name_problem) {
    kvm_error ("LV %.*s%s of volume group %s is not served: %s (lvm2 "
               "refuses such names)", SHORT_NAME (name), s->vg->name,
               s->vg->lvs[i].name_problem);
    errno = ENOTSUP;
    goto fail;
  }
  m = lvm_map_build (s->vg, i, snap_pv_ok, s, err, sizeof err);
  if (!m) {
    kvm_error ("%s", err);
    errno = ENOTSUP;
    goto fail;
  }
  if (m->other_leg && !set->degraded) {
    other_leg_message (name, err, sizeof err);
    kvm_error ("%s", err);
    errno = ENXIO;
    goto fail;
  }
  pthread_mutex_lock (&set->lock);
  int bad = check_map_bounds (set, s, name, m, err, sizeof err);
  pthread_mutex_unlock (&set->lock);
  if (bad == -1) {
    kvm_error ("%s", err);
    errno = EINVAL;
    goto fail;
  }
  l = bdev_alloc (sizeof *l, &lv_ops, name);
  if (!l)
    goto fail;
  l->set = set;
  l->snap = s;
  l->map = m;
  memcpy (l->uuid, s->vg->lvs[i].uuid, sizeof l->uuid);
  pthread_mutex_init (&l->lock, NULL);
  atomic_init (&l->gen, s->gen);
  atomic_init (&l->stale, false);
  atomic_init (&l->became_readonly, false);
  l->lvname = strdup (name);
  l->used = calloc (set->ndev, sizeof *l->used);
  if (!l->lvname || !l->used) {
    kvm_error ("out of memory");
    lv_close (&l->bd);
    return NULL;
  }
  for (size_t d = 0; d < set->ndev; d++) {
    bool used = false;
    for (size_t k = 0; k < m->count && !used; k++) {
      const struct lvm_piece *p = &m->pieces[k];
      unsigned n = p->kind == LVM_PIECE_LINEAR ? 1 :
                   p->kind == LVM_PIECE_STRIPED ? p->stripe_count : 0;
      for (unsigned j = 0; j < n; j++)
        if (s->pv_dev[p->pv[j]] == d)
          used = true;
    }
    if (used)
      l->used[l->nused++] = d;
  }
  l->bd.size = m->size;
  l->bd.readonly = readonly || m->readonly || !set->writable;
  l->bd.caps = BDEV_CAN_TRIM | BDEV_CAN_ZERO | BDEV_CAN_FAST_ZERO |
               BDEV_CAN_FUA | BDEV_CAN_MULTI_CONN;
  l->bd.block_size = 1;
  for (size_t k = 0; k < l->nused; k++) {
    uint32_t bs = set->devs[l->used[k]].bd->block_size;
    if (bs > l->bd.block_size)
      l->bd.block_size = bs;
  }
  kvm_debug ("LV %s: %" PRIu64 " bytes in %zu pieces on %zu PVs%s", name,
             m->size, m->count, l->nused,
             m->readonly ? " (read-only layout)" : "");
  if (s->vg->lvs[i].write_locked && !readonly)
    kvm_error ("LV %s is served read-only: its volume group has a system "
               "ID or a lock type (WRITE_LOCKED), and whether this host "
               "owns it is not known here", name);
  return &l->bd;
 fail:
  lvm_map_free (m);
  snap_put (s);
  return NULL;
}
