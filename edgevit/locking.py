"""Exclusive locks on a build directory or a cache entry, so that concurrent processes take turns.

Two CI jobs sharing a workspace may start ``edgevit build`` into one directory, and two builds may
both find a builtin model missing from the cache. Each holds an ``flock`` on a lock file while it
writes; the other waits (saying who holds it) up to a timeout, then stops with a one-line error.
The kernel releases an ``flock`` when its holder exits, however it exits, so a killed build never
leaves a stale lock behind. The holder's pid, host, command and start time are written into the
lock file for the message of whoever waits.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

from edgevit.errors import BusyError

POLL_S = 0.2


def _holder(fd: int) -> str:
    """Who holds the lock, from what it wrote into the lock file ('another process' if unknown)."""
    try:
        info = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
    except (OSError, ValueError):
        info = {}
    if not isinstance(info, dict) or "pid" not in info:
        return "another process"
    return (
        f"pid {info['pid']} on {info.get('host', '?')} ({info.get('command', '?')}, since "
        f"{info.get('since', '?')})"
    )


class FileLock:
    """An exclusive (or shared) ``flock`` on ``path``: waits up to ``timeout_s``, then raises BusyError.

    Args:
        path: the lock file (created if missing; it is never deleted, so no two lock files exist).
        what: what the lock guards, for messages (e.g. ``build directory build/x``).
        timeout_s: how long to wait for a holder to finish; 0 fails at once.
        log: receives one line when this process has to wait.
        shared: a reader's lock: any number of readers, but never beside a writer.
        fix: what the error tells the user to do when the wait times out.
    """

    def __init__(
        self,
        path: Path,
        what: str,
        timeout_s: float,
        log: Callable[[str], None] | None = None,
        shared: bool = False,
        fix: str = "wait for it to finish, or give a longer --wait",
    ) -> None:
        self.path = path
        self.what = what
        self.timeout_s = timeout_s
        self.log = log
        self.shared = shared
        self.fix = fix
        self._fd: int | None = None

    def __enter__(self) -> FileLock:
        if self.shared:  # a reader must not create folders, and may lack write access
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o644)
            except OSError:
                try:
                    fd = os.open(self.path, os.O_RDONLY)
                except OSError:
                    return self  # nothing to lock: no writer can be using a directory we cannot open
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o644)
        mode = fcntl.LOCK_SH if self.shared else fcntl.LOCK_EX
        deadline = time.monotonic() + self.timeout_s
        waited = False
        while True:
            try:
                fcntl.flock(fd, mode | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                holder = _holder(fd)
                if time.monotonic() >= deadline:
                    os.close(fd)
                    waited_for = f" (waited {self.timeout_s:g} s)" if self.timeout_s > 0 else ""
                    raise BusyError(f"{self.what} is in use by {holder}{waited_for}", self.fix) from None
                if not waited and self.log is not None:
                    self.log(f"waiting for {self.what}: in use by {holder} (up to {self.timeout_s:g} s)")
                waited = True
                time.sleep(POLL_S)
        if not self.shared:  # a writer says who it is, for the message of whoever waits
            info = {
                "pid": os.getpid(),
                "host": socket.gethostname(),
                "command": " ".join(["edgevit", *sys.argv[1:]])[:200]
                if sys.argv and "edgevit" in sys.argv[0]
                else os.path.basename(sys.argv[0] if sys.argv else "python"),
                "since": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            }
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(info).encode(), 0)
        if waited and self.log is not None:
            self.log(f"{self.what} is free; going on")
        self._fd = fd
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._fd is not None:
            if not self.shared:
                os.ftruncate(self._fd, 0)
            os.close(self._fd)  # closing releases the flock
            self._fd = None
