"""Shared fixtures. Tests that need the local WikiText copy skip, with the reason, when it is absent, unless
EVOPRUNE_REQUIRE_DATA=1 (set by .ci/run), where a missing copy is a failure."""
import os
from pathlib import Path

import pytest

if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs two test processes (pytest-xdist, -n 2): each gets half the cores for torch, and so do its
    # children (notebook kernels, commands), so the two share the cores instead of fighting over them
    THREADS = max(1, (os.cpu_count() or 2) // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "2")))
    os.environ["OMP_NUM_THREADS"] = str(THREADS)
    import torch
    torch.set_num_threads(THREADS)


@pytest.fixture(scope="session")
def data_dir() -> str:
    path = os.environ.get("EVOPRUNE_DATA_DIR")
    if path and (Path(path) / "wikitext-2-raw" / "test.txt").is_file():
        return path
    reason = ("needs the local WikiText-2 copy: set EVOPRUNE_DATA_DIR to a directory laid out like "
              "../shared/data (make test does this when ../shared/data exists)")
    if os.environ.get("EVOPRUNE_REQUIRE_DATA") == "1":
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture
def tiny():
    from evoprune.models import tiny_gpt2
    return tiny_gpt2()


def extra_or_skip(load):
    """An optional extra (``load`` imports it or raises EvopruneError naming it): skipped where it is missing,
    unless CI is set (CI installs every extra)."""
    from evoprune import EvopruneError
    try:
        return load()
    except EvopruneError as err:
        if os.environ.get("CI"):
            raise
        pytest.skip(str(err))
