"""Crash-safe file writes: a reader sees the old file or the new one, never a half-written one."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import stat
from collections.abc import Callable
from pathlib import Path


def _create_beside(path: Path, label: str, create: Callable[[Path], None]) -> Path:
    """A fresh, unique name in ``path``'s folder (same filesystem, so a rename is atomic), made by
    ``create`` (which raises FileExistsError if the name is taken).

    It gets the permissions a plain write of ``path`` leaves: ``path``'s own if it exists, else what
    ``create`` got under the umask. A ``tempfile`` name would be owner-only (0o600 / 0o700), and the
    rename would carry that onto a rendered repo, a saved indexer or a results file.
    """
    while True:
        fresh = path.parent / f".{path.name}.{label}-{secrets.token_hex(6)}"
        try:
            create(fresh)
            break
        except FileExistsError:
            continue
    with contextlib.suppress(FileNotFoundError):
        os.chmod(fresh, stat.S_IMODE(path.stat().st_mode))
    return fresh


def temp_path_beside(path: str | os.PathLike) -> str:
    """A fresh, empty temp file beside ``path``, to be renamed over it."""
    flags = os.O_CREAT | os.O_EXCL | os.O_WRONLY
    return str(_create_beside(Path(path), "tmp", lambda p: os.close(os.open(p, flags, 0o666))))


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp_path)`` on a temp file beside ``path``, fsync it, then rename it over ``path``."""
    path = Path(path)
    tmp = temp_path_beside(path)
    try:
        write(tmp)
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
    leaves the previous folder and no staging folder.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = _create_beside(path, "staging", lambda p: os.mkdir(p, 0o777))
    try:
        write(staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    previous = staging.with_name(staging.name.replace(".staging-", ".previous-", 1))
    if path.exists():
        os.replace(path, previous)
    os.replace(staging, path)
    shutil.rmtree(previous, ignore_errors=True)
    return path
