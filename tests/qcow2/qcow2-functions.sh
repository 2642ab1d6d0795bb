# SPDX-License-Identifier: BSD-3-Clause
# Helpers shared by the qcow2 plugin tests (tests/qcow2/test-qcow2-*.sh).
# Source it after tests/functions.sh.
#
# The oracle is always QEMU: qemu-img convert/compare/map/check and
# qemu-io.  The plugin is only ever compared against those.
#
# QCOW2_TEST_PEER=qemu-nbd (for people working on these tests only) serves
# the images with qemu-nbd instead of the plugin, to check that the
# oracle logic of a test accepts QEMU itself.  Parameters that only the
# plugin knows are ignored then.

qdir="$TOP_SRCDIR/tests/qcow2"
requires qemu-img qemu-io nbdcopy nbdinfo python3 cmp

if [ -z "${QCOW2_TEST_PEER:-}" ]; then
  requires_plugin qcow2
fi

# serve_qcow2 SOCK IMAGE [PARAM=VALUE | -r ...]: serve IMAGE on SOCK.
serve_qcow2 () {
  local sock=$1 img=$2; shift 2
  if [ "${QCOW2_TEST_PEER:-}" = qemu-nbd ]; then
    local ro=() a
    for a in "$@"; do
      case "$a" in
        -r) ro=(-r) ;;
        snapshot=*) ro=(-r -l "${a#snapshot=}") ;;
        backing=none) img="json:{\"driver\":\"qcow2\",\"backing\":null,\"file\":{\"driver\":\"file\",\"filename\":\"$img\"}}" ;;
      esac
    done
    qemu-nbd -k "$sock" -f qcow2 -t -e 0 "${ro[@]}" --pid-file="$sock.pid" \
      "$img" &
    local bg=$! i
    cleanup_add "kill -9 $bg"
    for (( i=0; i<200; i++ )); do
      [ -S "$sock" ] && [ -s "$sock.pid" ] && { nbdkit_pid=$bg; return 0; }
      sleep 0.05
    done
    fail "qemu-nbd did not start"
  fi
  start_nbdkit "$sock" "$(plugin_so qcow2)" "file=$img" "$@"
}

# stop_server: stop what serve_qcow2 started (it must still be alive:
# a crashed server is a failure).
stop_server () {
  kill -0 "$nbdkit_pid" 2>/dev/null || fail "server $nbdkit_pid died"
  stop_nbdkit "$nbdkit_pid"
}

# fill_image IMAGE FORMAT OPSFILE: apply qemu-io commands to an image.
qemu_io_cmds () {
  local out
  out=$(qemu-io "$@" 2>&1) || fail "qemu-io $* failed: $(grep -i -m3 -E 'fail|error' <<<"$out")"
  if grep -qiE 'failed|error' <<<"$out"; then
    fail "qemu-io $*: $(grep -i -m3 -E 'fail|error' <<<"$out")"
  fi
}
fill_image () {
  qemu_io_cmds -f "$2" "$1" < "$3"
}

# gen_ops ARGS...: qcow2-ops.py with the shared pattern directory.
gen_ops () {
  python3 "$qdir/qcow2-ops.py" --patterns "$tmpdir/patterns" "$@"
}

# check_export_read URI WORK [--no-map] [qcow2-mapcmp.py args...]
#   Compares export URI with the oracle named by the global array ORACLE
#   (qemu-img arguments naming the image, e.g. ORACLE=(-f qcow2 a.qcow2),
#   or with "-l snapshot.name=S" to read an internal snapshot):
#   content (qemu-img convert -O raw vs nbdcopy, cmp), qemu-img compare
#   of the image against the export, and block status (nbdinfo --map vs
#   qemu-img map, see qcow2-mapcmp.py).  WORK is a path prefix for
#   temporary files.
check_export_read () {
  local uri=$1 work=$2; shift 2
  local domap=1 snap=0 a
  if [ "${1:-}" = --no-map ]; then domap=0; shift; fi
  for a in "${ORACLE[@]}"; do [ "$a" = -l ] && snap=1; done
  rm -f "$work.oracle.raw" "$work.export.raw"
  qemu-img convert -U -O raw "${ORACLE[@]}" "$work.oracle.raw" ||
    fail "qemu-img convert ${ORACLE[*]}"
  nbdcopy -- "$uri" "$work.export.raw" || fail "nbdcopy $uri"
  assert_same "$work.oracle.raw" "$work.export.raw" \
    "content of $uri vs qemu-img convert ${ORACLE[*]}"
  local out
  if [ $snap = 0 ]; then
    out=$(qemu-img compare -U "${ORACLE[@]}" -F raw "$uri" 2>&1) ||
      fail "qemu-img compare ${ORACLE[*]} $uri: $out"
  else
    # qemu-img compare cannot open a snapshot: compare its conversion.
    out=$(qemu-img compare -U -f raw "$work.oracle.raw" -F raw "$uri" 2>&1) ||
      fail "qemu-img compare (snapshot) ${ORACLE[*]} $uri: $out"
  fi
  if [ $domap = 1 ]; then
    if [ $snap = 0 ]; then
      qemu-img map -U --output=json "${ORACLE[@]}" > "$work.qmap.json" ||
        fail "qemu-img map ${ORACLE[*]}"
    else
      # qemu-img map cannot open a snapshot: only coverage and soundness.
      echo '[]' > "$work.qmap.json"
      set -- --no-qemu "$@"
    fi
    nbdinfo --map --json "$uri" > "$work.nmap.json" || fail "nbdinfo --map $uri"
    python3 "$qdir/qcow2-mapcmp.py" "$work.qmap.json" "$work.nmap.json" \
      "$work.oracle.raw" "$@" >/dev/null ||
      fail "block status of $uri differs from qemu-img map ${ORACLE[*]}"
  fi
  rm -f "$work.oracle.raw" "$work.export.raw"
}

# check_image IMAGE: qemu-img check, no errors, no leaks.
check_image () {
  local out rc=0
  out=$(qemu-img check -U "$@" 2>&1) || rc=$?
  [ $rc = 0 ] || fail "qemu-img check $* (exit $rc): $out"
  grep -q 'No errors were found' <<<"$out" || fail "qemu-img check $*: $out"
}

# new_sock: set $sock to a fresh socket path (nbdkit leaves old ones
# behind, and start_nbdkit waits for the socket to appear).
_sockn=0
new_sock () { _sockn=$((_sockn+1)); sock="$tmpdir/s$_sockn"; }
