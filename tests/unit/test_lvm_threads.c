/* SPDX-License-Identifier: BSD-3-Clause */
/* The LVM engine read by several threads at once while its metadata
 * changes, as the lvm plugin serves under nbdkit's PARALLEL model: two
 * PVs in files, a linear LV (checked against the PV bytes it maps) and a
 * striped one (checked against a single-threaded read taken first),
 * reader threads on both, a re-check of the metadata on the request path
 * every millisecond (recheck_ms), and a thread rewriting the metadata
 * (new seqno, an LV added and removed) and calling refresh, list and info
 * meanwhile.  Under -DSANITIZE=thread this is the race detector's test
 * of the engine.
 */
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bdev/bdev.h"
#include "lvm/lvm.h"
#include "lvm/lvm_disk.h"
#include "util/endian.h"
#include "stress.h"

#define PVSIZE (8u << 20)
#define DATA (1u << 20)                 /* pe_start: 2048 sectors */
#define EXT 4096u                       /* extent_size = 8 sectors */

static char dir[] = "/tmp/lvmthrXXXXXX";
static char pv_path[2][300];
static uint8_t *pv_data[2];
static int stop;

static void
make_label (uint8_t *sec, const char *uuid)
{
  memset (sec, 0, 512);
  memcpy (sec, "LABELONE", 8);
  store_le64 (sec + 8, 1);
  store_le32 (sec + 20, 32);
  memcpy (sec + 24, "LVM2 001", 8);
  memcpy (sec + 32, uuid, 32);
  store_le64 (sec + 64, PVSIZE);
  store_le64 (sec + 72, DATA);          /* data area */
  store_le64 (sec + 104, 4096);         /* mda */
  store_le64 (sec + 112, DATA - 4096);
  store_le32 (sec + 16, lvm_crc (LVM_INITIAL_CRC, sec + 20, 512 - 20));
}

static const char *const uuids[2] = {
  "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb", "cccccccccccccccccccccccccccccccc",
};

/* The metadata text of version SEQNO (odd versions have an extra LV). */
static void
meta_text (char *text, size_t len, unsigned seqno)
{
  snprintf (text, len,
    "vg {\n id = \"aaaaaa-aaaa-aaaa-aaaa-aaaa-aaaa-aaaaaa\"\n seqno = %u\n"
    " extent_size = 8\n physical_volumes {\n"
    "  pv0 { id = \"bbbbbb-bbbb-bbbb-bbbb-bbbb-bbbb-bbbbbb\" pe_start = 2048 pe_count = 1700 }\n"
    "  pv1 { id = \"cccccc-cccc-cccc-cccc-cccc-cccc-cccccc\" pe_start = 2048 pe_count = 1700 }\n"
    " }\n logical_volumes {\n"
    "  lin { id = \"eeeeee-eeee-eeee-eeee-eeee-eeee-eeeeee\"\n"
    "   status = [\"READ\", \"WRITE\", \"VISIBLE\"] segment_count = 2\n"
    "   segment1 { start_extent = 0 extent_count = 256 type = \"striped\""
    " stripe_count = 1 stripes = [\"pv0\", 100] }\n"
    "   segment2 { start_extent = 256 extent_count = 256 type = \"striped\""
    " stripe_count = 1 stripes = [\"pv1\", 1000] }\n  }\n"
    "  str { id = \"ffffff-ffff-ffff-ffff-ffff-ffff-ffffff\"\n"
    "   status = [\"READ\", \"WRITE\", \"VISIBLE\"] segment_count = 1\n"
    "   segment1 { start_extent = 0 extent_count = 512 type = \"striped\""
    " stripe_count = 2 stripe_size = 16 stripes = [\"pv0\", 500, \"pv1\", 0] }\n  }\n"
    "%s }\n}\n", seqno,
    seqno % 2 ?
    "  extra { id = \"gggggg-gggg-gggg-gggg-gggg-gggg-gggggg\"\n"
    "   status = [\"READ\", \"WRITE\", \"VISIBLE\"] segment_count = 1\n"
    "   segment1 { start_extent = 0 extent_count = 8 type = \"striped\""
    " stripe_count = 1 stripes = [\"pv0\", 1600] }\n  }\n" : "");
}

/* Write the label and metadata area of PV I (metadata version SEQNO). */
static void
write_meta (unsigned i, unsigned seqno)
{
  static __thread uint8_t hdr[DATA];
  char text[4096];
  meta_text (text, sizeof text, seqno);
  size_t len = strlen (text);
  memset (hdr, 0, sizeof hdr);
  make_label (hdr + 512, uuids[i]);
  uint8_t *h = hdr + 4096;
  memcpy (h + 4, LVM_MDA_MAGIC, 16);
  store_le32 (h + 20, LVM_MDA_VERSION);
  store_le64 (h + 24, 4096);
  store_le64 (h + 32, DATA - 4096);
  store_le64 (h + 40, 512);
  store_le64 (h + 48, len);
  store_le32 (h + 56, lvm_crc (LVM_INITIAL_CRC, text, len));
  store_le32 (h, lvm_crc (LVM_INITIAL_CRC, h + 4, 512 - 4));
  memcpy (h + 512, text, len);
  int fd = open (pv_path[i], O_WRONLY);
  CHECK (fd >= 0);
  CHECK (pwrite (fd, hdr, DATA, 0) == DATA);
  CHECK (close (fd) == 0);
}

struct reader {
  struct bdev *bd;
  const uint8_t *want;          /* whole LV */
  unsigned seed;
  unsigned long n;
  pthread_t th;
};

static void *
reader (void *arg)
{
  struct reader *r = arg;
  uint8_t buf[3 * EXT];
  while (!__atomic_load_n (&stop, __ATOMIC_ACQUIRE)) {
    uint64_t len = 512 * (1 + stress_rand (&r->seed) % 24);
    uint64_t off = 512 * (stress_rand (&r->seed) % ((r->bd->size - len) / 512));
    CHECK (bdev_pread (r->bd, buf, len, off) == 0);
    if (memcmp (buf, r->want + off, len) != 0) {
      fprintf (stderr, "%s: read at %llu differs\n", r->bd->name,
               (unsigned long long) off);
      exit (1);
    }
    r->n++;
  }
  return NULL;
}

static int
count_lv (void *opaque, const char *name, uint64_t size, const char *layout)
{
  (void) name; (void) size; (void) layout;
  (*(int *) opaque)++;
  return 0;
}

int
main (void)
{
  CHECK (mkdtemp (dir));
  for (unsigned i = 0; i < 2; i++) {
    snprintf (pv_path[i], sizeof pv_path[i], "%s/pv%u", dir, i);
    CHECK ((pv_data[i] = malloc (PVSIZE)));
    unsigned s = 40 + i;
    stress_fill (pv_data[i], PVSIZE, &s);
    FILE *fp = fopen (pv_path[i], "w");
    CHECK (fp && fwrite (pv_data[i], 1, PVSIZE, fp) == PVSIZE);
    CHECK (fclose (fp) == 0);
    write_meta (i, 2);
  }

  const char *paths[] = { pv_path[0], pv_path[1] };
  struct lvm_vgset_opts o = { .readonly = true, .recheck_ms = 1 };
  struct lvm_vgset *set = lvm_vgset_open (paths, NULL, 2, &o);
  CHECK (set);
  struct bdev *lin = lvm_lv_open (set, "lin", true);
  struct bdev *str = lvm_lv_open (set, "str", true);
  CHECK (lin && str);
  CHECK_EQ_U64 (lin->size, 512 * EXT);
  CHECK_EQ_U64 (str->size, 512 * EXT);

  /* lin: extents 100.. of pv0, then 1000.. of pv1, from the PV bytes. */
  uint8_t *want_lin = malloc (lin->size), *want_str = malloc (str->size);
  CHECK (want_lin && want_str);
  memcpy (want_lin, pv_data[0] + DATA + 100 * EXT, 256 * EXT);
  memcpy (want_lin + 256 * EXT, pv_data[1] + DATA + 1000 * EXT, 256 * EXT);
  CHECK (bdev_pread (str, want_str, str->size, 0) == 0);
  uint8_t *tmp = malloc (lin->size);
  CHECK (tmp && bdev_pread (lin, tmp, lin->size, 0) == 0);
  CHECK (memcmp (tmp, want_lin, lin->size) == 0);
  free (tmp);

  struct reader rd[4];
  for (unsigned i = 0; i < 4; i++) {
    rd[i] = (struct reader) { .bd = i % 2 ? str : lin,
                              .want = i % 2 ? want_str : want_lin,
                              .seed = 300 + i };
    CHECK (pthread_create (&rd[i].th, NULL, reader, &rd[i]) == 0);
  }
  unsigned seqno = 2;
  int lists = 0;
  for (unsigned k = 0; k < stress_ops (40); k++) {
    seqno++;
    write_meta (0, seqno);
    write_meta (1, seqno);
    lvm_vgset_refresh (set);    /* may also be done by a reader first */
    int n = 0;
    CHECK (lvm_vgset_list (set, count_lv, &n) == 0);
    CHECK (n == 2 || n == 3);
    lists++;
    char name[64];
    uint64_t sq;
    lvm_vgset_info (set, name, sizeof name, &sq);
    CHECK (strcmp (name, "vg") == 0);
    usleep (2000);
  }
  __atomic_store_n (&stop, 1, __ATOMIC_RELEASE);
  unsigned long reads = 0;
  for (unsigned i = 0; i < 4; i++) {
    CHECK (pthread_join (rd[i].th, NULL) == 0);
    reads += rd[i].n;
  }
  printf ("%lu reads during %u metadata changes (%d listings)\n",
          reads, seqno - 2, lists);
  CHECK (reads > 0);
  char name[64];
  uint64_t sq;
  lvm_vgset_info (set, name, sizeof name, &sq);
  CHECK_EQ_U64 (sq, seqno);

  bdev_close (lin);
  bdev_close (str);
  lvm_vgset_close (set);
  free (want_lin);
  free (want_str);
  for (unsigned i = 0; i < 2; i++)
    free (pv_data[i]);
  char cmd[400];
  snprintf (cmd, sizeof cmd, "rm -rf '%s'", dir);
  CHECK (system (cmd) == 0);
  return 0;
}
