"""evoprune: evolutionary layer-wise pruning of GPT-2-class language models."""
import os
from pathlib import Path

__version__ = "0.1.0"


class EvopruneError(Exception):
    """A user-facing error: bad input or a missing resource. Its message says how to fix it."""


def private_tmp(path: Path) -> Path:
    """A scratch name beside `path`, one per process: parallel processes (test workers, worker pools)
    may write the same cache file at once, and each must rename only its own complete copy."""
    return path.with_name(f"{path.name}.{os.getpid()}.tmp")


def write_atomically(path, write) -> Path:
    """Write a file so that a reader sees the old one or the complete new one, never a partial one: ``write(tmp)``
    fills this process's scratch file (``private_tmp``), which then replaces ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = private_tmp(path)
    write(tmp)
    os.replace(tmp, path)
    return path
