/* SPDX-License-Identifier: BSD-3-Clause */
/* nbdkit-snapshot-ctl SOCKET COMMAND [NAME]: the client of the snapshot
 * filter's control socket (control=SOCKET).  Sends one request line,
 * prints the reply's lines, exits 0 on "OK", 1 on "ERROR ..." (the
 * message on stderr), 2 on a usage or connection problem.
 */
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

static void
usage (FILE *f)
{
  fprintf (f,
           "usage: nbdkit-snapshot-ctl SOCKET COMMAND [NAME]\n"
           "commands:\n"
           "  create NAME   freeze the current state as snapshot NAME\n"
           "  revert NAME   drop everything written since NAME\n"
           "  delete NAME   forget snapshot NAME (its data merges up)\n"
           "  commit        write the chain into the plugin, drop snapshots\n"
           "  list          one line per snapshot: NAME TIME BYTES\n");
}

int
main (int argc, char *argv[])
{
  if (argc == 2 && (strcmp (argv[1], "--help") == 0 ||
                    strcmp (argv[1], "-h") == 0)) {
    usage (stdout);
    return 0;
  }
  if (argc < 3 || argc > 4) {
    usage (stderr);
    return 2;
  }
  const char *sock = argv[1], *cmd = argv[2], *name = argc == 4 ? argv[3] : NULL;
  /* The commands, and whether each takes a NAME. */
  bool named = strcmp (cmd, "create") == 0 || strcmp (cmd, "revert") == 0 ||
    strcmp (cmd, "delete") == 0;
  if (!named && strcmp (cmd, "commit") != 0 && strcmp (cmd, "list") != 0) {
    fprintf (stderr, "nbdkit-snapshot-ctl: unknown command '%s'\n", cmd);
    usage (stderr);
    return 2;
  }
  if (named != (name != NULL)) {
    fprintf (stderr, "nbdkit-snapshot-ctl: %s %s\n", cmd,
             named ? "needs a NAME" : "takes no NAME");
    return 2;
  }
  if (strchr (cmd, '\n') || strchr (cmd, ' ') ||
      (name && (strchr (name, '\n') || strchr (name, ' ')))) {
    fprintf (stderr, "nbdkit-snapshot-ctl: spaces and newlines are not "
             "allowed in a command or name\n");
    return 2;
  }
  struct sockaddr_un a = { .sun_family = AF_UNIX };
  if (strlen (sock) >= sizeof a.sun_path) {
    fprintf (stderr, "nbdkit-snapshot-ctl: %s: path too long\n", sock);
    return 2;
  }
  strcpy (a.sun_path, sock);
  int fd = socket (AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd == -1 || connect (fd, (struct sockaddr *) &a, sizeof a) == -1) {
    fprintf (stderr, "nbdkit-snapshot-ctl: %s: %s\n", sock, strerror (errno));
    return 2;
  }
  char req[512];
  int n = snprintf (req, sizeof req, "%s%s%s\n", cmd, name ? " " : "",
                    name ? name : "");
  if (n < 0 || (size_t) n >= sizeof req) {
    fprintf (stderr, "nbdkit-snapshot-ctl: request too long\n");
    return 2;
  }
  for (int off = 0; off < n; ) {
    ssize_t r = write (fd, req + off, n - off);
    if (r <= 0) {
      fprintf (stderr, "nbdkit-snapshot-ctl: %s: %s\n", sock,
               strerror (errno));
      return 2;
    }
    off += r;
  }
  shutdown (fd, SHUT_WR);
  FILE *f = fdopen (fd, "r");
  if (!f) {
    perror ("fdopen");
    return 2;
  }
  char *line = NULL;
  size_t cap = 0;
  ssize_t len;
  int status = -1;
  while ((len = getline (&line, &cap, f)) > 0) {
    if (line[len - 1] == '\n')
      line[--len] = '\0';
    if (strcmp (line, "OK") == 0) {
      status = 0;
      break;
    }
    if (strncmp (line, "ERROR", 5) == 0) {
      fprintf (stderr, "nbdkit-snapshot-ctl: %s%s%s: %s\n", cmd,
               name ? " " : "", name ? name : "",
               line[5] ? line + 6 : "failed");
      status = 1;
      break;
    }
    puts (line);
  }
  free (line);
  fclose (f);
  if (status == -1) {
    fprintf (stderr, "nbdkit-snapshot-ctl: the server closed the connection "
             "without an answer\n");
    return 2;
  }
  return status;
}
