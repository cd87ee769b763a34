"""One terminal at a time across processes: an advisory lock file per device, ``<state_dir>/locks/``.

    daemon: PollScheduler._run_claimed (each poll, non-blocking: held elsewhere -> the poll is skipped)
            PollScheduler.run_exclusive (the daily enrolment backup and sync: waits, bounded)
    fpgw enrol backup / restore / sync (gateway/cli/enrol.py): waits, bounded, then refuses with a message

The daemon's own per-device hold (run_exclusive) lives in its memory; a command run from a shell is another
process, so both sides also take this lock (``fcntl.flock``: released by the kernel when a process dies, so a
killed command never leaves a terminal locked). The lock directory is made inside an existing state
directory only; without one there is nothing to share and nothing is locked (docs/enrolment.md). A file that
cannot be opened (another user made it and this one may not read it) is logged once and not locked: polling
never stops for a lock file.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

import structlog

log = structlog.get_logger(__name__)

#: Seconds between two tries while waiting for a lock another process holds.
RETRY_S = 0.2


class DeviceLock:
    """A held lock; ``release()`` (or leaving the with-block) frees it. ``path`` None: nothing was locked."""

    def __init__(self, fd: int | None, path: Path | None) -> None:
        self._fd = fd
        self.path = path

    def release(self) -> None:
        """Free the lock (idempotent)."""
        fd, self._fd = self._fd, None
        if fd is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_UN)
            finally:
                os.close(fd)

    def __enter__(self) -> DeviceLock:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()


class DeviceLocks:
    """The lock files of one state directory."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = Path(state_dir)
        self.dir = self.state_dir / "locks"
        self._dir_ready = False
        self._warned: set[str] = set()
        self._warn_lock = threading.Lock()

    def path(self, device_id: str) -> Path:
        """The lock file of a device (its id made file-safe, plus a short hash so two ids never share one)."""
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", device_id)[:60]
        digest = hashlib.sha256(device_id.encode("utf-8")).hexdigest()[:8]
        return self.dir / f"device-{safe}-{digest}.lock"

    def try_hold(self, device_id: str) -> DeviceLock | None:
        """The device's lock when free now; None when another process (or another holder here) holds it."""
        fd, path = self._open(device_id)
        if fd is None:
            return DeviceLock(None, None)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        except OSError as exc:
            os.close(fd)
            self._warn_once(device_id, f"cannot lock {path}: {exc.strerror or exc}")
            return DeviceLock(None, None)
        return DeviceLock(fd, path)

    def hold(self, device_id: str, wait_s: float, *, stop: threading.Event | None = None,
             on_wait: Callable[[], None] | None = None) -> DeviceLock | None:
        """The device's lock, waiting up to ``wait_s`` for its holder; None when it was not freed in time (or
        ``stop`` was set). ``on_wait`` is called once, when the lock is found held."""
        deadline = time.monotonic() + wait_s
        told = False
        while True:
            lock = self.try_hold(device_id)
            if lock is not None:
                return lock
            if not told and on_wait is not None:
                on_wait()
            told = True
            left = deadline - time.monotonic()
            if left <= 0 or (stop is not None and stop.is_set()):
                return None
            if stop is not None:
                stop.wait(min(RETRY_S, left))
            else:
                time.sleep(min(RETRY_S, left))

    def _open(self, device_id: str) -> tuple[int | None, Path]:
        path = self.path(device_id)
        if not self._dir_ready:  # once made, a poll costs open + flock + close only
            if not self.state_dir.is_dir():
                return None, path
            try:
                self.dir.mkdir(mode=0o775, exist_ok=True)
            except OSError as exc:
                self._warn_once(device_id, f"cannot make {self.dir}: {exc.strerror or exc}")
                return None, path
            self._dir_ready = True
        try:
            return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o664), path
        except PermissionError:
            pass  # made by another user (root's shell, the fpgw service): a read-only descriptor locks as well
        except OSError as exc:
            self._warn_once(device_id, f"cannot open {path}: {exc.strerror or exc}")
            return None, path
        try:
            return os.open(path, os.O_RDONLY | os.O_CLOEXEC), path
        except OSError as exc:
            self._warn_once(device_id, f"cannot open {path}: {exc.strerror or exc}")
            return None, path

    def _warn_once(self, device_id: str, why: str) -> None:
        with self._warn_lock:
            if device_id in self._warned:
                return
            self._warned.add(device_id)
        log.warning("device lock file unusable: this terminal is not coordinated with other fpgw processes",
                    device=device_id, reason=why)
