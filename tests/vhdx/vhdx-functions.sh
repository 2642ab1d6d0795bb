# SPDX-License-Identifier: BSD-3-Clause
# Helpers shared by the VHDX tests (source after tests/functions.sh).
requires qemu-img qemu-io nbdcopy nbdinfo python3
requires_plugin vhdx
vdir="$TOP_SRCDIR/tests/vhdx"
VHDX_PLUGIN=$(plugin_so vhdx)
vtool () { python3 "$vdir/vhdx-tool.py" "$@"; }
# Seeded qemu-io workloads: the generator the qcow2 tests use.
gen_ops () {
  python3 "$TOP_SRCDIR/tests/qcow2/qcow2-ops.py" --patterns "$tmpdir/patterns" "$@"
}
qemu_io_cmds () {
  local out
  out=$(qemu-io "$@" 2>&1) || fail "qemu-io $* failed: $(grep -i -m3 -E 'fail|error' <<<"$out")"
  if grep -qiE 'failed|error' <<<"$out"; then
    fail "qemu-io $*: $(grep -i -m3 -E 'fail|error' <<<"$out")"
  fi
}
# serve SOCK IMG ARGS...: the plugin on IMG.
serve () {
  local s=$1 img=$2; shift 2
  start_nbdkit "$s" "$VHDX_PLUGIN" "file=$img" "$@"
}
# md5 FILE
md5 () { md5sum < "$1" | cut -d' ' -f1; }
# zero_extents_are_zero URI RAW: every extent the export reports as
# zero reads as zeroes in RAW (the oracle's content).
zero_extents_are_zero () {
  nbdinfo --map "$1" > "$tmpdir/map.txt"
  python3 - "$tmpdir/map.txt" "$2" <<'PY' || fail "block status: a zero extent holds data"
import sys
raw = open(sys.argv[2], "rb")
for line in open(sys.argv[1]):
    off, ln, t = (int(x) for x in line.split()[:3])
    if t & 2:
        raw.seek(off)
        left = ln
        while left:
            b = raw.read(min(left, 1 << 20))
            if b.strip(b"\0"):
                sys.exit("extent %d+%d type %d is not zero" % (off, ln, t))
            left -= len(b)
PY
}
# read_via IMG OUT [ARGS...]: the whole export of the plugin on IMG into
# OUT, with a one-shot server (nbdkit --run).
read_via () {
  local img=$1 out=$2; shift 2
  new_sock
  nbdkit -U "$sock" "$VHDX_PLUGIN" file="$img" "$@" --run "nbdcopy \"\$uri\" '$out'" ||
    fail "reading $img through the plugin failed"
}
