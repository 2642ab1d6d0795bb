#!/bin/bash
# SPDX-License-Identifier: BSD-3-Clause
# The nfs plugin (raw files on NFS, no mount) against a private
# nfs-ganesha: reads byte-identical to the local file; a seeded mix of
# writes (some FUA), zero writes, trims and flushes applied with qemu-io
# through the plugin and to a local raw mirror leaves the file equal to
# the mirror; create=SIZE makes a sparse file that a multi-connection
# nbdcopy fills; a directory URL (also the export's root) lists its
# files as exports, hidden ones neither listed nor served; NFSv4 reads
# (read-only); clear errors.
#   test-nfs-plugin.sh [SEED]
source "$(dirname "$0")/nfs-server.sh"
nfs_netns "$0" "$@"
source "${TOP_SRCDIR:?run the tests through ctest, which sets TOP_SRCDIR}/tests/functions.sh"
requires_plugin nfs
requires qemu-io nbdcopy nbdinfo python3 cmp

seed=${1:-${NFS_SEED:-1}}
echo "seed $seed"
M=$((1024*1024))
nfs_server_start "$tmpdir/export"
cd "$NFS_DIR"
plugin=$(plugin_so nfs)

# A 24 MiB file with data and holes.
truncate -s $((24*M)) disk.raw
head -c $((5*M)) /dev/urandom | dd of=disk.raw bs=1M seek=1 conv=notrunc status=none
head -c $((3*M + 777)) /dev/urandom | dd of=disk.raw bs=1 seek=$((15*M + 5)) conv=notrunc status=none

# 1. Read.
new_sock
start_nbdkit "$sock" "$plugin" "url=$NFS_URL/disk.raw" -r
nbdcopy -- "$(uri_of "$sock")" "$tmpdir/read.raw"
stop_nbdkit
assert_same disk.raw "$tmpdir/read.raw" "read through the nfs plugin"
echo "ok: read"

# 2. Seeded write mix vs a local raw mirror.
cp disk.raw "$tmpdir/mirror.raw"
python3 "$TOP_SRCDIR/tests/qcow2/qcow2-ops.py" --mode mirror --seed "$seed" \
  --size $((24*M)) --cluster 65536 --count 120 --patterns "$tmpdir/patterns" \
  > "$tmpdir/ops"
new_sock
start_nbdkit "$sock" "$plugin" "url=$NFS_URL/disk.raw?conns=4"
out=$(qemu-io -f raw "$(uri_of "$sock")" < "$tmpdir/ops" 2>&1) ||
  fail "qemu-io through the plugin: $out"
grep -qiE 'error|fail' <<<"$out" && fail "qemu-io through the plugin: $out"
stop_nbdkit
qemu-io -f raw "$tmpdir/mirror.raw" < "$tmpdir/ops" >/dev/null
assert_same "$tmpdir/mirror.raw" disk.raw "file after the write mix vs the mirror"
echo "ok: write mix ($(grep -c . "$tmpdir/ops") commands)"

# 3. create=SIZE: a sparse file, then filled by a 4-connection nbdcopy.
head -c $((20*M)) /dev/urandom > "$tmpdir/src.raw"
new_sock
start_nbdkit "$sock" "$plugin" "url=$NFS_URL/new.raw" create=$((20*M))
[ "$(stat -c %s new.raw)" = $((20*M)) ] || fail "create=: wrong size"
[ "$(stat -c %b new.raw)" -lt 64 ] || fail "create=: the new file is not sparse"
nbdcopy --connections=4 -- "$tmpdir/src.raw" "$(uri_of "$sock")"
stop_nbdkit
assert_same "$tmpdir/src.raw" new.raw "file written by nbdcopy through create="
echo "ok: create= and a multi-connection copy"

# 4. A directory: its regular, non-hidden files are the exports.
mkdir dir dir/subdir
cp "$tmpdir/src.raw" dir/a.raw
head -c $((3*M)) /dev/urandom > dir/b.img
echo hidden > dir/.hidden
new_sock
start_nbdkit "$sock" "$plugin" "url=$NFS_URL/dir/?timeout=20"
list=$(nbdinfo --list --json "$(uri_of "$sock")" |
       python3 -c 'import json,sys; print(" ".join(sorted(e["export-name"] for e in json.load(sys.stdin)["exports"])))')
[ "$list" = "a.raw b.img" ] || fail "directory exports: '$list'"
nbdcopy -- "nbd+unix:///b.img?socket=$sock" "$tmpdir/b.out"
assert_same dir/b.img "$tmpdir/b.out" "export b.img"
nbdinfo "nbd+unix:///?socket=$sock" >/dev/null 2>&1 &&
  fail "the default export of a directory was served"
nbdinfo "nbd+unix:///..?socket=$sock" >/dev/null 2>&1 &&
  fail "export '..' was served"
nbdinfo "nbd+unix:///.hidden?socket=$sock" >/dev/null 2>&1 &&
  fail "the hidden file .hidden was served"
stop_nbdkit
echo "ok: directory listed as exports ($list)"

# The export's root itself (with and without a final /): its files.
for u in "$NFS_URL" "$NFS_URL/"; do
  new_sock
  start_nbdkit "$sock" "$plugin" "url=$u?timeout=20"
  list=$(nbdinfo --list --json "$(uri_of "$sock")" |
         python3 -c 'import json,sys; print(" ".join(sorted(e["export-name"] for e in json.load(sys.stdin)["exports"])))') ||
    fail "listing the export root $u"
  [ "$list" = "disk.raw new.raw" ] || fail "exports of the root $u: '$list'"
  nbdcopy -- "nbd+unix:///disk.raw?socket=$sock" "$tmpdir/root.out"
  assert_same disk.raw "$tmpdir/root.out" "disk.raw served from the root $u"
  stop_nbdkit
done
echo "ok: the export root as a directory"

# 5. NFSv4: read-only, same bytes.
new_sock
start_nbdkit "$sock" "$plugin" "url=$NFS_URL/disk.raw?version=4"
ro=$(nbdinfo --json "$(uri_of "$sock")" |
     python3 -c 'import json,sys; print(json.load(sys.stdin)["exports"][0]["is_read_only"])')
[ "$ro" = True ] || fail "NFSv4 is not read-only"
nbdcopy -- "$(uri_of "$sock")" "$tmpdir/v4.raw"
stop_nbdkit
assert_same disk.raw "$tmpdir/v4.raw" "NFSv4 read"
echo "ok: NFSv4 read-only"

# 6. Errors.
for args in "url=$NFS_URL/missing.raw|no such file.*create=SIZE" \
            "url=/local/disk.raw|url must be nfs://" \
            "url=$NFS_URL/dir|create= needs a file URL|create=1M"; do
  IFS='|' read -r a re extra <<<"$args"
  new_sock
  out=$(nbdkit -U "$sock" "$plugin" "$a" $extra --run true 2>&1) &&
    fail "nbdkit started with $a $extra"
  grep -qE -- "$re" <<<"$out" || fail "$a: expected '$re', got: $out"
  echo "ok: refused $a $extra"
done

# 7. A fast zero (NFSv3 cannot zero fast): ENOTSUP, and the server lives.
new_sock
start_nbdkit "$sock" "$plugin" "url=$NFS_URL/disk.raw"
check_fast_zero "nfs plugin" "$(uri_of "$sock")"
stop_nbdkit

echo "nfs plugin: OK"
