#!/bin/bash
# SPDX-License-Identifier: BSD-3-Clause
# tests/e2e/guest-run.sh RUNNER URI
#
# Boots a real Linux guest whose only disk is the NBD export URI, lets the
# guest checksum the disk, write the e2e pattern (pattern.sh), read it back,
# and verifies both sides.  RUNNER is "qemu" (QEMU started directly) or
# "libvirt" (private libvirtd + virtlogd, transient domain).  URI is
# nbd+unix:///EXPORT?socket=PATH or nbd://HOST:PORT/EXPORT.  See README.md.
#
# Exit 0: all checks passed; 77: cannot run here (skip; a failure with
# CI=true); anything else: failure.

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PATH=$PATH:/usr/sbin:/sbin        # modinfo, libvirtd, virtlogd
: "${TOP_SRCDIR:=$(cd "$here/../.." && pwd)}"
source "${TOP_SRCDIR:?run the tests through ctest, which sets TOP_SRCDIR}/tests/functions.sh"
source "$here/pattern.sh"

usage () { echo "usage: $0 qemu|libvirt nbd+unix:///EXPORT?socket=PATH|nbd://HOST:PORT/EXPORT" >&2; exit 2; }
[ $# = 2 ] || usage
runner=$1 uri=$2
case $runner in qemu|libvirt) ;; *) usage ;; esac

log () { echo "e2e[$runner]: $*"; }
timeout_s=${KVM_E2E_TIMEOUT:-120}

# --- parse the URI -------------------------------------------------------------
export_name="" socket="" host="" port=""
case $uri in
  nbd+unix://*)
    rest=${uri#nbd+unix://}
    path=${rest%%\?*}
    query=${rest#"$path"}
    [[ $path == /* ]] || fail "bad URI (expected nbd+unix:///EXPORT?socket=PATH): $uri"
    export_name=${path#/}
    [[ $query == \?socket=* ]] || fail "bad URI (expected ?socket=PATH only): $uri"
    socket=${query#\?socket=}
    [[ $socket != *'&'* ]] || fail "only the socket= query parameter is supported: $uri"
    [ -S "$socket" ] || fail "no unix socket at $socket"
    ;;
  nbd://*)
    rest=${uri#nbd://}
    hostport=${rest%%/*}
    export_name=${rest#"$hostport"}; export_name=${export_name#/}
    if [[ $hostport == *:* ]]; then host=${hostport%:*} port=${hostport##*:}
    else host=$hostport port=10809; fi
    [[ -n $host && $port =~ ^[0-9]+$ ]] || fail "bad URI (expected nbd://HOST:PORT/EXPORT): $uri"
    ;;
  *) usage ;;
esac
[[ $export_name != *%* && $export_name != *'?'* ]] ||
  fail "percent-encoded or query parts in the export name are not supported: $uri"
[[ $uri != *"'"* && $uri != *'"'* && $uri != *'<'* && $uri != *'&'* ]] ||
  fail "quotes, < and & are not supported in the URI: $uri"

requires nbdinfo nbdcopy sha256sum cmp timeout
case $runner in
  qemu) requires qemu-system-x86_64 ;;
  libvirt) requires_root; requires virsh libvirtd virtlogd flock ;;
esac

# --- kernel and initramfs ----------------------------------------------------------
rc=0
images=$(bash "$here/prepare.sh") || rc=$?
case $rc in
  0) ;;
  77) skip "the guest kernel is not available (see tests/e2e/prepare.sh)" ;;
  *) fail "tests/e2e/prepare.sh failed" ;;
esac
kernel=$(sed -n 's/^KERNEL=//p' <<<"$images")
initrd=$(sed -n 's/^INITRD=//p' <<<"$images")
[ -f "$kernel" ] && [ -f "$initrd" ] || fail "prepare.sh gave no kernel/initrd"
log "kernel $kernel"
log "initrd $initrd"

# --- host side before the boot ---------------------------------------------------
size=$(nbdinfo --size "$uri") || fail "nbdinfo --size $uri failed"
log "export $uri: $size bytes"
(( size >= 4 * 1024 * 1024 )) || fail "the export must be at least 4 MiB (is $size bytes)"
(( size % 512 == 0 )) || fail "the export size must be a multiple of 512 (is $size)"
if nbdinfo --is read-only "$uri"; then fail "the export is read-only"; fi

e2e_pattern > "$tmpdir/pattern"
pattern_sum=$(sha256sum < "$tmpdir/pattern"); pattern_sum=${pattern_sum%% *}

nbdcopy -- "$uri" "$tmpdir/before.raw" || fail "nbdcopy from $uri failed"
before_sum=$(sha256sum < "$tmpdir/before.raw"); before_sum=${before_sum%% *}
log "host checksum before boot: $before_sum"
if cmp -s -n "$E2E_PATTERN_LENGTH" -i "$E2E_PATTERN_OFFSET:0" "$tmpdir/before.raw" "$tmpdir/pattern"; then
  fail "the export already contains the e2e pattern: use a fresh disk, or the write check proves nothing"
fi

# --- acceleration -------------------------------------------------------------------
# KVM only when it is real hardware virtualisation: the software kvm_pvm
# backend makes stock kernels crawl.
accel=${KVM_E2E_ACCEL:-}
if [ -z "$accel" ]; then
  if [ -w /dev/kvm ] && grep -qwE 'vmx|svm' /proc/cpuinfo && [ ! -e /sys/module/kvm_pvm ]; then
    accel=kvm
  else
    accel=tcg
  fi
fi

# no_timer_check: the kernel's early check that the IO-APIC timer ticks is
# timed against the host's clock; when the host is busy (ctest -j2 with
# another guest booting, at load 18) TCG falls behind and the kernel
# panics "IO-APIC + timer doesn't work!" before running anything.
cmdline="console=ttyS0 panic=-1 quiet no_timer_check e2e.offset=$E2E_PATTERN_OFFSET e2e.length=$E2E_PATTERN_LENGTH"
console=$tmpdir/console.log

# --- runners ------------------------------------------------------------------------
run_qemu () {
  local drive cpu
  if [ -n "$socket" ]; then drive="nbd+unix:///$export_name?socket=$socket"
  else drive="nbd://$host:$port/$export_name"; fi
  drive=${drive//,/,,}               # QEMU option syntax: literal comma is ",,"
  if [ "$accel" = kvm ]; then cpu=host; else cpu=max; fi
  log "booting with QEMU ($accel), drive $drive"
  local start=$SECONDS rc=0
  timeout -k 5 "$timeout_s" qemu-system-x86_64 \
    -accel "$accel" -cpu "$cpu" -m 128 -smp 1 \
    -nodefaults -no-user-config -display none -no-reboot \
    -serial "file:$console" \
    -kernel "$kernel" -initrd "$initrd" -append "$cmdline" \
    -drive "file=$drive,format=raw,if=virtio,cache=none" \
    </dev/null >"$tmpdir/qemu.log" 2>&1 || rc=$?
  log "QEMU exited with status $rc after $((SECONDS - start)) s"
  if [ $rc = 124 ] || [ $rc = 137 ]; then
    show_console; fail "the guest did not power off within $timeout_s s"
  fi
  if [ $rc != 0 ]; then
    cat "$tmpdir/qemu.log" >&2; show_console; fail "QEMU failed (status $rc)"
  fi
}

libvirt_uri=qemu:///system
virsh_ () { virsh -q -c "$libvirt_uri" "$@"; }

# stop_pid PID: SIGTERM, wait up to 10 s, then SIGKILL.
stop_pid () {
  local pid=$1 i
  kill "$pid" 2>/dev/null || return 0
  for (( i=0; i<100; i++ )); do
    kill -0 "$pid" 2>/dev/null || return 0
    sleep 0.1
  done
  kill -9 "$pid" 2>/dev/null || :
}

# Start virtlogd and libvirtd (no systemd), unless a libvirtd already
# serves qemu:///system (then that one is used and left alone).  Only one
# e2e libvirt run at a time: the daemons are system-wide.
start_libvirt () {
  local lock=/tmp/kvm-e2e-libvirt.lock i
  exec 8>>"$lock"
  log "waiting for $lock"
  flock -w 600 8 || fail "timed out waiting for $lock"
  cleanup_add "flock -u 8"

  if [ -S /run/libvirt/libvirt-sock ] &&
     timeout 10 virsh -q -c "$libvirt_uri" uri >/dev/null 2>&1; then
    log "using the libvirtd that is already running"
    return 0
  fi

  # Without udev, /dev/kvm is root-only; libvirt then re-probes QEMU on
  # every call (seconds each).  Open it to the kvm group for the test.
  if [ -c /dev/kvm ] && getent group kvm >/dev/null; then
    local kvm_mode
    kvm_mode=$(stat -c '%u:%g %a' /dev/kvm)
    cleanup_add "chown '${kvm_mode% *}' /dev/kvm; chmod '${kvm_mode#* }' /dev/kvm"
    chgrp kvm /dev/kvm && chmod 0660 /dev/kvm
  fi

  mkdir -p "$tmpdir/libvirt"
  # Daemons get no inherited descriptors: no harness pipes, not the lock.
  virtlogd -p "$tmpdir/libvirt/virtlogd.pid" \
    </dev/null >"$tmpdir/libvirt/virtlogd.log" 2>&1 8>&- 9>&- &
  local vl_pid=$!
  cleanup_add "stop_pid $vl_pid"
  libvirtd -p "$tmpdir/libvirt/libvirtd.pid" \
    </dev/null >"$tmpdir/libvirt/libvirtd.log" 2>&1 8>&- 9>&- &
  local lv_pid=$!
  cleanup_add "stop_pid $lv_pid"          # runs before virtlogd's stop
  log "started virtlogd (pid $vl_pid) and libvirtd (pid $lv_pid)"
  for (( i=0; i<600; i++ )); do
    if timeout 10 virsh -q -c "$libvirt_uri" uri >/dev/null 2>&1; then return 0; fi
    kill -0 $lv_pid 2>/dev/null ||
      { cat "$tmpdir/libvirt/libvirtd.log" >&2; fail "libvirtd exited during start-up"; }
    kill -0 $vl_pid 2>/dev/null ||
      { cat "$tmpdir/libvirt/virtlogd.log" >&2; fail "virtlogd exited during start-up"; }
    sleep 0.1
  done
  fail "libvirtd did not answer within 60 s"
}

xml_escape () {
  local s=$1
  s=${s//&/&amp;}; s=${s//</&lt;}; s=${s//>/&gt;}; s=${s//\'/&apos;}; s=${s//\"/&quot;}
  printf '%s' "$s"
}

run_libvirt () {
  local name source_host domtype=qemu
  start_libvirt
  name=kvm-e2e-$$-$RANDOM
  if [ -n "$socket" ]; then
    # QEMU runs as libvirt-qemu: it must be able to connect.
    chmod 0666 "$socket"
    source_host="<host transport='unix' socket='$(xml_escape "$socket")'/>"
  else
    source_host="<host name='$(xml_escape "$host")' port='$port'/>"
  fi
  [ "$accel" = kvm ] && domtype=kvm
  : > "$console"
  chmod 0666 "$console"
  cat > "$tmpdir/domain.xml" <<XML
<domain type='$domtype'>
  <name>$name</name>
  <memory unit='MiB'>128</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>$(xml_escape "$kernel")</kernel>
    <initrd>$(xml_escape "$initrd")</initrd>
    <cmdline>$(xml_escape "$cmdline")</cmdline>
  </os>
  <features><acpi/></features>
  <cpu mode='$([ "$accel" = kvm ] && echo host-passthrough || echo maximum)'/>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>destroy</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <disk type='network' device='disk'>
      <driver name='qemu' type='raw' cache='none'/>
      <source protocol='nbd' name='$(xml_escape "$export_name")'>
        $source_host
      </source>
      <target dev='vda' bus='virtio'/>
    </disk>
    <controller type='usb' model='none'/>
    <serial type='file'>
      <source path='$(xml_escape "$console")'/>
      <target port='0'/>
    </serial>
    <memballoon model='none'/>
  </devices>
</domain>
XML
  local validate=()
  if [ -n "${KVM_E2E_DOMAIN_XML:-}" ]; then
    # The user's domain, with its NBD disk as written (see merge-domain.py).
    python3 "$here/merge-domain.py" "$KVM_E2E_DOMAIN_XML" "$tmpdir/domain.xml" \
      "$tmpdir/domain-merged.xml" || fail "cannot use KVM_E2E_DOMAIN_XML=$KVM_E2E_DOMAIN_XML"
    mv "$tmpdir/domain-merged.xml" "$tmpdir/domain.xml"
    validate=(--validate)
  fi
  log "creating transient libvirt domain $name (type $domtype)"
  cleanup_add "virsh -q -c '$libvirt_uri' destroy '$name'; rm -f '/var/log/libvirt/qemu/$name.log'"
  local start=$SECONDS i
  virsh_ create "${validate[@]}" "$tmpdir/domain.xml" >/dev/null ||
    { cat "/var/log/libvirt/qemu/$name.log" >&2 2>/dev/null || :; fail "virsh create failed"; }
  log "domain started after $((SECONDS - start)) s"
  # The domain disappears when the guest powers off (on_poweroff destroy).
  while virsh_ domstate "$name" >/dev/null 2>&1; do
    if (( SECONDS - start > timeout_s )); then
      virsh_ destroy "$name" >/dev/null 2>&1 || :
      show_console; fail "the guest did not power off within $timeout_s s"
    fi
    sleep 0.2
  done
  log "domain ended after $((SECONDS - start)) s"
  if [ -f "/var/log/libvirt/qemu/$name.log" ]; then
    cp "/var/log/libvirt/qemu/$name.log" "$tmpdir/qemu.log"
  fi
}

show_console () {
  echo "----- guest console ($console) -----" >&2
  cat "$console" >&2 2>/dev/null || :
  echo "----- end of console -----" >&2
}

"run_$runner"

# --- verify ----------------------------------------------------------------------------
# guest_value KEY: the value printed by the guest on its "E2E KEY ..." line.
guest_value () { sed -n "s/^E2E $1 //p" "$console" | tr -d '\r' | head -n1; }

grep -q '^E2E DONE' "$console" || { show_console; fail "the guest did not complete (no E2E DONE)"; }
if grep -q '^E2E FAIL' "$console"; then show_console; fail "the guest reported a failure"; fi

log "guest: /init started at $(guest_value START) s of guest uptime, done at $(guest_value DONE) s"
g_size=$(guest_value SIZE)
g_before=$(guest_value SUM-BEFORE)
g_readback=$(guest_value READBACK)
g_after=$(guest_value SUM-AFTER)

log "guest disk size: $g_size"
[ "$g_size" = "$size" ] || { show_console; fail "guest sees $g_size bytes, the export has $size"; }

log "guest checksum before write: $g_before"
[ "$g_before" = "$before_sum" ] ||
  { show_console; fail "guest checksum $g_before != host checksum $before_sum"; }

log "guest read-back of the pattern: $g_readback (expected $pattern_sum)"
[ "$g_readback" = "$pattern_sum" ] || { show_console; fail "guest read back wrong data"; }

nbdcopy -- "$uri" "$tmpdir/after.raw" || fail "nbdcopy from $uri after the boot failed"
after_sum=$(sha256sum < "$tmpdir/after.raw"); after_sum=${after_sum%% *}
log "host checksum after the guest: $after_sum, guest's: $g_after"
[ "$g_after" = "$after_sum" ] ||
  { show_console; fail "guest checksum after the write $g_after != host $after_sum"; }

e2e_verify_backend_raw "$tmpdir/after.raw" >/dev/null ||
  fail "the pattern is not visible through the export on the host side"
log "host sees the pattern at offset $E2E_PATTERN_OFFSET (+$E2E_PATTERN_LENGTH)"

# Nothing outside the pattern region changed.
end=$((E2E_PATTERN_OFFSET + E2E_PATTERN_LENGTH))
cmp -s -n "$E2E_PATTERN_OFFSET" "$tmpdir/before.raw" "$tmpdir/after.raw" ||
  fail "the guest run changed data before the pattern region"
cmp -s -i "$end:$end" "$tmpdir/before.raw" "$tmpdir/after.raw" ||
  fail "the guest run changed data after the pattern region"
log "the rest of the disk is unchanged"

log "PASS"
