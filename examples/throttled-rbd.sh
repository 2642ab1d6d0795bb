#!/bin/bash
# SPDX-License-Identifier: BSD-3-Clause
# A Ceph RBD image limited the way libvirt's
#   <iotune><total_bytes_sec>104857600</total_bytes_sec>
#           <total_iops_sec>2000</total_iops_sec></iotune>
# would limit it, but for any NBD client.
set -euo pipefail
nbdkit -i 127.0.0.1 -p 10809 --filter=throttle \
  rbd pool=rbd image=vm1 conf=/etc/ceph/ceph.conf \
  bps-total=100M iops-total=2000
