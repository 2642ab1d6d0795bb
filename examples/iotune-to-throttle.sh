#!/bin/bash
# SPDX-License-Identifier: BSD-3-Clause
# Turn the <iotune> of a libvirt disk into a throttle file for nbdkit's
# throttle filter, so that nbdkit enforces the limits libvirt would have
# made QEMU enforce.
#
#   iotune-to-throttle.sh DOMAIN.xml [TARGET-DEV] > disk.limits
#   virsh dumpxml vm4 | iotune-to-throttle.sh /dev/stdin vda > disk.limits
#   nbdkit --filter=throttle rbd pool=rbd throttle-file=disk.limits
#
# TARGET-DEV (e.g. vda) picks the disk; by default the first disk with an
# <iotune>.  The throttle filter accepts libvirt's names as they are
# (total_bytes_sec, read_iops_sec_max, size_iops_sec, ...), so each
# element becomes one "name = value" line.  <group_name> becomes a
# comment: in nbdkit a group is chosen on the command line (group=NAME,
# export-group=EXPORT:NAME or group-by=export).
# Exit status 1 if the disk has no <iotune>.
set -euo pipefail
[ $# -ge 1 ] && [ $# -le 2 ] || { sed -n '6,8s/^# //p' "$0" >&2; exit 2; }

python3 - "$@" <<'PY'
import sys
import xml.etree.ElementTree as ET

KNOWN = {f"{kind}_{what}_sec{suffix}"
         for kind in ("total", "read", "write")
         for what in ("bytes", "iops")
         for suffix in ("", "_max", "_max_length")} | {"size_iops_sec"}

dom = ET.parse(sys.argv[1]).getroot()
want = sys.argv[2] if len(sys.argv) > 2 else None
for disk in dom.iter("disk"):
    target = disk.find("target")
    dev = target.get("dev") if target is not None else None
    iotune = disk.find("iotune")
    if iotune is None or (want and dev != want):
        continue
    print(f"# from <iotune> of disk {dev} in {sys.argv[1]}")
    for el in iotune:
        value = (el.text or "").strip()
        if el.tag in KNOWN:
            print(f"{el.tag} = {value}")
        elif el.tag == "group_name":
            print(f"# group_name {value}: start nbdkit with group={value} (every "
                  f"connection) or export-group=EXPORT:{value}")
        else:
            print(f"# {el.tag} = {value}: no equivalent in the throttle filter")
    sys.exit(0)
sys.exit(f"iotune-to-throttle.sh: no disk{' ' + want if want else ''} with <iotune> in {sys.argv[1]}")
PY
