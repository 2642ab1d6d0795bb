/* SPDX-License-Identifier: BSD-3-Clause */
/* Fuzz target for the qcow2 engine: the input is a whole (small) qcow2
 * file.  It is written to a file in a private temporary directory (so any
 * backing or data file name it contains resolves there and nowhere else),
 * opened with bdev_open(path, "qcow2", readonly), read and mapped across
 * its virtual size (bounded), and closed.  Then the same file is opened
 * read-write and gets a few writes, zero writes, trims and a flush, which
 * exercises allocation and refcount updates on hostile metadata.  The
 * image it wrote must open again (fuzz_reopen).
 *
 * Seeds: tests/fuzz/corpus/qcow2/, made by tests/fuzz/make-qcow2-corpus.sh.
 */
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "bdev/bdev.h"
#include "fuzz_common.h"
#include "qcow2/qcow2.h"

static const struct fuzz_limits limits = {
  .max_read = 1024 * 1024,
  .max_map = 256ull * 1024 * 1024,
  .probes = 16,
  .max_file = 64 * 1024 * 1024,
  .fill = 0x5a,
  .map_tail = true,
  .reread = true,
};

int
LLVMFuzzerTestOneInput (const uint8_t *data, size_t size)
{
  fuzz_init ("qcow2", "img.qcow2");
  fuzz_write_image (data, size);
  fuzz_keep_image ("orig");

  struct bdev_open_opts opts = {
    .readonly = true,
    .max_chain_depth = 4,
  };
  struct bdev *bd = bdev_open (imgpath, "qcow2", &opts, 0);
  if (!bd) {
    /* Images naming backing files that are not there: read the top. */
    static const char *const nobacking[] = { "qcow2.backing=none", NULL };
    opts.format_opts = nobacking;
    bd = bdev_open (imgpath, "qcow2", &opts, 0);
  }
  if (bd) {
    fuzz_exercise_read (bd, &limits);
    /* Internal snapshots (at most 4), each through its own L1 table. */
    const struct qcow2_snapshot_info *snaps;
    size_t nsnaps = qcow2_is (bd) ? qcow2_snapshots (bd, &snaps) : 0;
    char ids[4][64];
    size_t nids = 0;
    for (size_t i = 0; i < nsnaps && nids < 4; i++)
      if (snaps[i].id && strlen (snaps[i].id) < 40)
        snprintf (ids[nids++], sizeof ids[0], "qcow2.snapshot=%s", snaps[i].id);
    bdev_close (bd);
    for (size_t i = 0; i < nids; i++) {
      const char *sopts[] = { ids[i], "qcow2.backing=none", NULL };
      struct bdev_open_opts so = opts;
      so.format_opts = sopts;
      struct bdev *sb = bdev_open (imgpath, "qcow2", &so, 0);
      if (sb) {
        fuzz_exercise_read (sb, &limits);
        bdev_close (sb);
      }
    }
  }

  /* Read-write over a backing file of zeroes, so that images naming one
   * are written too (with backing=none they are read-only).
   */
  static const char *const nobacking[] = { "qcow2.backing=none", NULL };
  struct bdev_open_opts wo = opts;
  wo.readonly = false;
  wo.format_opts = NULL;
  wo.backing = fuzz_zero_backing ();
  bd = bdev_open (imgpath, "qcow2", &wo, 0);
  if (bd) {
    bool wrote = !bd->readonly;
    if (wrote)
      fuzz_exercise_write (bd, data, size, &limits);
    fuzz_exercise_read (bd, &limits);
    bdev_close (bd);
    if (wrote) {
      fuzz_keep_image ("written");
      struct bdev_open_opts ro = opts;
      ro.format_opts = nobacking;
      fuzz_reopen ("qcow2", &ro);
    }
  }
  unlink (imgpath);
  return 0;
}
