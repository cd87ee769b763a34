"""Operator configuration: TOML file -> frozen dataclasses, validated once at start.

First stop of the flow: `fpgw run` / `fpgw check-config` call ``load_config(path)``; every other
module receives the resulting ``Config`` (or a part of it) and never reads the file itself.
Errors name the key and say what is wrong (see gateway.configlib). Secrets (comm keys, tokens,
alert URLs) come from environment variables or files, never inline. ``config.example.toml`` at
the top of the repository documents every key; a test loads it so it cannot rot.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import date, time
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from drivers import check_quirks, driver_names
from gateway.configlib import ConfigError, Reader

Transport = Literal["tcp", "udp", "serial"]

_DEVICE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
#: ``driver = "soap"``: the terminal's SOAP web service (drivers.soap); its port defaults to 80, not 4370.
SOAP_DRIVER = "soap"
#: ``driver = "push"``: the terminal calls us (ADMS/"iclock" over HTTP, gateway.push); it is never polled.
PUSH_DRIVER = "push"
#: Serials a push terminal may announce (letters, digits, ``_ -``; the receiver refuses anything else).
PUSH_SERIAL = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
#: ``driver = "serial"``: a clock writing one text line per punch on a serial line or device server
#: (gateway.serial reads it; docs/serial.md); it is never polled.
SERIAL_DRIVER = "serial"
#: Drivers whose terminals have enrolments the gateway backs up, restores and keeps in step (docs/enrolment.md):
#: ZK and SOAP through their protocol, push terminals through what they upload and the command queue.
#: Serial clocks hold no users or fingerprints the gateway can read.
ENROLMENT_DRIVERS = ("zk", SOAP_DRIVER, PUSH_DRIVER)
#: The most poll worker threads one gateway runs (polling.pool_size); past it, more threads only queue on the GIL.
POOL_SIZE_MAX = 128


@dataclass(frozen=True)
class SiteConfig:
    """The office (SKPD/OPD) this gateway serves."""

    #: SKPD/OPD code as used by BKD (e.g. "1801.01.02"); travels with every punch.
    office_code: str
    #: Human-readable office name.
    office_name: str = ""
    #: Default IANA zone of the office's devices: Asia/Jakarta (WIB), Asia/Makassar (WITA), Asia/Jayapura (WIT).
    timezone: str = "Asia/Jakarta"
    #: Where the SQLite database, backups and runtime files live.
    state_dir: Path = Path("state")


@dataclass(frozen=True)
class DatabaseConfig:
    """Where punches are stored."""

    #: SQLAlchemy URL. Empty: SQLite file ``<state_dir>/fpgw.db``. PostgreSQL: ``postgresql+psycopg://...``.
    url: str
    #: Run pending migrations at start (under a lock). Turn off on a central server migrated by hand.
    auto_migrate: bool = True


@dataclass(frozen=True)
class PollingConfig:
    """How devices are polled (defaults for every device)."""

    #: Seconds between polls of one device.
    interval_s: float = 300.0
    #: Socket timeout for one device operation.
    timeout_s: float = 10.0
    #: Upper bound for one whole poll (connect + download); a poll running longer counts as hung.
    poll_deadline_s: float = 300.0
    #: Worker threads polling devices at the same time (not one per device: a steady poll is short, so a small
    #: pool serves many terminals; docs/operate.md "Sizing" has the arithmetic and the measurements).
    pool_size: int = 32
    #: Download the full log at least this often even if the record count did not change.
    full_reconcile_s: float = 86400.0
    #: Read the device clock (skew, clock correction) at most this often, and whenever the whole log is read;
    #: the polls in between skip that request (one round trip less per poll).
    clock_check_s: float = 300.0
    #: Longest wait between probes of a failing device (backoff grows x1.5 up to this).
    backoff_max_s: float = 1800.0
    #: On SIGTERM, wait this long for in-flight polls before abandoning them.
    shutdown_deadline_s: float = 20.0
    #: Clear a device's log after a full poll once records/capacity reaches this (0 = never), but only
    #: after every record read is verified stored (and accepted upstream when clear_requires_forwarded).
    clear_when_full_ratio: float = 0.0
    #: With forwarding on, clear a terminal (policy or `fpgw devices clear`) only once BKD accepted all of its
    #: punches. False (default): stored durably in the office database is enough, so a full terminal is not
    #: kept refusing punches while BKD is down; the office database is then the only copy until forwarded.
    clear_requires_forwarded: bool = False


@dataclass(frozen=True)
class SerialLineConfig:
    """How a serial-line clock (``driver = "serial"``) is reached and read; docs/serial.md."""

    #: A local port (``/dev/ttyUSB0``, better ``/dev/serial/by-id/...``) or a device server URL
    #: (``socket://10.0.0.5:4001``, ``rfc2217://10.0.0.5:4001``): the ``port`` or ``url`` key.
    url: str
    #: Line settings (ignored by socket:// device servers, which are set up in their own web page).
    baud: int = 9600
    bytesize: int = 8
    #: none, even, odd, mark or space.
    parity: str = "none"
    stopbits: float = 1
    #: A preset (zk_attlog, giga_tms, acroprint, ct101) or "custom" (line_pattern or line_template + time_format).
    line_format: str = "zk_attlog"
    #: Custom format: a regular expression with named groups, or a ``{field}`` template (one of the two).
    line_pattern: str = ""
    line_template: str = ""
    #: Custom format: strftime-like layout of the time (%Y %y %m %d %H %M %S), e.g. "%d/%m/%Y %H:%M".
    time_format: str = ""
    #: The clock's machine number: lines naming another machine are quarantined (None: not checked).
    machine: str | None = None
    #: Longest line kept whole; longer ones are quarantined cut off.
    max_line_bytes: int = 512
    #: Longest wait between reconnect attempts of a missing port or device server (back-off doubles up to it).
    reconnect_max_s: float = 30.0
    #: Noise bytes (NUL, 0xFF, control bytes: framing errors, interference) per minute above which one
    #: warning is logged (and one line when it is quiet again).
    noise_warn_per_min: int = 32


@dataclass(frozen=True)
class DeviceConfig:
    """One terminal."""

    #: Short stable id used in logs, CLI and metrics (letters, digits, ``_ . -``).
    id: str
    #: Human-readable name ("Lobby, ground floor").
    name: str
    #: IP address or host name.
    address: str
    port: int = 4370
    transport: Transport = "tcp"
    #: Driver name, looked up in ``drivers.DRIVERS`` ("zk": ZKTeco binary protocol, port 4370; "soap": the
    #: SOAP web service, port 80 by default).
    driver: str = "zk"
    #: Comm key (numeric password) from ``comm_key_env`` / ``comm_key_file``; 0 when the device has none.
    comm_key: int = field(default=0, repr=False)
    #: Expected serial number; when set, a device answering with another serial is not polled.
    serial: str | None = None
    interval_s: float = 300.0
    timeout_s: float = 10.0
    #: IANA zone of this device's clock (defaults to the site's).
    timezone: str = "Asia/Jakarta"
    #: Poll it at all (false keeps history but stops polling).
    enabled: bool = True
    #: Driver workarounds, e.g. ``{record_size = 40, disable_while_reading = false}``.
    quirks: Mapping[str, Any] = field(default_factory=dict)
    #: Free-text location, shown on the status page.
    location: str = ""
    #: Date the terminal was installed; earlier punches are kept but flagged ``before_device``.
    installed_on: date | None = None
    #: polling.clear_when_full_ratio for this device (0 = never clear it automatically).
    clear_when_full_ratio: float = 0.0
    #: Push terminals only: the ``pushcommkey`` the terminal must send (from ``push_key_env`` /
    #: ``push_key_file``); None = not checked.
    push_key: str | None = field(default=None, repr=False)
    #: Serial-line clocks only (driver = "serial"): port and line format. ``address`` then holds the port or
    #: URL and ``port`` the baud rate (what `fpgw devices` shows), ``transport`` is "serial".
    serial_line: SerialLineConfig | None = None

    @property
    def pushes(self) -> bool:
        """True for a terminal that calls the gateway (driver = "push") instead of being polled."""
        return self.driver == PUSH_DRIVER

    @property
    def reads_serial(self) -> bool:
        """True for a serial-line clock (driver = "serial"): gateway.serial reads it; it is never polled."""
        return self.driver == SERIAL_DRIVER


@dataclass(frozen=True)
class LoggingConfig:
    """Log output."""

    #: auto (console on a TTY, journal under systemd, JSON otherwise), console, json or journal.
    format: Literal["auto", "console", "json", "journal"] = "auto"
    level: Literal["debug", "info", "warning", "error"] = "info"


@dataclass(frozen=True)
class EmployeesConfig:
    """Mapping from device user ids (PIN) to employee ids (NIP)."""

    #: CSV with header ``device_user_id,employee_id`` (optional column ``serial`` for per-device PINs).
    mapping_csv: Path | None = None


@dataclass(frozen=True)
class WorkingHoursConfig:
    """When punches are expected (used by the silent-device check and the daily report)."""

    start: time = time(6, 30)
    end: time = time(17, 30)
    #: ISO weekdays (1 = Monday ... 7 = Sunday).
    days: tuple[int, ...] = (1, 2, 3, 4, 5)


@dataclass(frozen=True)
class HealthConfig:
    """Device health model thresholds."""

    #: A device is offline after this many failed polls in a row ...
    offline_after_failures: int = 3
    #: ... and no good poll for this long (0 = 3 x the device's interval).
    offline_after_s: float = 0.0
    #: Clock skew (device vs server) that raises a problem.
    clock_skew_warn_s: float = 120.0
    #: Record/user storage used ratio for a warning and for a critical alert.
    capacity_warn_ratio: float = 0.80
    capacity_critical_ratio: float = 0.95
    #: Reachable but no new punch during working hours for this long = "silent device".
    silent_after_s: float = 4 * 3600.0
    working_hours: WorkingHoursConfig = field(default_factory=WorkingHoursConfig)
    #: Set the device clock when skew exceeds ``clock_correct_above_s`` (logged when done).
    clock_correct: bool = False
    clock_correct_above_s: float = 60.0
    #: Free space (MB) on the SQLite database's filesystem below which the gateway raises disk_nearly_full
    #: (checked by the health sweep; 0 = off).
    disk_free_min_mb: int = 1024


@dataclass(frozen=True)
class AlertsConfig:
    """Where alerts go besides the log."""

    #: apprise URLs (tgram://, mailtos://, json://, form:// for WhatsApp gateways...), from env or file.
    urls: tuple[str, ...] = field(default=(), repr=False)
    #: Plain JSON webhooks (POSTed the alert document), from env or file.
    webhooks: tuple[str, ...] = field(default=(), repr=False)
    #: Repeat an open problem's alert this often (0 = never).
    reminder_s: float = 86400.0
    #: Give up delivering one alert after this many attempts.
    max_attempts: int = 8


@dataclass(frozen=True)
class HttpConfig:
    """The built-in HTTP server: status page, JSON, /metrics, and (central mode) the API."""

    enabled: bool = True
    listen: str = "127.0.0.1"
    port: int = 8470
    #: Token required from clients that are not on loopback (from env or file).
    status_token: str | None = field(default=None, repr=False)
    #: Serve HTTPS with this certificate (PEM, chain included) and private key; both or neither.
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    #: A request must arrive whole (headers and body) within this time, or the connection is closed.
    request_timeout_s: float = 30.0
    #: Open connections beyond this get 503 at once.
    max_connections: int = 200


@dataclass(frozen=True)
class ForwardConfig:
    """Forwarding of punches and device health to the central (BKD) instance."""

    #: Base URL of the central instance, e.g. https://absensi.bkd.example.go.id ; empty = no forwarding.
    url: str = ""
    #: This gateway's bearer token (from env or file).
    token: str | None = field(default=None, repr=False)
    batch_size: int = 500
    interval_s: float = 30.0
    backoff_initial_s: float = 5.0
    backoff_max_s: float = 3600.0
    #: While the upstream cannot be reached (timeout, connection failure, HTTP 5xx, unusable answer) a failed
    #: try is repeated after at most this long, so the forwarder notices the link is back within it
    #: (backoff_max_s caps the back-off after refusals: 401/403/429 and other HTTP errors).
    outage_retry_max_s: float = 60.0
    timeout_s: float = 30.0
    #: Alert when the oldest unforwarded punch is older than this.
    alert_after_s: float = 6 * 3600.0
    #: CA bundle for a private upstream certificate (empty = system CAs).
    ca_file: str = ""
    #: Device health goes upstream this often (and at start); it is also the only contact an idle
    #: gateway makes, so keep it well below the centre's central.gateway_silent_after_s.
    health_interval_s: float = 300.0
    #: Allow an http:// url to a host other than this machine (the token and punches travel in clear text).
    allow_plain_http: bool = False


@dataclass(frozen=True)
class CentralConfig:
    """Central mode: receive batches from gateways and serve the BKD pull API."""

    enabled: bool = False
    #: TOML file of gateway tokens -> office code (see docs/bkd-api.md, token management), read at start.
    gateway_tokens_file: Path | None = None
    #: File of BKD API tokens with optional office scopes.
    api_tokens_file: Path | None = None
    #: Largest accepted request body.
    max_body_bytes: int = 5 * 1024 * 1024
    #: Largest number of punches in one batch.
    max_batch: int = 5000
    #: An office gateway whose last contact (punch batch or health report) is older than this counts as
    #: silent: one alert, reminders every alerts.reminder_s, one recovery alert when it reports again.
    gateway_silent_after_s: float = 7200.0
    #: ``[central.upstream]``: this central is a tier (a regency) that forwards every punch it stores - from
    #: its offices and its own terminals - to an upper tier (province or national; docs/tiers.md). Same keys
    #: and meaning as ``[forward]``, whose place it takes: parse_config also puts it in Config.forward, so the
    #: one forwarder, outbox and `fpgw forward` commands serve it. None = not forwarded upstream.
    upstream: ForwardConfig | None = None


@dataclass(frozen=True)
class RetentionConfig:
    """``[retention]``: monthly partitions of the punches table and their archive (PostgreSQL only).

    On PostgreSQL ``punches`` is partitioned by month (migration 0011_partitions; gateway.store.partitions,
    docs/scale-out.md). The daemon's maintenance job (gateway.retention) keeps partitions ahead of the calendar
    and, only when ``archive_after_months`` is set, exports old months to compressed files, verifies them and
    drops them. A SQLite database has no partitions; there the job does nothing.
    """

    #: Partitions exist for the current month and this many after it (a month without one still takes inserts:
    #: they land in the default partition until the job creates the month and moves them).
    months_ahead: int = 3
    #: Archive and drop the months that ended at least this many months before the current one. 0 = never
    #: (the default): punches are kept for ever.
    archive_after_months: int = 0
    #: Where archived months go (``punches_YYYY_MM.csv.gz`` + ``.manifest.json``); default
    #: ``<site.state_dir>/archive``. Copy these files to backup storage: they are the only copy once dropped.
    archive_dir: Path = Path("state") / "archive"
    #: How often the job runs.
    check_every_s: float = 3600.0


@dataclass(frozen=True)
class PushConfig:
    """The ADMS/PUSH receiver (gateway.push): terminals with ``driver = "push"`` call it over HTTP."""

    #: Serve the receiver at all (on by default when a push device is configured).
    enabled: bool = True
    #: Address and port the terminals call ("Cloud server" / ADMS address in the terminal menu).
    listen: str = "0.0.0.0"
    port: int = 8081
    #: Serve HTTPS with this certificate and key (both or neither); many terminals only speak HTTP.
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    #: Told to terminals in the handshake: seconds between their command polls (getrequest) ...
    delay_s: int = 10
    #: ... and seconds to wait before retrying after a failed call.
    error_delay_s: int = 30
    #: A push terminal that has not called for this long counts as not answering (offline after
    #: health.offline_after_failures such checks, one per sweep).
    offline_after_s: float = 300.0
    #: Largest request body accepted (bigger uploads get 413; the terminal sends smaller batches).
    max_body_bytes: int = 2 * 1024 * 1024
    #: Most lines in one upload.
    max_lines: int = 20000
    #: Requests per second one terminal may make (a burst of 4x is allowed); beyond: 503, retried later.
    rate_per_device: float = 20.0
    #: A command a terminal has not answered within this time is reported as timed out.
    command_timeout_s: float = 900.0
    #: A request must arrive whole within this time (slow clients are cut off).
    request_timeout_s: float = 30.0
    #: Open connections beyond this get 503 at once.
    max_connections: int = 500


@dataclass(frozen=True)
class ImportConfig:
    """USB-stick exports dropped into a folder the daemon watches (gateway.usbimport, docs/usb-import.md)."""

    #: Watch the folder at all (`fpgw import usb` works either way).
    enabled: bool = False
    #: The drop folder (default ``<site.state_dir>/import``); done/ and failed/ are made inside it.
    folder: Path = Path("state") / "import"
    #: Seconds between two looks at the folder; a file is imported once it did not change between two looks.
    scan_every_s: float = 5.0


@dataclass(frozen=True)
class EnrolConfig:
    """Enrolment backup and restore (gateway.enrol, docs/enrolment.md): users and fingerprint templates.

    The key that encrypts templates and passwords is never in this file or the database: ``key_file`` names
    a file holding it (made by ``fpgw enrol new-key``), read only when a backup or restore needs it.
    """

    #: File with the current key (base64 text, one line). None: the systemd credential ``enrol.key``
    #: ($CREDENTIALS_DIRECTORY/enrol.key, from ``LoadCredential=enrol.key:/etc/fpgw/enrol.key``) when present.
    key_file: Path | None = None
    #: Earlier keys, still read to decrypt backups made with them (key rotation: ``fpgw enrol rotate-key``).
    old_key_files: tuple[Path, ...] = ()
    #: The daemon backs every polled terminal up once a day at this office-local time (outside working hours).
    daily: bool = True
    backup_at: time = time(2, 30)
    #: Longest one terminal's backup or restore may take (the session deadline), seconds.
    timeout_s: float = 600.0
    #: A terminal whose user count fell by this share since its previous backup gets a notice (factory reset?).
    drop_warn_ratio: float = 0.2
    #: Keep an office's terminals in step (gateway/enrol/sync.py): a user enrolled on one terminal is copied to
    #: the other terminals of its group, after the daily backup and with ``fpgw enrol sync``.
    sync: bool = False
    #: Groups of device ids kept in step. Empty: every enabled ZK, SOAP and push terminal forms one group
    #: (terminals of another fingerprint algorithm version get the users without templates).
    sync_groups: tuple[tuple[str, ...], ...] = ()
    #: Propagate a delete (a user the previous sync saw on a terminal, gone from it now) to the group.
    sync_deletes: bool = False
    #: Incremental backups: read the user table and the counts, and the templates only of users new since the
    #: previous backup (the others carried over), when that is cheaper than the whole template table.
    incremental: bool = True
    #: A full backup (every template read) at least this often, seconds; 0: every backup is full.
    full_every_s: float = 7 * 86400.0


@dataclass(frozen=True)
class Config:
    """The whole validated configuration."""

    site: SiteConfig
    database: DatabaseConfig
    polling: PollingConfig
    devices: tuple[DeviceConfig, ...]
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    employees: EmployeesConfig = field(default_factory=EmployeesConfig)
    health: HealthConfig = field(default_factory=HealthConfig)
    alerts: AlertsConfig = field(default_factory=AlertsConfig)
    http: HttpConfig = field(default_factory=HttpConfig)
    forward: ForwardConfig = field(default_factory=ForwardConfig)
    central: CentralConfig = field(default_factory=CentralConfig)
    push: PushConfig = field(default_factory=PushConfig)
    #: ``[import]``: the USB-export drop folder.
    usb_import: ImportConfig = field(default_factory=ImportConfig)
    #: ``[enrol]``: enrolment backup and restore.
    enrol: EnrolConfig = field(default_factory=EnrolConfig)
    #: ``[retention]``: monthly punch partitions and their archive (PostgreSQL).
    retention: RetentionConfig = field(default_factory=RetentionConfig)
    #: Where the config was read from (for messages).
    source: Path | None = None

    def secrets(self) -> list[object]:
        """Every credential this config holds (gateway.logs.register_secrets blanks them in log lines)."""
        out: list[object] = [self.forward.token, self.http.status_token, *self.alerts.urls, *self.alerts.webhooks]
        out += [d.comm_key for d in self.devices if d.comm_key]
        out += [d.push_key for d in self.devices if d.push_key]
        return out

    def device(self, device_id: str) -> DeviceConfig:
        """The device with this id (KeyError when unknown)."""
        for dev in self.devices:
            if dev.id == device_id:
                return dev
        raise KeyError(device_id)


# -------------------------------------------------------------------------------------------------


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read and validate a TOML config file; raises ConfigError listing every problem."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise ConfigError([f"cannot read {p}: {exc.strerror or exc}"], str(p)) from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError([f"not UTF-8 text: {exc}"], str(p)) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"TOML syntax error: {exc}"], str(p)) from None
    return parse_config(data, base_dir=p.resolve().parent, source=p)


def parse_config(data: Mapping[str, Any], *, base_dir: Path | None = None,
                 source: Path | None = None) -> Config:
    """Validate an already-parsed TOML document (tests and `fpgw demo` build configs this way)."""
    problems: list[str] = []
    base_dir = base_dir or Path.cwd()
    top = Reader(data, "", problems)

    site = _parse_site(top.table("site"), base_dir)
    database = _parse_database(top.table("database"), site)
    polling = _parse_polling(top.table("polling"))
    devices = _parse_devices(top, site, polling, base_dir)
    logging_cfg = _parse_logging(top.table("logging"))
    employees = _parse_employees(top.table("employees"), base_dir)
    health = _parse_health(top.table("health"))
    alerts = _parse_alerts(top.table("alerts"), base_dir)
    http = _parse_http(top.table("http"), base_dir)
    forward = _parse_forward(top.table("forward"), base_dir)
    central = _parse_central(top.table("central"), base_dir)
    if central.upstream is not None:
        # A tier forwards through [central.upstream]: it IS this daemon's forwarding (docs/tiers.md).
        if forward.url:
            top.problem("forward", "[forward] url and [central.upstream] url are both set: a central forwards "
                                   "everything it stores through [central.upstream]; remove [forward] url")
        elif not central.enabled:
            top.problem("central", "[central.upstream] is set but [central] enabled is not true: an office "
                                   "gateway forwards with [forward]")
        forward = central.upstream
    push = _parse_push(top.table("push"), base_dir)
    usb_import = _parse_import(top.table("import"), site, base_dir)
    enrol = _parse_enrol(top.table("enrol"), base_dir, devices)
    retention = _parse_retention(top.table("retention"), site, base_dir)
    top.done()

    if problems:
        raise ConfigError(problems, str(source) if source else "")
    return Config(site=site, database=database, polling=polling, devices=tuple(devices),
                  logging=logging_cfg, employees=employees, health=health, alerts=alerts, http=http,
                  forward=forward, central=central, push=push, usb_import=usb_import, enrol=enrol,
                  retention=retention, source=source)


def _default_state_dir() -> Path:
    # systemd's StateDirectory= exports this; elsewhere a local folder keeps a newcomer's try-out tidy.
    env = os.environ.get("STATE_DIRECTORY")
    return Path(env.split(":")[0]) if env else Path("state")


def _parse_site(r: Reader, base_dir: Path) -> SiteConfig:
    office_code = r.text("office_code", allow_empty=False)
    office_name = r.text("office_name", "")
    tz = r.timezone("timezone", "Asia/Jakarta")
    state_dir_raw = r.text("state_dir", "")
    r.done()
    if state_dir_raw:
        state_dir = Path(os.path.expandvars(state_dir_raw)).expanduser()
        if not state_dir.is_absolute():
            state_dir = base_dir / state_dir
    else:
        state_dir = _default_state_dir()
        if not state_dir.is_absolute():
            state_dir = base_dir / state_dir
    return SiteConfig(office_code=office_code, office_name=office_name, timezone=tz, state_dir=state_dir)


def _parse_database(r: Reader, site: SiteConfig) -> DatabaseConfig:
    url = r.text("url", "")
    url_env = r.text("url_env", "")
    auto = r.flag("auto_migrate", True)
    r.done()
    if url_env:
        if url:
            r.problem("url_env", "set only one of url and url_env")
        url = os.environ.get(url_env, "")
        if not url:
            r.problem("url_env", f"environment variable {url_env} is not set")
    if not url:
        url = f"sqlite:///{site.state_dir / 'fpgw.db'}"
    elif not (url.startswith("sqlite") or url.startswith("postgresql")):
        r.problem("url", "only sqlite:///path and postgresql+psycopg://user@host/db URLs are supported")
    elif url.startswith("postgresql://") or url.startswith("postgresql+psycopg2"):
        # psycopg 3 is the driver we ship; spell it out so the URL does not depend on defaults.
        url = "postgresql+psycopg://" + url.split("://", 1)[1]
    return DatabaseConfig(url=url, auto_migrate=auto)


def _parse_polling(r: Reader) -> PollingConfig:
    cfg = PollingConfig(
        interval_s=r.duration_s("interval_s", 300.0, min=5),
        timeout_s=r.duration_s("timeout_s", 10.0, min=0.5),
        poll_deadline_s=r.duration_s("poll_deadline_s", 300.0, min=5),
        pool_size=r.integer("pool_size", 32, min=1, max=POOL_SIZE_MAX),
        full_reconcile_s=r.duration_s("full_reconcile_s", 86400.0, min=60),
        clock_check_s=r.duration_s("clock_check_s", 300.0, min=0),
        backoff_max_s=r.duration_s("backoff_max_s", 1800.0, min=5),
        shutdown_deadline_s=r.duration_s("shutdown_deadline_s", 20.0, min=1),
        clear_when_full_ratio=_clear_ratio(r, 0.0),
        clear_requires_forwarded=r.flag("clear_requires_forwarded", False),
    )
    r.done()
    return cfg


def _parse_devices(top: Reader, site: SiteConfig, polling: PollingConfig, base_dir: Path) -> list[DeviceConfig]:
    devices: list[DeviceConfig] = []
    seen_ids: set[str] = set()
    seen_addr: set[tuple[str, int, str]] = set()
    for r in top.tables("devices"):
        dev_id = r.text("id", allow_empty=False)
        if dev_id and not _DEVICE_ID.match(dev_id):
            r.problem("id", f"{dev_id!r} must be 1-64 letters, digits, '_', '.' or '-' (no spaces)")
        if dev_id in seen_ids:
            r.problem("id", f"duplicate device id {dev_id!r}")
        seen_ids.add(dev_id)
        driver = r.text("driver", "zk", choices=(*driver_names(), PUSH_DRIVER, SERIAL_DRIVER))
        pushes = driver == PUSH_DRIVER
        serial_line = _parse_serial_line(r) if driver == SERIAL_DRIVER else None
        transport: Transport
        if serial_line is not None:
            address, port, transport = serial_line.url, serial_line.baud, "serial"
        else:
            # A push terminal calls us from whatever address it has: its address is informational.
            address = r.text("address", "", allow_empty=True) if pushes else r.text("address", allow_empty=False)
            port = r.integer("port", 80 if driver == SOAP_DRIVER else 4370, min=1, max=65535)
            transport = r.text("transport", "tcp", choices=("tcp", "udp"))
            if driver == SOAP_DRIVER and transport != "tcp":
                r.problem("transport", "a SOAP terminal is reached over HTTP (TCP): leave transport out")
        push_key = r.secret("push_key", base_dir=base_dir) if pushes else None
        key_text = r.secret("comm_key", base_dir=base_dir)
        comm_key = 0
        if key_text is not None:
            if not key_text.isdigit() or int(key_text) > 999999:
                r.problem("comm_key_env" if r.data.get("comm_key_env") else "comm_key_file",
                          "the comm key must be a number from 0 to 999999 (device menu: COMM > Comm Key)")
            else:
                comm_key = int(key_text)
        serial = r.text("serial", None)
        interval = r.duration_s("interval_s", polling.interval_s, min=5)
        timeout = r.duration_s("timeout_s", polling.timeout_s, min=0.5)
        tz = r.timezone("timezone", site.timezone)
        enabled = r.flag("enabled", True)
        if pushes and not (serial and PUSH_SERIAL.match(serial)):
            r.problem("serial", "a push terminal is known by its serial number: set serial = \"...\" (letters, "
                                "digits, '_' or '-'; menu: System Info > Device Info)")
        quirks = r.raw("quirks", {})
        if (pushes or serial_line) and quirks:
            r.problem("quirks", f"{driver} devices have no driver workarounds")
            quirks = {}
        elif not isinstance(quirks, Mapping):
            r.problem("quirks", "must be a table, e.g. quirks = { record_size = 40 }")
            quirks = {}
        else:
            problem = check_quirks(driver, quirks) if quirks else None
            if problem:
                r.problem("quirks", problem)
        location = r.text("location", "")
        name = r.text("name", dev_id)
        installed_on = _parse_date(r, "installed_on")
        clear_ratio = _clear_ratio(r, polling.clear_when_full_ratio)
        r.done()
        if serial_line is not None:
            if (address, 0, transport) in seen_addr:
                r.problem("port" if r.data.get("port") else "url", f"another device already reads {address}")
            seen_addr.add((address, 0, transport))
        elif not pushes:
            if (address, port, transport) in seen_addr:
                r.problem("address", f"another device already uses {address}:{port}/{transport}")
            seen_addr.add((address, port, transport))
        devices.append(DeviceConfig(id=dev_id, name=name or dev_id, address=address, port=port,
                                    transport=transport, driver=driver, comm_key=comm_key,
                                    serial=serial or None, interval_s=interval, timeout_s=timeout,
                                    timezone=tz, enabled=enabled, quirks=dict(quirks), location=location,
                                    installed_on=installed_on, clear_when_full_ratio=clear_ratio,
                                    push_key=push_key or None, serial_line=serial_line))
    serials = [d.serial.lower() for d in devices if d.pushes and d.serial]
    for dup in sorted({x for x in serials if serials.count(x) > 1}):
        top.problem("devices", f"two push devices have the serial {dup!r} (serials compare case-insensitively)")
    return devices


def _parse_serial_line(r: Reader) -> SerialLineConfig:
    """The keys of a serial-line clock (driver = "serial"); the line format is compiled here once to check it."""
    from drivers.serial import formats
    from drivers.serial import port as serial_port

    path, url = r.text("port", ""), r.text("url", "")
    if bool(path) == bool(url):
        r.problem("port", "a serial clock needs exactly one of port = \"/dev/ttyUSB0\" (a local port; better "
                          "/dev/serial/by-id/...) or url = \"socket://host:port\" / \"rfc2217://host:port\" "
                          "(a device server)")
    elif url and not url.startswith(serial_port.URL_SCHEMES):
        r.problem("url", f"must start with socket:// or rfc2217://, got {url!r}")
    elif path and not path.startswith("/"):
        r.problem("port", f"must be a device path like /dev/ttyUSB0 or /dev/serial/by-id/..., got {path!r}")
    elif len(path or url) > 200:
        r.problem("port" if path else "url", "must be at most 200 characters")
    baud = r.integer("baud", 9600, min=1)
    if baud not in serial_port.BAUDS:
        r.problem("baud", f"must be one of {', '.join(map(str, serial_port.BAUDS))}, got {baud}")
    stopbits = r.number("stopbits", 1, min=1, max=2)
    if stopbits not in serial_port.STOPBITS:
        r.problem("stopbits", f"must be 1, 1.5 or 2, got {stopbits}")
    machine = r.raw("machine", None)
    if machine is not None and not (isinstance(machine, (int, str)) and not isinstance(machine, bool)
                                    and str(machine).strip()):
        r.problem("machine", f"must be the clock's machine number, e.g. 1, got {machine!r}")
        machine = None
    cfg = SerialLineConfig(
        url=path or url, baud=baud, bytesize=r.integer("bytesize", 8, min=5, max=8),
        parity=r.text("parity", "none", choices=tuple(serial_port.PARITIES)), stopbits=float(stopbits),
        line_format=r.text("line_format", "custom" if r.data.get("line_pattern") or r.data.get("line_template")
                           else "zk_attlog", choices=(*formats.PRESETS, "custom")),
        line_pattern=r.text("line_pattern", ""), line_template=r.text("line_template", ""),
        time_format=r.text("time_format", ""), machine=None if machine is None else str(machine).strip(),
        max_line_bytes=r.integer("max_line_bytes", 512, min=32, max=8192),
        reconnect_max_s=r.duration_s("reconnect_max_s", 30.0, min=1),
        noise_warn_per_min=r.integer("noise_warn_per_min", 32, min=1, max=1_000_000))
    try:
        formats.configured_format(cfg.line_format, pattern=cfg.line_pattern, template=cfg.line_template,
                                  time_format=cfg.time_format)
    except formats.LineFormatError as exc:
        r.problem("line_pattern" if cfg.line_pattern else "line_template" if cfg.line_template else "line_format",
                  str(exc))
    return cfg


def _clear_ratio(r: Reader, default: float) -> float:
    """clear_when_full_ratio: 0 (never) or a fill ratio from 0.1 to 1 (a tiny ratio would clear on every poll)."""
    value = r.number("clear_when_full_ratio", default, min=0.0, max=1.0)
    if value is None:
        return default
    if 0 < value < 0.1:
        r.problem("clear_when_full_ratio", f"must be 0 (never) or between 0.1 and 1, got {value}")
    return float(value)


def _parse_date(r: Reader, name: str) -> date | None:
    value = r.raw(name, None)
    if value is None or value == "":
        return None
    if isinstance(value, date) and not hasattr(value, "hour"):
        return value
    if isinstance(value, str):
        try:
            return date.fromisoformat(value)
        except ValueError:
            pass
    r.problem(name, f"must be a date like 2021-03-15, got {value!r}")
    return None


def _parse_logging(r: Reader) -> LoggingConfig:
    cfg = LoggingConfig(format=r.text("format", "auto", choices=("auto", "console", "json", "journal")),
                        level=r.text("level", "info", choices=("debug", "info", "warning", "error")))
    r.done()
    return cfg


def _parse_employees(r: Reader, base_dir: Path) -> EmployeesConfig:
    path_text = r.text("mapping_csv", "")
    r.done()
    if not path_text:
        return EmployeesConfig()
    path = Path(os.path.expandvars(path_text)).expanduser()
    if not path.is_absolute():
        path = base_dir / path
    if not path.is_file():
        r.problem("mapping_csv", f"file {str(path)!r} does not exist")
    return EmployeesConfig(mapping_csv=path)


def _parse_time(r: Reader, name: str, default: time) -> time:
    text = r.text(name, default.strftime("%H:%M"))
    try:
        return time.fromisoformat(text)
    except (TypeError, ValueError):
        r.problem(name, f"must be a time of day like \"07:30\", got {text!r}")
        return default


def _parse_health(r: Reader) -> HealthConfig:
    wh = r.table("working_hours")
    working = WorkingHoursConfig(start=_parse_time(wh, "start", time(6, 30)),
                                 end=_parse_time(wh, "end", time(17, 30)),
                                 days=tuple(wh.raw("days", [1, 2, 3, 4, 5])))
    if not all(isinstance(d, int) and 1 <= d <= 7 for d in working.days):
        wh.problem("days", "must be a list of ISO weekdays 1 (Monday) .. 7 (Sunday)")
    wh.done()
    cfg = HealthConfig(
        offline_after_failures=r.integer("offline_after_failures", 3, min=1, max=100),
        offline_after_s=r.duration_s("offline_after_s", 0.0),
        clock_skew_warn_s=r.duration_s("clock_skew_warn_s", 120.0, min=1),
        capacity_warn_ratio=r.number("capacity_warn_ratio", 0.80, min=0.1, max=1.0),
        capacity_critical_ratio=r.number("capacity_critical_ratio", 0.95, min=0.1, max=1.0),
        silent_after_s=r.duration_s("silent_after_s", 4 * 3600.0, min=60),
        working_hours=working,
        clock_correct=r.flag("clock_correct", False),
        clock_correct_above_s=r.duration_s("clock_correct_above_s", 60.0, min=1),
        disk_free_min_mb=r.integer("disk_free_min_mb", 1024, min=0, max=10_000_000),
    )
    if cfg.capacity_warn_ratio > cfg.capacity_critical_ratio:
        r.problem("capacity_warn_ratio", "must not be above capacity_critical_ratio")
    r.done()
    return cfg


def _secret_list(r: Reader, name: str, base_dir: Path) -> tuple[str, ...]:
    # One URL per line in the file / whitespace-separated in the variable.
    text = r.secret(name, base_dir=base_dir)
    if not text:
        return ()
    return tuple(line.strip() for line in text.split() if line.strip() and not line.startswith("#"))


def _parse_alerts(r: Reader, base_dir: Path) -> AlertsConfig:
    cfg = AlertsConfig(
        urls=_secret_list(r, "urls", base_dir),
        webhooks=_secret_list(r, "webhooks", base_dir),
        reminder_s=r.duration_s("reminder_s", 86400.0),
        max_attempts=r.integer("max_attempts", 8, min=1, max=1000),
    )
    r.done()
    return cfg


def _parse_http(r: Reader, base_dir: Path) -> HttpConfig:
    cfg = HttpConfig(
        enabled=r.flag("enabled", True),
        listen=r.text("listen", "127.0.0.1", allow_empty=False),
        port=r.integer("port", 8470, min=0, max=65535),
        status_token=r.secret("status_token", base_dir=base_dir),
        tls_cert_file=_optional_path(r, "tls_cert_file", base_dir),
        tls_key_file=_optional_path(r, "tls_key_file", base_dir),
        request_timeout_s=r.duration_s("request_timeout_s", 30.0, min=1),
        max_connections=r.integer("max_connections", 200, min=1, max=100_000),
    )
    _check_tls_pair(r, cfg.tls_cert_file, cfg.tls_key_file)
    r.done()
    return cfg


def _parse_forward(r: Reader, base_dir: Path) -> ForwardConfig:
    url = r.text("url", "")
    allow_plain_http = r.flag("allow_plain_http", False)
    if url and not (url.startswith("https://") or url.startswith("http://")):
        r.problem("url", f"must start with https:// (or http:// on a trusted network), got {url!r}")
    elif url.startswith("http://") and not allow_plain_http and not _loopback_url(url):
        r.problem("url", f"{url!r} would send this gateway's token and punches in clear text: use https://, or set "
                         f"allow_plain_http = true in [{r.path}] if this network is trusted")
    token = r.secret("token", base_dir=base_dir)
    if url and not token:
        r.problem("token_env", "forwarding needs this gateway's token (token_env or token_file)")
    cfg = ForwardConfig(
        url=url.rstrip("/"),
        token=token,
        batch_size=r.integer("batch_size", 500, min=1, max=10000),
        interval_s=r.duration_s("interval_s", 30.0, min=1),
        backoff_initial_s=r.duration_s("backoff_initial_s", 5.0, min=0.1),
        backoff_max_s=r.duration_s("backoff_max_s", 3600.0, min=1),
        outage_retry_max_s=r.duration_s("outage_retry_max_s", 60.0, min=1),
        timeout_s=r.duration_s("timeout_s", 30.0, min=1),
        alert_after_s=r.duration_s("alert_after_s", 6 * 3600.0, min=60),
        ca_file=r.text("ca_file", ""),
        health_interval_s=r.duration_s("health_interval_s", 300.0, min=30),
        allow_plain_http=allow_plain_http,
    )
    r.done()
    return cfg


def _loopback_url(url: str) -> bool:
    """True when the URL's host is this machine (localhost, 127.0.0.0/8, ::1)."""
    host = (urlsplit(url).hostname or "").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_tls_pair(r: Reader, cert: Path | None, key: Path | None) -> None:
    """A listener's HTTPS files: both or neither, and each one present (the status server and the push receiver)."""
    if (cert is None) != (key is None):
        r.problem("tls_key_file" if key is None else "tls_cert_file",
                  "HTTPS needs both tls_cert_file and tls_key_file (or neither for plain HTTP)")
    for name, path in (("tls_cert_file", cert), ("tls_key_file", key)):
        if path is not None and not path.is_file():
            r.problem(name, f"file {str(path)!r} does not exist")


def _optional_path(r: Reader, name: str, base_dir: Path) -> Path | None:
    text = r.text(name, "")
    if not text:
        return None
    path = Path(os.path.expandvars(text)).expanduser()
    return path if path.is_absolute() else base_dir / path


def _parse_enrol(r: Reader, base_dir: Path, devices: Sequence[DeviceConfig] = ()) -> EnrolConfig:
    key_file = _optional_path(r, "key_file", base_dir)
    old_raw = r.raw("old_key_files", [])
    old: list[Path] = []
    if not isinstance(old_raw, list) or not all(isinstance(x, str) and x for x in old_raw):
        r.problem("old_key_files", f"must be a list of file paths, got {old_raw!r}")
    else:
        for text in old_raw:
            path = Path(os.path.expandvars(text)).expanduser()
            old.append(path if path.is_absolute() else base_dir / path)
    cfg = EnrolConfig(
        key_file=key_file, old_key_files=tuple(old),
        daily=r.flag("daily", True),
        backup_at=_parse_time(r, "backup_at", time(2, 30)),
        timeout_s=r.duration_s("timeout_s", 600.0, min=1.0),
        drop_warn_ratio=r.number("drop_warn_ratio", 0.2, min=0.0),
        sync=r.flag("sync", False),
        sync_groups=_parse_sync_groups(r, devices),
        sync_deletes=r.flag("sync_deletes", False),
        incremental=r.flag("incremental", True),
        full_every_s=r.duration_s("full_every", 7 * 86400.0, min=0.0),
    )
    if cfg.drop_warn_ratio > 1:
        r.problem("drop_warn_ratio", f"must be between 0 and 1, got {cfg.drop_warn_ratio}")
    r.done()
    return cfg


def _parse_sync_groups(r: Reader, devices: Sequence[DeviceConfig]) -> tuple[tuple[str, ...], ...]:
    raw = r.raw("sync_groups", [])
    if not isinstance(raw, list) or not all(isinstance(g, list) and all(isinstance(d, str) and d for d in g)
                                            for g in raw):
        r.problem("sync_groups", f"must be a list of lists of device ids, e.g. [[\"lobby\", \"annex\"]], got {raw!r}")
        return ()
    by_id = {d.id: d for d in devices}
    seen: dict[str, int] = {}
    groups: list[tuple[str, ...]] = []
    for n, group in enumerate(raw, 1):
        if len(set(group)) < 2:
            r.problem("sync_groups", f"group {n} {group!r} needs at least two different device ids")
        for device_id in group:
            device = by_id.get(device_id)
            if device is None:
                r.problem("sync_groups", f"group {n}: unknown device id {device_id!r} (configured: "
                          f"{', '.join(sorted(by_id)) or 'none'})")
            elif device_id in seen and seen[device_id] != n:
                r.problem("sync_groups", f"device {device_id!r} is in group {seen[device_id]} and group {n}: "
                          "a terminal can be kept in step with one group only")
            elif device.driver not in ENROLMENT_DRIVERS:
                r.problem("sync_groups", f"group {n}: device {device_id!r} uses driver {device.driver!r}, which has "
                          f"no enrolments to keep in step (only {', '.join(ENROLMENT_DRIVERS)} terminals: a serial "
                          "clock holds no users or fingerprints the gateway can read)")
            seen.setdefault(device_id, n)
        groups.append(tuple(dict.fromkeys(group)))
    return tuple(groups)


def _parse_central(r: Reader, base_dir: Path) -> CentralConfig:
    cfg = CentralConfig(
        enabled=r.flag("enabled", False),
        gateway_tokens_file=_optional_path(r, "gateway_tokens_file", base_dir),
        api_tokens_file=_optional_path(r, "api_tokens_file", base_dir),
        max_body_bytes=r.integer("max_body_bytes", 5 * 1024 * 1024, min=1024),
        max_batch=r.integer("max_batch", 5000, min=1),
        gateway_silent_after_s=r.duration_s("gateway_silent_after_s", 7200.0, min=300),
    )
    if "upstream" in r.data:
        upstream = _parse_forward(r.table("upstream"), base_dir)
        if not upstream.url:
            r.problem("upstream", "url is required in [central.upstream] (the upper tier's central, e.g. "
                                  "https://absensi.bkn.example.go.id); remove the table to not forward upstream")
        else:
            cfg = replace(cfg, upstream=upstream)
    if cfg.enabled:
        for name, path in (("gateway_tokens_file", cfg.gateway_tokens_file),
                           ("api_tokens_file", cfg.api_tokens_file)):
            if path is None:
                r.problem(name, "is required when central mode is enabled")
            elif not path.is_file():
                r.problem(name, f"file {str(path)!r} does not exist")
    r.done()
    return cfg


def _parse_push(r: Reader, base_dir: Path) -> PushConfig:
    cfg = PushConfig(
        enabled=r.flag("enabled", True),
        listen=r.text("listen", "0.0.0.0", allow_empty=False),
        port=r.integer("port", 8081, min=0, max=65535),
        tls_cert_file=_optional_path(r, "tls_cert_file", base_dir),
        tls_key_file=_optional_path(r, "tls_key_file", base_dir),
        delay_s=r.integer("delay_s", 10, min=2, max=600),
        error_delay_s=r.integer("error_delay_s", 30, min=10, max=3600),
        offline_after_s=r.duration_s("offline_after_s", 300.0, min=30),
        max_body_bytes=r.integer("max_body_bytes", 2 * 1024 * 1024, min=4096, max=64 * 1024 * 1024),
        max_lines=r.integer("max_lines", 20000, min=10, max=1_000_000),
        rate_per_device=r.number("rate_per_device", 20.0, min=0.1, max=10_000.0),
        command_timeout_s=r.duration_s("command_timeout_s", 900.0, min=10),
        request_timeout_s=r.duration_s("request_timeout_s", 30.0, min=1),
        max_connections=r.integer("max_connections", 500, min=1, max=100_000),
    )
    _check_tls_pair(r, cfg.tls_cert_file, cfg.tls_key_file)
    if cfg.offline_after_s < 2 * cfg.delay_s:
        r.problem("offline_after_s", f"must be at least twice delay_s ({cfg.delay_s} s), or a terminal that "
                                     "calls on time would look offline")
    r.done()
    return cfg


def _parse_import(r: Reader, site: SiteConfig, base_dir: Path) -> ImportConfig:
    cfg = ImportConfig(
        enabled=r.flag("enabled", False),
        folder=_optional_path(r, "folder", base_dir) or site.state_dir / "import",
        scan_every_s=r.duration_s("scan_every_s", 5.0, min=1),
    )
    r.done()
    return cfg


def _parse_retention(r: Reader, site: SiteConfig, base_dir: Path) -> RetentionConfig:
    cfg = RetentionConfig(
        months_ahead=r.integer("months_ahead", 3, min=1, max=24),
        archive_after_months=r.integer("archive_after_months", 0, min=0, max=1200),
        archive_dir=_optional_path(r, "archive_dir", base_dir) or site.state_dir / "archive",
        check_every_s=r.duration_s("check_every_s", 3600.0, min=60),
    )
    if 0 < cfg.archive_after_months < 2:
        r.problem("archive_after_months", "must be 0 (keep every month) or at least 2: the previous month still "
                                          "receives late punches from gateways that were offline")
    r.done()
    return cfg


__all__ = [
    "AlertsConfig", "CentralConfig", "Config", "ConfigError", "DatabaseConfig", "DeviceConfig",
    "EmployeesConfig", "ForwardConfig", "HealthConfig", "HttpConfig", "LoggingConfig", "PollingConfig",
    "PushConfig", "RetentionConfig", "SerialLineConfig", "SiteConfig", "WorkingHoursConfig", "load_config",
    "parse_config",
]
