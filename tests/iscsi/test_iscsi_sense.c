/* SPDX-License-Identifier: BSD-3-Clause */
/* SCSI status and sense data -> errno, as nbdkit-iscsi-plugin(1)
 * documents it: the client sees EIO for media and hardware faults, EPERM
 * for write protection and reservations, ENOSPC for a full thin pool and
 * for LBAs past the end, ENOTSUP for unknown commands; transient
 * conditions are retried, not reported.
 */
#include <errno.h>
#include <string.h>

#include "check.h"
#include "session.h"

static struct scsi_sense
sense (int key, int asc, int ascq)
{
  struct scsi_sense s;

  memset (&s, 0, sizeof s);
  s.key = key;
  s.ascq = (asc << 8) | ascq;
  return s;
}

static int
check_condition (int key, int asc, int ascq)
{
  struct scsi_sense s = sense (key, asc, ascq);
  return scsi_errno (SCSI_STATUS_CHECK_CONDITION, &s);
}

int
main (void)
{
  struct scsi_sense none = sense (0, 0, 0), s;
  char buf[256];

  /* Success and recovered errors carry good data. */
  CHECK (scsi_errno (SCSI_STATUS_GOOD, &none) == 0);
  CHECK (check_condition (SCSI_SENSE_RECOVERED_ERROR, 0x17, 0x01) == 0);

  /* Media and hardware. */
  CHECK (check_condition (SCSI_SENSE_MEDIUM_ERROR, 0x11, 0x00) == EIO);
  CHECK (check_condition (SCSI_SENSE_MEDIUM_ERROR, 0x0c, 0x00) == EIO);
  CHECK (check_condition (SCSI_SENSE_HARDWARE_ERROR, 0x44, 0x00) == EIO);

  /* Write protection, reservations, thin pool out of space. */
  CHECK (check_condition (SCSI_SENSE_DATA_PROTECTION, 0x27, 0x00) == EPERM);
  CHECK (scsi_errno (SCSI_STATUS_RESERVATION_CONFLICT, &none) == EPERM);
  CHECK (check_condition (SCSI_SENSE_DATA_PROTECTION, 0x27, 0x07) == ENOSPC);
  CHECK (check_condition (SCSI_SENSE_ILLEGAL_REQUEST, 0x21, 0x00) == ENOSPC);

  /* Unsupported commands and fields: callers may fall back. */
  CHECK (check_condition (SCSI_SENSE_ILLEGAL_REQUEST, 0x20, 0x00) == ENOTSUP);
  s = sense (SCSI_SENSE_ILLEGAL_REQUEST, 0x20, 0x00);
  CHECK (scsi_is_unsupported (SCSI_STATUS_CHECK_CONDITION, &s));
  s = sense (SCSI_SENSE_ILLEGAL_REQUEST, 0x24, 0x00);
  CHECK (scsi_is_unsupported (SCSI_STATUS_CHECK_CONDITION, &s));
  CHECK (check_condition (SCSI_SENSE_ILLEGAL_REQUEST, 0x24, 0x00) == EINVAL);
  s = sense (SCSI_SENSE_MEDIUM_ERROR, 0x11, 0x00);
  CHECK (!scsi_is_unsupported (SCSI_STATUS_CHECK_CONDITION, &s));

  /* Transient: retried.  Permanent: not. */
  CHECK (scsi_is_transient (SCSI_STATUS_BUSY, &none));
  CHECK (scsi_is_transient (SCSI_STATUS_TASK_SET_FULL, &none));
  s = sense (SCSI_SENSE_UNIT_ATTENTION, 0x29, 0x00);
  CHECK (scsi_is_transient (SCSI_STATUS_CHECK_CONDITION, &s));
  s = sense (SCSI_SENSE_NOT_READY, 0x04, 0x01);
  CHECK (scsi_is_transient (SCSI_STATUS_CHECK_CONDITION, &s));
  s = sense (SCSI_SENSE_NOT_READY, 0x3a, 0x00);     /* medium not present */
  CHECK (!scsi_is_transient (SCSI_STATUS_CHECK_CONDITION, &s));
  CHECK (check_condition (SCSI_SENSE_NOT_READY, 0x3a, 0x00) == EIO);
  s = sense (SCSI_SENSE_MEDIUM_ERROR, 0x11, 0x00);
  CHECK (!scsi_is_transient (SCSI_STATUS_CHECK_CONDITION, &s));

  /* Transport failures are I/O errors. */
  CHECK (scsi_errno (SCSI_STATUS_TIMEOUT, &none) == EIO);
  CHECK (scsi_errno (SCSI_STATUS_CANCELLED, &none) == EIO);
  CHECK (scsi_errno (SCSI_STATUS_ERROR, &none) == EIO);

  /* Messages name the sense key and the codes. */
  s = sense (SCSI_SENSE_DATA_PROTECTION, 0x27, 0x00);
  scsi_describe (SCSI_STATUS_CHECK_CONDITION, &s, buf, sizeof buf);
  CHECK (strstr (buf, "DATA PROTECT") != NULL);
  CHECK (strstr (buf, "0x27/0x00") != NULL);
  scsi_describe (SCSI_STATUS_TIMEOUT, &none, buf, sizeof buf);
  CHECK (strstr (buf, "timed out") != NULL);
  s = sense (99, 0, 0);
  scsi_describe (SCSI_STATUS_CHECK_CONDITION, &s, buf, sizeof buf);
  CHECK (strstr (buf, "unknown") != NULL);

  printf ("ok\n");
  return 0;
}
