/* SPDX-License-Identifier: BSD-3-Clause */
/* Minimal assertions for the C unit tests: print where and why, exit 1. */
#ifndef KVM_TEST_CHECK_H
#define KVM_TEST_CHECK_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <errno.h>

#define CHECK(cond)                                                     \
  do {                                                                  \
    if (!(cond)) {                                                      \
      fprintf (stderr, "%s:%d: CHECK failed: %s (errno: %s)\n",         \
               __FILE__, __LINE__, #cond, strerror (errno));            \
      exit (1);                                                         \
    }                                                                   \
  } while (0)

#define CHECK_EQ_U64(a, b)                                              \
  do {                                                                  \
    unsigned long long a_ = (a), b_ = (b);                              \
    if (a_ != b_) {                                                     \
      fprintf (stderr, "%s:%d: %s == %s failed: %llu != %llu\n",        \
               __FILE__, __LINE__, #a, #b, a_, b_);                     \
      exit (1);                                                         \
    }                                                                   \
  } while (0)

#endif
