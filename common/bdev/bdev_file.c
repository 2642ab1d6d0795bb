/* SPDX-License-Identifier: BSD-3-Clause */
/* Raw file or block device backend of the block-device interface. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <linux/falloc.h>
#include <linux/fs.h>
#include <linux/openat2.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>

#include "bdev.h"
#include "../util/log.h"

/* Under O_DIRECT an unaligned write is a read-modify-write of its first
 * and last blocks, which must not interleave with any other change to
 * those blocks: another RMW of the same block (one of the two updates
 * would be lost), or an aligned write, trim or zero (overwritten by the
 * stale copy the RMW read).  Blocks map onto a fixed set of rwlock
 * stripes (block index modulo BLOCK_STRIPES): a request that modifies
 * blocks holds their stripes, exclusively those of the blocks it
 * read-modify-writes, shared the others.  So requests without RMW never
 * wait for each other, and an RMW waits only for (and holds up only)
 * changes to blocks of the same stripes.  Stripes are always taken in
 * ascending order.  Reads take no lock.  Without O_DIRECT there is no
 * RMW here and no lock either.
 *
 * An unaligned write whose last block passes the end (a block device
 * whose size is not a multiple of the alignment, or the end of a file)
 * cannot be rounded up: the device would refuse the part past its end
 * and a file would grow.  It goes, exactly as asked, through a second
 * descriptor of the same file without O_DIRECT (tail_fd), holding its
 * partial blocks' stripes exclusively as an RMW does (the kernel
 * read-modify-writes those pages); the kernel keeps the page cache
 * coherent with O_DIRECT I/O of the other descriptor.
 */
#define BLOCK_STRIPES 64

enum { STRIPE_NONE, STRIPE_SHARED, STRIPE_EXCL };

struct file_bdev {
  struct bdev bd;
  int fd;
  int tail_fd;                  /* if direct and writable, else -1 */
  bool is_block;
  bool hw_zeroes;               /* block device with WRITE ZEROES: its
                                 * BLKZEROOUT never writes zero pages */
  bool direct;
  uint32_t align;               /* O_DIRECT alignment */
  bool can_punch, can_zero_range; /* cleared after EOPNOTSUPP */
  pthread_rwlock_t stripes[BLOCK_STRIPES];  /* if direct */
  int lock_kind;                /* 0: no QEMU locks, 1: read, 2: write */
  dev_t dev;
  ino_t ino;
};

#define DIRECT_ALIGN 4096

/* The files this process holds QEMU's image locks on (qemu_lock_image).
 * The locks are held by one open file description per file, LOCK_FD (a
 * dup of the first descriptor opened on it), with the union of what this
 * process's opens need: an OFD's own locks never conflict with each
 * other, so a second open of one file by this process (an internal
 * snapshot's export beside the read-write image, a backing file shared
 * by two exports, a VMDK naming one flat file twice) does not refuse
 * itself, while QEMU is refused as by another QEMU.  All under
 * image_locks_mu.
 */
struct image_lock_ref {
  dev_t dev;
  ino_t ino;
  int lock_fd;
  unsigned n_ro, n_rw;
  struct image_lock_ref *next;
};
static pthread_mutex_t image_locks_mu = PTHREAD_MUTEX_INITIALIZER;
static struct image_lock_ref *image_locks;

static struct image_lock_ref **
image_lock_find (dev_t dev, ino_t ino)
{
  struct image_lock_ref **r = &image_locks;
  while (*r && ((*r)->dev != dev || (*r)->ino != ino))
    r = &(*r)->next;
  return r;
}

static void image_unlock (dev_t dev, ino_t ino, bool rw);

static void
file_close (struct bdev *bd)
{
  struct file_bdev *f = (struct file_bdev *) bd;
  close (f->fd);
  if (f->lock_kind)
    image_unlock (f->dev, f->ino, f->lock_kind == 2);
  if (f->tail_fd >= 0)
    close (f->tail_fd);
  if (f->direct)
    for (int i = 0; i < BLOCK_STRIPES; i++)
      pthread_rwlock_destroy (&f->stripes[i]);
  bdev_free_common (bd);
}

/* Which stripes a change of [OFFSET, OFFSET+COUNT) needs (COUNT > 0),
 * and how: the stripes of its blocks shared, except the stripe of its
 * first block exclusively if EXCL_FIRST, and of its last if EXCL_LAST
 * (the blocks it read-modify-writes).
 */
static void
stripes_for (const struct file_bdev *f, uint64_t offset, uint64_t count,
             bool excl_first, bool excl_last, uint8_t mode[BLOCK_STRIPES])
{
  uint64_t first = offset / f->align;
  uint64_t last = (offset + count - 1) / f->align;
  memset (mode, STRIPE_NONE, BLOCK_STRIPES);
  if (last - first >= BLOCK_STRIPES - 1)
    memset (mode, STRIPE_SHARED, BLOCK_STRIPES);
  else
    for (uint64_t b = first; b <= last; b++)
      mode[b % BLOCK_STRIPES] = STRIPE_SHARED;
  if (excl_first)
    mode[first % BLOCK_STRIPES] = STRIPE_EXCL;
  if (excl_last)
    mode[last % BLOCK_STRIPES] = STRIPE_EXCL;
}

static void
stripes_lock (struct file_bdev *f, const uint8_t mode[BLOCK_STRIPES])
{
  for (int i = 0; i < BLOCK_STRIPES; i++) {
    if (mode[i] == STRIPE_EXCL)
      pthread_rwlock_wrlock (&f->stripes[i]);
    else if (mode[i] == STRIPE_SHARED)
      pthread_rwlock_rdlock (&f->stripes[i]);
  }
}

static void
stripes_unlock (struct file_bdev *f, const uint8_t mode[BLOCK_STRIPES])
{
  for (int i = BLOCK_STRIPES - 1; i >= 0; i--)
    if (mode[i] != STRIPE_NONE)
      pthread_rwlock_unlock (&f->stripes[i]);
}

/* Around a change of [OFFSET, OFFSET+COUNT) that reads nothing (aligned
 * write, trim, zero): order it against RMWs of its blocks.  Nothing to do
 * without O_DIRECT (no RMW then).
 */
static void
change_begin (struct file_bdev *f, uint64_t offset, uint64_t count,
              uint8_t mode[BLOCK_STRIPES])
{
  if (!f->direct)
    return;
  if (count)
    stripes_for (f, offset, count, false, false, mode);
  else
    memset (mode, STRIPE_NONE, BLOCK_STRIPES);
  stripes_lock (f, mode);
}

/* Drop the stripes of change_begin (or of a RMW), keeping errno. */
static void
change_end (struct file_bdev *f, const uint8_t mode[BLOCK_STRIPES])
{
  if (!f->direct)
    return;
  int e = errno;
  stripes_unlock (f, mode);
  errno = e;
}

static int
full_pread (int fd, void *buf, size_t count, uint64_t offset)
{
  char *p = buf;
  while (count > 0) {
    ssize_t r = pread (fd, p, count, offset);
    if (r == -1) {
      if (errno == EINTR)
        continue;
      return -1;
    }
    if (r == 0) {               /* past EOF of a file that shrank */
      memset (p, 0, count);
      return 0;
    }
    p += r; count -= r; offset += r;
  }
  return 0;
}

static int
full_pwrite (int fd, const void *buf, size_t count, uint64_t offset)
{
  const char *p = buf;
  while (count > 0) {
    ssize_t r = pwrite (fd, p, count, offset);
    if (r == -1) {
      if (errno == EINTR)
        continue;
      return -1;
    }
    if (r == 0) {               /* no progress: would loop for ever */
      errno = ENOSPC;
      return -1;
    }
    p += r; count -= r; offset += r;
  }
  return 0;
}

static bool
aligned (const struct file_bdev *f, const void *buf, size_t count,
         uint64_t offset)
{
  uint32_t a = f->align;
  return ((uintptr_t) buf % a) == 0 && count % a == 0 && offset % a == 0;
}

/* O_DIRECT needs aligned buffers and ranges: go through an aligned bounce
 * buffer covering the request (read-modify-write for unaligned writes).
 */
static int
bounce (struct file_bdev *f, void *rbuf, const void *wbuf, size_t count,
        uint64_t offset)
{
  uint64_t start = offset - offset % f->align;
  uint64_t end = offset + count;
  end = (end + f->align - 1) / f->align * f->align;
  size_t len = end - start;
  void *b;
  int r = -1;

  if (wbuf && end > bdev_size (&f->bd)) {
    /* The kernel read-modify-writes the partial pages: exclusive, as
     * the RMW below.
     */
    uint8_t mode[BLOCK_STRIPES];
    stripes_for (f, offset, count, offset != start, true, mode);
    stripes_lock (f, mode);
    r = full_pwrite (f->tail_fd, wbuf, count, offset);
    change_end (f, mode);
    return r;
  }
  if (posix_memalign (&b, f->align, len) != 0) {
    errno = ENOMEM;
    return -1;
  }
  if (rbuf) {
    if (full_pread (f->fd, b, len, start) == -1)
      goto out;
    memcpy (rbuf, (char *) b + (offset - start), count);
    r = 0;
    goto out;
  }

  /* Only blocks the request covers partly are read (and so locked
   * exclusively); whole blocks come from WBUF alone.
   */
  bool head = offset != start, tail = offset + count != end;
  uint8_t mode[BLOCK_STRIPES];
  stripes_for (f, start, len, head, tail, mode);
  stripes_lock (f, mode);
  if (head && full_pread (f->fd, b, f->align, start) == -1)
    goto unlock;
  if (tail && (!head || len > f->align) &&
      full_pread (f->fd, (char *) b + len - f->align, f->align,
                  end - f->align) == -1)
    goto unlock;
  memcpy ((char *) b + (offset - start), wbuf, count);
  if (full_pwrite (f->fd, b, len, start) == -1)
    goto unlock;
  r = 0;
 unlock:
  change_end (f, mode);
 out:
  free (b);
  return r;
}

static int
file_pread (struct bdev *bd, void *buf, size_t count, uint64_t offset)
{
  struct file_bdev *f = (struct file_bdev *) bd;
  int r;
  if (f->direct && !aligned (f, buf, count, offset))
    r = bounce (f, buf, NULL, count, offset);
  else
    r = full_pread (f->fd, buf, count, offset);
  if (r == -1)
    kvm_error ("%s: read at %" PRIu64 ": %m", bd->name, offset);
  return r;
}

static int file_flush (struct bdev *bd);

static int
file_pwrite (struct bdev *bd, const void *buf, size_t count, uint64_t offset,
             uint32_t flags)
{
  struct file_bdev *f = (struct file_bdev *) bd;
  int r;
  if (f->direct && !aligned (f, buf, count, offset))
    r = bounce (f, NULL, buf, count, offset);
  else {
    uint8_t mode[BLOCK_STRIPES];
    change_begin (f, offset, count, mode);
    r = full_pwrite (f->fd, buf, count, offset);
    change_end (f, mode);
  }
  if (r == -1) {
    kvm_error ("%s: write at %" PRIu64 ": %m", bd->name, offset);
    return -1;
  }
  if (bd->growable)             /* size only ever grows: lock-free max */
    bdev_size_grow (bd, offset + count);
  if (flags & BDEV_FUA)
    return file_flush (bd);
  return 0;
}

static int
file_flush (struct bdev *bd)
{
  struct file_bdev *f = (struct file_bdev *) bd;
  if (fdatasync (f->fd) == -1) {
    kvm_error ("%s: fdatasync: %m", bd->name);
    return -1;
  }
  return 0;
}

static bool
unsupported (int err)
{
  return err == EOPNOTSUPP || err == ENOTSUP || err == ENOSYS ||
         err == ENOTTY || err == EINVAL;
}

static int
file_trim (struct bdev *bd, uint64_t count, uint64_t offset, uint32_t flags)
{
  struct file_bdev *f = (struct file_bdev *) bd;
  uint8_t mode[BLOCK_STRIPES];
  int r;
  (void) flags;

  if (!f->is_block && !f->can_punch)
    return 0;
  change_begin (f, offset, count, mode);
  if (f->is_block) {
    uint64_t range[2] = { offset, count };
    r = ioctl (f->fd, BLKDISCARD, range);
  }
  else
    r = fallocate (f->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                   offset, count);
  change_end (f, mode);
  if (r == -1) {
    if (unsupported (errno)) {  /* trim is advisory */
      f->can_punch = false;
      return 0;
    }
    kvm_error ("%s: trim at %" PRIu64 ": %m", bd->name, offset);
    return -1;
  }
  return 0;
}

/* Zero without writing zeroes: 0 done, 1 cannot, -1 error (errno set). */
static int
zero_fast (struct file_bdev *f, uint64_t count, uint64_t offset,
           uint32_t flags)
{
  if (f->is_block) {
    /* Without WRITE ZEROES the kernel writes pages of zeroes: not fast. */
    if ((flags & BDEV_FAST_ZERO) && !f->hw_zeroes)
      return 1;
    uint64_t range[2] = { offset, count };
    if (ioctl (f->fd, BLKZEROOUT, range) == 0)
      return 0;
    return 1;
  }
  /* Punching a hole reads back as zeroes and frees space. */
  if ((flags & BDEV_MAY_TRIM) && f->can_punch) {
    if (fallocate (f->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                   offset, count) == 0)
      return 0;
    if (!unsupported (errno))
      return -1;
    f->can_punch = false;
  }
  if (f->can_zero_range) {
    if (fallocate (f->fd, FALLOC_FL_ZERO_RANGE, offset, count) == 0)
      return 0;
    if (!unsupported (errno))
      return -1;
    f->can_zero_range = false;
  }
  return 1;
}

static int
file_zero (struct bdev *bd, uint64_t count, uint64_t offset, uint32_t flags)
{
  struct file_bdev *f = (struct file_bdev *) bd;
  uint8_t mode[BLOCK_STRIPES];

  change_begin (f, offset, count, mode);
  int r = zero_fast (f, count, offset, flags);
  change_end (f, mode);
  if (r == 0)
    return 0;
  if (r == -1) {
    kvm_error ("%s: zero at %" PRIu64 ": %m", bd->name, offset);
    return -1;
  }
  if (flags & BDEV_FAST_ZERO) {
    errno = ENOTSUP;
    return -1;
  }
  /* Slow path: write zeroes. */
  static const char zeroes[65536];
  while (count > 0) {
    size_t n = count < sizeof zeroes ? count : sizeof zeroes;
    if (file_pwrite (bd, zeroes, n, offset, 0) == -1)
      return -1;
    count -= n; offset += n;
  }
  return 0;
}

static int
file_extents (struct bdev *bd, uint64_t count, uint64_t offset,
              uint32_t flags, bdev_extent_fn fn, void *opaque)
{
  struct file_bdev *f = (struct file_bdev *) bd;
  uint64_t end = offset + count;
  unsigned races = 0;

  while (offset < end) {
    off_t pos = lseek (f->fd, offset, SEEK_DATA);
    uint64_t next;
    if (pos == -1) {
      if (errno == ENXIO)       /* only a hole up to EOF */
        return fn (opaque, offset, end - offset,
                   BDEV_EXTENT_HOLE | BDEV_EXTENT_ZERO);
      /* SEEK_DATA unsupported: report data. */
      return fn (opaque, offset, end - offset, BDEV_EXTENT_DATA);
    }
    if ((uint64_t) pos > offset) {
      next = (uint64_t) pos < end ? (uint64_t) pos : end;
      if (fn (opaque, offset, next - offset,
              BDEV_EXTENT_HOLE | BDEV_EXTENT_ZERO) == -1)
        return -1;
      offset = next;
      if (flags & BDEV_REQ_ONE)
        return 0;
      continue;
    }
    pos = lseek (f->fd, offset, SEEK_HOLE);
    if (pos == -1) {
      kvm_error ("%s: lseek SEEK_HOLE: %m", bd->name);
      return -1;
    }
    /* A trim between the two calls made a hole at OFFSET: look again
     * (data, the safe answer, after a few such races).
     */
    if ((uint64_t) pos <= offset) {
      if (++races < 4)
        continue;
      pos = end;
    }
    next = (uint64_t) pos < end ? (uint64_t) pos : end;
    if (fn (opaque, offset, next - offset, BDEV_EXTENT_DATA) == -1)
      return -1;
    offset = next;
    if (flags & BDEV_REQ_ONE)
      return 0;
  }
  return 0;
}

static const struct bdev_ops file_ops = {
  .format = "raw",
  .close = file_close,
  .pread = file_pread,
  .pwrite = file_pwrite,
  .flush = file_flush,
  .trim = file_trim,
  .zero = file_zero,
  .extents = file_extents,
};

/* Open PATH (canonical: it had no symlink when it was checked) without
 * following any symlink anywhere in it: ELOOP if one was put there since.
 */
static int
open_no_symlinks (const char *path, int flags)
{
  struct open_how how = {
    .flags = (uint64_t) flags,
    .resolve = RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS,
  };
  int fd = (int) syscall (SYS_openat2, AT_FDCWD, path, &how, sizeof how);
  if (fd == -1 && errno == ENOSYS)      /* before Linux 5.6: the last one */
    fd = open (path, flags | O_NOFOLLOW);
  return fd;
}

/* queue/write_zeroes_max_bytes of block device DEV (0 if unknown). */
static uint64_t
write_zeroes_max (dev_t dev)
{
  char p[128];
  unsigned long long v = 0;
  /* A partition has no queue of its own: its disk's is one level up. */
  for (int up = 0; up < 2; up++) {
    snprintf (p, sizeof p, "/sys/dev/block/%u:%u/%squeue/"
              "write_zeroes_max_bytes", major (dev), minor (dev),
              up ? "../" : "");
    FILE *fp = fopen (p, "re");
    if (fp) {
      if (fscanf (fp, "%llu", &v) != 1)
        v = 0;
      fclose (fp);
      break;
    }
  }
  return v;
}

/* QEMU's image locking (block/file-posix.c, locking=auto): every process
 * that has an image open holds a shared OFD lock on byte 100+i for each
 * permission i it uses and on byte 200+i for each permission it does not
 * let others have (0 consistent read, 1 write, 2 write-unchanged,
 * 3 resize).  Taking the same locks makes QEMU (a running VM, qemu-img,
 * qemu-nbd) refuse an image this process is writing, and makes this
 * process refuse one that QEMU is writing: two writers, each with its own
 * cached metadata, corrupt a qcow2/vmdk/vhdx image.  Read-only opens only
 * declare their reads (byte 100): this process opens one image several
 * times (an internal snapshot export beside the read-write active image),
 * and those opens must not refuse each other.
 */
#define QEMU_LOCK_PERM_BASE 100
#define QEMU_LOCK_SHARED_BASE 200
enum { QPERM_READ = 1, QPERM_WRITE = 2, QPERM_RESIZE = 8 };

static int
ofd_lock (int fd, int cmd, short type, off_t byte)
{
  struct flock fl = {
    .l_type = type, .l_whence = SEEK_SET, .l_start = byte, .l_len = 1,
  };
  if (fcntl (fd, cmd, &fl) == -1)
    return -1;
  return cmd == F_OFD_GETLK ? fl.l_type != F_UNLCK : 0;
}

/* Take (F_RDLCK) or release (F_UNLCK) the locks of PERM and UNSHARED on
 * FD.  Returns 1 if the file system has no locks, -1 on error.
 */
static int
qemu_set_locks (int fd, short type, unsigned perm, unsigned unshared)
{
  for (int i = 0; i < 4; i++) {
    if (((perm >> i) & 1 &&
         ofd_lock (fd, F_OFD_SETLK, type, QEMU_LOCK_PERM_BASE + i) == -1) ||
        ((unshared >> i) & 1 &&
         ofd_lock (fd, F_OFD_SETLK, type, QEMU_LOCK_SHARED_BASE + i) == -1)) {
      if (errno == EINVAL || errno == ENOLCK || errno == ENOTSUP ||
          errno == EOPNOTSUPP)
        return 1;               /* no locks on this file system: as QEMU */
      return -1;
    }
  }
  return 0;
}

/* raw_check_lock_bytes: does another open file description forbid PERM
 * (byte 200+i) or use what we forbid (UNSHARED, byte 100+i)?
 */
static int
qemu_check_locks (int fd, const char *path, unsigned perm, unsigned unshared)
{
  static const char *const names[] = {
    "consistent read", "write", "write unchanged", "resize",
  };
  for (int i = 0; i < 4; i++) {
    int r = 0;
    bool mine = (perm >> i) & 1;
    if (mine)
      r = ofd_lock (fd, F_OFD_GETLK, F_WRLCK, QEMU_LOCK_SHARED_BASE + i);
    if (r == 0 && (unshared >> i) & 1) {
      r = ofd_lock (fd, F_OFD_GETLK, F_WRLCK, QEMU_LOCK_PERM_BASE + i);
      mine = false;
    }
    if (r == -1)
      return 0;
    if (r == 1) {
      kvm_error ("%s: failed to get %s\"%s\" lock: is another process "
                 "(a QEMU guest, qemu-img, qemu-nbd, another nbdkit) using "
                 "the image?", path, mine ? "" : "shared ", names[i]);
      errno = EAGAIN;
      return -1;
    }
  }
  return 0;
}

/* Take the locks of PERM and UNSHARED on FD and check that no other
 * process conflicts with them (nothing to do on a file system without
 * locks).  0, or -1 with errno set after a message.
 */
static int
add_locks (int fd, const char *path, unsigned perm, unsigned unshared)
{
  int r = qemu_set_locks (fd, F_RDLCK, perm, unshared);
  if (r == 1)
    return 0;
  if (r == -1) {
    kvm_error ("%s: cannot lock the image: %m", path);
    return -1;
  }
  return qemu_check_locks (fd, path, perm, unshared);
}

/* Register an open (FD, read-only or not) of the file DEV/INO with this
 * process's locks on it, taking and checking what it adds, as QEMU does:
 * read-only opens use reads and forbid others to write or resize (as a
 * read-only qcow2 node or a backing file in QEMU), read-write ones use
 * writes and resizes too.
 */
static int
image_lock (int fd, const char *path, dev_t dev, ino_t ino, bool rw)
{
  const unsigned ro_perm = QPERM_READ, ro_unshared = QPERM_WRITE | QPERM_RESIZE;
  const unsigned rw_extra = QPERM_WRITE | QPERM_RESIZE;

  pthread_mutex_lock (&image_locks_mu);
  struct image_lock_ref *l = *image_lock_find (dev, ino);
  if (!l) {
    l = calloc (1, sizeof *l);
    if (!l || (l->lock_fd = fcntl (fd, F_DUPFD_CLOEXEC, 0)) == -1) {
      kvm_error ("%s: locking the image: %m", path);
      free (l);
      pthread_mutex_unlock (&image_locks_mu);
      return -1;
    }
    l->dev = dev;
    l->ino = ino;
    if (add_locks (l->lock_fd, path, ro_perm | (rw ? rw_extra : 0),
                   ro_unshared) == -1) {
      int e = errno;
      close (l->lock_fd);       /* releases what was taken */
      free (l);
      pthread_mutex_unlock (&image_locks_mu);
      errno = e;
      return -1;
    }
    l->next = image_locks;
    image_locks = l;
  }
  else if (rw && l->n_rw == 0) {
    /* Only read-only opens so far: add write and resize. */
    if (add_locks (l->lock_fd, path, rw_extra, 0) == -1) {
      int e = errno;
      (void) qemu_set_locks (l->lock_fd, F_UNLCK, rw_extra, 0);
      pthread_mutex_unlock (&image_locks_mu);
      errno = e;
      return -1;
    }
  }
  if (rw)
    l->n_rw++;
  else
    l->n_ro++;
  pthread_mutex_unlock (&image_locks_mu);
  return 0;
}

static void
image_unlock (dev_t dev, ino_t ino, bool rw)
{
  pthread_mutex_lock (&image_locks_mu);
  struct image_lock_ref **p = image_lock_find (dev, ino), *l = *p;
  if (l) {
    if (rw)
      l->n_rw--;
    else
      l->n_ro--;
    if (l->n_rw + l->n_ro == 0) {
      close (l->lock_fd);
      *p = l->next;
      free (l);
    }
    else if (rw && l->n_rw == 0)
      (void) qemu_set_locks (l->lock_fd, F_UNLCK,
                             QPERM_WRITE | QPERM_RESIZE, 0);
  }
  pthread_mutex_unlock (&image_locks_mu);
}

struct bdev *
bdev_file_open (const char *path, const struct bdev_open_opts *opts)
{
  int flags = (opts->readonly ? O_RDONLY : O_RDWR) | O_CLOEXEC;
  struct stat st;
  struct file_bdev *f;
  int fd;

  if (opts->direct)
    flags |= O_DIRECT;
  /* O_NONBLOCK: a FIFO (named by a hostile image) would block the open
   * until a writer came; it is refused below instead.  The flag means
   * nothing to regular files and block devices, and is cleared.
   */
  fd = opts->resolved ? open_no_symlinks (path, flags | O_NONBLOCK)
    : open (path, flags | O_NONBLOCK);
  if (fd == -1) {
    if (opts->resolved && errno == ELOOP)
      kvm_error ("%s: open: the path now leads through a symlink, which it "
                 "did not when it was checked: refused", path);
    else if (opts->quiet_write_refusal && !opts->readonly &&
             (errno == EACCES || errno == EROFS || errno == EPERM))
      kvm_debug ("%s: open for writing: %m", path);
    else
      kvm_error ("%s: open: %m", path);
    return NULL;
  }
  if (fstat (fd, &st) == -1) {
    kvm_error ("%s: fstat: %m", path);
    close (fd);
    return NULL;
  }
  if (!S_ISREG (st.st_mode) && !S_ISBLK (st.st_mode)) {
    kvm_error ("%s: not a regular file or block device", path);
    close (fd);
    errno = EINVAL;
    return NULL;
  }
  if (fcntl (fd, F_SETFL, fcntl (fd, F_GETFL) & ~O_NONBLOCK) == -1) {
    kvm_error ("%s: fcntl: %m", path);
    close (fd);
    return NULL;
  }
  if (opts->qemu_locks &&
      image_lock (fd, path, st.st_dev, st.st_ino, !opts->readonly) == -1) {
    int e = errno;
    close (fd);
    errno = e;
    return NULL;
  }

  f = bdev_alloc (sizeof *f, &file_ops, path);
  if (!f) {
    close (fd);
    if (opts->qemu_locks)
      image_unlock (st.st_dev, st.st_ino, !opts->readonly);
    return NULL;
  }
  f->fd = fd;
  f->lock_kind = !opts->qemu_locks ? 0 : opts->readonly ? 1 : 2;
  f->dev = st.st_dev;
  f->ino = st.st_ino;
  f->tail_fd = -1;
  f->is_block = S_ISBLK (st.st_mode);
  f->direct = opts->direct;
  if (f->direct) {
    /* Writers first: a steady stream of aligned writes must not starve
     * a read-modify-write.
     */
    pthread_rwlockattr_t ra;
    pthread_rwlockattr_init (&ra);
    pthread_rwlockattr_setkind_np (&ra,
                                   PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
    for (int i = 0; i < BLOCK_STRIPES; i++)
      pthread_rwlock_init (&f->stripes[i], &ra);
    pthread_rwlockattr_destroy (&ra);
  }
  f->align = DIRECT_ALIGN;
  if (f->direct && !opts->readonly) {
    char self[64];
    snprintf (self, sizeof self, "/proc/self/fd/%d", fd);
    f->tail_fd = open (self, (flags & ~O_DIRECT) | O_CLOEXEC);
    if (f->tail_fd == -1 && errno == ENOENT)      /* no /proc */
      f->tail_fd = opts->resolved ? open_no_symlinks (path, flags & ~O_DIRECT)
        : open (path, flags & ~O_DIRECT);
    if (f->tail_fd == -1) {
      kvm_error ("%s: open without O_DIRECT (%s): %m", path, self);
      file_close (&f->bd);
      return NULL;
    }
  }
  f->can_punch = f->can_zero_range = true;
  f->bd.readonly = opts->readonly;
  f->bd.caps = BDEV_CAN_TRIM | BDEV_CAN_ZERO | BDEV_CAN_MULTI_CONN;
  if (f->is_block) {
    uint64_t size;
    if (ioctl (fd, BLKGETSIZE64, &size) == -1) {
      kvm_error ("%s: BLKGETSIZE64: %m", path);
      file_close (&f->bd);
      return NULL;
    }
    f->bd.size = size;
    f->hw_zeroes = write_zeroes_max (st.st_rdev) > 0;
  }
  else {
    f->bd.size = st.st_size;
    f->bd.caps |= BDEV_CAN_EXTENTS;
  }
  f->bd.block_size = opts->direct ? DIRECT_ALIGN : 1;
  f->bd.growable = opts->growable && !f->is_block;
  return &f->bd;
}

/* The file descriptor of a raw backend, for engines that need to grow or
 * inspect their container file.  -1 if BD is not a file backend.
 */
int
bdev_file_fd (struct bdev *bd)
{
  if (bd->ops != &file_ops)
    return -1;
  return ((struct file_bdev *) bd)->fd;
}
