"""One run folder, one writer: an advisory lock that a second trainer on the same folder meets.

    with RunLock.acquire(Path("runs/demo")):   # RunLockedError if another process holds it
        ...
    with lock_on_rank_0(Path("runs/demo"), cluster): ...   # the trainer, under torchrun too

Two trainers writing into one folder would interleave their checkpoints and log lines, and a
resume would then mix two runs. The lock is `flock` on RUN/.lock, which records the holder's pid
and host for the refusal message. The kernel drops a flock when its holder exits by any means,
kill -9 included, so a killed run never leaves a stale lock behind: a .lock file that nobody holds
is simply taken over. flock is advisory (only processes that ask for it are kept out) and some
network filesystems do not honour it; without fcntl (Windows) there is no lock at all.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from ..plugin.errors import RunLockedError

if TYPE_CHECKING:
    from .distributed import Cluster

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

LOCK_NAME = ".lock"
# the lock descriptors this process holds. A forked child (a DataLoader worker) shares the parent's
# flock until it closes its copy, and would keep the folder locked for the seconds it takes to
# notice that a killed parent is gone: so each child closes its copies at once.
_held_fds: set[int] = set()


def _close_in_child() -> None:
    for fd in _held_fds:
        os.close(fd)
    _held_fds.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_in_child)


class RunLock:
    """Holds RUN/.lock until `release` (or the end of a `with` block, or the process)."""

    def __init__(self, run_dir: Path, fd: Optional[int], created_dir: bool):
        self.run_dir, self.path = run_dir, run_dir / LOCK_NAME
        self._fd, self._created_dir = fd, created_dir

    @classmethod
    def acquire(cls, run_dir: str | os.PathLike) -> "RunLock":
        """Take the lock, creating the folder if need be; RunLockedError, naming the holder, if
        another process (or another RunLock in this one) holds it. A refused call writes nothing."""
        run_dir = Path(run_dir)
        if fcntl is None:
            return cls(run_dir, None, created_dir=False)
        created_dir = not run_dir.exists()
        run_dir.mkdir(parents=True, exist_ok=True)
        path = run_dir / LOCK_NAME
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _describe_holder(os.read(fd, 4096))
                os.close(fd)
                raise RunLockedError(f"{run_dir} is in use by another trainer ({holder}); wait for it to end, "
                                     "stop it, or give another --out") from None
            # the previous holder removes the file as it releases: if it did so between our open and
            # our flock, we hold a file that the next trainer will not find, so start again
            if _same_file(fd, path):
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname()}).encode() + b"\n")
        _held_fds.add(fd)
        return cls(run_dir, fd, created_dir)

    def release(self) -> None:
        """Give the lock up. A folder the lock created and nothing else wrote to (a start that
        failed on its data) is removed with it."""
        if self._fd not in _held_fds:  # released already, or this is a forked child
            return
        self.path.unlink(missing_ok=True)  # while still held, so no other trainer has taken it
        _held_fds.discard(self._fd)
        os.close(self._fd)
        self._fd = None
        if self._created_dir:
            with contextlib.suppress(OSError):  # not empty: the run wrote into it
                self.run_dir.rmdir()

    def __enter__(self) -> "RunLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def lock_on_rank_0(run_dir: Path, cluster: "Cluster") -> contextlib.AbstractContextManager:
    """The run's lock, held by rank 0 alone (the other ranks write nothing into the run folder).
    A refusal is raised on every rank, so that none goes on to wait for the others. Collective."""
    lock, refusal = contextlib.nullcontext(), None
    if cluster.is_main:
        try:
            lock = RunLock.acquire(run_dir)
        except RunLockedError as exc:
            refusal = exc
    refusal = cluster.gather(refusal)[0]
    if refusal is not None:
        raise refusal
    return lock


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.path.samestat(os.fstat(fd), os.stat(path))
    except FileNotFoundError:
        return False


def _describe_holder(record: bytes) -> str:
    try:
        holder = json.loads(record)
        return f"pid {holder['pid']} on host {holder['host']}"
    except (ValueError, KeyError, TypeError):  # the holder took the lock a moment ago and is writing
        return "a process that has just started"
