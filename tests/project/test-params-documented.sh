#!/bin/bash
# SPDX-License-Identifier: BSD-3-Clause
# Each built plugin's and filter's man page and its parameters agree:
# - every parameter the PARAMETERS section names in bold is one nbdkit
#   passes to the module and the module accepts as a key: given with a
#   junk value, it is never reported as an unknown parameter (a filter's
#   unknown key would fall through to the null plugin, which says so);
# - every key the module's source compares a parameter name with is named
#   in that section (synonyms included);
# - its -D debug flags (the exported NAME_debug_FLAG variables) are the
#   ones its man page names as -D NAME.FLAG=;
# - a plugin's own --dump-plugin fields (NAME_...=) are the ones its DUMP
#   PLUGIN OUTPUT section names.
# A made-up key must be reported as unknown, so the first check can fail.
source "${TOP_SRCDIR:?run the tests through ctest, which sets TOP_SRCDIR}/tests/functions.sh"
requires nbdkit
requires python3 nm

pp="$TOP_SRCDIR/tests/project/pod-params.py"
work=$tmpdir/work
mkdir "$work" || fail "mkdir $work"
# Modules start for real when a junk value happens to be accepted (the
# filters over null): run them in a scratch directory, exiting at once.
cd "$work" || fail "cd $work"

# Run the module's command line (the array modcmd) with KEY=VALUE; print
# what nbdkit said.  (What counts is printed while the configuration is
# read, within a second; each exit that deadlocks under the sanitizer
# preload costs the whole guard, so it is short: nbdkit_fails.)
try_key () {
  nbdkit_fails 5 -U "$work/p.sock" --run true "${modcmd[@]}" "$1=$2" || :
}

n=0
for so in "$TOP_BUILDDIR"/plugins/*/nbdkit-*-plugin.so \
          "$TOP_BUILDDIR"/filters/*/nbdkit-*-filter.so; do
  [ -f "$so" ] || continue
  base=$(basename "$so" .so)                 # nbdkit-NAME-plugin
  dir=$(basename "$(dirname "$so")")
  kind=${base##*-}
  srcdir="$TOP_SRCDIR/${kind}s/$dir"
  pod="$srcdir/$base.pod"
  [ -f "$pod" ] || fail "$base: no man page source $pod"
  if [ "$kind" = plugin ]; then
    modcmd=("$so")
  else
    modcmd=(--filter="$so" null size=1M)
  fi

  out=$(try_key kvm-no-such-key 1)
  grep -qF "unknown parameter 'kvm-no-such-key'" <<<"$out" ||
    fail "$base: a made-up key was not reported as unknown: $out"

  keys=$(python3 "$pp" documented "$pod") || fail "$pod: $keys"
  [ -n "$keys" ] || fail "$pod: no parameter found in its PARAMETERS section"
  for key in $keys; do
    out=$(try_key "$key" kvm-junk)
    if grep -qF "unknown parameter '$key'" <<<"$out"; then
      fail "$base: its man page documents $key=, which it does not accept: $out"
    fi
  done

  # The module's own sources; its command-line tools (nbdkit-*-ctl.c,
  # nbdkit-*-check.c) take no nbdkit parameters.
  srcs=()
  for c in "$srcdir"/*.c; do
    case $(basename "$c") in nbdkit-*) continue ;; esac
    srcs+=("$c")
  done
  missing=$(python3 "$pp" undocumented "$pod" "${srcs[@]}") ||
    fail "$pod: $missing"
  [ -z "$missing" ] ||
    fail "$base: accepts keys its man page does not name:" $missing

  flags=$(nm -D --defined-only "$so" | awk '{ print $NF }' |
          sed -n 's/^\([a-z0-9]*\)_debug_\([a-z0-9_]*\)$/\1.\2/p' | sort -u)
  docflags=$(grep -oE -- '-D [a-z0-9_]+\.[a-z0-9_]+=' "$pod" |
             sed 's/^-D //; s/=$//' | sort -u || :)
  [ "$flags" = "$docflags" ] ||
    fail "$base: debug flags exported: [$(echo $flags)], in its man page: [$(echo $docflags)]"

  if [ "$kind" = plugin ]; then
    name=${base#nbdkit-}; name=${name%-plugin}
    dump=$(nbdkit "$so" --dump-plugin) || fail "$base: --dump-plugin failed"
    fields=$(sed -n "s/^\(${name}_[a-z0-9_]*\)=.*/\1/p" <<<"$dump" | sort -u)
    docfields=$(sed -n '/^=head1 DUMP PLUGIN OUTPUT/,/^=head1 /p' "$pod" |
                grep -oE "C<${name}_[a-z0-9_]+=" | sed 's/^C<//; s/=$//' |
                sort -u || :)
    [ "$fields" = "$docfields" ] ||
      fail "$base: --dump-plugin prints [$(echo $fields)], its man page's DUMP PLUGIN OUTPUT names [$(echo $docfields)]"
  fi

  echo "ok: $base ($(wc -w <<<"$keys") documented parameters," \
       "debug flags: $(echo ${flags:-none}))"
  n=$((n+1))
done
[ $n -gt 0 ] || fail "no plugin or filter was built"
