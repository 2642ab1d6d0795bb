/* SPDX-License-Identifier: BSD-3-Clause */
/* Error and debug reporting for the engines in common/.  They have no nbdkit
 * dependency: an nbdkit adapter points these at nbdkit_verror/nbdkit_vdebug
 * with kvm_log_set(); unit tests and tools get stderr.
 */
#ifndef KVM_LOG_H
#define KVM_LOG_H

#include <stdarg.h>
#include <stddef.h>

typedef void (*kvm_log_fn) (const char *fmt, va_list args);

void kvm_log_set (kvm_log_fn error_fn, kvm_log_fn debug_fn);

/* The one error convention of common/:
 * - A function that fails reports why with kvm_error() and returns -1 (or
 *   NULL) with errno set: the message reaches the user (nbdkit's log).
 * - A function whose failure the caller may still recover from (trying
 *   the next metadata copy, the next PV, skipping one LV) writes why into
 *   a caller's buffer with kvm_seterr() instead, and the caller decides
 *   whether it becomes a kvm_error(), a debug line or nothing.
 */
void kvm_error (const char *fmt, ...) __attribute__ ((format (printf, 1, 2)));

/* kvm_error(), then errno = ERR; returns -1, so that a failing path can
 * be one statement: return kvm_fail (EINVAL, "%s: bad header", path);
 */
int kvm_fail (int err, const char *fmt, ...)
  __attribute__ ((format (printf, 2, 3)));
void kvm_debug (const char *fmt, ...) __attribute__ ((format (printf, 1, 2)));

/* Format a message into ERR (ERRLEN bytes, may be 0); preserves errno,
 * and %m works as in kvm_error.
 */
void kvm_seterr (char *err, size_t errlen, const char *fmt, ...)
  __attribute__ ((format (printf, 3, 4)));

#endif
