"""Small file helpers shared by every package: atomic writes, with the modes any other file
the user creates gets (the umask's), not the private modes of temporary files."""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

__all__ = ["atomic_dir", "atomic_path", "SAFE_NAME", "user_mode", "write_bytes", "write_text"]

# A name that may name files and folders (a study, a device): letters, digits, '.', '_', '-',
# at most 100, not starting with '.'
SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def user_mode(path: Path, folder: bool = False) -> None:
    """Give ``path`` the mode a plain ``open`` or ``mkdir`` would have (0644 / 0755 with the
    usual umask): temporary files and folders are made private (0600 / 0700)."""
    os.chmod(path, (0o777 if folder else 0o666) & ~_umask())


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only on success.

    A run killed half-way leaves at most a ``.tmp`` file, never a half-written ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if tmp_path.exists():
            user_mode(tmp_path)
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


@contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty folder beside ``path``; on success it replaces ``path`` whole.

    A run killed half-way leaves a hidden ``.NAME.*`` folder (removed by the next call for the
    same ``path``), never a half-written ``path``; an existing ``path`` stays until the new one
    is complete.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{path.name}.*"):  # left by a killed run
        shutil.rmtree(stale, ignore_errors=True)
    work = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        yield work
        user_mode(work, folder=True)
        for inner in work.rglob("*"):  # libraries write some files private (safetensors: 0600)
            if inner.is_dir() or inner.is_file():
                user_mode(inner, folder=inner.is_dir())
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old.", dir=path.parent))
            os.replace(path, old / "x")
            os.replace(work, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(work, path)
    finally:
        shutil.rmtree(work, ignore_errors=True)
