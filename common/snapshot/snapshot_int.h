/* SPDX-License-Identifier: BSD-3-Clause */
/* Internals of the snapshot engine shared by snapshot.c (the chain, its
 * I/O and operations) and snapshot_state.c (the state file).
 */
#ifndef KVM_SNAPSHOT_INT_H
#define KVM_SNAPSHOT_INT_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include "snapshot.h"

struct link;

/* Layer ids (in file names and the state file) stay below 2^30. */
#define SNAP_MAX_ID ((1u << 30) - 1)

struct layer {
  unsigned id;
  char *name;                   /* snapshot name; NULL for the top layer */
  time_t time;
  struct bdev *bd;              /* qcow2 engine */
  struct link *link;            /* its backing (owned by bd) */
};

struct snap_chain {
  struct bdev bd;               /* first: the chain as a device */
  char *dir;
  int dirfd;
  struct bdev *below;
  char **fopts;
  pthread_rwlock_t lock;        /* I/O shared, operations exclusive */
  struct layer *layers;         /* bottom first; layers[n - 1] is the top */
  size_t n;
  unsigned next_id;
  uint64_t size;
  bool committing;
  bool keep_files;              /* a state's rename may not be durable */
  /* The last state's rename may not be durable yet (the directory sync
   * after it failed): a flush of the chain must sync the directory
   * before it succeeds, or a crash could bring back the previous state
   * without the writes it acknowledged to the top layer.  Set under the
   * exclusive lock; cleared by any successful sync of the directory.
   */
  atomic_bool state_unsynced;
};

/* The state file's content (snapshot_state.c). */
struct state {
  uint64_t size;
  unsigned next_id;
  bool committing;
  struct layer *layers;         /* ids, names, times only */
  size_t n;
};

/* Read DIR's state file into S (ENOENT: there is none yet). */
int snap_state_read (int dirfd, const char *dir, struct state *s);
/* fsync the overlay directory. */
int snap_fsync_dir (struct snap_chain *c);
/* Replace the state file atomically by one listing layers L[0..N). */
int snap_write_layers (struct snap_chain *c, const struct layer *l, size_t n,
                       bool committing);

#endif
