/* SPDX-License-Identifier: BSD-3-Clause */
/* One open bdev per export name, shared by every connection to that
 * export: metadata caches stay coherent and a flush on any connection
 * covers all of them.  The first connection opens the engine, the last
 * one to leave closes it.
 *
 * Header only (each plugin or filter keeps its own registry); no nbdkit
 * dependency.
 */
#ifndef KVM_BDEV_REGISTRY_H
#define KVM_BDEV_REGISTRY_H

#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "bdev/bdev.h"
#include "util/log.h"

struct bdev_registry_entry {
  struct bdev_registry_entry *next;
  char *export;
  struct bdev *bd;
  unsigned refs;
};

struct bdev_registry {
  pthread_mutex_t lock;
  struct bdev_registry_entry *entries;
  /* One export name at a time: set by filters, whose layer below may
   * give every name the same storage (a plugin that ignores names), where
   * two engines would allocate in one image without knowing of each
   * other.  While a name is open, another is refused with EBUSY; the
   * error names PER_NAME_PARAM, the parameter that lifts this.
   */
  bool one_name;
  const char *per_name_param;
};

#define BDEV_REGISTRY_INIT { PTHREAD_MUTEX_INITIALIZER, NULL, false, NULL }
#define BDEV_REGISTRY_INIT_ONE_NAME(per_name_param) \
  { PTHREAD_MUTEX_INITIALIZER, NULL, true, (per_name_param) }

/* The filters' KEY=one|per-name parameter (qcow2-exports=, ...): whether
 * R serves one export name at a time.  -1 (error reported) if VALUE is
 * neither.
 */
static inline int
bdev_registry_names_param (struct bdev_registry *r, const char *key,
                           const char *value)
{
  if (strcmp (value, "one") == 0)
    r->one_name = true;
  else if (strcmp (value, "per-name") == 0)
    r->one_name = false;
  else {
    kvm_error ("%s must be 'one' or 'per-name', not '%s'", key, value);
    return -1;
  }
  return 0;
}

/* Opens the bdev of EXPORT; ARG is passed through. */
typedef struct bdev *(*bdev_registry_open_fn) (const char *export,
                                               void *arg);

/* The bdev of EXPORT, opened with OPEN if no connection has it open.
 * NULL (error reported) on failure.  Release with
 * bdev_registry_put.
 */
static inline struct bdev_registry_entry *
bdev_registry_get (struct bdev_registry *r, const char *export,
                   bdev_registry_open_fn open, void *arg)
{
  struct bdev_registry_entry *e;

  pthread_mutex_lock (&r->lock);
  for (e = r->entries; e; e = e->next)
    if (strcmp (e->export, export) == 0)
      break;
  if (!e && r->one_name && r->entries) {
    pthread_mutex_unlock (&r->lock);
    kvm_error ("export '%s' refused: export '%s' is open, and one export "
               "name is served at a time (the layer below may store every "
               "name in the same place); %s=per-name serves each name as "
               "its own image", export, r->entries->export,
               r->per_name_param);
    errno = EBUSY;
    return NULL;
  }
  if (!e) {
    e = calloc (1, sizeof *e);
    if (!e || !(e->export = strdup (export))) {
      free (e);
      pthread_mutex_unlock (&r->lock);
      errno = ENOMEM;
      kvm_error ("export %s: out of memory", export);
      return NULL;
    }
    /* Opened under the lock: a second connection to the same export
     * waits for the first one's open instead of opening a second engine.
     */
    e->bd = open (export, arg);
    if (!e->bd) {
      free (e->export);
      free (e);
      pthread_mutex_unlock (&r->lock);
      return NULL;
    }
    e->next = r->entries;
    r->entries = e;
  }
  e->refs++;
  pthread_mutex_unlock (&r->lock);
  return e;
}

/* Drop one reference; the last one flushes the bdev and closes it.  If
 * that flush fails, the bdev stays open with no reference, and the next
 * bdev_registry_get of its export takes it again: closing it would drop
 * what its engine holds in memory (mappings of writes that it has
 * acknowledged) and reopen the image as it is on disk.  nbdkit's retry
 * filter above a filter reopens the filter (.finalize, then .prepare)
 * within one client connection whenever a request fails: a write
 * acknowledged before it would then be lost, the client's next flush
 * succeeding all the same.  A bdev left open is closed (and flushed
 * again) once a later last reference goes, or at unload; with one_name,
 * other export names are refused (EBUSY) meanwhile.
 */
static inline void
bdev_registry_put (struct bdev_registry *r, struct bdev_registry_entry *e)
{
  pthread_mutex_lock (&r->lock);
  if (--e->refs == 0) {
    /* Twice: a flush may leave work for the next one (the qcow2 engine
     * writes the refcounts of clusters its flush freed then), which the
     * close would otherwise do with no way back if it failed.
     */
    if (bdev_flush (e->bd) == -1 || bdev_flush (e->bd) == -1) {
      kvm_error ("export '%s': the flush as its last connection ended "
                 "failed: the image stays open, and the next connection "
                 "to it goes on from there", e->export);
      pthread_mutex_unlock (&r->lock);
      return;
    }
    for (struct bdev_registry_entry **pp = &r->entries; *pp;
         pp = &(*pp)->next)
      if (*pp == e) {
        *pp = e->next;
        break;
      }
    bdev_close (e->bd);
    free (e->export);
    free (e);
  }
  pthread_mutex_unlock (&r->lock);
}

/* Close whatever is still open (at unload). */
static inline void
bdev_registry_close_all (struct bdev_registry *r)
{
  pthread_mutex_lock (&r->lock);
  for (struct bdev_registry_entry *e = r->entries, *n; e; e = n) {
    n = e->next;
    bdev_close (e->bd);
    free (e->export);
    free (e);
  }
  r->entries = NULL;
  pthread_mutex_unlock (&r->lock);
}

#endif
