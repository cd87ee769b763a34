"""Backing a terminal's enrolments up, the backup status, and key rotation.

    backup_device(device): driver.connect(deadline) -> session.read_enrolments() -> seal every template and
    password with the current key -> EnrolRepo.save_snapshot (one transaction, with its audit row)
    incremental: session.read_changed_enrolments(plan_template_reads) -> only the new users' templates are
    read and sealed; save_snapshot(carry=...) copies the others, still sealed, from the previous backup

Incremental backups compare the terminal's user table, template count and template-table size with the previous
backup (PINs, counts and sizes only); anything that does not add up reads the whole table in the same session.
A full backup comes at least every ``[enrol] full_every`` (full_backup_due). docs/enrolment.md section 2.

The key is loaded by the caller before any terminal is contacted, so a missing or wrong key fails before
anything is read and nothing is ever stored unsealed. Logs carry counts, never template bytes.
"""

from __future__ import annotations

import getpass
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime

import structlog

from drivers import get_driver
from drivers.base import (
    Driver,
    DriverError,
    Enrolments,
    EnrolmentView,
    ReadsChangedEnrolments,
    ReadsEnrolments,
    TemplateReadPlan,
)
from gateway.config import Config, DeviceConfig
from gateway.enrol.crypto import EnvelopeError, Keyring
from gateway.models import users_dropped_sharply
from gateway.store.enrol import Carry, CarryMismatch, EnrolRepo, SealedRef, SnapshotHead, TemplateRow, UserRow

log = structlog.get_logger(__name__)

DriverFactory = Callable[[DeviceConfig], Driver]


def registry_driver(device: DeviceConfig) -> Driver:
    """The device's driver as its config names it (drivers.DRIVERS)."""
    return get_driver(device.driver)(device)


def cli_actor() -> str:
    """Who runs this command, for the audit table: ``cli:<OS user>``."""
    try:
        return f"cli:{getpass.getuser()}"
    except Exception:  # no login name (container without passwd entry)
        return f"cli:uid{os.getuid()}"


def template_context(serial: str, uid: int, finger: int) -> str:
    """Associated data a template blob is sealed with: it opens only in its own row."""
    return f"fpgw-enrol/template/{serial}/{uid}/{finger}"


def password_context(serial: str, uid: int) -> str:
    """Associated data a password blob is sealed with."""
    return f"fpgw-enrol/password/{serial}/{uid}"


@dataclass(frozen=True)
class BackupResult:
    """What one backup did (printed by the CLI, logged by the daemon)."""

    device_id: str
    ok: bool
    serial: str = ""
    users: int = 0
    templates: int = 0
    algorithm: int = 0
    #: Users the terminal holds without any fingerprint template (card/password only, or not enrolled yet).
    without_templates: tuple[str, ...] = ()
    #: The user count of the previous backup when this one holds sharply fewer (factory reset?).
    dropped_from: int | None = None
    error: str = ""
    duration_s: float = 0.0
    snapshot: SnapshotHead | None = field(default=None, repr=False)
    #: An incremental backup: only ``templates_read`` templates were read, the rest carried over.
    incremental: bool = False
    #: Templates read from the terminal in this backup (== templates for a full one).
    templates_read: int = 0


def seal_enrolments(serial: str, enrolments: Enrolments, keyring: Keyring) -> tuple[list[UserRow], list[TemplateRow]]:
    """Rows for the store: passwords and templates sealed with the current key, bound to serial/uid/finger."""
    key_id = keyring.current.key_id
    users = [UserRow(u.uid, u.user_id[:64], u.name[:64], u.privilege, u.card, u.group_id[:16], u.has_password,
                     keyring.seal(u.password.encode("utf-8"), password_context(serial, u.uid)) if u.password else None,
                     key_id if u.password else "")
             for u in enrolments.users]
    templates = [TemplateRow(t.uid, t.finger, t.valid, t.size, key_id,
                             keyring.seal(t.data, template_context(serial, t.uid, t.finger)))
                 for t in enrolments.templates]
    return users, templates


def sharp_drop(previous: int, now: int, ratio: float) -> bool:
    """Whether a user count fell by at least ``ratio`` of the previous one (and by more than one user)."""
    return users_dropped_sharply(previous, now, ratio)


# -- incremental backups -----------------------------------------------------------------------------------

#: What reading one user's templates one by one costs, in bytes of the template table read instead: ten
#: round trips (fingers 0-9, command 88), each worth about 8 KB of table download on a terminal's 10/100 link
#: at the latencies of field terminals (5-20 ms a command). An incremental read is chosen only while the users
#: to read cost less than the whole table (about 60 users for 3,000 users x 2 templates of ~1 KB).
PER_USER_READ_BYTES = 10 * 8 * 1024


@dataclass(frozen=True)
class PreviousBackup:
    """What an incremental backup compares the terminal with: the previous backup's users (uid -> PIN), its
    template count and bytes per uid, algorithm and user layout. PINs and sizes only, never templates."""

    snapshot: SnapshotHead
    pins: dict[int, str]
    #: uid -> (templates, their total size in bytes).
    template_stats: dict[int, tuple[int, int]]

    @property
    def template_counts(self) -> dict[int, int]:
        """uid -> templates."""
        return {uid: n for uid, (n, _) in self.template_stats.items()}

    @classmethod
    def load(cls, repo: EnrolRepo, head: SnapshotHead) -> PreviousBackup:
        """Read from the store (before the terminal is contacted)."""
        return cls(head, {u.uid: u.user_id for u in repo.users(head.id)}, repo.template_stats(head.id))


def plan_template_reads(previous: PreviousBackup, view: EnrolmentView) -> TemplateReadPlan | None:
    """The users whose templates must be read (new uid, or a uid now holding another PIN) and how many templates
    (and bytes) the others hold in the previous backup; None (read the whole table) when the terminal's counts
    are unusable, its algorithm or user record size changed, the unchanged users hold more than the terminal
    does, or reading those users one by one costs more than the table. The driver then checks that count and
    bytes add up (a finger re-enrolled in place changes the bytes) and reads the whole table when not."""
    head = previous.snapshot
    if view.templates < 0 or view.algorithm != head.algorithm or (view.user_layout and head.user_layout
                                                                    and view.user_layout != head.user_layout):
        return None
    reread: set[int] = set()
    carried = carried_bytes = 0
    for user in view.users:
        if previous.pins.get(user.uid) == user.user_id:
            n, size = previous.template_stats.get(user.uid, (0, 0))
            carried += n
            carried_bytes += size
        else:
            reread.add(user.uid)
    if carried > view.templates or (view.table_bytes >= 0 and carried_bytes > view.table_bytes):
        return None  # fingers were deleted from or changed on unchanged users: only the whole table tells which
    all_bytes = sum(size for _, size in previous.template_stats.values())
    average = all_bytes / head.templates if head.templates else 1024.0
    table = view.table_bytes if view.table_bytes >= 0 else view.templates * average
    if len(reread) * PER_USER_READ_BYTES >= table:
        return None
    return TemplateReadPlan(frozenset(reread), carried, carried_bytes)


def full_backup_due(repo: EnrolRepo, device_id: str, every_s: float, now: datetime | None = None) -> bool:
    """Whether the next backup of a device must read every template (never one, or the last is too old)."""
    if every_s <= 0:
        return True
    last = repo.last_full_backup(device_id)
    return last is None or ((now or datetime.now(UTC)) - last).total_seconds() >= every_s


def backup_device(device: DeviceConfig, repo: EnrolRepo, keyring: Keyring, *, actor: str, timeout_s: float,
                  drop_warn_ratio: float = 0.2, driver_factory: DriverFactory | None = None,
                  incremental: bool = False, full_every_s: float = 7 * 86400.0) -> BackupResult:
    """Read one terminal's users and templates and store them sealed. Never raises a DriverError: it is
    returned (and audited) as a failed result.

    ``incremental``: when the previous backup is of the same unit and no full backup is due (``full_every_s``),
    only the templates of new users are read and the others carried over (plan_template_reads); the stored
    backup is complete all the same.
    """
    t0 = time.monotonic()
    driver = (driver_factory or registry_driver)(device)
    previous = repo.latest(device.id)
    base = (PreviousBackup.load(repo, previous) if incremental and previous is not None
            and not full_backup_due(repo, device.id, full_every_s) else None)
    try:
        with driver.connect(deadline=time.monotonic() + timeout_s) as session:
            if not isinstance(session, ReadsEnrolments):
                raise DriverError(f"the {device.driver} driver cannot read enrolments", transient=False)
            serial = session.info(clock=False).serial
            if base is not None and base.snapshot.serial == serial and isinstance(session, ReadsChangedEnrolments):
                known = base

                def plan(view: EnrolmentView) -> TemplateReadPlan | None:
                    return plan_template_reads(known, view)

                enrolments = session.read_changed_enrolments(plan)
            else:
                enrolments = session.read_enrolments()
    except DriverError as exc:
        detail = f"{exc.kind}: {exc}"
        repo.audit(actor, "backup", device.id, ok=False, detail=detail)
        log.warning("enrolment backup failed", device=device.id, error_kind=exc.kind, error=str(exc))
        return BackupResult(device.id, False, error=detail, duration_s=time.monotonic() - t0)
    users, templates = seal_enrolments(serial, enrolments, keyring)
    algorithm, layout, reread = enrolments.algorithm, enrolments.user_layout, enrolments.template_uids
    del enrolments  # the plain templates are not needed any more
    carry = None
    counts: dict[int, int] = {}
    if reread is not None and base is not None:
        for u in users:
            if u.uid not in reread and base.pins.get(u.uid) == u.user_id:
                counts[u.uid] = base.template_stats.get(u.uid, (0, 0))[0]
        carry = Carry(base.snapshot.id, reread, sum(counts.values()))
    try:
        head = repo.save_snapshot(device.id, serial, algorithm=algorithm, user_layout=layout,
                                  users=users, templates=templates, actor=actor, carry=carry)
    except CarryMismatch as exc:  # the previous backup changed under us (trimmed, rotated): try again in full
        log.warning("incremental enrolment backup could not carry the previous backup over; reading in full",
                    device=device.id, error=str(exc))
        return backup_device(device, repo, keyring, actor=actor, timeout_s=timeout_s,
                             drop_warn_ratio=drop_warn_ratio, driver_factory=driver_factory, incremental=False)
    for t in templates:  # the carried-over users' counts are in ``counts`` already
        counts[t.uid] = counts.get(t.uid, 0) + 1
    without = tuple(u.user_id for u in users if counts.get(u.uid, 0) == 0)
    dropped = previous.users if previous is not None and sharp_drop(previous.users, len(users), drop_warn_ratio) \
        else None
    result = BackupResult(device.id, True, serial, len(users), head.templates, head.algorithm, without, dropped,
                          duration_s=time.monotonic() - t0, snapshot=head, incremental=carry is not None,
                          templates_read=len(templates))
    log.info("enrolment backup stored", device=device.id, serial=serial, users=len(users), templates=head.templates,
             algorithm=head.algorithm, without_templates=len(without), incremental=carry is not None,
             templates_read=len(templates), duration_s=round(result.duration_s, 2))
    if dropped is not None:
        log.warning("user count dropped sharply since the previous backup (factory reset?)", device=device.id,
                    serial=serial, users_before=dropped, users_now=len(users))
    return result



# -- status ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EnrolStatus:
    """One terminal's backup state for `fpgw enrol status` and `fpgw devices`."""

    device_id: str
    last: SnapshotHead | None
    #: PINs of users without any template in the last backup.
    without_templates: tuple[str, ...] = ()
    #: (users before, users now) when the last backup holds sharply fewer users than the one before it.
    drop: tuple[int, int] | None = None
    #: Why the newest backup attempt failed, when it failed (the last good backup is older).
    last_failure: str = ""


def status(config: Config, repo: EnrolRepo) -> list[EnrolStatus]:
    """Per configured terminal with enrolments (serial clocks have none): last backup, users without templates,
    a sharp drop."""
    out: list[EnrolStatus] = []
    for device in config.devices:
        if device.reads_serial:
            continue
        history = repo.history(device.id, limit=2)
        attempt = repo.last_backup_attempt(device.id)
        failure = (f"{attempt.at:%Y-%m-%d %H:%M} UTC: {attempt.detail}" if attempt is not None and not attempt.ok
                   else "")
        if not history:
            out.append(EnrolStatus(device.id, None, last_failure=failure))
            continue
        last = history[0]
        counts = repo.template_counts(last.id)
        without = tuple(u.user_id for u in repo.users(last.id) if counts.get(u.uid, 0) == 0)
        drop = None
        if len(history) > 1 and sharp_drop(history[1].users, last.users, config.enrol.drop_warn_ratio):
            drop = (history[1].users, last.users)
        out.append(EnrolStatus(device.id, last, without, drop, failure))
    return out


# -- key rotation ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RotationResult:
    """What `fpgw enrol rotate-key` did."""

    resealed: int
    #: Values that could not be opened with any configured key (kept as they are), with why (first few).
    failed: int
    reasons: tuple[str, ...] = ()


def rotate_key(repo: EnrolRepo, keyring: Keyring, *, actor: str, batch: int = 500) -> RotationResult:
    """Re-seal every value not sealed with the current key; older keys must be in ``old_key_files``."""
    current = keyring.current
    resealed = failed = 0
    reasons: list[str] = []

    def batches() -> Iterator[list[tuple[SealedRef, str, bytes]]]:
        nonlocal failed
        pending: list[tuple[SealedRef, str, bytes]] = []
        for ref in list(repo.sealed_rows(not_key=current.key_id)):
            context = (password_context(ref.serial, ref.uid) if ref.table == "user"
                       else template_context(ref.serial, ref.uid, ref.finger))
            try:
                plain = keyring.open(ref.blob, context)
            except EnvelopeError as exc:
                failed += 1
                if len(reasons) < 5:
                    reasons.append(f"{ref.table} snapshot {ref.snapshot_id} uid {ref.uid}: {exc}")
                continue
            pending.append((ref, current.key_id, keyring.seal(plain, context)))
            if len(pending) >= batch:
                yield pending
                pending = []
        if pending:
            yield pending

    for chunk in batches():
        resealed += repo.reseal(chunk)
    repo.audit(actor, "rotate-key", "*", ok=failed == 0,
               detail=f"resealed {resealed} value(s) with key {current.key_id}; {failed} could not be opened")
    log.info("enrolment key rotated", key_id=current.key_id, resealed=resealed, failed=failed)
    return RotationResult(resealed, failed, tuple(reasons))
