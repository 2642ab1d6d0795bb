/* SPDX-License-Identifier: BSD-3-Clause */
/* Progress of long operations (snapshot commit and delete, thin metadata
 * check, vhdx log replay).  The engine fills in DONE out of TOTAL units;
 * a line "WHAT: N% (DONE/TOTAL)" goes to kvm_debug (nbdkit -v) at most
 * once a second or at each new tenth, and, when a CLI has named a
 * terminal with kvm_progress_set_terminal(), one "\r"-rewritten line is
 * drawn there too.  No nbdkit dependency; TOTAL 0 prints nothing.
 */
#ifndef KVM_PROGRESS_H
#define KVM_PROGRESS_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

struct kvm_progress {
  char what[96];
  uint64_t total, done;
  unsigned last_tenth;          /* last reported tenth (0..10) */
  uint64_t last_ms;             /* when the last line was emitted */
  bool drawn;                   /* a terminal line is showing */
};

/* A CLI passes stderr here when isatty(2); NULL (the default) disables
 * the terminal line.  Set once, before any operation starts.
 */
void kvm_progress_set_terminal (FILE *f);

/* For tests: a millisecond clock instead of CLOCK_MONOTONIC (NULL
 * restores it).
 */
void kvm_progress_set_clock (uint64_t (*now_ms) (void));

void kvm_progress_start (struct kvm_progress *p, const char *what,
                         uint64_t total);
/* DONE is clamped to TOTAL.  _add saturates.  P may be NULL (no-op),
 * for code shared with paths that report nothing.
 */
void kvm_progress_set (struct kvm_progress *p, uint64_t done);
void kvm_progress_add (struct kvm_progress *p, uint64_t n);
/* Reports 100% (if TOTAL > 0) and ends the terminal line. */
void kvm_progress_end (struct kvm_progress *p);

/* The percentage of DONE out of TOTAL (0 when TOTAL is 0), without
 * overflow for any values.
 */
unsigned kvm_progress_percent (uint64_t done, uint64_t total);

#endif
