"""Enrolments of push (ADMS) terminals: what they upload is kept sealed; backups, restores and syncs go through it.

    terminal --OPERLOG USER/FP, BIODATA lines--> gateway.push.receiver -> gateway.push.enrolment (parse)
        -> store_upload(): seal passwords and templates -> PushEnrolRepo (table enrol_push)
    backup / restore / sync (backup.py, restore.py, sync.py) --driver_factory--> PushEnrolDriver(device)
        session.read_enrolments(): [fresh: queue DATA QUERY USERINFO + FINGERTMP, wait until the terminal reports
                                    them done, drop what it did not send again] -> open the rows -> Enrolments
        session.write_users / write_templates / delete_users: queue DATA UPDATE USERINFO / FINGERTMP /
                                    DATA DELETE USERINFO, wait until the terminal reports each (Return=0 or why not)

A push terminal is never connected to: it calls the receiver every ``Delay`` seconds and takes the queued
commands, so every wait here is bounded by the session deadline and the CLI process talks to the daemon only
through the database (the command queue and the mirror). Templates and passwords are sealed with the same key
and envelope as the ZK backup (crypto.py), bound to the terminal's serial, PIN and finger; they are opened only
in memory to build Enrolments. The uid of a push user is handed out here (the protocol has none): the
PIN's number when small, else the next free one, in PIN order, so two reads of the same mirror agree.
"""

from __future__ import annotations

import base64
import re
import time
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, cast

import structlog

from drivers.base import (
    DeviceInfo,
    Driver,
    EnrolledUser,
    Enrolments,
    EnrolProgress,
    Progress,
    ProtocolError,
    Template,
    Unreachable,
)
from gateway.config import Config, DeviceConfig
from gateway.enrol.crypto import Keyring
from gateway.store.push import PushCommand, PushRepo
from gateway.store.pushenrol import USER_ROW, PushEnrolRepo, PushEnrolRow
from gateway.store.schema import utcnow

log = structlog.get_logger(__name__)

#: Highest uid handed out (the enrol_user.uid column and ZK's user serial are small integers).
UID_MAX = 0xFFFF
#: Seconds between two looks at the command queue while waiting for the terminal.
WAIT_STEP_S = 0.2
#: Commands queued at once at most (the receiver hands out 10 per getrequest; the queue holds 50).
QUEUE_BATCH = 40


@dataclass(frozen=True, slots=True)
class UploadedUser:
    """A USER line of a push upload. The password is a secret: out of repr, sealed before it is stored."""

    pin: str
    name: str = ""
    privilege: int = 0
    card: int = 0
    group_id: str = ""
    password: str = field(default="", repr=False)


@dataclass(frozen=True, slots=True)
class UploadedFinger:
    """An FP (or fingerprint BIODATA) line of a push upload: the template bytes, never shown."""

    pin: str
    finger: int
    valid: int
    data: bytes = field(repr=False)
    #: BIODATA MajorVer (the algorithm version the template is for); 0 = not said (FP lines).
    algorithm: int = 0


def push_template_context(serial: str, pin: str, finger: int) -> str:
    """Associated data of a push terminal's sealed template (bound to serial, PIN and finger)."""
    return f"fpgw-enrol/push-template/{serial}/{pin}/{finger}"


def push_password_context(serial: str, pin: str) -> str:
    """Associated data of a push terminal's sealed password."""
    return f"fpgw-enrol/push-password/{serial}/{pin}"


def store_upload(repo: PushEnrolRepo, serial: str, keyring: Keyring, users: Collection[UploadedUser],
                 fingers: Collection[UploadedFinger], at: datetime | None = None) -> None:
    """Seal the passwords and templates of one upload and store it (one transaction)."""
    key_id = keyring.current.key_id
    user_rows = [PushEnrolRow(u.pin, USER_ROW, u.name, u.privilege, u.card, u.group_id, 1, 0,
                              key_id if u.password else "",
                              keyring.seal(u.password.encode("utf-8"), push_password_context(serial, u.pin))
                              if u.password else None) for u in users]
    finger_rows = [PushEnrolRow(f.pin, f.finger, valid=f.valid, size=len(f.data), key_id=key_id,
                                blob=keyring.seal(f.data, push_template_context(serial, f.pin, f.finger)))
                   for f in fingers]
    repo.save_upload(serial, user_rows, finger_rows, at)
    algorithms = {f.algorithm for f in fingers if f.algorithm}
    if len(algorithms) == 1:
        repo.set_algorithm(serial, algorithms.pop())


def assign_uids(pins: list[str]) -> dict[str, int]:
    """PIN -> uid: the PIN's number when it is 1-65535 and free, else the next free number (PINs in order)."""
    out: dict[str, int] = {}
    taken: set[int] = set()
    for pin in sorted(pins):
        if re.fullmatch(r"[0-9]{1,5}", pin) and 0 < int(pin) <= UID_MAX and int(pin) not in taken:
            out[pin] = int(pin)
            taken.add(out[pin])
    free = 1
    for pin in sorted(pins):
        if pin in out:
            continue
        while free in taken:
            free += 1
        if free > UID_MAX:
            raise ProtocolError(f"more than {UID_MAX} users: no uid left for PIN {pin[:20]!r}", transient=False)
        out[pin] = free
        taken.add(free)
    return out


def open_mirror(repo: PushEnrolRepo, serial: str, keyring: Keyring) -> Enrolments:
    """The terminal's uploaded users and templates, opened (templates of users never uploaded are left out)."""
    rows = repo.rows(serial)
    user_rows = {r.pin: r for r in rows if r.finger == USER_ROW}
    uids = assign_uids(list(user_rows))
    users = tuple(EnrolledUser(uids[pin], pin, r.name, r.privilege, r.card, r.group_id,
                               keyring.open(r.blob, push_password_context(serial, pin)).decode("utf-8")
                               if r.blob is not None else "")
                  for pin, r in sorted(user_rows.items(), key=lambda kv: uids[kv[0]]))
    templates = tuple(Template(uids[r.pin], r.finger, r.valid,
                               keyring.open(r.blob, push_template_context(serial, r.pin, r.finger)))
                      for r in rows if r.finger != USER_ROW and r.pin in uids and r.blob is not None)
    return Enrolments(users, templates, repo.algorithm(serial), 0)


# -- commands -------------------------------------------------------------------------------------


def _clean(value: str) -> str:
    """A value inside a TAB-separated command: no TAB, CR or LF (a name with a tab would shift every field)."""
    return " ".join(value.replace("\t", " ").replace("\r", " ").replace("\n", " ").split(" "))


def update_user_command(user: EnrolledUser) -> str:
    """``DATA UPDATE USERINFO PIN=..\\tName=..\\tPri=..\\tPasswd=..\\tCard=..\\tGrp=..`` (other-protocols §3.5)."""
    card = str(user.card) if user.card else ""
    return (f"DATA UPDATE USERINFO PIN={_clean(user.user_id)}\tName={_clean(user.name)}\tPri={user.privilege}\t"
            f"Passwd={_clean(user.password)}\tCard={card}\tGrp={_clean(user.group_id) or '1'}")


def update_finger_command(pin: str, template: Template) -> str:
    """``DATA UPDATE FINGERTMP PIN=..\\tFID=..\\tSize=..\\tValid=..\\tTMP=<base64>`` (algorithm 10 and older)."""
    return (f"DATA UPDATE FINGERTMP PIN={_clean(pin)}\tFID={template.finger}\tSize={len(template.data)}\t"
            f"Valid={template.valid}\tTMP={base64.b64encode(template.data).decode('ascii')}")


def delete_user_command(pin: str) -> str:
    """``DATA DELETE USERINFO PIN=..`` (its templates go with it)."""
    return f"DATA DELETE USERINFO PIN={_clean(pin)}"


#: Asking the terminal to upload every user / every template (vendor doc forms without a PIN: unverified
#: that every firmware takes them; a refusal is reported, and the mirror is then not pruned).
QUERY_USERS = "DATA QUERY USERINFO"
QUERY_FINGERS = "DATA QUERY FINGERTMP"

#: Prefix of a queued command kept sealed: its text carries a password or a template, which the command queue
#: (kv rows, `fpgw devices commands`, GET /push) must never hold in the clear. The receiver opens it when it hands
#: the command out; everyone else sees the summary after the sealed part.
SEALED_COMMAND = "ENC1 "


def command_context(serial: str) -> str:
    """Associated data of a sealed command: it opens only for its own terminal."""
    return f"fpgw-enrol/push-command/{serial.lower()}"


def seal_command(keyring: Keyring, serial: str, text: str, summary: str) -> str:
    """``ENC1 <sealed base64> <summary>``: the command for the queue, its secret part unreadable."""
    blob = base64.b64encode(keyring.seal(text.encode("utf-8"), command_context(serial))).decode("ascii")
    return f"{SEALED_COMMAND}{blob} {summary}"


def open_command(keyring: Keyring, serial: str, text: str) -> str:
    """The command a terminal is handed: a sealed one opened (EnvelopeError when no key opens it), else as is."""
    if not text.startswith(SEALED_COMMAND):
        return text
    blob = text[len(SEALED_COMMAND):].split(" ", 1)[0]
    return keyring.open(base64.b64decode(blob), command_context(serial)).decode("utf-8")


def command_summary(text: str) -> str:
    """What may be shown of a queued command: a sealed one's summary."""
    if not text.startswith(SEALED_COMMAND):
        return text
    parts = text[len(SEALED_COMMAND):].split(" ", 1)
    return f"{parts[1] if len(parts) > 1 else 'enrolment command'} (sealed)"


#: Command kinds in the queue (`fpgw devices commands` shows them).
KIND_WRITE = "enrol-write"
KIND_DELETE = "enrol-delete"
KIND_QUERY = "enrol-query"


class PushEnrolDriver:
    """drivers.base.Driver for a push terminal's enrolments: its mirror in the database and its command queue."""

    def __init__(self, device: DeviceConfig, engine: Any, keyring_of: Callable[[], Keyring], *,
                 fresh_reads: bool = True, wait_step_s: float = WAIT_STEP_S) -> None:
        if not device.serial:
            raise ValueError(f"{device.id}: a push terminal needs its serial")
        self.device = device
        self.serial = device.serial
        self.mirror = PushEnrolRepo(engine)
        self.queue = PushRepo(engine)
        self._keyring_of = keyring_of
        #: Ask the terminal to upload everything before each read (the daily backup reads the mirror as it is).
        self.fresh_reads = fresh_reads
        self.wait_step_s = wait_step_s

    @contextmanager
    def connect(self, deadline: float | None = None) -> Iterator[PushEnrolSession]:
        """A "session": nothing is opened; the deadline bounds every wait for the terminal."""
        yield PushEnrolSession(self, deadline)


class PushEnrolSession:
    """ReadsEnrolments / WritesEnrolments / DeletesEnrolments of one push terminal, through its command queue."""

    def __init__(self, driver: PushEnrolDriver, deadline: float | None) -> None:
        self._driver = driver
        self._deadline = deadline if deadline is not None else time.monotonic() + 600.0
        self._read_fresh = driver.fresh_reads
        self._pins: dict[int, str] = {}

    def info(self, *, clock: bool = True) -> DeviceInfo:
        """The configured serial (the receiver checks it on every call of the terminal)."""
        return DeviceInfo(serial=self._driver.serial, platform="push")

    def read_enrolments(self, progress: Progress | None = None) -> Enrolments:
        """The mirror, after a complete upload the terminal was asked for (when reads are fresh)."""
        drv = self._driver
        if self._read_fresh:
            asked_at = utcnow()
            results = self._run(KIND_QUERY, [QUERY_USERS, QUERY_FINGERS])
            refused = [f"{c.text}: {c.result}" for c in results if c.state != "done"]
            if refused:
                raise ProtocolError(f"{drv.device.id}: the terminal did not upload its enrolments ({refused[0]})")
            gone = drv.mirror.forget_unseen(drv.serial, asked_at)
            if gone:
                log.info("push terminal no longer holds some uploaded rows", device=drv.device.id,
                         serial=drv.serial, rows=gone)
            self._read_fresh = False  # one complete upload per session is enough (a restore's "before" read)
        enrolments = open_mirror(drv.mirror, drv.serial, drv._keyring_of())
        self._pins = {u.uid: u.user_id for u in enrolments.users}
        if progress is not None:
            progress(len(enrolments.users), len(enrolments.users))
        return enrolments

    def algorithm(self) -> int:
        """The fingerprint algorithm version the terminal reported (INFO fpAlg / BIODATA MajorVer); 0 = unknown."""
        return self._driver.mirror.algorithm(self._driver.serial)

    def write_users(self, users: Collection[EnrolledUser], progress: EnrolProgress | None = None) -> None:
        """DATA UPDATE USERINFO per user; raises ProtocolError naming the first the terminal refused."""
        for u in users:
            self._pins[u.uid] = u.user_id
        results = self._run(KIND_WRITE, [self._sealed(update_user_command(u), f"DATA UPDATE USERINFO PIN={u.user_id}")
                                         for u in users], progress)
        self._raise_refused(results, "user")
        self._read_fresh = True  # the next read must see what the terminal now holds

    def write_templates(self, templates: Collection[Template], owners: Collection[EnrolledUser],
                        progress: EnrolProgress | None = None) -> None:
        """DATA UPDATE FINGERTMP per finger (the owners name the PINs)."""
        pin_of = {**self._pins, **{u.uid: u.user_id for u in owners}}
        missing = [t for t in templates if t.uid not in pin_of]
        if missing:
            raise ProtocolError(f"{self._driver.device.id}: {len(missing)} template(s) without an owner")
        results = self._run(KIND_WRITE, [self._sealed(update_finger_command(pin_of[t.uid], t),
                                                      f"DATA UPDATE FINGERTMP PIN={pin_of[t.uid]} FID={t.finger}")
                                         for t in templates], progress)
        self._raise_refused(results, "template")
        self._read_fresh = True

    def delete_users(self, uids: Collection[int]) -> None:
        """DATA DELETE USERINFO per user; the mirror forgets a user once the terminal confirmed its delete."""
        drv = self._driver
        pins = [self._pins[uid] for uid in uids if uid in self._pins]
        results = self._run(KIND_DELETE, [delete_user_command(pin) for pin in pins])
        for pin, cmd in zip(pins, results, strict=True):
            if cmd.state == "done":
                drv.mirror.drop_user(drv.serial, pin)
        self._raise_refused(results, "delete")
        self._read_fresh = True

    # -- the queue ----------------------------------------------------------------------------------
    def _sealed(self, text: str, summary: str) -> str:
        return seal_command(self._driver._keyring_of(), self._driver.serial, text, _clean(summary)[:120])

    def _run(self, kind: str, texts: list[str], progress: EnrolProgress | None = None) -> list[PushCommand]:
        """Queue the commands (in batches the queue holds) and wait until the terminal reported each one."""
        drv = self._driver
        done: list[PushCommand] = []
        for start in range(0, len(texts), QUEUE_BATCH):
            queued = [drv.queue.queue_command(drv.device.id, drv.serial, kind, text)
                      for text in texts[start:start + QUEUE_BATCH]]
            done += self._wait(queued)
            if progress is not None:
                progress(len(done), len(texts))
        return done

    def _wait(self, queued: list[PushCommand]) -> list[PushCommand]:
        drv = self._driver
        ids = {c.id for c in queued}
        while True:
            answered = {c.id: c for c in drv.queue.commands(drv.serial)
                        if c.id in ids and c.state not in ("queued", "sent")}
            if len(answered) == len(ids):
                return [answered[c.id] for c in queued]
            if time.monotonic() >= self._deadline:
                # Left in the queue: the terminal may still run them; the read-back decides what arrived.
                raise Unreachable(f"{drv.device.id}: the push terminal did not answer {len(ids) - len(answered)} "
                                  f"of {len(ids)} command(s) in time (is it calling the gateway?)")
            time.sleep(drv.wait_step_s)

    def _raise_refused(self, results: list[PushCommand], what: str) -> None:
        refused = [c for c in results if c.state != "done"]
        if refused:
            first = refused[0]
            raise ProtocolError(f"{self._driver.device.id}: the terminal refused {len(refused)} {what} "
                                f"write(s); first: {first.state} {first.result or ''}".rstrip())


def enrol_driver_factory(config: Config, engine: Any, *, fresh_reads: bool = True
                         ) -> Callable[[DeviceConfig], Driver]:
    """A DriverFactory for backup/restore/sync: push terminals through PushEnrolDriver, others by their driver."""
    from gateway.enrol.backup import registry_driver

    keyring: list[Keyring] = []

    def keyring_of() -> Keyring:
        if not keyring:
            keyring.append(Keyring.from_config(config.enrol))
        return keyring[0]

    def factory(device: DeviceConfig) -> Driver:
        if device.pushes:
            # Only the enrolment abilities and info() of a session are used by backup/restore/sync; a push
            # terminal has no log to read here (its punches arrive at the receiver).
            return cast(Driver, PushEnrolDriver(device, engine, keyring_of, fresh_reads=fresh_reads))
        return registry_driver(device)
    return factory


__all__ = [
    "KIND_DELETE",
    "KIND_QUERY",
    "KIND_WRITE",
    "SEALED_COMMAND",
    "PushEnrolDriver",
    "PushEnrolSession",
    "UploadedFinger",
    "UploadedUser",
    "assign_uids",
    "command_summary",
    "enrol_driver_factory",
    "open_command",
    "open_mirror",
    "push_password_context",
    "push_template_context",
    "seal_command",
    "store_upload",
]
