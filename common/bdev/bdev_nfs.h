/* SPDX-License-Identifier: BSD-3-Clause */
/* The NFS backend of the block-device interface (libnfs), for URLs
 *
 *   nfs://SERVER/EXPORT/PATH[?OPTION=VALUE[&...]]
 *
 * bdev_storage_open() dispatches such paths here, so every format engine
 * opens its container, backing and extent files on NFS without knowing.
 * Options (query parameters, also inherited by the files an image names
 * beside it):
 *   uid=N, gid=N        credentials sent to the server (AUTH_SYS)
 *   version=3|4         NFS version (default 3; 4 is read-only: libnfs 4.0
 *                       cannot encode NFSv4 writes of 4 KiB or more)
 *   timeout=SECONDS     how long a request may wait for the server, across
 *                       reconnections, before it fails with EIO (default 60)
 *   conns=N             connections (libnfs contexts) per open file, the
 *                       requests in flight at once (default 16, nbdkit's
 *                       default thread count; 1..64)
 *   nfsport=P, mountport=P  skip the portmapper (passed to libnfs)
 *
 * libnfs contexts are not thread-safe: each open file keeps a pool of them,
 * and a request borrows one for its duration, with its large transfers
 * split into several RPCs in flight at once.  The calling thread waits on
 * the connection itself: one wakeup per request, the least a server with a
 * thread per request (nbdkit) can pay.  One context shared by all threads
 * with a service thread (QEMU's design, where one event loop serves
 * everything) adds a wakeup and a handoff per request here: measured 3.3-3.8
 * context switches per 4 KiB request against 2.0.  A connection that breaks
 * (server restart) is dropped and the request retried on a new one until
 * the timeout.
 */
#ifndef KVM_BDEV_NFS_H
#define KVM_BDEV_NFS_H

#include <stdbool.h>
#include <stdint.h>

#include "bdev.h"

/* Does PATH use the nfs:// scheme? */
bool bdev_nfs_is_url (const char *path);

/* Open URL as a raw device; opts->growable: writes past the end extend it. */
struct bdev *bdev_nfs_open (const char *url, const struct bdev_open_opts *opts);

/* Create URL as a new sparse file of SIZE bytes (fails if it exists). */
int bdev_nfs_create (const char *url, uint64_t size);

/* What URL names: 0 missing, 1 regular file, 2 directory, -1 error. */
int bdev_nfs_stat (const char *url, uint64_t *size);

/* Call FN for every regular file in directory URL, in server order. */
int bdev_nfs_list (const char *url,
                   int (*fn) (void *opaque, const char *name, uint64_t size),
                   void *opaque);

#endif
