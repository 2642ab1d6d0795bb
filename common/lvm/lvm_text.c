/* SPDX-License-Identifier: BSD-3-Clause */
/* Bounded recursive-descent parser for LVM2 text metadata (see lvm_text.h). */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lvm_text.h"
#include "util/log.h"

/* --- arena --------------------------------------------------------------- */

struct block {
  struct block *next;
  size_t used, size;
  max_align_t data[];
};

struct lvm_text {
  struct block *blocks;
  struct lvm_node root;
};

#define BLOCK_SIZE (64 * 1024)

static void *
arena_alloc (struct lvm_text *t, size_t n)
{
  struct block *b = t->blocks;
  n = (n + 15) & ~(size_t) 15;
  if (!b || b->size - b->used < n) {
    size_t sz = n > BLOCK_SIZE ? n : BLOCK_SIZE;
    b = malloc (sizeof *b + sz);
    if (!b)
      return NULL;
    b->size = sz;
    b->used = 0;
    b->next = t->blocks;
    t->blocks = b;
  }
  void *p = (char *) b->data + b->used;
  b->used += n;
  return p;
}

void
lvm_text_free (struct lvm_text *t)
{
  if (!t)
    return;
  struct block *b = t->blocks;
  while (b) {
    struct block *n = b->next;
    free (b);
    b = n;
  }
  free (t);
}

const struct lvm_node *
lvm_text_root (const struct lvm_text *t)
{
  return &t->root;
}

/* --- parser -------------------------------------------------------------- */

struct parser {
  struct lvm_text *t;
  const char *p, *end;
  unsigned line;
  size_t nodes;
  char *err;
  size_t errlen;
  bool failed;
};

__attribute__ ((format (printf, 2, 3)))
static void
perr (struct parser *ps, const char *fmt, ...)
{
  va_list ap;
  int n;
  if (ps->failed)
    return;
  ps->failed = true;
  if (!ps->errlen)
    return;
  n = snprintf (ps->err, ps->errlen, "line %u: ", ps->line);
  if (n < 0 || (size_t) n >= ps->errlen)
    return;
  va_start (ap, fmt);
  vsnprintf (ps->err + n, ps->errlen - n, fmt, ap);
  va_end (ap);
}

static struct lvm_node *
new_node (struct parser *ps, enum lvm_node_type type, const char *key)
{
  struct lvm_node *n;
  if (++ps->nodes > LVM_TEXT_MAX_NODES) {
    perr (ps, "too many values (limit %u)", LVM_TEXT_MAX_NODES);
    return NULL;
  }
  n = arena_alloc (ps->t, sizeof *n);
  if (!n) {
    perr (ps, "out of memory");
    return NULL;
  }
  memset (n, 0, sizeof *n);
  n->type = type;
  n->key = key;
  n->line = ps->line;
  return n;
}

static void
skip_space (struct parser *ps)
{
  while (ps->p < ps->end) {
    char c = *ps->p;
    if (c == '\n') {
      ps->line++;
      ps->p++;
    }
    else if (c == ' ' || c == '\t' || c == '\r' || c == '\v' || c == '\f')
      ps->p++;
    else if (c == '#') {
      while (ps->p < ps->end && *ps->p != '\n')
        ps->p++;
    }
    else
      break;
  }
}

static bool
is_ident_char (unsigned char c)
{
  if (c <= ' ' || c >= 0x7f)
    return false;
  return !strchr ("#={}[],\"'", c);
}

static bool
is_delim (struct parser *ps)
{
  if (ps->p >= ps->end)
    return true;
  return strchr (" \t\r\n\v\f,]}#", *ps->p) != NULL;
}

/* Copy [s, s+n) into the arena as a NUL-terminated string. */
static char *
arena_strndup (struct parser *ps, const char *s, size_t n)
{
  char *r = arena_alloc (ps->t, n + 1);
  if (!r) {
    perr (ps, "out of memory");
    return NULL;
  }
  memcpy (r, s, n);
  r[n] = 0;
  return r;
}

static const char *
parse_ident (struct parser *ps)
{
  const char *s = ps->p;
  while (ps->p < ps->end && is_ident_char (*ps->p))
    ps->p++;
  if (ps->p == s) {
    if (ps->p < ps->end && (unsigned char) *ps->p >= 0x20 &&
        (unsigned char) *ps->p < 0x7f)
      perr (ps, "expected a name, found '%c'", *ps->p);
    else
      perr (ps, "expected a name");
    return NULL;
  }
  return arena_strndup (ps, s, ps->p - s);
}

static struct lvm_node *
parse_string (struct parser *ps)
{
  char q = *ps->p++;
  const char *s = ps->p;
  size_t n = 0;
  unsigned start_line = ps->line;

  /* First pass: find the end and the unescaped length. */
  while (ps->p < ps->end && *ps->p != q) {
    if (*ps->p == '\\') {
      ps->p++;
      if (ps->p >= ps->end)
        break;
    }
    if (*ps->p == '\n')
      ps->line++;
    ps->p++;
    n++;
  }
  if (ps->p >= ps->end) {
    ps->line = start_line;
    perr (ps, "unterminated string");
    return NULL;
  }
  struct lvm_node *node = new_node (ps, LVM_NODE_STRING, NULL);
  if (!node)
    return NULL;
  node->line = start_line;
  char *d = arena_alloc (ps->t, n + 1);
  if (!d) {
    perr (ps, "out of memory");
    return NULL;
  }
  size_t j = 0;
  for (const char *c = s; c < ps->p; c++) {
    if (*c == '\\')
      c++;
    d[j++] = *c;
  }
  d[j] = 0;
  node->s = d;
  node->len = j;
  ps->p++;                      /* closing quote */
  return node;
}

static struct lvm_node *
parse_number (struct parser *ps)
{
  const char *s = ps->p;
  bool neg = false, isfloat = false;
  uint64_t v = 0;

  if (*ps->p == '-' || *ps->p == '+') {
    neg = *ps->p == '-';
    ps->p++;
  }
  if (ps->p >= ps->end || *ps->p < '0' || *ps->p > '9') {
    perr (ps, "invalid number");
    return NULL;
  }
  while (ps->p < ps->end && *ps->p >= '0' && *ps->p <= '9') {
    unsigned d = *ps->p - '0';
    if (v > (UINT64_MAX - d) / 10) {
      perr (ps, "number out of range");
      return NULL;
    }
    v = v * 10 + d;
    ps->p++;
  }
  if (ps->p < ps->end && *ps->p == '.') {
    isfloat = true;
    ps->p++;
    while (ps->p < ps->end && *ps->p >= '0' && *ps->p <= '9')
      ps->p++;
  }
  if (!is_delim (ps)) {
    perr (ps, "invalid number");
    return NULL;
  }
  struct lvm_node *node = new_node (ps, isfloat ? LVM_NODE_FLOAT
                                               : LVM_NODE_INT, NULL);
  if (!node)
    return NULL;
  if (isfloat) {
    node->s = arena_strndup (ps, s, ps->p - s);
    if (!node->s)
      return NULL;
    node->len = ps->p - s;
    return node;
  }
  if (neg ? v > (uint64_t) INT64_MAX + 1 : v > (uint64_t) INT64_MAX) {
    perr (ps, "number out of range");
    return NULL;
  }
  node->i = neg ? (int64_t) (0 - v) : (int64_t) v;
  return node;
}

static struct lvm_node *
parse_scalar (struct parser *ps)
{
  if (ps->p >= ps->end) {
    perr (ps, "expected a value, found end of text");
    return NULL;
  }
  char c = *ps->p;
  if (c == '"' || c == '\'')
    return parse_string (ps);
  if ((c >= '0' && c <= '9') || c == '-' || c == '+')
    return parse_number (ps);
  if ((unsigned char) c >= 0x20 && (unsigned char) c < 0x7f)
    perr (ps, "expected a value, found '%c'", c);
  else
    perr (ps, "expected a value");
  return NULL;
}

static struct lvm_node *
parse_value (struct parser *ps, unsigned depth)
{
  if (ps->p < ps->end && *ps->p == '[') {
    struct lvm_node *arr, **tail;
    if (depth + 1 > LVM_TEXT_MAX_DEPTH) {
      perr (ps, "nesting too deep (limit %d)", LVM_TEXT_MAX_DEPTH);
      return NULL;
    }
    arr = new_node (ps, LVM_NODE_ARRAY, NULL);
    if (!arr)
      return NULL;
    tail = &arr->child;
    ps->p++;
    skip_space (ps);
    while (ps->p < ps->end && *ps->p != ']') {
      struct lvm_node *v = parse_scalar (ps);
      if (!v)
        return NULL;
      *tail = v;
      tail = &v->next;
      arr->count++;
      skip_space (ps);
      if (ps->p < ps->end && *ps->p == ',') {
        ps->p++;
        skip_space (ps);
      }
      else if (ps->p < ps->end && *ps->p != ']') {
        perr (ps, "expected ',' or ']' in array");
        return NULL;
      }
    }
    if (ps->p >= ps->end) {
      perr (ps, "unterminated array");
      return NULL;
    }
    ps->p++;
    return arr;
  }
  return parse_scalar (ps);
}

/* Parse statements into SEC until '}' (if BRACED) or the end. */
static bool
parse_body (struct parser *ps, struct lvm_node *sec, bool braced,
            unsigned depth)
{
  struct lvm_node **tail = &sec->child;
  unsigned open_line = ps->line;

  for (;;) {
    skip_space (ps);
    if (ps->p >= ps->end) {
      if (braced) {
        perr (ps, "section '%s' opened on line %u is not closed",
              sec->key ? sec->key : "", open_line);
        return false;
      }
      return true;
    }
    if (*ps->p == '}') {
      if (!braced) {
        perr (ps, "unexpected '}'");
        return false;
      }
      ps->p++;
      return true;
    }

    unsigned line = ps->line;
    const char *key = parse_ident (ps);
    struct lvm_node *n;
    if (!key)
      return false;
    skip_space (ps);
    if (ps->p < ps->end && *ps->p == '{') {
      if (depth + 1 > LVM_TEXT_MAX_DEPTH) {
        perr (ps, "nesting too deep (limit %d)", LVM_TEXT_MAX_DEPTH);
        return false;
      }
      ps->p++;
      n = new_node (ps, LVM_NODE_SECTION, key);
      if (!n || !parse_body (ps, n, true, depth + 1))
        return false;
    }
    else if (ps->p < ps->end && *ps->p == '=') {
      ps->p++;
      skip_space (ps);
      n = parse_value (ps, depth);
      if (!n)
        return false;
      n->key = key;
    }
    else {
      perr (ps, "expected '=' or '{' after '%s'", key);
      return false;
    }
    n->line = line;
    *tail = n;
    tail = &n->next;
    sec->count++;
  }
}

struct lvm_text *
lvm_text_parse (const char *text, size_t len, char *err, size_t errlen)
{
  struct parser ps = { .err = err, .errlen = errlen, .line = 1 };

  if (errlen)
    err[0] = 0;
  if (len > LVM_TEXT_MAX_SIZE) {
    kvm_seterr (err, errlen, "metadata text too large (%zu bytes, limit %u)",
              len, LVM_TEXT_MAX_SIZE);
    errno = EFBIG;
    return NULL;
  }
  /* A NUL ends the text (LVM pads metadata with zeroes). */
  const char *nul = memchr (text, 0, len);
  if (nul)
    len = nul - text;

  ps.t = calloc (1, sizeof *ps.t);
  if (!ps.t) {
    kvm_seterr (err, errlen, "out of memory");
    errno = ENOMEM;
    return NULL;
  }
  ps.t->root.type = LVM_NODE_SECTION;
  ps.p = text;
  ps.end = text + len;
  if (!parse_body (&ps, &ps.t->root, false, 0)) {
    lvm_text_free (ps.t);
    errno = EINVAL;
    return NULL;
  }
  return ps.t;
}

/* --- lookups ------------------------------------------------------------- */

const struct lvm_node *
lvm_node_get (const struct lvm_node *sec, const char *key)
{
  if (!sec || sec->type != LVM_NODE_SECTION)
    return NULL;
  for (const struct lvm_node *n = sec->child; n; n = n->next)
    if (n->key && strcmp (n->key, key) == 0)
      return n;
  return NULL;
}

bool
lvm_node_get_int (const struct lvm_node *sec, const char *key, int64_t *v)
{
  const struct lvm_node *n = lvm_node_get (sec, key);
  if (!n || n->type != LVM_NODE_INT)
    return false;
  *v = n->i;
  return true;
}

const char *
lvm_node_get_str (const struct lvm_node *sec, const char *key)
{
  const struct lvm_node *n = lvm_node_get (sec, key);
  if (!n || n->type != LVM_NODE_STRING)
    return NULL;
  return n->s;
}

const struct lvm_node *
lvm_node_get_section (const struct lvm_node *sec, const char *key)
{
  const struct lvm_node *n = lvm_node_get (sec, key);
  if (!n || n->type != LVM_NODE_SECTION)
    return NULL;
  return n;
}

bool
lvm_node_has_flag (const struct lvm_node *sec, const char *key,
                   const char *flag)
{
  const struct lvm_node *n = lvm_node_get (sec, key);
  if (!n || n->type != LVM_NODE_ARRAY)
    return false;
  for (const struct lvm_node *e = n->child; e; e = e->next)
    if (e->type == LVM_NODE_STRING && strcmp (e->s, flag) == 0)
      return true;
  return false;
}
