#!/usr/bin/env python3
# SPDX-License-Identifier: BSD-3-Clause
"""Extract the fenced blocks of a Markdown file for testing.

  extract-blocks.py FILE.md OUTDIR

Every fenced block must carry one of the known info strings below, so
that each kind is handled by the test and no block goes untested:

  ```sh recipe     a shell recipe, run as a script       -> NNN-recipe.sh
  ```sh recipe nfs a shell recipe that needs $NFS_URL      -> NNN-recipe-nfs.sh
                   (run by docs-guide-nfs, in a network namespace)
  ```xml domain    a complete libvirt domain             -> NNN-domain.xml
  ```xml disk      one libvirt <disk> element            -> NNN-disk.xml
  ```xml pool      a libvirt storage pool definition     -> NNN-pool.xml

Prints one line per block: "NNN KIND LINE PATH" (LINE: the line of the
opening fence in FILE).  Exits 1 on a block without a known info string,
an unterminated block, a fence that is not at the start of a line, or an
indented code block (which Markdown renders as code, but which could not
be told apart from prose for testing).
"""
import os
import re
import sys

KINDS = {
    ("sh", "recipe"): ("recipe", "sh"),
    ("sh", "recipe", "nfs"): ("recipe-nfs", "sh"),
    ("xml", "domain"): ("domain", "xml"),
    ("xml", "disk"): ("disk", "xml"),
    ("xml", "pool"): ("pool", "xml"),
}


def main():
    if len(sys.argv) != 3:
        sys.exit("usage: extract-blocks.py FILE.md OUTDIR")
    src, outdir = sys.argv[1:]
    os.makedirs(outdir, exist_ok=True)
    errors = []
    blocks = []
    cur = None          # (kind, ext, start line, lines)
    prev_blank = True
    with open(src, encoding="utf-8") as f:
        lines = f.read().split("\n")
    for n, line in enumerate(lines, 1):
        if cur is not None:
            if line.rstrip() == "```":
                blocks.append(cur)
                cur = None
            elif re.match(r"^\s*(```|~~~)", line):
                errors.append(f"{src}:{n}: fence inside the block opened at line {cur[2]}")
            else:
                cur[3].append(line)
            continue
        m = re.match(r"^(\s*)(```|~~~)(.*)$", line)
        if m:
            if m.group(1) or m.group(2) != "```":
                errors.append(f"{src}:{n}: fences must be ``` at the start of a line")
                continue
            info = tuple(m.group(3).split())
            if info not in KINDS:
                known = ", ".join("```" + " ".join(k) for k in KINDS)
                errors.append(f"{src}:{n}: block with info string '{m.group(3)}' "
                              f"is not a known kind ({known}): it would go untested")
                info = None
            cur = (*(KINDS[info] if info else ("unknown", "txt")), n, [])
            continue
        if prev_blank and re.match(r"^(    |\t)\S", line):
            errors.append(f"{src}:{n}: indented code block (use a tagged fence)")
        prev_blank = line.strip() == ""
    if cur is not None:
        errors.append(f"{src}:{cur[2]}: block is not terminated")
    for i, (kind, ext, start, body) in enumerate(blocks, 1):
        if kind == "unknown":
            continue
        path = os.path.join(outdir, f"{i:03d}-{kind}.{ext}")
        with open(path, "w", encoding="utf-8") as f:
            f.write("\n".join(body) + "\n")
        print(f"{i:03d} {kind} {start} {path}")
    if errors:
        for e in errors:
            print(e, file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
