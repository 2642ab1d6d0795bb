#!/usr/bin/env python3
# SPDX-License-Identifier: BSD-3-Clause
"""Make a libvirt domain of the e2e harness out of a user's domain XML.

  merge-domain.py USER.xml HARNESS.xml OUT.xml

Used by guest-run.sh when KVM_E2E_DOMAIN_XML names a domain (for example
one of examples/libvirt/*.xml): the guest then boots with that domain's
first NBD disk as written -- its <driver> (cache, io, discard,
detect_zeroes, ...), <target>, <iotune> and everything else in the
<disk> element -- with only the NBD server (<host>) and export name taken
from the harness's own domain (HARNESS.xml, which guest-run.sh generated
for the URI under test).  From the harness's domain come as well: the
name, type, memory, CPU, <features>, <os> (the e2e kernel and initramfs),
lifecycle actions, the serial console and the absence of other disks,
network interfaces, consoles and graphics.  The user's <metadata> is
kept.  Fails if USER.xml has no NBD <disk>, or a TLS one.
"""
import copy
import sys
import xml.etree.ElementTree as ET


def nbd_disk(devices):
    for d in devices.findall("disk"):
        src = d.find("source")
        if d.get("type") == "network" and src is not None and src.get("protocol") == "nbd":
            return d
    return None


def main():
    if len(sys.argv) != 4:
        sys.exit("usage: merge-domain.py USER.xml HARNESS.xml OUT.xml")
    user = ET.parse(sys.argv[1]).getroot()
    harness = ET.parse(sys.argv[2]).getroot()
    udev = user.find("devices")
    hdev = harness.find("devices")
    disk = nbd_disk(udev) if udev is not None else None
    if disk is None:
        sys.exit(f"{sys.argv[1]}: no <disk type='network'> with protocol='nbd'")
    hdisk = nbd_disk(hdev)
    disk = copy.deepcopy(disk)
    # Server and export from the harness; everything else from the user.
    src, hsrc = disk.find("source"), hdisk.find("source")
    for h in src.findall("host"):
        src.remove(h)
    for h in hsrc.findall("host"):
        src.append(copy.deepcopy(h))
    src.set("name", hsrc.get("name", ""))
    if src.get("tls") == "yes":
        sys.exit(f"{sys.argv[1]}: a TLS disk cannot be booted by the harness")
    # The harness boots from its kernel: no <boot order=...> on the disk.
    for b in disk.findall("boot"):
        disk.remove(b)

    out = copy.deepcopy(harness)
    u = user.find("metadata")
    if u is not None:
        out.insert(2, copy.deepcopy(u))
    odev = out.find("devices")
    odev.remove(nbd_disk(odev))
    odev.insert(0, disk)
    ET.ElementTree(out).write(sys.argv[3], encoding="unicode")
    kept = [c.tag for c in disk]
    print(f"merge-domain: disk from {sys.argv[1]} (kept: {', '.join(kept)}; "
          f"driver {disk.find('driver').attrib if disk.find('driver') is not None else {}})")


if __name__ == "__main__":
    main()
