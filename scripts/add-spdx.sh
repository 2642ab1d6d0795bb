#!/bin/bash
# SPDX-License-Identifier: BSD-3-Clause
#
# Put the project's SPDX licence line at the top of every source file that
# lacks it (idempotent: files that have it are left alone).
#   scripts/add-spdx.sh           add the line where it is missing
#   scripts/add-spdx.sh --check   only list the files without it; exit 1 if any
#                                 (ctest: project-spdx)
# Source files: *.c *.h *.in *.sh *.py *.pod *.cmake CMakeLists.txt, those
# tracked by git (every such file when the tree is not a git checkout),
# except fuzz corpora.  The line goes first, after a #! line (and a Python
# coding line) if there is one:
#   C:                  /* SPDX-License-Identifier: BSD-3-Clause */
#   shell/Python/CMake: # SPDX-License-Identifier: BSD-3-Clause
#   POD:                =for comment SPDX-License-Identifier: BSD-3-Clause
#                       (a paragraph pod2man ignores)
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"

id="SPDX-License-Identifier: BSD-3-Clause"
check=false
case "${1:-}" in
  --check) check=true ;;
  "") ;;
  *) echo "usage: $0 [--check]" >&2; exit 2 ;;
esac

list_files () {
  if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    git ls-files
  else
    find . -path ./.git -prune -o -path './build*' -prune -o -type f -print |
      sed 's|^\./||'
  fi
}

# style_of FILE: sets style to the comment syntax for FILE, or to nothing
# when it is not a source file.  (No subshell or external command per
# file: the tree has a thousand files, and forks are slow on a loaded
# machine.)
style_of () {
  style=
  case "$1" in
    */corpus/*) ;;
    *.c|*.h|*.h.in) style=c ;;
    *.sh|*.py|*.cmake|CMakeLists.txt|*/CMakeLists.txt) style=hash ;;
    *.pod) style=pod ;;
  esac
}

# has_id FILE: the SPDX line is in its first 5 lines.
has_id () {
  local line i
  for (( i = 0; i < 5; i++ )); do
    IFS= read -r line || [ -n "$line" ] || return 1
    [[ $line == *"$id"* ]] && return 0
  done < "$1"
  return 1
}

add_id () {
  local f=$1 style=$2 line skip=0 tmp
  case $style in
    c) line="/* $id */" ;;
    hash) line="# $id" ;;
    pod) line="=for comment $id"$'\n' ;;
  esac
  # Keep a #! line first, and a Python coding line right after it.
  if head -n 1 "$f" | grep -q '^#!'; then
    skip=1
    if sed -n 2p "$f" | grep -qE '^#.*coding[:=]'; then
      skip=2
    fi
  fi
  tmp=$(mktemp "$f.spdx.XXXXXX")
  {
    head -n "$skip" "$f"
    printf '%s\n' "$line"
    tail -n +"$((skip + 1))" "$f"
  } > "$tmp"
  chmod --reference="$f" "$tmp"
  mv "$tmp" "$f"
}

missing=0 added=0 checked=0
while IFS= read -r f; do
  [ -f "$f" ] && [ ! -L "$f" ] || continue
  style_of "$f"
  [ -n "$style" ] || continue
  checked=$((checked + 1))
  has_id "$f" && continue
  if $check; then
    echo "no SPDX line: $f"
    missing=$((missing + 1))
  else
    add_id "$f" "$style"
    echo "added: $f"
    added=$((added + 1))
  fi
done < <(list_files)

if $check; then
  echo "$checked source files checked, $missing without an SPDX line"
  [ $missing -eq 0 ]
else
  echo "$checked source files checked, SPDX line added to $added"
fi
