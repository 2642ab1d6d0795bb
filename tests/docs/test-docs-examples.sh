#!/bin/bash
# SPDX-License-Identifier: BSD-3-Clause
# docs-examples: every file in examples/ is exercised; a file that no
# check below claims makes the test fail.
#   README.md              names every other file
#   libvirt-nbd-disk.xml   virt-xml-validate (inside a minimal domain)
#   libvirt/*.xml          virt-xml-validate; the server command in each
#                          domain's <metadata> is run (site paths, hosts
#                          and ports replaced by the test's, see subst)
#                          and every NBD disk of the domain must be
#                          reachable through it (nbdinfo); qcow2.xml boots
#                          a real guest through libvirt
#                          (tests/e2e/guest-run.sh, KVM_E2E_DOMAIN_XML) and
#                          the image must then hold the guest's writes
#   systemd/*              systemd-analyze verify (no complaint at all),
#                          then the service's ExecStart with vm1.conf under
#                          systemd-socket-activate on the socket's
#                          ListenStream, two clients (nbdinfo)
#   qemu-qcow2.sh          a real QEMU boot of the e2e guest (QEMU shim's
#                          boot mode) on a qcow2 image, checked after
#   migrate.sh             qcow2 -> LV, raw -> qcow2, qcow2 -> RBD, vmdk and
#                          vhdx -> qcow2, checked against lvs's layout,
#                          qemu-img and rbd export (vmdk/vhdx need their
#                          plugins: refused with advice without them)
#   iotune-to-throttle.sh  the lines for libvirt/rbd.xml's <iotune>, which
#                          nbdkit's throttle filter must accept
#   lvm-exports.sh         lists the LVs of a VG made by lvm2
#   throttled-rbd.sh       serves an RBD image of a test cluster
source "${TOP_SRCDIR:-$(cd "$(dirname "$0")/../.." && pwd)}/tests/functions.sh" || exit 1
source "$TOP_SRCDIR/tests/docs/docs-lib.sh"
source "$TOP_SRCDIR/tests/e2e/pattern.sh"
requires_root
requires systemd-analyze systemd-socket-activate virsh libvirtd virtlogd rbd

ex=$TOP_SRCDIR/examples
declare -A done_=()
checked () { local f; for f in "$@"; do done_[$f]=1; echo "    ok: examples/$f"; done; }

docs_fixture_lvm
docs_fixture_iscsi
docs_fixture_rbd
docs_fixture_guest

run=$tmpdir/run images=$tmpdir/images pki=$tmpdir/pki
mkdir -p "$run" "$images" "$pki"
chmod 0755 "$run" "$images"

# subst: the examples' site-specific names -> this test's.
tgt_hostport=${ISCSI_URL#iscsi://}; tgt_hostport=${tgt_hostport%%/*}
subst () {
  sed -e "s|/run/nbdkit|$run|g" \
      -e "s|/var/lib/libvirt/images|$images|g" \
      -e "s|/etc/pki/nbdkit|$pki|g; s|/etc/pki/qemu|$pki|g" \
      -e "s|/etc/ceph/ceph.conf|$CEPH_CONF|g" \
      -e "s|/dev/sdb|$PV1|g; s|/dev/sdc|$PV2|g" \
      -e "s|iscsi://192.0.2.10/|iscsi://$tgt_hostport/|g" \
      -e "s|192.0.2.30|127.0.0.1|g; s|storage1.example|localhost|g" \
      -e "s|10809|$NBD_PORT|g"
}

# --- data behind the examples ------------------------------------------------
lvm_q pvcreate -q "$PV1" "$PV2"
lvm_q vgcreate -q -s 4m guestvg "$PV1" "$PV2"
for lv in vm2 db1 vm5; do lvm_q lvcreate -q -an -Zn -L 8M -n $lv guestvg; done
lvm_q lvcreate -q -an -Zn -L 20M -n mig guestvg
rbd create --size 16M rbd/vm4
rbd create --size 16M rbd/mig
random_file "$tmpdir/vm1.raw" 16M
qemu-img convert -f raw -O qcow2 "$tmpdir/vm1.raw" "$images/vm1.qcow2"

# A CA, a server certificate (localhost) and a client certificate.
( cd "$pki"
  openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj /CN=test-ca \
    -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign \
    -keyout ca-key.pem -out ca-cert.pem 2>/dev/null
  for role in server client; do
    openssl req -newkey rsa:2048 -nodes -subj "/CN=$role" \
      -keyout $role-key.pem -out $role.csr 2>/dev/null
    if [ $role = server ]; then
      printf 'subjectAltName=DNS:localhost\nextendedKeyUsage=serverAuth\n' > $role.ext
    else
      printf 'extendedKeyUsage=clientAuth\n' > $role.ext
    fi
    openssl x509 -req -in $role.csr -CA ca-cert.pem -CAkey ca-key.pem \
      -CAcreateserial -days 30 -extfile $role.ext -out $role-cert.pem 2>/dev/null
  done ) || fail "cannot make test certificates"

# --- README.md ------------------------------------------------------------------
echo "--- examples/README.md"
while read -r f; do
  grep -qF "$f" "$ex/README.md" || fail "examples/README.md does not mention $f"
done < <(cd "$ex" && find . -type f ! -name README.md | sed 's|^\./||' | sort)
checked README.md

# --- libvirt-nbd-disk.xml -----------------------------------------------------------
echo "--- examples/libvirt-nbd-disk.xml"
cp "$ex/libvirt-nbd-disk.xml" "$tmpdir/disk.xml"
docs_validate_xml "$tmpdir/disk.xml" disk
checked libvirt-nbd-disk.xml

# --- libvirt/*.xml -------------------------------------------------------------------
# server_of XML: the command in <metadata><kvmstorage:server>.
server_of () {
  python3 - "$1" <<'PY'
import sys, xml.etree.ElementTree as ET
ns = {"k": "urn:nbdkit-kvm-storage:examples"}
s = ET.parse(sys.argv[1]).getroot().find("metadata/k:server", ns)
sys.exit("no <kvmstorage:server> in <metadata>") if s is None else print(s.text.strip())
PY
}
# uris_of XML: one NBD URI per network disk.
uris_of () {
  python3 - "$1" "$pki" <<'PY'
import sys, xml.etree.ElementTree as ET
for d in ET.parse(sys.argv[1]).getroot().iter("disk"):
    s = d.find("source")
    if d.get("type") != "network" or s is None or s.get("protocol") != "nbd":
        continue
    h, name = s.find("host"), s.get("name", "")
    tls = s.get("tls") == "yes"
    if h.get("transport") == "unix":
        print(f"nbd+unix:///{name}?socket={h.get('socket')}")
    else:
        q = f"?tls-certificates={sys.argv[2]}" if tls else ""
        print(f"nbd{'s' if tls else ''}://{h.get('name')}:{h.get('port', 10809)}/{name}{q}")
PY
}
for x in "$ex"/libvirt/*.xml; do
  b=libvirt/$(basename "$x")
  echo "--- examples/$b"
  docs_validate_xml "$x" domain
  subst < "$x" > "$tmpdir/$(basename "$x")"
  cmd=$(server_of "$tmpdir/$(basename "$x")") || fail "$b: no server command"
  [[ $cmd == "nbdkit "* ]] || fail "$b: the server command is not nbdkit: $cmd"
  echo "    server: $cmd"
  eval "$cmd" || fail "$b: the server command failed"
  n=0
  while read -r uri; do
    nbdinfo --size "$uri" >/dev/null || fail "$b: disk $uri not served by its command"
    echo "    disk: $uri"
    n=$((n + 1))
  done < <(uris_of "$tmpdir/$(basename "$x")")
  [ $n -gt 0 ] || fail "$b: no NBD disk"
  if [ "$b" = libvirt/qcow2.xml ]; then
    # The one real libvirt boot: this domain's disk element as written.
    # (Without the shims on PATH: libvirtd would probe them as QEMU.)
    rc=0
    PATH=$(docs_path_without_shims) KVM_E2E_DOMAIN_XML=$tmpdir/qcow2.xml \
      bash "$TOP_SRCDIR/tests/e2e/guest-run.sh" libvirt "nbd+unix:///?socket=$run/vm1.sock" || rc=$?
    [ $rc != 77 ] || skip "no guest kernel (tests/e2e/prepare.sh)"
    [ $rc = 0 ] || fail "$b: the guest run through libvirt failed ($rc)"
  fi
  for p in "$run"/*.pid; do kill "$(cat "$p")"; done
  docs_check_servers_gone "$run" "$b"
  rm -f "$run"/*.sock
  checked "$b"
done
# The guest's writes are in the qcow2 image, the rest unchanged.
qemu_img_check "$images/vm1.qcow2"
qemu-img convert -f qcow2 -O raw "$images/vm1.qcow2" "$tmpdir/vm1.after"
e2e_verify_backend_raw "$tmpdir/vm1.after" || fail "the libvirt guest's pattern is not in vm1.qcow2"
end=$((E2E_PATTERN_OFFSET + E2E_PATTERN_LENGTH))
cmp -s -n "$E2E_PATTERN_OFFSET" "$tmpdir/vm1.after" "$tmpdir/vm1.raw" &&
  cmp -s -i "$end:$end" "$tmpdir/vm1.after" "$tmpdir/vm1.raw" ||
  fail "vm1.qcow2 changed outside the guest's pattern"

# --- systemd/ ----------------------------------------------------------------------------
echo "--- examples/systemd"
units=$tmpdir/units
mkdir -p "$units"
cp "$ex/systemd/nbdkit@.service" "$ex/systemd/nbdkit@.socket" "$units/"
out=$(cd "$units" && systemd-analyze verify ./nbdkit@vm1.socket ./nbdkit@vm1.service 2>&1) ||
  { echo "$out" >&2; fail "systemd-analyze verify failed"; }
[ -z "$out" ] || { echo "$out" >&2; fail "systemd-analyze verify complained"; }
unit_key () { sed -n "s/^$2=//p" "$units/$1" | tail -n1 | sed 's/%i/vm1/g'; }
listen=$(unit_key nbdkit@.socket ListenStream | subst)
envfile=$(unit_key nbdkit@.service EnvironmentFile)
exec_start=$(unit_key nbdkit@.service ExecStart)
[ "$envfile" = /etc/nbdkit/vm1.conf ] || fail "unexpected EnvironmentFile $envfile"
[[ $exec_start == "/usr/bin/nbdkit "* ]] || fail "unexpected ExecStart $exec_start"
[ -x /usr/bin/nbdkit ] || fail "ExecStart names /usr/bin/nbdkit, which does not exist"
NBDKIT_ARGS=$(subst < "$ex/systemd/vm1.conf" |
              bash -c 'set -a; source /dev/stdin; printf %s "$NBDKIT_ARGS"')
[ -n "$NBDKIT_ARGS" ] || fail "vm1.conf sets no NBDKIT_ARGS"
# As systemd would: $NBDKIT_ARGS split at spaces; nbdkit from the shim
# (the real /usr/bin/nbdkit, with this build's plugins).
cmd=${exec_start#/usr/bin/nbdkit }
cmd=${cmd//\$NBDKIT_ARGS/$NBDKIT_ARGS}
read -r -a cmd_words <<<"$cmd"
rm -f "$listen"
systemd-socket-activate -l "$listen" nbdkit "${cmd_words[@]}" \
  </dev/null >"$tmpdir/activate.log" 2>&1 &
sa_pid=$!
kill_at_exit "$sa_pid"
for (( i=0; i<100; i++ )); do [ -S "$listen" ] && break; sleep 0.1; done
[ -S "$listen" ] || fail "systemd-socket-activate did not listen on $listen"
for i in 1 2; do
  size=$(nbdinfo --size "nbd+unix:///?socket=$listen") ||
    { cat "$tmpdir/activate.log" >&2; fail "socket-activated nbdkit did not serve"; }
  [ "$size" = 16777216 ] || fail "socket-activated export has size $size"
done
grep -q 'Execing nbdkit' "$tmpdir/activate.log" || fail "nbdkit was not socket-activated"
# Without --accept, systemd-socket-activate execs the command in its own
# process on the first connection: that process is nbdkit now.
[ "$(cat /proc/$sa_pid/comm 2>/dev/null)" = nbdkit ] ||
  fail "process $sa_pid is not nbdkit after the first connection"
kill "$sa_pid"; wait "$sa_pid" 2>/dev/null || :
checked systemd/nbdkit@.service systemd/nbdkit@.socket systemd/vm1.conf

# --- qemu-qcow2.sh: a real QEMU boot ------------------------------------------------------
echo "--- examples/qemu-qcow2.sh"
random_file "$tmpdir/q.raw" 16M
qemu-img convert -f raw -O qcow2 "$tmpdir/q.raw" "$tmpdir/q.qcow2"
DOCS_QEMU_BOOT=1 bash "$ex/qemu-qcow2.sh" "$tmpdir/q.qcow2" || fail "qemu-qcow2.sh failed"
qemu_img_check "$tmpdir/q.qcow2"
qemu-img convert -f qcow2 -O raw "$tmpdir/q.qcow2" "$tmpdir/q.after"
e2e_verify_backend_raw "$tmpdir/q.after" || fail "the QEMU guest's pattern is not in the image"
checked qemu-qcow2.sh

# --- migrate.sh -------------------------------------------------------------------------------
echo "--- examples/migrate.sh"
bash "$ex/migrate.sh" "$images/vm1.qcow2" "lvm:$PV1,$PV2:guestvg/mig" || fail "migrate.sh to an LV failed"
lvm_layout collect "$tmpdir/layout.json"
lvm_layout gather "$tmpdir/layout.json" guestvg mig "$tmpdir/mig.lv" \
  "$PV1=$tmpdir/pv1.img" "$PV2=$tmpdir/pv2.img"
cmp -n $((16 * 1024 * 1024)) "$tmpdir/vm1.after" "$tmpdir/mig.lv" ||
  fail "the LV (read from the PV files where lvs puts it) differs from the image"
qemu-img convert -f qcow2 -O raw "$images/vm1.qcow2" "$tmpdir/r.raw"
bash "$ex/migrate.sh" "$tmpdir/r.raw" "qcow2:$tmpdir/r.qcow2" || fail "migrate.sh raw -> qcow2 failed"
qemu-img compare -f raw -F qcow2 "$tmpdir/r.raw" "$tmpdir/r.qcow2" >/dev/null ||
  fail "qemu-img compare: the new qcow2 differs"
qemu_img_check "$tmpdir/r.qcow2"
bash "$ex/migrate.sh" "$tmpdir/r.qcow2" "rbd:rbd/mig" || fail "migrate.sh to RBD failed"
rbd export --no-progress rbd/mig "$tmpdir/mig.rbd"
cmp "$tmpdir/r.raw" "$tmpdir/mig.rbd" || fail "rbd export differs from the image"
if bash "$ex/migrate.sh" "$tmpdir/r.raw" "qcow2:$tmpdir/r.qcow2" 2>/dev/null; then
  fail "migrate.sh overwrote an existing qcow2"
fi
# vmdk and vhdx sources: copied when the plugin is built, refused with
# advice when it is not.
for fmt in vmdk vhdx; do
  qemu-img create -q -f $fmt "$tmpdir/v.$fmt" 16M
  qemu-io -f $fmt -c 'write -P 0x33 1M 1M' "$tmpdir/v.$fmt" >/dev/null
  if [ -f "$(plugin_so $fmt)" ]; then
    bash "$ex/migrate.sh" "$tmpdir/v.$fmt" "qcow2:$tmpdir/v-$fmt.qcow2" ||
      fail "migrate.sh $fmt -> qcow2 failed"
    qemu-img compare -f $fmt -F qcow2 "$tmpdir/v.$fmt" "$tmpdir/v-$fmt.qcow2" >/dev/null ||
      fail "the qcow2 made from the $fmt image differs"
  else
    rc=0; err=$(bash "$ex/migrate.sh" "$tmpdir/v.$fmt" "qcow2:$tmpdir/v-$fmt.qcow2" 2>&1) || rc=$?
    [ $rc = 1 ] && grep -q 'qemu-img convert' <<<"$err" ||
      fail "migrate.sh without a $fmt plugin: status $rc, $err"
  fi
done
checked migrate.sh

# --- iotune-to-throttle.sh ------------------------------------------------------------------
echo "--- examples/iotune-to-throttle.sh"
bash "$ex/iotune-to-throttle.sh" "$ex/libvirt/rbd.xml" > "$tmpdir/limits" ||
  fail "iotune-to-throttle.sh failed"
for l in 'total_bytes_sec = 104857600' 'total_iops_sec = 2000' 'total_iops_sec_max = 4000' \
         'total_iops_sec_max_length = 10' 'size_iops_sec = 16384'; do
  grep -qx "$l" "$tmpdir/limits" || fail "iotune-to-throttle.sh: no line '$l'"
done
if bash "$ex/iotune-to-throttle.sh" "$ex/libvirt/qcow2.xml" >/dev/null 2>&1; then
  fail "iotune-to-throttle.sh found an <iotune> where there is none"
fi
# nbdkit must accept the file (a malformed one is an error at start-up).
nbdkit --filter=throttle -U "$run/limits.sock" -P "$run/limits.pid" \
  file "$tmpdir/r.raw" throttle-file="$tmpdir/limits"
nbdinfo --size "nbd+unix:///?socket=$run/limits.sock" >/dev/null
kill "$(cat "$run/limits.pid")"
docs_check_servers_gone "$run" iotune-to-throttle
checked iotune-to-throttle.sh

# --- lvm-exports.sh ------------------------------------------------------------------------
echo "--- examples/lvm-exports.sh"
out=$(PIDFILE=$run/lvm.pid bash "$ex/lvm-exports.sh" guestvg "$PV1" "$PV2") ||
  fail "lvm-exports.sh failed"
for lv in vm2 db1 vm5 mig; do
  grep -q "^export=\"$lv\":" <<<"$out" ||
    fail "lvm-exports.sh does not list LV $lv"
done
[ "$(nbdinfo --size "nbd://127.0.0.1:$NBD_PORT/mig")" = $((20 * 1024 * 1024)) ] ||
  fail "lvm-exports.sh: LV mig has the wrong size"
kill "$(cat "$run/lvm.pid")"
docs_check_servers_gone "$run" lvm-exports.sh
checked lvm-exports.sh

# --- throttled-rbd.sh -----------------------------------------------------------------------
echo "--- examples/throttled-rbd.sh"
bash "$ex/throttled-rbd.sh" rbd/vm4 "$run/rbd.sock" || fail "throttled-rbd.sh failed"
[ "$(nbdinfo --size "nbd+unix:///?socket=$run/rbd.sock")" = 16777216 ] ||
  fail "throttled-rbd.sh: wrong size"
grep -q "filters/throttle/nbdkit-throttle-filter.so.*plugins/rbd/nbdkit-rbd-plugin.so" "$DOCS_LOG" ||
  fail "throttled-rbd.sh did not use the throttle filter over the rbd plugin"
kill "$(cat "$run/rbd.sock.pid")"
docs_check_servers_gone "$run" throttled-rbd.sh
checked throttled-rbd.sh

# --- every file claimed ---------------------------------------------------------------------
missing=""
while read -r f; do
  [ -n "${done_[$f]:-}" ] || missing="$missing $f"
done < <(cd "$ex" && find . -type f | sed 's|^\./||' | sort)
[ -z "$missing" ] || fail "files in examples/ that no check exercises:$missing"
echo PASS
