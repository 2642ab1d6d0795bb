/* SPDX-License-Identifier: BSD-3-Clause */
#include <stdio.h>
#include <errno.h>

#include "log.h"

static void
stderr_log (const char *fmt, va_list args)
{
  vfprintf (stderr, fmt, args);
  fputc ('\n', stderr);
}

static void
no_debug (const char *fmt, va_list args)
{
  (void) fmt; (void) args;
}

static kvm_log_fn error_fn = stderr_log;
static kvm_log_fn debug_fn = no_debug;

void
kvm_log_set (kvm_log_fn e, kvm_log_fn d)
{
  error_fn = e ? e : stderr_log;
  debug_fn = d ? d : no_debug;
}

/* Both preserve errno so callers can report and then return -1. */
void
kvm_error (const char *fmt, ...)
{
  int saved = errno;
  va_list args;
  va_start (args, fmt);
  error_fn (fmt, args);
  va_end (args);
  errno = saved;
}

int
kvm_fail (int err, const char *fmt, ...)
{
  va_list args;
  va_start (args, fmt);
  error_fn (fmt, args);
  va_end (args);
  errno = err;
  return -1;
}

void
kvm_debug (const char *fmt, ...)
{
  int saved = errno;
  va_list args;
  va_start (args, fmt);
  debug_fn (fmt, args);
  va_end (args);
  errno = saved;
}

void
kvm_seterr (char *err, size_t errlen, const char *fmt, ...)
{
  int saved = errno;
  va_list args;
  if (errlen == 0)
    return;
  va_start (args, fmt);
  vsnprintf (err, errlen, fmt, args);
  va_end (args);
  errno = saved;
}
