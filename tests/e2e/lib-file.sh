# SPDX-License-Identifier: BSD-3-Clause
# Helpers for the acceptance tests in this directory (sourced after
# tests/functions.sh and pattern.sh).  Not part of the harness interface.

# serve_file_tcp FILE: nbdkit's "file" plugin on a free 127.0.0.1 port;
# sets $tcp_port and $nbdkit_pid, stopped at exit.
serve_file_tcp () {
  local file=$1 pidfile i bgpid
  tcp_port=$(free_port)
  pidfile=$(mktemp -u "$tmpdir/nbdkit.XXXXXX.pid")
  nbdkit -f -i 127.0.0.1 -p "$tcp_port" -P "$pidfile" file "$file" &
  bgpid=$!
  kill_at_exit $bgpid
  for (( i=0; i<600; i++ )); do
    if [ -s "$pidfile" ] && nbdinfo --size "nbd://127.0.0.1:$tcp_port/" >/dev/null 2>&1; then
      nbdkit_pid=$(cat "$pidfile")
      return 0
    fi
    kill -0 $bgpid 2>/dev/null || fail "nbdkit exited during start-up (port $tcp_port)"
    sleep 0.05
  done
  fail "nbdkit did not start on port $tcp_port"
}

# guest_run RUNNER URI: tests/e2e/guest-run.sh, passing a skip through.
guest_run () {
  local rc=0
  bash "$TOP_SRCDIR/tests/e2e/guest-run.sh" "$1" "$2" || rc=$?
  [ $rc != 77 ] || exit 77
  [ $rc = 0 ] || fail "guest run ($1, $2) failed with status $rc"
}

# check_backing_file FILE ORIG: FILE holds the pattern and, elsewhere,
# exactly the bytes of ORIG (read from the backing file, not the export).
check_backing_file () {
  local file=$1 orig=$2 end=$((E2E_PATTERN_OFFSET + E2E_PATTERN_LENGTH))
  e2e_verify_backend_raw "$file" || fail "pattern not in the backing file $file"
  cmp -s -n "$E2E_PATTERN_OFFSET" "$file" "$orig" ||
    fail "backing file $file changed before the pattern region"
  cmp -s -i "$end:$end" "$file" "$orig" ||
    fail "backing file $file changed after the pattern region"
  [ "$(stat -c %s "$file")" = "$(stat -c %s "$orig")" ] ||
    fail "backing file $file changed size"
}

# file_test RUNNER tcp|unix [EXPORT]: a fresh 16 MiB random raw file served
# by nbdkit's "file" plugin, one guest run, then the backing-file checks.
file_test () {
  local runner=$1 form=$2 name=${3:-} disk=$tmpdir/$2.raw
  random_file "$disk" 16M
  cp "$disk" "$tmpdir/$form.orig"
  case $form in
    tcp)
      serve_file_tcp "$disk"
      guest_run "$runner" "nbd://127.0.0.1:$tcp_port/$name" ;;
    unix)
      start_nbdkit "$tmpdir/$form.sock" file "$disk"
      guest_run "$runner" "nbd+unix:///$name?socket=$tmpdir/$form.sock" ;;
  esac
  stop_nbdkit
  check_backing_file "$disk" "$tmpdir/$form.orig"
}
