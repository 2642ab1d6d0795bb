#!/bin/bash
# SPDX-License-Identifier: BSD-3-Clause
# docs-guide-nfs: the ```sh recipe nfs blocks of docs/guide.md, run in
# order against a private NFS server (nfs-ganesha, tests/nfs/nfs-server.sh,
# inside a network namespace), with $NFS_URL naming its export and nbdkit
# and QEMU through the shims (see docs-guide-recipes).  There must be at
# least one such block, and it must use the nfs plugin.
here=$(cd "$(dirname "$0")" && pwd)
: "${TOP_SRCDIR:=$(cd "$here/../.." && pwd)}"
source "$TOP_SRCDIR/tests/nfs/nfs-server.sh"
nfs_netns "$0" "$@"
source "${TOP_SRCDIR:?run the tests through ctest, which sets TOP_SRCDIR}/tests/functions.sh" || exit 1
source "$TOP_SRCDIR/tests/docs/docs-lib.sh"
requires_root
requires_plugin nfs

python3 "$docs_srcdir/extract-blocks.py" "$TOP_SRCDIR/docs/guide.md" "$tmpdir/blocks" > "$tmpdir/index" ||
  fail "docs/guide.md has blocks that cannot be tested"
nfs_server_start "$tmpdir/export"
export NFS_URL

n=0
while read -r _ kind line path; do
  [ "$kind" = recipe-nfs ] || continue
  echo "--- docs/guide.md:$line ($kind)"
  rc=0
  (cd "$GUIDE_DIR" && timeout -k 5 180 bash -euo pipefail "$path") </dev/null || rc=$?
  if [ $rc != 0 ]; then
    sed 's/^/  | /' "$path" >&2
    fail "recipe at docs/guide.md:$line failed (status $rc)"
  fi
  docs_check_servers_gone "$GUIDE_DIR" "recipe at docs/guide.md:$line"
  n=$((n + 1))
done < "$tmpdir/index"
[ $n -gt 0 ] || fail "no '\`\`\`sh recipe nfs' block in docs/guide.md"
grep -q "plugins/nfs/nbdkit-nfs-plugin.so" "$DOCS_LOG" || fail "no recipe used the nfs plugin"
# What the recipes wrote, read from the exported directory itself.
qemu-io -r -f raw -c 'read -P 6 0 4M' "$NFS_DIR/vm6.raw" >/dev/null ||
  fail "vm6.raw on the export does not hold the recipe's writes"
qemu_img_check "$NFS_DIR/vm7.qcow2"
qemu-io -r -f qcow2 -c 'read -P 7 1M 1M' "$NFS_DIR/vm7.qcow2" >/dev/null ||
  fail "vm7.qcow2 on the export does not hold the recipe's writes"
cat "$DOCS_LOG" | cut -c1-160 | sed 's/^/    ran: /'
echo "PASS ($n NFS recipes)"
