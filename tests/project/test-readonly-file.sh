#!/bin/bash
# SPDX-License-Identifier: BSD-3-Clause
# An image file its user cannot write, served without -r, by each format
# plugin: the export is read-only, and nothing is logged as an error (the
# read-write open that the file refuses is retried read-only; that
# refusal is no error of the user's).  Run as an unprivileged user, since
# root may write any file.
source "${TOP_SRCDIR:?run the tests through ctest, which sets TOP_SRCDIR}/tests/functions.sh"
requires_root
requires setpriv qemu-img
requires_plugin qcow2
requires_plugin vmdk
requires_plugin vhdx
cd "$tmpdir"
chmod 0777 "$tmpdir"
for fmt in qcow2 vmdk vhdx; do
  qemu-img create -q -f "$fmt" "ro.$fmt" 4M
  chmod 0444 "ro.$fmt"
  # (nbdinfo outside nbdkit: under --run it would get the sanitizer
  # preload; and as the same user, who can reach the socket.)
  out=$(timeout -s KILL 60 setpriv --reuid=65534 --regid=65534 --clear-groups \
          env ${KVM_SANITIZER_PRELOAD:+LD_PRELOAD="$KVM_SANITIZER_PRELOAD"} \
          nbdkit -U "$tmpdir/$fmt.sock" "$(plugin_so "$fmt")" "file=$tmpdir/ro.$fmt" \
          --run 'unset LD_PRELOAD; nbdinfo "$uri" | grep is_read_only' \
          </dev/null 2>&1) || fail "$fmt: $out"
  grep -q 'is_read_only: true' <<<"$out" || fail "$fmt: not read-only: $out"
  ! grep -qi error <<<"$out" || fail "$fmt: an error was logged: $out"
  echo "ok: $fmt: an unwritable file is served read-only, quietly"
done
