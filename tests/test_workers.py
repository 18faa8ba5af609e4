"""Parallel fitness: pools of worker processes or Ray actors give the serial objective's values, in order, even
when a worker dies mid-map; a search scored by a pool gives the serial search's history and result. Objective:
the search's own (``workers.session_objective``) on tiny-gpt2 and the local WikiText copy, float32."""
import functools
import os
import sys

import pytest
from conftest import extra_or_skip
import torch

from evoprune import EvopruneError
from evoprune.workers import import_ray, open_pool, session_objective, session_pool


@pytest.fixture(scope="module")
def settings(data_dir):
    from evoprune.objective import split_settings
    return split_settings(dict(model="tiny-gpt2", data=data_dir, target=0.5, population=4, generations=3,
                               fitness_windows=2, test_windows=1, dtype="float32"))


class DiesOnce:
    """An objective whose worker kills its own process on its second call, once per marker file."""

    def __init__(self, marker: str, make):
        self.marker, self.objective, self.calls = marker, make(), 0

    def __call__(self, genome, *args):
        self.calls += 1
        if self.calls == 2 and not os.path.exists(self.marker):
            open(self.marker, "w").close()
            os._exit(1)
        return self.objective(genome, *args)


def ray_by_value():
    """Ray, with this module's objects pickled by value: actors cannot import a test module."""
    ray = extra_or_skip(import_ray)
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    return ray


@pytest.fixture(scope="module")
def serial(settings):
    gen = torch.Generator().manual_seed(1)
    genomes = [(0.9 * torch.rand(12, generator=gen)).tolist() for _ in range(5)]
    objective = session_objective(settings[1])
    return genomes, [objective(g, 2) for g in genomes], [objective(g, 1) for g in genomes]


def check_pool(pool, serial, marker):
    genomes, full, one = serial
    assert pool.map(genomes, 2) == full  # a worker dies on its second genome: replaced, the genome re-scored
    assert os.path.exists(marker)
    assert pool.map(genomes, 1) == one
    assert pool.map([]) == []


def dies_once(marker, settings):
    return functools.partial(DiesOnce, str(marker), functools.partial(session_objective, settings[1]))


def test_process_pool_matches_serial_and_replaces_a_dead_worker(settings, serial, tmp_path):
    marker = tmp_path / "died"
    with open_pool(dies_once(marker, settings), 2) as pool:
        check_pool(pool, serial, marker)
        with pytest.raises(EvopruneError, match="rate vector has 3 entries"):  # an objective's error is raised
            pool.map([[0.5] * 3], 1)


def test_ray_pool_matches_serial_and_replaces_a_dead_actor(settings, serial, tmp_path):
    ray = ray_by_value()
    marker = tmp_path / "died"
    with open_pool(dies_once(marker, settings), 2, backend="ray") as pool:
        check_pool(pool, serial, marker)
    assert not ray.is_initialized()  # the pool stops the local Ray it started


def test_missing_ray_and_bad_settings_are_clear_errors(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now raises ImportError
    with pytest.raises(EvopruneError, match=r"pip install 'evoprune\[ray\]'"):
        open_pool(list, 2, backend="ray")
    with pytest.raises(EvopruneError, match="unknown worker backend"):
        open_pool(list, 2, backend="threads")
    with pytest.raises(EvopruneError, match="at least 1"):
        open_pool(list, 0)
    with pytest.raises(EvopruneError, match="needs the ray backend"):
        open_pool(list, 2, ray_address="auto")


# --- whole searches on tiny-gpt2 and the local WikiText copy -------------------------------------------------

@pytest.fixture(scope="module")
def search_case(settings, tmp_path_factory):
    from evoprune.search_runs import run_search
    from evoprune.session import Session
    session = Session(settings[1].model, settings[1].data)

    def search(objective=None):
        """What two runs must agree on: the result (times aside) and the history (wall times aside)."""
        out = tmp_path_factory.mktemp("search")
        result = run_search(session, *settings, out, progress=False, objective=objective)
        kept = (result.genome, result.fitness, result.test, result.start, result.spent.evaluations,
                result.spent.forward_tokens)
        return kept, [{k: v for k, v in row.items() if k != "wall_s"} for row in result.history]
    return search, search()


def test_search_on_two_processes_gives_the_serial_result(settings, search_case, tmp_path):
    search, expected = search_case
    with open_pool(dies_once(tmp_path / "died", settings), 2) as pool:
        assert search(pool) == expected  # one worker died mid-generation and was replaced
    assert (tmp_path / "died").exists()


def test_search_on_two_ray_actors_gives_the_serial_result(settings, search_case):
    ray_by_value()
    search, expected = search_case
    with session_pool(settings[1], 2, backend="ray") as pool:
        assert search(pool) == expected
