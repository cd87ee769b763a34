"""Keeping an office's terminals in step (issue 12): a user enrolled on one terminal is copied to the others.

    DailyBackup.run() (after the backups) / fpgw enrol sync --> sync_office(config, repo, hold)
        for each group: read every terminal (hold(device)) --> plan_sync(views, memory) [pure]
        --> [dry run stops here] --> per terminal with actions: hold(device): read it again, write users,
            templates (restore's uid mapping), deletes --> read back, verify (restore's check) --> audit row
        --> the views read back become the memory of the next sync (kv rows, gateway.store.enrol)

Only missing things are written: a user a terminal lacks, or the templates of a user it holds without any.
A PIN held as two different persons (another name, or another set of templates on terminals of one algorithm)
is a conflict: reported, never written. A delete is "in the previous sync's view of terminal X, gone from X
now"; it is propagated only with ``[enrol] sync_deletes`` and otherwise the user is just not copied back to X.
Templates travel only between terminals of the same known algorithm version (as restore). Logs, output and the
memory carry PINs, names and counts, never template bytes or passwords. docs/enrolment.md.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import structlog

from drivers.base import (
    DeletesEnrolments,
    DriverError,
    EnrolledUser,
    Enrolments,
    ReadsEnrolments,
    Template,
    WritesEnrolments,
)
from gateway.config import ENROLMENT_DRIVERS, Config, DeviceConfig
from gateway.enrol.backup import DriverFactory, registry_driver
from gateway.enrol.restore import plan_uids, verify_written
from gateway.store.enrol import EnrolRepo

log = structlog.get_logger(__name__)

_T = TypeVar("_T")


class Hold(Protocol):
    """Runs a job while no poll of the device runs (the poll scheduler's run_exclusive); None: not in time."""

    def __call__(self, device_id: str, job: Callable[[], _T]) -> _T | None: ...


def run_now(device_id: str, job: Callable[[], _T]) -> _T | None:
    """No hold: the job runs at once (tests; the daemon passes run_exclusive, the CLI its lock-file hold)."""
    return job()


# -- the pure part: views -> plan ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Member:
    """One user as one terminal holds it, with its templates (their uid is this terminal's)."""

    user: EnrolledUser
    templates: tuple[Template, ...] = ()

    def template_set(self) -> frozenset[tuple[int, int, bytes]]:
        """What tells two enrolments of a finger apart (finger, valid flag, template)."""
        return frozenset((t.finger, t.valid, t.data) for t in self.templates)


@dataclass(frozen=True)
class TerminalView:
    """A terminal's users by PIN, read in one session, and its fingerprint algorithm version (0 = unknown)."""

    device_id: str
    algorithm: int
    users: Mapping[str, Member]

    @classmethod
    def of(cls, device_id: str, enrolments: Enrolments) -> TerminalView:
        """Build the view from what ``read_enrolments`` returned."""
        by_uid: dict[int, list[Template]] = {}
        for t in enrolments.templates:
            by_uid.setdefault(t.uid, []).append(t)
        return cls(device_id, enrolments.algorithm,
                   {u.user_id: Member(u, tuple(sorted(by_uid.get(u.uid, ()), key=lambda t: t.finger)))
                    for u in enrolments.users})


@dataclass(frozen=True)
class Remembered:
    """The previous sync's view of one terminal: PIN -> name, and the PINs not to copy back to it (deleted there)."""

    users: Mapping[str, str] = field(default_factory=dict)
    withheld: Mapping[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"users": dict(self.users), "withheld": dict(self.withheld)}

    @classmethod
    def from_json(cls, value: object) -> Remembered:
        if not isinstance(value, dict):
            return cls()
        users, withheld = value.get("users"), value.get("withheld")
        return cls({str(k): str(v) for k, v in users.items()} if isinstance(users, dict) else {},
                   {str(k): str(v) for k, v in withheld.items()} if isinstance(withheld, dict) else {})


@dataclass(frozen=True)
class Action:
    """One write: ``copy`` a user (with templates when ``templates``) from ``source`` to ``target``; add the
    ``templates`` of a user the target holds without any; or ``delete`` the user from ``target``."""

    kind: str  # "copy" | "templates" | "delete"
    target: str
    user_id: str
    source: str = ""
    templates: bool = False


@dataclass(frozen=True)
class Conflict:
    """One PIN held as different persons: never written, reported."""

    user_id: str
    devices: tuple[str, ...]
    reason: str

    def key(self) -> str:
        return f"{self.user_id}@{','.join(self.devices)}"


@dataclass(frozen=True)
class SyncPlan:
    """What a sync of one group would do; ``notes`` are reported only (e.g. users copied without templates)."""

    actions: tuple[Action, ...]
    conflicts: tuple[Conflict, ...]
    notes: tuple[str, ...]
    #: device id -> PINs withheld from it (deleted there), with the name they had.
    withheld: Mapping[str, Mapping[str, str]]


def _compatible(a: int, b: int) -> bool:
    return bool(a) and a == b


def _conflict(user_id: str, holders: Sequence[tuple[TerminalView, Member]]) -> Conflict | None:
    names = {m.user.name for _, m in holders if m.user.name}
    devices = tuple(v.device_id for v, _ in holders)
    if len(names) > 1:
        return Conflict(user_id, devices, "different names: " + ", ".join(
            f"{v.device_id}={m.user.name!r}" for v, m in holders))
    for view, member in holders:
        mine = member.template_set()
        for other_view, other in holders:
            theirs = other.template_set()
            if (other_view.device_id > view.device_id and _compatible(view.algorithm, other_view.algorithm)
                    and mine and theirs and mine != theirs):
                return Conflict(user_id, devices, f"different fingerprint templates on {view.device_id} "
                                f"({len(mine)} finger(s)) and {other_view.device_id} ({len(theirs)} finger(s))")
    return None


def plan_sync(views: Sequence[TerminalView], previous: Mapping[str, Remembered], *,
              sync_deletes: bool, drop_ratio: float = 0.2) -> SyncPlan:
    """The actions that make the group's terminals agree; pure (no I/O), deterministic.

    Never an action on a PIN in conflict; a delete only with ``sync_deletes`` and only of a user the previous
    sync saw on some terminal that no longer holds it (and only where the name is the one it had there).
    A terminal that lost a sharp share (``drop_ratio``) of the users it had is taken for reset or replaced: its
    losses are not deletes (its memory is set aside) and the group's users are copied back to it.
    """
    actions: list[Action] = []
    conflicts: list[Conflict] = []
    notes: list[str] = []
    previous = dict(previous)
    for v in views:
        memory = previous.get(v.device_id, Remembered())
        lost = sum(1 for pin in memory.users if pin not in v.users)
        if len(memory.users) > 1 and lost >= max(2.0, drop_ratio * len(memory.users)):
            notes.append(f"{v.device_id} lost {lost} of the {len(memory.users)} users it had at the previous sync "
                         "(reset or replaced?): not taken as deletes; the group's users are copied back to it")
            previous[v.device_id] = Remembered()
    withheld: dict[str, dict[str, str]] = {v.device_id: {} for v in views}
    no_templates: dict[tuple[str, str], list[str]] = {}
    pins = sorted({pin for v in views for pin in v.users}
                  | {pin for v in views for pin in previous.get(v.device_id, Remembered()).users}
                  | {pin for v in views for pin in previous.get(v.device_id, Remembered()).withheld})
    for pin in pins:
        holders = [(v, v.users[pin]) for v in views if pin in v.users]
        deleted_on: dict[str, str] = {}
        for v in views:
            memory = previous.get(v.device_id, Remembered())
            if pin in v.users:
                continue
            if pin in memory.users:
                deleted_on[v.device_id] = memory.users[pin]
            elif pin in memory.withheld:
                deleted_on[v.device_id] = memory.withheld[pin]
        if not holders:
            continue  # gone everywhere: nothing to withhold any more
        for device_id, name in deleted_on.items():
            withheld[device_id][pin] = name
        conflict = _conflict(pin, holders)
        if conflict is not None:
            conflicts.append(conflict)
            continue
        # A delete seen now, or one withheld earlier (sync_deletes was off then): both are "lost by X".
        if deleted_on and sync_deletes:
            names = set(deleted_on.values())
            kept = []
            for view, member in holders:
                if member.user.name in names:
                    actions.append(Action("delete", view.device_id, pin, source=sorted(deleted_on)[0]))
                    withheld[view.device_id][pin] = member.user.name  # not copied back from a holder left
                else:
                    kept.append((view, member))
                    notes.append(f"PIN {pin} was deleted on {', '.join(sorted(deleted_on))} but {view.device_id} "
                                 f"holds it as {member.user.name!r}: not deleted there")
            for view in views:  # being deleted in the group: copied to no terminal that lacks it
                if pin not in view.users:
                    withheld[view.device_id][pin] = deleted_on[sorted(deleted_on)[0]]
            holders = kept  # those left in step among themselves (e.g. templates they lack)
        elif deleted_on:
            notes.append(f"PIN {pin} was deleted on {', '.join(sorted(deleted_on))}: not copied back there, "
                         "kept on the other terminals (sync_deletes = false)")
        for view in views:
            if pin in withheld[view.device_id]:
                continue
            same_alg = [(v, m) for v, m in holders if _compatible(v.algorithm, view.algorithm) and m.templates]
            if pin not in view.users:
                source_view = (same_alg or sorted(holders, key=lambda h: -len(h[1].templates)))[0][0]
                actions.append(Action("copy", view.device_id, pin, source_view.device_id, bool(same_alg)))
                if not same_alg and any(m.templates for _, m in holders):
                    no_templates.setdefault((view.device_id, "copied"), []).append(pin)
            elif not view.users[pin].templates:
                if same_alg:
                    actions.append(Action("templates", view.device_id, pin, same_alg[0][0].device_id, True))
                elif any(m.templates for _, m in holders):
                    no_templates.setdefault((view.device_id, "held"), []).append(pin)
    # One note per terminal, not one per user: a terminal of another algorithm may lack every template.
    algorithms = {v.device_id: v.algorithm or "unknown" for v in views}
    for (device_id, how), pins_there in sorted(no_templates.items()):
        listed = ", ".join(pins_there[:10]) + (f" and {len(pins_there) - 10} more" if len(pins_there) > 10 else "")
        what = ("copied to {d} without templates" if how == "copied" else "have no template on {d}").format(
            d=device_id)
        notes.append(f"{len(pins_there)} user(s) {what} (PIN {listed}): its fingerprint algorithm "
                     f"({algorithms[device_id]}) differs from the terminals that hold them; the fingers must be "
                     "enrolled there again")
    return SyncPlan(tuple(actions), tuple(conflicts), tuple(notes),
                    {d: dict(w) for d, w in withheld.items() if w})


def remember(views: Sequence[TerminalView], plan: SyncPlan) -> dict[str, Remembered]:
    """The memory the next sync starts from: each terminal's users now, and what stays withheld from it."""
    return {v.device_id: Remembered({pin: m.user.name for pin, m in v.users.items()},
                                    dict(plan.withheld.get(v.device_id, {})))
            for v in views}


# -- groups ---------------------------------------------------------------------------------------------------


def sync_groups(config: Config) -> list[list[DeviceConfig]]:
    """The configured groups (enabled terminals only), else every enabled ZK, SOAP and push terminal as one group."""
    enabled = {d.id: d for d in config.devices if d.enabled and d.driver in ENROLMENT_DRIVERS}
    if config.enrol.sync_groups:
        groups = [[enabled[d] for d in group if d in enabled] for group in config.enrol.sync_groups]
    else:
        groups = [list(enabled.values())]
    return [g for g in groups if len(g) >= 2]


# -- running it -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DeviceWrite:
    """What the sync wrote to one terminal, as verified by reading it back."""

    device_id: str
    users: int = 0
    templates: int = 0
    deleted: int = 0
    #: PIN -> why it was not (fully) written.
    failed: Mapping[str, str] = field(default_factory=dict)
    error: str = ""


@dataclass(frozen=True)
class GroupResult:
    """One group's sync: its plan, and (unless a dry run) what each terminal got."""

    devices: tuple[str, ...]
    plan: SyncPlan
    writes: tuple[DeviceWrite, ...] = ()
    #: Terminals that could not be read (the group was then not synced: a view would be missing).
    unreadable: Mapping[str, str] = field(default_factory=dict)
    dry_run: bool = False

    @property
    def ok(self) -> bool:
        return not self.unreadable and all(not w.error and not w.failed for w in self.writes)


def _read_view(device: DeviceConfig, driver_factory: DriverFactory, timeout_s: float) -> TerminalView:
    driver = driver_factory(device)
    with driver.connect(deadline=time.monotonic() + timeout_s) as session:
        if not isinstance(session, ReadsEnrolments):
            raise DriverError(f"the {device.driver} driver cannot read enrolments", transient=False)
        return TerminalView.of(device.id, session.read_enrolments())


def _apply(device: DeviceConfig, actions: Sequence[Action], views: Mapping[str, TerminalView],
           driver_factory: DriverFactory, timeout_s: float) -> tuple[DeviceWrite, TerminalView]:
    """Write one terminal's actions in one session, then read it back in another and verify."""
    copies = [a for a in actions if a.kind == "copy"]
    fills = [a for a in actions if a.kind == "templates"]
    deletes = [a for a in actions if a.kind == "delete"]
    # Users copied from several terminals: give each a distinct key uid before restore's uid mapping.
    incoming: list[EnrolledUser] = []
    incoming_templates: list[Template] = []
    used: set[int] = set()
    next_key = 1 + max([0, *(m.user.uid for v in views.values() for m in v.users.values())])
    for a in copies:
        member = views[a.source].users[a.user_id]
        key = member.user.uid
        if key in used:
            key, next_key = next_key, next_key + 1
        used.add(key)
        u = member.user
        incoming.append(EnrolledUser(key, u.user_id, u.name, u.privilege, u.card, u.group_id, u.password))
        if a.templates:
            incoming_templates += [Template(key, t.finger, t.valid, t.data) for t in member.templates]
    driver = driver_factory(device)
    with driver.connect(deadline=time.monotonic() + timeout_s) as session:
        if not isinstance(session, ReadsEnrolments) or not isinstance(session, WritesEnrolments):
            raise DriverError(f"the {device.driver} driver cannot write enrolments", transient=False)
        before = TerminalView.of(device.id, session.read_enrolments())
        # The terminal may have changed since it was read for the plan: restore's mapping skips a PIN now held
        # under another name, a fill or a delete is done only when the user is still as planned.
        plan, skipped = plan_uids(incoming, [m.user for m in before.users.values()])
        mapped = list(plan.values())
        by_key = {k: u.uid for k, u in plan.items()}
        copied_templates = [Template(by_key[t.uid], t.finger, t.valid, t.data)
                            for t in incoming_templates if t.uid in by_key]
        changed: list[str] = []
        fill_owners: list[EnrolledUser] = []
        fill_templates: list[Template] = []
        for a in fills:
            here = before.users.get(a.user_id)
            planned = views[device.id].users.get(a.user_id)
            if here is None or here.templates or planned is None or here.user != planned.user:
                changed.append(a.user_id)
                continue
            fill_owners.append(here.user)
            fill_templates += [Template(here.user.uid, t.finger, t.valid, t.data)
                               for t in views[a.source].users[a.user_id].templates]
        templates = copied_templates + fill_templates
        doomed = [before.users[a.user_id].user.uid for a in deletes
                  if a.user_id in before.users
                  and before.users[a.user_id].user == views[device.id].users[a.user_id].user]
        if mapped:
            session.write_users(mapped)
        write_error = ""
        if templates:
            try:
                session.write_templates(templates, [*mapped, *fill_owners])
            except DriverError as exc:  # capacity: the read-back tells what was stored
                if exc.kind not in ("protocol_error", "busy"):
                    raise
                write_error = str(exc)
        if doomed:
            if not isinstance(session, DeletesEnrolments):
                raise DriverError(f"the {device.driver} driver cannot delete users", transient=False)
            session.delete_users(doomed)
    with driver.connect(deadline=time.monotonic() + timeout_s) as session:
        assert isinstance(session, ReadsEnrolments)
        after_raw = session.read_enrolments()
    after = TerminalView.of(device.id, after_raw)
    failed: dict[str, str] = {}
    outcomes = verify_written(incoming, plan, skipped, copied_templates, "", write_error, after_raw.users,
                              after_raw.templates)
    wanted_fingers = {u.user_id: sum(1 for t in incoming_templates if t.uid == u.uid) for u in incoming}
    for o in outcomes:
        if o.status == "skipped" or o.fingers < wanted_fingers.get(o.user_id, 0):
            failed[o.user_id] = o.reason or "fingers not stored identically"
    for pin in changed:
        failed[pin] = "the terminal's user changed since it was read: not written"
    filled = 0
    for a in fills:
        if a.user_id in failed:
            continue
        want = views[a.source].users[a.user_id].template_set()
        got = after.users[a.user_id].template_set() if a.user_id in after.users else frozenset()
        if got != want:
            failed[a.user_id] = "templates not stored identically" + (f": {write_error}" if write_error else "")
        else:
            filled += len(want)
    for a in deletes:
        if a.user_id in after.users:
            failed[a.user_id] = "still on the terminal after the delete (changed meanwhile?)"
    copied = [o for o in outcomes if o.user_id not in failed]
    return DeviceWrite(device.id, users=len(copied), templates=sum(o.fingers for o in copied) + filled,
                       deleted=len(doomed) - sum(1 for a in deletes if a.user_id in failed),
                       failed=failed), after


def sync_group(devices: Sequence[DeviceConfig], repo: EnrolRepo, *, actor: str, timeout_s: float,
               sync_deletes: bool, hold: Hold = run_now, dry_run: bool = False,
               driver_factory: DriverFactory | None = None, stop: threading.Event | None = None,
               drop_ratio: float = 0.2) -> GroupResult:
    """Read every terminal of the group, plan, and (unless ``dry_run``) write and verify; audited per terminal.
    ``stop`` (the daemon stopping) ends the run before the next terminal is contacted."""
    factory = driver_factory or registry_driver
    ids = tuple(d.id for d in devices)
    views: dict[str, TerminalView] = {}
    unreadable: dict[str, str] = {}
    for device in devices:
        if stop is not None and stop.is_set():
            unreadable[device.id] = "the daemon is stopping"
            continue

        def read(device: DeviceConfig = device) -> TerminalView:
            return _read_view(device, factory, timeout_s)

        try:
            view = hold(device.id, read)
        except DriverError as exc:
            unreadable[device.id] = f"{exc.kind}: {exc}"
            continue
        if view is None:
            unreadable[device.id] = "its poll did not end in time"
            continue
        views[device.id] = view
        repo.audit(actor, "read", device.id, users=len(view.users),
                   templates=sum(len(m.templates) for m in view.users.values()), detail="office sync: read")
    memory_raw = repo.sync_memory()
    previous = {d: Remembered.from_json(memory_raw.get(d)) for d in ids}
    if unreadable:
        # Without every view a "missing" user cannot be told from a deleted one: nothing is written.
        log.warning("enrolment sync of a group skipped: a terminal could not be read", group=list(ids),
                    unreadable=sorted(unreadable))
        plan = plan_sync(list(views.values()), previous, sync_deletes=sync_deletes, drop_ratio=drop_ratio)
        return GroupResult(ids, SyncPlan((), plan.conflicts, plan.notes, plan.withheld), (), unreadable, dry_run)
    ordered = [views[d] for d in ids]
    plan = plan_sync(ordered, previous, sync_deletes=sync_deletes, drop_ratio=drop_ratio)
    _report_conflicts(repo, memory_raw, ids, plan)
    if dry_run:
        return GroupResult(ids, plan, (), {}, True)
    writes: list[DeviceWrite] = []
    after = dict(views)
    for device in devices:
        mine = [a for a in plan.actions if a.target == device.id]
        if not mine:
            continue
        if stop is not None and stop.is_set():
            writes.append(DeviceWrite(device.id, error="not written: the daemon is stopping"))
            continue

        def job(device: DeviceConfig = device, mine: list[Action] = mine) -> tuple[DeviceWrite, TerminalView]:
            return _apply(device, mine, views, factory, timeout_s)

        try:
            done = hold(device.id, job)
        except DriverError as exc:
            repo.audit(actor, "sync", device.id, ok=False, detail=f"office sync: {exc.kind}: {exc}")
            writes.append(DeviceWrite(device.id, error=f"{exc.kind}: {exc}"))
            continue
        if done is None:
            writes.append(DeviceWrite(device.id, error="its poll did not end in time"))
            continue
        write, after[device.id] = done
        writes.append(write)
        repo.audit(actor, "sync", device.id, users=write.users, templates=write.templates, ok=not write.failed,
                   detail=(f"office sync from {', '.join(sorted({a.source for a in mine}))}: {write.users} user(s), "
                           f"{write.templates} template(s), {write.deleted} deleted"
                           + (f"; {len(write.failed)} not written" if write.failed else "")))
        log.info("enrolment sync wrote a terminal", device=device.id, users=write.users, templates=write.templates,
                 deleted=write.deleted, failed=len(write.failed))
    if all(not w.error for w in writes):
        repo.save_sync_memory({d: r.to_json() for d, r in remember([after[d] for d in ids], plan).items()})
    return GroupResult(ids, plan, tuple(writes), {}, False)


def _report_conflicts(repo: EnrolRepo, memory_raw: Mapping[str, Any], ids: Sequence[str], plan: SyncPlan) -> None:
    """Log each conflict once (while it lasts) and keep the group's current ones for `fpgw enrol status`."""
    known = memory_raw.get("conflicts")
    known = known if isinstance(known, dict) else {}
    group_key = ",".join(ids)
    before = known.get(group_key, {}) if isinstance(known.get(group_key), dict) else {}
    now = {c.key(): c.reason for c in plan.conflicts}
    for conflict in plan.conflicts:
        if conflict.key() not in before:
            log.warning("enrolment sync conflict: not written", pin=conflict.user_id, devices=list(conflict.devices),
                        reason=conflict.reason)
    if now != before:
        known = {**known, group_key: now}
        repo.save_sync_memory({"conflicts": known})


def current_conflicts(repo: EnrolRepo) -> list[tuple[str, str]]:
    """(PIN@devices, why) of every conflict the last sync of each group found."""
    known = repo.sync_memory().get("conflicts")
    if not isinstance(known, dict):
        return []
    return sorted((k, str(v)) for group in known.values() if isinstance(group, dict) for k, v in group.items())


def sync_office(config: Config, repo: EnrolRepo, *, actor: str, hold: Hold = run_now, dry_run: bool = False,
                only: Sequence[str] = (), driver_factory: DriverFactory | None = None,
                stop: threading.Event | None = None) -> list[GroupResult]:
    """Sync every group (or the groups holding a device of ``only``)."""
    results = []
    for group in sync_groups(config):
        if only and not {d.id for d in group} & set(only):
            continue
        results.append(sync_group(group, repo, actor=actor, timeout_s=config.enrol.timeout_s,
                                  sync_deletes=config.enrol.sync_deletes, hold=hold, dry_run=dry_run,
                                  driver_factory=driver_factory, stop=stop,
                                  drop_ratio=config.enrol.drop_warn_ratio))
    return results
