/* SPDX-License-Identifier: BSD-3-Clause */
/* SCSI status and sense data -> errno, and human-readable descriptions. */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "session.h"

/* Additional sense codes (ASC << 8 | ASCQ) that libiscsi does not name. */
#define ASCQ_LUN_BECOMING_READY       0x0401
#define ASCQ_SPACE_ALLOC_FAILED_WP    0x2707  /* thin pool out of space */
#define ASCQ_WRITE_ERROR              0x0c00
#define ASCQ_UNRECOVERED_READ_ERROR   0x1100

bool
scsi_is_transient (int status, const struct scsi_sense *sense)
{
  switch (status) {
  case SCSI_STATUS_BUSY:
  case SCSI_STATUS_TASK_SET_FULL:
  case SCSI_STATUS_TASK_ABORTED:
    return true;
  case SCSI_STATUS_CHECK_CONDITION:
    switch (sense->key) {
    case SCSI_SENSE_UNIT_ATTENTION:   /* reset, capacity changed, ... */
    case SCSI_SENSE_COMMAND_ABORTED:
      return true;
    case SCSI_SENSE_NOT_READY:
      return sense->ascq == ASCQ_LUN_BECOMING_READY;
    default:
      return false;
    }
  default:
    return false;
  }
}

/* The target does not implement this command or one of its fields: the
 * caller may fall back to another command.
 */
bool
scsi_is_unsupported (int status, const struct scsi_sense *sense)
{
  return status == SCSI_STATUS_CHECK_CONDITION &&
    sense->key == SCSI_SENSE_ILLEGAL_REQUEST &&
    (sense->ascq == SCSI_SENSE_ASCQ_INVALID_OPERATION_CODE ||
     sense->ascq == SCSI_SENSE_ASCQ_INVALID_FIELD_IN_CDB);
}

int
scsi_errno (int status, const struct scsi_sense *sense)
{
  switch (status) {
  case SCSI_STATUS_GOOD:
  case SCSI_STATUS_CONDITION_MET:
    return 0;
  case SCSI_STATUS_CHECK_CONDITION:
    switch (sense->key) {
    case SCSI_SENSE_NO_SENSE:
    case SCSI_SENSE_RECOVERED_ERROR:  /* completed after recovery */
      return 0;
    case SCSI_SENSE_DATA_PROTECTION:
      if (sense->ascq == ASCQ_SPACE_ALLOC_FAILED_WP)
        return ENOSPC;
      return EPERM;
    case SCSI_SENSE_ILLEGAL_REQUEST:
      switch (sense->ascq) {
      case SCSI_SENSE_ASCQ_LBA_OUT_OF_RANGE:
        return ENOSPC;
      case SCSI_SENSE_ASCQ_INVALID_OPERATION_CODE:
        return ENOTSUP;
      default:
        return EINVAL;
      }
    case SCSI_SENSE_MEDIUM_ERROR:
    case SCSI_SENSE_HARDWARE_ERROR:
    default:
      return EIO;
    }
  case SCSI_STATUS_RESERVATION_CONFLICT:
    return EPERM;
  default:                      /* BUSY, TIMEOUT, CANCELLED, ERROR, ... */
    return EIO;
  }
}

static const char *
key_name (int key)
{
  static const char *const names[] = {
    "NO SENSE", "RECOVERED ERROR", "NOT READY", "MEDIUM ERROR",
    "HARDWARE ERROR", "ILLEGAL REQUEST", "UNIT ATTENTION", "DATA PROTECT",
    "BLANK CHECK", "VENDOR SPECIFIC", "COPY ABORTED", "ABORTED COMMAND",
    "(obsolete)", "VOLUME OVERFLOW", "MISCOMPARE",
  };
  if (key >= 0 && key < (int) (sizeof names / sizeof names[0]))
    return names[key];
  return "unknown";
}

void
scsi_describe (int status, const struct scsi_sense *sense,
               char *buf, size_t len)
{
  const char *what;

  switch (status) {
  case SCSI_STATUS_CHECK_CONDITION:
    {
      const char *asc = scsi_sense_ascq_str (sense->ascq);
      snprintf (buf, len, "CHECK CONDITION, sense key %s (0x%x), "
                "ASC/ASCQ 0x%02x/0x%02x%s%s",
                key_name (sense->key), (unsigned) sense->key,
                (unsigned) (sense->ascq >> 8) & 0xff,
                (unsigned) sense->ascq & 0xff,
                asc ? " " : "", asc ? asc : "");
    }
    return;
  case SCSI_STATUS_GOOD: what = "GOOD"; break;
  case SCSI_STATUS_BUSY: what = "BUSY"; break;
  case SCSI_STATUS_RESERVATION_CONFLICT: what = "RESERVATION CONFLICT"; break;
  case SCSI_STATUS_TASK_SET_FULL: what = "TASK SET FULL"; break;
  case SCSI_STATUS_TASK_ABORTED: what = "TASK ABORTED"; break;
  case SCSI_STATUS_CANCELLED: what = "cancelled (session lost)"; break;
  case SCSI_STATUS_TIMEOUT: what = "timed out"; break;
  case SCSI_STATUS_ERROR: what = "transport error"; break;
  default: what = NULL;
  }
  if (what)
    snprintf (buf, len, "%s", what);
  else
    snprintf (buf, len, "SCSI status 0x%x", (unsigned) status);
}
