/* SPDX-License-Identifier: BSD-3-Clause */
/* common/util/progress: lines at each new tenth or once a second (a fake
 * clock), nothing for an empty operation, the terminal line, and
 * percentages without overflow.
 */
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "util/log.h"
#include "util/progress.h"
#include "check.h"

static char lines[64][160];
static int nlines;
static uint64_t fake_ms;

static void
capture (const char *fmt, va_list args)
{
  CHECK (nlines < 64);
  vsnprintf (lines[nlines++], sizeof lines[0], fmt, args);
}

static uint64_t
fake_clock (void)
{
  return fake_ms;
}

static void
test_percent (void)
{
  CHECK_EQ_U64 (kvm_progress_percent (0, 0), 0);
  CHECK_EQ_U64 (kvm_progress_percent (5, 0), 0);
  CHECK_EQ_U64 (kvm_progress_percent (1, 3), 33);
  CHECK_EQ_U64 (kvm_progress_percent (7, 7), 100);
  CHECK_EQ_U64 (kvm_progress_percent (9, 7), 100);
  CHECK_EQ_U64 (kvm_progress_percent (UINT64_MAX / 2, UINT64_MAX), 49);
  CHECK_EQ_U64 (kvm_progress_percent (UINT64_MAX - 1, UINT64_MAX), 99);
  CHECK_EQ_U64 (kvm_progress_percent (UINT64_MAX / 100, UINT64_MAX), 0);
  CHECK_EQ_U64 (kvm_progress_percent (UINT64_MAX / 100 + 1, UINT64_MAX), 1);
}

static void
test_tenths (void)
{
  struct kvm_progress p;
  nlines = 0;
  kvm_progress_start (&p, "op", 1000);
  /* 1000 steps of one unit in no time: one line per tenth (10..90%),
   * then 100% from _end.
   */
  for (int i = 0; i < 1000; i++)
    kvm_progress_add (&p, 1);
  CHECK_EQ_U64 (nlines, 9);
  CHECK (strcmp (lines[0], "op: 10% (100/1000)") == 0);
  CHECK (strcmp (lines[8], "op: 90% (900/1000)") == 0);
  kvm_progress_end (&p);
  CHECK_EQ_U64 (nlines, 10);
  CHECK (strcmp (lines[9], "op: 100% (1000/1000)") == 0);
}

static void
test_rate (void)
{
  struct kvm_progress p;
  nlines = 0;
  fake_ms = 5000;
  kvm_progress_start (&p, "slow", 10000);
  /* Within one tenth: a line only once a second has passed. */
  kvm_progress_set (&p, 1);
  fake_ms += 999;
  kvm_progress_set (&p, 2);
  CHECK_EQ_U64 (nlines, 0);
  fake_ms += 1;
  kvm_progress_set (&p, 3);
  CHECK_EQ_U64 (nlines, 1);
  CHECK (strcmp (lines[0], "slow: 0% (3/10000)") == 0);
  kvm_progress_set (&p, 4);
  fake_ms += 500;
  kvm_progress_set (&p, 5);
  CHECK_EQ_U64 (nlines, 1);
  fake_ms += 500;
  kvm_progress_set (&p, 6);
  CHECK_EQ_U64 (nlines, 2);
  /* A jump over several tenths: one line. */
  kvm_progress_set (&p, 5500);
  CHECK_EQ_U64 (nlines, 3);
  CHECK (strcmp (lines[2], "slow: 55% (5500/10000)") == 0);
  /* Past the end: clamped, and 100% is left to _end. */
  kvm_progress_set (&p, 20000);
  CHECK_EQ_U64 (nlines, 3);
  kvm_progress_end (&p);
  CHECK_EQ_U64 (nlines, 4);
  CHECK (strcmp (lines[3], "slow: 100% (10000/10000)") == 0);
}

static void
test_empty_and_overflow (void)
{
  struct kvm_progress p;
  nlines = 0;
  kvm_progress_start (&p, "empty", 0);
  kvm_progress_add (&p, 10);
  fake_ms += 10000;
  kvm_progress_add (&p, 10);
  kvm_progress_end (&p);
  CHECK_EQ_U64 (nlines, 0);

  kvm_progress_start (&p, "huge", UINT64_MAX);
  kvm_progress_add (&p, UINT64_MAX / 2);
  CHECK_EQ_U64 (nlines, 1);
  CHECK (strstr (lines[0], "huge: 49% (") == lines[0]);
  kvm_progress_add (&p, UINT64_MAX);  /* saturates, never wraps to 0 */
  CHECK_EQ_U64 (p.done, UINT64_MAX);
  CHECK_EQ_U64 (nlines, 1);
  kvm_progress_end (&p);
  CHECK_EQ_U64 (nlines, 2);
}

static void
test_terminal (void)
{
  struct kvm_progress p;
  char buf[512] = "";
  FILE *f = tmpfile ();
  CHECK (f);
  kvm_progress_set_terminal (f);
  nlines = 0;
  kvm_progress_start (&p, "check", 4);
  for (int i = 0; i < 4; i++)
    kvm_progress_add (&p, 1);
  kvm_progress_end (&p);
  kvm_progress_set_terminal (NULL);
  rewind (f);
  size_t n = fread (buf, 1, sizeof buf - 1, f);
  buf[n] = 0;
  fclose (f);
  CHECK (strcmp (buf, "\rcheck:  25%\rcheck:  50%\rcheck:  75%"
                 "\rcheck: 100%\n") == 0);
  CHECK_EQ_U64 (nlines, 4);

  /* No terminal: nothing is drawn, and an empty operation draws no
   * newline either.
   */
  f = tmpfile ();
  CHECK (f);
  kvm_progress_set_terminal (f);
  kvm_progress_start (&p, "none", 0);
  kvm_progress_end (&p);
  kvm_progress_set_terminal (NULL);
  CHECK (ftell (f) == 0);
  fclose (f);
}

int
main (void)
{
  kvm_log_set (NULL, capture);
  kvm_progress_set_clock (fake_clock);
  test_percent ();
  test_tenths ();
  test_rate ();
  test_empty_and_overflow ();
  test_terminal ();
  printf ("ok\n");
  return 0;
}
