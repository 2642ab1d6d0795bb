#!/usr/bin/env python3
# SPDX-License-Identifier: BSD-3-Clause
# A small iSCSI target (RFC 7143, no authentication, no digests) whose
# answers can be made hostile, to test what the iscsi plugin does with
# values it must not trust: capacities, block sizes, VPD limits, short or
# long data, LBA status descriptors, LUN lists.  tgtd cannot be made to
# send any of these.
#
# Usage: fake-target.py PORTFILE PROFILE
#   Listens on 127.0.0.1 (a free port, written to PORTFILE), serves every
#   login as LUN 0 of any target name until killed.  PROFILE selects what
#   is wrong with the LUN (see PROFILES below); "good" is a plain 4 MiB
#   disk of 512-byte blocks whose byte at offset o is (o // 512 + o) & 255.
#
# Only what the plugin and libiscsi send is implemented: login, NOP-Out,
# logout, SCSI commands (with immediate and unsolicited data for writes,
# no R2T), task management answered "function complete".

import os
import socket
import socketserver
import struct
import sys
import threading
import traceback

BLOCK = 512
DEBUG = bool(os.environ.get("FAKE_TARGET_DEBUG"))
SIZE = 4 << 20

# Each profile overrides some of these.
DEFAULTS = dict(
    block_len=BLOCK,            # READ CAPACITY block length
    last_lba=SIZE // BLOCK - 1,
    lbpme=False,                # thin provisioned: GET LBA STATUS is used
    device_type=0,              # 0 = direct access block device
    vpd_pages=[0x00, 0xb0],
    block_limits={},            # VPD B0 fields to override
    read_data="exact",          # exact | short-flagged | short-silent | long | drop
    lba_status=None,            # list of (lba, nblocks, type), or None
    report_luns=None,           # (claimed list length, [lun numbers])
    vpd_b0_claimed_len=None,    # page length field of VPD B0
    dpofua=False,               # MODE SENSE: FUA honoured
    wce=True,                   # MODE SENSE caching page: write cache on
    big=False,                  # capacity last_lba, sparse (zero) blocks
    reject_fua=False,           # WRITE with FUA: INVALID FIELD IN CDB
    recovered_read=False,       # READ: RECOVERED ERROR and no data
    no_sync_cache=False,        # SYNCHRONIZE CACHE(10)/(16): invalid opcode
    write_hangs=False,          # WRITE: never answered
    r2t=None,                   # None: writes send all data unsolicited;
                                # "exact", "beyond" or "huge": the target
                                # asks for it with R2Ts of that kind
)

PROFILES = {
    "good": {},
    "block-size-0": dict(block_len=0),
    "block-size-520": dict(block_len=520),
    "block-size-1m": dict(block_len=1 << 20),
    "last-lba-max": dict(last_lba=(1 << 64) - 1),
    "capacity-overflow": dict(block_len=4096, last_lba=(1 << 62)),
    "not-a-disk": dict(device_type=5),
    # Reads: fewer bytes than asked, with and without the residual flag;
    # more bytes than asked.
    "short-read-flagged": dict(read_data="short-flagged"),
    "short-read-silent": dict(read_data="short-silent"),
    "long-read": dict(read_data="long"),
    # Limits that are legal but extreme, or nonsense.
    "limits-extreme": dict(block_limits=dict(
        max_xfer=1, opt_gran=0xffff, opt_xfer=0xffffffff,
        max_unmap=0xffffffff, max_unmap_bdc=0xffffffff,
        opt_unmap_gran=0xffffffff, unmap_align=0x7fffffff,
        max_ws=(1 << 64) - 1)),
    "vpd-b0-truncated": dict(vpd_b0_claimed_len=0xfffc),
    # GET LBA STATUS: descriptors that start elsewhere, have no blocks,
    # run past the end of the LUN or overflow.
    "lba-status-hostile": dict(lbpme=True, lba_status=[
        (0, 16, 0), (16, 0, 1), (100, 8, 1)]),
    "lba-status-overflow": dict(lbpme=True, lba_status=[
        (0, 0xffffffff, 1)]),
    "lba-status-wrap": dict(lbpme=True, lba_status=[
        (0, 8, 0), (8, 0xffffffff, 1), ((1 << 64) - 8, 16, 1)]),
    "lba-status-past-end": dict(lbpme=True, lba_status=[
        (0, 8191, 1), (8191, 0xffffffff, 0)]),
    # Writes driven by R2T: a correct one, one asking for data after the
    # end of the transfer, one asking for 2 GiB.
    "r2t-exact": dict(r2t="exact"),
    "r2t-beyond": dict(r2t="beyond"),
    "r2t-huge": dict(r2t="huge"),
    # A target that drops the connection whenever it gets a READ.
    "drop-on-read": dict(read_data="drop"),
    # REPORT LUNS: a list length far beyond the data sent, odd LUN formats.
    "report-luns-overlong": dict(report_luns=(0x7ffffff8, [0, 1])),
    # LUN 0 twice, 0x4001 = flat space LUN 1, 0x8001 (extended logical
    # unit addressing) and 0x0105 (bus 1) which the plugin cannot use.
    "report-luns-odd": dict(report_luns=(40, [0, 0x4001, 0, 0x8001, 0x0105])),
    # 2^33 blocks.  One refuses FUA without saying it honours it (as Linux
    # LIO on a LUN without write cache), one says it does and refuses it.
    "big-lio": dict(big=True, last_lba=(1 << 33) - 1, reject_fua=True),
    "big-fua-rejected": dict(big=True, last_lba=(1 << 33) - 1,
                             reject_fua=True, dpofua=True),
    "recovered-read": dict(recovered_read=True),
    # No SYNCHRONIZE CACHE at all: with a write cache, and without one.
    "no-sync-cache": dict(no_sync_cache=True),
    "no-sync-cache-no-wce": dict(no_sync_cache=True, wce=False),
    # A WRITE that never completes (the plugin's timeout= must abort it).
    "write-hangs": dict(write_hangs=True),
}


def pattern(size):
    # Block b holds bytes (b + i) & 255, i = 0..511: (o // 512 + o) & 255.
    ramp = bytes(range(256)) * 3
    return b"".join(ramp[b & 255:(b & 255) + BLOCK] for b in range(size // BLOCK))


def be(n, width):
    return n.to_bytes(width, "big")


class Lun:
    def __init__(self, profile):
        self.p = dict(DEFAULTS, **PROFILES[profile])
        self.data = bytearray(pattern(SIZE))
        self.sparse = {}                # "big": block number -> bytes
        self.lock = threading.Lock()

    # Returns (status, data, sense).
    def command(self, cdb, data_out, xfer_len):
        op = cdb[0]
        p = self.p
        if op == 0x00:                                  # TEST UNIT READY
            return 0, b"", None
        if op == 0x12:                                  # INQUIRY
            return 0, self.inquiry(cdb), None
        if op == 0x25:                                  # READ CAPACITY(10)
            lba = min(p["last_lba"], 0xffffffff)
            return 0, be(lba, 4) + be(p["block_len"] & 0xffffffff, 4), None
        if op == 0x9e and cdb[1] & 0x1f == 0x10:        # READ CAPACITY(16)
            flags = (0x80 if p["lbpme"] else 0)
            return 0, (be(p["last_lba"], 8) + be(p["block_len"], 4) +
                       bytes([0, 0, flags, 0]) + bytes(16)), None
        if op == 0x9e and cdb[1] & 0x1f == 0x12:        # GET LBA STATUS
            return 0, self.lba_status(cdb), None
        if op == 0x1a:                                  # MODE SENSE(6)
            caching = bytes([0x08, 0x12, 0x04 if p["wce"] else 0]) + bytes(17)
            return 0, (bytes([3 + len(caching), 0,
                              0x10 if p["dpofua"] else 0, 0]) + caching), None
        if op == 0xa0:                                  # REPORT LUNS
            claimed, luns = p["report_luns"] or (8, [0])
            body = b"".join(be(l, 2) + bytes(6) for l in luns)
            return 0, be(claimed, 4) + bytes(4) + body, None
        if op in (0x28, 0x88, 0x2a, 0x8a):              # READ/WRITE 10/16
            if op in (0x28, 0x2a):
                lba, n = int.from_bytes(cdb[2:6], "big"), int.from_bytes(cdb[7:9], "big")
            else:
                lba, n = int.from_bytes(cdb[2:10], "big"), int.from_bytes(cdb[10:14], "big")
            start, length = lba * BLOCK, n * BLOCK
            if p["reject_fua"] and op in (0x2a, 0x8a) and cdb[1] & 0x08:
                return 2, b"", (0x05, 0x24, 0x00)       # invalid field in CDB
            if p["recovered_read"] and op in (0x28, 0x88):
                return 2, b"", (0x01, 0x17, 0x00)       # recovered, no data
            if p["big"]:
                print("FAKE: %s(%d) lba=%d blocks=%d" %
                      ("WRITE" if op in (0x2a, 0x8a) else "READ",
                       10 if op in (0x28, 0x2a) else 16, lba, n),
                      file=sys.stderr, flush=True)
                with self.lock:
                    if op in (0x2a, 0x8a):
                        for i in range(n):
                            self.sparse[lba + i] = bytes(
                                data_out[i * BLOCK:(i + 1) * BLOCK]).ljust(BLOCK, b"\0")
                        return 0, b"", None
                    return 0, b"".join(self.sparse.get(lba + i, bytes(BLOCK))
                                       for i in range(n)), None
            if start + length > SIZE:
                return 2, b"", (0x05, 0x21, 0x00)       # LBA out of range
            if p["read_data"] == "drop" and op in (0x28, 0x88):
                raise ConnectionAbortedError
            with self.lock:
                if op in (0x2a, 0x8a):
                    self.data[start:start + length] = data_out[:length].ljust(length, b"\0")
                    return 0, b"", None
                out = bytes(self.data[start:start + length])
            if p["read_data"].startswith("short"):
                out = out[:len(out) // 2]
            elif p["read_data"] == "long":
                out = out + b"\xee" * 4096
            return 0, out, None
        if op in (0x35, 0x91) and not p["no_sync_cache"]:  # SYNCHRONIZE CACHE
            return 0, b"", None
        return 2, b"", (0x05, 0x20, 0x00)               # invalid opcode

    def inquiry(self, cdb):
        p = self.p
        if not cdb[1] & 1:
            return (bytes([p["device_type"], 0, 5, 2, 31, 0, 0, 0]) +
                    b"FAKE    " + b"hostile target  " + b"0001")
        page = cdb[2]
        if page == 0x00:
            return bytes([0, 0, 0, len(p["vpd_pages"])]) + bytes(p["vpd_pages"])
        if page == 0xb0:
            bl = dict(max_xfer=0, opt_gran=0, opt_xfer=0, max_unmap=0,
                      max_unmap_bdc=0, opt_unmap_gran=0, unmap_align=0,
                      max_ws=0)
            bl.update(p["block_limits"])
            body = (bytes([0, 0]) + be(bl["opt_gran"], 2) + be(bl["max_xfer"], 4) +
                    be(bl["opt_xfer"], 4) + be(0, 4) + be(bl["max_unmap"], 4) +
                    be(bl["max_unmap_bdc"], 4) + be(bl["opt_unmap_gran"], 4) +
                    be((0x80000000 if bl["unmap_align"] else 0) | bl["unmap_align"], 4) +
                    be(bl["max_ws"], 8) + bytes(20))
            claimed = p["vpd_b0_claimed_len"] or len(body)
            return bytes([0, 0xb0]) + be(claimed, 2) + body
        return None

    def lba_status(self, cdb):
        descs = self.p["lba_status"] or []
        body = b"".join(be(lba, 8) + be(n, 4) + bytes([t, 0, 0, 0])
                        for lba, n, t in descs)
        return be(len(body) + 4, 4) + bytes(4) + body


def recv_exact(sock, n):
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise EOFError
        buf += chunk
    return buf


def pad4(b):
    return b + bytes(-len(b) % 4)


class Conn(socketserver.BaseRequestHandler):
    def setup(self):
        self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.statsn = 1
        self.exp_cmdsn = 0
        self.mrdsl = 8192       # the initiator's MaxRecvDataSegmentLength
        self.pending = {}       # ITT -> (command BHS, data so far, length)

    def recv_pdu(self):
        bhs = recv_exact(self.request, 48)
        ahs = bhs[4] * 4
        dlen = int.from_bytes(bhs[5:8], "big")
        rest = recv_exact(self.request, ahs + dlen + (-dlen % 4))
        return bhs, rest[ahs:ahs + dlen]

    def send(self, bhs, data=b""):
        bhs = bytearray(bhs)
        bhs[5:8] = be(len(data), 3)
        self.request.sendall(bytes(bhs) + pad4(data))

    def sn_fields(self, with_status=True):
        statsn = self.statsn
        if with_status:
            self.statsn += 1
        return be(statsn, 4) + be(self.exp_cmdsn, 4) + be(self.exp_cmdsn + 64, 4)

    def handle(self):
        try:
            while True:
                bhs, data = self.recv_pdu()
                op = bhs[0] & 0x3f
                if DEBUG:
                    print("pdu op=%#x flags=%#x cdb=%s dlen=%d"
                          % (op, bhs[1], bhs[32:48].hex(), len(data)),
                          file=sys.stderr, flush=True)
                # Non-immediate NOP-Out, command, task management, logout
                # take a CmdSN (login sets it itself; Data-Out has none).
                if op in (0x00, 0x01, 0x02, 0x06) and not bhs[0] & 0x40:
                    self.exp_cmdsn = int.from_bytes(bhs[24:28], "big") + 1
                if op == 0x03:
                    self.login(bhs, data)
                elif op == 0x00:
                    self.nop(bhs, data)
                elif op == 0x01:
                    self.scsi(bhs, data)
                elif op == 0x05:
                    self.data_out(bhs, data)
                elif op == 0x02:
                    self.task_mgmt(bhs)
                elif op == 0x06:
                    self.send(bytes([0x26, 0x80, 0, 0]) + bytes(12) + bhs[16:20] +
                              bytes(4) + self.sn_fields() + bytes(12))
                    return
                else:
                    return
        except (EOFError, ConnectionError):
            return
        except Exception:
            traceback.print_exc()
            raise

    def login(self, bhs, data):
        csg, nsg, transit = (bhs[1] >> 2) & 3, bhs[1] & 3, bhs[1] & 0x80
        self.exp_cmdsn = int.from_bytes(bhs[24:28], "big")
        keys = [kv.split("=", 1) for kv in data.decode().split("\0") if "=" in kv]
        answers = []
        for k, v in keys:
            if k == "MaxRecvDataSegmentLength":
                self.mrdsl = int(v)
                answers.append((k, "262144"))
            elif k in ("HeaderDigest", "DataDigest"):
                answers.append((k, "None"))
            elif k == "AuthMethod":
                answers.append((k, "None"))
            elif k in ("InitialR2T",):
                answers.append((k, "Yes" if self.server.lun.p["r2t"] else "No"))
            elif k == "ImmediateData":
                answers.append((k, "No" if self.server.lun.p["r2t"] else "Yes"))
            elif k in ("DataPDUInOrder", "DataSequenceInOrder"):
                answers.append((k, "Yes"))
            elif k in ("MaxBurstLength", "FirstBurstLength"):
                answers.append((k, "16776192"))
            elif k in ("MaxConnections", "MaxOutstandingR2T"):
                answers.append((k, "1"))
            elif k in ("ErrorRecoveryLevel", "DefaultTime2Retain"):
                answers.append((k, "0"))
            elif k == "DefaultTime2Wait":
                answers.append((k, "2"))
            elif k in ("IFMarker", "OFMarker"):
                answers.append((k, "No"))
        if csg == 0:
            answers.append(("TargetPortalGroupTag", "1"))
        text = "".join("%s=%s\0" % kv for kv in answers).encode()
        flags = transit | (csg << 2) | nsg
        tsih = be(1, 2) if transit and nsg == 3 else bytes(2)
        hdr = (bytes([0x23, flags, 0, 0]) + bytes(4) + bhs[8:14] + tsih +
               bhs[16:20] + bytes(4) + self.sn_fields() + bytes([0, 0]) + bytes(10))
        self.send(hdr, text)

    def nop(self, bhs, data):
        if bhs[16:20] == b"\xff\xff\xff\xff":
            return                                      # a reply to our ping
        self.send(bytes([0x20, 0x80, 0, 0]) + bytes(4) + bhs[8:16] + bhs[16:20] +
                  b"\xff\xff\xff\xff" + self.sn_fields() + bytes(12), data)

    def task_mgmt(self, bhs):
        print("FAKE: TMF function=%d" % (bhs[1] & 0x7f), file=sys.stderr,
              flush=True)
        self.send(bytes([0x22, 0x80, 0, 0]) + bytes(12) + bhs[16:20] + bytes(4) +
                  self.sn_fields() + bytes(12))

    def scsi(self, bhs, data):
        itt = bhs[16:20]
        if self.server.lun.p["write_hangs"] and bhs[32] in (0x2a, 0x8a):
            print("FAKE: WRITE left unanswered", file=sys.stderr, flush=True)
            return
        xfer = int.from_bytes(bhs[20:24], "big")
        if bhs[1] & 0x20 and len(data) < xfer:          # W: more data coming
            self.pending[itt] = (bhs, bytearray(data), xfer)
            kind = self.server.lun.p["r2t"]
            if kind:
                off, length = {"exact": (0, xfer), "beyond": (xfer, 65536),
                               "huge": (0, 0x7fffffff)}[kind]
                self.send(bytes([0x31, 0x80, 0, 0]) + bytes(4) + bhs[8:16] + itt +
                          be(0x1000, 4) + self.sn_fields(with_status=False) +
                          be(0, 4) + be(off, 4) + be(length, 4))
            return
        self.execute(bhs, bytes(data), xfer)

    def data_out(self, bhs, data):
        itt = bhs[16:20]
        if itt not in self.pending:
            return
        cmd, buf, xfer = self.pending[itt]
        off = int.from_bytes(bhs[40:44], "big")
        if off + len(data) <= xfer:
            buf[off:off + len(data)] = data
        if bhs[1] & 0x80:
            del self.pending[itt]
            self.execute(cmd, bytes(buf), xfer)

    def execute(self, bhs, data_out, xfer):
        lun = self.server.lun
        status, data, sense = lun.command(bhs[32:48], data_out, xfer)
        itt = bhs[16:20]
        is_read = bhs[1] & 0x40
        silent = lun.p["read_data"] == "short-silent"
        if data is None:
            status, data, sense = 2, b"", (0x05, 0x24, 0x00)
        if status == 0 and is_read and data:
            # Data-In PDUs, status in the last one.
            sent_len = len(data) if lun.p["read_data"] == "long" else min(len(data), xfer)
            under = xfer - sent_len if sent_len < xfer else 0
            over = len(data) - xfer if len(data) > xfer else 0
            datasn, off = 0, 0
            while off < sent_len:
                chunk = data[off:off + min(self.mrdsl, sent_len - off)]
                last = off + len(chunk) >= sent_len
                flags = 0
                resid = 0
                if last:
                    flags = 0x81
                    if under and not silent:
                        flags |= 0x02
                        resid = under
                    elif over:
                        flags |= 0x04
                        resid = over
                self.send(bytes([0x25, flags, 0, 0]) + bytes(4) + bhs[8:16] + itt +
                          b"\xff\xff\xff\xff" + self.sn_fields(with_status=last) +
                          be(datasn, 4) + be(off, 4) + be(resid, 4), chunk)
                datasn += 1
                off += len(chunk)
            return
        sense_data = b""
        if sense:
            key, asc, ascq = sense
            fixed = bytes([0x70, 0, key, 0, 0, 0, 0, 10, 0, 0, 0, 0, asc, ascq, 0, 0, 0, 0])
            sense_data = be(len(fixed), 2) + fixed
        resid_flags, resid = 0, 0
        if is_read and xfer and not data:
            resid_flags, resid = 0x02, xfer
        self.send(bytes([0x21, 0x80 | resid_flags, 0, status]) + bytes(4) + bytes(8) +
                  itt + bytes(4) + self.sn_fields() + bytes(8) + be(resid, 4),
                  sense_data)


class Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True


def main():
    portfile, profile = sys.argv[1], sys.argv[2]
    if profile not in PROFILES:
        sys.exit("fake-target.py: unknown profile %s (%s)" % (profile, " ".join(PROFILES)))
    srv = Server(("127.0.0.1", 0), Conn)
    srv.lun = Lun(profile)
    with open(portfile + ".tmp", "w") as f:
        f.write("%d\n" % srv.server_address[1])
    os.rename(portfile + ".tmp", portfile)
    srv.serve_forever()


if __name__ == "__main__":
    main()
