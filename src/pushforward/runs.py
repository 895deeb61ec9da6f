r"""Safe writing of run folders: never into a folder that is not a run, one writer at a time,
and a replaced run swapped out only for a valid new one.

    with RunFolder("runs/moons", replace=True) as run:    # locked; run.path is a staging folder
        save_run(run.path, flow, config)
        fit(flow, ..., checkpoint=run.file("checkpoint.pt"), on_checkpoint=run.publish)
    # run.publish() swapped the staging folder in for the old run once it held a checkpoint;
    # an exception before that removes the staging folder and leaves the old run as it was.

The lock is ``.NAME.lock`` beside the run folder ``NAME``: a file holding the writer's process
id, locked with ``flock`` while that process writes. The operating system releases the lock
when the process ends, however it ends, so a lock left by a dead process is taken over.
"""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
from pathlib import Path

from .experiment import CHECKPOINT, CONFIG, METRICS, MODEL

__all__ = ["RUN_FILES", "RunFolderError", "is_run", "check_out", "RunFolder"]

RUN_FILES = frozenset({CONFIG, MODEL, CHECKPOINT, METRICS, "learning_curve.png", "density.png", "samples.png",
                       "elbo.png"})


class RunFolderError(ValueError):
    """A run folder that may not be written: not a run, a run without leave to replace it, or
    locked by another process."""


def _is_run_file(name: str) -> bool:
    # A temporary file of an interrupted atomic write (".model.pt.1234.tmp") belongs to the run too.
    return name in RUN_FILES or (name.startswith(".") and name.endswith(".tmp"))


def is_run(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a folder holding a ``config.json`` and only the files a run writes
    (config.json, model.pt, checkpoint.pt, metrics.json, the PNGs, temporary files)."""
    path = Path(path)
    return (path / CONFIG).is_file() and all(_is_run_file(p.name) and p.is_file() for p in path.iterdir())


def check_out(out: str | os.PathLike, replace: bool = False) -> Path:
    """``out`` as a Path if a new run may be written there: a folder that does not exist yet, an
    empty folder, or (with ``replace``) a run.

    Raises:
        RunFolderError: for an empty name, a path below a file, a file, a folder that is not empty
            and not a run, or a run without ``replace``.
    """
    if not str(out).strip():
        raise RunFolderError("the run folder name is empty: give --out a folder name")
    out = Path(out)
    existing = next(p for p in (out, *out.absolute().parents) if p.exists())
    if not existing.is_dir():
        raise RunFolderError(f"'{existing}' is a file, not a folder: cannot write the run folder '{out}'")
    if existing != out or not any(out.iterdir()):
        return out
    if not is_run(out):
        raise RunFolderError(f"'{out}' is not empty and is not a pushforward run: refusing to write into it "
                             "(--overwrite replaces runs only); choose another --out")
    if not replace:
        raise RunFolderError(f"'{out}' already holds a run; use --overwrite, --resume or another --out")
    return out


class RunFolder:
    """Exclusive, all-or-nothing writing of the run folder ``out`` (a context manager).

    On entry the folder is locked (:class:`RunFolderError` names the process holding it) and
    checked again with :func:`check_out`. A new run (``resume=False``) is written into
    ``run.path``, a staging folder ``.NAME.new`` beside ``out``, until :meth:`publish` swaps it in
    for whatever run ``out`` held; with ``resume=True``, ``run.path`` is ``out`` itself. On exit
    the lock is released and a staging folder that was never published is removed, so a run that
    fails early leaves no trace and the old run, if any, is untouched.

    Args:
        out: the run folder.
        replace: a run already in ``out`` may be replaced (``--overwrite``).
        resume: ``out`` is the run to continue, written in place.

    Raises (on entry):
        RunFolderError: if ``out`` may not be written (see :func:`check_out`), is no run to resume,
            or is locked by a running process.
        OSError: if the folder beside which the lock lives cannot be created or written.
    """

    def __init__(self, out: str | os.PathLike, replace: bool = False, resume: bool = False):
        self.out = Path(out)
        where = Path(os.path.abspath(self.out))
        self.lock_path = where.with_name(f".{where.name}.lock")
        self._new, self._old = where.with_name(f".{where.name}.new"), where.with_name(f".{where.name}.old")
        self.replace, self.resume = replace, resume
        self.path = self.out
        self._fd: int | None = None

    def __enter__(self) -> "RunFolder":
        self.lock_path.parent.mkdir(parents=True, exist_ok=True)
        self._lock()
        try:
            self._recover()
            if self.resume:
                if not (self.out / CONFIG).is_file():
                    raise RunFolderError(f"'{self.out}' holds no run to resume")
            else:
                check_out(self.out, self.replace)
                self._new.mkdir()
                self.path = self._new
        except BaseException:
            self._unlock()
            raise
        return self

    def __exit__(self, *exc) -> None:
        try:
            if self.path == self._new:
                shutil.rmtree(self._new, ignore_errors=True)
        finally:
            self._unlock()

    def file(self, name: str) -> os.PathLike:
        """A path to the file ``name`` of the run that follows :meth:`publish` (it names the file in
        the staging folder until then, in ``out`` after)."""
        return _RunFile(self, name)

    def publish(self) -> None:
        """Swap the staging folder in as ``out`` (the old run, if any, is deleted after the swap);
        nothing happens once published or when resuming."""
        if self.path != self._new:
            return
        if self.out.exists():
            os.replace(self.out, self._old)
        os.replace(self._new, self.out)
        self.path = self.out
        shutil.rmtree(self._old, ignore_errors=True)

    def _recover(self) -> None:
        """Finish or undo what a writer killed before it released the lock left: a swap cut
        short in :meth:`publish` is completed (the staging folder was valid), a staging folder
        never published is removed."""
        if self._old.exists():
            if not self.out.exists():
                os.replace(self._new if self._new.exists() else self._old, self.out)
            shutil.rmtree(self._old, ignore_errors=True)
        shutil.rmtree(self._new, ignore_errors=True)

    def _lock(self) -> None:
        while True:
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as error:
                os.close(fd)
                if error.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                raise RunFolderError(f"'{self.out}' is locked by process {self._owner()}, which is writing it "
                                     f"(lock file {self.lock_path}); wait for it or choose another --out") from None
            # The previous holder may have removed the file between our open and our flock.
            if os.path.exists(self.lock_path) and os.path.samestat(os.fstat(fd), os.stat(self.lock_path)):
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def _owner(self) -> str:
        try:
            return self.lock_path.read_text().strip() or "?"
        except OSError:
            return "?"

    def _unlock(self) -> None:
        if self._fd is not None:
            self.lock_path.unlink(missing_ok=True)
            os.close(self._fd)
            self._fd = None


class _RunFile(os.PathLike):
    """A file of a :class:`RunFolder`, resolved to the folder being written each time it is used."""

    def __init__(self, run: RunFolder, name: str):
        self.run, self.name = run, name

    def __fspath__(self) -> str:
        return os.fspath(self.run.path / self.name)

    def __repr__(self) -> str:
        return f"_RunFile({os.fspath(self)!r})"
