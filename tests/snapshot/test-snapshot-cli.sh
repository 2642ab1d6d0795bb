#!/bin/bash
# SPDX-License-Identifier: BSD-3-Clause
# The snapshot filter's edges, over nbdkit's file plugin: the control
# socket's mode, nbdkit-snapshot-ctl's exit statuses and messages, the
# export listing (nbdinfo --list), a commit with no client connected
# (qemu-io checks the file afterwards; its progress in nbdkit -v output),
# a second server on the same overlay directory refused, a live control
# socket neither taken over nor removed by another server, a slow control
# client holding the channel for 10 s at most, a failed commit's reason
# given to the control client (its own, or the error from below), a
# changed size below refused with a clear error, other export names
# refused, a snapshot time out of range listed as a number, a commit
# still running at shutdown finished; the CLI and both man pages
# installed by cmake --install.
source "${TOP_SRCDIR:?run the tests through ctest, which sets TOP_SRCDIR}/tests/functions.sh"
source "$TOP_SRCDIR/tests/snapshot/snapshot-lib.sh"
requires qemu-io nbdinfo man
ctl=$snapshot_ctl

truncate -s 8M "$tmpdir/below.raw"
args=(--filter="$(filter_so snapshot)" file "file=$tmpdir/below.raw"
      "overlay-dir=$tmpdir/ovl" "control=$tmpdir/ctl.sock")
start_nbdkit "$tmpdir/nbd.sock" -v "${args[@]}" 2>"$tmpdir/first.log"
uri=$(uri_of "$tmpdir/nbd.sock")
pid1=$nbdkit_pid

[ "$(stat -c %a "$tmpdir/ctl.sock")" = 600 ] || fail "control socket is not mode 0600"
"$ctl" --help | grep -q "create NAME" || fail "--help"
rc=0; "$ctl" 2>/dev/null || rc=$?; [ $rc = 2 ] || fail "no arguments: exit $rc, not 2"
rc=0; "$ctl" "$tmpdir/none.sock" list 2>/dev/null || rc=$?
[ $rc = 2 ] || fail "missing socket: exit $rc, not 2"
# Before the first client the chain is not open: a clear error.
rc=0; err=$("$ctl" "$tmpdir/ctl.sock" list 2>&1) || rc=$?
[ $rc = 1 ] && grep -q "first client" <<<"$err" || fail "list before a client: $rc $err"

qemu-io -f raw -c 'write -P 0x11 0 1M' "$uri" >/dev/null || fail "write"
"$ctl" "$tmpdir/ctl.sock" create one || fail "create one"
qemu-io -f raw -c 'write -P 0x22 512k 1M' "$uri" >/dev/null || fail "write"
"$ctl" "$tmpdir/ctl.sock" create two || fail "create two"
rc=0; err=$("$ctl" "$tmpdir/ctl.sock" create one 2>&1) || rc=$?
[ $rc = 1 ] && grep -q "exists already" <<<"$err" || fail "duplicate create: $rc $err"
rc=0; err=$("$ctl" "$tmpdir/ctl.sock" revert nope 2>&1) || rc=$?
[ $rc = 1 ] && grep -q "no snapshot named 'nope'" <<<"$err" || fail "revert nope: $rc $err"
# Usage errors the tool sees itself: exit 2, the server not asked.
rc=0; err=$("$ctl" "$tmpdir/ctl.sock" delete 2>&1) || rc=$?
[ $rc = 2 ] && grep -q "delete needs a NAME" <<<"$err" || fail "delete without name: $rc $err"
rc=0; err=$("$ctl" "$tmpdir/ctl.sock" list extra 2>&1) || rc=$?
[ $rc = 2 ] && grep -q "list takes no NAME" <<<"$err" || fail "list with a name: $rc $err"
rc=0; err=$("$ctl" "$tmpdir/ctl.sock" frob 2>&1) || rc=$?
[ $rc = 2 ] && grep -q "unknown command 'frob'" <<<"$err" || fail "unknown command: $rc $err"
# A name the server does not accept: refused by it, exit 1.
rc=0; err=$("$ctl" "$tmpdir/ctl.sock" create .x 2>&1) || rc=$?
[ $rc = 1 ] || fail "create .x: $rc $err"
"$ctl" "$tmpdir/ctl.sock" list > "$tmpdir/list" || fail "list"
awk '{print $1}' "$tmpdir/list" | tr '\n' ' ' | grep -qx "one two " ||
  fail "list: $(cat "$tmpdir/list")"
grep -Eq '^one [0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9:]{8}Z [0-9]+$' "$tmpdir/list" ||
  fail "list line format: $(cat "$tmpdir/list")"
nbdinfo --list "$uri" > "$tmpdir/exports" || fail "nbdinfo --list"
for e in '""' '"@one"' '"@two"'; do
  grep -q "^export=$e:" "$tmpdir/exports" || fail "export $e not listed"
done
rc=0; nbdinfo "$(uri_of "$tmpdir/nbd.sock" other)" >/dev/null 2>&1 || rc=$?
[ $rc != 0 ] || fail "export 'other' was served"
qemu-io -r -f raw -c 'read -P 0x11 0 512k' -c 'read -P 0x22 512k 1M' \
  "$(uri_of "$tmpdir/nbd.sock" @two)" >/dev/null || fail "@two content"

# A second server on the same directory is refused (the directory is
# locked; the chain stays open after the first client, so this one fails
# on its first connection).
start_nbdkit "$tmpdir/nbd2.sock" --filter="$(filter_so snapshot)" file \
  "file=$tmpdir/below.raw" "overlay-dir=$tmpdir/ovl" 2>"$tmpdir/second.log"
pid2=$nbdkit_pid
rc=0; nbdinfo "$(uri_of "$tmpdir/nbd2.sock")" >/dev/null 2>&1 || rc=$?
[ $rc != 0 ] || fail "a second server used the same overlay directory"
stop_nbdkit "$pid2"
grep -q "in use by another process" "$tmpdir/second.log" ||
  fail "no clear error for the locked directory: $(cat "$tmpdir/second.log")"

# A second server given a live server's control socket is refused, and
# the first one's socket still answers.
truncate -s 1M "$tmpdir/b9.raw"
rc=0
out=$(nbdkit -U "$tmpdir/nbd9.sock" --filter="$(filter_so snapshot)" file \
        "file=$tmpdir/b9.raw" "overlay-dir=$tmpdir/ovl9" \
        "control=$tmpdir/ctl.sock" --run true 2>&1) || rc=$?
[ $rc != 0 ] && grep -q "control socket .*ctl.sock is in use by another server" \
  <<<"$out" || fail "a live control socket was taken over: $rc $out"
"$ctl" "$tmpdir/ctl.sock" list >/dev/null || fail "the first server's control socket"

# A client that sends its request a byte at a time holds the channel for
# 10 s in all, not 10 s per byte.
PATH="/usr/bin:$PATH" python3 -c '
import socket, sys, time
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
for b in b"list":
    s.send(bytes([b]))
    time.sleep(6)
' "$tmpdir/ctl.sock" &
slow=$!
kill_at_exit $slow
sleep 1
timeout 20 "$ctl" "$tmpdir/ctl.sock" list >/dev/null ||
  fail "a slow control client held the channel for more than 20 s"
wait $slow || :

# A commit that cannot start says why to the control client: the plugin
# cannot open its file while it is away.
mv "$tmpdir/below.raw" "$tmpdir/below.away"
rc=0; err=$("$ctl" "$tmpdir/ctl.sock" commit 2>&1) || rc=$?
mv "$tmpdir/below.away" "$tmpdir/below.raw"
[ $rc = 1 ] && grep -q "commit: cannot open a context into the plugin" <<<"$err" ||
  fail "a failed commit's reason: $rc $err"

# Commit with no client connected (every client above has gone).
"$ctl" "$tmpdir/ctl.sock" commit || fail "commit without a client"
[ -z "$("$ctl" "$tmpdir/ctl.sock" list)" ] || fail "snapshots left after commit"
# The commit's progress reaches nbdkit's debug messages (-v): the copy
# (1.5 MiB of 8 MiB, in 1 MiB pieces) passes a tenth, then 100%.
grep -Eq 'debug: snapshot commit: [1-9][0-9]?% \([0-9]+/8388608\)' "$tmpdir/first.log" &&
  grep -q 'debug: snapshot commit: 100% (8388608/8388608)' "$tmpdir/first.log" ||
  fail "no commit progress in the debug output: $(grep -i progress\|commit "$tmpdir/first.log")"
stop_nbdkit "$pid1"
qemu-io -f raw -c 'read -P 0x11 0 512k' -c 'read -P 0x22 512k 1M' \
  -c 'read -P 0 1536k 6656k' "$tmpdir/below.raw" >/dev/null ||
  fail "the file does not hold the committed data"
for l in "$tmpdir"/ovl/layer-*.qcow2; do qemu_img_check "$l"; done

# A changed size below: refused with both sizes named.
truncate -s 9M "$tmpdir/below.raw"
start_nbdkit "$tmpdir/nbd3.sock" "${args[@]}" 2>"$tmpdir/size.log"
rc=0; nbdinfo "$(uri_of "$tmpdir/nbd3.sock")" >/dev/null 2>&1 || rc=$?
[ $rc != 0 ] || fail "a changed size was accepted"
stop_nbdkit
grep -q "9437184 bytes but the snapshot chain was made over 8388608" "$tmpdir/size.log" ||
  fail "no clear error for the size change: $(cat "$tmpdir/size.log")"
# A snapshot time that is no date (a damaged or hand-edited state file)
# is listed as the raw number of seconds.
truncate -s 1M "$tmpdir/b4.raw"
args4=(--filter="$(filter_so snapshot)" file "file=$tmpdir/b4.raw"
       "overlay-dir=$tmpdir/ovl4" "control=$tmpdir/ctl4.sock")
start_nbdkit "$tmpdir/nbd4.sock" "${args4[@]}"
qemu-io -f raw -c 'write -P 0x33 0 64k' "$(uri_of "$tmpdir/nbd4.sock")" >/dev/null ||
  fail "write (4)"
"$ctl" "$tmpdir/ctl4.sock" create old || fail "create old"
stop_nbdkit
sed -i -E 's/^(layer [0-9]+ )[0-9]+( old)$/\19223372036854775807\2/' \
  "$tmpdir/ovl4/snapshot.state"
grep -q ' 9223372036854775807 old$' "$tmpdir/ovl4/snapshot.state" ||
  fail "state not edited: $(cat "$tmpdir/ovl4/snapshot.state")"
args4[-1]=control=$tmpdir/ctl5.sock
start_nbdkit "$tmpdir/nbd5.sock" "${args4[@]}"
nbdinfo "$(uri_of "$tmpdir/nbd5.sock")" >/dev/null || fail "open (4)"
"$ctl" "$tmpdir/ctl5.sock" list > "$tmpdir/list4" || fail "list (4)"
grep -Eq '^old @9223372036854775807 [0-9]+$' "$tmpdir/list4" ||
  fail "a time out of range listed as: $(cat "$tmpdir/list4")"
stop_nbdkit

# A commit with no client connected still running when nbdkit is told to
# stop (the delay filter makes its 40 writes of 1 MiB take 4 s): nbdkit
# 1.32 frees the plugin before the filter's .unload, so the control
# thread must stop in .cleanup, while the plugin is there.  nbdkit exits
# normally (it crashed before); the commit either finished or failed
# (shutdown cuts the delay filter's waits short), and then the next start
# finishes it.
truncate -s 64M "$tmpdir/b6.raw"
args6=(--filter="$(filter_so snapshot)" --filter=delay file
       "file=$tmpdir/b6.raw" "overlay-dir=$tmpdir/ovl6" delay-write=100ms)
start_nbdkit "$tmpdir/nbd6.sock" "${args6[@]}" "control=$tmpdir/ctl6.sock"
qemu-io -f raw -c 'write -P 0x44 0 40M' "$(uri_of "$tmpdir/nbd6.sock")" >/dev/null ||
  fail "write (6)"
"$ctl" "$tmpdir/ctl6.sock" commit > "$tmpdir/commit6.out" 2>&1 &
cpid=$!
sleep 1
stop_nbdkit                             # fails on a crash
wait $cpid || :
start_nbdkit "$tmpdir/nbd7.sock" "${args6[@]}"
nbdinfo "$(uri_of "$tmpdir/nbd7.sock")" >/dev/null || fail "open after the shutdown"
stop_nbdkit
qemu-io -f raw -c 'read -P 0x44 0 40M' -c 'read -P 0 40M 24M' "$tmpdir/b6.raw" >/dev/null ||
  fail "the file does not hold the commit made during shutdown ($(cat "$tmpdir/commit6.out"))"

# A commit that fails in the layer below (nbdkit's error filter: EIO on
# every write) tells the control client why, not just that it failed.
truncate -s 1M "$tmpdir/b10.raw"
start_nbdkit "$tmpdir/nbd10.sock" --filter="$(filter_so snapshot)" --filter=error \
  file "file=$tmpdir/b10.raw" "overlay-dir=$tmpdir/ovl10" \
  "control=$tmpdir/ctl10.sock" error-pwrite-rate=100% error-pwrite=EIO
qemu-io -f raw -c 'write -P 0x55 0 64k' "$(uri_of "$tmpdir/nbd10.sock")" >/dev/null ||
  fail "write (10)"
rc=0; err=$("$ctl" "$tmpdir/ctl10.sock" commit 2>&1) || rc=$?
[ $rc = 1 ] && grep -q "Input/output error" <<<"$err" ||
  fail "a commit failing below: $rc $err"
stop_nbdkit

# A server removes its control socket at exit only if it is still its
# own: here the path was taken over by a second server after the first
# one's socket was removed.
truncate -s 1M "$tmpdir/b8.raw"
start_nbdkit "$tmpdir/nbd8.sock" --filter="$(filter_so snapshot)" file \
  "file=$tmpdir/b8.raw" "overlay-dir=$tmpdir/ovl8" "control=$tmpdir/ctl8.sock"
pid8=$nbdkit_pid
rm "$tmpdir/ctl8.sock"
start_nbdkit "$tmpdir/nbd8b.sock" --filter="$(filter_so snapshot)" file \
  "file=$tmpdir/b8.raw" "overlay-dir=$tmpdir/ovl8b" "control=$tmpdir/ctl8.sock"
pid8b=$nbdkit_pid
nbdinfo "$(uri_of "$tmpdir/nbd8b.sock")" >/dev/null || fail "open (8)"
stop_nbdkit "$pid8"
"$ctl" "$tmpdir/ctl8.sock" list >/dev/null ||
  fail "a server removed the control socket of another at exit"
stop_nbdkit "$pid8b"
[ ! -e "$tmpdir/ctl8.sock" ] || fail "the control socket was left behind"

# Installed with the project (in a DESTDIR).
if command -v cmake >/dev/null; then
  DESTDIR=$tmpdir/dest cmake --install "$TOP_BUILDDIR" >/dev/null
  bin=$(find "$tmpdir/dest" -path '*/bin/nbdkit-snapshot-ctl' | head -1)
  [ -n "$bin" ] && "$bin" --help >/dev/null || fail "nbdkit-snapshot-ctl not installed"
  for m in nbdkit-snapshot-ctl.1 nbdkit-snapshot-filter.1; do
    found=$(find "$tmpdir/dest" -path "*/man1/$m" | head -1)
    [ -n "$found" ] && man -l "$found" >/dev/null 2>&1 || fail "man page $m not installed"
  done
fi
echo PASS
