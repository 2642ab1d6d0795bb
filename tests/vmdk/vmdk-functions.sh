# SPDX-License-Identifier: BSD-3-Clause
# Helpers shared by the vmdk plugin tests (tests/vmdk/test-vmdk-*.sh).
# Source it after tests/functions.sh.  The oracle is QEMU (qemu-img,
# qemu-io); the seeded workload generator and the block-status comparison
# are the generic ones in tests/qcow2 (qcow2-ops.py, qcow2-mapcmp.py).

qdir="$TOP_SRCDIR/tests/qcow2"
vdir="$TOP_SRCDIR/tests/vmdk"
requires qemu-img qemu-io nbdcopy nbdinfo python3 cmp
requires_plugin vmdk

# gen_ops ARGS...: seeded qemu-io commands (see qcow2-ops.py).
gen_ops () {
  python3 "$qdir/qcow2-ops.py" --patterns "$tmpdir/patterns" "$@"
}

# qemu_io_cmds QEMU-IO-ARGS... < CMDS: fail on any failed command.
qemu_io_cmds () {
  local out
  out=$(qemu-io "$@" 2>&1) || fail "qemu-io $* failed: $(grep -i -m3 -E 'fail|error' <<<"$out")"
  if grep -qiE 'failed|error' <<<"$out"; then
    fail "qemu-io $*: $(grep -i -m3 -E 'fail|error' <<<"$out")"
  fi
}

# serve_vmdk IMAGE [PARAMS...]: serve IMAGE with the plugin on a new $sock.
serve_vmdk () {
  local img=$1; shift
  new_sock
  start_nbdkit "$sock" "$(plugin_so vmdk)" "file=$img" "$@"
}

# served_read_only IMAGE REGEX WHAT [ARGS...]: the plugin serves IMAGE
# read-only (without -r) and logs a message matching REGEX.
served_read_only () {
  local img=$1 re=$2 what=$3; shift 3
  local log="$tmpdir/ro.$RANDOM.log"
  serve_vmdk "$img" "$@" 2>"$log"
  nbdinfo "$(uri_of "$sock")" | grep -q 'is_read_only: true' ||
    fail "$what: served writable"
  stop_server
  grep -q "$re" "$log" || fail "$what: no message: $(tail -3 "$log")"
  echo "ok: $what: served read-only"
}

stop_server () {
  kill -0 "$nbdkit_pid" 2>/dev/null || fail "nbdkit $nbdkit_pid died"
  stop_nbdkit "$nbdkit_pid"
}

# check_read IMAGE WORK [--no-map]: the export on $sock reads exactly like
# qemu-img convert -O raw IMAGE (nbdcopy + cmp, qemu-img compare), and its
# block status agrees with qemu-img map.
check_read () {
  local img=$1 work=$2 domap=1 uri
  [ "${3:-}" = --no-map ] && domap=0
  uri=$(uri_of "$sock")
  rm -f "$work.oracle.raw" "$work.export.raw"
  qemu-img convert -U -O raw -f vmdk "$img" "$work.oracle.raw" ||
    fail "qemu-img convert $img"
  nbdcopy -- "$uri" "$work.export.raw" || fail "nbdcopy $uri"
  assert_same "$work.oracle.raw" "$work.export.raw" \
    "content of $img through the plugin vs qemu-img convert"
  local out
  out=$(qemu-img compare -U -f vmdk "$img" -F raw "$uri" 2>&1) ||
    fail "qemu-img compare $img $uri: $out"
  if [ $domap = 1 ]; then
    qemu-img map -U --output=json -f vmdk "$img" > "$work.qmap.json" ||
      fail "qemu-img map $img"
    nbdinfo --map --json "$uri" > "$work.nmap.json" ||
      fail "nbdinfo --map $uri"
    python3 "$qdir/qcow2-mapcmp.py" "$work.qmap.json" "$work.nmap.json" \
      "$work.oracle.raw" >/dev/null ||
      fail "block status of $img differs from qemu-img map"
  fi
  rm -f "$work.oracle.raw" "$work.export.raw"
}

# check_image IMAGE: qemu-img check finds no errors.
check_image () {
  local out rc=0
  out=$(qemu-img check -U -f vmdk "$1" 2>&1) || rc=$?
  [ $rc = 0 ] || fail "qemu-img check $1 (exit $rc): $out"
  grep -q 'No errors were found' <<<"$out" || fail "qemu-img check $1: $out"
}
