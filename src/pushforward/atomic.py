r"""Atomic file writes: a reader sees the old file or the whole new one, never half of one.

Checkpoints (:mod:`pushforward.engine`), run folders (:mod:`pushforward.experiment`) and figures
(:mod:`pushforward.plots`) are written through :func:`atomic_write`.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import torch

__all__ = ["atomic_write", "save_atomic"]


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], None]) -> None:
    """Call ``write(file)`` on a temporary file in ``path``'s folder, then rename it over ``path``.

    A reader never sees a half-written file; a write that fails or is interrupted (a full disk,
    Ctrl-C) leaves the old file as it was and removes the temporary one.

    Raises:
        OSError: if the folder cannot be created or the file written (naming ``path``); whatever
            ``write`` raises.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        # mkstemp makes the file private (0600): give it the mode a plain open() would
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as error:
        Path(tmp).unlink(missing_ok=True)
        cause = _os_error(error)
        if cause is not None and cause.filename is None:  # a failed write names no file: name it
            raise OSError(cause.errno, cause.strerror or str(cause), os.fspath(path)) from error
        raise


def _umask() -> int:
    """The process's umask (read by setting it and setting it back)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _os_error(error: BaseException | None) -> OSError | None:
    """The OSError behind ``error``: itself, or one it was raised from or while handling (torch.save
    reports a failed write, e.g. a full disk, as a RuntimeError raised while handling it)."""
    while error is not None and not isinstance(error, OSError):
        error = error.__cause__ or error.__context__
    return error


def save_atomic(obj: object, path: str | os.PathLike) -> None:
    """``torch.save`` of ``obj`` to ``path`` through :func:`atomic_write`.

    Raises:
        OSError: if the file cannot be written (the old one is kept, the temporary one removed).
    """
    atomic_write(path, lambda f: torch.save(obj, f))
