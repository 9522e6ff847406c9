"""Atomic file writes: a temporary file beside the target, flushed, then renamed over it.

A crash, a kill -9 or a full disk leaves the old file or the new one, never part of one. The
temporary is hidden and named `.NAME.XXXXXXXX.tmp`, so no reader looking for data files matches
it, and a temporary that a killed writer left behind can be found and removed later.

The file gets the mode a plain `open(path, "w")` would give it: that of the file it replaces, or
0o666 less the umask for a new file (`tempfile.mkstemp` alone would make every file 0o600).

No torch here: the corpus maker's worker processes import this module.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from pathlib import Path
from typing import IO, Iterator


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb", encoding: str | None = None,
                 newline: str | None = None) -> Iterator[IO]:
    """Yield an open temporary file (`mode`, `encoding` and `newline` as for `open`); when the
    block ends without an error, the file replaces `path`.

    On any error (in the block, the flush or the rename) the temporary is removed and `path`
    is left as it was. The folder must exist.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode, encoding=encoding, newline=newline) as f:
            os.chmod(tmp, _permissions_for(path))
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_folder(path.parent)


def write_atomically(path: str | os.PathLike, data: bytes | str) -> None:
    """Write `data` to `path` with `atomic_write`; text as UTF-8 with newlines kept as given."""
    if isinstance(data, str):
        with atomic_write(path, "w", encoding="utf-8", newline="") as f:
            f.write(data)
    else:
        with atomic_write(path, "wb") as f:
            f.write(data)


def _permissions_for(path: Path) -> int:
    """The permission bits `open(path, "w")` would leave `path` with."""
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        return 0o666 & ~_umask()


def _umask() -> int:
    """The process umask. Linux shows it in /proc; elsewhere it can only be read by setting it,
    which is process-wide, so it is set back at once."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    umask = os.umask(0o077)  # the strictest value while it is briefly in force
    os.umask(umask)
    return umask


def _fsync_folder(folder: Path) -> None:
    """Make the rename itself durable (POSIX); a no-op where folders cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
