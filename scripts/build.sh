#!/bin/bash
# SPDX-License-Identifier: BSD-3-Clause
# Configure and build.  scripts/build.sh [BUILD_DIR] [extra cmake args...]
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
build=${1:-$top/build}; shift || :
cmake -S "$top" -B "$build" -DREQUIRE_ALL=ON "$@"
cmake --build "$build" -j"$(nproc)"
