/* SPDX-License-Identifier: BSD-3-Clause */
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "clock.h"
#include "log.h"
#include "progress.h"

#define INTERVAL_MS 1000

static FILE *terminal;
static uint64_t (*clock_fn) (void);

void
kvm_progress_set_terminal (FILE *f)
{
  terminal = f;
}

void
kvm_progress_set_clock (uint64_t (*now_ms) (void))
{
  clock_fn = now_ms;
}

static uint64_t
now_ms (void)
{
  if (clock_fn)
    return clock_fn ();
  return kvm_mono_ns () / 1000000;
}

unsigned
kvm_progress_percent (uint64_t done, uint64_t total)
{
  if (total == 0)
    return 0;
  if (done >= total)
    return 100;
  /* done < total, so done * 100 overflows only when total is huge. */
  if (done <= UINT64_MAX / 100)
    return (unsigned) (done * 100 / total);
  return (unsigned) (done / (total / 100 + 1));
}

static void
emit (struct kvm_progress *p, unsigned pct)
{
  kvm_debug ("%s: %u%% (%" PRIu64 "/%" PRIu64 ")", p->what, pct, p->done,
             p->total);
  if (terminal) {
    fprintf (terminal, "\r%s: %3u%%", p->what, pct);
    fflush (terminal);
    p->drawn = true;
  }
}

void
kvm_progress_start (struct kvm_progress *p, const char *what,
                    uint64_t total)
{
  memset (p, 0, sizeof *p);
  snprintf (p->what, sizeof p->what, "%s", what);
  p->total = total;
  p->last_ms = now_ms ();
}

void
kvm_progress_set (struct kvm_progress *p, uint64_t done)
{
  if (!p || p->total == 0)
    return;
  p->done = done < p->total ? done : p->total;
  unsigned pct = kvm_progress_percent (p->done, p->total);
  uint64_t t = now_ms ();
  if (pct >= 100)
    return;                     /* kvm_progress_end reports 100% */
  if (pct / 10 > p->last_tenth || t - p->last_ms >= INTERVAL_MS) {
    p->last_tenth = pct / 10;
    p->last_ms = t;
    emit (p, pct);
  }
}

void
kvm_progress_add (struct kvm_progress *p, uint64_t n)
{
  if (!p)
    return;
  uint64_t d = p->done + n < p->done ? UINT64_MAX : p->done + n;
  kvm_progress_set (p, d);
}

void
kvm_progress_end (struct kvm_progress *p)
{
  if (!p || p->total == 0)
    return;
  p->done = p->total;
  p->last_tenth = 10;
  emit (p, 100);
  if (terminal && p->drawn) {
    fputc ('\n', terminal);
    fflush (terminal);
  }
  p->drawn = false;
}
