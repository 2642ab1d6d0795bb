# Shared set-up for the iscsi plugin tests: source after tests/functions.sh.
source "$TOP_SRCDIR/tests/iscsi/tgtd.sh"

requires_plugin iscsi
requires tgtd tgtadm nbdcopy nbdinfo nbdsh python3 cmp

IQN=iqn.2026-11.example:store

# nbdsh is a python3 script: use the system interpreter (which has the
# nbd module) even when another python3 comes first in $PATH.
nbdsh () {
  if python3 -c 'import nbd' 2>/dev/null; then
    command nbdsh "$@"
  else
    PATH="/usr/bin:$PATH" command nbdsh "$@"
  fi
}
nbdsh -c 'pass' 2>/dev/null || skip "nbdsh cannot import the nbd module (python3-libnbd)"
