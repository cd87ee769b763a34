"""SoapDriver: terminals read through their built-in web service (``POST /iWsService``, port 80).

Flow: gateway.polling.poller -> SoapDriver.connect() -> SoapSession.{info,counts,read_punches,...}
-> drivers.soap.transport (httpx; a raw socket for heads httpx refuses) -> terminal
-> drivers.soap.codec (tolerant tag-by-tag parsing) -> RawPunch.
The service has no record counter and no server-side filter (fact sheet §1.6), so a session downloads the
log once (``GetAttLog`` for all PINs) and counts, full reads and tail reads all use that one download. A wrong
comm key is caught by an authenticated probe at connect (``GetDate`` must return a date, §1.5), so it is never
mistaken for an empty log. Rows that are no punch are kept in ``SoapSession.unreadable`` (raw text, reason)
for the poller to quarantine. There is no keypad lock over SOAP: see ``clear_punches`` and docs/drivers/soap.md.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime

from drivers.base import (
    AuthRejected,
    Busy,
    Counts,
    DeviceInfo,
    DeviceUser,
    EnrolledUser,
    Enrolments,
    EnrolProgress,
    IdentityMismatch,
    LogPosition,
    Progress,
    ProtocolError,
    RawPunch,
    Template,
)
from drivers.soap import codec, enrol
from drivers.soap.quirks import SoapQuirks
from drivers.soap.transport import HeadRefused, HttpxTransport, RawTransport, Transport

log = logging.getLogger(__name__)

#: The option that names the serial on ZK firmware (the binary protocol asks the same option store).
SERIAL_OPTION = "~SerialNumber"


@dataclass(frozen=True, slots=True)
class SoapParams:
    """How to reach one terminal's web service. The comm key is never shown in repr() or logs."""

    #: IPv4 address or host name of the terminal.
    address: str
    #: The web server's port (80 on every terminal we know).
    port: int = 80
    #: ``ArgComKey`` of every request: the terminal's COMM > Comm Key (0 = none).
    comm_key: int = field(default=0, repr=False)
    #: Timeout of each connect and each read, in seconds.
    timeout_s: float = 10.0
    #: When set, a terminal reporting another serial fails with IdentityMismatch; also the serial used when
    #: the terminal does not report one over SOAP.
    expected_serial: str | None = None

    def __post_init__(self) -> None:
        if not self.address:
            raise ValueError("address must not be empty")
        if not 0 < self.port < 65536:
            raise ValueError(f"port must be 1-65535, got {self.port}")
        if not 0 <= self.comm_key <= 0xFFFFFFFF:
            raise ValueError("comm_key must be an integer from 0 to 4294967295")
        if not self.timeout_s > 0:
            raise ValueError(f"timeout_s must be positive, got {self.timeout_s}")


@dataclass
class SoapStats:
    """Counters kept on a SoapDriver across sessions (for tests and metrics)."""

    sessions: int = 0
    requests: int = 0
    log_downloads: int = 0
    user_downloads: int = 0
    #: Requests answered through the raw socket after httpx refused an answer's head.
    raw_requests: int = 0
    clears: int = 0


@dataclass
class _Log:
    """One download of the log: punches in device order, with the row index of each, and the unreadable rows."""

    punches: list[RawPunch]
    rows_of_punches: list[int]
    unreadable: list[tuple[int, str, str]]
    rows: int


class SoapDriver:
    """Reaches one terminal's SOAP service. Blocking; one caller at a time (the poller's rule)."""

    def __init__(self, params: SoapParams, quirks: SoapQuirks | None = None) -> None:
        self.params = params
        self.quirks = quirks or SoapQuirks()
        self.stats = SoapStats()
        self.where = f"soap {params.address}:{params.port}"
        self._lock = threading.Lock()
        #: httpx refused a head of this terminal once: every later request uses the raw socket.
        self._raw = self.quirks.raw_http
        #: Unreadable rows (raw, reason) reported by earlier sessions: a clear may wipe only these.
        self.unreadable_reported: Counter[tuple[str, str]] = Counter()
        #: PIN -> the uid drivers.soap.enrol handed out for it (SOAP has none): kept across sessions, so a
        #: restore's read-back names users by the uids it wrote.
        self.enrol_uids: dict[str, int] = {}

    @contextmanager
    def connect(self, deadline: float | None = None) -> Iterator[SoapSession]:
        """Open a session: the authenticated probe (GetDate) runs here, so a wrong comm key fails at once."""
        session = SoapSession(self, deadline)
        try:
            session.probe()
            with self._lock:
                self.stats.sessions += 1
            yield session
        finally:
            session.close()

    def transport(self) -> Transport:
        """A fresh transport of the kind this terminal needs."""
        p = self.params
        return RawTransport(p.address, p.port, p.timeout_s) if self._raw else HttpxTransport(
            p.address, p.port, p.timeout_s)


class SoapSession:
    """An open conversation with one terminal (drivers.base.Session and its optional abilities)."""

    def __init__(self, driver: SoapDriver, deadline: float | None) -> None:
        self._driver = driver
        self._params = driver.params
        self._quirks = driver.quirks
        self._deadline = deadline
        self._transport: Transport = driver.transport()
        self._bytes_before = 0
        self._clock: datetime | None = None
        self._clock_read = False
        self._serial: str | None = None
        self._log: _Log | None = None
        self._users: list[DeviceUser] | None = None
        self._user_rows: list[codec.Row] | None = None
        #: Rows of the last read that are no punch: (raw row text, reason). The poller quarantines them
        #: (gateway.polling.poller reads this attribute of any session that has it).
        self.unreadable: list[tuple[str, str]] = []

    # -- plumbing --------------------------------------------------------------------------------
    def _call(self, method: str, args: list[tuple[str, str]] | None = None, *, retry_raw: bool = True,
              max_bytes: int | None = None) -> codec.Answer:
        """One request -> the parsed answer. ``retry_raw``: a head httpx refused is asked again over the raw
        socket (only for requests that change nothing on the terminal)."""
        drv = self._driver
        body = codec.request_body(method, self._params.comm_key, args)
        limit = max_bytes or self._quirks.max_response_bytes
        with drv._lock:
            drv.stats.requests += 1
        try:
            data = self._transport.post(body, deadline=self._deadline, max_bytes=limit)
        except HeadRefused as exc:
            if isinstance(self._transport, RawTransport):
                raise
            if not retry_raw:
                drv._raw = True  # the terminal may have acted on it: not asked again, but the next session is raw
                raise
            log.warning("%s: httpx cannot read this terminal's HTTP head (%s); using a raw socket for it from "
                        "now on", drv.where, exc.message)
            self._bytes_before += self._transport.bytes_read
            self._transport.close()
            drv._raw = True
            self._transport = drv.transport()
            data = self._transport.post(body, deadline=self._deadline, max_bytes=limit)
        if isinstance(self._transport, RawTransport):
            with drv._lock:
                drv.stats.raw_requests += 1
        return codec.parse_answer(codec.decode_body(data, self._quirks.encoding or None), method)

    def close(self) -> None:
        """Close the transport (nothing on the terminal needs undoing: SOAP never locks the keypad)."""
        self._transport.close()

    @property
    def bytes_read(self) -> int:
        """Body bytes received in this session."""
        return self._bytes_before + self._transport.bytes_read

    # -- the probe ----------------------------------------------------------------------------------
    def probe(self) -> None:
        """GetDate with the comm key: a terminal that answers without a date refused the key (§1.5)."""
        answer = self._call("GetDate")
        if not codec.has_date(answer):
            raise AuthRejected(
                f"{self._driver.where}: the terminal answered GetDate without a date: it refused the comm key "
                "(check comm_key_env / comm_key_file against the terminal's COMM > Comm Key)")
        self._clock = codec.clock_from_answer(answer)
        self._clock_read = True

    # -- drivers.base.Session -------------------------------------------------------------------------
    def info(self, *, clock: bool = True) -> DeviceInfo:
        """Serial (GetOption ~SerialNumber, else the configured serial) and, with ``clock``, the device clock."""
        serial = self._read_serial()
        expected = self._params.expected_serial
        if expected is not None and serial != expected:
            raise IdentityMismatch(f"{self._driver.where}: expected serial {expected}, the terminal reports "
                                   f"{serial}", expected=expected, found=serial)
        device_time = None
        if clock:
            if not self._clock_read:
                self.probe()
            device_time = self._clock
            self._clock_read = False  # a second info(clock=True) in the session reads the clock again
        return DeviceInfo(serial=serial, platform="SOAP web service", device_time=device_time)

    def _read_serial(self) -> str:
        if self._serial is not None:
            return self._serial
        serial = ""
        if self._quirks.read_serial:
            try:
                serial = codec.option_value(self._call("GetOption", [("Name", SERIAL_OPTION)]), SERIAL_OPTION)
            except ProtocolError as exc:
                log.debug("%s: GetOption %s not answered: %s", self._driver.where, SERIAL_OPTION, exc)
        serial = serial.strip()[:64]
        if not serial:
            if self._params.expected_serial is None:
                raise ProtocolError(f"{self._driver.where}: the terminal does not report its serial number over "
                                    "SOAP; set serial = \"...\" for this device (menu: System Info > Device Info)",
                                    transient=False)
            serial = self._params.expected_serial
        self._serial = serial
        return serial

    def counts(self) -> Counts:
        """Records counted in one download of the log (the service has no counter) and users in GetAllUserInfo."""
        logged = self._download()
        users = len(self._user_table())
        return Counts(records=logged.rows, users=users, records_cap=self._quirks.log_capacity)

    def read_punches(self, progress: Progress | None = None) -> list[RawPunch]:
        """The whole log, in device order (the download counts() made, else a new one)."""
        logged = self._download()
        self._report_unreadable([(raw, why) for _, raw, why in logged.unreadable])
        if progress is not None:
            progress(len(logged.punches), len(logged.punches))
        return list(logged.punches)

    def read_punches_after(self, known: LogPosition, progress: Progress | None = None) -> list[RawPunch] | None:
        """The records after the first ``known.records`` of the session's download, if record ``known.records - 1``
        is still ``known.last`` (drivers.base.ReadsNewPunches); None when the log does not continue that read."""
        logged = self._download()
        n = known.records
        if n < 1 or len(logged.punches) < n or logged.punches[n - 1] != known.last:
            log.info("%s: tail read refused, a full read is needed: the log does not continue the one read before",
                     self._driver.where)
            return None
        after_row = logged.rows_of_punches[n - 1]
        self._report_unreadable([(raw, why) for row, raw, why in logged.unreadable if row > after_row])
        new = logged.punches[n:]
        if progress is not None:
            progress(len(new), len(new))
        return list(new)

    def _report_unreadable(self, rows: list[tuple[str, str]]) -> None:
        self.unreadable = rows
        if rows:
            with self._driver._lock:
                self._driver.unreadable_reported.update(rows)
            # DEBUG: a log read whole every poll would repeat it; the poller warns once per row it quarantines.
            log.debug("%s serial=%s: %d row(s) of the log are no punch (for quarantine); first: %s",
                        self._driver.where, self._serial, len(rows), rows[0][1])

    def _download(self, *, fresh: bool = False) -> _Log:
        if self._log is not None and not fresh:
            return self._log
        answer = self._call("GetAttLog", [("PIN", "All")])
        with self._driver._lock:
            self._driver.stats.log_downloads += 1
        user_of = self._pin2_map() if self._quirks.punch_user == "PIN2" else None
        punches: list[RawPunch] = []
        rows_of: list[int] = []
        unreadable: list[tuple[int, str, str]] = []
        for i, row in enumerate(answer.rows):
            punch = codec.punch_from_row(row, user_of)
            if isinstance(punch, str):
                unreadable.append((i, row.raw, punch))
            else:
                punches.append(punch)
                rows_of.append(i)
        self._log = _Log(punches, rows_of, unreadable, len(answer.rows))
        return self._log

    def _user_table(self) -> list[codec.Row]:
        if self._user_rows is None:
            self._user_rows = self._call("GetAllUserInfo").rows
            with self._driver._lock:
                self._driver.stats.user_downloads += 1
        return self._user_rows

    def _pin2_map(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for row in self._user_table():
            pin, pin2 = row.get("PIN"), row.get("PIN2")
            if pin and pin2:
                out[pin] = pin2
        return out

    # -- optional abilities ---------------------------------------------------------------------------
    def read_users(self) -> list[DeviceUser]:
        """The enrolled users (GetAllUserInfo); the user id is PIN, or PIN2 with ``punch_user = "PIN2"``."""
        if self._users is None:
            by_pin2 = self._quirks.punch_user == "PIN2"
            users = [codec.user_from_row(row, by_pin2=by_pin2) for row in self._user_table()]
            self._users = [u for u in users if u is not None]
        return list(self._users)

    def read_user_punches(self, pin: str) -> list[RawPunch]:
        """GetAttLog for one PIN (not used by the poller: the service filters by nothing else)."""
        answer = self._call("GetAttLog", [("PIN", pin)])
        return [p for p in (codec.punch_from_row(r) for r in answer.rows) if not isinstance(p, str)]

    def set_time(self, local_time: datetime) -> None:
        """SetDate to a naive device-local time; the answer's Result must be 1. Never retried."""
        if local_time.tzinfo is not None:
            raise ValueError("set_time takes the device-local wall clock as a naive datetime")
        answer = self._call("SetDate", [("Date", local_time.strftime("%Y-%m-%d")),
                                        ("Time", local_time.strftime("%H:%M:%S"))], retry_raw=False)
        result, info = answer.result()
        if result != 1:
            raise ProtocolError(f"{self._driver.where}: SetDate answered Result={result} ({info[:60]!r})")

    # Enrolment backup/restore/sync (drivers.base.ReadsEnrolments / WritesEnrolments / DeletesEnrolments):
    # drivers/soap/enrol.py.
    def read_enrolments(self, progress: Progress | None = None) -> Enrolments:
        """Every user and fingerprint template (GetAllUserInfo, GetUserTemplate per user), and the algorithm."""
        return enrol.read_enrolments(self, progress)

    def algorithm(self) -> int:
        """The fingerprint algorithm version (GetOption ~ZKFPVersion); 0 = unknown."""
        return enrol.read_algorithm(self)

    def write_users(self, users: Collection[EnrolledUser], progress: EnrolProgress | None = None) -> None:
        """SetUserInfo per user (after DeleteUser when the PIN is there), then RefreshDB."""
        enrol.write_users(self, users, progress)

    def write_templates(self, templates: Collection[Template], owners: Collection[EnrolledUser],
                        progress: EnrolProgress | None = None) -> None:
        """SetUserTemplate per finger, then RefreshDB."""
        enrol.write_templates(self, templates, owners, progress)

    def delete_users(self, uids: Collection[int]) -> None:
        """DeleteUser per user (its fingers go with it), then RefreshDB."""
        enrol.delete_users(self, uids)

    def enable_device(self) -> None:
        """Nothing to do: SOAP never locks the keypad (drivers.base.EnablesDevice, harmless by contract)."""

    def clear_punches(self, expected_records: int | None = None, *,
                      expected: Collection[RawPunch] | None = None) -> None:
        """ClearData value 3 (the attendance log; 1 would wipe the users) after a fresh download proves the
        terminal holds exactly the records the caller stored.

        The log is downloaded again: its punches must be ``expected_records`` in number and exactly the
        multiset ``expected``, and its unreadable rows must all have been reported by an earlier read (the
        poller quarantined them), else Busy. SOAP cannot lock the keypad, so a punch made between this
        download's end and the clear itself (one round trip) would be wiped: docs/drivers/soap.md, "Clearing".
        """
        logged = self._download(fresh=True)
        where = self._driver.where
        if expected_records is not None and len(logged.punches) != expected_records:
            raise Busy(f"{where}: refusing to clear: the terminal holds {len(logged.punches)} records, "
                       f"caller stored {expected_records}; download again first")
        if expected is not None and Counter(logged.punches) != Counter(expected):
            changed = sum((Counter(logged.punches) - Counter(expected)).values())
            raise Busy(f"{where}: refusing to clear: {changed} record(s) on the terminal differ from the ones "
                       "the caller stored; download again first")
        seen = self._driver.unreadable_reported
        bad = Counter((raw, why) for _, raw, why in logged.unreadable)
        if any(seen[k] < 1 for k in bad):
            raise Busy(f"{where}: refusing to clear: the log holds rows that are no punch and were not "
                       "quarantined yet; poll first")
        answer = self._call("ClearData", [("Value", str(codec.CLEAR_ATTENDANCE_LOG))], retry_raw=False)
        self._log = None
        result, info = answer.result()
        if result != 1:
            raise ProtocolError(f"{where}: ClearData answered Result={result} ({info[:60]!r}); the log may "
                                "still be there")
        with self._driver._lock:
            self._driver.stats.clears += 1


__all__ = ["SERIAL_OPTION", "SoapDriver", "SoapParams", "SoapSession", "SoapStats"]
