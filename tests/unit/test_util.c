/* SPDX-License-Identifier: BSD-3-Clause */
/* Checked arithmetic, the monotonic clock, endian helpers, CRC-32C,
 * bitmap, LRU cache and the error reporting of common/.
 */
#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util/bitmap.h"
#include "util/checked.h"
#include "util/clock.h"
#include "util/crc32c.h"
#include "util/endian.h"
#include "util/grow.h"
#include "util/log.h"
#include "util/lru.h"
#include "util/sort.h"
#include "check.h"

static void
test_checked (void)
{
  uint64_t r;
  CHECK (ck_add64 (1, 2, &r) && r == 3);
  CHECK (!ck_add64 (UINT64_MAX, 1, &r));
  CHECK (!ck_mul64 (UINT64_MAX / 2 + 1, 2, &r));
  CHECK (ck_muladd64 (10, 3, 4, &r) && r == 22);
  CHECK (!ck_muladd64 (1, UINT64_MAX, 2, &r));
  CHECK (ck_range_within (10, 10, 20));
  CHECK (!ck_range_within (10, 11, 20));
  CHECK (!ck_range_within (UINT64_MAX, 2, UINT64_MAX));
  CHECK (ck_round_up64 (4097, 4096, &r) && r == 8192);
  CHECK (!ck_round_up64 (UINT64_MAX - 1, 4096, &r));
  CHECK (is_power_of_2 (65536) && !is_power_of_2 (0) && !is_power_of_2 (6));
  CHECK (div_round_up64 (UINT64_MAX, 2) == UINT64_MAX / 2 + 1);
}

static void
test_endian (void)
{
  unsigned char b[8];
  store_be32 (b, 0x01020304);
  CHECK (b[0] == 1 && b[3] == 4 && load_be32 (b) == 0x01020304);
  store_le64 (b, 0x0102030405060708ULL);
  CHECK (b[0] == 8 && b[7] == 1 && load_le64 (b) == 0x0102030405060708ULL);
  store_be16 (b + 1, 0xabcd);   /* unaligned */
  CHECK (b[1] == 0xab && load_be16 (b + 1) == 0xabcd);
}

static void
test_crc32c (void)
{
  /* Standard check value and the RFC 3720 test vectors. */
  CHECK (crc32c (0, "123456789", 9) == 0xE3069283);
  unsigned char z[32] = { 0 }, f[32];
  memset (f, 0xff, sizeof f);
  CHECK (crc32c (0, z, 32) == 0x8A9136AA);
  CHECK (crc32c (0, f, 32) == 0x62A8AB43);
  /* Running CRC equals one pass. */
  CHECK (crc32c (crc32c (0, "12345", 5), "6789", 4) == 0xE3069283);
}

static void
test_bitmap (void)
{
  struct bitmap bm;
  CHECK (bitmap_init (&bm, 1000) == 0);
  CHECK (bitmap_next (&bm, 0, true) == 1000);
  bitmap_set_range (&bm, 3, 500, true);
  CHECK (!bitmap_get (&bm, 2) && bitmap_get (&bm, 3) && bitmap_get (&bm, 502));
  CHECK (!bitmap_get (&bm, 503));
  CHECK (bitmap_next (&bm, 0, true) == 3);
  CHECK (bitmap_next (&bm, 3, false) == 503);
  bitmap_set_range (&bm, 990, 100, true);   /* clamped */
  CHECK (bitmap_get (&bm, 999) && !bitmap_get (&bm, 1000));
  bitmap_set (&bm, 5000, true);             /* ignored */
  bitmap_free (&bm);
}

static void
test_sort (void)
{
  /* Values far apart: a comparator returning their difference as an int
   * would get the order wrong.
   */
  uint64_t v[] = { UINT64_MAX, 3, 1ull << 63, 0, 3, 1ull << 32 };
  qsort (v, 6, sizeof *v, kvm_cmp_u64);
  CHECK (v[0] == 0 && v[1] == 3 && v[2] == 3 && v[3] == 1ull << 32);
  CHECK (v[4] == 1ull << 63 && v[5] == UINT64_MAX);
  CHECK (kvm_cmp_u64 (&v[1], &v[2]) == 0);
}

static int loads;

static int
load (void *opaque, uint64_t key, void *buf)
{
  (void) opaque;
  __atomic_add_fetch (&loads, 1, __ATOMIC_SEQ_CST);
  if (key == 666) {
    errno = EIO;
    return -1;
  }
  memcpy (buf, &key, sizeof key);
  return 0;
}

static void *
hammer (void *arg)
{
  struct lru *c = arg;
  for (uint64_t i = 0; i < 20000; i++) {
    uint64_t k = (i * 2654435761u) % 64;
    uint64_t *v = lru_get (c, k, load, NULL);
    CHECK (v && *v == k);
    lru_put (c, v);
  }
  return NULL;
}

static void
test_lru (void)
{
  struct lru *c = lru_new (sizeof (uint64_t), 4);
  CHECK (c);
  uint64_t *a = lru_get (c, 1, load, NULL);
  CHECK (a && *a == 1 && loads == 1);
  lru_put (c, a);
  a = lru_get (c, 1, load, NULL);           /* hit */
  CHECK (loads == 1);
  lru_put (c, a);
  for (uint64_t k = 2; k <= 5; k++)
    lru_put (c, lru_get (c, k, load, NULL));
  lru_put (c, lru_get (c, 1, load, NULL));  /* evicted: reloaded */
  CHECK (loads == 6);
  CHECK (lru_get (c, 666, load, NULL) == NULL && errno == EIO);
  /* Pinned entries survive beyond capacity. */
  void *pins[8];
  for (int i = 0; i < 8; i++)
    CHECK ((pins[i] = lru_get (c, 100 + i, load, NULL)));
  for (int i = 0; i < 8; i++)
    CHECK (*(uint64_t *) pins[i] == (uint64_t) (100 + i));
  for (int i = 0; i < 8; i++)
    lru_put (c, pins[i]);
  lru_invalidate (c, 107);
  uint64_t hits, misses;
  lru_stats (c, &hits, &misses);
  CHECK (hits >= 1 && misses >= 14);

  /* Concurrency: many threads, one small cache. */
  pthread_t t[4];
  for (int i = 0; i < 4; i++)
    CHECK (pthread_create (&t[i], NULL, hammer, c) == 0);
  for (int i = 0; i < 4; i++)
    pthread_join (t[i], NULL);
  lru_free (c);
}

static char logged[256];

static void
capture (const char *fmt, va_list args)
{
  vsnprintf (logged, sizeof logged, fmt, args);
}

static void
test_log (void)
{
  kvm_log_set (capture, NULL);
  errno = EINTR;
  kvm_error ("reported %d", 1);
  CHECK (errno == EINTR && strcmp (logged, "reported 1") == 0);
  errno = 0;
  CHECK (kvm_fail (EFBIG, "%s: too large (%u)", "img", 7u) == -1);
  CHECK (errno == EFBIG && strcmp (logged, "img: too large (7)") == 0);
  char buf[8];
  errno = ENOENT;
  kvm_seterr (buf, sizeof buf, "truncated %s", "here");
  CHECK (errno == ENOENT && strcmp (buf, "truncat") == 0);
  kvm_log_set (NULL, NULL);
}

static void
test_clock (void)
{
  uint64_t a = kvm_mono_ns (), b = kvm_mono_ns ();
  CHECK (a > 0 && b >= a);
  struct timespec past = kvm_deadline_in (-1), soon = kvm_deadline_in (2),
    far = kvm_deadline_in (1000000);
  CHECK (kvm_ms_left (&past) == 0);
  int left = kvm_ms_left (&soon);
  CHECK (left > 1000 && left <= 2000);
  CHECK (kvm_ms_left (&far) == 1000000);       /* clamped for poll(2) */
}

static void
test_grow (void)
{
  struct pair { uint64_t a, b; } *v = NULL;
  size_t n = 0, cap = 0;
  for (size_t i = 0; i < 1000; i++) {
    CHECK (GROW_FOR (v, n, cap, 4) == 0);
    CHECK (cap > n && (cap == 4 || cap % 8 == 0));
    v[n++] = (struct pair) { i, ~i };
  }
  CHECK (cap == 1024);
  for (size_t i = 0; i < n; i++)
    CHECK (v[i].a == i && v[i].b == ~i);
  /* Room already there: nothing moves. */
  struct pair *before = v;
  size_t cap_before = cap;
  CHECK (GROW_FOR (v, 10, cap, 4) == 0 && v == before && cap == cap_before);
  free (v);
  /* The byte count would overflow: ENOMEM, the array unchanged. */
  size_t big = SIZE_MAX / 2 + 1, nc = 0;
  void *x = malloc (1);
  errno = 0;
  CHECK (grow_array (x, big, 1, 4, &nc) == NULL && errno == ENOMEM && nc == 0);
  CHECK (grow_array (x, 4, SIZE_MAX / 4, 4, &nc) == NULL && errno == ENOMEM);
  free (x);
}

int
main (void)
{
  test_checked ();
  test_grow ();
  test_clock ();
  test_endian ();
  test_crc32c ();
  test_bitmap ();
  test_sort ();
  test_lru ();
  test_log ();
  printf ("util: ok\n");
  return 0;
}
