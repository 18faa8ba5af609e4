"""Shared fixtures. Tests that need the local WikiText copy skip, with the reason, when it is absent, unless
EVOPRUNE_REQUIRE_DATA=1 (set by .ci/run), where a missing copy is a failure."""
import os
from pathlib import Path

import pytest


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
