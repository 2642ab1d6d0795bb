/* SPDX-License-Identifier: BSD-3-Clause */
/* A filter given twice (--filter=X --filter=X): nbdkit 1.32 loads the
 * module once and registers it twice, so both instances share every
 * static variable (engine registries, the context a thread is serving,
 * parameters) and cannot work: an outer qcow2 engine found the inner
 * one's, and the server hung.  Each filter counts its .load calls and
 * its .get_ready refuses a second instance through this.
 *
 * Header only.
 */
#ifndef KVM_UTIL_SINGLE_H
#define KVM_UTIL_SINGLE_H

#include "util/log.h"

/* -1 (error reported) if the filter NAME was loaded more than once. */
static inline int
kvm_filter_single (unsigned loads, const char *name)
{
  if (loads <= 1)
    return 0;
  kvm_error ("the %s filter cannot be stacked on itself (--filter=%s "
             "given %u times): its instances would share all their state",
             name, name, loads);
  return -1;
}

#endif
