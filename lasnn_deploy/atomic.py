"""Atomic file writes: every output is written beside its target and renamed into place.

A reader finds either the previous file or the new one, never a half-written one. The temporary
file is named ``.<target name>.<pid>@<host>.<random>.tmp``: an exception removes it at once, and
a process killed outright (SIGKILL, power loss) leaves it behind hidden, never under the target's
name; the next atomic write into the same folder on the same host removes such leftovers of
processes that no longer run.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

_HOST = socket.gethostname().replace("/", "_")
_TEMP_NAME = re.compile(r"^\..+\.(?P<pid>\d+)@(?P<host>[^/]+)\.[^.]+\.tmp$")


def _umask() -> int:
    """The process umask, read without changing it where Linux allows (os.umask is not thread-safe)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Remove temporary files that killed writers on this host left in ``folder``; return them."""
    removed = []
    for path in Path(folder).glob(".*.tmp"):
        match = _TEMP_NAME.match(path.name)
        if match and match["host"] == _HOST and not _running(int(match["pid"])):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; rename it onto ``target`` on success.

    On any exception (including KeyboardInterrupt) the temporary file is removed, so a reader
    finds either the previous file or none, never a half-written one.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(target.parent)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.{os.getpid()}@{_HOST}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    tmp_path.chmod(0o666 & ~_umask())  # mkstemp makes 0600; outputs are shared like any file the user writes
    try:
        yield tmp_path
        os.replace(tmp_path, target)
    finally:
        tmp_path.unlink(missing_ok=True)


def write_text(target: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``target`` atomically."""
    with atomic_path(target) as tmp:
        tmp.write_text(text)
