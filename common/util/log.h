/* SPDX-License-Identifier: BSD-3-Clause */
/* Error and debug reporting for the engines in common/.  They have no nbdkit
 * dependency: an nbdkit adapter points these at nbdkit_verror/nbdkit_vdebug
 * with kvm_log_set(); unit tests and tools get stderr.
 */
#ifndef KVM_LOG_H
#define KVM_LOG_H

#include <stdarg.h>

typedef void (*kvm_log_fn) (const char *fmt, va_list args);

void kvm_log_set (kvm_log_fn error_fn, kvm_log_fn debug_fn);

void kvm_error (const char *fmt, ...) __attribute__ ((format (printf, 1, 2)));
void kvm_debug (const char *fmt, ...) __attribute__ ((format (printf, 1, 2)));

#endif
