"""Crash-safe file writes: a reader sees the old file or the new one, never a half-written one."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path


def temp_path_beside(path: str | os.PathLike) -> str:
    """A fresh, unique temp file name in ``path``'s folder (same filesystem, so a rename is atomic)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    return tmp


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _plain_mode(path: Path, default: int) -> int:
    """``path``'s own permissions, or what a plain create would give it (``default`` less the umask)."""
    try:
        return path.stat().st_mode & 0o7777
    except FileNotFoundError:
        return default & ~_umask()


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp_path)`` on a temp file beside ``path``, fsync it, then rename it over ``path``.

    The result has the permissions a plain ``open(path, "w")`` would give it (the file's own if it
    existed, else 0o666 less the umask), not the temp file's owner-only 0o600, which would leave a
    rendered repo or a results file unreadable to the other users of a shared folder.
    """
    path = Path(path)
    tmp = temp_path_beside(path)
    try:
        write(tmp)
        os.chmod(tmp, _plain_mode(path, 0o666))
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def atomic_write_dir(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Call ``write(staging)`` on a fresh folder beside ``path``, then swap it in whole.

    A reader sees the previous folder or the new one, never a mix of their files; a failed write
    leaves the previous folder and no staging folder. The result has a plain ``mkdir``'s permissions
    (or the previous folder's), not the owner-only mode of a temp folder.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.staging-", dir=path.parent))
    try:
        write(staging)
        os.chmod(staging, _plain_mode(path, 0o777))
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    previous = staging.with_name(staging.name.replace(".staging-", ".previous-", 1))
    if path.exists():
        os.replace(path, previous)
    os.replace(staging, path)
    shutil.rmtree(previous, ignore_errors=True)
    return path
