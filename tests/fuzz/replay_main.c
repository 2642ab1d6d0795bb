/* SPDX-License-Identifier: BSD-3-Clause */
/* Replays fuzz corpus files through a target's LLVMFuzzerTestOneInput, so
 * every saved input (seeds and crashes found earlier) is a regression test.
 * Arguments are files or directories (one level).
 */
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>

int LLVMFuzzerTestOneInput (const uint8_t *data, size_t size);

static int
replay_file (const char *path)
{
  FILE *fp = fopen (path, "rb");
  if (!fp) {
    perror (path);
    return -1;
  }
  fseek (fp, 0, SEEK_END);
  long n = ftell (fp);
  rewind (fp);
  uint8_t *buf = malloc (n > 0 ? n : 1);
  if (!buf || fread (buf, 1, n, fp) != (size_t) n) {
    perror (path);
    fclose (fp);
    free (buf);
    return -1;
  }
  fclose (fp);
  LLVMFuzzerTestOneInput (buf, n);
  free (buf);
  return 0;
}

int
main (int argc, char *argv[])
{
  unsigned count = 0;
  for (int i = 1; i < argc; i++) {
    struct stat st;
    if (stat (argv[i], &st) == -1) {
      perror (argv[i]);
      return 1;
    }
    if (!S_ISDIR (st.st_mode)) {
      if (replay_file (argv[i]) == -1)
        return 1;
      count++;
      continue;
    }
    DIR *d = opendir (argv[i]);
    struct dirent *de;
    while (d && (de = readdir (d))) {
      char path[4096];
      if (de->d_name[0] == '.')
        continue;
      snprintf (path, sizeof path, "%s/%s", argv[i], de->d_name);
      if (replay_file (path) == -1)
        return 1;
      count++;
    }
    if (d)
      closedir (d);
  }
  printf ("replayed %u inputs\n", count);
  /* A corpus that is missing or empty tests nothing. */
  return count > 0 ? 0 : 1;
}
