#!/usr/bin/env python3
# SPDX-License-Identifier: BSD-3-Clause
"""Parameters of a plugin's or filter's man page and of its source.

pod-params.py documented POD
    The parameters the PARAMETERS section names in bold (B<KEY=>), one
    per line.
    Items of a list nested under an item that names a URL's OPTIONS are
    the options inside the URL, not nbdkit parameters, and are left out.
pod-params.py undocumented POD SOURCE.c...
    The keys the sources compare a parameter name with (strcmp (key, "X"))
    that the PARAMETERS section never names as X= or C<X>, one per line.
"""
import re
import sys


def parameters_section(pod):
    lines, inside = [], False
    for line in open(pod, encoding="utf-8"):
        if line.startswith("=head1 "):
            inside = line.strip() == "=head1 PARAMETERS"
            continue
        if inside:
            lines.append(line)
    if not lines:
        sys.exit(f"{pod}: no PARAMETERS section")
    return lines


def documented(pod):
    keys, depth = [], 0
    url_options_at = None   # depth of a list of URL options being read
    names_options = False   # the last item names a URL's OPTIONS
    for line in parameters_section(pod):
        if line.startswith("=over"):
            depth += 1
            if names_options and url_options_at is None:
                url_options_at = depth
            continue
        if line.startswith("=back"):
            if depth == url_options_at:
                url_options_at = None
            depth -= 1
            continue
        if line.startswith("=item"):
            # A list right under an item that names a URL's OPTIONS holds
            # the options inside the URL (nfs://...?uid=N), not parameters.
            names_options = "OPTIONS" in line
        if url_options_at is not None and depth >= url_options_at:
            continue
        # Items, and parameters named in bold in their text (creation
        # options described together, for instance).
        for k in re.findall(r"B<([a-z][a-z0-9_.-]*)=", line):
            if k not in keys:
                keys.append(k)
    return keys


def undocumented(pod, sources):
    text = "".join(parameters_section(pod))
    missing = []
    for src in sources:
        code = open(src, encoding="utf-8").read()
        for k in re.findall(r'strcmp \((?:key|k), "([^"]+)"\)', code):
            named = re.search(r"(?<![\w.-])" + re.escape(k) + r"(?==|>)", text)
            if not named and k not in missing:
                missing.append(k)
    return missing


if __name__ == "__main__":
    if len(sys.argv) >= 3 and sys.argv[1] == "documented":
        print("\n".join(documented(sys.argv[2])))
    elif len(sys.argv) >= 4 and sys.argv[1] == "undocumented":
        print("\n".join(undocumented(sys.argv[2], sys.argv[3:])))
    else:
        sys.exit(__doc__)
