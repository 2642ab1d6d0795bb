#!/bin/bash
# SPDX-License-Identifier: BSD-3-Clause
# Security on NFS: file names stored in an image on an export resolve
# beside the image on the same server and export, and may not reach a
# local file, a path above the image's directory (inside the export or
# not), another export or another server, unless allow-backing-path=
# allows it (a local directory or an nfs:// URL prefix).  The refusal
# names the image and the reference; nothing of the target is served.
source "$(dirname "$0")/nfs-server.sh"
nfs_netns "$0" "$@"
source "${TOP_SRCDIR:?run the tests through ctest, which sets TOP_SRCDIR}/tests/functions.sh"
source "$TOP_SRCDIR/tests/qcow2/qcow2-functions.sh"

M=$((1024*1024))
nfs_server_start "$tmpdir/export"
cd "$NFS_DIR"

# Secrets: a local file outside the export, and data above the image's
# directory inside the export.
mkdir -p "$tmpdir/local" vm shared
{ printf 'SECRET-LOCAL'; head -c $((M - 12)) /dev/zero; } > "$tmpdir/local/secret.raw"
{ printf 'SECRET-EXPORT'; head -c $((M - 13)) /dev/zero; } > secret.raw
{ printf 'SECRET-OUTSIDE'; head -c $((M - 14)) /dev/zero; } > "$tmpdir/outside.raw"
qemu-img create -q -f raw shared/base.raw $M
qemu-io -f raw -c 'write -P 0x61 0 64k' shared/base.raw >/dev/null

mk () { qemu-img create -q -f qcow2 -u -b "$2" -F raw "vm/$1" $M; }
mk abs.qcow2 "$tmpdir/local/secret.raw"
mk up.qcow2 ../secret.raw
mk root.qcow2 ../../outside.raw
mk deep.qcow2 ../../../../../../../etc/passwd
mk other-export.qcow2 nfs://127.0.0.1/other/secret.raw
mk url-above-root.qcow2 nfs://127.0.0.1/../etc/passwd
mk other-server.qcow2 nfs://127.0.0.2/export/secret.raw
mk options.qcow2 "nfs://127.0.0.1/export/vm/x.raw?uid=0"
mk sideways.qcow2 ../shared/base.raw
# Symbolic links on the server, inside the image's directory, leading out
# of it: a directory link (followed by an NFSv4 mount of the path) and a
# file link.
ln -s .. vm/updir
ln -s ../secret.raw vm/filelink.raw
mk dirlink.qcow2 updir/secret.raw
mk filelink.qcow2 filelink.raw

# refused NAME IMAGE REGEX [?QUERY] [params]: nbdkit stops at start-up
# (the plugin opens the image, its URL with QUERY, to check it) with an
# error matching REGEX; nothing is served.
refused () {
  local name=$1 img=$2 re=$3 q=""; shift 3
  if [[ ${1-} == \?* ]]; then q=$1; shift; fi
  local log="$tmpdir/$name.log"
  new_sock
  nbdkit_stops 10 -U "$sock" "$(plugin_so qcow2)" "file=$NFS_URL/vm/$img$q" -r \
    "$@" --run true >"$log"
  grep -qE -- "$re" "$log" ||
    fail "$name: expected an error matching '$re', log: $(grep -i error "$log" | head -5)"
  echo "ok: $name refused: $(grep -m1 -E -- "$re" "$log" | sed 's/.*error: //')"
}

# allowed NAME IMAGE [params]: served, and reads like qemu-img reads it.
allowed () {
  local name=$1 img=$2; shift 2
  new_sock
  start_nbdkit "$sock" "$(plugin_so qcow2)" "file=$NFS_URL/vm/$img" -r "$@"
  ORACLE=(-f qcow2 "$NFS_DIR/vm/$img")
  check_export_read "$(uri_of "$sock")" "$tmpdir/$name" --no-map
  stop_nbdkit
  echo "ok: $name allowed with $*"
}

refused local-path abs.qcow2 "refusing file '$tmpdir/local/secret.raw'.*a local file"
refused up-in-export up.qcow2 "refusing file '../secret.raw'.*outside the image's directory $NFS_URL/vm.*allow-backing-path=DIR"
refused above-export root.qcow2 "refusing file '../../outside.raw'"
refused above-root deep.qcow2 "refusing file '.*etc/passwd'.*above the server's root"
# (This one once freed the parsed URL twice: nbdkit died.)
refused url-above-root url-above-root.qcow2 "refusing file 'nfs://127.0.0.1/../etc/passwd'.*above the server's root"
refused other-export other-export.qcow2 "refusing file 'nfs://127.0.0.1/other/secret.raw'"
refused other-server other-server.qcow2 "refusing file 'nfs://127.0.0.2/export/secret.raw'"
refused image-options options.qcow2 "may not set connection options"
refused sideways sideways.qcow2 "refusing file '../shared/base.raw'"
for v in 4 3; do
  refused "dirlink-v$v" dirlink.qcow2 "updir.*symbolic link" "?version=$v"
  refused "filelink-v$v" filelink.qcow2 "filelink.raw.*symbolic link" "?version=$v"
done
# An allowed prefix admits only what is below it, on whole components.
refused prefix sideways.qcow2 "refusing file '../shared/base.raw'" \
  "allow-backing-path=$NFS_URL/shar"
refused wrong-kind abs.qcow2 "a local file" "allow-backing-path=$NFS_URL"

allowed sideways-url sideways.qcow2 "allow-backing-path=$NFS_URL/shared"
allowed local-dir abs.qcow2 "allow-backing-path=$tmpdir/local"
allowed any up.qcow2 allow-backing-path=any

echo "nfs security: OK"
