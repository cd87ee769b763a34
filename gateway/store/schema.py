"""Table definitions (SQLAlchemy Core) for every table the gateway and the central instance use.

Only gateway.store touches these. Migrations in gateway/store/migrations create exactly this schema
(a test compares the migrated database with this metadata). Timestamps are UTC-aware everywhere
(``UtcDateTime``); device-local wall-clock values are kept as text exactly as the device had them.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Date,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator

# Deterministic constraint names: Alembic's batch mode on SQLite recreates tables and must find
# constraints by name.
metadata = MetaData(naming_convention={
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
})

#: Auto-increment 64-bit ids that are also ROWIDs on SQLite (SQLite only auto-increments INTEGER).
BigId = BigInteger().with_variant(Integer(), "sqlite")


class UtcDateTime(TypeDecorator[datetime]):
    """Timezone-aware datetime stored as UTC (timestamptz on PostgreSQL, UTC text on SQLite)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r} given for a UTC column; attach a time zone first")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


# ------------------------------------------------------------------------------------------------
# Devices and polling
# ------------------------------------------------------------------------------------------------

devices = Table(
    "devices", metadata,
    Column("pk", Integer, primary_key=True, autoincrement=True),
    #: Office (SKPD) the device belongs to; on an office gateway always the site's code.
    Column("office_code", String(32), nullable=False),
    #: The operator's id from the config ("lobby-1").
    Column("device_id", String(64), nullable=False),
    Column("name", String(200), nullable=False, default=""),
    Column("location", String(200), nullable=False, default=""),
    Column("address", String(255), nullable=False, default=""),
    Column("port", Integer, nullable=False, default=4370),
    Column("transport", String(8), nullable=False, default="tcp"),
    #: Last serial number seen at this device id (the device's real identity).
    Column("serial", String(64)),
    Column("firmware", String(100)),
    Column("platform", String(100)),
    Column("device_name", String(100)),
    Column("mac", String(32)),
    Column("enabled", Boolean, nullable=False, default=True),
    Column("last_seen_at", UtcDateTime()),          # last time it answered at all
    Column("last_ok_at", UtcDateTime()),            # last fully successful poll
    Column("last_full_read_at", UtcDateTime()),     # last full log download
    Column("last_record_count", Integer),
    Column("last_user_count", Integer),
    Column("records_cap", Integer),
    Column("users_cap", Integer),
    Column("last_punch_at", UtcDateTime()),         # newest punch instant stored for it
    Column("last_new_punch_at", UtcDateTime()),     # when a poll last found a new punch
    Column("clock_skew_s", Float),                  # device clock minus server clock, seconds
    Column("created_at", UtcDateTime(), nullable=False),
    Column("updated_at", UtcDateTime(), nullable=False),
    UniqueConstraint("office_code", "device_id"),
)

#: Every (serial, address) a device id has been seen with: replacement and DHCP moves leave a trail.
device_identities = Table(
    "device_identities", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("device_pk", Integer, ForeignKey("devices.pk", ondelete="CASCADE"), nullable=False),
    Column("serial", String(64), nullable=False),
    Column("address", String(255), nullable=False),
    Column("port", Integer, nullable=False),
    Column("firmware", String(100)),
    Column("first_seen_at", UtcDateTime(), nullable=False),
    Column("last_seen_at", UtcDateTime(), nullable=False),
    UniqueConstraint("device_pk", "serial", "address", "port"),
)

poll_runs = Table(
    "poll_runs", metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("device_pk", Integer, ForeignKey("devices.pk", ondelete="CASCADE"), nullable=False),
    Column("serial", String(64)),
    Column("started_at", UtcDateTime(), nullable=False),
    Column("finished_at", UtcDateTime()),
    Column("duration_s", Float),
    #: ok, unchanged, or an error kind (unreachable, auth_rejected, busy, identity_mismatch,
    #: protocol_error, timeout, bug, abandoned).
    Column("outcome", String(32), nullable=False),
    #: "count" (counts only: nothing changed) or "full" (log downloaded).
    Column("mode", String(16), nullable=False, default="count"),
    Column("records_on_device", Integer),
    Column("records_read", Integer, nullable=False, default=0),
    Column("new_records", Integer, nullable=False, default=0),
    Column("bytes_read", BigInteger, nullable=False, default=0),
    Column("error", Text),
    Index(None, "device_pk", "started_at"),
)

device_users = Table(
    "device_users", metadata,
    Column("device_serial", String(64), primary_key=True),
    Column("user_id", String(64), primary_key=True),
    Column("uid", Integer, nullable=False),
    Column("name", String(100), nullable=False, default=""),
    Column("privilege", Integer, nullable=False, default=0),
    Column("card", BigInteger, nullable=False, default=0),
    Column("updated_at", UtcDateTime(), nullable=False),
)

# ------------------------------------------------------------------------------------------------
# Punches: the durable, deduplicated log
# ------------------------------------------------------------------------------------------------

#: On PostgreSQL (migration 0011_partitions) this table is PARTITIONED BY RANGE (device_time), one partition per month
#: in schema fpgw_partitions plus a default one (gateway.store.partitions, docs/scale-out.md), and its primary key is
#: (id, office_code, device_time): a partitioned table's unique constraints must hold the partition key, and
#: office_code keeps the key valid under Citus. That DDL lives in the migration only (PostgreSQL always migrates);
#: the columns, uq_punches_key and the indexes below are the same on both engines. SQLite keeps one table.
punches = Table(
    "punches", metadata,
    #: Monotonic id; on an office gateway the outbox refers to it.
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("office_code", String(32), nullable=False),
    Column("device_id", String(64), nullable=False),
    Column("device_serial", String(64), nullable=False),
    #: User id as the device shows it (PIN / NIP text).
    Column("device_user_id", String(64), nullable=False),
    #: Device-local wall clock, "YYYY-MM-DD HH:MM:SS", exactly as the device held it (even if impossible).
    Column("device_time", String(19), nullable=False),
    #: The same as a local datetime and as a UTC instant; NULL when the device time is not a real date.
    Column("local_time", DateTime(timezone=False)),
    Column("utc_time", UtcDateTime()),
    #: IANA zone used to turn device_time into utc_time.
    Column("timezone", String(64), nullable=False),
    Column("state", Integer, nullable=False),
    Column("state_name", String(16), nullable=False),
    Column("verify", Integer, nullable=False),
    Column("verify_name", String(24), nullable=False),
    Column("uid", Integer, nullable=False, default=0),
    Column("workcode", Integer, nullable=False, default=0),
    Column("raw_time", BigInteger, nullable=False, default=-1),
    #: Employee id (NIP) through the optional mapping; NULL when unmapped (the punch is kept anyway).
    Column("employee_id", String(64)),
    #: Comma-separated quality flags: future, before_device, rtc_reset, impossible_date, unmapped_user,
    #: bad_<field> + value_out_of_range (a device value did not fit its column; gateway.polling.normalize).
    Column("flags", String(200), nullable=False, default=""),
    #: When this store first received it.
    Column("received_at", UtcDateTime(), nullable=False),
    #: poll (read from a device here) or forward (received from an office gateway).
    Column("source", String(16), nullable=False, default="poll"),
    #: Part of the key: 0 for a punch with a trustworthy time; n-th record with the same user and an
    #: untrusted time (rtc_reset / impossible_date) plus the device's log epoch (gateway.models.Punch,
    #: gateway.store.punches "Punch identity"; migration 0004_punch_occurrence).
    Column("occurrence", BigInteger, nullable=False, default=0, server_default="0"),
    #: Identity of a punch. office_code leads it (migration 0005_office_bindings): at the central a punch is
    #: a duplicate only of the same office's punch, so one office can never hide another's. An office
    #: gateway writes its own site code on every punch, so there it dedups exactly as (serial, user, time,
    #: occurrence). The time comes before the user (migration 0007_punch_indexes): a terminal's log is in
    #: time order, so a poll's new punches go to the end of its serial's range (a few index pages) instead
    #: of one page per user in it. Uniqueness and ON CONFLICT do not depend on the column order.
    UniqueConstraint("office_code", "device_serial", "device_time", "device_user_id", "occurrence",
                     name="uq_punches_key"),
    #: Indexes (migration 0007_punch_indexes; why these and no others: docs/architecture.md "Punch indexes").
    #: Both lead with a column that grows with time, so inserting punches touches the last pages only.
    #: A device's punches in an instant range: the device filter of `fpgw punches` and the pull API. (The
    #: store's "already stored?" read is a range of uq_punches_key: gateway.store.punches._not_stored.)
    Index(None, "device_id", "utc_time"),
    #: Whole local days (every date filter: `fpgw punches --date`, the pull API's date=/from=/to=, exports),
    #: with the employee in the index so "one employee's month" is read from the index alone.
    Index(None, "local_time", "employee_id"),
)

#: Punches not yet accepted upstream. Written in the same transaction as the punch itself, so a
#: crash can never leave a stored punch that will not be forwarded.
#: punch_id refers to punches.id WITHOUT a foreign key (dropped by migration 0007_punch_indexes: on PostgreSQL
#: its per-row check cost more than the rest of the outbox insert). The store writes an outbox row only for
#: the id the same transaction's punch INSERT returned, and fpgw never deletes punches; an outbox row whose
#: punch was deleted by hand is dropped by the forwarder's claim (gateway.store.outbox.Outbox.claim_batch).
outbox = Table(
    "outbox", metadata,
    Column("punch_id", BigId, primary_key=True, autoincrement=False),
    #: pending (to send / retry) or rejected (upstream refused it; kept aside with the reason).
    Column("state", String(16), nullable=False, default="pending"),
    Column("attempts", Integer, nullable=False, default=0),
    Column("next_attempt_at", UtcDateTime(), nullable=False),
    Column("last_error", Text),
    Column("created_at", UtcDateTime(), nullable=False),
    Index(None, "state", "next_attempt_at"),
)

# ------------------------------------------------------------------------------------------------
# Health and alerts
# ------------------------------------------------------------------------------------------------

#: Persisted health state per device, so a restart neither forgets a problem nor re-alerts it.
device_health = Table(
    "device_health", metadata,
    Column("device_pk", Integer, ForeignKey("devices.pk", ondelete="CASCADE"), primary_key=True),
    #: unknown, online or offline.
    Column("state", String(16), nullable=False, default="unknown"),
    Column("state_since", UtcDateTime(), nullable=False),
    Column("consecutive_failures", Integer, nullable=False, default=0),
    #: Start of the current run of failed polls (the offline window counts from the last good poll or this).
    Column("failing_since", UtcDateTime()),
    Column("last_ok_at", UtcDateTime()),
    Column("last_failure_at", UtcDateTime()),
    Column("last_error_kind", String(32)),
    Column("last_error", Text),
    #: JSON object: problem name -> {"since": iso, "severity": ..., "detail": ..., "last_alert_at": iso}.
    Column("problems", Text, nullable=False, default="{}"),
    #: When a poll last brought new punches, or when watching began: the silent-device clock.
    Column("last_new_punch_at", UtcDateTime()),
    Column("next_probe_at", UtcDateTime()),
    Column("muted_until", UtcDateTime()),
    Column("mute_reason", String(200)),
    Column("updated_at", UtcDateTime(), nullable=False),
)

alerts = Table(
    "alerts", metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("created_at", UtcDateTime(), nullable=False),
    Column("office_code", String(32), nullable=False),
    Column("device_id", String(64)),
    Column("device_serial", String(64)),
    #: Problem name (offline, auth_rejected, clock_skew, ...).
    Column("problem", String(32), nullable=False),
    #: start, end or reminder.
    Column("event", String(16), nullable=False),
    #: info, warning or critical.
    Column("severity", String(16), nullable=False),
    Column("title", String(300), nullable=False),
    Column("message", Text, nullable=False),
    #: JSON with what was seen and what to check.
    Column("details", Text, nullable=False, default="{}"),
    Column("muted", Boolean, nullable=False, default=False),
    Column("delivered_at", UtcDateTime()),
    Column("attempts", Integer, nullable=False, default=0),
    Column("last_error", Text),
    Index(None, "device_id", "created_at"),
    Index(None, "delivered_at"),
)

#: Key/value facts the daemon keeps across restarts (schema-free, small).
kv = Table(
    "kv", metadata,
    Column("key", String(100), primary_key=True),
    Column("value", Text, nullable=False),
    Column("updated_at", UtcDateTime(), nullable=False),
)


#: Input that arrived from a terminal or an export file but could not be read as a punch (a serial line that
#: matches no format, a USB export row that does not parse, a SOAP row without a PIN). Kept with its raw text
#: and the reason so nothing is dropped silently; counted per device on the status page (migration 0006).
quarantine = Table(
    "quarantine", metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    #: The configured device id it came from ("" when the source could not be tied to a device).
    Column("device_id", String(64), nullable=False),
    #: Which path it came through: "serial", "usb", "soap", "push", ...
    Column("source", String(16), nullable=False),
    #: The raw input, decoded leniently (latin-1 / replacement characters) and cut to 2,000 characters.
    Column("raw", Text, nullable=False),
    #: Why it was set aside, one line ("no format matched", "bad date 2026-02-31", ...).
    Column("reason", String(500), nullable=False),
    #: Where it came from inside the source: the file name and line number, the port, ...
    Column("origin", String(500), nullable=False, default=""),
    Column("received_at", UtcDateTime(), nullable=False),
    Index(None, "device_id", "received_at"),
)


# ------------------------------------------------------------------------------------------------
# Enrolment backups (gateway.enrol, gateway/store/enrol.py; migration 0008_enrolment). Template bytes and
# passwords are only ever stored sealed (gateway/enrol/crypto.py): ``secret`` and ``blob`` columns hold
# the encrypted envelope, never the plain value; ``key_id`` names the key that sealed it (rotation).
# ------------------------------------------------------------------------------------------------

enrol_snapshot = Table(
    "enrol_snapshot", metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("device_id", String(64), nullable=False),
    #: The terminal's serial when it was read (the sealed blobs are bound to it).
    Column("serial", String(64), nullable=False),
    Column("taken_at", UtcDateTime(), nullable=False),
    #: Fingerprint algorithm version the terminal reported (ZK ~ZKFPVersion); 0 = unknown.
    Column("algorithm", Integer, nullable=False),
    #: User record size on the wire (ZK 28 or 72).
    Column("user_layout", Integer, nullable=False),
    Column("users", Integer, nullable=False),
    Column("templates", Integer, nullable=False),
    Index(None, "device_id", "taken_at"),
)

enrol_user = Table(
    "enrol_user", metadata,
    Column("snapshot_id", BigId, ForeignKey("enrol_snapshot.id", ondelete="CASCADE"), primary_key=True),
    Column("uid", Integer, primary_key=True),
    #: The PIN / NIP as the terminal shows it.
    Column("user_id", String(64), nullable=False),
    Column("name", String(64), nullable=False),
    Column("privilege", Integer, nullable=False),
    Column("card", BigInteger, nullable=False),
    Column("group_id", String(16), nullable=False),
    Column("has_password", Boolean, nullable=False),
    #: The password, sealed; NULL when the user has none.
    Column("secret", LargeBinary, nullable=True),
    Column("key_id", String(16), nullable=False),
)

enrol_template = Table(
    "enrol_template", metadata,
    Column("snapshot_id", BigId, ForeignKey("enrol_snapshot.id", ondelete="CASCADE"), primary_key=True),
    Column("uid", Integer, primary_key=True),
    Column("finger", Integer, primary_key=True),
    Column("valid", Integer, nullable=False),
    #: Template length in bytes (the plain size; the blob is 40 bytes longer).
    Column("size", Integer, nullable=False),
    Column("key_id", String(16), nullable=False),
    #: The template, sealed.
    Column("blob", LargeBinary, nullable=False),
)

enrol_audit = Table(
    "enrol_audit", metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("at", UtcDateTime(), nullable=False),
    #: Who: "daemon", or "cli:<OS user>".
    Column("actor", String(64), nullable=False),
    #: backup, restore, read (a decrypting look without writing), rotate-key.
    Column("action", String(16), nullable=False),
    Column("device_id", String(64), nullable=False),
    Column("users", Integer, nullable=False),
    Column("templates", Integer, nullable=False),
    Column("ok", Boolean, nullable=False),
    #: One line: source of a restore, why it failed, ... (never template bytes or keys).
    Column("detail", String(500), nullable=False),
    Index(None, "device_id", "at"),
)

#: What push terminals uploaded of their enrolments (migration 0014_enrol_push): per terminal serial and PIN the
#: user record (finger -1: name, privilege, card, group, the sealed password in ``blob``) and each fingerprint
#: template (finger 0-9: valid flag, plain size, the sealed template in ``blob``). gateway/store/pushenrol.py.
enrol_push = Table(
    "enrol_push", metadata,
    Column("serial", String(64), primary_key=True),
    Column("pin", String(64), primary_key=True),
    Column("finger", Integer, primary_key=True),
    Column("name", String(64), nullable=False),
    Column("privilege", Integer, nullable=False),
    Column("card", BigInteger, nullable=False),
    Column("group_id", String(16), nullable=False),
    Column("valid", Integer, nullable=False),
    Column("size", Integer, nullable=False),
    Column("key_id", String(16), nullable=False),
    Column("blob", LargeBinary, nullable=True),
    #: When the terminal last uploaded this row (a full upload on demand drops rows it did not send again).
    Column("seen_at", UtcDateTime(), nullable=False),
)


def utcnow() -> datetime:
    """Aware UTC now (one place so tests can reason about it)."""
    return datetime.now(UTC)


# ------------------------------------------------------------------------------------------------
# Central mode: gateway registry and ingest receipts (forwarding area, migrations 0002 and 0003).
# The BKD feed cursor is punches.id; see gateway/store/central_repo.py for why it never skips.
# ------------------------------------------------------------------------------------------------

#: Office gateways that forward to this central instance; the name and office come from the token.
gateways = Table(
    "gateways", metadata,
    Column("name", String(100), primary_key=True),
    Column("office_code", String(32), nullable=False),
    Column("first_seen_at", UtcDateTime(), nullable=False),
    Column("last_seen_at", UtcDateTime(), nullable=False),
    Column("last_batch_at", UtcDateTime()),
    Column("last_health_at", UtcDateTime()),
    Column("remote_addr", String(64)),
    #: What the gateway says about itself (host name, fpgw version); informational only.
    Column("hostname", String(200)),
    Column("version", String(50)),
    #: The gateway's own outbox backlog as it last reported it.
    Column("outbox_depth", Integer),
    Column("oldest_unforwarded_s", Float),
    Column("punches_received", BigInteger, nullable=False, default=0),
    #: The office's name as the gateway reports it ([site] office_name; migration 0003).
    Column("office_name", String(200)),
    #: Silent-gateway alert state (migration 0003): the last contact before the silence while a
    #: "gateway_silent" alert is open (NULL = none open), and when its start or last reminder went out.
    #: Persisted so a restart never re-alerts.
    Column("silent_since", UtcDateTime()),
    Column("silent_notified_at", UtcDateTime()),
)

#: One receipt per accepted batch, so a replayed batch gets the very same answer (and stores nothing).
ingest_batches = Table(
    "ingest_batches", metadata,
    Column("gateway", String(100), primary_key=True),
    Column("batch_id", String(100), primary_key=True),
    #: sha256 of the batch's punches; the same batch_id with other content is refused (409).
    Column("digest", String(64), nullable=False),
    Column("received_at", UtcDateTime(), nullable=False),
    Column("punch_count", Integer, nullable=False),
    Column("new_count", Integer, nullable=False),
    Column("rejected_count", Integer, nullable=False),
    #: The JSON answer given the first time.
    Column("response", Text, nullable=False),
    Index(None, "received_at"),
)

#: Which office a device serial belongs to at the central (migration 0005_office_bindings). The first office
#: whose gateway reports a serial (a punch or a health report) gets it; a punch or health report naming a
#: serial bound to another office is rejected (serial_bound_elsewhere) and alerted, never merged. Moving a
#: replaced or moved terminal to another office is an explicit admin action (`fpgw central rebind-device`).
device_bindings = Table(
    "device_bindings", metadata,
    Column("serial", String(64), primary_key=True),
    Column("office_code", String(32), nullable=False),
    Column("bound_at", UtcDateTime(), nullable=False),
    #: "gateway:<token name>" when bound by first report, "admin:<who>" after a rebind.
    Column("bound_by", String(120), nullable=False),
    #: The office it was bound to before the last rebind, and why it was rebound.
    Column("previous_office_code", String(32)),
    Column("note", String(500)),
    #: The last office refused for this serial and when that was alerted (one alert per office and day).
    Column("conflict_office_code", String(32)),
    Column("conflict_alerted_at", UtcDateTime()),
    Index(None, "office_code"),
)

# ------------------------------------------------------------------------------------------------
# Central mode: the regency dashboard (migration 0010_dashboard_accounts; gateway.store.accounts,
# gateway.store.device_events, gateway.central.dashboard).
# ------------------------------------------------------------------------------------------------

#: Login accounts of the dashboard (BKD staff, office heads of administration). All are read-only; accounts are
#: managed with `fpgw central users`. Passwords are kept as scrypt hashes (gateway.central.auth), never in clear.
dashboard_accounts = Table(
    "dashboard_accounts", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("username", String(64), nullable=False),
    #: "scrypt$n$r$p$salt$hash" (base64 parts).
    Column("password_hash", String(300), nullable=False),
    #: The one office (SKPD) this account may see; NULL = the whole regency (BKD staff).
    Column("office_code", String(32)),
    Column("enabled", Boolean, nullable=False, default=True),
    Column("created_at", UtcDateTime(), nullable=False),
    Column("updated_at", UtcDateTime(), nullable=False),
    Column("last_login_at", UtcDateTime()),
    UniqueConstraint("username"),
)

#: Open dashboard logins. The browser holds a random session id in an HttpOnly cookie; only its SHA-256 is kept
#: here, so a disabled account or a new password ends every session at once (they are deleted).
dashboard_sessions = Table(
    "dashboard_sessions", metadata,
    Column("token_hash", String(64), primary_key=True),
    Column("account_id", Integer, ForeignKey("dashboard_accounts.id", ondelete="CASCADE"), nullable=False),
    #: The session's CSRF token (sent back in every form of the session).
    Column("csrf", String(64), nullable=False),
    Column("created_at", UtcDateTime(), nullable=False),
    Column("expires_at", UtcDateTime(), nullable=False),
    Index(None, "account_id"),
    Index(None, "expires_at"),
)

#: A terminal's history at the central: its state changes, problems opening and closing, and alerts its office
#: gateway sent, recorded as forwarded health reports arrive (gateway.store.device_events). The dashboard's
#: terminal page derives outages (offline from .. to .., how long) from it.
device_events = Table(
    "device_events", metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("office_code", String(32), nullable=False),
    Column("device_id", String(64), nullable=False),
    #: When it happened, as the office gateway reported it (state_since, problem since, last_alert_at), or when
    #: the central noticed it (a problem gone from the report).
    Column("at", UtcDateTime(), nullable=False),
    #: state, problem_start, problem_end or alert.
    Column("kind", String(16), nullable=False),
    #: The new state (online, offline, unknown) or the problem's name.
    Column("name", String(32), nullable=False),
    Column("severity", String(16)),
    Column("detail", String(500), nullable=False, default=""),
    Column("recorded_at", UtcDateTime(), nullable=False),
    Index(None, "office_code", "device_id", "at"),
)

# ------------------------------------------------------------------------------------------------
# Central mode: usage figures (migration 0009_usage; gateway.store.usage, docs/bkd-report.md)
# ------------------------------------------------------------------------------------------------

#: Employees per office as BKD uploads them (`fpgw central headcount import FILE.csv`): the basis of the
#: attendance rate. A figure counts from its ``as_of`` date until a later one; an undated upload is stored with
#: as_of = 1970-01-01 (it counts for every period until a dated figure replaces it).
office_headcount = Table(
    "office_headcount", metadata,
    Column("office_code", String(32), primary_key=True),
    Column("as_of", Date, primary_key=True),
    Column("employees", Integer, nullable=False),
    #: The uploaded file's name and line ("headcount-2026.csv:12"), for questions later.
    Column("source", String(300), nullable=False, default=""),
    Column("imported_at", UtcDateTime(), nullable=False),
)

#: Days off for the whole regency (national holidays, cuti bersama): not working days even when their
#: weekday is one (`fpgw central holidays import|add|remove|list`).
holidays = Table(
    "holidays", metadata,
    Column("day", Date, primary_key=True),
    Column("name", String(200), nullable=False, default=""),
    Column("created_at", UtcDateTime(), nullable=False),
)
