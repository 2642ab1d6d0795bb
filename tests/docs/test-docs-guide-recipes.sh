#!/bin/bash
# SPDX-License-Identifier: BSD-3-Clause
# docs-guide-recipes: every fenced block of docs/guide.md is extracted
# (tests/docs/extract-blocks.py: a block without a known info string is a
# failure) and tested:
#   ```sh recipe    run in order, each as its own "bash -euo pipefail"
#                   script in $GUIDE_DIR, against a real iSCSI target
#                   (tgtd), a one-node Ceph cluster and two loop devices
#                   for LVM, with nbdkit and QEMU through the shims of
#                   tests/docs/shim/ (QEMU opens every disk of its line);
#                   it must stop every server it started (PID files)
#   ```xml domain   virt-xml-validate (domain schema)
#   ```xml disk     virt-xml-validate inside a minimal domain
#   ```xml pool     virt-xml-validate (storagepool schema)
source "${TOP_SRCDIR:-$(cd "$(dirname "$0")/../.." && pwd)}/tests/functions.sh" || exit 1
source "$TOP_SRCDIR/tests/docs/docs-lib.sh"
requires_root

guide=$TOP_SRCDIR/docs/guide.md
[ -f "$guide" ] || fail "no $guide"
python3 "$docs_srcdir/extract-blocks.py" "$guide" "$tmpdir/blocks" > "$tmpdir/index" ||
  fail "docs/guide.md has blocks that cannot be tested (see above)"
[ -s "$tmpdir/index" ] || fail "no blocks found in docs/guide.md"

docs_fixture_lvm
docs_fixture_iscsi
docs_fixture_rbd
export CA_DIR=$GUIDE_DIR/pki

declare -A count=()
while read -r n kind line path; do
  echo "--- docs/guide.md:$line ($kind)"
  case $kind in
    recipe)
      start=$SECONDS
      lines_before=$(wc -l < "$DOCS_LOG")
      rc=0
      (cd "$GUIDE_DIR" && timeout -k 5 180 bash -euo pipefail "$path") </dev/null || rc=$?
      if [ $rc != 0 ]; then
        sed 's/^/  | /' "$path" >&2
        fail "recipe at docs/guide.md:$line failed (status $rc)"
      fi
      docs_check_servers_gone "$GUIDE_DIR" "recipe at docs/guide.md:$line"
      # Which nbdkit and QEMU lines it ran (through the shims).
      tail -n +"$((lines_before + 1))" "$DOCS_LOG" | cut -c1-160 | sed 's/^/    ran: /'
      echo "    ok ($((SECONDS - start)) s)" ;;
    recipe-nfs)
      echo "    (run by docs-guide-nfs)" ;;
    domain|disk|pool)
      docs_validate_xml "$path" "$kind"
      echo "    valid" ;;
    *) fail "unhandled block kind $kind" ;;
  esac
  count[$kind]=$(( ${count[$kind]:-0} + 1 ))
done < "$tmpdir/index"

# The shims must have seen our plugins: a recipe that silently used
# something else would prove nothing.
for p in qcow2 lvm iscsi rbd vmdk vhdx; do
  grep -q "plugins/$p/nbdkit-$p-plugin.so" "$DOCS_LOG" ||
    fail "no recipe served anything with the $p plugin"
done
for f in qcow2 throttle snapshot thin; do
  grep -q "filters/$f/nbdkit-$f-filter.so" "$DOCS_LOG" ||
    fail "no recipe used the $f filter"
done
grep -q '^qemu-system-x86_64 ' "$DOCS_LOG" || fail "no recipe ran QEMU"

for k in "${!count[@]}"; do echo "$k blocks: ${count[$k]}"; done
echo PASS
