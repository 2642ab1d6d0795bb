/* SPDX-License-Identifier: BSD-3-Clause */
/* Throttle limits (parsing, checking) and the leaky-bucket arithmetic.
 * See throttle.h for the model.
 */
#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "throttle/throttle.h"
#include "util/checked.h"
#include "util/log.h"

#define NS_PER_SEC 1000000000.0

const char *const thr_kind_names[THR_NR_KINDS] = {
  "bps-total", "bps-read", "bps-write",
  "iops-total", "iops-read", "iops-write",
};

/* libvirt <iotune> element names accepted as aliases. */
static const char *const libvirt_names[THR_NR_KINDS] = {
  "total_bytes_sec", "read_bytes_sec", "write_bytes_sec",
  "total_iops_sec", "read_iops_sec", "write_iops_sec",
};

static bool
is_bps (int k)
{
  return k <= THR_BPS_WRITE;
}

enum field { F_AVG, F_MAX, F_MAX_LENGTH };

/* Find which kind and field a key names.  Returns false if none. */
static bool
lookup_key (const char *key, int *kind, enum field *field)
{
  int k;
  size_t n;

  for (k = 0; k < THR_NR_KINDS; ++k) {
    const char *names[2] = { thr_kind_names[k], libvirt_names[k] };
    const char *sfx_max[2] = { "-max", "_max" };
    const char *sfx_len[2] = { "-max-length", "_max_length" };
    int s;

    for (s = 0; s < 2; ++s) {
      n = strlen (names[s]);
      if (strncmp (key, names[s], n) != 0)
        continue;
      if (key[n] == '\0') {
        *kind = k; *field = F_AVG; return true;
      }
      if (strcmp (key + n, sfx_max[s]) == 0) {
        *kind = k; *field = F_MAX; return true;
      }
      if (strcmp (key + n, sfx_len[s]) == 0) {
        *kind = k; *field = F_MAX_LENGTH; return true;
      }
    }
  }
  return false;
}

/* Decimal unsigned integer, whole string, no sign. */
static int
parse_uint (const char *s, uint64_t *r)
{
  char *end;
  unsigned long long v;

  if (!isdigit ((unsigned char) s[0]))
    return -1;
  errno = 0;
  v = strtoull (s, &end, 10);
  if (errno != 0 || *end != '\0')
    return -1;
  *r = v;
  return 0;
}

int
thr_limits_set (struct thr_limits *lim, const char *key, const char *value,
                thr_parse_size_fn parse_size, char *err, size_t errlen)
{
  int kind;
  enum field field;
  uint64_t v;

  if (strcmp (key, "iops-size") == 0 || strcmp (key, "size_iops_sec") == 0) {
    int64_t s = parse_size (value);
    if (s < 0) {
      kvm_seterr (err, errlen, "%s: could not parse size '%s'", key, value);
      return -1;
    }
    if ((uint64_t) s > THR_VALUE_MAX) {
      kvm_seterr (err, errlen, "%s: '%s' is too large", key, value);
      return -1;
    }
    lim->iops_size = s;
    return 1;
  }

  if (!lookup_key (key, &kind, &field))
    return 0;

  if (field == F_MAX_LENGTH) {
    if (parse_uint (value, &v) == -1 || v < 1 || v > THR_MAX_LENGTH_MAX) {
      kvm_seterr (err, errlen,
                "%s: '%s' must be a whole number of seconds from 1 to %llu",
                key, value, (unsigned long long) THR_MAX_LENGTH_MAX);
      return -1;
    }
    lim->l[kind].max_length = v;
    return 1;
  }

  if (is_bps (kind)) {
    int64_t s = parse_size (value);
    if (s < 0) {
      kvm_seterr (err, errlen, "%s: could not parse rate '%s' "
                "(bytes per second, e.g. 100M)", key, value);
      return -1;
    }
    v = s;
  }
  else if (parse_uint (value, &v) == -1) {
    kvm_seterr (err, errlen, "%s: '%s' is not a whole number of I/Os "
              "per second", key, value);
    return -1;
  }
  if (v > THR_VALUE_MAX) {
    kvm_seterr (err, errlen, "%s: '%s' is too large (at most %llu)",
              key, value, (unsigned long long) THR_VALUE_MAX);
    return -1;
  }
  if (field == F_AVG)
    lim->l[kind].avg = v;
  else
    lim->l[kind].max = v;
  return 1;
}

int
thr_limits_check (const struct thr_limits *lim, char *err, size_t errlen)
{
  int k;

  for (k = 0; k < THR_NR_KINDS; ++k) {
    const struct thr_limit *l = &lim->l[k];
    const char *n = thr_kind_names[k];

    if (l->max && !l->avg) {
      kvm_seterr (err, errlen, "%s-max needs %s to be set", n, n);
      return -1;
    }
    if (l->max && l->max < l->avg) {
      kvm_seterr (err, errlen, "%s-max (%" PRIu64 ") cannot be lower than "
                "%s (%" PRIu64 ")", n, l->max, n, l->avg);
      return -1;
    }
    if (l->max_length > 1 && !l->max) {
      kvm_seterr (err, errlen, "%s-max-length needs %s-max to be set", n, n);
      return -1;
    }
  }
  return 0;
}

bool
thr_limits_any (const struct thr_limits *lim)
{
  int k;
  for (k = 0; k < THR_NR_KINDS; ++k)
    if (lim->l[k].avg)
      return true;
  return false;
}

bool
thr_limits_equal (const struct thr_limits *a, const struct thr_limits *b)
{
  int k;
  if (a->iops_size != b->iops_size)
    return false;
  for (k = 0; k < THR_NR_KINDS; ++k) {
    uint64_t la = a->l[k].max_length ? a->l[k].max_length : 1;
    uint64_t lb = b->l[k].max_length ? b->l[k].max_length : 1;
    if (a->l[k].avg != b->l[k].avg || a->l[k].max != b->l[k].max || la != lb)
      return false;
  }
  return true;
}

static char *
trim (char *s)
{
  char *e;
  while (*s == ' ' || *s == '\t' || *s == '\r')
    s++;
  e = s + strlen (s);
  while (e > s && (e[-1] == ' ' || e[-1] == '\t' || e[-1] == '\r'))
    *--e = '\0';
  return s;
}

/* One pass over the file text.  Top-level lines go to *top.  Lines of
 * each section go over a copy of *top_final together with the lines of
 * earlier sections of the same name (when top_final is NULL, i.e. in the
 * first pass, they are only syntax-checked): that sum is what a group of
 * that name gets, and is checked for consistency at each section's end;
 * lines of sections named `group' also go to *group_out.
 */
static int
parse_pass (char *copy, thr_parse_size_fn parse_size,
            struct thr_limits *top, const struct thr_limits *top_final,
            const char *group, struct thr_limits *group_out,
            char *err, size_t errlen)
{
  char *line = copy, msg[256];
  const char *section = "";             /* points into copy */
  bool in_section = false;
  struct thr_limits sec;
  int lineno = 0, ret = -1;
  struct named { const char *name; struct thr_limits lim; } *acc = NULL;
  size_t nacc = 0, cur = 0;             /* sums per section name */

  for (;;) {
    char *nl = strchr (line, '\n');
    char *s, *eq, *key, *value;
    int r;

    if (nl)
      *nl = '\0';
    lineno++;
    s = line;
    if ((eq = strchr (s, '#')) != NULL)
      *eq = '\0';
    s = trim (s);
    if (*s == '[') {
      char *close = strrchr (s, ']');
      if (in_section && top_final) {
        if (thr_limits_check (&sec, msg, sizeof msg) == -1) {
          kvm_seterr (err, errlen, "section [%s]: %s", section, msg);
          goto out;
        }
        acc[cur].lim = sec;
      }
      if (close == NULL || close[1] != '\0' || close == s + 1) {
        kvm_seterr (err, errlen, "line %d: expected [GROUP], got '%s'",
                  lineno, s);
        goto out;
      }
      *close = '\0';
      section = s + 1;
      in_section = true;
      if (top_final) {
        for (cur = 0; cur < nacc; cur++)
          if (strcmp (acc[cur].name, section) == 0)
            break;
        if (cur == nacc) {
          struct named *na = realloc (acc, (nacc + 1) * sizeof *na);
          if (na == NULL) {
            kvm_seterr (err, errlen, "out of memory");
            goto out;
          }
          acc = na;
          acc[nacc].name = section;
          acc[nacc++].lim = *top_final;
        }
        sec = acc[cur].lim;
      }
      else
        memset (&sec, 0, sizeof sec);
    }
    else if (*s != '\0') {
      bool mine;
      eq = strchr (s, '=');
      if (eq == NULL) {
        kvm_seterr (err, errlen, "line %d: expected key=value, got '%s'",
                  lineno, s);
        goto out;
      }
      *eq = '\0';
      key = trim (s);
      value = trim (eq + 1);
      mine = in_section && group_out && group &&
        strcmp (section, group) == 0;
      r = thr_limits_set (in_section ? &sec : top, key, value, parse_size,
                          msg, sizeof msg);
      if (r == 1 && mine)
        r = thr_limits_set (group_out, key, value, parse_size,
                            msg, sizeof msg);
      if (r == 0) {
        kvm_seterr (err, errlen, "line %d: unknown key '%s'", lineno, key);
        goto out;
      }
      if (r == -1) {
        kvm_seterr (err, errlen, "line %d: %s", lineno, msg);
        goto out;
      }
    }
    if (!nl)
      break;
    line = nl + 1;
  }
  if (in_section && top_final &&
      thr_limits_check (&sec, msg, sizeof msg) == -1) {
    kvm_seterr (err, errlen, "section [%s]: %s", section, msg);
    goto out;
  }
  ret = 0;
 out:
  free (acc);
  return ret;
}

int
thr_limits_parse_text (const struct thr_limits *base, const char *text,
                       const char *group, thr_parse_size_fn parse_size,
                       struct thr_limits *out, char *err, size_t errlen)
{
  struct thr_limits top = *base, top2, result;
  char *copy;
  char msg[256];
  int r = -1;

  copy = strdup (text);
  if (copy == NULL) {
    kvm_seterr (err, errlen, "out of memory");
    return -1;
  }
  /* Pass 1: the defaults (top-level lines), syntax of every line. */
  if (parse_pass (copy, parse_size, &top, NULL, NULL, NULL,
                  err, errlen) == -1)
    goto out;
  if (thr_limits_check (&top, msg, sizeof msg) == -1) {
    kvm_seterr (err, errlen, "%s", msg);
    goto out;
  }
  /* Pass 2: every section over the defaults; the group's result. */
  strcpy (copy, text);
  top2 = *base;
  result = top;
  if (parse_pass (copy, parse_size, &top2, &top, group, &result,
                  err, errlen) == -1)
    goto out;
  if (thr_limits_check (&result, msg, sizeof msg) == -1) {
    kvm_seterr (err, errlen, "section [%s]: %s", group ? group : "", msg);
    goto out;
  }
  *out = result;
  r = 0;
 out:
  free (copy);
  return r;
}

int64_t
thr_parse_size_simple (const char *str)
{
  uint64_t v, mul = 1, r;
  char *end;
  unsigned long long n;

  if (!isdigit ((unsigned char) str[0]))
    return -1;
  errno = 0;
  n = strtoull (str, &end, 10);
  if (errno != 0)
    return -1;
  v = n;
  switch (*end) {
  case '\0': break;
  case 'b': case 'B': mul = 1; end++; break;
  case 'k': case 'K': mul = 1ULL << 10; end++; break;
  case 'm': case 'M': mul = 1ULL << 20; end++; break;
  case 'g': case 'G': mul = 1ULL << 30; end++; break;
  case 't': case 'T': mul = 1ULL << 40; end++; break;
  case 'p': case 'P': mul = 1ULL << 50; end++; break;
  case 'e': case 'E': mul = 1ULL << 60; end++; break;
  default: return -1;
  }
  if (*end != '\0')
    return -1;
  if (!ck_mul64 (v, mul, &r) || r > INT64_MAX)
    return -1;
  return (int64_t) r;
}

/* ---- Buckets ---- */

/* Does this bucket apply to a request of this direction? */
static bool
applies (int k, enum thr_op op)
{
  switch (k) {
  case THR_BPS_TOTAL: case THR_IOPS_TOTAL: return true;
  case THR_BPS_READ: case THR_IOPS_READ: return op == THR_OP_READ;
  default: return op == THR_OP_WRITE;
  }
}

static uint64_t
length_of (const struct thr_limit *l)
{
  return l->max_length ? l->max_length : 1;
}

void
thr_buckets_init (struct thr_buckets *b, uint64_t now_ns)
{
  memset (b, 0, sizeof *b);
  b->last_ns = now_ns;
}

void
thr_buckets_leak (struct thr_buckets *b, const struct thr_limits *lim,
                  uint64_t now_ns)
{
  double dt;
  int k;

  if (now_ns <= b->last_ns)
    return;
  dt = (double) (now_ns - b->last_ns) / NS_PER_SEC;
  b->last_ns = now_ns;
  for (k = 0; k < THR_NR_KINDS; ++k) {
    const struct thr_limit *l = &lim->l[k];
    if (!l->avg)
      continue;
    b->level[k] -= (double) l->avg * dt;
    if (b->level[k] < 0)
      b->level[k] = 0;
    if (length_of (l) > 1) {
      b->burst_level[k] -= (double) l->max * dt;
      if (b->burst_level[k] < 0)
        b->burst_level[k] = 0;
    }
  }
}

/* Wait in ns for `extra' units above capacity to leak at `rate'.
 * Less than a nanosecond counts as no wait (rounding noise).
 */
static uint64_t
wait_for (double extra, uint64_t rate)
{
  double ns;

  if (extra <= 0)
    return 0;
  ns = extra / (double) rate * NS_PER_SEC;
  if (ns < 1.0)
    return 0;
  if (ns >= 1.8e19)
    return UINT64_MAX;
  return (uint64_t) ceil (ns);
}

uint64_t
thr_buckets_wait (struct thr_buckets *b, const struct thr_limits *lim,
                  enum thr_op op, bool count_bytes, uint64_t now_ns)
{
  uint64_t wait = 0, w;
  int k;

  thr_buckets_leak (b, lim, now_ns);
  for (k = 0; k < THR_NR_KINDS; ++k) {
    const struct thr_limit *l = &lim->l[k];
    double capacity;

    if (!l->avg || !applies (k, op) || (is_bps (k) && !count_bytes))
      continue;
    if (!l->max)
      capacity = (double) l->avg / 10;
    else
      capacity = (double) l->max * (double) length_of (l);
    w = wait_for (b->level[k] - capacity, l->avg);
    if (w > wait)
      wait = w;
    if (length_of (l) > 1) {
      w = wait_for (b->burst_level[k] - (double) l->max / 10, l->max);
      if (w > wait)
        wait = w;
    }
  }
  return wait;
}

double
thr_io_units (const struct thr_limits *lim, uint64_t bytes)
{
  if (lim->iops_size && bytes > lim->iops_size)
    return (double) bytes / (double) lim->iops_size;
  return 1;
}

void
thr_buckets_account (struct thr_buckets *b, const struct thr_limits *lim,
                     enum thr_op op, uint64_t bytes, bool count_bytes)
{
  double ios = count_bytes ? thr_io_units (lim, bytes) : 1;
  int k;

  for (k = 0; k < THR_NR_KINDS; ++k) {
    const struct thr_limit *l = &lim->l[k];
    double units;

    if (!l->avg || !applies (k, op))
      continue;
    if (is_bps (k)) {
      if (!count_bytes)
        continue;
      units = (double) bytes;
    }
    else
      units = ios;
    b->level[k] += units;
    if (length_of (l) > 1)
      b->burst_level[k] += units;
  }
}
