"""One run per output directory: ``with hold(out):`` takes an exclusive ``flock`` on the directory itself for the
run's life, so a second run on the same ``--out`` is refused instead of overwriting the first one's results. The
kernel frees the lock when the process ends, however it ends (no stale lock files)."""
from __future__ import annotations

import fcntl
import os
import shutil
from contextlib import contextmanager
from pathlib import Path

from evoprune import EvopruneError


@contextmanager
def hold(out: str | Path, keep_partial: bool = True):
    """Make ``out`` if needed and hold it. A directory this made is removed afterwards if it is left empty, or,
    unless ``keep_partial`` (a search's checkpoint is worth keeping), if the run failed."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise EvopruneError(f"--out {out} is a file: give a directory for the run's results.")
    made = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise EvopruneError(f"--out {out} cannot be created ({err.strerror}): give a directory you can write "
                            f"to.") from None
    fd = os.open(out, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise EvopruneError(f"--out {out} is in use by another run (still running): wait for it to finish, "
                                f"or give another --out.") from None
        try:
            yield out
        except BaseException:
            if made and not keep_partial:
                shutil.rmtree(out, ignore_errors=True)
            raise
        finally:
            if made and out.is_dir() and not any(out.iterdir()):
                out.rmdir()
    finally:
        os.close(fd)
