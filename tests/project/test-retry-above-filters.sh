#!/bin/bash
# SPDX-License-Identifier: BSD-3-Clause
# nbdkit's retry filter above a filter of ours (qcow2, vmdk, vhdx, thin),
# nbdkit's error filter below it.  A write fails below; the retry filter
# reopens our filter (.finalize, .close, .open, .prepare) within the same
# client connection and retries.  The engine's last reference goes, and
# its flush then fails (errors still on): the engine must stay open, so
# that a write acknowledged before (not yet flushed) still reads back and
# the client's next flush makes it durable.  Before, the engine was closed
# and reopened from the disk: the write read as zeroes, the flush
# succeeded, no request failed.
source "${TOP_SRCDIR:?run the tests through ctest, which sets TOP_SRCDIR}/tests/functions.sh"
requires_nbdsh
requires qemu-img qemu-io
for f in qcow2 vmdk vhdx thin; do requires_filter $f; done
cd "$tmpdir"
M=$((1024*1024))
for f in qcow2 vmdk vhdx thin; do
  rm -f E
  case $f in
    thin) truncate -s $((16*M)) c.img; args=(thin-size=64M) ;;
    *) qemu-img create -q -f $f c.img 64M; truncate -s +$((16*M)) c.img; args=() ;;
  esac
  new_sock
  start_nbdkit "$sock" --filter=retry --filter="$(filter_so $f)" --filter=error \
    file c.img "${args[@]}" retry-delay=1 retry-exponential=no \
    error-pwrite-rate=100% error-pwrite=EIO "error-file=$tmpdir/E"
  nbdsh -u "$(uri_of "$sock")" -c "
import subprocess
h.pwrite(b'\x11' * 65536, 0)
h.flush()
h.pwrite(b'\x22' * 65536, 4 << 20)          # acknowledged, not flushed
open('$tmpdir/E', 'w').close()              # writes below fail for 1.5 s
subprocess.Popen(['sh', '-c', 'sleep 1.5; rm -f $tmpdir/E'])
h.pwrite(b'\x33' * 65536, 8 << 20)          # fails, retried until it works
h.flush()
for off, b in ((0, 0x11), (4 << 20, 0x22), (8 << 20, 0x33)):
    d = h.pread(65536, off)
    assert d == bytes([b]) * 65536, 'at %d: %r' % (off, sorted(set(d)))
" || fail "$f: an acknowledged write was lost when the retry filter reopened"
  stop_nbdkit
  case $f in
    thin) "$TOP_BUILDDIR/filters/thin/nbdkit-thin-check" c.img >/dev/null ||
            fail "$f: nbdkit-thin-check" ;;
    *) out=$(qemu-img check -f $f c.img 2>&1) || fail "$f: qemu-img check: $out"
       out=$(qemu-io -f $f -c 'read -P 0x22 4M 64k' -c 'read -P 0x33 8M 64k' c.img 2>&1)
       grep -q "read 65536/65536 bytes at offset 8388608" <<<"$out" &&
         ! grep -q "verification failed" <<<"$out" ||
         fail "$f: the flushed writes are not in the image: $out" ;;
  esac
  echo "ok: $f: retry above, failed close flush: the engine stays open"
  rm -f c.img
done
echo "retry above our filters: OK"
