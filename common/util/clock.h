/* SPDX-License-Identifier: BSD-3-Clause */
/* The monotonic clock: now, and deadlines for poll(2) loops.
 *
 * Header only.
 */
#ifndef KVM_UTIL_CLOCK_H
#define KVM_UTIL_CLOCK_H

#include <stdint.h>
#include <time.h>

/* CLOCK_MONOTONIC in nanoseconds. */
static inline uint64_t
kvm_mono_ns (void)
{
  struct timespec ts;
  clock_gettime (CLOCK_MONOTONIC, &ts);
  return (uint64_t) ts.tv_sec * 1000000000ULL + (uint64_t) ts.tv_nsec;
}

/* The CLOCK_MONOTONIC time SECONDS from now. */
static inline struct timespec
kvm_deadline_in (int seconds)
{
  struct timespec t;
  clock_gettime (CLOCK_MONOTONIC, &t);
  t.tv_sec += seconds;
  return t;
}

/* Milliseconds left until D, for poll(2): 0 if past, at most 1000000. */
static inline int
kvm_ms_left (const struct timespec *d)
{
  struct timespec now;
  clock_gettime (CLOCK_MONOTONIC, &now);
  int64_t ms = (int64_t) (d->tv_sec - now.tv_sec) * 1000 +
    (d->tv_nsec - now.tv_nsec) / 1000000;
  return ms < 0 ? 0 : ms > 1000000 ? 1000000 : (int) ms;
}

#endif
