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
