# SPDX-License-Identifier: BSD-3-Clause
# Shared helpers for the shell tests.  Source it first:
#   source "${TOP_SRCDIR:?run the tests through ctest, which sets TOP_SRCDIR}/tests/functions.sh"
# ctest sets TOP_SRCDIR, TOP_BUILDDIR and KVM_SANITIZE (see
# cmake/NbdkitModules.cmake); running a test by hand works too from the
# source tree with the default build directory "build".

set -euo pipefail

: "${TOP_SRCDIR:=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}"
: "${TOP_BUILDDIR:=$TOP_SRCDIR/build}"
: "${KVM_SANITIZE:=0}"
export TOP_SRCDIR TOP_BUILDDIR

# --- cleanup ----------------------------------------------------------------
_cleanup_cmds=()
# cleanup_add CMD...: run at exit, last added first.
cleanup_add () { _cleanup_cmds+=("$*"); }
_run_cleanup () {
  local rc=$? i
  for (( i=${#_cleanup_cmds[@]}-1; i>=0; i-- )); do
    eval "${_cleanup_cmds[$i]}" >/dev/null 2>&1 || :
  done
  exit $rc
}
trap _run_cleanup EXIT

# kill_at_exit PID [SIGNAL]: at exit, send SIGNAL (default KILL) to PID if
# it is still the process it is now.  Never cleanup_add "kill -9 $pid":
# when tests run in parallel, the PIDs of processes that ended long ago
# come back as other tests' processes (pid_max is 32768 here: PIDs went
# round in about 15 minutes on the loaded machine), and a blind kill at
# exit takes down another test's server.
_start_time () {
  local s
  s=$(cat "/proc/$1/stat" 2>/dev/null) || return 0
  s=${s##*) }
  set -- $s
  echo "${20}"
}
_kill_same () {
  if [ -n "$2" ] && [ "$(_start_time "$1")" = "$2" ]; then kill "-$3" "$1"; fi
}
kill_at_exit () {
  cleanup_add "_kill_same $1 '$(_start_time "$1")' ${2:-KILL}"
}

# A fresh temporary directory, removed at exit.  Short path: unix socket
# paths are limited to 108 bytes.
tmpdir=$(mktemp -d /tmp/kvmt.XXXXXX)
chmod 0755 "$tmpdir"
cleanup_add "rm -rf '$tmpdir'"

# new_sock: sets $sock to a fresh unix socket path in $tmpdir (nbdkit
# 1.32 leaves its socket behind, and start_nbdkit waits for it to appear).
_sockn=0
new_sock () { _sockn=$((_sockn + 1)); sock="$tmpdir/sock$_sockn"; }

# python3 is the system's (/usr/bin/python3, the one with python3-libnbd)
# even when a version manager's shim comes first on PATH: a pyenv shim is
# a shell script that costs about a second per call on a loaded 2-core
# machine (3.6 s against 0.5 s measured), and the tests call python3
# hundreds of times.  The scripts need only the standard library (and nbd).
if [ -x /usr/bin/python3 ] && [ "$(command -v python3)" != /usr/bin/python3 ]; then
  mkdir "$tmpdir/.python"
  ln -s /usr/bin/python3 "$tmpdir/.python/python3"
  PATH="$tmpdir/.python:$PATH"
fi

# --- skipping ---------------------------------------------------------------
# skip REASON: exit 77 (ctest counts it as skipped).  In CI (CI=true) a
# missing dependency is a failure, never a skip.
skip () {
  if [ "${CI:-}" = true ]; then
    echo "FAIL (would skip, but CI=true): $*" >&2
    exit 1
  fi
  echo "SKIP: $*" >&2
  exit 77
}

# requires CMD...: every command must be on PATH.
requires () {
  local c
  for c in "$@"; do
    command -v "$c" >/dev/null 2>&1 || skip "$c not installed"
  done
}

requires_root () { [ "$(id -u)" = 0 ] || skip "needs root"; }

fail () { echo "FAIL: $*" >&2; exit 1; }

# requires_nbdsh: define nbdsh to run under the system python3 (which has
# the libnbd bindings) even when another python3 comes first on PATH, and
# check that it works.  (A bare "timeout nbdsh" bypasses the function:
# give it PATH="/usr/bin:$PATH" itself.)
requires_nbdsh () {
  requires nbdsh
  nbdsh () { PATH="/usr/bin:$PATH" command nbdsh "$@"; }
  nbdsh -c 'pass' 2>/dev/null ||
    skip "nbdsh cannot import the nbd module (python3-libnbd)"
}

# --- our modules -----------------------------------------------------------
# check_fast_zero NAME URI: tests/fast-zero.py (a fast zero sent whether
# advertised or not: nbdkit 1.32 aborts on one a layer did not advertise)
# must find it advertised and answered (done or ENOTSUP), the server alive.
check_fast_zero () {
  local out
  out=$(/usr/bin/python3 "$TOP_SRCDIR/tests/fast-zero.py" "$2" 2>&1) ||
    fail "$1: fast zero: $out"
  grep -q "advertised True" <<<"$out" || fail "$1: fast zero not advertised: $out"
  echo "ok: $1: fast zero $(sed -n 's/^result //p' <<<"$out")"
}

plugin_so () { echo "$TOP_BUILDDIR/plugins/$1/nbdkit-$1-plugin.so"; }
filter_so () { echo "$TOP_BUILDDIR/filters/$1/nbdkit-$1-filter.so"; }

requires_plugin () {
  [ -f "$(plugin_so "$1")" ] || skip "plugin $1 was not built"
}
requires_filter () {
  [ -f "$(filter_so "$1")" ] || skip "filter $1 was not built"
}

# Under the sanitizer build, nbdkit (not instrumented) must preload the
# runtimes so that our instrumented plugins can load.
if [ "$KVM_SANITIZE" = 1 ]; then
  _cc=${KVM_CC:-cc}
  _rt=""
  for _lib in libasan.so libubsan.so; do
    _p=$("$_cc" -print-file-name=$_lib)
    [ -f "$_p" ] && _rt="$_rt${_rt:+:}$_p"
  done
  export KVM_SANITIZER_PRELOAD="$_rt"
  # nbdkit itself is not built for leak checking; our unit tests are.
  export ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:${ASAN_OPTIONS:-}"
  export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:${UBSAN_OPTIONS:-}"
elif [ "$KVM_SANITIZE" = thread ]; then
  # ThreadSanitizer build (-DSANITIZE=thread): the first race report stops
  # nbdkit (the client then fails the test).  The suppressions cover only
  # code proven to be outside this project (see the file).
  _p=$("${KVM_CC:-cc}" -print-file-name=libtsan.so)
  [ -f "$_p" ] || fail "SANITIZE=thread build but no libtsan.so for ${KVM_CC:-cc}"
  export KVM_SANITIZER_PRELOAD="$_p"
  export TSAN_OPTIONS="halt_on_error=1:abort_on_error=1:second_deadlock_stack=1:suppressions=$TOP_SRCDIR/tests/tsan.supp:${TSAN_OPTIONS:-}"
fi

# nbdkit ARGS...: nbdkit with the sanitizer runtimes when needed.
nbdkit () {
  if [ -n "${KVM_SANITIZER_PRELOAD:-}" ]; then
    LD_PRELOAD="$KVM_SANITIZER_PRELOAD${LD_PRELOAD:+:$LD_PRELOAD}" \
      command nbdkit "$@"
  else
    command nbdkit "$@"
  fi
}

# nbdkit_fails SECONDS ARGS...: nbdkit that is expected to stop at a
# configuration or start-up error; prints what it said, returns its
# status.  Under the sanitizer preload nbdkit 1.32 often deadlocks in
# libp11-kit's destructor when it exits after such an error
# (docs/fuzzing.md): SECONDS (enough to print the error) bound that, and
# the status is then 137.
nbdkit_fails () {
  local secs=$1; shift
  timeout -s KILL "$secs" \
    env ${KVM_SANITIZER_PRELOAD:+LD_PRELOAD="$KVM_SANITIZER_PRELOAD"} \
    nbdkit "$@" </dev/null 2>&1
}

# nbdkit_stops SECONDS ARGS...: nbdkit_fails for a start-up that must
# fail: the test fails if nbdkit served (status 0) or died of a signal
# (other than the KILL that ends the exit deadlock under the sanitizer
# preload).  Prints what nbdkit said.
nbdkit_stops () {
  local out rc=0
  out=$(nbdkit_fails "$@") || rc=$?
  printf '%s\n' "$out"
  [ $rc != 0 ] || fail "nbdkit started: ${*:2}"
  if (( rc >= 128 )) &&
     ! { [ $rc = 137 ] && [ -n "${KVM_SANITIZER_PRELOAD:-}" ]; }; then
    fail "nbdkit died of signal $((rc - 128)) at start-up: ${*:2}: $out"
  fi
  return 0
}

# start_nbdkit SOCKET ARGS...: run nbdkit in the background on a unix
# socket, wait until it serves, stop it (by PID) at exit.  Sets $nbdkit_pid.
declare -A _nbdkit_job=()       # server PID -> its background job's PID
start_nbdkit () {
  local sock=$1; shift
  local pidfile="$sock.pid" i
  rm -f "$pidfile"
  nbdkit -f -U "$sock" -P "$pidfile" "$@" &
  local bgpid=$!
  # $! is the subshell running the nbdkit () function: kill the server
  # itself (from its PID file) too, or a failed test leaves it running;
  # only if it is still the server on this socket (see kill_at_exit).
  kill_at_exit $bgpid
  cleanup_add "_kill_server '$pidfile' '$sock'"
  for (( i=0; i<600; i++ )); do
    if [ -s "$pidfile" ] && [ -S "$sock" ]; then
      nbdkit_pid=$(cat "$pidfile")
      _nbdkit_job[$nbdkit_pid]=$bgpid
      return 0
    fi
    kill -0 $bgpid 2>/dev/null || fail "nbdkit exited during start-up: $*"
    sleep 0.05
  done
  fail "nbdkit did not start: $*"
}

# _kill_server PIDFILE SOCKET: SIGKILL the nbdkit of PIDFILE if its
# command line still names SOCKET.
_kill_server () {
  local pid
  pid=$(cat "$1" 2>/dev/null) || return 0
  if tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null | grep -qF -- " $2 "; then
    kill -9 "$pid"
  fi
}

# stop_nbdkit [PID]: SIGTERM and wait.  A server started by start_nbdkit
# in this shell must then exit with status 0 (or have been killed with
# SIGKILL by the test): a crash, an abort or a sanitizer report, at
# shutdown or before it, fails the test.  One that is still there after
# 10 s is killed and fails the test, except under the sanitizer preload
# (there nbdkit 1.32's exit can deadlock in libp11-kit's destructor:
# docs/fuzzing.md), where it is killed with a message.  Tests that make clients hang up with replies queued
# set KVM_NBDKIT_ABORT_OK=1: there nbdkit 1.32.5 may abort in its own
# socket code while it shuts down (README "Known limits"), so SIGABRT is
# reported but not failed; they check the server's deaths themselves.
# wait_gone PID: wait up to 10 s for PID to exit; 1 if it is still there.
wait_gone () {
  local i
  for (( i=0; i<200; i++ )); do
    kill -0 "$1" 2>/dev/null || return 0
    sleep 0.05
  done
  ! kill -0 "$1" 2>/dev/null
}

stop_nbdkit () {
  local pid=${1:-$nbdkit_pid} job st=0
  [ -n "$pid" ] || return 0
  job=${_nbdkit_job[$pid]:-}
  unset "_nbdkit_job[$pid]"
  # Already gone: its exit status is checked all the same (a crash after
  # the last client left must fail the test too).
  if kill "$pid" 2>/dev/null; then
    if ! wait_gone "$pid"; then
      kill -9 "$pid" 2>/dev/null || :
      # Only the sanitizer preload has a known hang at exit (above).
      [ -n "${KVM_SANITIZER_PRELOAD:-}" ] ||
        fail "nbdkit $pid did not exit within 10 s of SIGTERM (killed)"
      echo "stop_nbdkit: nbdkit $pid did not exit within 10 s of SIGTERM; killed" >&2
      return 0
    fi
  fi
  # 127: not a child of this shell (started from a subshell).
  [ -n "$job" ] || return 0
  wait "$job" 2>/dev/null || st=$?
  case $st in
    # 137: killed (kill -9) by the test itself, as crash tests do.
    0|127|137) ;;
    134) if [ "${KVM_NBDKIT_ABORT_OK:-}" = 1 ]; then
           echo "stop_nbdkit: nbdkit $pid aborted at shutdown (KVM_NBDKIT_ABORT_OK: nbdkit 1.32.5's known abort after client hang-ups)" >&2
         else
           fail "nbdkit (pid $pid) exited with status $st after SIGTERM: a crash or a sanitizer report at shutdown (see its output above)"
         fi ;;
    *) fail "nbdkit (pid $pid) exited with status $st after SIGTERM: a crash or a sanitizer report at shutdown (see its output above)" ;;
  esac
}

uri_of () { echo "nbd+unix:///${2:-}?socket=$1"; }

# --- images -----------------------------------------------------------------
# random_file FILE SIZE: SIZE bytes of random data (SIZE accepts dd suffixes
# via head -c: K, M).
random_file () { head -c "$2" /dev/urandom > "$1"; }

# assert_same FILE1 FILE2 [WHAT]
assert_same () {
  cmp "$1" "$2" >/dev/null || fail "${3:-content} differs: $1 vs $2 ($(cmp "$1" "$2" 2>&1 | head -1))"
}

# qemu_img_check IMAGE: qemu-img check must find no errors and no leaks.
qemu_img_check () {
  local out
  out=$(qemu-img check -U "$@" 2>&1) || fail "qemu-img check $*: $out"
  if grep -qiE 'leak|error|corrupt' <<<"$out" && ! grep -q 'No errors were found' <<<"$out"; then
    fail "qemu-img check $*: $out"
  fi
}

# export_to_file URI FILE: copy a whole export to a local raw file.
export_to_file () { nbdcopy -- "$1" "$2"; }

# free_port: an unused TCP port on 127.0.0.1.
free_port () {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
