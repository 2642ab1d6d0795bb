/* SPDX-License-Identifier: BSD-3-Clause */
/* Fuzz target: the throttle file parser (common/throttle), with whatever
 * limits it accepts then driven through the bucket arithmetic on a
 * virtual clock.  Hostile file content must give an error or limits,
 * never a crash, UB or a hang.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "throttle/throttle.h"

static void
drive (const struct thr_limits *lim, const uint8_t *data, size_t size)
{
  struct thr_buckets b;
  uint64_t now = 0;
  size_t i;

  thr_buckets_init (&b, now);
  for (i = 0; i < size && i < 64; ++i) {
    enum thr_op op = data[i] & 1 ? THR_OP_WRITE : THR_OP_READ;
    bool count_bytes = !(data[i] & 2);
    uint64_t bytes = (uint64_t) data[i] << (data[i] % 25);
    uint64_t w = thr_buckets_wait (&b, lim, op, count_bytes, now);
    now += w > 1000000000000ULL ? 1000000000000ULL : w;
    thr_buckets_account (&b, lim, op, bytes, count_bytes);
    (void) thr_io_units (lim, bytes);
  }
}

int
LLVMFuzzerTestOneInput (const uint8_t *data, size_t size)
{
  struct thr_limits base = { 0 }, out;
  char err[256];
  char *text;

  if (size > 65536)
    return 0;
  text = malloc (size + 1);
  if (text == NULL)
    return 0;
  memcpy (text, data, size);
  text[size] = '\0';              /* the filter refuses NUL bytes */

  base.l[THR_BPS_TOTAL].avg = 1 << 20;
  if (thr_limits_parse_text (&base, text, NULL, thr_parse_size_simple,
                             &out, err, sizeof err) == 0) {
    drive (&out, data, size);
    if (thr_limits_parse_text (&base, text, "db", thr_parse_size_simple,
                               &out, err, sizeof err) == 0)
      drive (&out, data, size);
  }
  else if (strlen (err) == 0)
    abort ();                       /* an error must say why */
  free (text);
  return 0;
}
