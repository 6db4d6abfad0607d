"""File locks shared by every worker process on one cache directory.

``flock`` locks die with their process, so a worker killed with SIGKILL never leaves a
lock behind: the next process simply acquires it. Lock files themselves are never
deleted while in use (deleting a lock file lets two processes lock two different
inodes under one name).

Two kinds:
- :class:`DownloadLock` (``locks/<key>.lock``): held by the one process downloading a
  file; its content is a small JSON state that followers in other processes read
  (``token`` identifies the owner's attempt, ``size``, ``state``, ``sha256``).
- :func:`use_lock` (``locks/<sha256>.use``): shared while a blob is being sent;
  eviction takes it exclusively, so a file being read is never evicted.

All functions block; callers run them in a worker thread.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any


class DownloadLock:
    """The exclusive right to download one file into ``tmp/<key>.part``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None
        self._releasing = threading.Lock()

    def try_acquire(self) -> bool:
        """Take the lock without waiting; ``False`` when another process holds it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._fd = fd
        return True

    @property
    def held(self) -> bool:
        """Whether this process holds the lock through this object."""
        return self._fd is not None

    def release(self) -> None:
        """Give the lock up (closing the descriptor releases the flock). Idempotent,
        also from two threads at once (a download cancelled during its clean-up hop)."""
        with self._releasing:
            fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    def write_state(self, state: dict[str, Any]) -> None:
        """Publish the owner's state for followers (owner only)."""
        assert self._fd is not None, "only the owner writes the state"
        data = json.dumps(state).encode()
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, data, 0)

    @staticmethod
    def read_state(path: Path) -> dict[str, Any] | None:
        """The owner's state, or ``None`` while it is empty or half-written."""
        try:
            data = path.read_bytes()
            state = json.loads(data) if data else None
        except (OSError, ValueError):
            return None
        return state if isinstance(state, dict) else None

    @staticmethod
    def is_held(path: Path) -> bool:
        """Whether some process holds the lock right now."""
        try:
            fd = os.open(path, os.O_RDWR)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)  # also releases the probe's lock
        return False


def acquire_shared(path: Path) -> int:
    """A descriptor of ``path`` holding a shared lock (a blob being sent).

    Close it to release. Waits only while eviction holds the lock exclusively.
    """
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except FileNotFoundError:  # the first lock of its directory (the hot path skips this)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
    except BaseException:
        os.close(fd)
        raise
    return fd


@contextlib.contextmanager
def use_lock(path: Path) -> Iterator[None]:
    """Hold a shared lock on ``path`` (a blob being sent) for the block's duration."""
    fd = acquire_shared(path)
    try:
        yield
    finally:
        os.close(fd)


def try_exclusive(path: Path) -> int | None:
    """An exclusively locked descriptor of ``path``, or ``None`` if anyone holds it.

    The caller closes the descriptor to release the lock.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd
