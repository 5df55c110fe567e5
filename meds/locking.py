"""Exclusive locks on output folders, so two writers never interleave their files.

:func:`folder_lock` holds an OS lock (``fcntl.flock`` on POSIX, ``msvcrt.locking`` on
Windows) on ``<folder>/.meds.lock`` for the length of a ``with`` block. The OS releases it
when the process dies, so a killed run never leaves a folder locked. A second process
fails at once with :class:`FolderLockedError`, naming the folder and the holder's PID
(written into the lock file). The same process may take the lock again (nested calls:
``meds fit`` locks the run folder, ``MeDS.save`` the model folder inside it).
"""

from __future__ import annotations

import contextlib
import os
import threading
from pathlib import Path
from typing import Iterator, Union

LOCK_FILE = ".meds.lock"
_WINDOWS_LOCK_OFFSET = 1 << 20  # Windows locks are mandatory: lock a byte past the PID

_held: dict = {}  # real path of a lock file -> [fd, depth]
_registry = threading.Lock()


class FolderLockedError(RuntimeError):
    """Another process holds the folder's lock."""


def _try_lock(fd: int) -> bool:
    if os.name == "nt":  # pragma: no cover - exercised on Windows only
        import msvcrt

        os.lseek(fd, _WINDOWS_LOCK_OFFSET, os.SEEK_SET)
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True
    import fcntl

    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _holder(path: Path) -> str:
    try:
        text = path.read_text(encoding="ascii", errors="replace").strip()
    except OSError:
        text = ""
    return f"PID {text}" if text.isdigit() else "PID unknown"


def _acquire(path: Path, who: str, shown: Path) -> int:
    # Lock files are removed on release, so after locking check that the file locked is
    # still the one at `path` (not one that its previous holder had just unlinked).
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        if not _try_lock(fd):
            os.close(fd)
            raise FolderLockedError(
                f"{who}: {shown} is in use by another meds process ({_holder(path)}); "
                "wait for it to finish or write elsewhere")
        try:
            same = os.name == "nt" or os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            os.ftruncate(fd, 0)
            os.lseek(fd, 0, os.SEEK_SET)
            os.write(fd, f"{os.getpid()}\n".encode("ascii"))
            return fd
        os.close(fd)


def _release(path: Path, fd: int) -> None:
    if os.name != "nt":
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # while still locked, so no one else holds this file
    os.close(fd)


@contextlib.contextmanager
def folder_lock(folder: Union[str, os.PathLike], who: str = "meds") -> Iterator[Path]:
    """Hold the exclusive lock of ``folder`` (created if needed) inside the block.

    Args:
        folder: The model, checkpoint or run folder.
        who: Prefix of the error message (function or command).

    Raises:
        FolderLockedError: Another process holds the lock.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = Path(os.path.realpath(folder)) / LOCK_FILE
    with _registry:
        entry = _held.get(path)
        if entry is None:
            entry = _held[path] = [_acquire(path, who, folder), 0]
        entry[1] += 1
    try:
        yield folder
    finally:
        with _registry:
            entry[1] -= 1
            if entry[1] == 0:
                del _held[path]
                _release(path, entry[0])
