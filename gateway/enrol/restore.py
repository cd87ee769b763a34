"""Restoring a backup to a (replacement) terminal, from the stored backup: the old terminal may be dead.

    restore(target, source): pick the backup -> open the sealed values (key) -> connect to the target ->
    read what it holds and its algorithm version -> plan (uids, conflicts, template compatibility)
    -> [dry run stops here] -> write users -> write templates (only when the algorithm versions match)
    -> read everything back -> per user: restored / user only / skipped, and why -> audit row

A template is refused as a whole when the two terminals' fingerprint algorithm versions differ or either is
unknown: another algorithm cannot match it, and some firmware is reported to hang on foreign templates
(other-protocols.md, VX9 vs VX10). The users are written all the same, so the employees can re-enrol a
finger on the new unit under their own PIN.
"""

from __future__ import annotations

import time
from collections.abc import Collection
from dataclasses import dataclass, field

import structlog

from drivers.base import DriverError, EnrolledUser, ReadsEnrolments, Template, WritesEnrolments
from gateway.config import DeviceConfig
from gateway.enrol.backup import DriverFactory, password_context, registry_driver, sharp_drop, template_context
from gateway.enrol.crypto import Keyring
from gateway.store.enrol import EnrolRepo, SnapshotHead

log = structlog.get_logger(__name__)


class RestoreError(Exception):
    """A restore that cannot start (no backup, unknown PINs, a suspicious backup): one line for the operator."""


@dataclass(frozen=True)
class UserOutcome:
    """What happened to one user of the backup."""

    user_id: str
    #: restored (user and every finger), user only (templates not written, see reason), skipped, or with
    #: a dry run: would restore / would write user only / would skip.
    status: str
    reason: str = ""
    fingers: int = 0
    target_uid: int = 0


@dataclass(frozen=True)
class RestoreReport:
    """The whole restore, user by user."""

    target: str
    source: str
    snapshot: SnapshotHead
    target_algorithm: int
    #: Why no template was written (algorithm versions differ / unknown); "" when templates were written.
    templates_refused: str
    outcomes: tuple[UserOutcome, ...] = field(default=())
    dry_run: bool = False
    duration_s: float = 0.0

    def count(self, status: str) -> int:
        """Users with this status."""
        return sum(1 for o in self.outcomes if o.status == status)


def choose_snapshot(repo: EnrolRepo, source: str, snapshot_id: int | None, drop_warn_ratio: float) -> SnapshotHead:
    """The backup to restore: the one asked for, else the newest unless it looks like a factory-reset terminal."""
    history = repo.history(source, limit=50)
    if not history:
        raise RestoreError(f"no backup of {source!r} is stored (run `fpgw enrol backup {source}` while it works)")
    if snapshot_id is not None:
        for head in history:
            if head.id == snapshot_id:
                return head
        raise RestoreError(f"backup {snapshot_id} is not one of {source!r}'s "
                           f"({', '.join(str(h.id) for h in history)})")
    newest = history[0]
    fuller = [h for h in history[1:] if sharp_drop(h.users, newest.users, drop_warn_ratio)]
    if fuller:
        best = fuller[0]
        raise RestoreError(
            f"the newest backup of {source!r} (#{newest.id}, {newest.taken_at:%Y-%m-%d %H:%M} UTC) holds "
            f"{newest.users} users, far fewer than #{best.id} ({best.taken_at:%Y-%m-%d %H:%M} UTC, {best.users} "
            f"users): was the terminal reset? Choose one with --snapshot ID (`fpgw enrol status` lists them)")
    return newest


def restore(target: DeviceConfig, source: str, repo: EnrolRepo, keyring: Keyring, *, actor: str, timeout_s: float,
            pins: Collection[str] | None = None, dry_run: bool = False, snapshot_id: int | None = None,
            drop_warn_ratio: float = 0.2, overwrite: bool = False,
            driver_factory: DriverFactory | None = None) -> RestoreReport:
    """Write the backup of ``source`` to ``target`` and verify it by reading back. Raises RestoreError before
    touching the terminal when the restore cannot start; a DriverError mid-way is audited and re-raised.

    A PIN the target already holds under another name is a conflict: skipped and reported unless
    ``overwrite`` (never replaced silently).
    """
    t0 = time.monotonic()
    head = choose_snapshot(repo, source, snapshot_id, drop_warn_ratio)
    rows = repo.users(head.id)
    if pins is not None:
        known = {u.user_id for u in rows}
        missing = sorted(set(pins) - known)
        if missing:
            raise RestoreError(f"not in the backup of {source!r}: {', '.join(missing[:20])}")
        rows = [u for u in rows if u.user_id in set(pins)]
    wanted = {u.uid for u in rows}
    # Open every sealed value before the terminal is touched: a wrong key stops here, with nothing written.
    users = [EnrolledUser(u.uid, u.user_id, u.name, u.privilege, u.card, u.group_id,
                          keyring.open(u.secret, password_context(head.serial, u.uid)).decode("utf-8")
                          if u.secret is not None else "")
             for u in rows]
    templates = [Template(t.uid, t.finger, t.valid,
                          keyring.open(t.blob, template_context(head.serial, t.uid, t.finger)))
                 for t in repo.templates(head.id) if t.uid in wanted]
    driver = (driver_factory or registry_driver)(target)
    try:
        with driver.connect(deadline=time.monotonic() + timeout_s) as session:
            if not isinstance(session, ReadsEnrolments) or not isinstance(session, WritesEnrolments):
                raise DriverError(f"the {target.driver} driver cannot write enrolments", transient=False)
            before = session.read_enrolments()
            algorithm = before.algorithm
            refused = _templates_refused(head.algorithm, algorithm, source, target.id)
            plan, skipped = plan_uids(users, before.users, overwrite)
            mapped_users = [u for u in plan.values()]
            by_backup_uid = {b_uid: u.uid for b_uid, u in plan.items()}
            mapped_templates = [Template(by_backup_uid[t.uid], t.finger, t.valid, t.data)
                                for t in templates if t.uid in by_backup_uid]
            if dry_run:
                outcomes = _dry_outcomes(users, plan, skipped, mapped_templates, refused)
                report = RestoreReport(target.id, source, head, algorithm, refused, outcomes, True,
                                       time.monotonic() - t0)
                repo.audit(actor, "read", source, users=len(users), templates=len(templates),
                           detail=f"dry run of a restore to {target.id}")
                return report
            if mapped_users:
                session.write_users(mapped_users)
            write_error = ""
            if mapped_templates and not refused:
                try:
                    session.write_templates(mapped_templates, mapped_users)
                except DriverError as exc:  # e.g. capacity: the read-back tells what was stored
                    if exc.kind not in ("protocol_error", "busy"):
                        raise
                    write_error = str(exc)
        # Read back in a new session: what the terminal kept (after REFRESHDATA), even when the upload broke
        # the first connection.
        with driver.connect(deadline=time.monotonic() + timeout_s) as session:
            assert isinstance(session, ReadsEnrolments)
            after = session.read_enrolments()
    except DriverError as exc:
        repo.audit(actor, "restore", target.id, ok=False, detail=f"from {source} #{head.id}: {exc.kind}: {exc}")
        raise
    verified = verify_written(users, plan, skipped, mapped_templates, refused, write_error, after.users,
                              after.templates)
    report = RestoreReport(target.id, source, head, algorithm, refused, tuple(verified), False, time.monotonic() - t0)
    restored_templates = sum(o.fingers for o in verified)
    repo.audit(actor, "restore", target.id, users=report.count("restored") + report.count("user only"),
               templates=restored_templates, ok=report.count("skipped") == 0,
               detail=f"from {source} backup #{head.id}" + (f"; templates refused: {refused}" if refused else ""))
    log.info("enrolment restore finished", device=target.id, source=source, snapshot=head.id,
             restored=report.count("restored"), user_only=report.count("user only"), skipped=report.count("skipped"),
             templates=restored_templates)
    return report


def _templates_refused(backup_alg: int, target_alg: int, source: str, target: str) -> str:
    if backup_alg and backup_alg == target_alg:
        return ""
    if not backup_alg or not target_alg:
        return (f"the fingerprint algorithm version is unknown ({source}: {backup_alg or '?'}, {target}: "
                f"{target_alg or '?'}); templates are moved only between terminals of the same version")
    return (f"{source} used fingerprint algorithm {backup_alg} and {target} uses {target_alg}: templates "
            f"cannot be moved between them; the users are written, their fingers must be enrolled again")


def plan_uids(users: list[EnrolledUser], present: Collection[EnrolledUser], overwrite: bool = False
          ) -> tuple[dict[int, EnrolledUser], dict[int, str]]:
    """Backup uid -> the user as written to the target (uid adapted); backup uid -> why skipped."""
    by_pin = {u.user_id: u for u in present}
    taken = {u.uid: u for u in present}
    plan: dict[int, EnrolledUser] = {}
    skipped: dict[int, str] = {}
    next_free = max([0, *taken, *(u.uid for u in users)]) + 1
    for user in users:
        same = by_pin.get(user.user_id)
        if same is not None and same.name and same.name != user.name and not overwrite:
            skipped[user.uid] = (f"the terminal has PIN {user.user_id} as {same.name!r}, the backup as "
                                 f"{user.name!r}: not overwritten (--overwrite replaces it)")
            continue
        if same is not None:
            uid = same.uid  # already there under its own uid: overwrite in place
        elif user.uid not in taken:
            uid = user.uid
        elif next_free <= 0xFFFF:
            uid, next_free = next_free, next_free + 1
        else:
            skipped[user.uid] = "no free uid on the target terminal"
            continue
        taken[uid] = user
        plan[user.uid] = EnrolledUser(uid, user.user_id, user.name, user.privilege, user.card, user.group_id,
                                      user.password)
    return plan, skipped


def _dry_outcomes(users: list[EnrolledUser], plan: dict[int, EnrolledUser], skipped: dict[int, str],
                  templates: list[Template], refused: str) -> tuple[UserOutcome, ...]:
    fingers: dict[int, int] = {}
    by_uid: dict[int, list[Template]] = {}
    for t in templates:
        fingers[t.uid] = fingers.get(t.uid, 0) + 1
        by_uid.setdefault(t.uid, []).append(t)
    out = []
    for user in users:
        if user.uid in skipped:
            out.append(UserOutcome(user.user_id, "would skip", skipped[user.uid]))
            continue
        target = plan[user.uid]
        n = fingers.get(target.uid, 0)
        if refused and n:
            out.append(UserOutcome(user.user_id, "would write user only", refused, 0, target.uid))
        else:
            why = _with_flags("" if n else "no template in the backup", by_uid.get(target.uid, []))
            out.append(UserOutcome(user.user_id, "would restore", why, n, target.uid))
    return tuple(out)


#: The valid flag a ZK upload gives every finger (command 110 carries none; fact sheet §2.7).
UPLOADED_FLAG = 1


def flags_note(templates: Collection[Template]) -> str:
    """"duress flag not restored ..." for fingers the backup holds with another flag than an upload can give (a
    duress finger on firmware that has them); "" when there are none. The ZK protocol's documented uploads
    (command 110's table entry ``0x10 + finger``, pyzk's save_user_template) carry no flag: docs/enrolment.md."""
    flagged = sorted((t.finger, t.valid) for t in templates if t.valid != UPLOADED_FLAG)
    if not flagged:
        return ""
    listed = ", ".join(f"finger {finger} (flag {valid})" for finger, valid in flagged)
    return f"duress flag not restored: {listed} stored as normal finger(s); set it again at the terminal"


def _with_flags(reason: str, templates: Collection[Template]) -> str:
    note = flags_note(templates)
    return "; ".join(x for x in (reason, note) if x)


def verify_written(users: list[EnrolledUser], plan: dict[int, EnrolledUser], skipped: dict[int, str],
            templates: list[Template], refused: str, write_error: str, after_users: Collection[EnrolledUser],
            after_templates: Collection[Template]) -> list[UserOutcome]:
    """Compare what the target holds now with what was written, user by user."""
    on_target = {u.uid: u for u in after_users}
    stored = {(t.uid, t.finger): t.data for t in after_templates}
    wanted: dict[int, list[Template]] = {}
    for t in templates:
        wanted.setdefault(t.uid, []).append(t)
    out: list[UserOutcome] = []
    for user in users:
        if user.uid in skipped:
            out.append(UserOutcome(user.user_id, "skipped", skipped[user.uid]))
            continue
        target = plan[user.uid]
        found = on_target.get(target.uid)
        if found is None or found.user_id != target.user_id:
            out.append(UserOutcome(user.user_id, "skipped", "the terminal does not hold the user after writing it "
                                   "(refused? full?)", 0, target.uid))
            continue
        if (found.name, found.privilege, found.card, found.password) != (target.name, target.privilege, target.card,
                                                                          target.password):
            out.append(UserOutcome(user.user_id, "skipped", "the user read back differs from the backup "
                                   "(name, privilege, card or password)", 0, target.uid))
            continue
        mine = wanted.get(target.uid, [])
        if not mine:
            out.append(UserOutcome(user.user_id, "restored", "no template in the backup", 0, target.uid))
            continue
        if refused:
            out.append(UserOutcome(user.user_id, "user only", refused, 0, target.uid))
            continue
        good = sum(1 for t in mine if stored.get((t.uid, t.finger)) == t.data)
        if good == len(mine):
            out.append(UserOutcome(user.user_id, "restored", flags_note(mine), good, target.uid))
        else:
            why = f"{len(mine) - good} of {len(mine)} finger(s) not stored identically"
            out.append(UserOutcome(user.user_id, "user only" if good == 0 else "restored",
                                   _with_flags(f"{why}{': ' + write_error if write_error else ''}",
                                               [t for t in mine if stored.get((t.uid, t.finger)) == t.data]),
                                   good, target.uid))
    return out
