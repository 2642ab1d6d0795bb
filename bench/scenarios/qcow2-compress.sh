# SPDX-License-Identifier: BSD-3-Clause
# Scenario "qcow2-compress": compressed writes.  One nbdcopy of a raw file
# that compresses about 4x (make_compressible_raw) into a fresh, empty
# qcow2 image, recreated before every run:
#  - qcow2-plugin: our plugin with compress=zlib (compwrite) or
#    compress=zstd (compwrite-zstd, on an image created with
#    compression_type=zstd)
#  - qemu-nbd: QEMU's "compress" filter driver over the same qcow2 image
#    (every write compressed), the peer
# The report compares with what people run offline, qemu-img convert -c of
# the same raw file (timed ROUNDS times per compression type), and lists
# the image sizes.  Every image must pass qemu-img check and compare equal
# to the raw file.

DESCRIPTION="qcow2 compressed writes: nbdcopy of a compressible raw file into an empty image, qcow2 plugin compress= vs qemu-nbd with QEMU's compress driver; qemu-img convert -c in the report"
PEER=qemu-nbd

BENCH_WORKLOAD_DESC="nbdcopy raw file into empty image, zlib" \
  bench_workload compwrite nbdcopy-in MiB/s
BENCH_WORKLOAD_DESC="nbdcopy raw file into empty image, zstd" \
  bench_workload compwrite-zstd nbdcopy-in MiB/s
WORKLOADS="compwrite compwrite-zstd"

scenario_requires () {
  bench_requires nbdkit qemu-nbd qemu-img
  bench_requires_plugin qcow2
}

prepare () {
  make_compressible_raw "$WORKDIR/comp.raw"
  BENCH_COPY_SRC=$WORKDIR/comp.raw
  : > "$WORKDIR/sizes"
}

before_run () {   # LABEL WORKLOAD ROUND
  case $2 in
    compwrite) CT=zlib ;;
    compwrite-zstd) CT=zstd ;;
  esac
  QCOW2=$WORKDIR/out.qcow2
  rm -f "$QCOW2"
  qemu-img create -q -f qcow2 -o "compression_type=$CT" "$QCOW2" "$SIZE"
}

after_run () {    # LABEL WORKLOAD ROUND: a sound image with the file's data
  qemu-img check -q "$QCOW2" ||
    { bench_log "qemu-img check failed on $QCOW2 after $1 $2"; return 1; }
  qemu-img compare -q -f raw "$BENCH_COPY_SRC" -F qcow2 "$QCOW2" ||
    { bench_log "$QCOW2 differs from the raw file after $1 $2"; return 1; }
  printf '%s\t%s\t%s\n' "$1" "$2" "$(stat -c %s "$QCOW2")" >> "$WORKDIR/sizes"
  rm -f "$QCOW2"
}

report () {       # RESULTS_TSV
  local results=$1 wl ct r t0 t1 ref times sz
  echo "qemu-img convert -c of the same raw file (median of $ROUNDS run(s); sizes from the last run):"
  echo
  echo "| workload | qcow2-plugin MiB/s | qemu-nbd (compress driver) MiB/s | qemu-img convert -c MiB/s | plugin ÷ convert | image bytes: plugin / qemu-nbd / convert |"
  echo "|---|---|---|---|---|---|"
  for wl in compwrite compwrite-zstd; do
    case $wl in compwrite) ct=zlib ;; *) ct=zstd ;; esac
    ref=$WORKDIR/ref.qcow2
    times=()
    for (( r=1; r<=ROUNDS; r++ )); do
      rm -f "$ref"
      t0=$EPOCHREALTIME
      qemu-img convert -c -f raw -O qcow2 -o "compression_type=$ct" \
        "$BENCH_COPY_SRC" "$ref"
      t1=$EPOCHREALTIME
      times+=("$(awk -v a="$t0" -v b="$t1" -v s="$SIZE" 'BEGIN { printf "%.1f", s / 1048576 / (b - a) }')")
    done
    local conv plug peer
    conv=$(printf '%s\n' "${times[@]}" | sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }')
    plug=$(bench_median "$results" qcow2-plugin "$wl")
    peer=$(bench_median "$results" qemu-nbd "$wl")
    sz="$(awk -F'\t' -v w="$wl" '$1 == "qcow2-plugin" && $2 == w { s = $3 } END { print s }' "$WORKDIR/sizes") / $(awk -F'\t' -v w="$wl" '$1 == "qemu-nbd" && $2 == w { s = $3 } END { print s }' "$WORKDIR/sizes") / $(stat -c %s "$ref")"
    echo "| $wl | ${plug:-–} | ${peer:-–} | $conv | $(awk -v a="${plug:-0}" -v b="$conv" 'BEGIN { printf "%.2f", a / b }') | $sz |"
    rm -f "$ref"
  done
}

bench_server qcow2-plugin 'serve_nbdkit "$(plugin_so qcow2)" file="$QCOW2" compress="$CT"'
bench_server qemu-nbd     'serve_qemu_nbd --image-opts "driver=compress,file.driver=qcow2,file.file.driver=file,file.file.filename=$QCOW2"'
