/* SPDX-License-Identifier: BSD-3-Clause */
/* The nfs:// backend without a server: URL syntax and options are checked
 * before any connection (EINVAL, a message), unknown schemes are refused
 * by bdev_storage_open (ENOTSUP), and an unreachable server fails within
 * the timeout instead of hanging.  (Reads and writes against a real
 * server: tests/nfs.)
 */
#include <errno.h>
#include <stdio.h>
#include <time.h>

#include "bdev/bdev.h"
#ifdef HAVE_LIBNFS
#include "bdev/bdev_nfs.h"
#endif
#include "check.h"

#ifdef HAVE_LIBNFS
static void
bad (const char *url)
{
  struct bdev_open_opts o = { .readonly = true };
  errno = 0;
  CHECK (bdev_storage_open (url, &o) == NULL);
  if (errno != EINVAL) {
    fprintf (stderr, "%s: errno %d, expected EINVAL\n", url, errno);
    exit (1);
  }
}
#endif

int
main (void)
{
  struct bdev_open_opts o = { .readonly = true };

  CHECK (bdev_storage_is_url ("nfs://h/e/f"));
  CHECK (!bdev_storage_is_url ("/tmp/nfs://x"));
  errno = 0;
  CHECK (bdev_storage_open ("gopher://h/e/f", &o) == NULL);
  CHECK (errno == ENOTSUP);
#ifdef HAVE_LIBNFS
  CHECK (bdev_nfs_is_url ("nfs://h/e/f"));
  CHECK (!bdev_nfs_is_url ("nfsx://h/e/f"));
  bad ("nfs://");
  bad ("nfs:///export/f");
  bad ("nfs://host");
  bad ("nfs://host?uid=1/x");
  bad ("nfs://h/e/f?uid");
  bad ("nfs://h/e/f?uid=x");
  bad ("nfs://h/e/f?uid=-1");
  bad ("nfs://h/e/f?version=2");
  bad ("nfs://h/e/f?timeout=0");
  bad ("nfs://h/e/f?conns=0");
  bad ("nfs://h/e/f?conns=65");
  bad ("nfs://h/e/f?nfsport=70000");
  bad ("nfs://h/e/f?readahead=1");
  bad ("nfs://h/e/f?uid=1&&gid=2");
  bad ("nfs://h/e/f?aVeryLongKeyThatIsLongerThanThirtyTwoBytes=1");
  bad ("nfs://h:2049/e/f");             /* ports go in nfsport= */
  bad ("nfs://[::1/e/f");
  bad ("nfs://[]/e/f");

  /* A bracketed IPv6 address is a server name (no EINVAL): it fails
   * only when connecting.
   */
  errno = 0;
  CHECK (bdev_storage_open ("nfs://[::1]/e/f?nfsport=9&mountport=9"
                            "&timeout=5", &o) == NULL);
  CHECK (errno != 0 && errno != EINVAL);

  /* Nothing listens on port 9 of loopback: a prompt error, not a hang. */
  time_t t0 = time (NULL);
  errno = 0;
  CHECK (bdev_storage_open ("nfs://127.0.0.1/e/f?nfsport=9&mountport=9"
                            "&timeout=5", &o) == NULL);
  CHECK (errno != 0);
  CHECK (time (NULL) - t0 <= 10);
#else
  errno = 0;
  CHECK (bdev_storage_open ("nfs://h/e/f", &o) == NULL);
  CHECK (errno == ENOTSUP);
#endif
  printf ("bdev nfs: ok\n");
  return 0;
}
