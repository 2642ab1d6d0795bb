/* SPDX-License-Identifier: BSD-3-Clause */
#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>

#include "lru.h"

struct entry {
  uint64_t key;
  struct entry *hnext;              /* hash chain */
  struct entry *prev, *next;        /* LRU list, most recent first */
  unsigned pins;
  bool loading, valid;
  /* entry_size bytes of data follow */
  _Alignas (16) unsigned char data[];   /* malloc gives 16-byte alignment */
};

struct lru {
  pthread_mutex_t lock;
  pthread_cond_t loaded;
  size_t entry_size, capacity, count;
  size_t nbuckets;
  struct entry **buckets;
  struct entry *head, *tail;
  uint64_t hits, misses;
};

#define ENTRY_OF(buf) \
  ((struct entry *) ((unsigned char *) (buf) - offsetof (struct entry, data)))

struct lru *
lru_new (size_t entry_size, size_t capacity)
{
  struct lru *c = calloc (1, sizeof *c);
  if (!c)
    return NULL;
  if (capacity < 1)
    capacity = 1;
  c->entry_size = entry_size;
  c->capacity = capacity;
  c->nbuckets = 1;
  while (c->nbuckets < capacity * 2)
    c->nbuckets <<= 1;
  c->buckets = calloc (c->nbuckets, sizeof *c->buckets);
  if (!c->buckets) {
    free (c);
    return NULL;
  }
  pthread_mutex_init (&c->lock, NULL);
  pthread_cond_init (&c->loaded, NULL);
  return c;
}

void
lru_free (struct lru *c)
{
  if (!c)
    return;
  for (struct entry *e = c->head, *n; e; e = n) {
    n = e->next;
    free (e);
  }
  free (c->buckets);
  pthread_mutex_destroy (&c->lock);
  pthread_cond_destroy (&c->loaded);
  free (c);
}

static size_t
bucket (const struct lru *c, uint64_t key)
{
  key ^= key >> 33;
  key *= 0xff51afd7ed558ccdULL;
  key ^= key >> 33;
  return key & (c->nbuckets - 1);
}

static void
list_unlink (struct lru *c, struct entry *e)
{
  if (e->prev) e->prev->next = e->next; else c->head = e->next;
  if (e->next) e->next->prev = e->prev; else c->tail = e->prev;
  e->prev = e->next = NULL;
}

static void
list_push_front (struct lru *c, struct entry *e)
{
  e->prev = NULL;
  e->next = c->head;
  if (c->head) c->head->prev = e; else c->tail = e;
  c->head = e;
}

static void
remove_entry (struct lru *c, struct entry *e)
{
  struct entry **pp = &c->buckets[bucket (c, e->key)];
  while (*pp != e)
    pp = &(*pp)->hnext;
  *pp = e->hnext;
  list_unlink (c, e);
  c->count--;
  free (e);
}

/* Evict unpinned entries from the cold end until under capacity. */
static void
shrink (struct lru *c)
{
  struct entry *e = c->tail;
  while (c->count > c->capacity && e) {
    struct entry *p = e->prev;
    if (e->pins == 0 && !e->loading)
      remove_entry (c, e);
    e = p;
  }
}

static struct entry *
find (struct lru *c, uint64_t key)
{
  for (struct entry *e = c->buckets[bucket (c, key)]; e; e = e->hnext)
    if (e->key == key)
      return e;
  return NULL;
}

void *
lru_get (struct lru *c, uint64_t key, lru_load_fn load, void *opaque)
{
  struct entry *e;

  pthread_mutex_lock (&c->lock);
 again:
  e = find (c, key);
  if (e) {
    if (e->loading) {
      pthread_cond_wait (&c->loaded, &c->lock);
      goto again;
    }
    e->pins++;
    c->hits++;
    list_unlink (c, e);
    list_push_front (c, e);
    pthread_mutex_unlock (&c->lock);
    return e->data;
  }

  c->misses++;
  e = malloc (sizeof *e + c->entry_size);
  if (!e) {
    pthread_mutex_unlock (&c->lock);
    errno = ENOMEM;
    return NULL;
  }
  e->key = key;
  e->pins = 1;
  e->loading = true;
  e->valid = false;
  size_t b = bucket (c, key);
  e->hnext = c->buckets[b];
  c->buckets[b] = e;
  list_push_front (c, e);
  c->count++;
  shrink (c);
  pthread_mutex_unlock (&c->lock);

  int r = load (opaque, key, e->data);
  int saved = errno;

  pthread_mutex_lock (&c->lock);
  e->loading = false;
  pthread_cond_broadcast (&c->loaded);
  if (r == -1) {
    remove_entry (c, e);
    pthread_mutex_unlock (&c->lock);
    errno = saved;
    return NULL;
  }
  e->valid = true;
  pthread_mutex_unlock (&c->lock);
  return e->data;
}

void
lru_put (struct lru *c, void *buf)
{
  if (!buf)
    return;
  struct entry *e = ENTRY_OF (buf);
  pthread_mutex_lock (&c->lock);
  e->pins--;
  if (c->count > c->capacity)
    shrink (c);
  pthread_mutex_unlock (&c->lock);
}

void
lru_invalidate (struct lru *c, uint64_t key)
{
  pthread_mutex_lock (&c->lock);
  struct entry *e = find (c, key);
  if (e && e->pins == 0 && !e->loading)
    remove_entry (c, e);
  pthread_mutex_unlock (&c->lock);
}

void
lru_stats (struct lru *c, uint64_t *hits, uint64_t *misses)
{
  pthread_mutex_lock (&c->lock);
  *hits = c->hits;
  *misses = c->misses;
  pthread_mutex_unlock (&c->lock);
}
