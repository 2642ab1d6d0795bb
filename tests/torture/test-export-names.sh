#!/bin/bash
# SPDX-License-Identifier: BSD-3-Clause
# Export names through the format filters (qcow2, vmdk, vhdx) and the thin
# filter.  Over a plugin that ignores export names (nbdkit's file plugin
# with file=), every name reaches the same image: two engines on it would
# allocate the same free space without knowing of each other, and a
# flushed write would be lost.  So:
# - by default a second export name is refused while one is open, and
#   once the first has closed, any name opens the same image, which holds
#   everything written through the first (qemu-img check and qemu-io on
#   the file are the oracles; for thin, the pool read back raw);
# - with FILTER-exports=per-name over a plugin that stores each name apart
#   (nbdkit's file plugin with dir=), two names are open at once, each its
#   own image;
# - a bad value, and thin-metadata= with thin-exports=per-name, are
#   refused at start-up.
source "${TOP_SRCDIR:?run the tests through ctest, which sets TOP_SRCDIR}/tests/functions.sh"
requires_filter qcow2
requires_filter vmdk
requires_filter vhdx
requires_filter thin
requires qemu-img qemu-io
requires_nbdsh
cd "$tmpdir"
M=$((1024*1024))

# make_image FMT FILE: an empty 16 MiB image with room to grow inside the
# file (a filter's container cannot grow).
make_image () {
  case $1 in
    thin) truncate -s 32M "$2" ;;
    *) qemu-img create -q -f "$1" "$2" 16M
       truncate -s +16M "$2" ;;
  esac
}

# serve FMT ARGS...: the filter of FMT over nbdkit's file plugin on $sock;
# ARGS are the plugin's and the filter's parameters.
serve () {
  local fmt=$1; shift
  case $fmt in
    thin) start_nbdkit "$sock" --filter="$(filter_so thin)" file "$@" \
            thin-size=16M ;;
    *) start_nbdkit "$sock" --filter="$(filter_so "$fmt")" file "$@" ;;
  esac
}

# 1. Default: one name at a time, over file=.
for fmt in qcow2 vmdk vhdx thin; do
  make_image $fmt one.$fmt
  new_sock
  serve $fmt "file=$tmpdir/one.$fmt" 2> "one.$fmt.log"
  nbdsh -c "
import nbd
def conn(name):
    h = nbd.NBD()
    h.set_export_name(name)
    h.connect_unix('$sock')
    return h
a = conn('')
a.pwrite(b'\xaa' * 65536, 0)
a.flush()
try:
    conn('other')
    raise SystemExit('$fmt: a second export name was opened while the first is open')
except nbd.Error:
    pass
a.shutdown()
# Now free: another name opens the same image and sees A's write.
b = conn('other')
assert b.pread(65536, 0) == b'\xaa' * 65536, '$fmt: A\'s write is not seen'
b.pwrite(b'\xbb' * 65536, $M)
b.flush()
b.shutdown()
" || fail "$fmt: one name at a time"
  grep -q "export 'other' refused: export '' is open.*$fmt-exports=per-name" \
    "one.$fmt.log" || fail "$fmt: no clear refusal in the log: $(cat one.$fmt.log)"
  stop_nbdkit
  if [ $fmt = thin ]; then
    # The pool read back raw through a fresh server.
    new_sock
    serve thin "file=$tmpdir/one.thin" -r
    nbdcopy -- "$(uri_of "$sock")" one.thin.raw
    stop_nbdkit
    img=one.thin.raw; f=raw
  else
    qemu_img_check -f $fmt one.$fmt
    img=one.$fmt; f=$fmt
  fi
  qemu-io -f $f -r -c "read -q -P 0xaa 0 64k" -c "read -q -P 0xbb $M 64k" \
    -c "read -q -P 0 $((2*M)) 14M" "$img" > io.out 2>&1 ||
    fail "$fmt: the image does not hold both writes: $(cat io.out)"
  ! grep -q "Pattern verification failed" io.out ||
    fail "$fmt: the image does not hold both writes: $(cat io.out)"
done

# 2. per-name over dir=: two images open at once.
for fmt in qcow2 vmdk vhdx thin; do
  rm -rf d; mkdir d
  make_image $fmt d/a; make_image $fmt d/b
  new_sock
  serve $fmt "dir=$tmpdir/d" $fmt-exports=per-name
  nbdsh -c "
import nbd
hs = {}
for name, byte in (('a', 0x11), ('b', 0x22)):
    h = nbd.NBD()
    h.set_export_name(name)
    h.connect_unix('$sock')
    h.pwrite(bytes([byte]) * 65536, $M)
    hs[name] = h
for h in hs.values():
    h.flush()
    h.shutdown()
" || fail "$fmt: two names at once with $fmt-exports=per-name"
  stop_nbdkit
  for x in a:0x11 b:0x22; do
    n=${x%%:*}; p=${x#*:}
    if [ $fmt = thin ]; then
      new_sock
      serve thin "file=$tmpdir/d/$n" -r
      nbdcopy -- "$(uri_of "$sock")" d/$n.raw
      stop_nbdkit
      img=d/$n.raw; f=raw
    else
      qemu_img_check -f $fmt d/$n
      img=d/$n; f=$fmt
    fi
    qemu-io -f $f -r -c "read -q -P 0 0 1M" -c "read -q -P $p $M 64k" \
      "$img" > io.out 2>&1 || fail "$fmt: export $n: $(cat io.out)"
    ! grep -q "Pattern verification failed" io.out ||
      fail "$fmt: export $n: $(cat io.out)"
  done
done

# 2b. A thin pool filled to ENOSPC over dir=, with either mode: the
# filter does not reopen a plugin that picks its storage by export name
# (nbdkit 1.32's only second context has none, and the file plugin with
# dir= crashed on it), so the client gets ENOSPC and the server stays.
for mode in per-name one; do
  rm -rf td; mkdir td; truncate -s 4M td/vm1; truncate -s 16M td/vm2
  new_sock
  start_nbdkit "$sock" --filter="$(filter_so thin)" file "dir=$tmpdir/td" \
    thin-size=16M thin-exports=$mode
  PATH="/usr/bin:$PATH" nbdsh -u "$(uri_of "$sock" vm1)" -c "
import errno
try:
    for i in range(64):
        h.pwrite(b'x' * 65536, i * 65536)
    raise SystemExit('the 4M pool never filled')
except nbd.Error as e:
    assert e.errnum == errno.ENOSPC, e
" || fail "thin over dir= ($mode): filling vm1"
  kill -0 "$nbdkit_pid" 2>/dev/null || fail "thin over dir= ($mode): the server died"
  if [ $mode = per-name ]; then
    PATH="/usr/bin:$PATH" nbdsh -u "$(uri_of "$sock" vm2)" -c 'h.pwrite(b"y" * 512, 0)' ||
      fail "thin over dir= ($mode): vm2 after vm1 filled"
  fi
  stop_nbdkit
  echo "ok: thin over dir= ($mode): ENOSPC, the server serves on"
done

# 3. Refused at start-up.
for fmt in qcow2 vmdk vhdx thin; do
  if out=$(nbdkit_fails 10 -U "$tmpdir/bad.sock" --filter="$(filter_so $fmt)" \
             file "file=$tmpdir/one.$fmt" $fmt-exports=two --run true 2>&1)
  then
    fail "$fmt: $fmt-exports=two accepted"
  fi
  grep -q "$fmt-exports must be 'one' or 'per-name'" <<<"$out" ||
    fail "$fmt: unclear error for a bad $fmt-exports: $out"
done
truncate -s 1M meta.img
if out=$(nbdkit_fails 10 -U "$tmpdir/bad.sock" --filter="$(filter_so thin)" \
           file "dir=$tmpdir/d" thin-size=16M thin-exports=per-name \
           "thin-metadata=$tmpdir/meta.img" --run true 2>&1); then
  fail "thin-metadata= with thin-exports=per-name accepted"
fi
grep -q "cannot go with thin-exports=per-name" <<<"$out" ||
  fail "unclear error for thin-metadata= with per-name: $out"
echo PASS
