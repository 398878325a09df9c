"""Atomic output: write to a temporary name in the target folder, then rename.

A failure (exception, kill) never leaves a half-written file under the final name: either the old
file (or nothing) is there, or the complete new one. ``os.replace`` is atomic on POSIX and Windows
when source and destination are on the same file system, which a sibling temporary guarantees.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike[str], suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; on success rename it onto ``target``.

    Parameters
    ----------
    target : path
        Final file name. Its parent folder is created if needed.
    suffix : str, optional
        Suffix for the temporary file (writers such as SimpleITK choose the format from it).
        Defaults to the target's full suffix (``.nii.gz`` stays ``.nii.gz``).
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    if suffix is None:
        suffix = "".join(target.suffixes)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.stem}.", suffix=f".part{suffix}",
                                    dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        # mkstemp creates the file private (0600); give the result the mode an ordinary
        # open() would have (0666 less the umask), as users and viewers expect.
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(target: str | os.PathLike[str], text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``target`` atomically and return the target path."""
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding=encoding)
    return Path(target)


def atomic_write_bytes(target: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``target`` atomically and return the target path."""
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)
    return Path(target)


@contextlib.contextmanager
def atomic_folder(folder: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a private temporary folder beside ``folder``; on success it becomes ``folder``.

    An existing ``folder`` is swapped out (renamed aside, then removed) only after the new one
    is complete; on failure the temporary folder is removed and ``folder`` is untouched.
    """
    from dosimetry.errors import InputError

    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise InputError(f"{folder}: exists and is not a folder")
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".part", dir=folder.parent))
    try:
        # mkdtemp makes the folder 0700; the finished folder gets the usual mode.
        os.chmod(tmp, 0o777 & ~_umask())
        yield tmp
        if folder.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".old",
                                        dir=folder.parent))
            old.rmdir()
            os.replace(folder, old)
            os.replace(tmp, folder)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
