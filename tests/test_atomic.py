"""Atomic writes (:mod:`pushforward.atomic`)."""

import os

from pushforward.atomic import atomic_write


def test_atomic_writes_give_files_the_usual_permissions(tmp_path):
    """A run's files are written through a temporary file, but readable as if opened plainly
    (mode 0666 less the umask), not private as mkstemp makes them."""
    old = os.umask(0o022)
    try:
        atomic_write(tmp_path / "a.bin", lambda f: f.write(b"x"))
    finally:
        os.umask(old)
    assert (tmp_path / "a.bin").stat().st_mode & 0o777 == 0o644
