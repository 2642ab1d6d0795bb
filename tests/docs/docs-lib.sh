# SPDX-License-Identifier: BSD-3-Clause
# Helpers for the documentation tests (docs-guide-recipes, docs-examples).
# Source after tests/functions.sh.
#
# The guide and the examples are written for a reader's machine; the tests
# run them unchanged, against real services started here, through:
#   - the shims in tests/docs/shim/ (first on PATH): "nbdkit" loads this
#     project's plugins and filters from the build directory;
#     "qemu-system-x86_64" opens the disks of a QEMU line (or boots the
#     e2e guest on them), see the scripts' headers;
#   - the variables the guide's "Before you start" section names:
#       GUIDE_DIR   working directory of the recipes (here: in $tmpdir)
#       NBD_PORT    TCP port for NBD (here: a free port, never 10809)
#       PV1, PV2    two block devices for LVM (here: loop devices over files)
#       ISCSI_URL   an iSCSI LUN (here: tgtd, tests/iscsi/tgtd.sh)
#       CEPH_CONF   a Ceph cluster's ceph.conf (here: tests/rbd/ceph-cluster.sh)
#       CA_DIR      where the TLS recipe writes its certificates

PATH=$PATH:/usr/sbin:/sbin
docs_srcdir=$TOP_SRCDIR/tests/docs

requires python3 qemu-img qemu-io nbdinfo nbdcopy nbdsh virt-xml-validate \
  qemu-system-x86_64 openssl
requires_plugin qcow2
requires_filter qcow2
requires_filter throttle

DOCS_REAL_NBDKIT=$(type -P nbdkit) || skip "nbdkit not installed"
DOCS_REAL_QEMU=$(type -P qemu-system-x86_64)
export DOCS_REAL_NBDKIT DOCS_REAL_QEMU
export DOCS_BUILDDIR=$TOP_BUILDDIR
export DOCS_LOG=$tmpdir/shim.log
: > "$DOCS_LOG"
# The shims go first on PATH, as small wrappers that carry these settings
# (systemd-socket-activate, like systemd, starts its command with an
# empty environment).
mkdir -p "$tmpdir/shim"
for _s in nbdkit qemu-system-x86_64; do
  {
    echo '#!/bin/bash'
    for _v in DOCS_REAL_NBDKIT DOCS_REAL_QEMU DOCS_BUILDDIR DOCS_LOG TOP_SRCDIR \
              KVM_SANITIZER_PRELOAD ASAN_OPTIONS UBSAN_OPTIONS; do
      [ -z "${!_v:-}" ] || printf ': "${%s:=%q}"; export %s\n' "$_v" "${!_v}" "$_v"
    done
    printf 'exec bash %q "$@"\n' "$docs_srcdir/shim/$_s"
  } > "$tmpdir/shim/$_s"
  chmod 0755 "$tmpdir/shim/$_s"
done
export PATH="$tmpdir/shim:$PATH"
# docs_path_without_shims: $PATH without the shims' directory.
docs_path_without_shims () {
  local out="" d
  local IFS=:
  for d in $PATH; do
    [ "$d" = "$tmpdir/shim" ] || out=${out:+$out:}$d
  done
  printf '%s' "$out"
}
# The project's command-line tools (nbdkit-snapshot-ctl, ...), as
# "cmake --install" would put them on PATH.
for _t in "$TOP_BUILDDIR"/plugins/*/nbdkit-* "$TOP_BUILDDIR"/filters/*/nbdkit-*; do
  [ -f "$_t" ] && [ -x "$_t" ] && [[ $_t != *.so ]] || continue
  case ":$PATH:" in *":${_t%/*}:"*) ;; *) PATH="${_t%/*}:$PATH" ;; esac
done

export GUIDE_DIR=$tmpdir/guide
mkdir -p "$GUIDE_DIR"
chmod 0755 "$GUIDE_DIR"
NBD_PORT=$(free_port)
export NBD_PORT

# docs_fixture_lvm: two 128 MiB loop devices, PV1 and PV2, seen by a
# private LVM configuration (tests/lvm/lvm-lib.sh) and nothing else.
docs_fixture_lvm () {
  source "$TOP_SRCDIR/tests/lvm/lvm-lib.sh"
  truncate -s 128M "$tmpdir/pv1.img" "$tmpdir/pv2.img"
  lvm_attach "$tmpdir/pv1.img" PV1
  lvm_attach "$tmpdir/pv2.img" PV2
  export PV1 PV2 LVM_SYSTEM_DIR
}

# docs_fixture_iscsi: tgtd serving a 64 MiB LUN; ISCSI_URL names it.
docs_fixture_iscsi () {
  source "$TOP_SRCDIR/tests/iscsi/common.sh"
  truncate -s 64M "$tmpdir/lun.img"
  tgtd_one_lun "$tmpdir/lun.img"
  ISCSI_URL=$(tgtd_url "$IQN" 1)
  export ISCSI_URL
}

# docs_fixture_rbd: a throwaway one-node Ceph cluster; CEPH_CONF names it.
docs_fixture_rbd () {
  requires ceph-mon ceph-osd ceph rbd ceph-authtool monmaptool
  requires_plugin rbd
  local cluster=$tmpdir/ceph
  cleanup_add "bash '$TOP_SRCDIR/tests/rbd/ceph-cluster.sh' stop '$cluster'"
  CEPH_MEMSTORE_BYTES=$((512 * 1024 * 1024)) CEPH_OWNER_PID=$$ \
    bash "$TOP_SRCDIR/tests/rbd/ceph-cluster.sh" start "$cluster" ||
    fail "could not start the test Ceph cluster"
  # shellcheck disable=SC1091
  CEPH_CONF=$(source "$cluster/env" && echo "$CEPH_CONF")
  export CEPH_CONF
}

# docs_fixture_guest: kernel and initramfs of the e2e guest, for the QEMU
# shim's boot mode.
docs_fixture_guest () {
  local images rc=0
  images=$(bash "$TOP_SRCDIR/tests/e2e/prepare.sh") || rc=$?
  [ $rc != 77 ] || skip "the guest kernel is not available (tests/e2e/prepare.sh)"
  [ $rc = 0 ] || fail "tests/e2e/prepare.sh failed"
  DOCS_KERNEL=$(sed -n 's/^KERNEL=//p' <<<"$images")
  DOCS_INITRD=$(sed -n 's/^INITRD=//p' <<<"$images")
  export DOCS_KERNEL DOCS_INITRD
}

# docs_check_servers_gone DIR WHAT: every PID file in DIR must name a
# process that has exited (within 10 s): a recipe or an example stops
# what it starts.  Kills leftovers and fails.
docs_check_servers_gone () {
  local dir=$1 what=$2 f pid left=""
  for f in "$dir"/*.pid; do
    [ -e "$f" ] || continue
    pid=$(cat "$f" 2>/dev/null) || continue
    [ -n "$pid" ] || continue
    if ! wait_gone "$pid"; then
      kill -9 "$pid" 2>/dev/null || :
      left="$left $f"
    fi
    rm -f "$f"
  done
  [ -z "$left" ] || fail "$what left a server running ($left)"
}

# docs_validate_xml FILE KIND: virt-xml-validate against libvirt's schema;
# a <disk> element is validated inside a minimal domain.
docs_validate_xml () {
  local file=$1 kind=$2 out
  case $kind in
    disk)
      { printf "<domain type='kvm'><name>docs-disk</name><memory unit='MiB'>128</memory>"
        printf "<os><type arch='x86_64'>hvm</type></os><devices>\n"
        cat "$file"
        printf "</devices></domain>\n"; } > "$file.domain"
      out=$(virt-xml-validate "$file.domain" domain 2>&1) ||
        { echo "$out" >&2; fail "$file: not a valid libvirt <disk>"; } ;;
    domain|pool)
      [ "$kind" = pool ] && kind=storagepool
      out=$(virt-xml-validate "$file" "$kind" 2>&1) ||
        { echo "$out" >&2; fail "$file: not a valid libvirt $kind"; } ;;
    *) fail "docs_validate_xml: unknown kind $kind" ;;
  esac
}
