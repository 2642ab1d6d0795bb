#!/bin/bash
# SPDX-License-Identifier: BSD-3-Clause
# Export every logical volume of VG "vg0" found on two disk image files
# (or block devices), with no device-mapper and no activation.
set -euo pipefail
nbdkit -i 127.0.0.1 -p 10809 lvm pv=disk1.img pv=disk2.img vg=vg0
nbdinfo --list nbd://127.0.0.1:10809
