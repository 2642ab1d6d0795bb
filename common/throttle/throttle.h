/* SPDX-License-Identifier: BSD-3-Clause */
/* I/O throttling engine: leaky buckets with bursts (the semantics of
 * QEMU's throttle groups / libvirt <iotune>) and a fair scheduler that
 * admits requests of several "members" (connections) of one group.
 *
 * Plain C, no nbdkit dependency.  Time comes from an injectable clock
 * (struct thr_clock), so the arithmetic and the scheduler can be tested
 * with a virtual clock.
 *
 * Model (per bucket, for each of the six limits bps/iops x total/read/
 * write):
 *  - level: units (bytes or I/Os) accounted and not yet leaked; it leaks
 *    at the sustained rate "avg" per second.
 *  - capacity: avg/10 when no burst is configured, else max * max_length.
 *  - a request is admitted when every bucket it touches is not above its
 *    capacity; then its units are added (so one large request can take a
 *    bucket above capacity, and the following requests wait for the
 *    excess to leak: the average rate is exact).
 *  - with a burst (max set and max_length > 1) a second bucket leaks at
 *    "max" and has capacity max/10: it bounds the rate during a burst.
 */
#ifndef KVM_THROTTLE_H
#define KVM_THROTTLE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum thr_kind {
  THR_BPS_TOTAL, THR_BPS_READ, THR_BPS_WRITE,
  THR_IOPS_TOTAL, THR_IOPS_READ, THR_IOPS_WRITE,
  THR_NR_KINDS
};

enum thr_op { THR_OP_READ, THR_OP_WRITE };

/* Largest accepted rate (bytes or I/Os per second) and burst length. */
#define THR_VALUE_MAX 1000000000000000ULL      /* 1e15, as QEMU */
#define THR_MAX_LENGTH_MAX 86400ULL            /* one day */

struct thr_limit {
  uint64_t avg;                 /* sustained rate per second, 0 = none */
  uint64_t max;                 /* burst rate per second, 0 = none */
  uint64_t max_length;          /* seconds a burst may last, 0 = default 1 */
};

struct thr_limits {
  struct thr_limit l[THR_NR_KINDS];
  uint64_t iops_size;           /* 0 = every request is one I/O */
};

/* Names of the parameters, "bps-total" ... "iops-write". */
extern const char *const thr_kind_names[THR_NR_KINDS];

/* Parse a size with this function (nbdkit_parse_size in the filter).  It
 * returns -1 on error (and may report the error itself).
 */
typedef int64_t (*thr_parse_size_fn) (const char *str);

/* Apply one "key=value" limit setting.  Keys: bps-total, bps-read,
 * bps-write, iops-total, iops-read, iops-write, each with the suffixes
 * "" (sustained), "-max" (burst rate), "-max-length" (seconds), and
 * iops-size.  Byte rates and iops-size use parse_size; I/O rates and
 * lengths are plain decimal integers.
 * Returns 1 when applied, 0 when the key is not a limit key (nothing
 * changed), -1 on a bad value (message in err).
 */
int thr_limits_set (struct thr_limits *lim, const char *key,
                    const char *value, thr_parse_size_fn parse_size,
                    char *err, size_t errlen);

/* Check consistency (QEMU's rules): max >= avg, max needs avg,
 * max-length > 1 needs max.  Returns 0 or -1 (message in err).
 */
int thr_limits_check (const struct thr_limits *lim, char *err, size_t errlen);

/* True if any sustained limit is set. */
bool thr_limits_any (const struct thr_limits *lim);

bool thr_limits_equal (const struct thr_limits *a, const struct thr_limits *b);

/* Parse the text of a throttle file for the group named `group' (NULL:
 * the defaults only) over a copy of *base: lines of "key=value" (limit
 * keys only), '#' comments, blank lines, and "[NAME]" section headers.
 * Lines before the first section apply to every group; lines of the
 * sections named `group' apply to that group, over the former.  Every
 * line and every section is checked, whatever `group'.  On success *out
 * is the result and 0 is returned; on error *out is untouched, -1 is
 * returned and err says which line or section is wrong.
 */
int thr_limits_parse_text (const struct thr_limits *base, const char *text,
                           const char *group, thr_parse_size_fn parse_size,
                           struct thr_limits *out, char *err, size_t errlen);

/* A simple parser of nbdkit's size syntax (digits and one optional
 * suffix b, k/K, m/M, g/G, t/T, p/P, e/E, powers of 1024), for tools and
 * tests that have no nbdkit.  Returns -1 on error.
 */
int64_t thr_parse_size_simple (const char *str);

/* ---- Bucket arithmetic (no locking, no clock: times are passed in) ---- */

struct thr_buckets {
  double level[THR_NR_KINDS];
  double burst_level[THR_NR_KINDS];
  uint64_t last_ns;             /* time of the last leak */
};

void thr_buckets_init (struct thr_buckets *b, uint64_t now_ns);

/* Leak the buckets up to now_ns (a time before the last leak leaks
 * nothing).
 */
void thr_buckets_leak (struct thr_buckets *b, const struct thr_limits *lim,
                       uint64_t now_ns);

/* Nanoseconds to wait from now_ns before a request of this direction may
 * be admitted (leaks first).  0 means: admit now.  A request that does
 * not count bytes (count_bytes false) waits only for the iops buckets.
 */
uint64_t thr_buckets_wait (struct thr_buckets *b, const struct thr_limits *lim,
                           enum thr_op op, bool count_bytes, uint64_t now_ns);

/* Account an admitted request: its bytes (when count_bytes) in the bps
 * buckets and its I/Os (1, or bytes/iops-size when larger) in the iops
 * buckets.
 */
void thr_buckets_account (struct thr_buckets *b, const struct thr_limits *lim,
                          enum thr_op op, uint64_t bytes, bool count_bytes);

/* I/O units a request of this size counts for. */
double thr_io_units (const struct thr_limits *lim, uint64_t bytes);

/* ---- Groups and the fair scheduler ---- */

struct thr_clock {
  /* Monotonic time in nanoseconds. */
  uint64_t (*now) (void *opaque);
  /* Sleep ns nanoseconds; return 0, or -1 (errno set) when the wait must
   * be abandoned (server shutting down, client gone).
   */
  int (*sleep) (void *opaque, uint64_t ns);
  /* Optional: called by a waiting request between sleeps, without any
   * lock held (the filter re-reads its throttle file here).
   */
  void (*poll) (void *opaque);
  void *opaque;
  /* Longest single sleep (ns); 0 = 100 ms.  A limit change is noticed
   * by a waiting request after at most this long.
   */
  uint64_t max_sleep_ns;
};

struct thr_stats {
  uint64_t read_ops, write_ops;         /* admitted requests */
  uint64_t read_bytes, write_bytes;     /* bytes of admitted requests */
  uint64_t delayed_ops;                 /* requests that had to wait */
  uint64_t delayed_bytes;
  uint64_t delay_ns;                    /* total time they waited */
  uint64_t aborted_ops;                 /* waits abandoned (shutdown) */
};

struct thr_group;
struct thr_member;

/* Returns NULL on allocation failure.  The clock is copied. */
struct thr_group *thr_group_new (const char *name,
                                 const struct thr_limits *lim,
                                 const struct thr_clock *clock);
/* The group must have no members left. */
void thr_group_free (struct thr_group *g);
const char *thr_group_name (const struct thr_group *g);

/* Replace the limits.  When they differ from the current ones, the bucket
 * levels restart from empty (as QEMU does on a reconfiguration) and the
 * waiting request re-evaluates.  Returns true when they changed.
 */
bool thr_group_set_limits (struct thr_group *g, const struct thr_limits *lim);
void thr_group_get_limits (struct thr_group *g, struct thr_limits *lim);
void thr_group_get_stats (struct thr_group *g, struct thr_stats *st);
/* Whether every bucket has leaked empty by now: a group with no member
 * left is then no different from a new one (the filter keeps a group
 * whose last connection closed until then, so that reconnecting does not
 * refill its burst allowance).
 */
bool thr_group_drained (struct thr_group *g);
/* Whether requests admitted while the group has no limit at all are
 * counted in the statistics (an atomic add per request; default off).
 */
void thr_group_count_unlimited (struct thr_group *g, bool on);

/* A member is one competitor of the group (one connection).  Members take
 * turns (round robin): when several have waiting requests, each admission
 * goes to the next member, and within a member requests keep their order.
 */
struct thr_member *thr_member_new (struct thr_group *g);
/* The member must have no request waiting. */
void thr_member_free (struct thr_member *m);

/* Wait until the request may proceed and account it.  bytes is the
 * request length; count_bytes false makes it count only as one I/O
 * (zero, trim).  Returns 0, or -1 with errno set when the clock's sleep
 * failed (the request is then not accounted).
 */
int thr_admit (struct thr_member *m, enum thr_op op, uint64_t bytes,
               bool count_bytes);

#endif
