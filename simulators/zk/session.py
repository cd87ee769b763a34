"""One client session on a simulated device: command dispatch and multi-packet answers.

``server.py`` owns the sockets and hands each parsed packet to ``Session.handle``; replies go
back through a ``Link`` (TCP stream or UDP peer). Reply sizes, reply/session ids and the
direct-vs-buffered dataset answers follow fact sheet §1.6, §2 and §3.7 so that pyzk 0.9,
node-zklib and zkteco-js all work unmodified.
"""

from __future__ import annotations

import asyncio
import logging
import struct
from typing import Protocol

from simulators.zk import protocol as p
from simulators.zk.device import SimDevice
from simulators.zk.faults import Fault
from simulators.zk.templates import MAX_UPLOAD, parse_upload

log = logging.getLogger("simulators.zk.session")

#: Gap between the parts of a multi-packet TCP answer: node-zklib/zkteco-js process one
#: packet per 'data' event and lose data when parts coalesce (§3.4).
PART_GAP_S = 0.05
#: UDP DATA pacing. A client that waits for each chunk before asking for the next (pyzk)
#: gets bursts of 16 datagrams; one that queued more 1504 requests behind this one
#: (node-zklib asks for every chunk at once and concatenates quadratically) gets ~0.7 MB/s,
#: which it keeps up with without overflowing its receive buffer.
UDP_BURST = 16
UDP_PIPELINED_BURST = 1
UDP_BURST_GAP_S = 0.0015
#: Gap between two realtime events: pyzk parses one event per recv (§2.12).
EVENT_GAP_S = 0.05

#: OPTIONS_RRQ keys the device knows; values come from the device at request time.
_OPTION_KEYS = {
    "~SerialNumber", "~Platform", "MAC", "~DeviceName", "ZKFaceVersion", "~ZKFPVersion",
    "~ExtendFmt", "~UserExtFmt", "FaceFunOn", "CompatOldFirmware", "IPAddress", "NetMask",
    "GATEIPAddress", "~OS", "WorkCode", "~PIN2Width", "~SSR", "~OEMVendor", "~ProductTime",
    "Language", "FingerFunOn", "~IsOnlyRFMachine", "BiometricType", "ExtendOPLog",
}

#: Commands answered with a bare ACK_OK and no state change.
_PLAIN_OK = {p.CMD_REFRESHDATA, p.CMD_REFRESHOPTION, p.CMD_STARTVERIFY, p.CMD_CANCELCAPTURE,
             p.CMD_TESTVOICE, p.CMD_UNLOCK}


class Link(Protocol):
    """Where a session's packets go (TCP stream or UDP peer)."""

    is_tcp: bool
    peer: str  #: the client's address as text (logged with destructive commands)

    async def send(self, packet: bytes) -> None:
        """Send one ZK packet (framed for the transport) as a single write."""

    async def send_many(self, packets: list[bytes]) -> None:
        """Send several packets back to back (TCP: one write, so they arrive coalesced)."""

    async def send_partial(self, packet: bytes, fraction: float) -> None:
        """Send only the first ``fraction`` of a packet's data, then stop (mid-transfer drop)."""

    def close(self) -> None:
        """End the session's transport (TCP: close the connection)."""


class Session:
    """Protocol state of one client: session id, auth, prepared dataset, event registration."""

    def __init__(self, device: SimDevice, link: Link) -> None:
        self.device = device
        self.link = link
        self.session_id = 0
        self.connected = False
        self.authed = False
        self.event_flags = 0
        self.muted = False  # UDP after drop_mid_transfer: stop answering this client
        self.closed = False
        self._buffer: bytes | None = None
        self._buffer_kind = ""
        #: Client upload in progress (PREPARE_DATA 1500 announced ``_upload_size`` bytes, DATA 1501 appends).
        self._upload: bytearray | None = None
        self._upload_size = 0
        self._lock = asyncio.Lock()  # one command (or one event) on the wire at a time
        self._pending = 0  # requests waiting for the lock (a pipelining client)
        self._events: asyncio.Queue[tuple[int, int, int, int]] | None = None
        self._event_task: asyncio.Task[None] | None = None
        self._enable_timer: asyncio.TimerHandle | None = None

    # --- entry point ----------------------------------------------------------------------

    async def handle(self, pkt: p.Packet) -> None:
        """Answer one request packet as the device would."""
        dev = self.device
        if pkt.command == p.CMD_ACK_OK:
            return  # clients ACK our events; answering would start an endless ping-pong
        dev.requests_received += 1
        dev.requests_by_command[pkt.command] += 1
        if self.muted or self.closed:
            return
        if not pkt.checksum_ok:
            # Clients' checksums are right in practice (§1.2); a mismatch is worth a log
            # line but real devices still answer.
            log.debug("checksum mismatch device=%s cmd=%d", dev.serial, pkt.command)
        self._pending += 1
        try:
            await self._lock.acquire()
        finally:
            self._pending -= 1
        try:
            slow = dev.fault(Fault.SLOW)
            if slow:
                await asyncio.sleep(float(slow))
            if self.closed or dev.fault(Fault.OFFLINE) or dev.fault(Fault.HANG):
                return
            try:
                await self._dispatch(pkt)
            except p.ProtocolError as e:
                log.warning("bad request device=%s cmd=%d: %s", dev.serial, pkt.command, e)
                await self._reply(pkt, p.CMD_ACK_ERROR)
        finally:
            self._lock.release()

    async def _reply(self, pkt: p.Packet, code: int, data: bytes = b"",
                     session_id: int | None = None) -> None:
        sid = self.session_id if session_id is None else session_id
        await self.link.send(p.build_packet(code, sid, pkt.reply_id, data))

    # --- dispatch -------------------------------------------------------------------------

    async def _dispatch(self, pkt: p.Packet) -> None:
        cmd = pkt.command
        dev = self.device
        if cmd == p.CMD_CONNECT:
            if not self.session_id:  # a second CONNECT on the same session keeps the id (adro)
                self.session_id = dev.new_session_id()
            self.connected = True
            self.authed = dev.comm_key == 0
            self._buffer = None
            await self._reply(pkt, p.CMD_ACK_OK if self.authed else p.CMD_ACK_UNAUTH)
            return
        if cmd == p.CMD_AUTH:
            ok = self.connected and pkt.data[:4] == p.make_commkey(dev.comm_key, self.session_id)
            self.authed = ok  # a failed AUTH leaves the session unauthenticated
            if not ok:
                log.info("auth refused device=%s", dev.serial)
            await self._reply(pkt, p.CMD_ACK_OK if ok else p.CMD_ACK_UNAUTH)
            return
        if cmd == p.CMD_EXIT:
            # EXIT does not re-enable: a client that disabled the device must enable it itself.
            await self._reply(pkt, p.CMD_ACK_OK)
            self.end()
            return
        if cmd in (p.CMD_ACK_ERROR, p.CMD_ACK_UNKNOWN):
            # pyzk's _clear_error sends these reply codes as commands and waits for an answer.
            await self._reply(pkt, p.CMD_ACK_UNKNOWN)
            return
        if not (self.connected and self.authed):
            await self._reply(pkt, p.CMD_ACK_UNAUTH)
            return
        handler = _HANDLERS.get(cmd)
        if handler is not None:
            await handler(self, pkt)
        elif cmd in _PLAIN_OK:
            await self._reply(pkt, p.CMD_ACK_OK)
        else:
            log.debug("unknown command device=%s cmd=%d", dev.serial, cmd)
            await self._reply(pkt, p.CMD_ACK_UNKNOWN)

    async def _version(self, pkt: p.Packet) -> None:
        await self._reply(pkt, p.CMD_ACK_OK, self.device.spec.firmware.encode() + b"\0")

    async def _options_rrq(self, pkt: p.Packet) -> None:
        raw = pkt.data
        key_bytes = raw.split(b"\0", 1)[0]
        key = key_bytes.decode("ascii", "replace")
        value = self._option_value(key)
        if value is None:
            await self._reply(pkt, p.CMD_ACK_ERROR)
            return
        # Echo the key exactly as requested (zkteco-js strips "<key>=" literally).
        payload = key_bytes + b"=" + value.encode("utf-8", "replace")[:900] + b"\0"
        await self._reply(pkt, p.CMD_ACK_OK, payload)

    def _option_value(self, key: str) -> str | None:
        dev = self.device
        spec = dev.spec
        if key in dev.options:
            return dev.options[key]
        values = {
            "~SerialNumber": dev.serial, "~Platform": spec.platform, "MAC": dev.mac(),
            "~DeviceName": spec.device_name, "ZKFaceVersion": "7" if spec.faces else "0",
            "~ZKFPVersion": str(spec.fp_version), "~ExtendFmt": "1" if spec.record_layout == 40 else "0",
            "~UserExtFmt": "1" if spec.user_layout == 72 else "0",
            "FaceFunOn": "1" if spec.faces else "0", "CompatOldFirmware": "0",
            "IPAddress": dev.host, "NetMask": "255.255.255.0",
            "GATEIPAddress": dev.host.rsplit(".", 1)[0] + ".1", "~OS": "1", "WorkCode": "0",
            "~PIN2Width": str(dev.pin_width()), "~SSR": "1", "~OEMVendor": "ZKTeco Inc.",
            "~ProductTime": "2017-04-28 10:00:00", "Language": "69", "FingerFunOn": "1",
            "~IsOnlyRFMachine": "0", "BiometricType": "1", "ExtendOPLog": "1",
        }
        return values.get(key) if key in _OPTION_KEYS else None

    async def _options_wrq(self, pkt: p.Packet) -> None:
        text = pkt.data.split(b"\0", 1)[0].decode("utf-8", "replace")
        if "=" not in text:
            await self._reply(pkt, p.CMD_ACK_ERROR)
            return
        key, value = text.split("=", 1)
        if key not in _OPTION_KEYS:  # serial, MAC etc. are read-only; keep client settings
            self.device.options[key] = value
        await self._reply(pkt, p.CMD_ACK_OK)

    async def _pin_width(self, pkt: p.Packet) -> None:
        # Exactly one payload byte: pyzk reads 9 bytes on UDP / 17 on TCP (§2.3).
        await self._reply(pkt, p.CMD_ACK_OK, bytes([self.device.pin_width() & 0xFF]))

    async def _free_sizes(self, pkt: p.Packet) -> None:
        dev = self.device
        await self._reply(pkt, p.CMD_ACK_OK, p.pack_free_sizes(dev.reported_sizes(), dev.spec.free_sizes))

    async def _state(self, pkt: p.Packet) -> None:
        # The machine state travels in the session field of a bare ACK_OK (adro's capture; public ZEM
        # firmware source sets SessionID = machine state). 0 = idle, 2 = busy here.
        await self._reply(pkt, p.CMD_ACK_OK, session_id=0 if self.device.enabled else 2)

    async def _get_time(self, pkt: p.Packet) -> None:
        await self._reply(pkt, p.CMD_ACK_OK, struct.pack("<I", self.device.now_encoded()))

    async def _set_time(self, pkt: p.Packet) -> None:
        if len(pkt.data) < 4:
            raise p.ProtocolError("SET_TIME needs 4 bytes")
        t = struct.unpack_from("<I", pkt.data)[0]  # zkteco-js sends 32 bytes: use the first 4
        try:
            when = p.decode_time(t)
        except ValueError:
            await self._reply(pkt, p.CMD_ACK_ERROR)
            return
        self.device.set_clock(when)
        await self._reply(pkt, p.CMD_ACK_OK)

    async def _disable(self, pkt: p.Packet) -> None:
        self.device.set_disabled(True)
        if self._enable_timer is not None:
            self._enable_timer.cancel()
            self._enable_timer = None
        if len(pkt.data) >= 4:
            secs = struct.unpack_from("<I", pkt.data)[0]
            if secs:  # optional auto re-enable timeout (adro)
                loop = asyncio.get_running_loop()
                self._enable_timer = loop.call_later(secs, self.device.set_disabled, False)
        await self._reply(pkt, p.CMD_ACK_OK)

    async def _enable(self, pkt: p.Packet) -> None:
        self.device.set_disabled(False)
        await self._reply(pkt, p.CMD_ACK_OK)

    def _warn_destructive(self, what: str, detail: str = "") -> None:
        log.warning("destructive command %s device=%s peer=%s%s", what, self.device.serial, self.link.peer,
                    f" {detail}" if detail else "")

    async def _clear_attlog(self, pkt: p.Packet) -> None:
        self._warn_destructive("CLEAR_ATTLOG", f"records={self.device.record_count}")
        self.device.clear_log()
        await self._reply(pkt, p.CMD_ACK_OK)

    async def _clear_data(self, pkt: p.Packet) -> None:
        self._warn_destructive("CLEAR_DATA", f"records={self.device.record_count} users={self.device.user_count}")
        self.device.clear_all()
        await self._reply(pkt, p.CMD_ACK_OK)

    async def _restart(self, pkt: p.Packet) -> None:
        self._warn_destructive("RESTART")
        await self._reply(pkt, p.CMD_ACK_OK)
        self.device.set_disabled(False)  # a reboot comes up enabled
        self.device.on_change("restart")  # every session drops, as on a reboot

    async def _poweroff(self, pkt: p.Packet) -> None:
        self._warn_destructive("POWEROFF")
        await self._reply(pkt, p.CMD_ACK_OK)
        # Powered off: nothing answers until someone switches it on (clear the fault).
        self.device.set_fault(Fault.OFFLINE.value, True)

    async def _reg_event(self, pkt: p.Packet) -> None:
        flags = struct.unpack_from("<I", pkt.data.ljust(4, b"\0"))[0]
        self.event_flags = flags
        await self._reply(pkt, p.CMD_ACK_OK)

    async def _user_wrq(self, pkt: p.Packet) -> None:
        user = p.unpack_user(pkt.data)
        ok = self.device.upsert_user(user)
        await self._reply(pkt, p.CMD_ACK_OK if ok else p.CMD_ACK_ERROR)

    async def _delete_user(self, pkt: p.Packet) -> None:
        if len(pkt.data) < 2:
            raise p.ProtocolError("DELETE_USER needs a u16 uid")
        uid = struct.unpack_from("<H", pkt.data)[0]
        self._warn_destructive("DELETE_USER", f"uid={uid}")
        self.device.delete_user(uid)
        await self._reply(pkt, p.CMD_ACK_OK)

    async def _free_data(self, pkt: p.Packet) -> None:
        self._buffer = None
        await self._reply(pkt, p.CMD_ACK_OK)

    # --- uploads: users + templates (§2.7; simulators/zk/templates.py) ------------------------

    async def _upload_prepare(self, pkt: p.Packet) -> None:
        if len(pkt.data) < 4:
            raise p.ProtocolError("PREPARE_DATA needs a u32 size")
        size = struct.unpack_from("<I", pkt.data)[0]
        if size > MAX_UPLOAD:
            self._upload = None
            await self._reply(pkt, p.CMD_ACK_ERROR)
            return
        self._upload, self._upload_size = bytearray(), size
        await self._reply(pkt, p.CMD_ACK_OK)

    async def _upload_data(self, pkt: p.Packet) -> None:
        up = self._upload
        if up is None or len(up) + len(pkt.data) > self._upload_size:
            self._upload = None
            await self._reply(pkt, p.CMD_ACK_ERROR)
            return
        up += pkt.data
        await self._reply(pkt, p.CMD_ACK_OK)

    async def _save_usertemps(self, pkt: p.Packet) -> None:
        up, self._upload = self._upload, None
        dev = self.device
        if up is None or len(up) != self._upload_size:
            await self._reply(pkt, p.CMD_ACK_ERROR)
            return
        try:
            users, templates = parse_upload(bytes(up), dev.spec.user_layout)
        except p.ProtocolError as e:
            log.info("upload refused device=%s: %s", dev.serial, e)
            await self._reply(pkt, p.CMD_ACK_ERROR)
            return
        refused = dev.save_upload(users, templates)
        if refused:
            log.info("upload refused device=%s: %s", dev.serial, refused)
        await self._reply(pkt, p.CMD_ACK_ERROR if refused else p.CMD_ACK_OK)

    async def _get_usertemp(self, pkt: p.Packet) -> None:
        """Command 88 (pyzk get_user_template): ``<Hb`` uid, finger -> the template plus one trailing byte,
        which pyzk drops (§2.7); TCP as one DATA packet, UDP as PREPARE_DATA, ≤1024-byte DATA pieces, ACK_OK."""
        if len(pkt.data) < 3:
            raise p.ProtocolError("GET_USERTEMP needs <Hb uid, finger")
        uid, finger = struct.unpack_from("<Hb", pkt.data)  # the uid is a u16, as in the user table
        found = self.device.templates().get((uid, finger))
        if found is None:
            await self._reply(pkt, p.CMD_ACK_ERROR)
            return
        data = found.data + b"\x00"
        if self.link.is_tcp:
            await self._reply(pkt, p.CMD_DATA, data)
            return
        await self._send_run(pkt, data, len(data), None, None)

    async def _delete_usertemp(self, pkt: p.Packet) -> None:
        if len(pkt.data) < 3:
            raise p.ProtocolError("DELETE_USERTEMP needs <hb uid, finger")
        uid, finger = struct.unpack_from("<hb", pkt.data)
        ok = self.device.delete_template(uid, finger)
        await self._reply(pkt, p.CMD_ACK_OK if ok else p.CMD_ACK_ERROR)

    # --- datasets (§2.8, §3.4, §3.5) ------------------------------------------------------

    async def _prepare_buffer(self, pkt: p.Packet) -> None:
        table, fct, _ext = p.parse_read_buffer_request(pkt.data)
        if table == p.CMD_USERTEMP_RRQ and fct == p.FCT_USER:
            kind = "users"
        elif table == p.CMD_DB_RRQ and fct == p.FCT_FINGERTMP:
            kind = "templates"
        elif table == p.CMD_ATTLOG_RRQ:
            kind = "attlog"
        else:
            kind = ""  # oplog: this device has none
        dev = self.device
        ds = await self._build_dataset(kind)
        corrupt = dev.fault(Fault.CORRUPT_CHUNK) if kind == "attlog" else None
        drop = dev.fault(Fault.DROP_MID_TRANSFER) if kind == "attlog" and len(ds) > 4 else None
        spec = dev.spec
        # Real terminals answer a small set directly with one DATA packet even over TCP (pyzk's K20
        # capture: 148 bytes); with real framing, only sets up to one packet are answered so.
        direct = not spec.tcp_buffered or (spec.tcp_framing == "packets" and len(ds) <= spec.tcp_packet_size)
        if self.link.is_tcp and direct:
            if corrupt == "length":
                # The dataset's own byte count claims one record more than is sent.
                rs = dev.spec.record_layout
                ds = struct.pack("<I", len(ds) - 4 + rs) + ds[4:]
            # Direct answer: one CMD_DATA with the whole dataset (works for every client on TCP).
            packet = p.build_packet(p.CMD_DATA, self.session_id, pkt.reply_id, ds)
            if drop:
                log.info("dropping mid-transfer device=%s bytes=%d", dev.serial, len(ds))
                await self.link.send_partial(packet, float(drop))
                self.end()
                return
            if corrupt == "checksum":
                packet = _garble(packet)
            await self.link.send(packet)
            return
        self._buffer = ds
        self._buffer_kind = kind
        await self._reply(pkt, p.CMD_ACK_OK, p.buffer_stat(len(ds)))

    async def _build_dataset(self, kind: str) -> bytes:
        if not kind:
            return p.dataset(b"")
        # A 200k-record build takes a moment: keep the event loop (other devices) serving.
        return await asyncio.get_running_loop().run_in_executor(None, self.device.dataset, kind)

    async def _read_buffer(self, pkt: p.Packet) -> None:
        start, length = p.parse_chunk_request(pkt.data)
        buf = self._buffer
        if buf is None or start < 0 or length < 0 or start > len(buf):
            await self._reply(pkt, p.CMD_ACK_ERROR)
            return
        dev = self.device
        chunk = buf[start:start + length]
        is_att = self._buffer_kind == "attlog"
        corrupt = dev.fault(Fault.CORRUPT_CHUNK) if is_att and start == 0 else None
        drop = dev.fault(Fault.DROP_MID_TRANSFER) if is_att and len(buf) > 4 else None
        if corrupt == "length" and len(chunk) > 4:
            chunk = chunk[:-4]  # PREPARE_DATA below still announces the requested length
        announced = length if corrupt == "length" else len(chunk)
        await self._send_run(pkt, chunk, announced, corrupt, drop)

    async def _legacy_read(self, pkt: p.Packet) -> None:
        """CMD_USERTEMP_RRQ (9) / CMD_ATTLOG_RRQ (13) sent directly, as older PHP/JS clients do.

        Like a K40-class unit (php_zklib's reader): PREPARE_DATA with the dataset size, the dataset
        (u32 byte count + records) in DATA packets, then ACK_OK.
        """
        if not self.device.spec.legacy_reads:
            await self._reply(pkt, p.CMD_ACK_UNKNOWN)
            return
        kind = "users" if pkt.command == p.CMD_USERTEMP_RRQ else "attlog"
        ds = await self._build_dataset(kind)
        await self._send_run(pkt, ds, len(ds), None, None)

    async def _send_run(self, pkt: p.Packet, chunk: bytes, announced: int, corrupt: object,
                        drop: object) -> None:
        """PREPARE_DATA, the DATA packet(s) and ACK_OK of one chunk, framed per transport and spec."""
        dev = self.device
        spec = dev.spec
        sid, rid = self.session_id, pkt.reply_id
        if self.link.is_tcp and spec.tcp_framing == "packets":
            await self._send_packets(pkt, chunk, announced, corrupt, drop, spec.tcp_packet_size,
                                     spec.tcp_packet_gap_ms / 1000.0)
            return
        if self.link.is_tcp:
            await self.link.send(p.build_packet(p.CMD_PREPARE_DATA, sid, rid, p.prepare_data(announced)))
            # TCP: the whole chunk in ONE DATA packet (pyzk 0.9 recurses per packet), parts
            # spaced so node clients see one packet per 'data' event.
            await asyncio.sleep(PART_GAP_S)
            packet = p.build_packet(p.CMD_DATA, sid, rid, chunk)
            if drop:
                await self.link.send_partial(packet, float(drop))  # type: ignore[arg-type]
                self.end()
                return
            await self.link.send(_garble(packet) if corrupt == "checksum" else packet)
            await asyncio.sleep(PART_GAP_S)
            await self.link.send(p.build_packet(p.CMD_ACK_OK, sid, rid))
            # node-zklib has already queued its next 1504: keep its PREPARE_DATA apart too.
            await asyncio.sleep(PART_GAP_S)
            return
        await self.link.send(p.build_packet(p.CMD_PREPARE_DATA, sid, rid, p.prepare_data(announced)))
        # UDP: DATA pieces of ≤ 1024 bytes, one datagram each, then ACK_OK.
        counter = spec.udp_framing == "counter"
        pieces = [chunk[i:i + p.UDP_DATA_PIECE] for i in range(0, len(chunk), p.UDP_DATA_PIECE)]
        if drop:
            pieces = pieces[:max(0, int(len(pieces) * float(drop)))]  # type: ignore[arg-type]
        for i, piece in enumerate(pieces):
            packet = p.build_packet(p.CMD_DATA, i if counter else sid, rid, piece)
            if i == 0 and corrupt == "checksum":
                packet = _garble(packet)
            await self.link.send(packet)
            burst = UDP_PIPELINED_BURST if self._pending else UDP_BURST
            if i % burst == burst - 1 and i + 1 < len(pieces):
                await asyncio.sleep(UDP_BURST_GAP_S)
        if drop:
            log.info("dropping mid-transfer device=%s (udp: going silent)", dev.serial)
            self.muted = True
            return
        # Real framing: the closing ACK_OK carries the last packet counter too (pyzk test.py capture).
        await self.link.send(p.build_packet(p.CMD_ACK_OK, max(0, len(pieces) - 1) if counter else sid, rid))

    async def _send_packets(self, pkt: p.Packet, chunk: bytes, announced: int, corrupt: object, drop: object,
                            size: int, gap_s: float) -> None:
        """TCP like real terminals: DATA packets of ``size`` bytes back to back, counter in the session field.

        Captures (pyzk test.py, js_zklib #50): PREPARE_DATA(length, 1008) with the session id, then DATA
        packets of 1008 bytes whose session field counts 0, 1, 2, …, then ACK_OK carrying the last count.
        """
        sid, rid = self.session_id, pkt.reply_id
        prepare = p.build_packet(p.CMD_PREPARE_DATA, sid, rid, p.prepare_data(announced, size))
        pieces = [chunk[i:i + size] for i in range(0, len(chunk), size)] or [b""]
        if not gap_s and not drop:
            # Back to back means coalesced at the client: send the whole answer in one write, so a client
            # that needs the packets apart fails every time rather than by scheduling luck.
            data = [p.build_packet(p.CMD_DATA, i, rid, piece) for i, piece in enumerate(pieces)]
            if corrupt == "checksum":
                data[0] = _garble(data[0])
            await self.link.send_many([prepare, *data, p.build_packet(p.CMD_ACK_OK, len(pieces) - 1, rid)])
            return
        await self.link.send(prepare)
        cut = int(len(pieces) * float(drop)) if drop else -1  # type: ignore[arg-type]
        for i, piece in enumerate(pieces):
            if gap_s:
                await asyncio.sleep(gap_s)
            packet = p.build_packet(p.CMD_DATA, i, rid, piece)
            if i == cut:
                log.info("dropping mid-transfer device=%s packet=%d", self.device.serial, i)
                await self.link.send_partial(packet, 0.5)
                self.end()
                return
            await self.link.send(_garble(packet) if i == 0 and corrupt == "checksum" else packet)
        if gap_s:
            await asyncio.sleep(gap_s)
        await self.link.send(p.build_packet(p.CMD_ACK_OK, len(pieces) - 1, rid))

    # --- realtime events (§2.12) ----------------------------------------------------------

    def queue_events(self, punches: list[tuple[int, int, int, int]]) -> None:
        """Queue new punches for this session if it registered EF_ATTLOG (loop thread)."""
        if not (self.event_flags & p.EF_ATTLOG) or self.closed or self.muted:
            return
        if self._events is None:
            self._events = asyncio.Queue()
            self._event_task = asyncio.get_running_loop().create_task(self._send_events())
        for punch in punches:
            self._events.put_nowait(punch)

    async def _send_events(self) -> None:
        assert self._events is not None
        while not self.closed:
            t, uid, state, verify = await self._events.get()
            if not (self.event_flags & p.EF_ATTLOG):
                continue
            dev = self.device
            if dev.fault(Fault.OFFLINE) or dev.fault(Fault.HANG) or dev.fault(Fault.PORT_CLOSED):
                continue
            user_id = dev.user_id_of(uid)
            async with self._lock:
                if self.link.is_tcp:
                    data = [p.event_attlog_32(user_id, verify, state, t)]
                elif user_id.isdigit() and int(user_id) <= 0xFFFFFFFF:
                    # pyzk reads the 12-byte form, node-zklib UDP only an 18-byte datagram.
                    # The 10-byte one goes first: pyzk ACKs and skips it, and the event it
                    # does parse is the last datagram, so nothing stale is left queued
                    # when a pyzk client stops capturing right after an event.
                    num = int(user_id)
                    data = [p.event_attlog_10(num, verify, state, t),
                            p.event_attlog_12(num, verify, state, t)]
                else:
                    data = [p.event_attlog_32(user_id, verify, state, t)]
                for i, d in enumerate(data):
                    if i:
                        await asyncio.sleep(EVENT_GAP_S)
                    # Event packets carry the event code in the session field and reply id 0.
                    await self.link.send(p.build_packet(p.CMD_REG_EVENT, p.EF_ATTLOG, 0, d))
            await asyncio.sleep(EVENT_GAP_S)

    # --- teardown -------------------------------------------------------------------------

    def end(self) -> None:
        """Session over (EXIT, disconnect, restart): stop events. The device stays disabled if it was."""
        if self.closed:
            return
        self.closed = True
        # A pending disable timeout is the device's own timer: it still fires after the client left.
        if self._event_task is not None:
            self._event_task.cancel()
        self.link.close()


def _garble(packet: bytes) -> bytes:
    """Flip 8 payload bytes (the first record's start) after the checksum was computed."""
    if len(packet) < 8 + 12:
        return packet
    head, body = packet[:8], bytearray(packet[8:])
    for i in range(4, 12):
        body[i] ^= 0xFF
    return head + bytes(body)


_HANDLERS = {
    p.CMD_GET_VERSION: Session._version,
    p.CMD_OPTIONS_RRQ: Session._options_rrq,
    p.CMD_OPTIONS_WRQ: Session._options_wrq,
    p.CMD_GET_PINWIDTH: Session._pin_width,
    p.CMD_GET_FREE_SIZES: Session._free_sizes,
    p.CMD_GET_TIME: Session._get_time,
    p.CMD_SET_TIME: Session._set_time,
    p.CMD_DISABLEDEVICE: Session._disable,
    p.CMD_ENABLEDEVICE: Session._enable,
    p.CMD_CLEAR_ATTLOG: Session._clear_attlog,
    p.CMD_CLEAR_DATA: Session._clear_data,
    p.CMD_RESTART: Session._restart,
    p.CMD_POWEROFF: Session._poweroff,
    p.CMD_REG_EVENT: Session._reg_event,
    p.CMD_USER_WRQ: Session._user_wrq,
    p.CMD_DELETE_USER: Session._delete_user,
    p.CMD_FREE_DATA: Session._free_data,
    p.CMD_PREPARE_BUFFER: Session._prepare_buffer,
    p.CMD_READ_BUFFER: Session._read_buffer,
    p.CMD_STATE_RRQ: Session._state,
    p.CMD_USERTEMP_RRQ: Session._legacy_read,
    p.CMD_PREPARE_DATA: Session._upload_prepare,
    p.CMD_DATA: Session._upload_data,
    p.CMD_SAVE_USERTEMPS: Session._save_usertemps,
    p.CMD_DELETE_USERTEMP: Session._delete_usertemp,
    p.CMD_GET_USERTEMP: Session._get_usertemp,
    p.CMD_ATTLOG_RRQ: Session._legacy_read,
}
