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
#
# QCOW2_TEST_SERVE=nfs serves them with the plugin from a private NFS
# server exporting $tmpdir (file=nfs://...): see tests/nfs/.
#
# QCOW2_TEST_SERVE=filter-file or filter-lvm serves them with the qcow2
# *filter* instead (the same engine over another plugin's export): over
# nbdkit's file plugin, or over this project's lvm plugin with the image
# copied into an LV (and copied back when the server stops, so that the
# oracles read what the filter wrote).  The container is the image plus
# free room: the filter cannot grow it.  Cases the filter does not offer
# (external data files, snapshot=, direct=) are skipped by the tests
# through qcow2_filter_mode.

qdir="$TOP_SRCDIR/tests/qcow2"
requires qemu-img qemu-io nbdcopy nbdinfo python3 cmp

serve_mode=${QCOW2_TEST_SERVE:-plugin}
if [ -n "${QCOW2_TEST_PEER:-}" ]; then
  :
elif [ "$serve_mode" = plugin ]; then
  requires_plugin qcow2
elif [ "$serve_mode" = nfs ]; then
  # The whole $tmpdir is exported by a private NFS server and every image
  # is served as file=nfs://127.0.0.1/export/... (tests/nfs/ runs the
  # qcow2 tests this way, inside a private network namespace).
  requires_plugin qcow2
  [ "${KVM_NFS_NETNS:-}" = 1 ] ||
    fail "QCOW2_TEST_SERVE=nfs: run the test through tests/nfs/ (network namespace)"
  source "$TOP_SRCDIR/tests/nfs/nfs-server.sh"
  nfs_server_start "$tmpdir"
else
  requires_filter qcow2
  case $serve_mode in
    filter-file) ;;
    filter-lvm)
      source "$TOP_SRCDIR/tests/lvm/lvm-lib.sh"
      # One VG on one PV file with one LV that receives each image in
      # turn.  The loop device is needed only by the lvm2 tools; the
      # plugin reads the PV file itself.
      lvm_lv_size=$((320*1024*1024))
      truncate -s $((lvm_lv_size + 16*1024*1024)) "$tmpdir/qpv.img"
      lvm_attach "$tmpdir/qpv.img" qpv_loop
      lvm_q pvcreate -q "$qpv_loop"
      lvm_q vgcreate -q -s 4m qvg "$qpv_loop"
      lvm_q lvcreate -q -an -Zn -L $((lvm_lv_size/1024/1024))M -n qlv qvg
      # The LV is linear at PE 0: its bytes start at the PV's pe_start.
      qlv_off=$(pvs --noheadings --units b --nosuffix -o pe_start "$qpv_loop" |
                tr -d ' ')
      [ -n "$qlv_off" ] || fail "cannot read pe_start of $qpv_loop"
      ;;
    *) fail "QCOW2_TEST_SERVE=$serve_mode: unknown mode" ;;
  esac
fi

# qcow2_filter_mode: true when the images are served by the qcow2 filter.
qcow2_filter_mode () {
  [ "$serve_mode" != plugin ] && [ "$serve_mode" != nfs ] &&
    [ -z "${QCOW2_TEST_PEER:-}" ]
}

# matrix_case: true when the next case of a matrix runs in this mode.
# Every case runs with the plugin.  The filter modes share the cases of
# a matrix between them: cases 1, 3, 5... over the file plugin, 2, 4,
# 6... over the lvm plugin, so every case still runs through the filter
# (whose engine sees the same fixed-size container over either plugin)
# at half the cost; each plugin beneath still gets every kind of request.
# QCOW2_FILTER_MATRIX=full runs every case in both filter modes.  A
# skipped case must still advance the seed counter of its test, so that
# the others keep their workloads.
_matrix_case_n=0
matrix_skipped=0
matrix_case () {
  _matrix_case_n=$((_matrix_case_n+1))
  qcow2_filter_mode || return 0
  [ "${QCOW2_FILTER_MATRIX:-}" = full ] && return 0
  case $serve_mode in
    filter-file) (( _matrix_case_n % 2 == 1 )) && return 0 ;;
    filter-lvm)  (( _matrix_case_n % 2 == 0 )) && return 0 ;;
  esac
  matrix_skipped=$((matrix_skipped+1))
  return 1
}

# matrix_summary: a line saying how many cases ran over the other plugin.
matrix_summary () {
  [ $matrix_skipped = 0 ] ||
    echo "$matrix_skipped of $_matrix_case_n cases left to the other filter mode" \
         "(QCOW2_FILTER_MATRIX=full runs them here too)"
}

# _image_facts IMAGE: sets img_vsize (virtual size), img_end (where its
# clusters end: image-end-offset of qemu-img check, the file size if
# check cannot tell) and img_backing (full backing file name or empty).
# One python3 runs qemu-img info and check once per serve (this used to
# be three of each, which cost the filter matrices about as much as
# their oracles).
_image_facts () {
  local facts
  facts=$(python3 - "$1" <<'EOF'
import json, os, subprocess, sys
img = sys.argv[1]
info = json.loads(subprocess.run(["qemu-img", "info", "-U", "--output=json", img],
                                 check=True, capture_output=True).stdout)
chk = subprocess.run(["qemu-img", "check", "-U", "--output=json", img],
                     capture_output=True).stdout
try:
    end = json.loads(chk).get("image-end-offset", 0)
except ValueError:
    end = os.path.getsize(img)
print(info["virtual-size"])
print(end)
print(info.get("full-backing-filename", ""))
EOF
  ) || fail "qemu-img info/check $1"
  { read -r img_vsize; read -r img_end; IFS= read -r img_backing || :; } <<<"$facts"
}

# _filter_params PARAMS...: the plugin's parameters as the filter's
# (sets filter_args); the image's backing file, if any (img_backing from
# _image_facts), is named with qcow2-backing= (the filter does not follow
# names inside the image).
_filter_params () {
  local a
  filter_args=()
  for a in "$@"; do
    case "$a" in
      -r) filter_args+=(-r) ;;
      backing=none) filter_args+=(qcow2-backing=none) ;;
      cache=*) filter_args+=("qcow2-$a") ;;
      allow-backing-path=*) filter_args+=("qcow2-$a") ;;
      direct=*) ;;                              # the file plugin's business
      *) fail "parameter $a has no qcow2 filter equivalent" ;;
    esac
  done
  local backing=$img_backing
  case " ${filter_args[*]} " in *" qcow2-backing=none "*) backing= ;; esac
  [ -n "$backing" ] && filter_args+=("qcow2-backing=$backing")
  return 0
}

# The image being served in a filter mode, to copy back when it stops.
served_image=

# serve_qcow2 SOCK IMAGE [PARAM=VALUE | -r ...]: serve IMAGE on SOCK.
# _plugin_file IMAGE: the plugin's file= for IMAGE (its nfs:// URL in the
# nfs mode).
_plugin_file () {
  [ "$serve_mode" = nfs ] || { echo "$1"; return; }
  local abs
  abs=$(realpath -m "$1")
  case $abs in
    "$NFS_DIR"/*) echo "$NFS_URL/${abs#"$NFS_DIR"/}" ;;
    *) fail "$1 is not inside the NFS export $NFS_DIR" ;;
  esac
}

# qcow2_checked_at_start: true when the server opens the image at
# start-up, so that an image it cannot serve stops it there.  The plugin
# does; the filter cannot (its image is in the plugin below, opened with
# each first connection).
qcow2_checked_at_start () {
  [ "$serve_mode" = plugin ] || [ "$serve_mode" = nfs ]
}

# serve_qcow2_stops SOCK IMAGE [params]: the plugin must stop at start-up
# (nbdkit_stops); prints what it said.
serve_qcow2_stops () {
  local sock=$1 img=$2; shift 2
  qcow2_checked_at_start || fail "serve_qcow2_stops: not in mode $serve_mode"
  nbdkit_stops 10 -U "$sock" "$(plugin_so qcow2)" "file=$(_plugin_file "$img")" \
    "$@" --run true
}

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
    kill_at_exit $bg
    for (( i=0; i<200; i++ )); do
      [ -S "$sock" ] && [ -s "$sock.pid" ] && { nbdkit_pid=$bg; return 0; }
      sleep 0.05
    done
    fail "qemu-nbd did not start"
  fi
  case $serve_mode in
    plugin|nfs)
      start_nbdkit "$sock" "$(plugin_so qcow2)" "file=$(_plugin_file "$img")" \
        "$@" ;;
    filter-file)
      _image_facts "$img"
      _filter_params "$@"
      _grow_container "$img"
      start_nbdkit "$sock" --filter="$(filter_so qcow2)" file "file=$img" \
        "${filter_args[@]}" ;;
    filter-lvm)
      _image_facts "$img"
      _filter_params "$@"
      _grow_container "$img"
      local isize; isize=$(stat -c %s "$img")
      (( isize <= lvm_lv_size )) || fail "$img does not fit in the test LV"
      fallocate -p -o "$qlv_off" -l "$lvm_lv_size" "$tmpdir/qpv.img"
      dd if="$img" of="$tmpdir/qpv.img" bs=1M oflag=seek_bytes \
         seek="$qlv_off" conv=notrunc,sparse status=none ||
        fail "copying $img into the LV"
      # Copied back at stop_server unless served read-only.
      served_image=$img
      case " $* " in *" -r "*) served_image= ;; esac
      start_nbdkit "$sock" --filter="$(filter_so qcow2)" "$(plugin_so lvm)" \
        "pv=$tmpdir/qpv.img" vg=qvg lv=qlv "${filter_args[@]}" ;;
  esac
}

# _grow_container IMAGE: room for the image to grow into (sparse): its
# virtual size and a quarter more for metadata beyond where its clusters
# end now, plus 16 MiB (img_vsize and img_end from _image_facts).
_grow_container () {
  local room=$(( img_end + img_vsize + img_vsize/4 + 16*1024*1024 ))
  truncate -s ">$room" "$1"
}

# stop_server: stop what serve_qcow2 started (it must still be alive:
# a crashed server is a failure).
stop_server () {
  kill -0 "$nbdkit_pid" 2>/dev/null || fail "server $nbdkit_pid died"
  stop_nbdkit "$nbdkit_pid"
  if [ -n "$served_image" ]; then
    # The LV's content is the image now (trailing zeroes included).
    dd if="$tmpdir/qpv.img" of="$served_image" bs=4M iflag=skip_bytes,count_bytes \
       skip="$qlv_off" count="$lvm_lv_size" conv=sparse status=none ||
      fail "copying the LV back to $served_image"
    served_image=
  fi
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

