/* SPDX-License-Identifier: BSD-3-Clause */
/* Parser for LVM2's text metadata format (the "config" syntax that LVM
 * writes into metadata areas and into /etc/lvm/backup files):
 *
 *   # comment
 *   key = 123
 *   key = "string with \" escapes"
 *   key = [ "a", 1, "b", 2 ]
 *   name {
 *     nested = ...
 *   }
 *
 * The parser is bounded: input size, nesting depth and node count are
 * limited, every number is range-checked, and all memory comes from one
 * arena freed at once.  It never reads outside the given buffer, which
 * need not be NUL-terminated (a NUL byte ends the text).
 */
#ifndef KVM_LVM_TEXT_H
#define KVM_LVM_TEXT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define LVM_TEXT_MAX_SIZE   (64u << 20)   /* bytes of text */
#define LVM_TEXT_MAX_DEPTH  32            /* nested sections and arrays */
#define LVM_TEXT_MAX_NODES  (4u << 20)    /* values, keys and sections */

enum lvm_node_type {
  LVM_NODE_SECTION,             /* name { ... } */
  LVM_NODE_INT,                 /* 123, -5 */
  LVM_NODE_FLOAT,               /* 1.5 (kept as text; unused by LVM2 metadata) */
  LVM_NODE_STRING,              /* "..." */
  LVM_NODE_ARRAY,               /* [ v, v, ... ] */
};

struct lvm_node {
  const char *key;              /* NULL for array elements */
  enum lvm_node_type type;
  unsigned line;                /* 1-based line of the key (or value) */
  struct lvm_node *next;        /* next sibling */
  /* SECTION and ARRAY: first child and number of children. */
  struct lvm_node *child;
  size_t count;
  /* INT */
  int64_t i;
  /* STRING and FLOAT: NUL-terminated (a string may also contain no NUL). */
  const char *s;
  size_t len;
};

struct lvm_text;                /* arena + root */

/* Parse LEN bytes of TEXT.  On success returns the tree; its root is a
 * section with key NULL.  On error returns NULL and writes a message
 * ("line N: ...") into ERR (ERRLEN bytes).
 */
struct lvm_text *lvm_text_parse (const char *text, size_t len,
                                 char *err, size_t errlen);
void lvm_text_free (struct lvm_text *t);
const struct lvm_node *lvm_text_root (const struct lvm_text *t);

/* Lookups in a section (first match; NULL if absent or SEC is NULL). */
const struct lvm_node *lvm_node_get (const struct lvm_node *sec,
                                     const char *key);
/* Typed getters: false if the key is absent or of another type. */
bool lvm_node_get_int (const struct lvm_node *sec, const char *key,
                       int64_t *v);
const char *lvm_node_get_str (const struct lvm_node *sec, const char *key);
const struct lvm_node *lvm_node_get_section (const struct lvm_node *sec,
                                             const char *key);
/* Does the string array KEY contain the string FLAG? */
bool lvm_node_has_flag (const struct lvm_node *sec, const char *key,
                        const char *flag);

#endif
