"""One trainer per workdir: an exclusive lock on ``{workdir}/.lock`` held for the whole run.

The lock is an OS advisory lock (``fcntl.flock``) on an open file, so the kernel releases it when the holder
dies in any way (SIGKILL included): a stale lock of a dead process is simply taken over by the next trainer.
The file also records the holder's PID and host so that the refused second trainer can name them.
"""

from __future__ import annotations

import fcntl
import json
import os
import pathlib
import socket
from typing import Any

LOCK_NAME = ".lock"


class WorkdirLockedError(RuntimeError):
    """Another live process holds this workdir's lock; the message names the workdir and the holder."""


class WorkdirLock:
    """``with WorkdirLock(workdir): ...`` — raises :class:`WorkdirLockedError` at once when another process
    holds it (it never waits)."""

    def __init__(self, workdir: str | os.PathLike, holder: str = "another trainer",
                 hint: str = "wait for it to finish or use another --workdir"):
        self.workdir = pathlib.Path(workdir)
        self.path = self.workdir / LOCK_NAME
        self.holder, self.hint = holder, hint
        self._fd: int | None = None

    def acquire(self) -> "WorkdirLock":
        self.workdir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise WorkdirLockedError(
                f"{'workdir ' if self.holder == 'another trainer' else ''}{self.workdir} is in use by {self.holder} "
                f"(PID {holder.get('pid', '?')} on host {holder.get('host', '?')}); {self.hint}"
            ) from None
        # We hold the lock: record ourselves (the file may hold a dead holder's record; overwrite it).
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname()}).encode() + b"\n", 0)
        os.fsync(fd)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def __enter__(self) -> "WorkdirLock":
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


def live_holder(workdir: str | os.PathLike) -> dict | None:
    """The ``{"pid", "host"}`` record of the process holding ``workdir``'s lock, or ``None`` when none does.

    Read without locking (a probe lock would refuse a trainer starting at that instant): a released lock's file
    is empty, and a record left by a killed holder is recognised on its own host by the missing process. A
    holder on another host is taken to be alive.
    """
    try:
        record = json.loads((pathlib.Path(workdir) / LOCK_NAME).read_text() or "{}")
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    if not isinstance(record, dict) or not isinstance(record.get("pid"), int):
        return None
    if record.get("host") == socket.gethostname():
        if record["pid"] == os.getpid():
            return None
        try:
            os.kill(record["pid"], 0)
        except ProcessLookupError:
            return None
        except PermissionError:  # alive, another user's
            pass
    return record


def _read_holder(fd: int) -> dict:
    try:
        return json.loads(os.pread(fd, 4096, 0).decode() or "{}")
    except (ValueError, OSError):
        return {}
