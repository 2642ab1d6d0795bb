# SPDX-License-Identifier: BSD-3-Clause
# Start and stop a private tgtd (Linux SCSI target daemon) for tests and
# benchmarks.  Source this file (after tests/functions.sh in tests, so the
# daemon is also killed at exit through cleanup_add):
#
#   source "$TOP_SRCDIR/tests/iscsi/tgtd.sh"
#   tgtd_start                       # sets TGTD_PORT, TGTD_CTL, TGTD_PID
#   tgtd_cmd --op new --mode target --tid 1 -T iqn.2026-11.example:store
#   tgtd_cmd --op new --mode logicalunit --tid 1 --lun 1 -b "$file"
#   tgtd_cmd --op bind --mode target --tid 1 -I ALL
#   ...
#   tgtd_restart     # kill -9, start again on the same ports, replay config
#   tgtd_stop
#
# Every tgtd_cmd is recorded so tgtd_restart can rebuild the same
# configuration (tgtd keeps it only in memory).  Each instance uses its own
# TCP portal (a free port on 127.0.0.1) and its own control port (-C), so
# several instances coexist.  The daemon is stopped by PID, never by name.

TGTD_PORT=""
TGTD_CTL=""
TGTD_PID=""
TGTD_LOG=""
_tgtd_cmds=()

_tgtd_fail () {
  if declare -F fail >/dev/null; then fail "$@"; fi
  echo "tgtd.sh: $*" >&2
  return 1
}

_tgtd_free_port () {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# Is something accepting TCP connections on 127.0.0.1:$1?
_tgtd_listening () {
  python3 - "$1" <<'EOF' 2>/dev/null
import socket, sys
s = socket.socket()
s.settimeout(0.5)
try:
    s.connect(("127.0.0.1", int(sys.argv[1])))
except OSError:
    sys.exit(1)
EOF
}

# Start tgtd on $TGTD_PORT/$TGTD_CTL (chosen when empty).
_tgtd_launch () {
  local i
  TGTD_LOG=${TGTD_LOG:-$(mktemp "${tmpdir:-/tmp}/tgtd-log.XXXXXX")}
  # tgtd inherits our file descriptors: close everything above stderr so
  # that a pipe held by a caller (ctest, a harness) is not kept open.
  python3 - "$TGTD_CTL" "$TGTD_PORT" "$TGTD_LOG" <<'EOF' &
import os, sys
ctl, port, log = sys.argv[1:4]
fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
os.dup2(fd, 1); os.dup2(fd, 2)
os.closerange(3, 65536)
os.execvp("tgtd", ["tgtd", "-f", "-C", ctl, "--iscsi",
                   "portal=127.0.0.1:" + port])
EOF
  TGTD_PID=$!
  if declare -F kill_at_exit >/dev/null; then
    kill_at_exit "$TGTD_PID"
  elif declare -F cleanup_add >/dev/null; then
    cleanup_add "kill -9 $TGTD_PID"
  fi
  for (( i = 0; i < 100; i++ )); do
    if ! kill -0 "$TGTD_PID" 2>/dev/null; then
      return 1
    fi
    if tgtadm -C "$TGTD_CTL" --lld iscsi --op show --mode sys \
         >/dev/null 2>&1 && _tgtd_listening "$TGTD_PORT"; then
      return 0
    fi
    sleep 0.05
  done
  kill -9 "$TGTD_PID" 2>/dev/null || :
  return 1
}

# tgtd_start: start a new instance on free ports.
tgtd_start () {
  local attempt
  command -v tgtd >/dev/null && command -v tgtadm >/dev/null ||
    _tgtd_fail "tgtd/tgtadm not installed (package tgt)" || return 1
  _tgtd_cmds=()
  for (( attempt = 0; attempt < 10; attempt++ )); do
    TGTD_PORT=$(_tgtd_free_port)
    # Control ports map to /var/run/tgtd/socket.N (+ a lock file); pick
    # one that no other instance uses.
    TGTD_CTL=$(( 1000 + RANDOM % 31000 ))   # tgtd accepts <= 32767
    [ -e "/var/run/tgtd/socket.$TGTD_CTL.lock" ] && continue
    if _tgtd_launch; then
      return 0
    fi
  done
  _tgtd_fail "could not start tgtd (log: $TGTD_LOG: $(tail -3 "$TGTD_LOG" 2>/dev/null))"
}

# tgtd_cmd TGTADM-ARGS...: run tgtadm against our instance and record it.
tgtd_cmd () {
  _tgtd_cmds+=("$(printf '%q ' "$@")")
  tgtadm -C "$TGTD_CTL" --lld iscsi "$@" ||
    _tgtd_fail "tgtadm $* failed"
}

# tgtd_cmd_once TGTADM-ARGS...: run without recording (not replayed).
tgtd_cmd_once () {
  tgtadm -C "$TGTD_CTL" --lld iscsi "$@"
}

# tgtd_kill: SIGKILL the daemon and wait until it is gone.
tgtd_kill () {
  local i
  [ -n "$TGTD_PID" ] || return 0
  kill -9 "$TGTD_PID" 2>/dev/null || :
  for (( i = 0; i < 200; i++ )); do
    kill -0 "$TGTD_PID" 2>/dev/null || break
    sleep 0.05
  done
  wait "$TGTD_PID" 2>/dev/null || :
  TGTD_PID=""
}

# tgtd_revive: start again on the same ports and replay the configuration.
tgtd_revive () {
  local c i
  for (( i = 0; i < 50; i++ )); do
    _tgtd_launch && break
    sleep 0.1
  done
  [ -n "$TGTD_PID" ] && kill -0 "$TGTD_PID" 2>/dev/null ||
    _tgtd_fail "could not restart tgtd (log: $TGTD_LOG)" || return 1
  for c in "${_tgtd_cmds[@]}"; do
    eval "tgtadm -C \"\$TGTD_CTL\" --lld iscsi $c" ||
      _tgtd_fail "replaying tgtadm $c failed" || return 1
  done
}

tgtd_restart () {
  tgtd_kill
  tgtd_revive
}

tgtd_stop () {
  tgtd_kill
  [ -n "$TGTD_LOG" ] && rm -f "$TGTD_LOG"
  TGTD_LOG=""
}

# iSCSI URL of LUN $2 of target $1 (no credentials).
tgtd_url () { echo "iscsi://127.0.0.1:$TGTD_PORT/$1${2:+/$2}"; }
