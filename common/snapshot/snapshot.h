/* SPDX-License-Identifier: BSD-3-Clause */
/* snapshot engine: a persistent chain of qcow2 overlay layers in a
 * directory, over a device below (any bdev: the layer below an nbdkit
 * filter, or a file in the unit tests), with named snapshots.
 *
 * The directory holds
 *   snapshot.state     the chain: the recorded size of the device below,
 *                      the frozen layers bottom to top (id, creation
 *                      time, snapshot name) and the writable top layer;
 *                      replaced atomically (temp file, fsync, rename,
 *                      fsync of the directory)
 *   layer-ID.qcow2     one qcow2 v3 image per layer, of the size of the
 *                      device below.  Layers name no backing file (so
 *                      each one is a valid image on its own for qemu-img
 *                      info/check); the state file alone says how they
 *                      stack, and the engine gives each layer the one
 *                      below it (the bottom one: the device below) as its
 *                      backing device.
 * Files not named by the state file are left-overs of an operation that
 * a crash interrupted: they are removed when the chain is opened.
 *
 * Snapshot NAME is the content of the chain up to and including the layer
 * frozen by "create NAME".  The device below is only ever written by a
 * commit.  Every operation is atomic with respect to I/O through the
 * chain (a rwlock: I/O shared, operations exclusive) and crash-safe (the
 * state file switches from before to after in one rename; a commit
 * interrupted by a crash is finished when the chain is next opened).
 * For crash tests, KVM_SNAPSHOT_CRASH_AT=POINT in the environment makes
 * the process SIGKILL itself at that step of an operation (the points are
 * the crashpoint() calls in snapshot.c; tests/snapshot lists them).
 */
#ifndef KVM_SNAPSHOT_H
#define KVM_SNAPSHOT_H

#include <stdbool.h>
#include <stdint.h>
#include <time.h>

#include "bdev/bdev.h"

#define SNAP_STATE_FILE "snapshot.state"
#define SNAP_NAME_MAX 64
/* Layers in a chain (the snapshots plus the top): each one is an open
 * qcow2 image that reads of unwritten clusters look through, and the
 * state file is parsed with a duplicate check per line.
 */
#define SNAP_MAX_LAYERS 256

struct snap_chain;

/* Open the chain in DIR (created, with the directory if missing, on first
 * use) over BELOW, which the chain takes ownership of (also on failure).
 * The size of BELOW must be the size recorded when the chain was created.
 * An interrupted commit is finished here (this writes BELOW).
 * FORMAT_OPTS are passed to the qcow2 engine of every layer (may be NULL).
 */
struct snap_chain *snap_chain_open (const char *dir, struct bdev *below,
                                    const char *const *format_opts);

/* Flush and close every layer, and BELOW.  Views must be closed first. */
void snap_chain_close (struct snap_chain *c);

/* The chain as a writable device (the newest state): owned by the chain,
 * valid until snap_chain_close; never bdev_close it.
 */
struct bdev *snap_chain_bdev (struct snap_chain *c);

/* Operations; 0 or -1 with the reason reported through kvm_error. */
int snap_create (struct snap_chain *c, const char *name);
int snap_revert (struct snap_chain *c, const char *name);
int snap_delete (struct snap_chain *c, const char *name);
/* Write the whole chain into BELOW and empty it (drops every snapshot).
 * The calling thread must be able to write BELOW.
 */
int snap_commit (struct snap_chain *c);

struct snap_info {
  const char *name;
  time_t time;                  /* when it was created */
  uint64_t bytes;               /* size of its layer file */
};
typedef int (*snap_list_fn) (void *opaque, const struct snap_info *info);
/* Every snapshot, oldest first. */
int snap_list (struct snap_chain *c, snap_list_fn fn, void *opaque);

/* A read-only device showing snapshot NAME as it was frozen; reads fail
 * with ENOENT once the snapshot is deleted or reverted away.  Close it
 * with bdev_close before the chain.
 */
struct bdev *snap_view_open (struct snap_chain *c, const char *name);

/* Is NAME acceptable as a snapshot name (1-64 of [A-Za-z0-9._+:-], not
 * starting with '.' or '-')?
 */
bool snap_name_valid (const char *name);

/* The snapshot names in DIR's state file, without opening the chain (for
 * export listings): a NULL-terminated array to free with snap_names_free,
 * or NULL with errno set (ENOENT: no chain yet).
 */
char **snap_state_names (const char *dir);
void snap_names_free (char **names);

#endif
